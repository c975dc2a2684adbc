"""`alignloop score`: add a reward model's scores to a samples file (`rewards: {NAME: [...]}`,
and NAME_spread for an ensemble)."""

from __future__ import annotations

from pathlib import Path

from alignloop.config import config_command
from alignloop.configs import ScoreConfig


def run_score(cfg: ScoreConfig) -> Path:
    from alignloop.data.io import read_records, write_records
    from alignloop.data.records import Samples
    from alignloop.models.loading import pick_device
    from alignloop.models.reward_model import RewardModel

    records = read_records(cfg.data, Samples)
    rm = RewardModel.load(cfg.reward, pick_device(cfg.device))
    prompts = [r.chat() for r in records for _ in r.responses]
    responses = [x for r in records for x in r.responses]
    mean, spread, _ = rm.score_ensemble(prompts, responses, cfg.batch_size)
    offset, out = 0, []
    for r in records:
        k = len(r.responses)
        rewards = dict(r.rewards or {})
        rewards[cfg.name] = [round(x, 6) for x in mean[offset: offset + k].tolist()]
        if rm.config["num_heads"] > 1:
            rewards[f"{cfg.name}_spread"] = [round(x, 6) for x in spread[offset: offset + k].tolist()]
        out.append(r.model_copy(update={"rewards": rewards}))
        offset += k
    write_records(cfg.out, out)
    print(f"scored {len(responses)} responses of {len(records)} prompts: mean {mean.mean():.3f}, "
          f"std {mean.std():.3f}; wrote {cfg.out}")
    return Path(cfg.out)


command = config_command(ScoreConfig, run_score, "score",
                         help="Score the responses of a samples file with a reward model (adds `rewards`).")
