"""RL-CAI soft labels and d-RLAIF ratings, from logits we control and worked out by hand."""

from __future__ import annotations

import math
import random

import pytest
import torch

from alignloop.cai import judge as judge_mod
from alignloop.cai.constitution import load_constitution
from alignloop.cai.direct import DirectJudge, rating_probs, rating_reward
from alignloop.cai.judge import (
    PreferenceJudge,
    clamp,
    combine_orders,
    label_summary,
    option_token_ids,
    order_flipped,
    soft_label,
)
from alignloop.cai.prompts import ANSWER_PREFIX, label_chat
from alignloop.models.generation import Sampling

from .fakes import FakeChoiceLM, FakeRatingLM

CHAT = [{"role": "user", "content": "Is it safe to mix bleach and vinegar?"}]
GOOD, BAD = "No, it releases chlorine gas.", "Sure, go ahead."


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_soft_label_by_hand():
    # logits A = 2, B = 0: P(A) = e^2 / (e^2 + e^0) = 1 / (1 + e^-2) = 0.880797
    assert soft_label(2.0, 0.0) == pytest.approx(0.880797, abs=1e-6)
    assert soft_label(0.0, 2.0) == pytest.approx(0.119203, abs=1e-6)
    assert soft_label(-3.0, -3.0) == 0.5
    # order AB gives responses[0] 0.8808; order BA (responses[0] shown as B, logits A = 1, B = 0)
    # gives P(B) = 1 - sigmoid(1) = 0.268941; the mean is (0.880797 + 0.268941) / 2 = 0.574869
    assert combine_orders(soft_label(2, 0), 1 - soft_label(1, 0)) == pytest.approx(0.574869, abs=1e-6)
    assert order_flipped(0.88, 0.27) and not order_flipped(0.88, 0.6) and not order_flipped(0.5, 0.1)
    assert [clamp(p, 0.4, 0.6) for p in (0.97, 0.02, 0.55)] == [0.6, 0.4, 0.55]


def _judge(tiny, quality, bias, constitution=None, few_shot=False):
    tokenizer = tiny[1]
    _, ids = option_token_ids(tokenizer)
    fake = FakeChoiceLM(tokenizer, ids, quality, bias)
    return PreferenceJudge(fake, tokenizer, constitution or load_constitution(), "fake", batch_size=3,
                           few_shot=few_shot), fake


def test_option_tokens_are_read_after_the_answer_prefix(tiny):
    tokenizer = tiny[1]
    context, (a, b) = option_token_ids(tokenizer)
    assert tokenizer.decode(context) == ANSWER_PREFIX and tokenizer.decode([a]) == "A" and tokenizer.decode([b]) == "B"


def test_known_logits_through_the_judge(tiny):
    # a judge that always says A with logits A = 2, B = 0, whatever the options
    judge, fake = _judge(tiny, {GOOD: 0.0, BAD: 0.0}, bias=2.0)
    (lab,) = judge.label([(CHAT, GOOD, BAD)], random.Random(0))
    assert lab.p_order_ab == [pytest.approx(0.880797, abs=1e-6)]
    assert lab.p_order_ba == [pytest.approx(0.119203, abs=1e-6)]  # P(B) in order BA
    assert lab.p == pytest.approx(0.5, abs=1e-6) and lab.flipped
    # the two scored prompts show the pair in both orders
    assert "(A) " + GOOD in fake.seen[-2] and "(B) " + BAD in fake.seen[-2]
    assert "(A) " + BAD in fake.seen[-1] and "(B) " + GOOD in fake.seen[-1]


def test_position_swap_removes_a_planted_order_bias(tiny):
    # true preference: GOOD by one logit (P = sigmoid(1) = 0.731); planted: +2 for whatever is (A)
    judge, _ = _judge(tiny, {GOOD: 1.0, BAD: 0.0, "tie one": 0.0, "tie two": 0.0}, bias=2.0)
    fwd, rev, tie = judge.label([(CHAT, GOOD, BAD), (CHAT, BAD, GOOD), (CHAT, "tie one", "tie two")],
                                random.Random(0))
    # one order alone is biased: BAD shown first wins, P = sigmoid(0 + 2 - 1) = 0.731
    assert rev.p_order_ab[0] == pytest.approx(sigmoid(1.0), abs=1e-6) and rev.p_order_ab[0] > 0.5
    # both orders: (sigmoid(3) + sigmoid(-1)) / 2 = 0.610706 for GOOD, whichever is responses[0]
    assert fwd.p == pytest.approx((sigmoid(3) + sigmoid(-1)) / 2, abs=1e-6)
    assert rev.p == pytest.approx(1 - fwd.p, abs=1e-6) and fwd.p > 0.5 > rev.p
    # equal responses: single order says 0.881, the average exactly 0.5
    assert tie.p_order_ab[0] == pytest.approx(sigmoid(2.0), abs=1e-6) and tie.p == pytest.approx(0.5, abs=1e-6)
    assert fwd.flipped and rev.flipped and tie.flipped
    s = label_summary([fwd, rev, tie])
    assert s["flip_rate"] == 1.0 and s["p_first_position"] > 0.7
    # without the bias nothing flips and the label is the true P = sigmoid(1)
    judge, _ = _judge(tiny, {GOOD: 1.0, BAD: 0.0}, bias=0.0)
    (clean,) = judge.label([(CHAT, GOOD, BAD)], random.Random(0))
    assert clean.p == pytest.approx(sigmoid(1.0), abs=1e-6) and not clean.flipped


def test_ensemble_averages_over_distinct_principles(tiny):
    judge, fake = _judge(tiny, {GOOD: 1.5, BAD: 0.0}, bias=0.5)
    (lab,) = judge.label([(CHAT, GOOD, BAD)], random.Random(3), principles_per_pair=4)
    assert len(set(lab.principles)) == 4 and len(lab.p_order_ab) == len(lab.p_order_ba) == 4
    questions = {judge.constitution.principle(pid).choice_question for pid in lab.principles}
    assert all(any(q in text for text in fake.seen) for q in questions)
    assert lab.p == pytest.approx(sum(a + b for a, b in zip(lab.p_order_ab, lab.p_order_ba)) / 8, abs=1e-9)


def test_chain_of_thought_is_scored_after_the_reasoning_and_clamped(tiny, monkeypatch):
    calls = []

    def fake_generate(model, tokenizer, chats, sampling, show_progress=True):
        calls.append(chats)
        return type("G", (), {"texts": [f"Reasoning number {k}." for k in range(len(chats))]})()

    monkeypatch.setattr("alignloop.models.generation.generate", fake_generate)
    judge, fake = _judge(tiny, {GOOD: 6.0, BAD: 0.0}, bias=0.0, few_shot=True)
    (lab,) = judge.label([(CHAT, GOOD, BAD)], random.Random(0), cot=True, cot_sampling=Sampling())
    # the reasoning prompt asks to think step by step and has no few-shot turns
    assert len(calls[0]) == 2 and "Let's think step by step" in calls[0][0][-1]["content"]
    assert len(calls[0][0]) == 1
    assert fake.seen[0].endswith("Reasoning number 0.\n\n" + ANSWER_PREFIX)
    assert lab.p_unclamped == pytest.approx(sigmoid(6.0), abs=1e-6)
    assert lab.p == 0.6 and lab.reasoning == ["Reasoning number 0.", "Reasoning number 1."]
    assert lab.meta(cot=True)["cot"] is True and "p_unclamped" in lab.meta(cot=True)


def test_label_few_shot_alternates_the_better_position():
    c = load_constitution()
    chat = label_chat(CHAT, GOOD, BAD, "Which is safer?", c.label_few_shot)
    assert [m["content"][-3:] for m in chat if m["role"] == "assistant"] == ["(A)", "(B)"]
    last = chat[-1]["content"]
    assert "Human: " + CHAT[0]["content"] in last and "Which is safer?\nOptions:\n" in last
    assert last.index("(A) " + GOOD) < last.index("(B) " + BAD)


def test_real_tiny_judge_is_batch_invariant(tiny):
    model, tokenizer = tiny
    items = [(CHAT, GOOD, BAD), ([{"role": "user", "content": "Hi"}], "Hello there, friend!", "Go away.")]
    labels = [PreferenceJudge(model, tokenizer, load_constitution(), batch_size=b).label(items, random.Random(1))
              for b in (1, 4)]
    for one, four in zip(*labels):
        assert 0 < one.p < 1 and one.principles == four.principles
        assert one.p == pytest.approx(four.p, abs=1e-5)  # left padding + position ids change nothing


# ---------------------------------------------------------------- d-RLAIF


def test_rating_distribution_by_hand():
    # first digit uniform over "1".."9" (column 9 repeats "1"), P("0" | "1") = 0.5:
    # P(1) = P(10) = 1/18, P(2..9) = 1/9; E = (1 + 10)/18 + (2 + ... + 9)/9 = 99/18 = 5.5 -> reward 0
    lp_first = torch.full((1, 10), math.log(1 / 9))
    probs = rating_probs(lp_first, torch.tensor([math.log(0.5)]))
    assert probs[0, 0].item() == pytest.approx(1 / 18) and probs[0, 9].item() == pytest.approx(1 / 18)
    assert rating_reward(probs).item() == pytest.approx(0.0, abs=1e-6)
    # all mass on "7": (7 - 5.5) / 4.5 = 1/3; on a single-token "10": 1; on "1": -1
    one_hot = torch.full((3, 10), -1e4)
    one_hot[0, 6] = one_hot[1, 9] = one_hot[2, 0] = 0.0
    assert rating_reward(rating_probs(one_hot, None)).tolist() == pytest.approx([1 / 3, 1.0, -1.0], abs=1e-6)


@pytest.mark.parametrize("zero_logit, expected", [(20.0, 1.0), (-20.0, -1.0)])
def test_direct_judge_reads_ten_as_one_then_zero(tiny, zero_logit, expected):
    tokenizer = tiny[1]
    probe = DirectJudge(tiny[0], tokenizer)
    assert probe.ten_extra is not None  # the tiny tokenizer splits " 10" into " 1", "0" (like SmolLM2)
    one, zero = probe.first_ids[0], probe.ten_extra
    fake = FakeRatingLM(len(tokenizer), first={one: 10.0}, after_one={zero: zero_logit})
    rewards = DirectJudge(fake, tokenizer).score([CHAT, CHAT], [GOOD, BAD])
    assert rewards == pytest.approx([expected, expected], abs=1e-6)
    assert fake.last_tokens == [one, one]  # the pass runs on "... Rating: 1"


def test_direct_judge_on_the_tiny_model(tiny):
    model, tokenizer = tiny
    prompts = [CHAT, [{"role": "user", "content": "Name a colour."}], CHAT]
    responses = [GOOD, "Blue is a lovely colour, and so is green.", BAD]
    a = DirectJudge(model, tokenizer, batch_size=1).score(prompts, responses)
    b = DirectJudge(model, tokenizer, batch_size=3).score(prompts, responses)
    assert all(-1 <= x <= 1 for x in a) and a == pytest.approx(b, abs=1e-5)
    probs = DirectJudge(model, tokenizer).rating_probs(prompts, responses)
    assert probs.shape == (3, 10) and torch.allclose(probs.sum(-1), torch.ones(3))
    assert judge_mod.pad_id_of(tokenizer) == tokenizer.pad_token_id
