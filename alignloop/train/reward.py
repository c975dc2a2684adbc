"""`alignloop reward`: train a reward model from rankings, pairs and soft labels.

One comparison record (K responses ranked, ties allowed, or a soft label p for K = 2) is ONE
example: its C(K,2) pairs are averaged (InstructGPT), see `algorithms.reward_losses`. The
loop, per optimizer step s (the same shape as SFT):
  1) the global batch is records order[s*G : (s+1)*G] of the epoch's permutation (records of
     one prompt kept together, similar lengths batched together); its pairs are built once;
  2) each process scores its records' responses in `grad_accum` micro-batches, each distinct
     prompt and response once;
  3) loss = sum over ensemble heads e of  sum_g c_eg loss_g / sum_g c_eg  over the WHOLE global
     batch (c_eg = record weight x bootstrap count of record g for head e; one pure function,
     `algorithms.reward_losses.ensemble_ranking_loss`), so gradient accumulation and several
     processes give the same gradient as one big batch;
  4) clip, optimizer and LR-schedule step; 5) log, evaluate, checkpoint.
Accuracy, train and held-out alike, is `algorithms.reward_metrics.pairwise_accuracy` on the
decided pairs (hard wins and soft labels by their side of 0.5; exact reward ties count 1/2).
With `mismatched_pairs`, each training prompt also gets pairs ranking its own response above
one written for another prompt. At the end, rewards are normalised to mean 0 / std 1 over the
rated training responses (per head; of a random subset of the prompts with
`normalization_prompts`) and the model is saved with that normalisation.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import torch

from alignloop.config import ConfigError, config_command
from alignloop.configs import RewardConfig


def read_comparisons(cfg) -> tuple[list, list]:
    """(train, held-out) Comparison records of `cfg.data`: `cfg.heldout`, or a split of the
    data's prompts (`heldout_fraction`, `seed`). Shared by `reward` and `dpo`."""
    from alignloop.data.io import read_records
    from alignloop.data.records import Comparison

    train = read_records(cfg.data, Comparison)
    if cfg.heldout is not None:
        return train, read_records(cfg.heldout, Comparison)
    return split_by_prompt(train, cfg.heldout_fraction, cfg.seed)


def encode_comparisons(records, tokenizer, max_length: int) -> list[dict]:
    """Tokenised records: {prompt, responses (token ids), tiers, p, weight}; each prompt once."""
    from alignloop.models.reward_model import encode_group

    rows = []
    for r in records:
        prompt, responses = encode_group(tokenizer, r.chat(), r.responses, max_length)
        rows.append({"prompt": prompt, "responses": responses, "tiers": r.tiers(), "p": r.p, "weight": r.weight})
    return rows


def load_comparisons(cfg: RewardConfig, tokenizer) -> tuple[list[dict], list[dict]]:
    """Tokenised (train, held-out) examples; the training side gains the mismatched pairs."""
    train, heldout = read_comparisons(cfg)
    extra = mismatched_pairs(train, cfg.mismatched_pairs, cfg.seed, cfg.mismatched_weight) if cfg.mismatched_pairs else []
    rows = encode_comparisons(train, tokenizer, cfg.max_length)
    rows += [dict(row, mismatched=True) for row in encode_comparisons(extra, tokenizer, cfg.max_length)]
    return rows, encode_comparisons(heldout, tokenizer, cfg.max_length)


def split_by_prompt(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out): a random `fraction` of the distinct prompts, with all their records,
    is held out. The pair records cut from one K-way item share its responses, so a split by
    record would hold out pairs whose responses the model trained on."""
    prompts: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        prompts.setdefault(r.chat_key(), []).append(i)
    groups = list(prompts.values())
    perm = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    held = {i for g in perm[: int(len(groups) * fraction)] for i in groups[g]}
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


def mismatched_pairs(records: list, per_prompt: int, seed: int, weight: float = 1.0) -> list:
    """Comparisons that prefer a prompt's own response over one sampled for another prompt.

    For each distinct prompt (in order of first appearance), `per_prompt` times: one of its
    distinct responses (uniform) is ranked above a response of another prompt (prompt and
    response uniform; a text the prompt has among its own is never drawn), a hard pair. Its
    weight is `weight` x one rated pair's share of that prompt: the mean over the prompt's
    records of weight / C(K, 2), as the ranking loss averages a K-way record's C(K, 2) pairs
    (`algorithms.reward_losses.ranking_loss`). Deterministic in `seed`.
    """
    by_prompt: dict[str, dict] = {}
    for r in records:
        g = by_prompt.setdefault(r.chat_key(), {"record": r, "responses": {}, "pair_weights": []})
        g["responses"].update(dict.fromkeys(r.responses))
        g["pair_weights"].append(r.weight / (len(r.responses) * (len(r.responses) - 1) / 2))
    groups = list(by_prompt.values())
    if per_prompt and len(groups) < 2:
        raise ConfigError(f"mismatched_pairs needs comparisons of at least 2 prompts, got {len(groups)}")
    rng = torch.Generator().manual_seed(seed + 104729)

    def pick(n: int) -> int:  # uniform in 0..n-1
        return int(torch.randint(n, (1,), generator=rng))

    out = []
    for i, g in enumerate(groups):
        own = list(g["responses"])
        pair_weight = weight * sum(g["pair_weights"]) / len(g["pair_weights"])
        for _ in range(per_prompt):
            j = pick(len(groups) - 1)
            other = [x for x in groups[j + (j >= i)]["responses"] if x not in g["responses"]]  # any prompt but i
            if not other:  # that prompt's responses are all among this one's (the same refusal, say)
                continue
            out.append(g["record"].model_copy(update={
                "responses": [own[pick(len(own))], other[pick(len(other))]], "ranking": [0, 1], "p": None,
                "rater": "mismatched", "weight": pair_weight, "id": None, "meta": {}}))
    return out


def normalization_groups(rows: list[dict], max_prompts: int | None, seed: int) -> list[tuple[list[int], list[list[int]]]]:
    """(prompt, distinct rated responses) of the training rows, in order of first appearance; of
    at most `max_prompts` prompts, a random subset (deterministic in `seed`) kept in that order."""
    distinct: dict[tuple, dict] = {}
    for r in rows:
        if not r.get("mismatched"):  # the rated responses only
            distinct.setdefault(tuple(r["prompt"]), {}).update(dict.fromkeys(tuple(x) for x in r["responses"]))
    groups = [(list(p), [list(x) for x in rs]) for p, rs in distinct.items()]
    if max_prompts is not None and len(groups) > max_prompts:
        keep = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed + 15485863))[:max_prompts]
        groups = [groups[i] for i in sorted(keep.tolist())]
    return groups


def sample_responses(groups: list[tuple[list[int], list[list[int]]]], size: int | None,
                     seed: int) -> list[tuple[list[int], list[list[int]]]]:
    """At most `size` of the groups' (prompt, response) pairs, a uniform random sample without
    replacement (deterministic in `seed`), kept grouped by prompt and in their order (a prompt
    with no response drawn is dropped); all of them when `size` is None or not smaller."""
    flat = [(g, j) for g, (_, rs) in enumerate(groups) for j in range(len(rs))]
    if size is None or len(flat) <= size:
        return groups
    keep = sorted(torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed + 32452843))[:size].tolist())
    picked: dict[int, list[list[int]]] = {}
    for i in keep:
        g, j = flat[i]
        picked.setdefault(g, []).append(groups[g][1][j])
    return [(groups[g][0], rs) for g, rs in picked.items()]


def bootstrap_counts(n: int, members: int, mode: str, seed: int) -> torch.Tensor:
    """(E, n) how often each head sees each record: multinomial resample counts, or all ones."""
    if mode == "init" or members == 1:
        return torch.ones(members, n)
    g = torch.Generator().manual_seed(seed + 7919)
    return torch.stack([torch.bincount(torch.randint(0, n, (n,), generator=g), minlength=n).float()
                        for _ in range(members)])


def distinct_responses(rows: list[dict]) -> tuple[list[list[int]], list[list[int]], list[int], list[int]]:
    """The distinct prompts and (prompt, response) pairs of a batch of records.

    Returns (prompts, responses, group, index): `responses[u]` continues `prompts[group[u]]`,
    and the m-th response of the batch (records' responses concatenated in order) is
    `responses[index[m]]`. Pair records cut from one K-way item repeat its prompt and
    responses; scoring the distinct ones and gathering with `index` gives the same (M,) rewards.
    """
    prompt_slot: dict[tuple, int] = {}
    response_slot: dict[tuple, int] = {}
    prompts, responses, group, index = [], [], [], []
    for r in rows:
        g = prompt_slot.setdefault(tuple(r["prompt"]), len(prompt_slot))
        if g == len(prompts):
            prompts.append(r["prompt"])
        for x in r["responses"]:
            u = response_slot.setdefault((g, tuple(x)), len(response_slot))
            if u == len(responses):
                responses.append(x)
                group.append(g)
            index.append(u)
    return prompts, responses, group, index


def score_records(model, rows: list[dict], pad_id: int, device) -> torch.Tensor:
    """Rewards (M, E) of the rows' responses, records concatenated in order (each distinct prompt
    and response scored once, see `distinct_responses`)."""
    from alignloop.models.reward_model import grouped_batch

    prompts, responses, group, index = distinct_responses(rows)
    distinct = model(**grouped_batch(prompts, responses, group, pad_id, device))  # (U, E)
    return distinct[torch.tensor(index, device=distinct.device)]  # (M, E)


def record_parts(row: dict) -> dict[tuple, int]:
    """What a record runs through the model in training, as parts (key -> tokens): its prompt
    and each of its responses to that prompt; records sharing a part run it once in a chunk
    (`distinct_responses`)."""
    p = tuple(row["prompt"])
    return {(p,): len(p)} | {(p, tuple(x)): len(x) for x in row["responses"]}


def distinct_token_chunks(rows: list[dict], budget: int) -> list[tuple[int, int]]:
    """[start, stop) ranges that cut the rows, in order, into consecutive chunks of at most
    `budget` tokens as a chunk runs them (`data.batching.consecutive_chunks` over `record_parts`):
    each distinct prompt once, each distinct response of a prompt once, so the C(K,2) pair records
    of one K-way item cost about its prompt and K responses, not C(K,2) x (prompt + 2 responses).
    E.g. prompt P (3 tokens) with responses A, B, C (2 each): records (A, B), (A, C), (B, C) cost
    3+2+2, +2, +0 = 9 -> [(0, 3)] at budget 9."""
    from alignloop.data.batching import consecutive_chunks

    return consecutive_chunks([record_parts(r) for r in rows], budget)


def training_chunks(rows: list[dict], cfg: RewardConfig, world: int) -> list[list[tuple[int, int]]]:
    """For each process, the [start, stop) ranges of the global batch's records it runs forward
    and backward: its micro-batches (process r: records from r x grad_accum x batch_size on),
    each cut into chunks of at most --training-token-budget distinct tokens
    (`distinct_token_chunks`), as many chunks on every process (`even_chunks`)."""
    from alignloop.data.batching import even_chunks

    by_process = []
    for rank in range(world):
        chunks = []
        for m in range(cfg.grad_accum):
            start = (rank * cfg.grad_accum + m) * cfg.batch_size
            micro = rows[start: start + cfg.batch_size]
            chunks += [(start + a, start + b) for a, b in distinct_token_chunks(micro, cfg.training_token_budget)]
        by_process.append(chunks)
    return even_chunks(by_process)


def pair_batch(rows: list[dict], tie_mode: str):
    """The pairs of the rows (`algorithms.reward_losses.build_pair_batch`), their record weights as given."""
    from alignloop.algorithms.reward_losses import build_pair_batch

    return build_pair_batch([r["tiers"] for r in rows], [r["p"] for r in rows], [r["weight"] for r in rows], tie_mode)


def accuracy_counts(rewards: torch.Tensor, pairs) -> torch.Tensor:
    """(correct, decided) of `algorithms.reward_metrics.pairwise_accuracy` on the decided pairs:
    the one accuracy of the train and held-out metrics, summable over batches and processes."""
    from alignloop.algorithms.reward_metrics import pairwise_accuracy

    keep = pairs.is_decided
    correct = pairwise_accuracy(rewards[pairs.winner][keep], rewards[pairs.loser][keep], reduction="sum")
    return torch.stack([correct, keep.sum().to(correct.dtype)])


def autocast_dtype(accelerator) -> torch.dtype | None:
    """The half type the accelerator trains in (--mixed-precision), None for fp32: the
    forward-only passes score in the precision the model trains in, and PPO scores in."""
    from alignloop.train.common import HALF_TYPES

    return HALF_TYPES.get(str(accelerator.mixed_precision))


def heldout_rewards(model, rows: list[dict], pad_id: int, token_budget: int, dtype, device, advance=None) -> torch.Tensor:
    """(M, E) rewards of the rows' responses, records concatenated in order, forward-only: each
    distinct prompt and response once (`distinct_responses`), a prompt's responses together,
    length-bucketed (`models.reward_model.iter_raw_rewards`)."""
    from alignloop.models.reward_model import raw_rewards

    prompts, responses, group, index = distinct_responses(rows)
    members: list[list[int]] = [[] for _ in prompts]
    for u, g in enumerate(group):
        members[g].append(u)
    raw = raw_rewards(model, [(prompts[g], [responses[u] for u in us]) for g, us in enumerate(members)], pad_id,
                      token_budget, autocast_dtype=dtype, advance=advance, device=device)  # (U, E), prompts' order
    distinct = torch.empty_like(raw)
    distinct[torch.tensor([u for us in members for u in us], dtype=torch.long)] = raw
    return distinct[torch.tensor(index, dtype=torch.long)].to(device)


def evaluate(accelerator, model, rows: list[dict], pad_id: int, cfg: RewardConfig) -> dict:
    """Held-out loss, accuracy (`accuracy_counts`), soft-label agreement and calibration (ECE),
    all of the ensemble mean. Forward-only (`heldout_rewards`), with its own progress bar."""
    from alignloop import metric_names as M
    from alignloop.algorithms.reward_losses import ranking_loss
    from alignloop.algorithms.reward_metrics import expected_calibration_error, soft_label_agreement
    from alignloop.progress import throughput_bar

    if not rows:
        return {}
    t0 = time.time()
    mine = rows[accelerator.process_index:: accelerator.num_processes]
    n = len(distinct_responses(mine)[1])
    with throughput_bar(f"held-out evaluation: scoring {n} responses of {len(mine)} comparisons", n,
                        enabled=accelerator.is_main_process) as advance:
        r = heldout_rewards(model, mine, pad_id, cfg.scoring_token_budget, autocast_dtype(accelerator),
                            accelerator.device, advance).float().mean(dim=1)  # (M,) the ensemble mean
    pairs = pair_batch(mine, cfg.tie_mode).to(accelerator.device)
    totals = torch.cat([torch.stack([ranking_loss(r, pairs, cfg.margin, reduction="sum"), pairs.effective_weight.sum()]),
                        accuracy_counts(r, pairs)])  # loss sum, weight, correct, decided
    d_all, p_all = [r[pairs.winner] - r[pairs.loser]], [pairs.p]
    seconds = time.time() - t0
    # processes hold different numbers of pairs: pad (p = 0 marks padding) for the all-gather
    d, p = (accelerator.gather(accelerator.pad_across_processes(torch.cat(x), dim=0)) for x in (d_all, p_all))
    d, p = d[p > 0], p[p > 0]
    loss, weight, correct, decided = accelerator.reduce(totals, "sum").tolist()
    metrics = {M.EVAL_LOSS: loss / max(weight, 1e-12), M.EVAL_PAIRS: int(d.numel()), M.EVAL_S: seconds,
               M.EVAL_SEQUENCES_PER_S: n / max(seconds, 1e-9)}
    if decided:
        metrics[M.EVAL_ACCURACY] = correct / decided
    soft = (p > 0.5) & (p < 1.0)
    if soft.any():  # the accuracy on the soft-labelled pairs alone, and how close s(d) comes to p
        agreement = soft_label_agreement(d[soft], torch.zeros_like(d[soft]), p[soft])
        metrics[M.EVAL_SOFT_AGREEMENT] = agreement["side_agreement"].item()
        metrics[M.EVAL_SOFT_MAE] = agreement["mae"].item()
    decided_pairs = p > 0.5
    if decided_pairs.any():  # both orientations, so the ECE does not depend on which response is first
        prob = torch.sigmoid(d[decided_pairs])
        probs = torch.cat([prob, 1 - prob])
        labels = torch.cat([p[decided_pairs], 1 - p[decided_pairs]])
        metrics[M.EVAL_ECE] = expected_calibration_error(probs, labels).item()
    return metrics


def run_reward(cfg: RewardConfig) -> Path:
    from alignloop import metric_names as M
    from alignloop.algorithms.reward_losses import ensemble_ranking_loss
    from alignloop.algorithms.reward_metrics import normalization_standard_errors, normalize_stats
    from alignloop.models.loading import frozen_linears_to, load_tokenizer, load_trainable
    from alignloop.models.reward_model import RewardNet, raw_rewards, save_reward_model
    from alignloop.progress import progress_bar, throughput_bar
    from alignloop.train.checkpoint import drop_checkpoint, refuse_to_overwrite, save_checkpoint, start_run
    from alignloop.train.common import (autocast_half_type, epoch_order, global_batches, length_grouped_order,
                                        make_accelerator, make_optimizer, seed_everything, sharded_weights,
                                        whole_state)

    out = Path(cfg.out)
    refuse_to_overwrite(out, cfg.resume)
    accelerator = make_accelerator(cfg.mixed_precision)
    seed_everything(cfg.seed)

    # Data, model, optimizer.
    tokenizer = load_tokenizer(cfg.model)
    train, heldout = load_comparisons(cfg, tokenizer)
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    global_batch, steps_per_epoch = global_batches(len(train), cfg.batch_size, cfg.grad_accum, world, cfg.data)
    total_steps = steps_per_epoch * cfg.epochs
    counts = bootstrap_counts(len(train), cfg.ensemble, cfg.ensemble_mode, cfg.seed)  # (E, N)
    lengths = [len(r["prompt"]) + max(len(x) for x in r["responses"]) for r in train]
    prompt_keys = [tuple(r["prompt"]) for r in train]
    model = RewardNet(load_trainable(cfg, device), cfg.ensemble).to(device)
    half = autocast_half_type(accelerator)
    if cfg.lora and half is not None and not sharded_weights(accelerator):
        # LoRA's frozen base runs only under the autocast: stored in its dtype, the same bits
        # without autocast's cast of every frozen weight at every call (which it does not cache)
        frozen_linears_to(model.lm, half)
    optimizer, scheduler = make_optimizer(model, cfg, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    pad_id = tokenizer.pad_token_id

    tracker, state = start_run(out, cfg, accelerator, model, optimizer, scheduler, "step", total_steps)
    step = state.get("step", 0)
    if step == 0 and cfg.eval_every:  # the start of the held-out curve (eval_every 0: only at the end)
        tracker.log(0, evaluate(accelerator, model, heldout, pad_id, cfg))

    stop = min(total_steps, cfg.stop_at_step or total_steps)
    with progress_bar("reward", total_steps, enabled=accelerator.is_main_process) as advance:
        advance(step)
        while step < stop:
            t0 = time.time()
            # 1) the global batch and its pairs (built once); each head's total record weight over
            #    the WHOLE global batch is the denominator of its loss (3).
            epoch, s = divmod(step, steps_per_epoch)
            if cfg.group_by_length or cfg.group_by_prompt:
                order = length_grouped_order(lengths if cfg.group_by_length else [0] * len(train), global_batch,
                                             cfg.seed, epoch, keys=prompt_keys if cfg.group_by_prompt else None)
            else:
                order = epoch_order(len(train), cfg.seed, epoch)
            idx = order[s * global_batch: (s + 1) * global_batch]
            pairs = pair_batch([train[i] for i in idx], cfg.tie_mode)
            denominators = (counts[:, idx] * pairs.effective_weight).sum(dim=1).clamp_min(1e-12).to(device)  # (E,)
            # 2) this process's share, in micro-batches: records [start, start + batch_size) of idx,
            #    each cut into chunks of at most --training-token-budget tokens (gradients add up).
            totals = torch.zeros(4, device=device)  # loss, accuracy correct, decided, pairs
            chunks = training_chunks([train[i] for i in idx], cfg, world)[rank]
            for c, (a, b) in enumerate(chunks):
                chunk, chunk_pairs = idx[a:b], pairs.records(a, b).to(device)
                with accelerator.no_sync(model) if c < len(chunks) - 1 and world > 1 else nullcontext():
                    rewards = score_records(model, [train[i] for i in chunk], pad_id, device).float()  # (M, E)
                    # 3) one pure function: every head's ranking loss on its resample, over its denominator
                    loss = ensemble_ranking_loss(rewards, chunk_pairs, counts[:, chunk].to(device), denominators, cfg.margin)
                    accelerator.backward(loss * world)
                totals += torch.cat([loss.detach().view(1), accuracy_counts(rewards.detach().mean(dim=1), chunk_pairs),
                                     torch.tensor([chunk_pairs.p.numel()], device=device)])
            # 4) clip, step.
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            # 5) log, evaluate, checkpoint.
            loss_sum, correct, decided, n_pairs = accelerator.reduce(totals, "sum").tolist()
            metrics = {M.TRAIN_LOSS: loss_sum / cfg.ensemble, M.TRAIN_ACCURACY: correct / max(decided, 1),
                       M.GRAD_NORM: float(grad_norm), M.LR: scheduler.get_last_lr()[0],
                       M.EPOCH: step / steps_per_epoch, M.STEP_S: time.time() - t0,
                       M.PAIRS_PER_S: n_pairs / max(time.time() - t0, 1e-9)}
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps:
                metrics.update(evaluate(accelerator, model, heldout, pad_id, cfg))
            tracker.log(step, metrics)
            advance(1, loss=metrics[M.TRAIN_LOSS], acc=metrics[M.TRAIN_ACCURACY])
            if (cfg.save_every and step % cfg.save_every == 0 and step < total_steps) or step == stop < total_steps:
                save_checkpoint(out, accelerator, model, optimizer, scheduler, {"step": step})

    if step < total_steps:
        tracker.close()
        accelerator.print(f"stopped at step {step}/{total_steps}; continue with --resume")
        return out
    # Normalise: mean 0 / std 1 of each head over a sample of the (distinct) rated training responses,
    # forward-only, in the precision it was trained in (and PPO scores in, --mixed-precision).
    net = accelerator.unwrap_model(model)
    groups = normalization_groups(train, cfg.normalization_prompts, cfg.seed)
    available = sum(len(rs) for _, rs in groups)
    groups = sample_responses(groups, cfg.normalization_sample, cfg.seed)
    n = sum(len(rs) for _, rs in groups)
    t0 = time.time()
    with throughput_bar(f"normalisation: scoring {n} of {available} training responses", n,
                        enabled=accelerator.is_main_process) as advance:
        raw = raw_rewards(net, groups, pad_id, cfg.scoring_token_budget, autocast_dtype(accelerator), advance)  # (N, E)
    seconds = time.time() - t0
    mean, std = normalize_stats(raw)
    se_mean, se_std = normalization_standard_errors(raw, population=available)
    mean, std = mean.tolist(), std.clamp_min(1e-6).tolist()
    tracker.log(step, {M.NORMALIZATION_MEAN: sum(mean) / len(mean), M.NORMALIZATION_STD: sum(std) / len(std),
                       M.NORMALIZATION_SAMPLE: n, M.NORMALIZATION_RESPONSES: available,
                       M.NORMALIZATION_MEAN_SE: se_mean.mean().item(), M.NORMALIZATION_STD_SE: se_std.mean().item(),
                       M.NORMALIZATION_S: seconds, M.NORMALIZATION_SEQUENCES_PER_S: n / max(seconds, 1e-9)})
    tracker.close()
    state = whole_state(accelerator, net)  # FSDP / ZeRO-3: gathered from every process's shards
    if accelerator.is_main_process:
        save_reward_model(net, tokenizer, out, base=cfg.model, mean=mean, std=std, max_length=cfg.max_length,
                          extra={"tie_mode": cfg.tie_mode, "ensemble_mode": cfg.ensemble_mode}, state_dict=state)
        drop_checkpoint(out, cfg.keep_checkpoint)
        final = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        shown = "  ".join(f"{k[5:]} {v:.3f}" for k, v in final.items() if isinstance(v, float))
        held = f"held-out: {shown}" if shown else "no held-out pairs (--heldout-fraction 0)"
        accelerator.print(f"reward model saved to {out}; {held}")
    accelerator.wait_for_everyone()
    return out


command = config_command(RewardConfig, run_reward, "reward",
                         help="Train a reward model (scalar head on a transformer) from rankings, pairs and "
                              "soft labels; ensembles; resumable; several processes under `accelerate launch`.")
