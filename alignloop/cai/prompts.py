"""The prompt layouts of AI feedback, as chat messages for an instruct model (no torch here).

The CAI paper writes its prompts as one raw transcript for a pretrained LM. An instruct model
answers best in its own chat turns, so each marker of the transcript becomes a turn:

SL-CAI critique (the model answers the last user turn with its critique):
    [few-shot example 1 .. k, each as the six turns below, with its own texts]
    user:      <prompt>                   (or the prompt's conversation)
    assistant: <response>
    user:      CritiqueRequest: <principle.critique_request>
    -> assistant: <critique>
SL-CAI revision: the same chat, plus
    assistant: <critique>
    user:      RevisionRequest: <principle.revision_request> Reply with the rewritten response only.
    -> assistant: <revision>

RL-CAI label (one user turn; the assistant's turn is opened with ANSWER_PREFIX and the judge's
next-token probabilities of "A" and "B" are read):
    [few-shot: user: <example in this layout>, assistant: The answer is: (A) ...]
    user:      Consider the following conversation between a human and an assistant:

               Human: <prompt>

               <principle.choice_question>
               Options:
               (A) <response A>
               (B) <response B>

               Answer with (A) or (B).
    assistant: The answer is: (
Chain of thought: the user turn ends with COT_REQUEST instead; the judge writes its reasoning
as the assistant turn, then "<reasoning>\\n\\nThe answer is: (" is scored.

d-RLAIF rating (next-token probabilities of the scores 1..10 after RATING_PREFIX):
    user:      Consider the following conversation between a human and an assistant:

               Human: <prompt>

               Assistant: <response>

               <constitution.rating_question> Rate the assistant's last response on a scale
               from 1 (worst) to 10 (best).
    assistant: Rating:
"""

from __future__ import annotations

from alignloop.cai.constitution import FewShot, LabelExample, Principle

CRITIQUE_TAG = "CritiqueRequest:"
REVISION_TAG = "RevisionRequest:"
REVISION_SUFFIX = "Reply with the rewritten response only."
INTRO = "Consider the following conversation between a human and an assistant:"
ANSWER_INSTRUCTION = "Answer with (A) or (B)."
COT_REQUEST = "Let's think step by step, then say which option is better."
ANSWER_PREFIX = "The answer is: ("
RATING_INSTRUCTION = "Rate the assistant's last response on a scale from 1 (worst) to 10 (best)."
RATING_PREFIX = "Rating:"

Chat = list[dict[str, str]]


def conversation_text(messages: Chat) -> str:
    """A chat as 'Human: ...\\n\\nAssistant: ...' (system turns are left out)."""
    names = {"user": "Human", "assistant": "Assistant"}
    return "\n\n".join(f"{names[m['role']]}: {m['content'].strip()}" for m in messages if m["role"] in names)


def _user_turns(messages: Chat) -> Chat:
    return [dict(m) for m in messages if m["role"] != "system"]


def _system(messages: Chat) -> Chat:
    return [dict(m) for m in messages if m["role"] == "system"][:1]


def critique_turn(critique_request: str) -> str:
    return f"{CRITIQUE_TAG} {critique_request.strip()}"


def revision_turn(revision_request: str) -> str:
    return f"{REVISION_TAG} {revision_request.strip()} {REVISION_SUFFIX}"


def few_shot_turns(examples: list[FewShot]) -> Chat:
    """Each worked example as six chat turns: prompt, response, request, critique, request, revision."""
    turns: Chat = []
    for ex in examples:
        turns += _user_turns(ex.chat())
        turns += [{"role": "assistant", "content": ex.response},
                  {"role": "user", "content": critique_turn(ex.critique_request)},
                  {"role": "assistant", "content": ex.critique},
                  {"role": "user", "content": revision_turn(ex.revision_request)},
                  {"role": "assistant", "content": ex.revision}]
    return turns


def critique_chat(messages: Chat, response: str, principle: Principle, examples: list[FewShot]) -> Chat:
    """The chat whose next assistant turn is the critique of `response` under `principle`."""
    return (_system(messages) + few_shot_turns(examples) + _user_turns(messages)
            + [{"role": "assistant", "content": response},
               {"role": "user", "content": critique_turn(principle.critique_request)}])


def revision_chat(critique: Chat, critique_text: str, principle: Principle) -> Chat:
    """The critique chat plus the critique and the revision request: the next turn is the revision."""
    return critique + [{"role": "assistant", "content": critique_text},
                       {"role": "user", "content": revision_turn(principle.revision_request)}]


def choice_text(messages: Chat, response_a: str, response_b: str, question: str, cot: bool = False) -> str:
    """The multiple-choice question put to the judge (one user turn)."""
    return (f"{INTRO}\n\n{conversation_text(messages)}\n\n{question.strip()}\nOptions:\n"
            f"(A) {response_a.strip()}\n(B) {response_b.strip()}\n\n{COT_REQUEST if cot else ANSWER_INSTRUCTION}")


def label_chat(messages: Chat, response_a: str, response_b: str, question: str,
               examples: list[LabelExample] = (), cot: bool = False) -> Chat:
    """The judge's chat; score it with ANSWER_PREFIX appended to the assistant turn (or, with
    `cot`, after the generated reasoning). Few-shot examples (not used with `cot`) alternate
    the position of the better answer, A first, so they teach no position."""
    turns: Chat = []
    for k, ex in enumerate([] if cot else examples):
        a, b, letter = (ex.better, ex.worse, "A") if k % 2 == 0 else (ex.worse, ex.better, "B")
        turns += [{"role": "user", "content": choice_text(ex.chat(), a, b, question)},
                  {"role": "assistant", "content": f"{ANSWER_PREFIX}{letter})"}]
    return (_system(messages) + turns
            + [{"role": "user", "content": choice_text(messages, response_a, response_b, question, cot)}])


def rating_chat(messages: Chat, response: str, rating_question: str) -> Chat:
    """The d-RLAIF judge's chat; score it with RATING_PREFIX opening the assistant turn."""
    convo = conversation_text(_user_turns(messages) + [{"role": "assistant", "content": response}])
    return _system(messages) + [{"role": "user",
                                 "content": f"{INTRO}\n\n{convo}\n\n{rating_question.strip()} {RATING_INSTRUCTION}"}]
