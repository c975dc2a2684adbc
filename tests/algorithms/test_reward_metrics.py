import math

import pytest
import torch

from alignloop.algorithms.reward_losses import build_pair_batch
from alignloop.algorithms.reward_metrics import (
    conservative_score,
    ensemble_stats,
    expected_calibration_error,
    normalize_stats,
    pairwise_accuracy,
    soft_label_agreement,
)

from tests.algorithms.test_reward_losses import L1, LN2, close  # -log s(1), log 2, a float comparison

pytestmark = pytest.mark.numerics  # float results against hand values and naive loops


def test_pairwise_accuracy():
    # 1 > 0 right, 2 == 2 half, 3 < 4 wrong -> 1.5 / 3
    assert close(pairwise_accuracy(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 4.0])), 0.5)
    assert close(pairwise_accuracy(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 4.0]), "sum"), 1.5)


def test_accuracy_counts_decided_pairs_by_their_side():
    # record 0: hard (0 beats 1); record 1: soft p = 0.6 for response 0; record 2: soft p = 0.2
    # (response 1 favoured, p 0.8); record 3: p = 0.5 (not decided). Rewards: record 0 right,
    # record 1 tied (1/2), record 2 wrong (r_1 < r_0), record 3 whatever -> (1 + 0.5 + 0) / 3
    pb = build_pair_batch([[[0], [1]]] * 4, [None, 0.6, 0.2, 0.5])
    r = torch.tensor([1.0, 0.0, 3.0, 3.0, 2.0, 1.0, 5.0, 0.0])
    keep = pb.is_decided
    assert keep.tolist() == [True, True, True, False]
    assert close(pairwise_accuracy(r[pb.winner][keep], r[pb.loser][keep]), 0.5)


def test_expected_calibration_error_hand_value():
    # bin [0.9, 1.0): four pairs, mean prob 0.9, mean label 3/4 -> gap 0.15, weight 4/5
    # bin [0.2, 0.3): one pair, prob 0.2, label 0 -> gap 0.2, weight 1/5
    # ECE = 0.8 * 0.15 + 0.2 * 0.2 = 0.12 + 0.04 = 0.16
    prob = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.2])
    label = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])
    assert close(expected_calibration_error(prob, label), 0.16)
    # perfectly calibrated: prob 0.5, half the labels 1; soft labels equal to prob; prob = 1 in the last bin
    assert close(expected_calibration_error(torch.full((4,), 0.5), torch.tensor([1.0, 0.0, 1.0, 0.0])), 0.0)
    assert close(expected_calibration_error(torch.tensor([0.7, 0.3]), torch.tensor([0.7, 0.3])), 0.0)
    assert close(expected_calibration_error(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])), 0.0)
    # 2 bins: prob 0.6 and 0.8 share bin [0.5, 1]: mean 0.7 vs label mean 1 -> 0.3
    assert close(expected_calibration_error(torch.tensor([0.6, 0.8]), torch.tensor([1.0, 1.0]), n_bins=2), 0.3)


def test_soft_label_agreement_hand_values():
    # d = (1, -1, 0): q = s(d) = (0.7311, 0.2689, 0.5); p = (0.7, 0.6, 0.5)
    # mae = (0.0311 + 0.3311 + 0) / 3 = 0.1207
    # side: pair 0 agrees (both > 0.5), pair 1 disagrees, pair 2 (p = 0.5) left out -> 0.5
    q = torch.sigmoid(torch.tensor([1.0, -1.0]))
    out = soft_label_agreement(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.7, 0.6, 0.5]))
    assert close(out["mae"], ((q[0] - 0.7).abs() + (q[1] - 0.6).abs()).item() / 3)
    assert close(out["mae"], 0.1207, 1e-3)
    assert close(out["side_agreement"], 0.5)
    # cross-entropy of pair 0: L1 + 0.3 (see test_soft_label_hand_values); pair 1: -[0.6 log s(-1) + 0.4 log s(1)]
    # = 0.6 (1 + L1) + 0.4 L1 = L1 + 0.6; pair 2: log 2
    assert close(out["cross_entropy"], (L1 + 0.3 + L1 + 0.6 + LN2) / 3)
    assert math.isnan(soft_label_agreement(torch.zeros(1), torch.zeros(1), torch.tensor([0.5]))["side_agreement"].item())


def test_normalize():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, std = normalize_stats(r)
    # mean 2.5; population std sqrt((2.25 + 0.25 + 0.25 + 2.25) / 4) = sqrt(1.25)
    assert close(mean, 2.5) and close(std, math.sqrt(1.25))
    z = (r - mean) / std
    assert close(z.mean(), 0.0) and close(z.std(correction=0), 1.0)
    # two heads (N, E): one normalisation per column; column 1 = 2 x column 0 + 1
    means, stds = normalize_stats(torch.stack([r, 2 * r + 1], dim=1))
    assert torch.allclose(means, torch.tensor([2.5, 6.0])) and torch.allclose(stds, torch.tensor([1.0, 2.0]) * math.sqrt(1.25))


def test_ensemble_and_conservative_score():
    # members x batch: column 0 = (1, 3, 5) -> mean 3, sample std 2; column 1 = (2, 2, 2) -> mean 2, std 0
    mean, std = ensemble_stats(torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]]))
    assert torch.allclose(mean, torch.tensor([3.0, 2.0])) and torch.allclose(std, torch.tensor([2.0, 0.0]))
    # mean - 1 * std = (1, 2): the disputed response drops below the agreed one
    assert torch.allclose(conservative_score(mean, std, 1.0), torch.tensor([1.0, 2.0]))
    # members along dim 1, (B, E): the same
    mean_t, std_t = ensemble_stats(torch.tensor([[1.0, 3.0, 5.0], [2.0, 2.0, 2.0]]), dim=1)
    assert torch.equal(mean_t, mean) and torch.equal(std_t, std)
    mean1, std1 = ensemble_stats(torch.tensor([[4.0, 5.0]]))
    assert torch.equal(std1, torch.zeros(2)) and torch.equal(mean1, torch.tensor([4.0, 5.0]))
