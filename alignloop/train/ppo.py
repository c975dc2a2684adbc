"""`alignloop ppo`: fine-tune a policy against reward sources with a KL penalty to its start.

Each iteration (numbered as in the loop below):
  1) sample K responses for this process's prompts with the shared generation function;
  2) score them with the reward sources (weighted sum); missing-EOS penalty, score clip;
  3) log-probs of the policy and of the frozen reference, values, per-token KL (once per
     rollout, reused by every PPO epoch);
  4) per-token rewards: -beta * KL on every token, the score on the last real token
     (optionally whitened);
  5) advantages: GAE (gamma, lambda) with the value head, or a critic-free baseline (RLOO
     leave-one-out, GRPO group normalisation); whitened over the whole batch;
  6) several epochs over minibatches (micro-batches with gradient accumulation) of the
     clipped policy loss + vf_coef * clipped value loss (+ k3 KL in the loss when asked);
     a minibatch whose ratio explodes is skipped; NaN/inf stops with a checkpoint;
  7) KL controller update (fixed, or adaptive toward a target KL).
In LoRA mode one copy of the base weights is the policy (adapter on), the reference (adapter
off) and the value function (a head on the policy's trunk).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from alignloop.config import ConfigError, config_command
from alignloop.configs import PPOConfig


def reduce_whiten(accelerator, x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """masked_whiten with the mean and variance of ALL processes' tokens (one process: the same)."""
    m = mask.to(x.dtype)
    stats = torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()]).double()
    s, ss, n = accelerator.reduce(stats, "sum").tolist()
    mean = s / max(n, 1)
    var = max(ss / max(n, 1) - mean * mean, 0.0) * n / max(n - 1, 1)
    out = (x - mean) / math.sqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * m


def repeated_ngram_share(tokens: list[int], n: int = 3) -> float:
    """Share of the response's n-grams that already occurred in it (repetition / reward hacking)."""
    grams = [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def sampling_dtype(accelerator, lm) -> torch.dtype:
    """The dtype PPO samples in: the --mixed-precision one, else the policy's own."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision),
                                                               next(lm.parameters()).dtype)


def sharded_weights(accelerator) -> bool:
    """True under DeepSpeed ZeRO-3 or FSDP: no process holds the whole policy to copy."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


def run_ppo(cfg: PPOConfig) -> Path:
    from alignloop.algorithms.advantages import (gae, grpo_advantages, kl_penalized_scores, per_token_rewards,
                                                 rloo_advantages, sequence_to_tokens)
    from alignloop.algorithms.kl import AdaptiveKLController, FixedKLController, kl_penalty
    from alignloop.algorithms.masked import masked_mean
    from alignloop.algorithms.ppo_losses import explained_variance, k3_loss_term, policy_loss, value_loss
    from alignloop.data.io import append_jsonl, read_records
    from alignloop.data.records import PromptRecord
    from alignloop.models.generation import Sampling, generate
    from alignloop.models.loading import load_causal_lm, load_tokenizer, load_trainable, save_model
    from alignloop.models.policy import PolicyWithValue, SamplingCopy, reference_logprobs, rollout_tensors
    from alignloop.rewards import CombinedReward
    from alignloop.progress import console, progress_bar
    from alignloop.train.checkpoint import drop_checkpoint, refuse_to_overwrite, save_checkpoint, start_run
    from alignloop.train.common import epoch_order, make_accelerator, make_optimizer, seed_everything

    out = Path(cfg.out)
    refuse_to_overwrite(out, cfg.resume)
    if cfg.advantage != "gae" and cfg.num_samples < 2:
        raise ConfigError(f"--advantage {cfg.advantage} needs --num-samples >= 2 (a group per prompt)")
    accelerator = make_accelerator(cfg.mixed_precision)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    seed_everything(cfg.seed)

    # Models: policy + value head (one copy of the weights under LoRA), reference, rewards.
    prompts = read_records(cfg.prompts, PromptRecord)
    tokenizer = load_tokenizer(cfg.model)
    policy = PolicyWithValue(load_trainable(cfg, device, name=cfg.model)).to(device)
    reference = None
    if not cfg.lora:  # full fine-tuning keeps a separate frozen reference
        reference = PolicyWithValue(load_causal_lm(cfg.model, cfg.dtype, device)).to(device).requires_grad_(False)
    rewards = CombinedReward(cfg.reward, device=str(device), ensemble_k=cfg.ensemble_k)
    steps_per_iteration = cfg.ppo_epochs * cfg.minibatches
    optimizer, scheduler = make_optimizer(policy, cfg, cfg.iterations * steps_per_iteration)
    model, optimizer = accelerator.prepare(policy, optimizer)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.kl_coef))
    tracker, state = start_run(out, cfg, accelerator, model, optimizer, scheduler, "iteration", cfg.iterations)
    iteration = state.get("iteration", 0)
    if state:
        kl_ctl.load_state_dict(state["kl_controller"])
    unwrapped = accelerator.unwrap_model(model)
    per_iteration = cfg.batch_size * world
    if len(prompts) < per_iteration:
        raise ConfigError(f"{cfg.prompts}: {len(prompts)} prompts, fewer than one iteration's "
                          f"(batch_size x processes = {per_iteration})")
    iterations_per_epoch = len(prompts) // per_iteration
    sampler = SamplingCopy(unwrapped.lm, sampling_dtype(accelerator, unwrapped.lm)) if (
        cfg.sampling_copy and not sharded_weights(accelerator)) else None
    stop = min(cfg.iterations, cfg.stop_at_iteration or cfg.iterations)

    with progress_bar("ppo", cfg.iterations, enabled=accelerator.is_main_process) as advance:
        advance(iteration)
        while iteration < stop:
            timing, t = {}, time.time()
            # 1) sample: this process's prompts of this iteration, its own seed.
            epoch, i = divmod(iteration, iterations_per_epoch)
            order = epoch_order(len(prompts), cfg.seed, epoch)[i * per_iteration: (i + 1) * per_iteration]
            batch_prompts = [prompts[j] for j in order[rank * cfg.batch_size: (rank + 1) * cfg.batch_size]]
            chats = [p.chat() for p in batch_prompts]
            sampling = Sampling(num_samples=cfg.num_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_new_tokens=cfg.max_new_tokens, seed=cfg.seed * 100_003 + iteration * world + rank,
                                batch_size=len(chats) * cfg.num_samples)
            if sampler is not None:
                gens = generate(sampler.refresh(), tokenizer, chats, sampling, show_progress=False)
            else:
                with accelerator.autocast():  # --mixed-precision covers sampling, scoring and the reference too
                    gens = generate(unwrapped.lm, tokenizer, chats, sampling, show_progress=False)
            timing["time/generate_s"] = time.time() - t

            # 2) score (weighted reward sources), penalties, clip.
            t = time.time()
            seq_chats = [chats[p] for p in gens.prompt_index]
            with accelerator.autocast():
                total, per_source = rewards.score_all(seq_chats, gens.texts)
            scores = torch.tensor(total, dtype=torch.float32, device=device)
            finished = torch.tensor(gens.finished, device=device)
            if cfg.missing_eos_penalty is not None:
                scores = scores - cfg.missing_eos_penalty * (~finished).float()
            if cfg.score_clip is not None:
                scores = scores.clamp(-cfg.score_clip, cfg.score_clip)
            timing["time/score_s"] = time.time() - t

            # 3) log-probs of policy and reference, values, per-token KL (once per rollout).
            t = time.time()
            batch = rollout_tensors(gens.prompt_ids, gens.response_ids, tokenizer.pad_token_id)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            mask = batch["response_mask"].float()
            with torch.no_grad(), accelerator.autocast():
                rollout = model(**batch, temperature=cfg.temperature)
                old_logprobs, old_values = rollout["logprobs"], rollout["values"]
                ref_logprobs = reference_logprobs(unwrapped, reference, batch, cfg.temperature)
            kl = kl_penalty(old_logprobs, ref_logprobs, cfg.kl_estimator) * mask  # (B, R)
            beta = kl_ctl.value
            timing["time/forward_s"] = time.time() - t

            # 4) + 5) rewards and advantages.
            reward_beta = 0.0 if cfg.kl_in_loss else beta
            if cfg.advantage == "gae":
                token_rewards = per_token_rewards(scores, kl, mask, reward_beta)
                if cfg.whiten_rewards:
                    token_rewards = reduce_whiten(accelerator, token_rewards, mask, shift_mean=False)
                advantages, returns = gae(token_rewards, old_values, mask, cfg.gamma, cfg.lam)
            else:
                seq = kl_penalized_scores(scores, kl, mask, reward_beta)
                base = rloo_advantages(seq, cfg.num_samples) if cfg.advantage == "rloo" else grpo_advantages(seq, cfg.num_samples)
                advantages, returns = sequence_to_tokens(base, mask), None
            advantages = reduce_whiten(accelerator, advantages, mask)

            # 6) PPO epochs over minibatches, micro-batches accumulated.
            t = time.time()
            n_seq = mask.shape[0]
            stats: dict[str, list[float]] = {}
            skipped = 0
            mb_size = math.ceil(n_seq / cfg.minibatches)
            for _ in range(cfg.ppo_epochs):
                perm = torch.randperm(n_seq).tolist()
                for start in range(0, n_seq, mb_size):
                    mb = perm[start: start + mb_size]
                    # token-mean over the minibatch of ALL processes (DDP then averages: x world)
                    mb_tokens = accelerator.reduce(mask[mb].sum(), "sum").clamp_min(1) / world
                    worst_ratio = torch.zeros((), device=device)
                    micro_starts = list(range(0, len(mb), cfg.micro_batch_size))
                    for m_i, m_start in enumerate(micro_starts):
                        idx = torch.tensor(mb[m_start: m_start + cfg.micro_batch_size], device=device)
                        sub = {k: (v[idx] if torch.is_tensor(v) else v) for k, v in batch.items()}
                        sync = m_i == len(micro_starts) - 1
                        with accelerator.no_sync(model) if not sync and world > 1 else nullcontext():
                            new = model(**sub, temperature=cfg.temperature, with_values=cfg.advantage == "gae")
                            share = mask[idx].sum() / mb_tokens
                            pg, pg_stats = policy_loss(new["logprobs"], old_logprobs[idx], advantages[idx], mask[idx], cfg.clip_eps)
                            loss = pg
                            if cfg.advantage == "gae":
                                vf, vf_stats = value_loss(new["values"], old_values[idx], returns[idx], mask[idx], cfg.vf_clip)
                                loss = loss + cfg.vf_coef * vf
                                stats.setdefault("loss/value", []).append(vf.item())
                                stats.setdefault("val/clipfrac", []).append(vf_stats["vf_clipfrac"].item())
                            if cfg.kl_in_loss:
                                loss = loss + beta * k3_loss_term(new["logprobs"], ref_logprobs[idx], mask[idx])
                            if not torch.isfinite(loss):
                                save_checkpoint(out, accelerator, model, optimizer, scheduler,
                                                {"iteration": iteration, "kl_controller": kl_ctl.state_dict()})
                                raise FloatingPointError(
                                    f"PPO loss is {loss.item()} at iteration {iteration + 1}: stopped; the last good "
                                    f"state is in {out}/checkpoint (lower the learning rate or raise --kl-coef)")
                            accelerator.backward(loss * share)
                        worst_ratio = torch.maximum(worst_ratio, pg_stats["ratio_mean"])
                        for k, v in (("loss/policy", pg.detach()), ("policy/clipfrac", pg_stats["clipfrac"]),
                                     ("policy/approx_kl", pg_stats["approx_kl"]), ("policy/ratio_max", pg_stats["ratio_max"]),
                                     ("policy/entropy", masked_mean(new["entropy"], mask[idx]))):
                            stats.setdefault(k, []).append(float(v))
                    worst_ratio = accelerator.reduce(worst_ratio, "max") if world > 1 else worst_ratio
                    if worst_ratio > cfg.ratio_threshold:  # guard: the policy jumped; skip this minibatch
                        optimizer.zero_grad(set_to_none=True)
                        skipped += 1
                        scheduler.step()
                        continue
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    stats.setdefault("policy/grad_norm", []).append(float(grad_norm))
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            timing["time/train_s"] = time.time() - t

            # 7) KL controller update, metrics, samples, checkpoint.
            seq_kl = (kl * mask).sum(dim=1)  # (B,) nats per response
            mean_kl = accelerator.reduce(seq_kl.mean(), "mean").item()
            kl_ctl.update(mean_kl, per_iteration * cfg.num_samples)
            iteration += 1
            lengths = mask.sum(dim=1)
            metrics = {
                "objective/kl": mean_kl,
                "objective/score": accelerator.reduce(scores.mean(), "mean").item(),
                "objective/rlhf_reward": accelerator.reduce((scores - beta * seq_kl).mean(), "mean").item(),
                "val/explained_variance": float(explained_variance(old_values, returns, mask)) if returns is not None else None,
                "kl/beta": beta, "kl/next_beta": kl_ctl.value,
                "policy/skipped_minibatches": skipped, "train/lr": scheduler.get_last_lr()[0],
                "response/length": lengths.mean().item(),
                "response/no_eos_share": 1.0 - finished.float().mean().item(),
                "response/repeated_3gram_share": sum(repeated_ngram_share(r) for r in gens.response_ids) / len(gens.response_ids),
                **{f"score/{name}": sum(v) / len(v) for name, v in per_source.items()},
                **{k: sum(v) / len(v) for k, v in stats.items()},
                **timing,
            }
            elapsed = sum(timing.values())
            metrics["time/iteration_s"] = elapsed
            metrics["time/tokens_per_s"] = accelerator.reduce(lengths.sum(), "sum").item() / max(elapsed, 1e-9)
            if mean_kl < 0 and accelerator.is_main_process:
                console.print(f"[yellow]warning: iteration {iteration}: the KL estimate is negative ({mean_kl:.3f}); "
                              "the policy samples tokens the reference prefers (check --temperature, --top-p)")
            tracker.log(iteration, {k: v for k, v in metrics.items() if v is not None})
            if cfg.log_samples_every and iteration % cfg.log_samples_every == 0 and accelerator.is_main_process:
                for j in range(min(4, len(gens.texts))):
                    append_jsonl(out / "samples.jsonl", {"iteration": iteration, "prompt": seq_chats[j][-1]["content"],
                                                          "response": gens.texts[j], "score": scores[j].item()})
            advance(1, score=metrics["objective/score"], kl=mean_kl)
            if (cfg.save_every and iteration % cfg.save_every == 0 and iteration < cfg.iterations) or iteration == stop < cfg.iterations:
                save_checkpoint(out, accelerator, model, optimizer, scheduler,
                                {"iteration": iteration, "kl_controller": kl_ctl.state_dict()})

    tracker.close()
    if iteration < cfg.iterations:
        accelerator.print(f"stopped at iteration {iteration}/{cfg.iterations}; continue with --resume")
        return out
    if accelerator.is_main_process:
        save_model(unwrapped.lm, tokenizer, out, base=cfg.model)
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in unwrapped.value_head.state_dict().items()},
                  out / "value_head.safetensors")
        drop_checkpoint(out, cfg.keep_checkpoint)
        accelerator.print(f"policy saved to {out}")
    accelerator.wait_for_everyone()
    return out


command = config_command(PPOConfig, run_ppo, "ppo",
                         help="PPO against reward models / rules / AI judges with a KL penalty to the initial "
                              "policy; LoRA on one copy of the weights; resumable; several processes.")
