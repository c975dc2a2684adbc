"""Pieces every training loop shares: seeding, the Accelerator, the LR schedule, batching."""

from __future__ import annotations

import math
import os
import random
from contextlib import contextmanager

import numpy as np
import torch

from alignloop.configs import OptimOptions


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based):
    1) linear warm-up over `warmup` steps; 2) cosine decay to 0.1, linear decay to 0, or constant."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, opts: OptimOptions, total_steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    if opts.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=opts.learning_rate, weight_decay=opts.weight_decay)
    else:  # fused: one kernel per step over all parameters instead of one per tensor and op
        optimizer = torch.optim.AdamW(params, lr=opts.learning_rate, weight_decay=opts.weight_decay, fused=True)
    warmup = int(round(opts.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, opts.schedule))
    return optimizer, scheduler


HALF_TYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # --mixed-precision -> its autocast dtype


def autocast_half_type(accelerator) -> torch.dtype | None:
    """The half type of the accelerator's own torch autocast (native amp), None without one
    (fp32, or DeepSpeed's bf16, which casts the weights itself): the dtype a frozen module that
    only runs under that autocast may store its linear weights in (`frozen_linears_to`)."""
    return HALF_TYPES.get(str(accelerator.mixed_precision)) if accelerator.native_amp else None


def make_accelerator(mixed_precision: str = "no"):
    """A fresh Accelerator. Stages run one after another in one process (a recipe) may ask for
    different precisions, so the per-run part of Accelerate's global state is reset first; the
    process group (PartialState) is kept. On a CPU without fast kernels for the asked half type
    (no AVX-512: `cpu_has_fast_half`) training runs in float32, with a notice."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from alignloop.models.loading import cpu_half_or_float32

    AcceleratorState._reset_state(reset_partial_state=False)
    on_cpu = not torch.cuda.is_available()
    half = HALF_TYPES.get(mixed_precision)
    if on_cpu and half is not None and cpu_half_or_float32(half) is torch.float32:
        mixed_precision = "no"  # autocast to a half type without fast kernels: ~60x slower matmuls
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=on_cpu)
    if on_cpu and accelerator.num_processes > 1 and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        fsdp_on_cpu(accelerator, mixed_precision)
    return accelerator


def fsdp_on_cpu(accelerator, mixed_precision: str) -> None:
    """Switch FSDP on for processes on CPU (gloo) launched with an FSDP config.

    Accelerate 1.15 enables FSDP only for GPU-like devices: on CPU it silently trains plain
    data-parallel (MULTI_CPU) instead. torch's FSDP2 (`fully_shard`) runs on CPU over gloo, so
    the plugin the launch config describes is installed as Accelerate itself would on a GPU.
    FSDP1 cannot: torch 2.13 refuses it on CPU ("Inconsistent compute device and `device_id`
    on rank 0: cpu vs cpu:0").
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from alignloop.config import ConfigError

    plugin = FullyShardedDataParallelPlugin()  # from the launch config's ACCELERATE_FSDP_* variables
    if plugin.fsdp_version != 2:
        raise ConfigError("FSDP on CPU needs fsdp_version: 2 in the launch config (torch 2.13's FSDP1 refuses CPU "
                          "devices: 'Inconsistent compute device and `device_id`'); use alignloop/configs/accelerate/fsdp.yaml")
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def sharded_state(accelerator) -> bool:
    """True under FSDP or DeepSpeed (any ZeRO stage): some of the training state (weights,
    gradients or optimizer states) lives in shards, so checkpoints go through Accelerate's
    `save_state` / `load_state`."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def sharded_weights(accelerator) -> bool:
    """True under DeepSpeed ZeRO-3 or FSDP: no process holds the whole model outside `whole_weights`."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


def whole_state(accelerator, module: torch.nn.Module) -> dict | None:
    """The whole state dict of `module` (the prepared model or a part of it) on the main
    process, on CPU, gathered from every process's shards (collective: every process calls
    it; the others get {}); None without sharded weights (save the module as it is).

    Under FSDP2 a module's own `state_dict()` stays sharded (DTensors) even while unsharded,
    so saving goes through torch's `get_model_state_dict(full_state_dict=True)` instead.
    """
    if not sharded_weights(accelerator):
        return None
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        with whole_weights(accelerator, module):
            return ({k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                    if accelerator.is_main_process else {})
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


@contextmanager
def whole_weights(accelerator, model: torch.nn.Module):
    """Inside the block every process holds the whole of the prepared `model`'s parameters
    (read them, save them, copy them into a sampling copy); they are sharded again after.

    FSDP2: every `fully_shard` unit unsharded (one all-gather each); FSDP1:
    `summon_full_params`; ZeRO-3: `deepspeed.zero.GatheredParameters`. Without sharded
    weights it does nothing. Every process must enter it (the gathers are collective).
    """
    if not sharded_weights(accelerator):
        yield
        return
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield
        return
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    if isinstance(model, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            yield
        return
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a permutation that depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 10_007 + epoch)
    return torch.randperm(n, generator=g).tolist()


def global_batches(n_examples: int, batch_size: int, grad_accum: int, world: int, source) -> tuple[int, int]:
    """(global batch size, optimizer steps per epoch); an epoch drops the last partial batch."""
    from alignloop.config import ConfigError

    global_batch = batch_size * grad_accum * world
    if n_examples < global_batch:
        raise ConfigError(f"{source}: {n_examples} training examples, fewer than one global batch "
                          f"(batch_size x grad_accum x processes = {global_batch})")
    return global_batch, n_examples // global_batch


def length_grouped_order(lengths: list[int], batch: int, seed: int, epoch: int, megabatch: int = 16,
                         keys: list | None = None) -> list[int]:
    """An epoch order whose consecutive `batch`-sized slices hold examples of similar length.

    1) the epoch's random permutation; with `keys`, examples of equal key (the same prompt) are
    then gathered into one cluster, placed where its first member fell, so a batch shares their
    prompt; 2) cut into megabatches of about `megabatch` batches, the clusters of each sorted
    by length (longest first); 3) the batches shuffled again. Still a pure function of
    (seed, epoch), so resuming needs only the step; padding waste drops to a few percent.
    Pass all-equal `lengths` to cluster by key without sorting by length.
    """
    order = epoch_order(len(lengths), seed, epoch)
    clusters: dict = {}
    for i in order:
        clusters.setdefault(i if keys is None else keys[i], []).append(i)
    chunk, megabatches, current, size = batch * megabatch, [], [], 0
    for members in clusters.values():
        current.append(members)
        size += len(members)
        if size >= chunk:
            megabatches.append(current)
            current, size = [], 0
    megabatches.append(current)
    order = [i for mega in megabatches for members in sorted(mega, key=lambda c: -max(lengths[j] for j in c))
             for i in members]
    batches = [order[s: s + batch] for s in range(0, len(order), batch)]
    g = torch.Generator().manual_seed(seed * 10_007 + epoch + 1)
    return [i for b in torch.randperm(len(batches), generator=g).tolist() for i in batches[b]]
