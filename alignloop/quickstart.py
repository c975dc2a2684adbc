"""`alignloop quickstart` (what `make demo` runs): the main job on the bundled model.

Stages so far: 1) LoRA SFT of SmolLM2-135M-Instruct on the shipped demonstrations;
2) K samples per held-out prompt from the fine-tuned model. Each stage is skipped when its
output already exists, so a second run only reports.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from pydantic import Field

from alignloop.config import DEFAULT_MODEL, StageConfig, config_command


def asset(name: str) -> Path:
    """Path of a shipped data file under alignloop/assets/."""
    return Path(str(files("alignloop") / "assets" / name))


class QuickstartConfig(StageConfig):
    """`alignloop quickstart`: SFT on the shipped demonstrations, then samples on held-out prompts."""

    out: Path = Field(Path("runs/quickstart"), description="Run folder (sft/, samples.jsonl).")
    model: str = Field(DEFAULT_MODEL, description="Base model (registry name, folder or HF id).")
    sft_epochs: int = Field(1, ge=1, description="SFT passes over the shipped demonstrations.")
    num_samples: int = Field(4, ge=1, description="Samples per held-out prompt.")
    max_new_tokens: int = Field(64, ge=1, description="Most tokens per sample.")
    seed: int = Field(0, description="Random seed of every stage.")


def run_quickstart(cfg: QuickstartConfig) -> Path:
    from alignloop.models.generation import GenerateConfig, run_generate
    from alignloop.progress import console
    from alignloop.train.sft import SFTConfig, run_sft

    out = Path(cfg.out)
    sft_dir, samples = out / "sft", out / "samples.jsonl"
    console.rule("[bold]stage 1/2: SFT (LoRA) on the shipped demonstrations")
    if (sft_dir / "alignloop_model.json").exists():
        console.print(f"{sft_dir} exists: skipped")
    else:
        run_sft(SFTConfig(model=cfg.model, data=asset("demonstrations.jsonl"), out=sft_dir, epochs=cfg.sft_epochs,
                          batch_size=4, learning_rate=2e-4, max_length=256, eval_every=10, save_every=10,
                          seed=cfg.seed, resume=(sft_dir / "checkpoint").exists()))
    console.rule(f"[bold]stage 2/2: {cfg.num_samples} samples per held-out prompt")
    if samples.exists():
        console.print(f"{samples} exists: skipped")
    else:
        run_generate(GenerateConfig(model=str(sft_dir), prompts=asset("prompts_heldout.jsonl"), out=samples,
                                    num_samples=cfg.num_samples, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed))
    console.print(f"SFT model: {sft_dir}\nsamples:   {samples}")
    return out


command = config_command(QuickstartConfig, run_quickstart, "quickstart",
                         help="The main job on the bundled model (what `make demo` runs).")
