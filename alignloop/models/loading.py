"""Load tokenizers and causal LMs (dtype, LoRA adapters) and save trained ones.

A model folder written by alignloop is either a full Hugging Face model folder or a peft
adapter folder; both carry `alignloop_model.json` naming the base model: a registry name or a
Hugging Face id as given (also in the adapter's `adapter_config.json`, never the local cache
path it resolved to), a folder by its path relative to the saved folder (a run folder moved
or copied as a whole still finds it), with the absolute path it resolved to as `base_path`, a
hint used only when the name no longer leads anywhere. Loading an adapter
folder loads its base, applies the adapter and, by default, merges it into the weights:
the next stage then starts from the merged model (its reference when it adds a fresh LoRA).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from huggingface_hub import utils as hf_hub_utils
from transformers.utils import logging as hf_logging

from alignloop.config import LoraOptions, ModelOptions
from alignloop.data.hf import HUB_ID
from alignloop.models.registry import BUNDLED, alignloop_home, resolve_model

MODEL_INFO = "alignloop_model.json"
hf_logging.disable_progress_bar()  # our own progress display; no per-load / per-save bars
hf_hub_utils.disable_progress_bars()


@contextlib.contextmanager
def _peft_wrapping():
    """peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` on every wrap (its
    own call, not ours: `peft_model.py`); that one warning is silenced while peft wraps a model,
    and nothing else, so a deprecated call of alignloop's own still shows (and fails the tests)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


@functools.cache
def cpu_has_fast_half(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies bfloat16 / float16 matrices in hardware-backed kernels.

    oneDNN's bf16 kernels need AVX-512 (AVX512-BF16 or AMX run them natively); on an AVX2-only
    CPU torch falls back to a reference path: a 512x576 @ 576x1536 bf16 matmul took 733 ms there
    against 11 ms in float32 (AMD EPYC with AVX2, torch 2.13), so a bf16 run is ~60x slower."""
    check = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}.get(dtype)
    if check is None:
        return True
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):  # a torch without the probe: trust the request
        return True


def cpu_half_or_float32(dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.dtype:
    """`dtype`, unless it is a half type asked for on a CPU without fast kernels for it: then
    float32, with a one-line notice on stderr (once per process and dtype)."""
    if torch.device(device).type != "cpu" or cpu_has_fast_half(dtype):
        return dtype
    if dtype not in _HALF_NOTICED:
        _HALF_NOTICED.add(dtype)
        name = str(dtype).removeprefix("torch.")
        print(f"note: this CPU has no fast {name} kernels (oneDNN needs AVX-512; {name} matmuls run about 60x "
              f"slower than float32 here): using float32 instead", file=sys.stderr)
    return torch.float32


_HALF_NOTICED: set[torch.dtype] = set()


def resolve_dtype(dtype: str, device: torch.device | str = "cpu") -> torch.dtype:
    """'auto' is float32 on CPU and bfloat16 on a GPU that supports it; a half type on a CPU
    without fast kernels for it is float32 (`cpu_half_or_float32`)."""
    if dtype == "auto":
        device = torch.device(device)
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    asked = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    return cpu_half_or_float32(asked, device)


def frozen_linears_to(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Store the weight and bias of each frozen nn.Linear of `model` in `dtype` (in place), for a
    model that only runs under `torch.autocast(dtype=dtype)`: returns `model`.

    Autocast casts a float32 linear weight to its lower precision at every call (and caches the
    cast only for weights that require grad), so the layer computes the same bits from a weight
    stored in that precision: the forward is unchanged bit for bit, the linear weights take half
    the memory and the per-call casts go. Everything else keeps its dtype (embeddings, norms),
    so the residual stream stays float32 under autocast; a Linear whose weight is also an
    embedding's (a tied LM head: casting it would make the embedding output half) and a
    trainable one (LoRA's A and B) are left alone.

    The frozen tensors left as they were are copied into memory of their own: a float32
    checkpoint is loaded zero-copy, its tensors views of the mapped safetensors file, and while
    one of them lives the whole mapping stays, with the pages the casts read resident (measured:
    the bundled model's 425 MB of linear weights stayed in the RSS beside their bf16 copies)."""
    embedded = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    cast = set()
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if (isinstance(module, torch.nn.Linear) and not any(p.requires_grad for p in params)
                and not any(id(p) in embedded for p in params)):
            module.to(dtype)
            cast.update(map(id, params))
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if id(tensor) not in cast and not tensor.requires_grad:
                tensor.data = tensor.data.clone()
    return model


def pick_device(device: str = "auto") -> str:
    """'auto' is cuda when a GPU is there, else cpu; anything else (cpu, cuda, cuda:N) as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_info(name: str) -> dict:
    """A saved folder's alignloop_model.json, its `base` made loadable from here (`locate_base`)."""
    path = Path(name) / MODEL_INFO
    info = json.loads(path.read_text()) if path.exists() else {}
    if info.get("base"):
        info["base"] = locate_base(Path(name), info)
    return info


def recorded_base(base: str, out: Path) -> dict[str, str | None]:
    """How a folder saved to `out` names its base (see the module docstring): {base, base_path}."""
    path = Path(base).expanduser()
    if not path.exists():
        resolved = resolve_model(base)  # a registry name (cached when it was loaded) or a hub id
        return {"base": base, "base_path": resolved if Path(resolved).exists() else None}
    absolute = path.resolve()
    cached = {Path(alignloop_home() / "models" / name).resolve(): name for name in BUNDLED}
    if absolute in cached:  # the registry's own cache folder: its name travels, the path does not
        return {"base": cached[absolute], "base_path": str(absolute)}
    return {"base": os.path.relpath(absolute, Path(out).resolve()), "base_path": str(absolute)}


def locate_base(folder: Path, info: dict) -> str:
    """The recorded base as a name `resolve_model` loads: a folder relative to `folder`, a
    registry name or hub id as it is, else the `base_path` hint when that exists."""
    base = info["base"]
    if Path(base).is_absolute():  # folders saved before bases were recorded relative
        return base
    beside = folder / base
    if beside.exists():
        return str(beside)
    if base in BUNDLED or HUB_ID.match(base):  # a name: resolve_model finds it
        return base
    hint = info.get("base_path")
    return hint if hint and Path(hint).exists() else str(beside)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a model (for an adapter folder, its own copy or its base's)."""
    path = resolve_model(name)
    if not (Path(path) / "tokenizer_config.json").exists() and model_info(path).get("base"):
        path = resolve_model(model_info(path)["base"])
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise ValueError(f"model '{name}': its tokenizer has no chat template")
    return tok


def load_causal_lm(name: str, dtype: str = "auto", device: str | torch.device = "cpu",
                   merge_adapters: bool = True) -> PreTrainedModel:
    """A causal LM in eval mode; an adapter folder is loaded on its base (merged by default)."""
    path = resolve_model(name)
    torch_dtype = resolve_dtype(dtype, device)
    if (Path(path) / "adapter_config.json").exists():
        from peft import PeftModel

        base_name = model_info(path).get("base") or json.loads((Path(path) / "adapter_config.json").read_text())[
            "base_model_name_or_path"]
        base = load_causal_lm(base_name, dtype, device)
        with _peft_wrapping():
            model = PeftModel.from_pretrained(base, path)
        model = model.merge_and_unload() if merge_adapters else model
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    model.to(device)
    model.eval()
    return model


def apply_lora(model: PreTrainedModel, opts: LoraOptions, adapter_name: str = "default"):
    """Wrap `model` with fresh LoRA adapters (peft); only the adapters are trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=opts.lora_rank, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                        target_modules=list(opts.lora_targets), task_type="CAUSAL_LM", bias="none")
    with _peft_wrapping():
        return get_peft_model(model, config, adapter_name=adapter_name)


def load_trainable(opts: ModelOptions, device: str | torch.device = "cpu", name: str | None = None):
    """The model to fine-tune (`name`, default opts.model): LoRA-wrapped (opts.lora) or with
    every weight trainable."""
    model = load_causal_lm(name or opts.model, opts.dtype, device)
    if opts.lora:
        model = apply_lora(model, opts)
    else:
        model.requires_grad_(True)
    model.train()
    return model


def save_model(model, tokenizer, out: str | Path, base: str, extra: dict | None = None,
               state_dict: dict | None = None) -> None:
    """Save a full model folder, or only the adapter when `model` is a peft model.

    `base` is the name the adapter applies to (recorded in alignloop_model.json); `state_dict`
    the model's whole state when its own is sharded (FSDP / ZeRO-3, gathered by the caller).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    is_adapter = hasattr(model, "peft_config")
    model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(out)
    recorded = recorded_base(base, out) if is_adapter else {"base": None}
    if is_adapter:  # peft wrote the cache path it loaded from; a name travels (a folder: its absolute path)
        adapter_config = json.loads((out / "adapter_config.json").read_text())
        a_folder = Path(base).expanduser().exists() and recorded["base"] not in BUNDLED
        adapter_config["base_model_name_or_path"] = recorded["base_path"] if a_folder else recorded["base"]
        (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True))
    info = {**recorded, "adapter": is_adapter, **(extra or {})}
    (out / MODEL_INFO).write_text(json.dumps(info, indent=2))
