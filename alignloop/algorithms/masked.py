"""Reductions over the real tokens of a padded batch.

Every function takes `x` and a `mask` of the same shape, usually `(B, T)`: 1 (or True) marks a
real response token, 0 a padded one. Padded entries of `x` are never read, so they may hold
anything (garbage log-probs, even inf or nan): they are selected away with `torch.where`, not
multiplied by 0.

Conventions for degenerate masks (documented once here, relied on by the PPO code):
- an all-zero mask gives a sum of 0 and a mean of 0 (not nan);
- a variance over fewer than 2 entries is 0 when `unbiased=True` (no Bessel correction
  possible), and over 0 entries is 0 either way.

The helpers follow TRL's `masked_mean / masked_var / masked_whiten` (trl/core.py) in meaning;
they are written here from the equations.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def zero_padded(x: Tensor, mask: Tensor) -> Tensor:
    """x on real entries, exactly 0 on padded ones (safe even where padded x is inf / nan). Same shape."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum_i mask_i * x_i.

    Args:
        x: any shape, e.g. `(B, T)`.
        mask: same shape as `x`; 1 = real entry.
        dim: reduce over this dimension only (e.g. `dim=1` gives a per-sequence `(B,)` sum);
            `None` reduces everything to a scalar.
    """
    if dim is None:
        return zero_padded(x, mask).sum()
    return zero_padded(x, mask).sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum_i m_i x_i / sum_i m_i: the mean over real entries only.

    Args:
        x: any shape, e.g. `(B, T)`.
        mask: same shape as `x`; 1 = real entry.
        dim: `None` -> scalar mean over all real tokens of the batch (a "token mean");
            `dim=1` on `(B, T)` -> `(B,)` per-sequence means.
    Returns:
        The mean; where a slice has no real entry the result is 0, not nan.
    """
    count = masked_sum(torch.ones_like(x), mask, dim)
    return masked_sum(x, mask, dim) / count.clamp_min(1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the real entries of `x` (all of them together), a scalar.

    var = sum_i m_i (x_i - mu)^2 / n, times n / (n - 1) when `unbiased` (Bessel's correction),
    with mu = masked_mean(x, mask) and n = sum_i m_i. With `unbiased` and n < 2 the result
    is 0 (there is no spread to measure), not nan.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.bool().sum()
        var = torch.where(n > 1, var * n / (n - 1).clamp_min(1), torch.zeros_like(var))
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  all_reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Normalise the real entries of `x` to mean 0 and variance 1 (over the whole batch).

    whiten(x) = (x - mu) / sqrt(var + eps),  mu and var as in `masked_mean` / `masked_var`
    (unbiased) over the real entries. With `shift_mean=False` the mean is added back,
    (x - mu) / sqrt(var + eps) + mu: only the scale changes. PPO uses `shift_mean=True` for
    advantages and `shift_mean=False` for whitening rewards, as TRL does (shifting rewards would
    change which responses are rewarded overall).

    Args:
        x: `(B, T)` (any shape works).
        mask: same shape; 1 = real entry.
        all_reduce: with several processes, a function that sums a tensor over all of them
            (e.g. `lambda t: accelerator.reduce(t, "sum")`): mu and var are then those of every
            process's real entries together, so each process whitens its share exactly as one
            process would whiten the whole batch. Two sums: (count, sum x), then
            sum (x - mu)^2. None: this batch alone.
    Returns:
        Same shape as `x`; padded entries are 0.
    """
    total = all_reduce or (lambda t: t)
    n = total(masked_sum(torch.ones_like(x), mask))  # the real entries of all processes
    mean = total(masked_sum(x, mask)) / n.clamp_min(1)
    var = total(masked_sum((x - mean) ** 2, mask)) / n.clamp_min(1)
    var = torch.where(n > 1, var * n / (n - 1).clamp_min(1), torch.zeros_like(var))  # Bessel, as masked_var
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return zero_padded(out, mask)


def last_index(mask: Tensor) -> Tensor:
    """Index of the last real entry in each row of a `(B, T)` mask, shape `(B,)` (long).

    A row with no real entry gets -1. Used to put the reward-model score on the last response
    token and to read a scalar head at the last non-padding token. Works for any mask, not only
    right-padded ones (it is the largest t with mask[b, t] = 1).
    """
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=-1).values
