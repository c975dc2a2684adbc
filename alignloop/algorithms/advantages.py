"""Rewards and advantages for PPO and its critic-free variants.

Shapes: B sequences (rollouts), T response positions. `mask` is `(B, T)`, 1 on real response
tokens (the EOS token included when one was generated), 0 on padding.

Two ways to get token advantages, both ending in a `(B, T)` tensor for `ppo_losses.policy_loss`:

1. PPO with a critic (InstructGPT; Ziegler et al. 2019; TRL; OpenRLHF):
       rewards = per_token_rewards(scores, kl, mask, beta)     # -beta*kl_t, + score at the end
       adv, returns = gae(rewards, values, mask, gamma, lam)
       adv = masked_whiten(adv, mask)                           # from masked.py
2. Critic-free, one advantage per sequence, K samples per prompt stored consecutively:
       seq_scores = kl_penalized_scores(scores, kl, mask, beta) # score - beta * sum_t kl_t
       adv = rloo_advantages(seq_scores, K)   or   grpo_advantages(seq_scores, K)
       adv = sequence_to_tokens(adv, mask)
   RLOO (Ahmadian et al. 2024) folds the KL penalty into the sequence reward BEFORE the
   baseline, as above. GRPO (Shao et al. 2024) instead uses the raw `scores` and adds
   beta * k3 to the loss (`ppo_losses.k3_loss_term`); do not do both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignloop.algorithms.masked import last_index, masked_sum, zero_padded


def per_token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """The per-token PPO reward: r_t = -beta * kl_t, plus the sequence score on the last token.

        r_t = -beta * kl_t + [t == last real token] * score        (InstructGPT eq. 2, TRL)

    Args:
        scores: `(B,)` reward-model score of each whole response (already normalised, clipped,
            with any missing-EOS penalty applied: those are the caller's choices).
        kl: `(B, T)` per-token KL estimate, usually `kl_k1(logp, ref_logp)` (detached).
        mask: `(B, T)`, 1 = real response token.
        beta: KL coefficient (e.g. `controller.value`).
    Returns:
        `(B, T)` rewards, 0 on padded positions. A row with an all-zero mask (an empty
        response) has no token to carry its score: its rewards are all 0, so it contributes
        nothing; filter such rows before PPO if they should be penalised instead.
    """
    rewards = zero_padded(-beta * kl, mask)
    last = last_index(mask)  # (B,), -1 for an empty row
    has_token = last >= 0
    bonus = torch.where(has_token, scores.to(rewards.dtype), torch.zeros_like(rewards[:, 0]))
    return rewards.scatter_add(1, last.clamp_min(0).unsqueeze(1), bonus.unsqueeze(1))


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2015, arXiv 1506.02438).

        delta_t = r_t + gamma * V_{t+1} - V_t       V after the last real token = 0 (episode ends)
        A_t     = delta_t + gamma * lam * A_{t+1}   A after the last real token = 0
        R_t     = A_t + V_t                         the value target (returns)

    computed with one reverse loop over T, vectorised over B. "t+1" means the next REAL token
    of the same row: padded positions are skipped (they neither discount nor carry reward or
    value), so right padding, left padding and holes in the mask all give the textbook result
    on the real tokens. Defaults gamma 1, lam 0.95 as in TRL (OpenRLHF and verl use lam 1).

    Args:
        rewards: `(B, T)`, e.g. from `per_token_rewards`.
        values: `(B, T)` critic values V(s_t) at each response position (detached).
        mask: `(B, T)`, 1 = real response token.
    Returns:
        `(advantages, returns)`, both `(B, T)`, 0 on padded positions, no gradient.
    """
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    rewards, values = rewards.detach().to(dtype), values.detach().to(dtype)
    real = mask.bool()
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    next_adv = torch.zeros_like(values[:, 0])    # (B,)
    advantages = torch.zeros_like(values)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        m = real[:, t]
        advantages[:, t] = torch.where(m, adv_t, torch.zeros_like(adv_t))
        next_adv = torch.where(m, adv_t, next_adv)
        next_value = torch.where(m, values[:, t], next_value)
    returns = zero_padded(advantages + values, mask)
    return advantages, returns


def _groups(scores: Tensor, group_size: int) -> Tensor:
    """`(B,)` -> `(B // K, K)`: K consecutive samples of one prompt per row."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (B,), got shape {tuple(scores.shape)}")
    if group_size < 2 or scores.shape[0] % group_size != 0:
        raise ValueError(
            f"group_size must be >= 2 and divide the batch: B={scores.shape[0]}, K={group_size}"
        )
    return scores.view(-1, group_size)


def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """REINFORCE Leave-One-Out advantages (Ahmadian et al. 2024, arXiv 2402.14740, eq. 3).

        A_i = r_i - 1/(K-1) * sum_{j != i} r_j          over the K samples of the same prompt
            = K/(K-1) * (r_i - mean_j r_j)

    Args:
        scores: `(B,)` sequence rewards, the K samples of each prompt stored consecutively
            (rows 0..K-1 are prompt 0, K..2K-1 prompt 1, ...). Fold the KL penalty in first
            (`kl_penalized_scores`), as RLOO does.
        group_size: K >= 2, dividing B.
    Returns:
        `(B,)` advantages; they sum to 0 within each group.
    """
    g = _groups(scores, group_size)  # (B/K, K)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - baseline).reshape(-1)


def grpo_advantages(scores: Tensor, group_size: int, eps: float = 1e-6, scale: bool = True) -> Tensor:
    """Group-relative advantages of GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, 4.1.2).

        A_i = (r_i - mean_j r_j) / (std_j r_j + eps)    over the K samples of the same prompt

    std is the unbiased (K-1) sample standard deviation, as in TRL's GRPOTrainer. With
    `scale=False` only the mean is subtracted (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783,
    which argues the std division biases toward easy/hard prompts). A group whose K scores
    are all equal gets advantage 0 everywhere.

    Args:
        scores: `(B,)` sequence rewards, K consecutive samples per prompt.
        group_size: K >= 2, dividing B.
    Returns:
        `(B,)` advantages.
    """
    g = _groups(scores, group_size)
    centered = g - g.mean(dim=1, keepdim=True)
    if scale:
        centered = centered / (g.std(dim=1, keepdim=True) + eps)
    return centered.reshape(-1)


def kl_penalized_scores(scores: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Sequence reward with the KL penalty folded in: score - beta * sum_t kl_t. `(B,)`.

    Args:
        scores: `(B,)` reward-model scores.
        kl: `(B, T)` per-token KL estimate (e.g. k1), detached.
        mask: `(B, T)`, 1 = real response token; padded kl entries are ignored.
    This is the sum over t of `per_token_rewards(...)`, the return with gamma = 1.
    """
    return scores - beta * masked_sum(kl, mask, dim=1)


def sequence_to_tokens(seq_values: Tensor, mask: Tensor) -> Tensor:
    """Broadcast one value per sequence onto its response tokens: `(B,)` -> `(B, T)`, 0 on padding.

    Used to turn RLOO / GRPO sequence advantages into the token advantages `policy_loss` takes.
    """
    return zero_padded(seq_values.unsqueeze(1).expand(mask.shape), mask)
