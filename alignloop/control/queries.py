"""Which pairs of clips to ask about (Christiano et al. 2017, section 2.2.4).

    random        n pairs of distinct clips drawn uniformly from the pool
    disagreement  draw `candidates` x n such pairs, ask about the n with the highest variance of
                  the ensemble members' predicted preference s(R^e_a - R^e_b)
                  (`algorithms.fragment_losses.preference_variance`)
"""

from __future__ import annotations

import numpy as np
import torch

from alignloop.algorithms.fragment_losses import preference_variance


def random_pairs(pool_size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`(count, 2)` index pairs of distinct clips of a pool of `pool_size`."""
    first = rng.integers(0, pool_size, size=count)
    second = (first + rng.integers(1, pool_size, size=count)) % pool_size  # never the same clip
    return np.stack([first, second], axis=1)


def most_disagreed(member_returns: torch.Tensor, candidates: np.ndarray, count: int) -> np.ndarray:
    """The `count` candidate pairs (rows of `(C, 2)` indices) with the highest preference
    variance over the members, highest first; `member_returns` `(N, E)` per pool clip."""
    var = preference_variance(member_returns[candidates[:, 0]], member_returns[candidates[:, 1]])  # (C,)
    order = torch.argsort(var, descending=True, stable=True)[:count].numpy()
    return candidates[order]


def select_pairs(mode: str, member_returns: torch.Tensor | None, pool_size: int, count: int, candidates: int,
                 rng: np.random.Generator) -> np.ndarray:
    """`(count, 2)` pairs of pool clips to label, by `mode` (random | disagreement)."""
    if mode == "random" or member_returns is None:
        return random_pairs(pool_size, count, rng)
    return most_disagreed(member_returns, random_pairs(pool_size, count * candidates, rng), count)
