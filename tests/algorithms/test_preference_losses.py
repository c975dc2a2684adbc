"""DPO family and KTO losses against values worked out by hand, and the vectorised K-way loss
against a plain loop over pairs."""

import math
import random

import pytest
import torch

from alignloop.algorithms.preference_losses import (
    cdpo_loss,
    hinge_loss,
    ipo_loss,
    kto_losses,
    kto_reference_point,
    logratio_difference,
    pair_losses,
    ranking_preference_loss,
    robust_loss,
    sigmoid_loss,
    soft_pair_loss,
)
from alignloop.algorithms.reward_losses import build_pair_batch, ranking_pairs, tie_pairs

pytestmark = pytest.mark.numerics

L1 = math.log(1 + math.exp(-1))  # -log s(1) = 0.31326
L2 = math.log(1 + math.exp(-2))  # -log s(2) = 0.12693
LM1 = 1 + L1  # -log s(-1) = 1.31326  (log s(x) - log s(-x) = x)


def close(t, x, tol=1e-6):
    return math.isclose(float(t), x, rel_tol=tol, abs_tol=tol)


def t(*x):
    return torch.tensor(x, dtype=torch.float64)


def test_a_pair():
    # chosen: -1 under the policy, -2 under the reference (log-ratio +1); rejected: -3 vs -2 (-1)
    h = logratio_difference(t(-1.0), t(-3.0), t(-2.0), t(-2.0))
    assert close(h, 2.0)
    assert close(sigmoid_loss(h, beta=0.5), L1)  # margin beta * h = 1: -log s(1)


def test_a_soft_label():
    h = t(2.0)  # margin 1 at beta 0.5
    # -[0.8 log s(1) + 0.2 log s(-1)] = 0.8 x 0.31326 + 0.2 x 1.31326 = L1 + 0.2
    assert close(soft_pair_loss(h, 0.8, 0.5), L1 + 0.2)
    assert close(pair_losses(h, t(0.8), 0.5, "sigmoid"), L1 + 0.2)
    # a tie (p = 1/2) is minimal at h = 0: log 2
    assert close(soft_pair_loss(t(0.0), 0.5, 0.5), math.log(2))


def test_soft_label_one_is_hard_dpo():
    h = torch.linspace(-5, 5, 21, dtype=torch.float64)
    assert torch.allclose(soft_pair_loss(h, 1.0, 0.1), sigmoid_loss(h, 0.1))
    assert torch.allclose(pair_losses(h, torch.ones_like(h), 0.1, "sigmoid"), -torch.nn.functional.logsigmoid(0.1 * h))


def test_label_noise_special_cases():
    h = t(2.0)  # margin 1 at beta 0.5
    # cDPO, eps 0.1: 0.9 (-log s(1)) + 0.1 (-log s(-1)) = L1 + 0.1: the soft label 0.9
    assert close(cdpo_loss(h, 1.0, 0.5, 0.1), L1 + 0.1)
    assert close(cdpo_loss(h, 1.0, 0.5, 0.1), soft_pair_loss(h, 0.9, 0.5))
    # robust, eps 0.1: (0.9 L1 - 0.1 (L1 + 1)) / 0.8 = L1 - 0.125
    assert close(robust_loss(h, 1.0, 0.5, 0.1), L1 - 0.125)
    # unbiased: over labels flipped with probability eps, its expectation is the clean loss
    hs = torch.linspace(-3, 3, 13, dtype=torch.float64)
    expected = 0.9 * robust_loss(hs, 1.0, 0.5, 0.1) + 0.1 * robust_loss(-hs, 1.0, 0.5, 0.1)
    assert torch.allclose(expected, sigmoid_loss(hs, 0.5))
    assert torch.allclose(cdpo_loss(hs, 1.0, 0.5, 0.0), sigmoid_loss(hs, 0.5))
    with pytest.raises(ValueError):
        robust_loss(hs, 1.0, 0.5, 0.5)


def test_ipo_and_hinge():
    # IPO, beta 0.5: target 1 / (2 x 0.5) = 1; h = 2 -> (2 - 1)^2 = 1
    assert close(ipo_loss(t(2.0), 0.5), 1.0)
    # soft p = 0.75: 0.75 (2 - 1)^2 + 0.25 (-2 - 1)^2 = 0.75 + 2.25 = 3
    assert close(pair_losses(t(2.0), t(0.75), 0.5, "ipo"), 3.0)
    # ... minimal at h = (2p - 1) / (2 beta) = 0.5
    hs = torch.linspace(-2, 2, 401, dtype=torch.float64)
    assert close(hs[pair_losses(hs, torch.full_like(hs, 0.75), 0.5, "ipo").argmin()], 0.5, tol=1e-9)
    # hinge, beta 0.25: max(0, 1 - 0.5) = 0.5; past the margin 0
    assert close(hinge_loss(t(2.0), 0.25), 0.5) and close(hinge_loss(t(5.0), 0.25), 0.0)
    with pytest.raises(ValueError):
        pair_losses(hs, hs, 0.5, "nope")


def test_k3_ranking_with_a_tie():
    # response 1 best, 0 and 2 tied; log-ratios r = [0, 2, 1], beta 1
    r = t(0.0, 2.0, 1.0)
    skip = build_pair_batch([[[1], [0, 2]]], tie_mode="skip")
    # pairs (1, 0): h 2; (1, 2): h 1 -> (L2 + L1) / 2
    assert close(ranking_preference_loss(r, skip, beta=1.0), (L2 + L1) / 2)
    soft = build_pair_batch([[[1], [0, 2]]], tie_mode="soft")
    # plus the tied pair (0, 2) toward 1/2: h = -1 -> (LM1 + L1) / 2; mean over 3 pairs
    assert close(ranking_preference_loss(r, soft, beta=1.0), (L2 + L1 + (LM1 + L1) / 2) / 3)
    # two records, weights 2 and 1: the second a hard pair with h = 1 (L1)
    two = build_pair_batch([[[1], [0, 2]], [[0], [1]]], records_weight=[2.0, 1.0])
    r2 = t(0.0, 2.0, 1.0, 1.0, 0.0)
    assert close(ranking_preference_loss(r2, two, beta=1.0), (2 * (L2 + L1) / 2 + L1) / 3)
    assert close(ranking_preference_loss(r2, two, beta=1.0, reduction="sum"), 2 * (L2 + L1) / 2 + L1)


def naive(logratios, tiers_list, ps, weights, beta, loss, eps, tie_mode):
    total, weight_sum, offset = 0.0, 0.0, 0
    for tiers, p, w in zip(tiers_list, ps, weights):
        k = sum(len(x) for x in tiers)
        if p is not None:
            pairs = [(0, 1, p)] if p >= 0.5 else [(1, 0, 1 - p)]
        else:
            pairs = [(a, b, 1.0) for a, b in ranking_pairs(tiers)]
            if tie_mode == "soft":
                pairs += [(a, b, 0.5) for a, b in tie_pairs(tiers)]
        if pairs:
            losses = [float(pair_losses(logratios[offset + a: offset + a + 1] - logratios[offset + b: offset + b + 1],
                                        t(q), beta, loss, eps)) for a, b, q in pairs]
            total += w * sum(losses) / len(losses)
            weight_sum += w
        offset += k
    return total / weight_sum


@pytest.mark.parametrize("loss", ["sigmoid", "cdpo", "robust", "ipo", "hinge"])
@pytest.mark.parametrize("tie_mode", ["skip", "soft"])
def test_vectorised_ranking_loss_equals_a_loop_over_pairs(loss, tie_mode):
    rng = random.Random(0)
    tiers_list, ps, weights = [], [], []
    for g in range(12):
        k = rng.randint(2, 5)
        idx = list(range(k))
        rng.shuffle(idx)
        if k == 2 and g % 3 == 0:
            tiers_list.append([[0], [1]])
            ps.append(rng.choice([0.2, 0.5, 0.7, 1.0]))
        else:
            tiers, i = [], 0
            while i < k:
                n = rng.randint(1, 2)
                tiers.append(idx[i: i + n])
                i += n
            tiers_list.append(tiers)
            ps.append(None)
        weights.append(rng.choice([0.5, 1.0, 2.0]))
    m = sum(sum(len(x) for x in tiers) for tiers in tiers_list)
    r = torch.randn(m, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    pairs = build_pair_batch(tiers_list, ps, weights, tie_mode)
    got = ranking_preference_loss(r, pairs, 0.3, loss, 0.1)
    assert close(got, naive(r, tiers_list, ps, weights, 0.3, loss, 0.1, tie_mode), tol=1e-6)  # p is float32


def test_kto():
    r = t(1.0, -1.0, 0.5)
    desirable = torch.tensor([True, False, True])
    got = kto_losses(r, desirable, z0=0.5, beta=1.0, desirable_weight=1.0, undesirable_weight=2.0)
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # desirable, r - z0 = 0.5: 1 - s(0.5) = 0.37754; undesirable, z0 - r = 1.5: 2 - 2 s(1.5) = 0.36485;
    # desirable at r = z0: 1 - s(0) = 0.5
    assert torch.allclose(got, t(1 - s(0.5), 2 - 2 * s(1.5), 0.5))
    assert close(got[0], 0.377541, tol=1e-5) and close(got[1], 0.364851, tol=1e-5)
    # z0: the mean mismatched log-ratio, clamped at 0, no gradient
    x = t(-0.4, -0.8).requires_grad_(True)
    assert close(kto_reference_point(x.sum(), 2), 0.0)
    y = t(1.5, 0.5).requires_grad_(True)
    z0 = kto_reference_point(y.sum(), 2)
    assert close(z0, 1.0) and not z0.requires_grad
