"""`alignloop kto`: Kahneman-Tversky optimisation on binary feedback (Ethayarajh et al. 2024).

Each example is one (prompt, response, label): a thumbs up (desirable, 1) or down (0), as a
`thumbs` campaign exports them (`alignloop feedback export`) or as TRL's unpaired format
(prompt, completion, label). Comparisons are converted: the best tier of a ranking (the
favoured side of a soft label) desirable, the worst undesirable, the middle left out. With r
= log pi(y|x) - log pi_ref(y|x) (`algorithms.preference_losses.kto_losses`):

    loss = lambda_y - v,  v = lambda_D s(beta (r - z0)) (desirable) | lambda_U s(beta (z0 - r))

z0, the reference point, estimates KL(pi || pi_ref) on the global batch: each example's prompt
paired with the response of another prompt (a fixed random partner drawn once from the seed),
its mean log-ratio clamped at 0 and not back-propagated (`kto_reference_point`). The reference
is dpo's: the adapter off (LoRA), or log-probs computed once and stored (full fine-tuning). Per
optimizer step: 1) the global batch; 2) z0 from its mismatched pairs (no gradients; summed over
processes); 3) each process's share in micro-batches, loss summed / the global batch's size (so
accumulation and processes equal one big batch); 4) clip, step; 5) log, evaluate, checkpoint.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import torch

from alignloop import metric_names as M
from alignloop.config import ConfigError, config_command
from alignloop.configs import KTOConfig


def binary_records(path) -> list:
    """BinaryFeedback records of a file of binary feedback, comparisons, or both (converted)."""
    from alignloop.data.io import DataError, iter_converted, parse_record
    from alignloop.data.records import BinaryFeedback, Comparison

    out = []
    for where, _, data in iter_converted(path):
        if isinstance(data, dict) and "label" in data:
            out.append(parse_record(BinaryFeedback, data, where))
            continue
        c = parse_record(Comparison, data, where)
        tiers = c.tiers()
        if len(tiers) < 2:  # all tied (or p = 0.5): no side is preferred
            continue
        common = {**c.prompt_fields(), "rater": c.rater, "source": c.source, "meta": c.meta}
        out += [BinaryFeedback(**common, response=c.responses[i], label=1) for i in tiers[0]]
        out += [BinaryFeedback(**common, response=c.responses[i], label=0) for i in tiers[-1]]
    if not out:
        raise DataError(f"{path}: no binary feedback (and no comparison with a preferred response)")
    return out


def load_examples(cfg: KTOConfig, tokenizer) -> tuple[list[dict], list[dict]]:
    """Tokenised (train, held-out) examples {prompt, responses: [its response, a mismatched one], label}."""
    from alignloop.models.reward_model import encode_group
    from alignloop.train.reward import split_by_prompt

    def encode(records, salt: int, pool: list):
        """Each record's mismatched partner: a uniform example of another prompt from `pool`."""
        keys = [r.chat_key() for r in pool]
        if len(set(keys)) < 2:
            raise ConfigError(f"{cfg.data}: KTO's reference point needs examples of at least 2 prompts")
        g = torch.Generator().manual_seed(cfg.seed * 7_919 + salt)
        rows = []
        for r in records:
            while True:
                j = int(torch.randint(len(pool), (1,), generator=g))
                if keys[j] != r.chat_key():
                    break
            prompt, responses = encode_group(tokenizer, r.chat(), [r.response, pool[j].response], cfg.max_length)
            rows.append({"prompt": prompt, "responses": responses, "label": r.label})
        return rows

    train = binary_records(cfg.data)
    if cfg.heldout is not None:
        heldout = binary_records(cfg.heldout)
    else:
        train, heldout = split_by_prompt(train, cfg.heldout_fraction, cfg.seed)
    # a held-out set of one prompt draws its partners from every example (they only estimate the KL)
    pool = heldout if len({r.chat_key() for r in heldout}) > 1 else train + heldout
    return encode(train, 0, train), encode(heldout, 1, pool) if heldout else []


def logps(model, net, rows: list[dict], which: int, pad_id: int, device, lora: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) policy and reference log-probs of each row's own response (which=0) or mismatched one (1)."""
    from alignloop.train.dpo import response_logps

    picked = [{"prompt": r["prompt"], "responses": [r["responses"][which]]} for r in rows]
    logp = response_logps(model, picked, pad_id, device).float()
    if "ref" in rows[0]:
        return logp, torch.tensor([r["ref"][which] for r in rows], device=device, dtype=logp.dtype)
    with torch.no_grad():
        return logp, response_logps(net, picked, pad_id, device, adapter=False).float()


def example_stats(r: torch.Tensor, logp: torch.Tensor, desirable: torch.Tensor, z0: torch.Tensor, beta: float) -> torch.Tensor:
    """(7,) sums: beta r and log pi of the desirable and of the undesirable examples, their counts,
    and how many sit on their side of z0 (r > z0 desirable, r < z0 undesirable)."""
    r, logp, d = r.detach(), logp.detach(), desirable
    right = torch.where(d, (r > z0).float(), (r < z0).float()).sum()
    return torch.stack([beta * r[d].sum(), beta * r[~d].sum(), logp[d].sum(), logp[~d].sum(), d.sum().float(),
                        (~d).sum().float(), right])


def stats_metrics(stats: list[float], names: tuple[str, ...]) -> dict:
    chosen, rejected, lp_c, lp_r, n_d, n_u, right = stats
    out = {names[3]: right / max(n_d + n_u, 1)}
    if n_d:
        out.update({names[0]: chosen / n_d, names[4]: lp_c / n_d})
    if n_u:
        out.update({names[1]: rejected / n_u, names[5]: lp_r / n_u})
    if n_d and n_u:
        out[names[2]] = chosen / n_d - rejected / n_u
    return out


def reference_point(accelerator, model, net, rows: list[dict], pad_id: int, cfg: KTOConfig) -> torch.Tensor:
    """z0 of `rows` (this process's share; summed over processes): the mean mismatched log-ratio, >= 0, detached."""
    from alignloop.algorithms.preference_losses import kto_reference_point

    total = torch.zeros(2, device=accelerator.device)
    with torch.no_grad():
        for i in range(0, len(rows), cfg.batch_size):
            batch = rows[i: i + cfg.batch_size]
            with accelerator.autocast():
                logp, ref = logps(model, net, batch, 1, pad_id, accelerator.device, cfg.lora)
            total += torch.stack([(logp - ref).sum(), torch.tensor(float(len(batch)), device=accelerator.device)])
    total = accelerator.reduce(total, "sum")
    return kto_reference_point(total[0], total[1])


@torch.no_grad()
def evaluate(accelerator, model, net, rows: list[dict], pad_id: int, cfg: KTOConfig) -> dict:
    """Held-out loss (z0 of the held-out set's mismatched pairs) and the rewards/ logps/ figures."""
    from alignloop.algorithms.preference_losses import kto_losses
    from alignloop.train.dpo import EVAL_NAMES

    if not rows:
        return {}
    model.eval()
    mine = rows[accelerator.process_index:: accelerator.num_processes]
    z0 = reference_point(accelerator, model, net, mine, pad_id, cfg)
    totals = torch.zeros(8, device=accelerator.device)
    for i in range(0, len(mine), cfg.batch_size):
        batch = mine[i: i + cfg.batch_size]
        desirable = torch.tensor([r["label"] == 1 for r in batch], device=accelerator.device)
        with accelerator.autocast():
            logp, ref = logps(model, net, batch, 0, pad_id, accelerator.device, cfg.lora)
        loss = kto_losses(logp - ref, desirable, z0, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight).sum()
        totals += torch.cat([loss.view(1), example_stats(logp - ref, logp, desirable, z0, cfg.beta)])
    model.train()
    loss, *stats = accelerator.reduce(totals, "sum").tolist()
    return {M.EVAL_LOSS: loss / len(rows), **stats_metrics(stats, EVAL_NAMES)}


def check_balance(accelerator, rows: list[dict], cfg: KTOConfig) -> None:
    n_d = sum(r["label"] == 1 for r in rows)
    n_u = len(rows) - n_d
    ratio = cfg.desirable_weight * n_d / max(cfg.undesirable_weight * n_u, 1e-12)
    if n_u and not 1.0 <= ratio <= 4 / 3:
        accelerator.print(f"note: {n_d} desirable and {n_u} undesirable examples: lambda_D n_D / (lambda_U n_U) = "
                          f"{ratio:.2f}, outside the paper's [1, 4/3]; e.g. --undesirable-weight "
                          f"{cfg.desirable_weight * n_d / n_u:.3g} makes it 1")


def run_kto(cfg: KTOConfig) -> Path:
    """Train `cfg.model` by KTO on `cfg.data`; returns the output folder (a model folder when finished)."""
    from alignloop.algorithms.preference_losses import kto_losses
    from alignloop.models.loading import load_tokenizer
    from alignloop.train.checkpoint import refuse_to_overwrite, save_checkpoint
    from alignloop.train.common import global_batches, make_accelerator, seed_everything
    from alignloop.train.dpo import TRAIN_NAMES, batch_order, finish, progress, start_policy_run

    out = Path(cfg.out)
    refuse_to_overwrite(out, cfg.resume)
    accelerator = make_accelerator(cfg.mixed_precision)
    seed_everything(cfg.seed)

    # Data, model, reference, optimizer.
    tokenizer = load_tokenizer(cfg.model)
    train, heldout = load_examples(cfg, tokenizer)
    check_balance(accelerator, train, cfg)
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    global_batch, steps_per_epoch = global_batches(len(train), cfg.batch_size, cfg.grad_accum, world, cfg.data)
    total_steps = steps_per_epoch * cfg.epochs
    net, model, optimizer, scheduler, tracker, step, pad_id = start_policy_run(
        cfg, accelerator, out, tokenizer, train, heldout, total_steps, evaluate)
    order_of = batch_order(train, cfg, global_batch)

    stop = min(total_steps, cfg.stop_at_step or total_steps)
    metrics: dict = {}
    with progress(accelerator, "kto", total_steps) as advance:
        advance(step)
        while step < stop:
            t0 = time.time()
            # 1) the global batch; this process's share.
            epoch, s = divmod(step, steps_per_epoch)
            idx = order_of(epoch)[s * global_batch: (s + 1) * global_batch]
            share = [train[i] for i in idx[rank * cfg.batch_size * cfg.grad_accum:][: cfg.batch_size * cfg.grad_accum]]
            # 2) z0 from the whole global batch's mismatched pairs.
            z0 = reference_point(accelerator, model, net, share, pad_id, cfg)
            # 3) the loss of each micro-batch, over the global batch's size (x world: DDP averages).
            totals = torch.zeros(8, device=device)
            for m in range(cfg.grad_accum):
                micro = share[m * cfg.batch_size: (m + 1) * cfg.batch_size]
                desirable = torch.tensor([r["label"] == 1 for r in micro], device=device)
                with accelerator.no_sync(model) if m < cfg.grad_accum - 1 and world > 1 else nullcontext():
                    with accelerator.autocast():
                        logp, ref = logps(model, net, micro, 0, pad_id, device, cfg.lora)
                    loss = kto_losses(logp - ref, desirable, z0, cfg.beta, cfg.desirable_weight,
                                      cfg.undesirable_weight).sum() / global_batch
                    accelerator.backward(loss * world)
                totals += torch.cat([loss.detach().view(1), example_stats(logp - ref, logp, desirable, z0, cfg.beta)])
            # 4) clip, step.
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            # 5) log, evaluate, checkpoint.
            loss_sum, *stats = accelerator.reduce(totals, "sum").tolist()
            metrics = {M.TRAIN_LOSS: loss_sum, **stats_metrics(stats, TRAIN_NAMES), M.KTO_Z0: float(z0),
                       M.GRAD_NORM: float(grad_norm), M.LR: scheduler.get_last_lr()[0], M.EPOCH: step / steps_per_epoch,
                       M.STEP_S: time.time() - t0}
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps:
                metrics.update(evaluate(accelerator, model, net, heldout, pad_id, cfg))
            tracker.log(step, metrics)
            advance(1, loss=loss_sum, z0=float(z0))
            if (cfg.save_every and step % cfg.save_every == 0 and step < total_steps) or step == stop < total_steps:
                save_checkpoint(out, accelerator, model, optimizer, scheduler, {"step": step})
    return finish(accelerator, model, tokenizer, tracker, out, cfg, step, total_steps, metrics)


command = config_command(KTOConfig, run_kto, "kto",
                         help="KTO on binary feedback (thumbs up / down; TRL's unpaired format) or converted comparisons; "
                              "LoRA (reference: adapter off) or full; resumable; several processes.")
