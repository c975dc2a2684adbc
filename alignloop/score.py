"""`alignloop score`: add a reward model's scores to a samples file (`rewards: {NAME: [...]}`,
and NAME_spread for an ensemble).

It streams: records are read, scored (forward-only, length-bucketed within a window of 1,024
responses, `models.reward_model.iter_raw_rewards`) and written one window at a time, so its
memory does not grow with the file."""

from __future__ import annotations

from collections import deque
from itertools import chain
from pathlib import Path

from alignloop.config import config_command
from alignloop.configs import ScoreConfig


def scored_records(rm, records, name: str, token_budget: int, advance=None, totals: list | None = None):
    """The records (an iterable, read lazily) with `rewards[name]` (and `name`_spread for an
    ensemble) added, in order. `totals`, if given, gains [n, sum, sum of squares] of the scores."""
    waiting: deque = deque()  # records read but not yet scored: at most one window

    def items():
        for r in records:
            waiting.append(r)
            yield r.chat(), r.responses

    for mean, spread, _ in rm.iter_score_groups(items(), token_budget, advance):
        r = waiting.popleft()
        rewards = dict(r.rewards or {})
        rewards[name] = [round(x, 6) for x in mean.tolist()]
        if rm.config["num_heads"] > 1:
            rewards[f"{name}_spread"] = [round(x, 6) for x in spread.tolist()]
        if totals is not None:
            totals[0] += mean.numel()
            totals[1] += mean.sum().item()
            totals[2] += mean.pow(2).sum().item()
        yield r.model_copy(update={"rewards": rewards})


def run_score(cfg: ScoreConfig) -> Path:
    from alignloop.data.io import DataError, iter_records, write_records
    from alignloop.data.records import Samples
    from alignloop.models.loading import pick_device
    from alignloop.models.reward_model import RewardModel
    from alignloop.progress import throughput_bar

    stream = iter_records(cfg.data, Samples)
    first = next(stream, None)
    if first is None:
        raise DataError(f"{Path(cfg.data)}: no records")
    rm = RewardModel.load(cfg.reward, pick_device(cfg.device))
    totals = [0, 0.0, 0.0]
    with throughput_bar(f"score: scoring the responses of {cfg.data}", None) as advance:
        records = write_records(cfg.out, scored_records(rm, chain([first], stream), cfg.name,
                                                        cfg.scoring_token_budget, advance, totals))
    n, total, squares = totals
    mean = total / n
    std = (max(squares / n - mean * mean, 0.0) * n / max(n - 1, 1)) ** 0.5
    print(f"scored {n} responses of {records} prompts: mean {mean:.3f}, std {std:.3f}; wrote {cfg.out}")
    return Path(cfg.out)


command = config_command(ScoreConfig, run_score, "score",
                         help="Score the responses of a samples file with a reward model (adds `rewards`).")
