"""Reward sources for PPO and evaluation, combined with weights ("balance the feedback").

This module sits above models/ and cai/ (it wraps a reward model or an AI judge behind one
interface) and below train/ and evaluate/, which score with it.

A source is anything with a `name` and `score(prompts, responses) -> list[float]`, where a
prompt is a chat (list of {"role", "content"}) and a response is text. Specs, comma-separated,
each optionally weighted with `WEIGHT*`:

    runs/x/reward                        a reward model folder (`alignloop reward`); an ensemble
                                         scores mean - ensemble_k * spread
    rule:alignloop.quality.gold:helpful_harmless
                                         a Python function f(prompt: str, response: str) -> float
    judge:MODEL                          d-RLAIF: an AI judge scoring 1..10, rescaled to [-1, 1]
    0.7*runs/human_rm,0.3*runs/ai_rm     a weighted sum of sources
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from alignloop.config import ConfigError


class RewardSource(Protocol):
    name: str

    def score(self, prompts: list[list[dict[str, str]]], responses: list[str]) -> list[float]: ...


def last_user_text(chat: list[dict[str, str]] | str) -> str:
    if isinstance(chat, str):
        return chat
    return next(m["content"] for m in reversed(chat) if m["role"] == "user")


def import_callable(spec: str) -> Callable[..., Any]:
    """`package.module:function` -> the function, with a clear error when it is not there.
    Modules are looked up in the current folder too, as `python -m` does."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"'{spec}': expected module:function")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"'{spec}': cannot import {module_name} ({err})") from None
    if not hasattr(module, attr):
        raise ConfigError(f"'{spec}': {module_name} has no attribute {attr}")
    return getattr(module, attr)


@dataclass
class RuleReward:
    """A Python function of (prompt text, response text) -> float."""

    name: str
    fn: Callable[[str, str], float]

    def score(self, prompts, responses):
        return [float(self.fn(last_user_text(p), r)) for p, r in zip(prompts, responses, strict=True)]


@dataclass
class RewardModelSource:
    name: str
    model: Any  # alignloop.models.reward_model.RewardModel
    k: float = 0.0

    def score(self, prompts, responses):
        return self.model.score(prompts, responses, k=self.k)


def load_source(spec: str, device: str = "cpu", ensemble_k: float = 0.0) -> RewardSource:
    if spec.startswith("rule:"):
        return RuleReward(spec, import_callable(spec[len("rule:"):]))
    if spec.startswith("judge:"):
        from alignloop.cai.direct import DirectJudge  # d-RLAIF (the AI-feedback stage)

        return DirectJudge(spec[len("judge:"):], device=device)
    if not Path(spec).exists():
        raise FileNotFoundError(f"reward source '{spec}': no such reward model folder "
                                "(or use rule:module:function / judge:MODEL)")
    from alignloop.models.reward_model import RewardModel

    return RewardModelSource(spec, RewardModel.load(spec, device), ensemble_k)


def parse_specs(specs: str | list[str]) -> list[tuple[float, str]]:
    """'0.7*a,0.3*b' or ['a', '0.5*b'] -> [(0.7, 'a'), (0.3, 'b')]."""
    items = specs.split(",") if isinstance(specs, str) else specs
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        weight, star, rest = item.partition("*")
        if star:
            try:
                out.append((float(weight), rest.strip()))
            except ValueError:
                raise ConfigError(f"reward source '{item}': weight '{weight}' is not a number") from None
        else:
            out.append((1.0, item))
    if not out:
        raise ConfigError("no reward source given")
    return out


class CombinedReward:
    """sum_i w_i * source_i(prompt, response); `score_all` also returns each source's scores."""

    def __init__(self, specs: str | list[str], device: str = "cpu", ensemble_k: float = 0.0):
        self.sources = [(w, load_source(s, device, ensemble_k)) for w, s in parse_specs(specs)]

    def score_all(self, prompts, responses) -> tuple[list[float], dict[str, list[float]]]:
        """(total, {source name: scores}); a name given twice gets #2, #3 (each keeps its own scores)."""
        scores = [src.score(prompts, responses) for _, src in self.sources]
        total = [sum(w * s[i] for (w, _), s in zip(self.sources, scores)) for i in range(len(responses))]
        per_source: dict[str, list[float]] = {}
        for (_, src), s in zip(self.sources, scores):
            name, k = src.name, 2
            while name in per_source:
                name, k = f"{src.name}#{k}", k + 1
            per_source[name] = s
        return total, per_source

    def score(self, prompts, responses) -> list[float]:
        return self.score_all(prompts, responses)[0]
