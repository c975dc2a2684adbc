"""`alignloop sft`: supervised fine-tuning on demonstrations, loss on response tokens only.

The loop, per optimizer step s:
  1) the global batch is examples order[s*G : (s+1)*G] of the epoch's permutation
     (G = batch_size * grad_accum * processes), so the data position is just `s`;
  2) each process takes its share, in `grad_accum` micro-batches;
  3) loss = sum of response-token NLL / response tokens of the WHOLE global batch, so the
     gradient is the same for any split into processes and micro-batches;
  4) clip, step the optimizer and the LR schedule (warm-up, then decay);
  5) log, evaluate the held-out loss, checkpoint.
`--resume` restores weights, optimizer, scheduler, RNG and `s` from out/checkpoint.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import torch

from alignloop import metric_names as M
from alignloop.config import config_command
from alignloop.configs import SFTConfig


def load_examples(cfg: SFTConfig, tokenizer) -> tuple[list[dict], list[dict]]:
    """Tokenised (train, held-out) examples: {input_ids, response_mask, targets}."""
    from alignloop.data.chat import tokenize_example
    from alignloop.data.io import read_records
    from alignloop.data.records import Demonstration

    def encode(records):
        rows = [tokenize_example(tokenizer, r.chat(), r.response, cfg.max_length) for r in records]
        for row in rows:
            row["targets"] = sum(row["response_mask"][1:])
        return rows

    train = read_records(cfg.data, Demonstration)
    if cfg.heldout is not None:
        heldout = read_records(cfg.heldout, Demonstration)
    else:
        g = torch.Generator().manual_seed(cfg.seed)
        perm = torch.randperm(len(train), generator=g).tolist()
        n_held = int(len(train) * cfg.heldout_fraction)
        heldout = [train[i] for i in perm[:n_held]]
        train = [train[i] for i in sorted(perm[n_held:])]
    return encode(train), encode(heldout)


def make_batch(rows: list[dict], pad_id: int, device) -> dict[str, torch.Tensor]:
    from alignloop.data.padding import right_pad

    ids = right_pad([r["input_ids"] for r in rows], pad_id)
    mask = right_pad([[1] * len(r["input_ids"]) for r in rows], 0)
    resp = right_pad([r["response_mask"] for r in rows], 0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "response_mask": resp.to(device)}


@torch.no_grad()
def heldout_loss(accelerator, model, rows: list[dict], pad_id: int, batch_size: int) -> float | None:
    """Token-mean NLL of the held-out responses (all processes together)."""
    if not rows:
        return None
    model.eval()
    mine = rows[accelerator.process_index:: accelerator.num_processes]
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    for i in range(0, len(mine), batch_size):
        nll = model(**make_batch(mine[i: i + batch_size], pad_id, accelerator.device))
        total += torch.stack([nll.sum().double(), torch.tensor(float(nll.numel()), device=nll.device).double()])
    total = accelerator.reduce(total, reduction="sum")
    model.train()
    return (total[0] / total[1].clamp(min=1)).item()


def run_sft(cfg: SFTConfig) -> Path:
    from alignloop.models.forward import ResponseNLL
    from alignloop.models.loading import load_tokenizer, load_trainable, save_model
    from alignloop.progress import progress_bar
    from alignloop.train.checkpoint import drop_checkpoint, refuse_to_overwrite, save_checkpoint, start_run
    from alignloop.train.common import whole_state
    from alignloop.train.common import epoch_order, global_batches, make_accelerator, make_optimizer, seed_everything

    out = Path(cfg.out)
    refuse_to_overwrite(out, cfg.resume)
    accelerator = make_accelerator(cfg.mixed_precision)
    seed_everything(cfg.seed)

    # Data and model.
    tokenizer = load_tokenizer(cfg.model)
    train, heldout = load_examples(cfg, tokenizer)
    world = accelerator.num_processes
    global_batch, steps_per_epoch = global_batches(len(train), cfg.batch_size, cfg.grad_accum, world, cfg.data)
    total_steps = steps_per_epoch * cfg.epochs
    lm = load_trainable(cfg, accelerator.device)
    model = ResponseNLL(lm)
    optimizer, scheduler = make_optimizer(model, cfg, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    pad_id = tokenizer.pad_token_id

    tracker, state = start_run(out, cfg, accelerator, model, optimizer, scheduler, "step", total_steps)
    step = state.get("step", 0)

    if step == 0:  # the starting point of the held-out curve
        tracker.log(0, {M.EVAL_LOSS: heldout_loss(accelerator, model, heldout, pad_id, cfg.batch_size)})
    stop = min(total_steps, cfg.stop_at_step or total_steps)
    with progress_bar("sft", total_steps, enabled=accelerator.is_main_process) as advance:
        advance(step)
        while step < stop:
            t0 = time.time()
            # 1) this step's global batch; 2) this process's share in micro-batches.
            epoch, s = divmod(step, steps_per_epoch)
            order = epoch_order(len(train), cfg.seed, epoch)
            batch = [train[i] for i in order[s * global_batch: (s + 1) * global_batch]]
            step_targets = sum(r["targets"] for r in batch)
            share = batch[accelerator.process_index * cfg.batch_size * cfg.grad_accum:][: cfg.batch_size * cfg.grad_accum]
            loss_sum = 0.0
            for m in range(cfg.grad_accum):
                micro = share[m * cfg.batch_size: (m + 1) * cfg.batch_size]
                sync = m == cfg.grad_accum - 1
                with accelerator.no_sync(model) if not sync and world > 1 else nullcontext():
                    nll = model(**make_batch(micro, pad_id, accelerator.device))
                    # 3) normalise by the global batch's token count (x world: DDP averages).
                    loss = nll.sum() / step_targets * world
                    accelerator.backward(loss)
                loss_sum += nll.sum().item() / step_targets
            # 4) clip, step.
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            # 5) log, evaluate, checkpoint.
            train_loss = accelerator.reduce(torch.tensor(loss_sum, device=accelerator.device), "sum").item()
            metrics = {M.TRAIN_LOSS: train_loss, M.GRAD_NORM: float(grad_norm), M.LR: scheduler.get_last_lr()[0],
                       M.EPOCH: step / steps_per_epoch, M.STEP_S: time.time() - t0}
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps:
                metrics[M.EVAL_LOSS] = heldout_loss(accelerator, model, heldout, pad_id, cfg.batch_size)
            tracker.log(step, metrics)
            advance(1, loss=train_loss)
            if (cfg.save_every and step % cfg.save_every == 0 and step < total_steps) or step == stop < total_steps:
                save_checkpoint(out, accelerator, model, optimizer, scheduler, {"step": step})

    tracker.close()
    if step < total_steps:
        accelerator.print(f"stopped at step {step}/{total_steps}; continue with --resume")
        return out
    lm = accelerator.unwrap_model(model).lm
    state = whole_state(accelerator, lm)  # FSDP / ZeRO-3: gathered from every process's shards
    if accelerator.is_main_process:
        save_model(lm, tokenizer, out, base=cfg.model, state_dict=state)
        drop_checkpoint(out, cfg.keep_checkpoint)
        final = [m for m in _read(out) if m.get(M.EVAL_LOSS) is not None]
        if final:
            first, last = final[0][M.EVAL_LOSS], final[-1][M.EVAL_LOSS]
            accelerator.print(f"held-out loss {first:.4f} -> {last:.4f} after {step} steps; model saved to {out}")
    accelerator.wait_for_everyone()
    return out


def _read(out: Path) -> list[dict]:
    from alignloop.train.tracking import read_metrics

    return read_metrics(out) if (out / "metrics.jsonl").exists() else []


command = config_command(SFTConfig, run_sft, "sft",
                         help="Supervised fine-tuning on demonstrations (response tokens only), LoRA or full, "
                              "resumable; runs on several processes under `accelerate launch`.")
