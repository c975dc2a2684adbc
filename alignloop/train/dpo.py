"""`alignloop dpo`: direct preference optimisation on comparisons, no reward model.

The policy's implicit reward of a response is beta x r, r = log pi(y|x) - log pi_ref(y|x)
(Rafailov et al. 2023); the loss of a pair is a function of the log-ratio difference h = r_w -
r_l (`algorithms.preference_losses`: DPO, cDPO, robust, IPO, hinge; soft labels p on each). A
comparison record of K responses is ONE example: its C(K,2) pairs averaged (ties skipped or
trained toward 1/2), its `weight` applied, as the reward model does. The reference: with LoRA,
the same weights with the adapter off (one copy in memory); with full fine-tuning (or
--precompute-reference) its log-probs are computed once, before the first step, and stored in
OUT/reference_logps.pt, which --resume reuses. The loop, per optimizer step s:
  1) the global batch is records order[s*G : (s+1)*G] of the epoch's order (a prompt's records
     together, similar lengths together); its pairs are built once;
  2) each process takes its share in `grad_accum` micro-batches; each distinct prompt and
     response of a micro-batch is encoded once (`models.logprobs.ResponseLogprobs`);
  3) loss = sum_g w_g loss_g / sum_g w_g over the WHOLE global batch, so accumulation and
     several processes give the same gradient as one big batch;
  4) clip, optimizer and LR-schedule step; 5) log (rewards/..., logps/...), evaluate, checkpoint.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import torch

from alignloop import metric_names as M
from alignloop.config import config_command
from alignloop.configs import DPOConfig

REFERENCE_FILE = "reference_logps.pt"


def load_comparisons(cfg: DPOConfig, tokenizer) -> tuple[list[dict], list[dict]]:
    """Tokenised (train, held-out) records: {prompt, responses (token ids), tiers, p, weight},
    read and split as the reward model's are."""
    from alignloop.train.reward import encode_comparisons, read_comparisons

    train, heldout = read_comparisons(cfg)
    return encode_comparisons(train, tokenizer, cfg.max_length), encode_comparisons(heldout, tokenizer, cfg.max_length)


def response_logps(model, rows: list[dict], pad_id: int, device, adapter: bool = True) -> torch.Tensor:
    """(M,) sequence log-probs of the rows' responses, records concatenated in order; each
    distinct prompt and (prompt, response) is encoded once (`train.reward.distinct_responses`)."""
    from alignloop.models.reward_model import grouped_batch
    from alignloop.train.reward import distinct_responses

    prompts, responses, group, index = distinct_responses(rows)
    distinct = model(**grouped_batch(prompts, responses, group, pad_id, device), adapter=adapter)  # (U,)
    return distinct[torch.tensor(index, device=distinct.device)]


@torch.no_grad()
def reference_logps(accelerator, net, rows: list[dict], pad_id: int, batch_size: int, lora: bool) -> list[list[float]]:
    """Per row, the reference log-prob of each response: the model as it is now (before the first
    step), adapter off under LoRA. Each process computes every world-th row; all get all."""
    from accelerate.utils import gather_object

    was_training = net.training
    net.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    mine = list(range(rank, len(rows), world))
    out: list[tuple[int, list[float]]] = []
    for i in range(0, len(mine), batch_size):
        idx = mine[i: i + batch_size]
        with accelerator.autocast():
            logp = response_logps(net, [rows[j] for j in idx], pad_id, accelerator.device, adapter=not lora).float().cpu()
        offset = 0
        for j in idx:
            k = len(rows[j]["responses"])
            out.append((j, logp[offset: offset + k].tolist()))
            offset += k
    net.train(was_training)
    gathered = dict(gather_object(out)) if world > 1 else dict(out)
    return [gathered[j] for j in range(len(rows))]


def attach_reference(accelerator, net, out: Path, splits: dict[str, list[dict]], pad_id: int, batch_size: int,
                     lora: bool) -> None:
    """Give every row its reference log-probs ("ref"), from OUT/reference_logps.pt when a previous
    (interrupted) run of this output folder stored them, else computed now and stored."""
    path = Path(out) / REFERENCE_FILE
    stored = torch.load(path, weights_only=True) if path.exists() else None
    if stored is None or any(len(stored.get(k, [])) != len(rows) for k, rows in splits.items()):
        stored = {k: reference_logps(accelerator, net, rows, pad_id, batch_size, lora) for k, rows in splits.items()}
        if accelerator.is_main_process:
            from alignloop.data.io import atomic_path

            Path(out).mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                torch.save(stored, tmp)
        accelerator.wait_for_everyone()
    for k, rows in splits.items():
        for row, ref in zip(rows, stored[k]):
            row["ref"] = ref


def policy_and_reference(model, net, rows: list[dict], pad_id: int, device, lora: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) policy log-probs (with gradients) and (M,) reference log-probs of the rows' responses."""
    logp = response_logps(model, rows, pad_id, device).float()
    if "ref" in rows[0]:
        ref = torch.tensor([x for r in rows for x in r["ref"]], device=device, dtype=logp.dtype)
    else:  # LoRA: the same weights with the adapter off
        with torch.no_grad():
            ref = response_logps(net, rows, pad_id, device, adapter=False).float()
    return logp, ref


def pair_stats(logp: torch.Tensor, ref: torch.Tensor, pairs, beta: float) -> torch.Tensor:
    """(6,) sums over the decided pairs (p > 0.5) of beta r_w, beta r_l, log pi(w), log pi(l),
    the accuracy (r_w > r_l; equal counts 1/2), and their count: summable over batches and processes."""
    from alignloop.algorithms.reward_metrics import pairwise_accuracy

    keep = pairs.is_decided
    r = beta * (logp - ref).detach()
    w, l = pairs.winner[keep], pairs.loser[keep]
    correct = pairwise_accuracy(r[w], r[l], reduction="sum")
    return torch.stack([r[w].sum(), r[l].sum(), logp.detach()[w].sum(), logp.detach()[l].sum(), correct,
                        keep.sum().to(r.dtype)])


def stats_metrics(stats: list[float], names: tuple[str, ...]) -> dict:
    """rewards/chosen, rewards/rejected, rewards/margin, rewards/accuracy, logps/chosen, logps/rejected
    (under `names`, in that order) from `pair_stats` summed."""
    chosen, rejected, lp_c, lp_r, correct, n = stats
    if not n:
        return {}
    values = (chosen / n, rejected / n, (chosen - rejected) / n, correct / n, lp_c / n, lp_r / n)
    return dict(zip(names, values))


TRAIN_NAMES = (M.REWARDS_CHOSEN, M.REWARDS_REJECTED, M.REWARDS_MARGIN, M.REWARDS_ACCURACY, M.LOGPS_CHOSEN,
               M.LOGPS_REJECTED)
EVAL_NAMES = (M.EVAL_REWARDS_CHOSEN, M.EVAL_REWARDS_REJECTED, M.EVAL_REWARDS_MARGIN, M.EVAL_REWARDS_ACCURACY,
              M.EVAL_LOGPS_CHOSEN, M.EVAL_LOGPS_REJECTED)


@torch.no_grad()
def evaluate(accelerator, model, net, rows: list[dict], pad_id: int, cfg: DPOConfig) -> dict:
    """Held-out loss and the rewards/ logps/ figures (`pair_stats`), all processes together."""
    from alignloop.algorithms.preference_losses import ranking_preference_loss
    from alignloop.algorithms.reward_losses import build_pair_batch

    if not rows:
        return {}
    model.eval()
    mine = rows[accelerator.process_index:: accelerator.num_processes]
    totals = torch.zeros(8, device=accelerator.device)  # loss sum, weight, 6 pair stats
    for i in range(0, len(mine), cfg.batch_size):
        batch = mine[i: i + cfg.batch_size]
        pairs = build_pair_batch([r["tiers"] for r in batch], [r["p"] for r in batch], [r["weight"] for r in batch],
                                 cfg.tie_mode).to(accelerator.device)
        with accelerator.autocast():
            logp, ref = policy_and_reference(model, net, batch, pad_id, accelerator.device, cfg.lora)
        loss = ranking_preference_loss(logp - ref, pairs, cfg.beta, cfg.loss, cfg.label_smoothing, reduction="sum")
        totals += torch.cat([torch.stack([loss, pairs.effective_weight.sum()]), pair_stats(logp, ref, pairs, cfg.beta)])
    model.train()
    loss, weight, *stats = accelerator.reduce(totals, "sum").tolist()
    return {M.EVAL_LOSS: loss / max(weight, 1e-12), **stats_metrics(stats, EVAL_NAMES)}


class PolicyRun(NamedTuple):
    """What `start_policy_run` sets up for a DPO / KTO loop."""

    net: torch.nn.Module  # the unwrapped ResponseLogprobs (its reference, adapter switch)
    model: torch.nn.Module  # the same, prepared by Accelerate
    optimizer: object
    scheduler: object
    tracker: object
    step: int  # the step to start from (0, or the checkpoint's)
    pad_id: int


def start_policy_run(cfg, accelerator, out: Path, tokenizer, train: list[dict], heldout: list[dict], total_steps: int,
                     evaluate_fn) -> PolicyRun:
    """The policy (LoRA or full), its reference (the adapter off, or log-probs precomputed once),
    the optimizer, Accelerate, the tracker and the resumed step; the held-out metrics at step 0."""
    from alignloop.models.loading import load_trainable
    from alignloop.models.logprobs import ResponseLogprobs
    from alignloop.train.checkpoint import start_run
    from alignloop.train.common import make_optimizer

    device = accelerator.device
    net = ResponseLogprobs(load_trainable(cfg, device)).to(device)
    pad_id = tokenizer.pad_token_id
    if cfg.precompute_reference or not cfg.lora:
        attach_reference(accelerator, net, out, {"train": train, "heldout": heldout}, pad_id, cfg.batch_size, cfg.lora)
    optimizer, scheduler = make_optimizer(net, cfg, total_steps)
    model, optimizer = accelerator.prepare(net, optimizer)

    tracker, state = start_run(out, cfg, accelerator, model, optimizer, scheduler, "step", total_steps)
    step = state.get("step", 0)
    if step == 0 and cfg.eval_every:
        tracker.log(0, evaluate_fn(accelerator, model, net, heldout, pad_id, cfg))
    return PolicyRun(net, model, optimizer, scheduler, tracker, step, pad_id)


def run_dpo(cfg: DPOConfig) -> Path:
    """Train `cfg.model` by DPO on `cfg.data`; returns the output folder (a model folder when finished)."""
    from alignloop.algorithms.preference_losses import ranking_preference_loss
    from alignloop.algorithms.reward_losses import build_pair_batch
    from alignloop.models.loading import load_tokenizer
    from alignloop.train.checkpoint import refuse_to_overwrite, save_checkpoint
    from alignloop.train.common import global_batches, make_accelerator, seed_everything

    out = Path(cfg.out)
    refuse_to_overwrite(out, cfg.resume)
    accelerator = make_accelerator(cfg.mixed_precision)
    seed_everything(cfg.seed)

    # Data, model, reference, optimizer.
    tokenizer = load_tokenizer(cfg.model)
    train, heldout = load_comparisons(cfg, tokenizer)
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    global_batch, steps_per_epoch = global_batches(len(train), cfg.batch_size, cfg.grad_accum, world, cfg.data)
    total_steps = steps_per_epoch * cfg.epochs
    net, model, optimizer, scheduler, tracker, step, pad_id = start_policy_run(
        cfg, accelerator, out, tokenizer, train, heldout, total_steps, evaluate)
    order_of = batch_order(train, cfg, global_batch)

    stop = min(total_steps, cfg.stop_at_step or total_steps)
    with progress(accelerator, "dpo", total_steps) as advance:
        advance(step)
        while step < stop:
            t0 = time.time()
            # 1) the global batch and its pairs; its total record weight is the loss's denominator (3).
            epoch, s = divmod(step, steps_per_epoch)
            idx = order_of(epoch)[s * global_batch: (s + 1) * global_batch]
            batch = [train[i] for i in idx]
            pairs = build_pair_batch([r["tiers"] for r in batch], [r["p"] for r in batch], [r["weight"] for r in batch],
                                     cfg.tie_mode)
            denominator = pairs.effective_weight.sum().clamp_min(1e-12).to(device)
            # 2) this process's share in micro-batches: records [start, start + batch_size) of the batch.
            totals = torch.zeros(8, device=device)  # loss, pairs, 6 pair stats
            for m in range(cfg.grad_accum):
                start = (rank * cfg.grad_accum + m) * cfg.batch_size
                micro = batch[start: start + cfg.batch_size]
                micro_pairs = pairs.records(start, start + len(micro)).to(device)
                with accelerator.no_sync(model) if m < cfg.grad_accum - 1 and world > 1 else nullcontext():
                    with accelerator.autocast():
                        logp, ref = policy_and_reference(model, net, micro, pad_id, device, cfg.lora)
                    # 3) the weighted ranking loss over the whole global batch's weight (x world: DDP averages)
                    loss = ranking_preference_loss(logp - ref, micro_pairs, cfg.beta, cfg.loss, cfg.label_smoothing,
                                                   reduction="sum") / denominator
                    accelerator.backward(loss * world)
                totals += torch.cat([torch.stack([loss.detach(), torch.tensor(float(micro_pairs.p.numel()), device=device)]),
                                     pair_stats(logp, ref, micro_pairs, cfg.beta)])
            # 4) clip, step.
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            # 5) log, evaluate, checkpoint.
            loss_sum, n_pairs, *stats = accelerator.reduce(totals, "sum").tolist()
            elapsed = max(time.time() - t0, 1e-9)
            metrics = {M.TRAIN_LOSS: loss_sum, **stats_metrics(stats, TRAIN_NAMES), M.GRAD_NORM: float(grad_norm),
                       M.LR: scheduler.get_last_lr()[0], M.EPOCH: step / steps_per_epoch, M.STEP_S: elapsed,
                       M.PAIRS_PER_S: n_pairs / elapsed}
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps:
                metrics.update(evaluate(accelerator, model, net, heldout, pad_id, cfg))
            tracker.log(step, metrics)
            advance(1, loss=loss_sum, acc=metrics.get(M.REWARDS_ACCURACY, 0.0))
            if (cfg.save_every and step % cfg.save_every == 0 and step < total_steps) or step == stop < total_steps:
                save_checkpoint(out, accelerator, model, optimizer, scheduler, {"step": step})
    return finish(accelerator, model, tokenizer, tracker, out, cfg, step, total_steps, metrics if step else {})


def batch_order(rows: list[dict], cfg, global_batch: int):
    """epoch -> the epoch's record order: a prompt's records together, similar lengths together
    (`train.common.length_grouped_order`, a pure function of seed and epoch, so resuming is exact)."""
    from alignloop.train.common import epoch_order, length_grouped_order

    lengths = [len(r["prompt"]) + max(len(x) for x in r["responses"]) for r in rows]
    keys = [tuple(r["prompt"]) for r in rows] if getattr(cfg, "group_by_prompt", False) else None
    if not (cfg.group_by_length or keys):
        return lambda epoch: epoch_order(len(rows), cfg.seed, epoch)
    return lambda epoch: length_grouped_order(lengths if cfg.group_by_length else [0] * len(rows), global_batch,
                                              cfg.seed, epoch, keys=keys)


def progress(accelerator, name: str, total: int):
    from alignloop.progress import progress_bar

    return progress_bar(name, total, enabled=accelerator.is_main_process)


def finish(accelerator, model, tokenizer, tracker, out: Path, cfg, step: int, total_steps: int, metrics: dict) -> Path:
    """Save the policy (an adapter or a full model folder, as sft / ppo do) once every step is done."""
    from alignloop.models.loading import save_model
    from alignloop.train.checkpoint import drop_checkpoint
    from alignloop.train.common import whole_state

    tracker.close()
    if step < total_steps:
        accelerator.print(f"stopped at step {step}/{total_steps}; continue with --resume")
        return out
    lm = accelerator.unwrap_model(model).lm
    state = whole_state(accelerator, lm)  # FSDP / ZeRO-3: gathered from every process's shards
    if accelerator.is_main_process:
        save_model(lm, tokenizer, out, base=cfg.model, state_dict=state)
        drop_checkpoint(out, cfg.keep_checkpoint)
        shown = "  ".join(f"{k[5:]} {v:.3f}" for k, v in metrics.items() if k.startswith("eval/") and isinstance(v, float))
        accelerator.print(f"policy saved to {out}; held-out: {shown}")
    accelerator.wait_for_everyone()
    return out


command = config_command(DPOConfig, run_dpo, "dpo",
                         help="Direct preference optimisation (DPO, cDPO, robust, IPO, hinge) on rankings, pairs and "
                              "soft labels; LoRA (reference: adapter off) or full; resumable; several processes.")
