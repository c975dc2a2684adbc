"""Reward-model metrics: accuracy, calibration, normalisation, ensemble statistics.

Notation as in `reward_losses`: d = r_w - r_l for a (winner, loser) pair, s = sigmoid.

Accuracy, one definition for training and held-out metrics (`pairwise_accuracy`): over the
DECIDED pairs, those whose label favours one side (`PairBatch.is_decided`, p > 0.5: hard wins
and soft labels; ties and p = 0.5 are left out), the share the reward model orders like the
label, an exact reward tie counting 1/2. A soft label counts by its side of 0.5 (agreement
with the label's majority, as a hard label would); how well the model's probabilities match p
is calibration (`expected_calibration_error`, `soft_label_agreement`), not accuracy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from alignloop.algorithms.reward_losses import pair_losses


def pairwise_accuracy(r_w: Tensor, r_l: Tensor, reduction: str = "mean") -> Tensor:
    """Share of pairs ranked correctly: mean_i [r_w_i > r_l_i], an exact tie counting 1/2. `(N,)` -> scalar.

    Pass the decided pairs (`PairBatch.is_decided`): that is alignloop's reward accuracy (module
    docstring). reduction "sum": the number correct (ties 1/2), to add over micro-batches and
    processes and divide by their total count; "mean" of no pair is nan.
    """
    correct = (r_w > r_l).float() + 0.5 * (r_w == r_l).float()
    return correct.sum() if reduction == "sum" else correct.mean()


def expected_calibration_error(prob: Tensor, label: Tensor, n_bins: int = 10) -> Tensor:
    """Expected calibration error of predicted pair probabilities (Guo et al. 2017, eq. 3).

        ECE = sum_b (n_b / N) * | mean_{i in b} prob_i - mean_{i in b} label_i |

    over `n_bins` equal-width bins of [0, 1] (bin b holds b/n <= prob < (b+1)/n; prob = 1 goes
    to the last bin; empty bins are skipped).

    Args:
        prob: `(N,)` predicted P(first beats second) = s(r_1 - r_2).
        label: `(N,)` observed outcome, 1/0 (hard) or a soft label in [0, 1].
    The orientation of a pair is arbitrary; to make the ECE independent of it, pass each pair
    both ways (prob and 1 - prob with label and 1 - label).
    """
    prob, label = prob.detach().float().flatten(), label.detach().float().flatten()
    bins = (prob * n_bins).long().clamp(0, n_bins - 1)
    count = torch.bincount(bins, minlength=n_bins).float()
    zeros = torch.zeros(n_bins, device=prob.device)
    gap = zeros.index_add(0, bins, prob) - zeros.index_add(0, bins, label)  # n_b * (mean prob - mean label)
    return gap.abs().sum() / count.sum().clamp_min(1)


def soft_label_agreement(r_1: Tensor, r_2: Tensor, p: Tensor) -> dict[str, Tensor]:
    """How well the reward model's pair probabilities match soft labels p = P(1 beats 2). `(N,)` each.

    Returns (scalars):
        `mae`: mean |s(r_1 - r_2) - p|;
        `side_agreement`: among pairs with p != 0.5, the share where s(r_1 - r_2) is on the
            same side of 0.5 as p (`pairwise_accuracy` toward the label's side: equal rewards
            count 1/2); nan if none;
        `cross_entropy`: mean -[p log s(d) + (1 - p) log s(-d)] (its minimum is the entropy
            of the labels, not 0).
    """
    d = (r_1 - r_2).detach().float()
    p = p.detach().float()
    q = torch.sigmoid(d)
    decided = p != 0.5
    toward_label = torch.where(p > 0.5, d, -d)[decided]  # > 0: the model sides with the label
    side = pairwise_accuracy(toward_label, torch.zeros_like(toward_label)) if decided.any() else torch.tensor(math.nan)
    return {"mae": (q - p).abs().mean(), "side_agreement": side, "cross_entropy": pair_losses(d, p).mean()}


def normalize_stats(rewards: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (population) std of rewards on a reference set, to be stored with the model.

    `(N,)` -> two scalars, or `(N, E)` (E ensemble heads) -> `(E,)`, `(E,)`: one normalisation
    per head. InstructGPT normalises the reward model so that the demonstrations score mean 0;
    alignloop also scales to std 1 so that beta and the score clip mean the same for every
    reward model. Scoring computes (r - mean) / std.
    """
    rewards = rewards.detach()
    return rewards.mean(dim=0), rewards.std(dim=0, correction=0)


def normalization_standard_errors(rewards: Tensor, population: int | None = None) -> tuple[Tensor, Tensor]:
    """Standard errors of `normalize_stats`' mean and std when `rewards` (N,) or (N, E) are a
    simple random sample (without replacement) of `population` responses (None: infinitely many):

        se(mean) = s / sqrt(N) x f          se(std) = sqrt((m4 - s^4) / (4 s^2 N)) x f
        f = sqrt((population - N) / (population - 1))   (finite-population correction; 0 when all were scored)

    s^2 and m4 are the sample's second and fourth central moments (population form); se(std) is
    the delta method (no normality assumed). Shapes: scalars, or (E,) per head.
    """
    rewards = rewards.detach().double()
    n = rewards.shape[0]
    centred = rewards - rewards.mean(dim=0)
    var = centred.pow(2).mean(dim=0)
    m4 = centred.pow(4).mean(dim=0)
    f = 1.0 if population is None else math.sqrt(max(population - n, 0) / max(population - 1, 1))
    se_mean = var.sqrt() / math.sqrt(n) * f
    se_std = ((m4 - var.pow(2)).clamp_min(0) / (4 * var.clamp_min(1e-24) * n)).sqrt() * f
    return se_mean.float(), se_std.float()


def ensemble_stats(member_rewards: Tensor, dim: int = 0) -> tuple[Tensor, Tensor]:
    """Mean and spread over an ensemble of reward models: `(E, B)` -> `(B,)`, `(B,)` (members
    along `dim`: `dim=1` for `(B, E)`).

    The spread is the sample std over the E members (E - 1 in the denominator); 0 for E = 1.
    """
    mean = member_rewards.mean(dim=dim)
    if member_rewards.shape[dim] < 2:
        return mean, torch.zeros_like(mean)
    return mean, member_rewards.std(dim=dim)


def conservative_score(mean: Tensor, std: Tensor, k: float) -> Tensor:
    """mean - k * std: a lower confidence bound on the reward, to make reward hacking where the
    ensemble disagrees less attractive (Coste et al. 2023, "Reward Model Ensembles Help Mitigate
    Overoptimization", their uncertainty-weighted optimisation). Shapes `(B,)`."""
    return mean - k * std
