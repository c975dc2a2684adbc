"""RL-CAI preference labels: a judge model answers a multiple-choice question, (A) or (B).

For one pair (responses[0], responses[1]) and one sampled principle (CAI, section 4.1):
  1) show the pair in both orders, AB and BA (RLAIF, Lee et al. 2023: position bias);
  2) read the judge's next-token log-probabilities of "A" and "B" after "The answer is: (";
     the soft label of an order is the softmax over those two,
         P(A) = exp(l_A) / (exp(l_A) + exp(l_B)) = sigmoid(l_A - l_B);
  3) p_order_ab = P(A) in order AB, p_order_ba = P(B) in order BA: both are the probability
     that responses[0] is better; p = (p_order_ab + p_order_ba) / 2;
  4) an ensemble of N principles averages p over the principles;
  5) chain of thought: the judge first writes its reasoning ("Let's think step by step"),
     then is scored after it; such labels are near 0 or 1, so p is clamped to [0.4, 0.6].
The judge "flips" with the order when p_order_ab and p_order_ba fall on opposite sides of
0.5: it then prefers the same POSITION, not the same response.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from alignloop.cai.constitution import Constitution, sample_choice_principles
from alignloop.cai.prompts import ANSWER_PREFIX, label_chat
from alignloop.data.chat import encode_prompt

Chat = list[dict[str, str]]


# ---------------------------------------------------------------- the math (pure)


def soft_label(logit_a: float, logit_b: float) -> float:
    """P(A) from the two option logits (or log-probs): sigmoid(l_A - l_B)."""
    return 1.0 / (1.0 + math.exp(logit_b - logit_a))


def combine_orders(p_order_ab: float, p_order_ba: float) -> float:
    """Mean of the two orders' probabilities that responses[0] is better."""
    return 0.5 * (p_order_ab + p_order_ba)


def clamp(p: float, low: float, high: float) -> float:
    return min(high, max(low, p))


def order_flipped(p_order_ab: float, p_order_ba: float) -> bool:
    """True when the preferred response changes with the display order (same position wins)."""
    return (p_order_ab - 0.5) * (p_order_ba - 0.5) < 0


# ---------------------------------------------------------------- tokens and forward passes


def continuation_plan(tokenizer, prefix: str, options: list[str]) -> tuple[list[int], list[list[int]]]:
    """(context ids, per-option token ids) for reading options after `prefix`.

    Each option is tokenised in context (`prefix + option`); the tokens all options share
    (e.g. SmolLM2's lone " " before a digit) move into the context, leaving at least one
    token per option. Raises when the prefix does not tokenise the same in front of an option.
    """
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    conts = []
    for option in options:
        full = tokenizer(prefix + option, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) == len(base):
            raise ValueError(f"tokenizer: {prefix!r} does not tokenise the same before {option!r}")
        conts.append(full[len(base):])
    shared = 0
    while shared < min(len(c) for c in conts) - 1 and len({c[shared] for c in conts}) == 1:
        shared += 1
    return base + conts[0][:shared], [c[shared:] for c in conts]


def option_token_ids(tokenizer, prefix: str = ANSWER_PREFIX, letters: tuple[str, ...] = ("A", "B")):
    """(context ids, [id of "A", id of "B"]): each letter must be ONE token after the prefix."""
    context, conts = continuation_plan(tokenizer, prefix, list(letters))
    if any(len(c) != 1 for c in conts) or len({c[0] for c in conts}) != len(letters):
        raise ValueError(f"tokenizer: the options {letters} are not single distinct tokens after {prefix!r}")
    return context, [c[0] for c in conts]


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def last_logprobs(model, seqs: list[list[int]], token_ids: list[int], pad_id: int, keep: int = 1,
                  batch_size: int = 8) -> torch.Tensor:
    """(N, keep, M) next-token log-probabilities (over the whole vocabulary) of `token_ids`
    at the last `keep` positions of each sequence. Batched with left padding; sequences are
    sorted by length so a batch holds similar lengths; the LM head runs on `keep` positions."""
    from alignloop.data.padding import left_pad

    device = next(model.parameters()).device
    out = torch.empty(len(seqs), keep, len(token_ids))
    ids_t = torch.tensor(token_ids, device=device)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start: start + batch_size]
        ids, mask = left_pad([seqs[i] for i in batch], pad_id)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       position_ids=position_ids.to(device), logits_to_keep=keep).logits[:, -keep:]  # (b, keep, V)
        logp = torch.log_softmax(logits.float(), dim=-1)[..., ids_t]  # (b, keep, M)
        out[torch.tensor(batch)] = logp.cpu()
    return out


# ---------------------------------------------------------------- the labeler


@dataclass
class PairLabel:
    """One labeled pair: `p` = P(responses[0] is better), and how it was reached."""

    p: float
    principles: list[str]
    p_order_ab: list[float]  # per principle: P(responses[0] better), shown as (A)
    p_order_ba: list[float]  # per principle: P(responses[0] better), shown as (B)
    flipped: bool
    p_unclamped: float
    reasoning: list[str] = field(default_factory=list)  # CoT: AB then BA per principle

    def meta(self, cot: bool) -> dict:
        meta = {"principles": self.principles, "p_order_ab": [round(x, 6) for x in self.p_order_ab],
                "p_order_ba": [round(x, 6) for x in self.p_order_ba], "flipped": self.flipped, "cot": cot}
        if cot:
            meta |= {"p_unclamped": round(self.p_unclamped, 6), "reasoning": self.reasoning}
        return meta


class PreferenceJudge:
    """Soft preference labels from a causal LM (any model with a chat template)."""

    def __init__(self, model, tokenizer, constitution: Constitution, name: str = "judge", batch_size: int = 8,
                 few_shot: bool = True):
        self.model, self.tokenizer, self.constitution, self.name = model, tokenizer, constitution, name
        self.batch_size = batch_size
        self.examples = constitution.label_few_shot if few_shot else []
        self.prefix_ids, self.option_ids = option_token_ids(tokenizer)

    def prob_a(self, chats: list[Chat], reasoning: list[str] | None = None) -> list[float]:
        """P(A) for each chat, read after ANSWER_PREFIX (after the reasoning when given)."""
        seqs = []
        for k, chat in enumerate(chats):
            ids = encode_prompt(self.tokenizer, chat)
            if reasoning is not None:
                ids = ids + self.tokenizer(reasoning[k].strip() + "\n\n", add_special_tokens=False)["input_ids"]
            seqs.append(ids + self.prefix_ids)
        lp = last_logprobs(self.model, seqs, self.option_ids, pad_id_of(self.tokenizer), 1, self.batch_size)[:, 0]
        return [soft_label(a, b) for a, b in lp.tolist()]

    def label(self, items: list[tuple[Chat, str, str]], rng: random.Random, principles_per_pair: int = 1,
              cot: bool = False, cot_sampling=None, clamp_range: tuple[float, float] = (0.4, 0.6)) -> list[PairLabel]:
        """Label (chat, responses[0], responses[1]) items; principles come from `rng`."""
        # 1) principles per pair, and the two orders of each (pair, principle)
        chosen = [sample_choice_principles(rng, self.constitution.choice_principles(), principles_per_pair)
                  for _ in items]
        chats: list[Chat] = []
        for (chat, r0, r1), principles in zip(items, chosen):
            for pr in principles:
                chats.append(label_chat(chat, r0, r1, pr.choice_question, self.examples, cot))
                chats.append(label_chat(chat, r1, r0, pr.choice_question, self.examples, cot))
        # 2) chain of thought: the judge's reasoning, then the scored answer after it
        reasoning = None
        if cot:
            from alignloop.models.generation import generate

            reasoning = generate(self.model, self.tokenizer, chats, cot_sampling, show_progress=False).texts
        probs = self.prob_a(chats, reasoning)
        # 3) per pair: P(responses[0] better) in each order, averaged over orders and principles
        labels, k = [], 0
        for principles in chosen:
            n = len(principles)
            ab = probs[k: k + 2 * n: 2]
            ba = [1.0 - x for x in probs[k + 1: k + 2 * n: 2]]
            p = sum(combine_orders(a, b) for a, b in zip(ab, ba)) / n
            mean_ab, mean_ba = sum(ab) / n, sum(ba) / n
            labels.append(PairLabel(
                p=clamp(p, *clamp_range) if cot else p, principles=[pr.id for pr in principles],
                p_order_ab=ab, p_order_ba=ba, flipped=order_flipped(mean_ab, mean_ba), p_unclamped=p,
                reasoning=reasoning[k: k + 2 * n] if reasoning is not None else []))
            k += 2 * n
        return labels


def label_summary(labels: list[PairLabel]) -> dict:
    """How decided and how position-biased the labels are."""
    n = len(labels)
    if n == 0:
        return {"labeled": 0}
    ab = [x for lab in labels for x in lab.p_order_ab]
    ba = [x for lab in labels for x in lab.p_order_ba]
    return {
        "labeled": n,
        "mean_abs_p_minus_half": sum(abs(lab.p - 0.5) for lab in labels) / n,
        "flip_rate": sum(lab.flipped for lab in labels) / n,
        # P(the option shown first wins), over every scored order: 0.5 for a judge without position bias
        "p_first_position": (sum(ab) + sum(1.0 - x for x in ba)) / (len(ab) + len(ba)),
        "prefers_responses0": sum(lab.p > 0.5 for lab in labels) / n,
    }
