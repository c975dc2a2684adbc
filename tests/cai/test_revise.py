"""The SL-CAI loop with a scripted `generate`: what each call sees and what each step keeps."""

from __future__ import annotations

import random

from alignloop.cai import revise
from alignloop.cai.constitution import load_constitution, sample_revision_principles
from alignloop.cai.prompts import CRITIQUE_TAG, REVISION_TAG
from alignloop.data.records import PromptRecord
from alignloop.models.generation import Sampling


class ScriptedGenerate:
    """Call 0 answers, then per step s: critiques, revisions. Prompt 1's step-2 revision is blank."""

    def __init__(self):
        self.calls: list[tuple[list, int]] = []

    def __call__(self, model, tokenizer, chats, sampling, show_progress=True):
        call = len(self.calls)
        self.calls.append((chats, sampling.seed))
        if call == 0:
            texts = [f"answer {i}" for i in range(len(chats))]
        elif call % 2 == 1:
            texts = [f"Critique: critique {(call + 1) // 2}.{i}" for i in range(len(chats))]
        else:
            step = call // 2
            texts = ["  " if (i, step) == (1, 2) else f"Revision: revision {step}.{i}" for i in range(len(chats))]
        return type("G", (), {"texts": texts})()


def test_each_step_critiques_the_previous_revision_under_its_own_principle(monkeypatch):
    scripted = ScriptedGenerate()
    monkeypatch.setattr(revise, "generate", scripted)
    c = load_constitution()
    chats = [[{"role": "user", "content": f"prompt {i}"}] for i in range(3)]
    trajs = revise.critique_and_revise(None, None, chats, c, revisions=3, sampling=Sampling(), seed=11, few_shot=1)

    assert len(scripted.calls) == 1 + 2 * 3  # batched: one call per stage for all prompts
    assert len({seed for _, seed in scripted.calls}) == 7  # a distinct sampling seed per call
    table = sample_revision_principles(random.Random(11), c.revision_principles(), 3, 3)
    for i, t in enumerate(trajs):
        assert t.initial_response == f"answer {i}"
        assert [s.principle_id for s in t.steps] == [p.id for p in table[i]]
        assert t.steps[0].critique == f"critique 1.{i}"  # the echoed label is stripped
    # prompt 1's blank step-2 revision falls back to its step-1 revision; step 3 revises that
    assert trajs[1].steps[1].fallback and trajs[1].steps[1].revision == "revision 1.1"
    assert [s.fallback for s in trajs[0].steps] == [False, False, False] and trajs[0].final == "revision 3.0"

    # the step-3 critique of prompt 1: few-shot turns, the prompt, the previous response, the request
    critique_chat = scripted.calls[5][0][1]
    ex = c.few_shot[0]
    assert critique_chat[0] == {"role": "user", "content": ex.prompt}
    assert critique_chat[-3:] == [{"role": "user", "content": "prompt 1"},
                                  {"role": "assistant", "content": "revision 1.1"},
                                  {"role": "user", "content": f"{CRITIQUE_TAG} {table[1][2].critique_request}"}]
    revision_chat = scripted.calls[6][0][1]
    assert revision_chat[:-2] == critique_chat and revision_chat[-2]["content"] == "critique 3.1"
    assert revision_chat[-1]["content"].startswith(f"{REVISION_TAG} {table[1][2].revision_request}")

    # outputs: every kept step is a demonstration; the comparison prefers the final revision
    record = PromptRecord(id="p1", prompt="prompt 1")
    demos = revise.demonstrations(record, trajs[1], 1)
    assert [d["meta"]["step"] for d in demos] == [1, 3]
    assert [d["response"] for d in demos] == ["revision 1.1", "revision 3.1"]
    comp = revise.comparison(record, trajs[1], 1, "m")
    assert comp["responses"] == ["revision 3.1", "answer 1"] and comp["ranking"] == [0, 1]
    assert comp["meta"]["principles"] == [p.id for p in table[1]]


def test_nothing_to_compare_when_every_revision_fell_back():
    traj = revise.Trajectory("same", [revise.Step("harm-general", "c", "same", True)])
    assert revise.comparison(PromptRecord(prompt="x"), traj, 0, "m") is None
    assert revise.demonstrations(PromptRecord(prompt="x"), traj, 0) == []
    assert revise.clean("  Revision:  Better text ") == "Better text" and revise.clean("revised response: ok") == "ok"
