"""Preferences between trajectory fragments (Christiano et al. 2017, section 2.2.3).

A fragment (clip) is T consecutive steps (o_t, a_t) of one episode; a reward model r gives each
step a reward, and the fragment's predicted return is their sum. The probability that a person
prefers fragment a to fragment b is Bradley-Terry on those sums (the paper's eq. 1):

    P(a > b) = exp(sum_t r(o^a_t, a^a_t)) / (exp(sum_t r(o^a_t, a^a_t)) + exp(sum_t r(o^b_t, a^b_t)))
             = s(R_a - R_b),    R = sum_t r_t,  s = sigmoid

so the loss for a label p = P(a > b) (1: a better, 0: b better, 0.5: "equal") is the same
cross-entropy as the language side's pairs (`reward_losses.pair_losses`, with d = R_a - R_b).
The paper also assumes a share eps of answers is uniformly random, which makes the modelled
probability (1 - eps) s(d) + eps / 2 (`random_share`). Ensembles: E members give `(P, E)`
sums; their spread of predicted preferences picks which pairs to ask about (`preference_variance`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alignloop.algorithms.reward_losses import pair_losses


def fragment_returns(step_rewards: Tensor) -> Tensor:
    """Sum of per-step rewards over each fragment: `(N, T)` -> `(N,)`, or `(N, T, E)` -> `(N, E)`."""
    return step_rewards.sum(dim=1)


def fragment_preference_loss(returns_a: Tensor, returns_b: Tensor, p: Tensor, random_share: float = 0.0) -> Tensor:
    """Per-pair loss of labels p = P(a > b) given predicted fragment returns, `(P,)` (or `(P, E)`).

        d = R_a - R_b
        random_share 0:  l = -[p log s(d) + (1 - p) log s(-d)]            (reward_losses.pair_losses)
        random_share e:  l = -[p log q + (1 - p) log (1 - q)],  q = (1 - e) s(d) + e / 2

    p may be any value in [0, 1] (1 a better, 0 b better, 0.5 "equal"); `p` `(P,)` broadcasts
    over the E members of `(P, E)` returns.
    """
    d = returns_a - returns_b
    p = p.to(d.dtype).view(-1, *([1] * (d.dim() - 1)))
    if random_share == 0.0:
        return pair_losses(d, p.expand_as(d))
    e = float(random_share)
    # log q and log(1 - q) from log-sigmoids: q = (1 - e) s(d) + e/2, 1 - q = (1 - e) s(-d) + e/2
    log_q = torch.logaddexp(F.logsigmoid(d) + torch.log1p(torch.tensor(-e, dtype=d.dtype)),
                            torch.log(torch.tensor(e / 2, dtype=d.dtype)))
    log_not_q = torch.logaddexp(F.logsigmoid(-d) + torch.log1p(torch.tensor(-e, dtype=d.dtype)),
                                torch.log(torch.tensor(e / 2, dtype=d.dtype)))
    return -(p * log_q + (1.0 - p) * log_not_q)


def preference_probabilities(returns_a: Tensor, returns_b: Tensor) -> Tensor:
    """P(a > b) = s(R_a - R_b) under each member: `(P, E)` sums -> `(P, E)` probabilities."""
    return torch.sigmoid(returns_a - returns_b)


def preference_variance(returns_a: Tensor, returns_b: Tensor) -> Tensor:
    """Disagreement of an ensemble about each pair: the variance over the E members of their
    predicted preference s(R^e_a - R^e_b), `(P, E)` -> `(P,)` (population variance, 1/E)."""
    return preference_probabilities(returns_a, returns_b).var(dim=1, unbiased=False)


def pearson(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation of two `(N,)` tensors (0 when either is constant)."""
    x, y = x - x.mean(), y - y.mean()
    denom = (x.square().sum() * y.square().sum()).sqrt()
    return torch.where(denom > 0, (x * y).sum() / denom.clamp_min(1e-30), torch.zeros_like(denom))
