"""Bradley-Terry on summed fragment rewards (Christiano et al. 2017, eq. 1), values worked out by hand."""

import math

import pytest
import torch

from alignloop.algorithms.fragment_losses import (fragment_preference_loss, fragment_returns, pearson,
                                                  preference_variance)
from alignloop.algorithms.reward_losses import pair_losses


def test_bradley_terry_on_fragment_sums_by_hand():
    # fragment a: rewards 0.5, 0.25, 0.25 -> R_a = 1.0; fragment b: 0, 0, 0 -> R_b = 0; d = 1
    steps = torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.0, 0.0]])
    r = fragment_returns(steps)
    assert r.tolist() == [1.0, 0.0]
    a, b = r[:1], r[1:]
    # a preferred: -log s(1) = log(1 + e^-1) = 0.313262
    assert fragment_preference_loss(a, b, torch.tensor([1.0])).item() == pytest.approx(math.log1p(math.exp(-1)), abs=1e-6)
    assert fragment_preference_loss(a, b, torch.tensor([1.0])).item() == pytest.approx(0.313262, abs=1e-6)
    # b preferred: -log s(-1) = 1 + log(1 + e^-1) = 1.313262
    assert fragment_preference_loss(a, b, torch.tensor([0.0])).item() == pytest.approx(1.313262, abs=1e-6)
    # "equal": (0.313262 + 1.313262) / 2 = 0.813262
    assert fragment_preference_loss(a, b, torch.tensor([0.5])).item() == pytest.approx(0.813262, abs=1e-6)
    # 10% random answers: q = 0.9 s(1) + 0.05 = 0.9 x 0.731059 + 0.05 = 0.707953, loss -log q = 0.345378
    assert fragment_preference_loss(a, b, torch.tensor([1.0]), 0.1).item() == pytest.approx(0.345378, abs=1e-5)
    # 1 - q = 0.292047 -> -log = 1.230840
    assert fragment_preference_loss(a, b, torch.tensor([0.0]), 0.1).item() == pytest.approx(1.230840, abs=1e-5)


def test_it_is_the_language_sides_pair_loss_and_broadcasts_over_members():
    ra, rb = torch.randn(5, 3), torch.randn(5, 3)  # 5 pairs, 3 ensemble members
    p = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0])
    loss = fragment_preference_loss(ra, rb, p)
    assert loss.shape == (5, 3)
    torch.testing.assert_close(loss, pair_losses(ra - rb, p[:, None].expand(5, 3)))
    steps = torch.randn(4, 7, 3)  # (N, T, E)
    torch.testing.assert_close(fragment_returns(steps), steps.sum(dim=1))


def test_preference_variance_by_hand():
    # pair 0: members agree (R_a - R_b = 0 for all): p = 0.5, 0.5 -> variance 0
    # pair 1: d = +2, -2 under two members: p = s(2) = 0.880797, s(-2) = 0.119203; mean 0.5,
    #         variance ((0.380797)^2 + (0.380797)^2) / 2 = 0.145006
    ra = torch.tensor([[1.0, 1.0], [2.0, -2.0]])
    rb = torch.zeros(2, 2)
    v = preference_variance(ra, rb)
    assert v[0].item() == pytest.approx(0.0, abs=1e-7)
    assert v[1].item() == pytest.approx(0.145006, abs=1e-5)


def test_pearson():
    x = torch.tensor([1.0, 2.0, 3.0])
    assert pearson(x, 2 * x + 1).item() == pytest.approx(1.0)
    assert pearson(x, -x).item() == pytest.approx(-1.0)
    assert pearson(x, torch.ones(3)).item() == 0.0
