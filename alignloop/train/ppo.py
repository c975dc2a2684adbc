"""`alignloop ppo`: fine-tune a policy against reward sources with a KL penalty to its start.

`run_ppo` is the loop; each iteration, numbered as there:
  1) `collect_rollout`: sample K responses for this process's prompts, score them with the
     reward sources (weighted sum; missing-EOS penalty, score clip), and one no-grad forward
     for the log-probs and values of the policy and the log-probs of the frozen reference,
     with the per-token KL: a `Rollout`, reused by every PPO epoch;
  2) `compute_advantages`: per-token rewards (-beta * KL on every token, the score on the
     last real token, optionally whitened) and GAE with the value head, or a critic-free
     baseline (RLOO leave-one-out, GRPO group normalisation); whitened over every process's
     tokens (`masked_whiten` with all-reduced statistics);
  3) `ppo_update`: several epochs over minibatches (micro-batches with gradient
     accumulation) of the clipped policy loss + vf_coef * clipped value loss (+ k3 KL in the
     loss when asked; + ptx_coef * the NLL of a few demonstrations with --ptx-data, PPO-ptx);
     a minibatch whose ratio explodes is skipped (`UpdateStats`);
  4) a non-finite loss or gradient on ANY process stops every process (the flag is
     all-reduced with the ratio guard's, once per minibatch) with one checkpoint of the state
     before the iteration; when the iteration had already stepped, that state is rebuilt by
     replaying from the last checkpoint (`replay_before_nonfinite`; runs are deterministic,
     as --resume is);
  5) KL controller update (fixed, or adaptive toward a target KL); 6) metrics, samples,
     checkpoint.
In LoRA mode one copy of the base weights is the policy (adapter on), the reference (adapter
off) and the value function (a head on the policy's trunk). With --generation-url (LoRA only)
step 1 samples through that server instead, with the iteration's adapter pushed to it first
(serving/remote.py's `ServerSampler`); the log-probs, values and reference are computed here
as always. Under FSDP / ZeRO-3 the sampling copy is built before the policy is sharded and
refreshed in step 1 while its shards are gathered (`whole_weights`, once per iteration), so
sampling never runs through the sharded modules token by token.
"""

from __future__ import annotations

import functools
import gc
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from alignloop import metric_names as M
from alignloop.algorithms.advantages import (gae, grpo_advantages, kl_penalized_scores, per_token_rewards,
                                             rloo_advantages, sequence_to_tokens)
from alignloop.algorithms.kl import AdaptiveKLController, FixedKLController, kl_penalty
from alignloop.algorithms.masked import masked_mean, masked_whiten
from alignloop.algorithms.ppo_losses import explained_variance, k3_loss_term, policy_loss, value_loss
from alignloop.config import ConfigError, config_command
from alignloop.configs import PPOConfig
from alignloop.data.io import append_jsonl, read_sources
from alignloop.data.records import PromptRecord
from alignloop.progress import console, progress_bar
from alignloop.train.checkpoint import drop_checkpoint, refuse_to_overwrite, save_checkpoint, start_run
from alignloop.train.common import (HALF_TYPES, autocast_half_type, epoch_order, make_accelerator, make_optimizer,
                                    seed_everything, sharded_weights, whole_state, whole_weights)


@dataclass
class Rollout:
    """One iteration's experience on this process, built by `collect_rollout`.

    B = this process's prompts x K samples (prompt-major: a prompt's K samples are consecutive,
    as RLOO / GRPO need), T = the longest response (response positions, right-padded).
    """

    inputs: dict  # the policy's forward arguments (`models.policy.rollout_tensors`): input_ids and
    #               attention_mask (B, P + T), prompt left-padded to P; response_mask (B, T); prompt_width P
    mask: Tensor  # (B, T) float, 1 on real response tokens (EOS included when one was sampled)
    logprobs: Tensor  # (B, T) log pi_old(a_t|s_t): the policy that sampled, logits / temperature
    ref_logprobs: Tensor  # (B, T) log pi_ref(a_t|s_t) of the frozen reference (LoRA: adapter off)
    values: Tensor  # (B, T) V_old(s_t) of the value head at sampling time (0 until it learns)
    kl: Tensor  # (B, T) per-token KL estimate (--kl-estimator) of logprobs vs ref_logprobs, 0 on padding
    scores: Tensor  # (B,) the sources' weighted score, after the missing-EOS penalty and the clip
    finished: Tensor  # (B,) bool, True where the response ended with EOS
    source_scores: dict[str, list[float]]  # each source's raw scores (B each), by source name
    chats: list[list[dict]]  # (B) the prompt (chat messages) of each sequence
    texts: list[str]  # (B) the decoded responses
    response_ids: list[list[int]]  # (B) the response tokens, EOS included
    timing: dict[str, float]  # seconds spent sampling, scoring and in the forward pass (`metric_names`)

    def micro(self, idx: Tensor) -> dict:
        """The forward arguments of sequences `idx` (a micro-batch)."""
        return {k: v[idx] if torch.is_tensor(v) else v for k, v in self.inputs.items()}


@dataclass
class UpdateStats:
    """What `ppo_update` did: metric name -> values (one per micro-batch or optimizer step),
    optimizer steps taken, minibatches skipped by the ratio guard, and whether it stopped at a
    non-finite loss or gradient (the same on every process)."""

    values: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0
    skipped: int = 0
    nonfinite: bool = False

    def add(self, name: str, value) -> None:
        self.values.setdefault(name, []).append(float(value))

    def means(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.values.items()}


class NonFiniteUpdate(FloatingPointError):
    """Every process stopped at `iteration` (0-based); `saved`: the checkpoint already holds
    the state before it (the iteration had not stepped yet)."""

    def __init__(self, iteration: int, saved: bool):
        super().__init__(f"non-finite PPO loss or gradient at iteration {iteration + 1}")
        self.iteration, self.saved = iteration, saved


def repeated_ngram_share(tokens: list[int], n: int = 3) -> float:
    """Share of the response's n-grams that already occurred in it (repetition / reward hacking)."""
    grams = [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def sampling_dtype(accelerator, lm) -> torch.dtype:
    """The dtype PPO samples in: the --mixed-precision one, else the policy's own."""
    return HALF_TYPES.get(str(accelerator.mixed_precision), next(lm.parameters()).dtype)


def collect_rollout(cfg: PPOConfig, accelerator, model, policy, reference, sampler, tokenizer, rewards,
                    chats: list[list[dict]], seed: int, server=None, iteration: int = 0) -> Rollout:
    """Step 1: sample K responses per chat, score them, one no-grad forward of policy and reference.

    `model` is the prepared (possibly DDP-wrapped) `PolicyWithValue`, `policy` the unwrapped
    one; `reference` is the separate frozen copy (full fine-tuning) or None (LoRA: the policy
    with its adapter off); `sampler` a `SamplingCopy` or None (sample from the policy itself);
    `server` a `ServerSampler` (--generation-url), which then samples, with the current adapter
    pushed to it first for `iteration` (the push counts as sampling time).
    """
    from alignloop.models.generation import Sampling, generate
    from alignloop.models.policy import reference_logprobs, rollout_tensors

    device, t = accelerator.device, time.time()
    sampling = Sampling(num_samples=cfg.num_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                        max_new_tokens=cfg.max_new_tokens, seed=seed, batch_size=len(chats) * cfg.num_samples)
    if server is not None:
        # FSDP / ZeRO-3: the adapter gathered from every process's shards (collective)
        server.refresh(accelerator, policy.lm, tokenizer, cfg.model, iteration + 1, whole_state(accelerator, policy.lm))
        gens = server.generate(tokenizer, chats, sampling)
    elif sampler is not None:
        with whole_weights(accelerator, model):  # FSDP / ZeRO-3: one gather per iteration, not per token
            copy = sampler.refresh()
        gens = generate(copy, tokenizer, chats, sampling, show_progress=False)
        sampler.release()  # its memory is the training's until the next refresh
    else:
        with accelerator.autocast():  # --mixed-precision covers sampling and the reference too
            gens = generate(policy.lm, tokenizer, chats, sampling, show_progress=False)
    timing = {M.GENERATE_S: time.time() - t}
    t = time.time()
    seq_chats = [chats[p] for p in gens.prompt_index]
    with accelerator.autocast():  # rules and judges; a reward model folder scores in its own dtype
        total, per_source = rewards.score_all(seq_chats, gens.texts)
    scores = torch.tensor(total, dtype=torch.float32, device=device)
    finished = torch.tensor(gens.finished, device=device)
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * (~finished).float()
    if cfg.score_clip is not None:
        scores = scores.clamp(-cfg.score_clip, cfg.score_clip)
    timing[M.SCORE_S], t = time.time() - t, time.time()
    inputs = rollout_tensors(gens.prompt_ids, gens.response_ids, tokenizer.pad_token_id, device)
    mask = inputs["response_mask"].float()
    with torch.no_grad(), accelerator.autocast():
        out = model(**inputs, temperature=cfg.temperature, with_entropy=False)  # the rollout needs no entropy
        ref_logprobs = reference_logprobs(policy, reference, inputs, cfg.temperature)
    kl = kl_penalty(out["logprobs"], ref_logprobs, cfg.kl_estimator) * mask
    timing[M.FORWARD_S] = time.time() - t
    return Rollout(inputs=inputs, mask=mask, logprobs=out["logprobs"], ref_logprobs=ref_logprobs,
                   values=out["values"], kl=kl, scores=scores, finished=finished, source_scores=per_source,
                   chats=seq_chats, texts=gens.texts, response_ids=gens.response_ids, timing=timing)


def compute_advantages(cfg: PPOConfig, rollout: Rollout, beta: float, all_reduce=None) -> tuple[Tensor, Tensor | None]:
    """Step 2: (advantages (B, T), returns (B, T) or None without a critic), 0 on padding.

    GAE: r_t = -beta * kl_t (+ the score on the last token), optionally whitened keeping its
    mean, then `gae`; RLOO / GRPO: the KL-penalised sequence score against the group's
    baseline, on every token. With --kl-in-loss the KL is left out here (beta 0) and added to
    the loss by `ppo_update`. Advantages are whitened over every process's real tokens
    (`all_reduce` sums a tensor over the processes; None: this process alone).
    """
    beta = 0.0 if cfg.kl_in_loss else beta
    mask = rollout.mask
    if cfg.advantage == "gae":
        token_rewards = per_token_rewards(rollout.scores, rollout.kl, mask, beta)
        if cfg.whiten_rewards:
            token_rewards = masked_whiten(token_rewards, mask, shift_mean=False, all_reduce=all_reduce)
        advantages, returns = gae(token_rewards, rollout.values, mask, cfg.gamma, cfg.lam)
    else:
        seq = kl_penalized_scores(rollout.scores, rollout.kl, mask, beta)
        baseline = rloo_advantages if cfg.advantage == "rloo" else grpo_advantages
        advantages, returns = sequence_to_tokens(baseline(seq, cfg.num_samples), mask), None
    return masked_whiten(advantages, mask, all_reduce=all_reduce), returns


@dataclass
class Demonstrations:
    """The tokenised --ptx-data: each demonstration's prompt and response ids (the response with
    its closing EOS, cut as sft cuts: `data.chat.tokenize_example`)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    pad_id: int

    def batch(self, idx: list[int], device) -> dict:
        """The rollout layout (`models.policy.rollout_tensors`) of demonstrations `idx`."""
        from alignloop.models.policy import rollout_tensors

        return rollout_tensors([self.prompt_ids[i] for i in idx], [self.response_ids[i] for i in idx], self.pad_id,
                               device)


def load_demonstrations(cfg: PPOConfig, tokenizer) -> Demonstrations | None:
    """--ptx-data tokenised (None when it is not given)."""
    from alignloop.data.chat import tokenize_example
    from alignloop.data.records import Demonstration

    if cfg.ptx_data is None:
        return None
    records = read_sources(cfg.ptx_data, Demonstration)
    if not records:
        raise ConfigError(f"--ptx-data {cfg.ptx_data}: no demonstrations")
    prompts, responses = [], []
    for r in records:
        row = tokenize_example(tokenizer, r.chat(), r.response, cfg.ptx_max_length)
        n_prompt = len(row["response_mask"]) - sum(row["response_mask"])
        prompts.append(row["input_ids"][:n_prompt])
        responses.append(row["input_ids"][n_prompt:])
    return Demonstrations(prompts, responses, tokenizer.pad_token_id)


def ptx_draw(n: int, size: int, seed: int, iteration: int, epoch: int, minibatch: int, rank: int) -> list[int]:
    """`size` of the n demonstrations (without replacement; all of them when n <= size) for one
    minibatch of one process: a function of its coordinates only, so a resumed run draws what
    an uninterrupted one does."""
    key = (((seed * 1_000_003 + iteration) * 101 + epoch) * 1009 + minibatch) * 997 + rank
    return torch.randperm(n, generator=torch.Generator().manual_seed(key % (2 ** 63)))[:size].tolist()


def ptx_loss(model, demos: Demonstrations, idx: list[int], device) -> Tensor:
    """PPO-ptx's term (Ouyang et al. 2022, eq. 2, with demonstrations for the pretraining data):
    -mean over the response tokens of demonstrations `idx` of log pi(y_t | x, y_<t), the
    policy's own log-probs (temperature 1, adapter on)."""
    batch = demos.batch(idx, device)
    logprobs = model(**batch, temperature=1.0, with_values=False, with_entropy=False)["logprobs"]  # (B, R)
    return -masked_mean(logprobs.float(), batch["response_mask"].float())


def micro_batch_loss(cfg: PPOConfig, model, rollout: Rollout, advantages: Tensor, returns: Tensor | None,
                     idx: Tensor, beta: float, stats: UpdateStats) -> tuple[Tensor, Tensor]:
    """(loss, mean ratio) of sequences `idx`: the clipped policy loss, + vf_coef x the clipped
    value loss (GAE), + beta x k3 (--kl-in-loss); token means over `idx`. Logs into `stats`."""
    mask = rollout.mask[idx]
    new = model(**rollout.micro(idx), temperature=cfg.temperature, with_values=cfg.advantage == "gae")
    pg, pg_stats = policy_loss(new["logprobs"], rollout.logprobs[idx], advantages[idx], mask, cfg.clip_eps)
    loss = pg
    if returns is not None:
        vf, vf_stats = value_loss(new["values"], rollout.values[idx], returns[idx], mask, cfg.vf_clip)
        loss = loss + cfg.vf_coef * vf
        stats.add(M.VALUE_LOSS, vf.item())
        stats.add(M.VALUE_CLIPFRAC, vf_stats["vf_clipfrac"].item())
    if cfg.kl_in_loss:
        loss = loss + beta * k3_loss_term(new["logprobs"], rollout.ref_logprobs[idx], mask)
    for name, value in ((M.POLICY_LOSS, pg.detach()), (M.CLIPFRAC, pg_stats["clipfrac"]),
                        (M.APPROX_KL, pg_stats["approx_kl"]), (M.RATIO_MAX, pg_stats["ratio_max"]),
                        (M.ENTROPY, masked_mean(new["entropy"], mask))):
        stats.add(name, value)
    return loss, pg_stats["ratio_mean"]


def ppo_update(cfg: PPOConfig, accelerator, model, optimizer, scheduler, rollout: Rollout, advantages: Tensor,
               returns: Tensor | None, beta: float, demos: Demonstrations | None = None,
               iteration: int = 0) -> UpdateStats:
    """Step 3: cfg.ppo_epochs passes over the rollout, cfg.minibatches optimizer steps each.

    A minibatch's loss is the token mean over the minibatch of ALL processes (each micro-batch
    weighted by its share of those tokens; DDP then averages, hence x world). Once per
    minibatch every process all-reduces (worst mean ratio, non-finite flag), so all decide
    alike: a ratio above --ratio-threshold skips the minibatch (the schedule still steps); a
    non-finite loss, or a non-finite norm of the (all-reduced) gradients, ends the update
    without stepping (`UpdateStats.nonfinite`). A process whose loss is NaN still runs its
    backward passes, so no process is left waiting in a collective. With `demos` (--ptx-data)
    each minibatch first adds ptx_coef x the NLL of ptx_batch_size demonstrations per process
    (`ptx_draw`, `ptx_loss`; DDP averages it over the processes).
    """
    world, device, mask = accelerator.num_processes, accelerator.device, rollout.mask
    stats, n_seq = UpdateStats(), mask.shape[0]
    mb_size = math.ceil(n_seq / cfg.minibatches)
    for epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(n_seq).tolist()
        for start in range(0, n_seq, mb_size):
            mb = perm[start: start + mb_size]
            mb_tokens = accelerator.reduce(mask[mb].sum(), "sum").clamp_min(1) / world
            worst_ratio, nonfinite = torch.zeros((), device=device), torch.zeros((), device=device)
            if demos is not None:  # PPO-ptx: its gradient is synchronised with the minibatch's last micro-batch
                drawn = ptx_draw(len(demos.prompt_ids), cfg.ptx_batch_size, cfg.seed, iteration, epoch,
                                 start // mb_size, accelerator.process_index)
                with accelerator.no_sync(model) if world > 1 else nullcontext():
                    nll = ptx_loss(model, demos, drawn, device)
                    accelerator.backward(cfg.ptx_coef * nll)
                stats.add(M.PTX_LOSS, nll.item())
                nonfinite = torch.maximum(nonfinite, (~torch.isfinite(nll.detach())).float())
            micro_starts = list(range(0, len(mb), cfg.micro_batch_size))
            for m_i, m_start in enumerate(micro_starts):
                idx = torch.tensor(mb[m_start: m_start + cfg.micro_batch_size], device=device)
                sync = m_i == len(micro_starts) - 1
                with accelerator.no_sync(model) if not sync and world > 1 else nullcontext():
                    loss, ratio_mean = micro_batch_loss(cfg, model, rollout, advantages, returns, idx, beta, stats)
                    accelerator.backward(loss * (mask[idx].sum() / mb_tokens))
                worst_ratio = torch.maximum(worst_ratio, ratio_mean)
                nonfinite = torch.maximum(nonfinite, (~torch.isfinite(loss.detach())).float())
            flags = torch.stack([worst_ratio.float(), nonfinite])
            worst_ratio, nonfinite = (accelerator.reduce(flags, "max") if world > 1 else flags).tolist()
            if nonfinite or not math.isfinite(worst_ratio):
                optimizer.zero_grad(set_to_none=True)
                stats.nonfinite = True
                return stats
            if worst_ratio > cfg.ratio_threshold:  # guard: the policy jumped; skip this minibatch
                optimizer.zero_grad(set_to_none=True)
                stats.skipped += 1
                scheduler.step()
                continue
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
            if not math.isfinite(grad_norm):  # the same on every process: the gradients are all-reduced
                optimizer.zero_grad(set_to_none=True)
                stats.nonfinite = True
                return stats
            stats.add(M.GRAD_NORM, grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stats.steps += 1
    return stats


def iteration_metrics(accelerator, rollout: Rollout, returns: Tensor | None, update: UpdateStats, beta: float,
                      next_beta: float, mean_kl: float, lr: float, timing: dict[str, float]) -> dict[str, float]:
    """Step 6: the iteration's metrics (`metric_names`); means over every process where reduced."""
    seq_kl, lengths = rollout.kl.sum(dim=1), rollout.mask.sum(dim=1)  # (B,) nats, tokens per response

    def mean_over_processes(x: Tensor) -> float:
        return accelerator.reduce(x.mean(), "mean").item()

    metrics = {
        M.KL: mean_kl, M.SCORE: mean_over_processes(rollout.scores),
        M.RLHF_REWARD: mean_over_processes(rollout.scores - beta * seq_kl),
        M.EXPLAINED_VARIANCE: float(explained_variance(rollout.values, returns, rollout.mask)) if returns is not None else None,
        M.BETA: beta, M.NEXT_BETA: next_beta, M.SKIPPED_MINIBATCHES: update.skipped, M.LR: lr,
        M.LENGTH: lengths.mean().item(), M.NO_EOS_SHARE: 1.0 - rollout.finished.float().mean().item(),
        M.REPEATED_3GRAM_SHARE: sum(map(repeated_ngram_share, rollout.response_ids)) / len(rollout.response_ids),
        **{M.score(name): sum(v) / len(v) for name, v in rollout.source_scores.items()},
        **update.means(), **timing,
    }
    metrics[M.ITERATION_S] = sum(timing.values())
    metrics[M.TOKENS_PER_S] = accelerator.reduce(lengths.sum(), "sum").item() / max(metrics[M.ITERATION_S], 1e-9)
    return {k: v for k, v in metrics.items() if v is not None}


def replay_before_nonfinite(run):
    """Make a non-finite update stop with the checkpoint of the state BEFORE its iteration.

    When the iteration had not stepped yet, `run` saved that state itself. Otherwise the
    weights already hold some of its optimizer steps: the failed run is dropped and the state
    is rebuilt by resuming from the last checkpoint (or from the start) up to that iteration,
    which gives what an uninterrupted run had (the invariant --resume is tested for).
    """
    @functools.wraps(run)
    def wrapper(cfg: PPOConfig) -> Path:
        try:
            return run(cfg)
        except NonFiniteUpdate as err:
            iteration, saved = err.iteration, err.saved
        if not saved:
            gc.collect()  # the failed run's models go before the replay loads its own
            run(cfg.model_copy(update={"resume": True, "stop_at_iteration": iteration}))
        raise FloatingPointError(
            f"PPO loss or gradient is not finite at iteration {iteration + 1} (on at least one process): stopped; "
            f"the state before that iteration is in {cfg.out}/checkpoint (lower the learning rate or raise --kl-coef, "
            "then --resume)")
    return wrapper


def load_models(cfg: PPOConfig, accelerator):
    """(tokenizer, policy with its value head, the frozen reference or None under LoRA, the reward sources).

    Under --mixed-precision's autocast (native amp: not DeepSpeed's own bf16) the frozen
    reference, which only ever runs under it, keeps its linear weights in its dtype
    (`frozen_linears_to`: the same log-probs, about half its memory). The reward models score
    in their own dtype (float32 on CPU): in bf16 the quickstart's PPO gained less gold in each
    of 3 seeds (docs/quickstart-history.md, 2026-12-07)."""
    from alignloop.models.loading import frozen_linears_to, load_causal_lm, load_tokenizer, load_trainable
    from alignloop.models.policy import PolicyWithValue
    from alignloop.rewards import CombinedReward

    device = accelerator.device
    half = autocast_half_type(accelerator)
    policy = PolicyWithValue(load_trainable(cfg, device, name=cfg.model)).to(device)
    reference = None
    if not cfg.lora:  # full fine-tuning keeps a separate frozen reference
        reference = PolicyWithValue(load_causal_lm(cfg.model, cfg.dtype, device)).to(device).requires_grad_(False)
        if half is not None:
            frozen_linears_to(reference, half)
    rewards = CombinedReward(cfg.reward, device=str(device), ensemble_k=cfg.ensemble_k)
    return load_tokenizer(cfg.model), policy, reference, rewards


def generation_server(cfg: PPOConfig, accelerator, lm, tokenizer):
    """The `ServerSampler` of --generation-url (LoRA: run_ppo has checked)."""
    from alignloop.models.generation import eos_ids
    from alignloop.serving.remote import ServerSampler, client_for, run_tag

    out = Path(cfg.out)
    return ServerSampler(client_for(cfg), eos_ids(lm, tokenizer), cfg.generation_adapter_dir or out / "served_adapter",
                         run_tag(out), out / "generation.jsonl")


def iteration_prompts(prompts: list, cfg: PPOConfig, iteration: int, rank: int, world: int) -> list[list[dict]]:
    """This process's chats of an iteration: the epoch's permutation (a function of seed and
    epoch, so resuming needs only the iteration), batch_size x world per iteration."""
    per_iteration = cfg.batch_size * world
    if len(prompts) < per_iteration:
        raise ConfigError(f"{cfg.prompts}: {len(prompts)} prompts, fewer than one iteration's "
                          f"(batch_size x processes = {per_iteration})")
    epoch, i = divmod(iteration, len(prompts) // per_iteration)
    order = epoch_order(len(prompts), cfg.seed, epoch)[i * per_iteration: (i + 1) * per_iteration]
    return [prompts[j].chat() for j in order[rank * cfg.batch_size: (rank + 1) * cfg.batch_size]]


def log_samples(out: Path, iteration: int, rollout: Rollout, n: int = 4) -> None:
    """The first n prompts, responses and scores of the rollout, into out/samples.jsonl."""
    for j in range(min(n, len(rollout.texts))):
        append_jsonl(out / "samples.jsonl", {"iteration": iteration, "prompt": rollout.chats[j][-1]["content"],
                                              "response": rollout.texts[j], "score": rollout.scores[j].item()})


@replay_before_nonfinite
def run_ppo(cfg: PPOConfig) -> Path:
    """`alignloop ppo`: the loop of the module docstring, its steps numbered as there."""
    from alignloop.models.policy import SamplingCopy

    out = Path(cfg.out)
    refuse_to_overwrite(out, cfg.resume)
    if cfg.advantage != "gae" and cfg.num_samples < 2:
        raise ConfigError(f"--advantage {cfg.advantage} needs --num-samples >= 2 (a group per prompt)")
    if cfg.generation_url and not cfg.lora:
        raise ConfigError("--generation-url samples PPO's rollouts with the policy's LoRA adapter, pushed to the "
                          "server each iteration; with full fine-tuning the server would go on sampling from the "
                          "initial weights: add --lora, or sample in-process (no --generation-url)")
    accelerator = make_accelerator(cfg.mixed_precision)
    if sharded_weights(accelerator) and not cfg.sampling_copy and not cfg.generation_url:
        raise ConfigError("--no-sampling-copy under DeepSpeed ZeRO-3 / FSDP would sample through the sharded policy, "
                          "gathering every layer for every new token: keep --sampling-copy (gathered once per "
                          "iteration) or sample through --generation-url")
    rank, world = accelerator.process_index, accelerator.num_processes
    seed_everything(cfg.seed)
    prompts = read_sources(cfg.prompts, PromptRecord)
    tokenizer, policy, reference, rewards = load_models(cfg, accelerator)
    demos = load_demonstrations(cfg, tokenizer)
    optimizer, scheduler = make_optimizer(policy, cfg, cfg.iterations * cfg.ppo_epochs * cfg.minibatches)
    # the sampling copy before prepare: FSDP / ZeRO-3 shard the policy in place (it refreshes while gathered)
    sampler = (SamplingCopy(policy.lm, sampling_dtype(accelerator, policy.lm))
               if cfg.sampling_copy and not cfg.generation_url else None)
    model, optimizer = accelerator.prepare(policy, optimizer)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.kl_coef))
    tracker, state = start_run(out, cfg, accelerator, model, optimizer, scheduler, "iteration", cfg.iterations)
    if state:
        kl_ctl.load_state_dict(state["kl_controller"])
    elif cfg.resume:  # nothing to resume: a fresh start, so nothing logged before counts
        tracker.resume_from(0)
    iteration = state.get("iteration", 0)
    policy = accelerator.unwrap_model(model)  # the module inside DDP / FSDP
    server = generation_server(cfg, accelerator, policy.lm, tokenizer) if cfg.generation_url else None
    stop = cfg.iterations if cfg.stop_at_iteration is None else min(cfg.iterations, cfg.stop_at_iteration)

    def all_reduce(x: Tensor) -> Tensor:  # a sum over the processes
        return accelerator.reduce(x, "sum")

    def checkpoint() -> None:
        save_checkpoint(out, accelerator, model, optimizer, scheduler,
                        {"iteration": iteration, "kl_controller": kl_ctl.state_dict()})

    with progress_bar("ppo", cfg.iterations, enabled=accelerator.is_main_process) as advance:
        advance(iteration)
        while iteration < stop:
            # 1) rollout: this process's prompts of this iteration, its own sampling seed.
            chats = iteration_prompts(prompts, cfg, iteration, rank, world)
            rollout = collect_rollout(cfg, accelerator, model, policy, reference, sampler, tokenizer, rewards,
                                      chats, seed=cfg.seed * 100_003 + iteration * world + rank, server=server,
                                      iteration=iteration)
            if server is not None and accelerator.is_main_process:
                server.log_iteration()
            beta, timing = kl_ctl.value, dict(rollout.timing)
            # 2) advantages (and GAE's returns), whitened over every process's tokens.
            advantages, returns = compute_advantages(cfg, rollout, beta, all_reduce)
            # 3) PPO epochs over minibatches.
            t = time.time()
            update = ppo_update(cfg, accelerator, model, optimizer, scheduler, rollout, advantages, returns, beta,
                                demos, iteration)
            timing[M.TRAIN_S] = time.time() - t
            # 4) a non-finite loss or gradient anywhere: every process stops, the state before this iteration saved.
            if update.nonfinite:
                if not update.steps:  # nothing of this iteration applied yet: this IS the state before it
                    checkpoint()
                raise NonFiniteUpdate(iteration, saved=not update.steps)
            # 5) KL controller update (nats per response, mean over every process).
            mean_kl = accelerator.reduce(rollout.kl.sum(dim=1).mean(), "mean").item()
            kl_ctl.update(mean_kl, cfg.batch_size * world * cfg.num_samples)
            iteration += 1
            # 6) metrics, samples, checkpoint.
            metrics = iteration_metrics(accelerator, rollout, returns, update, beta, kl_ctl.value, mean_kl,
                                        scheduler.get_last_lr()[0], timing)
            if mean_kl < 0 and accelerator.is_main_process:
                console.print(f"[yellow]warning: iteration {iteration}: the KL estimate is negative ({mean_kl:.3f}); "
                              "the policy samples tokens the reference prefers (check --temperature, --top-p)")
            tracker.log(iteration, metrics)
            if cfg.log_samples_every and iteration % cfg.log_samples_every == 0 and accelerator.is_main_process:
                log_samples(out, iteration, rollout)
            advance(1, score=metrics[M.SCORE], kl=mean_kl)
            if cfg.save_every and iteration % cfg.save_every == 0 and iteration < stop:
                checkpoint()

    tracker.close()
    if server is not None:
        server.close(accelerator)
    if iteration < cfg.iterations:  # --stop-at-iteration
        checkpoint()
        accelerator.print(f"stopped at iteration {iteration}/{cfg.iterations}; continue with --resume")
        return out
    save_policy(cfg, accelerator, policy, tokenizer)
    return out


def save_policy(cfg: PPOConfig, accelerator, policy, tokenizer) -> None:
    """The trained policy (adapter or full model) and its value head; the checkpoint is dropped."""
    from safetensors.torch import save_file

    from alignloop.models.loading import save_model

    out = Path(cfg.out)
    lm_state, head_state = whole_state(accelerator, policy.lm), whole_state(accelerator, policy.value_head)
    if accelerator.is_main_process:
        save_model(policy.lm, tokenizer, out, base=cfg.model, state_dict=lm_state)
        head_state = policy.value_head.state_dict() if head_state is None else head_state
        save_file({k: v.detach().cpu().contiguous() for k, v in head_state.items()}, out / "value_head.safetensors")
        drop_checkpoint(out, cfg.keep_checkpoint)
        accelerator.print(f"policy saved to {out}")
    accelerator.wait_for_everyone()


command = config_command(PPOConfig, run_ppo, "ppo",
                         help="PPO against reward models / rules / AI judges with a KL penalty to the initial "
                              "policy; LoRA on one copy of the weights; resumable; several processes.")
