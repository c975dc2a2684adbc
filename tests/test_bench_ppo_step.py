"""benchmarks/ppo_step.py's arithmetic: the FLOP count of a PPO iteration by phase, and the
mean / standard error / ratio it prints. Values worked out by hand; no timing here."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("ppo_step", Path(__file__).resolve().parent.parent / "benchmarks" / "ppo_step.py")
ppo_step = sys.modules.setdefault("ppo_step", importlib.util.module_from_spec(spec))
spec.loader.exec_module(ppo_step)


def test_iteration_flops_by_phase():
    # trunk 10 weights, head 3; 5 real tokens of which 2 are response tokens:
    # one pass = 10 x 5 + 3 x 2 = 56 multiply-adds.
    size, tokens = ppo_step.ModelSize(trunk=10, head=3), ppo_step.IterationTokens(total=5, response=2)
    full = ppo_step.iteration_flops(size, tokens, epochs=4, lora=False)
    assert full == {"generate": 2 * 56, "score": 2 * 10 * 5, "forward": 4 * 56, "train": 4 * 6 * 56}
    lora = ppo_step.iteration_flops(size, tokens, epochs=4, lora=True)
    assert lora == {**full, "train": 4 * 4 * 56}  # no weight gradients for the frozen base


def test_head_counts_only_on_response_tokens():
    size = ppo_step.ModelSize(trunk=0, head=7)
    flops = ppo_step.iteration_flops(size, ppo_step.IterationTokens(total=100, response=3), epochs=1, lora=False)
    assert flops["generate"] == 2 * 7 * 3 and flops["score"] == 0


def test_mean_se_and_ratio_se():
    m, se = ppo_step.mean_se([1.0, 2.0, 3.0])  # stdev 1
    assert m == 2.0 and se == pytest.approx(1 / math.sqrt(3))
    assert math.isnan(ppo_step.mean_se([4.0])[1])
    r, se_r = ppo_step.ratio_se(6.0, 0.6, 3.0, 0.3)  # 10% and 10% relative errors
    assert r == 2.0 and se_r == pytest.approx(2.0 * math.sqrt(0.02))
