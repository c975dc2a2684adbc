"""`alignloop quickstart` (what `make demo` runs): the shipped recipe `quickstart.yaml`.

The whole loop on the bundled SmolLM2-135M-Instruct: LoRA SFT on the shipped demonstrations,
4 samples per training prompt, a simulated panel of 3 raters, the feedback-quality report and
consensus labels, a reward model, PPO, evaluation on held-out prompts and the HTML report.
It is `alignloop run quickstart --out runs/quickstart`: finished stages are skipped, so a
second run only reports; `--resume` continues an interrupted stage from its checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field

from alignloop.config import StageConfig, config_command


class QuickstartConfig(StageConfig):
    """`alignloop quickstart`: the shipped recipe quickstart.yaml into a run folder."""

    out: Path = Field(Path("runs/quickstart"), description="Run folder (sft/, samples.jsonl, ..., report.html).")
    resume: bool = Field(False, description="Continue an interrupted stage from its last checkpoint.")
    model: str | None = Field(None, description="Base model instead of the recipe's (registry name, folder or HF id).")
    seed: int | None = Field(None, description="Seed of every stage instead of the recipe's 0 (docs/quickstart-history.md compares seeds 0, 1, 2).")


def run_quickstart(cfg: QuickstartConfig):
    from alignloop.pipeline import EXIT_STOPPED, EXIT_WAITING, run_recipe

    sets = ([f"model={cfg.model}"] if cfg.model else []) + ([f"seed={cfg.seed}"] if cfg.seed is not None else [])
    result = run_recipe("quickstart", cfg.out, cfg.resume, sets)
    if result.status != "done":
        sys.exit(EXIT_WAITING if result.status == "waiting" else EXIT_STOPPED)
    return result


command = config_command(QuickstartConfig, run_quickstart, "quickstart",
                         help="The whole RLHF loop on the bundled model: the shipped recipe quickstart.yaml "
                              "(what `make demo` runs).")
