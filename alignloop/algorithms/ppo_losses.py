"""PPO losses for language models and the log-prob / entropy helpers they need.

Shapes: B sequences, T response positions, V vocabulary. `mask` is `(B, T)`, 1 = real response
token. Losses are token means over the real tokens of the batch (`masked_mean`), as in TRL
and OpenRLHF's default. Stats are detached 0-dim tensors (call `.item()` when logging; keeping
them as tensors avoids a device sync per stat); their names are stable metric names.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignloop.algorithms.kl import kl_k3
from alignloop.algorithms.masked import masked_mean, masked_var, zero_padded


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    max_log_ratio: float = 20.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped surrogate policy loss of PPO (Schulman et al. 2017, arXiv 1707.06347, eq. 7).

        ratio_t   = exp(clamp(logp_t - old_logp_t, -max_log_ratio, max_log_ratio))
        pg_loss1  = -A_t * ratio_t
        pg_loss2  = -A_t * clamp(ratio_t, 1 - clip_eps, 1 + clip_eps)
        loss      = masked_mean(max(pg_loss1, pg_loss2))

    The clamp of the log-ratio keeps exp finite when a token's probability collapsed (TRL,
    OpenRLHF); it changes nothing for |log ratio| < 20.

    Args:
        logp: `(B, T)` log pi_theta(a_t|s_t) of the sampled tokens, WITH gradient.
        old_logp: `(B, T)` the same under the policy that sampled them (detached).
        advantages: `(B, T)` (detached; whitened by the caller if wanted).
        mask: `(B, T)`, 1 = real response token.
        clip_eps: epsilon of the clip (0.2 in the paper and TRL).
    Returns:
        `(loss, stats)`; stats (detached scalars):
        - `clipfrac`: share of real tokens where the clipped term is the larger (pg_loss2 >
          pg_loss1), i.e. where the clip cut the gradient off;
        - `approx_kl`: masked mean of k3 for KL(pi_old || pi_theta), (r - 1) - log r with
          r = ratio (Schulman's estimator, as CleanRL logs it; >= 0, unbiased with tokens
          sampled from pi_old). TRL logs k2, 0.5 * (logp - old_logp)^2, instead: the two agree
          to second order;
        - `ratio_mean`, `ratio_max`: of the ratio over real tokens (ratio_max flags blow-ups).
    """
    old_logp, advantages = old_logp.detach(), advantages.detach()  # constants of the surrogate
    log_ratio = (logp - old_logp).clamp(-max_log_ratio, max_log_ratio)
    ratio = torch.exp(log_ratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(pg_loss1, pg_loss2), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_loss2 > pg_loss1).to(ratio.dtype), mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": zero_padded(ratio, mask).max(),  # ratio > 0, so padding (0) never wins
        }
    return loss, {k: v.detach() for k, v in stats.items()}


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped value loss of PPO for language models (TRL, OpenRLHF, CleanRL).

        V_clipped = V_old + clamp(V - V_old, -clip, clip)
        loss      = 0.5 * masked_mean(max((V - R)^2, (V_clipped - R)^2))

    With `clip=None` the plain 0.5 * masked_mean((V - R)^2).

    Args:
        values: `(B, T)` V_phi(s_t) from the current value head, WITH gradient.
        old_values: `(B, T)` values at rollout time (detached); `gae` used them.
        returns: `(B, T)` targets R_t = A_t + V_old_t from `gae` (detached, not whitened).
        mask: `(B, T)`, 1 = real response token.
        clip: the value clip range c (TRL 0.2; absolute, in reward units).
    Returns:
        `(loss, stats)`; stats: `vf_clipfrac` (share of real tokens where the clipped error is
        the larger), `value_mean` (masked mean of V).
    """
    old_values, returns = old_values.detach(), returns.detach()
    unclipped = (values - returns) ** 2
    if clip is None:
        per_token, clipped_larger = unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        v_clipped = old_values + (values - old_values).clamp(-clip, clip)
        clipped = (v_clipped - returns) ** 2
        per_token, clipped_larger = torch.maximum(unclipped, clipped), clipped > unclipped
    loss = 0.5 * masked_mean(per_token, mask)
    stats = {
        "vf_clipfrac": masked_mean(clipped_larger.to(values.dtype), mask).detach(),
        "value_mean": masked_mean(values, mask).detach(),
    }
    return loss, stats


def logprobs_from_logits(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) at the given tokens: `(B, T, V)`, `(B, T)` -> `(B, T)`.

        logp_t = z_t[a_t] - logsumexp_v z_t[v],   z_t = logits_t / temperature

    Divide by the SAMPLING temperature so that the log-probs are those of the distribution the
    tokens were drawn from (a detail that matters, per "The N implementation details of RLHF
    with PPO", Huang et al. 2024). Memory: computed one sequence at a time, so the temporaries
    are `(T, V)`, never a second `(B, T, V)` tensor; bf16 / fp16 logits are upcast to float32
    per sequence, and the result is float32 for them (low-precision log-probs make PPO ratios
    noisy). Equal to `torch.log_softmax(logits / temperature, -1).gather(-1, tokens[..., None])`.

    Align logits and tokens before the call: for a causal LM the logits at position t predict
    token t + 1, so pass `logits[:, :-1]` with `tokens[:, 1:]` (sliced to the response).
    Every token id must be a valid index (use the pad id on padding, not -100); mask the
    result.
    """
    out_dtype = torch.promote_types(logits.dtype, torch.float32)
    rows = []
    for row_logits, row_tokens in zip(logits, tokens):  # (T, V), (T,)
        z = row_logits.to(out_dtype)
        if temperature != 1.0:
            z = z / temperature
        picked = z.gather(-1, row_tokens.unsqueeze(-1)).squeeze(-1)  # (T,)
        rows.append(picked - torch.logsumexp(z, dim=-1))
    return torch.stack(rows) if rows else logits.new_zeros(tokens.shape, dtype=out_dtype)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of softmax(logits / temperature) at each position: `(B, T, V)` -> `(B, T)`.

        H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v,    p = softmax(z)

    The second form never takes the log of a probability (no 0 * log 0 = nan), so it is
    stable for peaked distributions. One sequence at a time, float32 for bf16 / fp16 input,
    like `logprobs_from_logits`.
    """
    out_dtype = torch.promote_types(logits.dtype, torch.float32)
    rows = []
    for row_logits in logits:  # (T, V)
        z = row_logits.to(out_dtype)
        if temperature != 1.0:
            z = z / temperature
        p = torch.softmax(z, dim=-1)
        rows.append(torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1))
    return torch.stack(rows) if rows else logits.new_zeros(logits.shape[:-1], dtype=out_dtype)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[R - V] / Var[R] over the real tokens (a scalar; CleanRL's `explained_variance`).

    1 = the critic predicts the returns perfectly, 0 = no better than a constant, negative =
    worse than a constant. nan when the returns have no variance (nothing to explain).
    """
    values, returns = values.detach(), returns.detach()
    var_r = masked_var(returns, mask, unbiased=False)
    var_err = masked_var(returns - values, mask, unbiased=False)
    return torch.where(var_r > 0, 1.0 - var_err / var_r, torch.full_like(var_r, float("nan")))


def k3_loss_term(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """KL penalty as a loss term (GRPO, Shao et al. 2024, eq. 4): masked_mean of k3. Scalar.

        k3_t = exp(ref_logp_t - logp_t) - 1 + (logp_t - ref_logp_t)

    Add `beta * k3_loss_term(...)` to the policy loss when KL is "in the loss" rather than in
    the reward (then leave it out of the reward). `logp` carries the gradient, `ref_logp` is
    detached. Per token the gradient w.r.t. logp is 1 - pi_ref/pi; in expectation over tokens
    drawn from pi that is the gradient of KL(pi_ref || pi), not of KL(pi || pi_ref) (the
    sampling distribution is not differentiated). Both vanish at pi = pi_ref and pull toward
    it; GRPO uses it as is.
    """
    return masked_mean(kl_k3(logp, ref_logp), mask)

