"""Checkpoints that make `--resume` equal an uninterrupted run.

A checkpoint folder holds the trainable weights (only the adapters under LoRA), the optimizer
and scheduler states, the loop's own state (step, data position, KL controller ...) and one
RNG file per process (python, numpy, torch, cuda). It is written to a temporary folder and
renamed into place, so a kill during saving leaves the previous checkpoint intact.

Under FSDP or DeepSpeed (`sharded_state`) no process holds all of the weights or optimizer
states: Accelerate's `save_state` writes them as shards, every process its own, into
checkpoint/accelerate/ (FSDP2: torch.distributed.checkpoint; DeepSpeed: its engine
checkpoint), and `load_state` reads them back into the same layout. The scheduler, the loop
state and the RNG files stay alignloop's own, as under DDP / one process.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from alignloop.train.common import sharded_state

CHECKPOINT = "checkpoint"
SHARDS = "accelerate"  # checkpoint/accelerate/: Accelerate's save_state (sharded weights and optimizer)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out: Path, accelerator, model, optimizer, scheduler, state: dict) -> Path:
    """Save into out/checkpoint atomically; every process writes its RNG, the main one the rest."""
    final = Path(out) / CHECKPOINT
    tmp = Path(out) / f".{CHECKPOINT}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if sharded_state(accelerator):  # collective: every process writes its shards
        accelerator.save_state(str(tmp / SHARDS))
    if accelerator.is_main_process:
        if not sharded_state(accelerator):
            torch.save(trainable_state(accelerator.unwrap_model(model)), tmp / "trainable.pt")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        old = Path(out) / f".{CHECKPOINT}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def finish_interrupted_save(out: Path) -> None:
    """A kill between save_checkpoint's two renames leaves .checkpoint.old (the previous one)
    and the complete .checkpoint.tmp but no checkpoint/: put the new one in place."""
    final, tmp, old = Path(out) / CHECKPOINT, Path(out) / f".{CHECKPOINT}.tmp", Path(out) / f".{CHECKPOINT}.old"
    if not final.exists() and old.exists() and (tmp / "state.json").exists():
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)


def has_checkpoint(out: Path) -> bool:
    finish_interrupted_save(out)
    return (Path(out) / CHECKPOINT / "state.json").exists()


def load_checkpoint(out: Path, accelerator, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and this process's RNG; returns the loop state."""
    folder = Path(out) / CHECKPOINT
    if sharded_state(accelerator) != (folder / SHARDS).is_dir():
        saved, now = ("sharded", "without") if (folder / SHARDS).is_dir() else ("without", "sharded")
        raise ValueError(f"{folder}: saved {saved} weights (FSDP / DeepSpeed), resumed {now}: resume under the "
                         "launch config it was saved with")
    if sharded_state(accelerator):
        accelerator.load_state(str(folder / SHARDS))  # also Accelerate's RNG states: ours below win
    else:
        load_whole(folder, accelerator.unwrap_model(model), optimizer)
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    rng_file = folder / f"rng-{accelerator.process_index}.pt"
    if not rng_file.exists():
        raise ValueError(f"{folder}: saved with fewer processes than now ({rng_file.name} missing)")
    set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((folder / "state.json").read_text())


def load_whole(folder: Path, unwrapped, optimizer) -> None:
    """The trainable weights and the optimizer of a checkpoint saved without sharding."""
    weights = torch.load(folder / "trainable.pt", map_location="cpu", weights_only=True)
    params = dict(unwrapped.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise ValueError(f"{folder}: checkpoint does not match the model (unknown parameter {missing[0]})")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False))


def refuse_to_overwrite(out: Path, resume: bool) -> None:
    """A folder with an unfinished run's checkpoint is only continued, never silently restarted."""
    if has_checkpoint(out) and not resume:
        from alignloop.config import ConfigError

        raise ConfigError(f"{out} holds a checkpoint of an unfinished run: pass --resume, or choose another --out")


def start_run(out: Path, cfg, accelerator, model, optimizer, scheduler, counter: str, total: int):
    """Open the run folder: restore the checkpoint when resuming (metrics logged after it are
    dropped), save the resolved config. Returns (tracker, loop state: {} for a fresh run)."""
    from alignloop.config import save_config
    from alignloop.train.tracking import Tracker

    tracker = Tracker(Path(out), enabled=accelerator.is_main_process)
    state: dict = {}
    if cfg.resume and has_checkpoint(out):
        state = load_checkpoint(out, accelerator, model, optimizer, scheduler)
        tracker.resume_from(state[counter])
        accelerator.print(f"resuming {out} at {counter} {state[counter]}/{total}")
    if accelerator.is_main_process:
        Path(out).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(out) / "config.yaml")
    return tracker, state


def drop_checkpoint(out: Path, keep: bool) -> None:
    """After a finished run the checkpoint only costs disk (full fine-tuning: 3x the model)."""
    if not keep:
        shutil.rmtree(Path(out) / CHECKPOINT, ignore_errors=True)
