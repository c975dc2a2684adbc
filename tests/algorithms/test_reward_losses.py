import math
import random

import pytest
import torch
import torch.nn.functional as F

from alignloop.algorithms.reward_losses import (
    PairBatch,
    build_pair_batch,
    ensemble_ranking_loss,
    ranking_loss,
    ranking_pairs,
    record_losses,
    tie_pairs,
)
from alignloop.algorithms.reward_metrics import pairwise_accuracy

pytestmark = pytest.mark.numerics  # float results against hand values and naive loops

L1 = math.log(1 + math.exp(-1))  # -log s(1) = 0.31326
L2 = math.log(1 + math.exp(-2))  # -log s(2) = 0.12693
LN2 = math.log(2)


def close(t, x, tol=1e-6):
    return math.isclose(float(t), x, rel_tol=tol, abs_tol=tol)


# ---- pairs -------------------------------------------------------------------------------------


def test_ranking_pairs_and_tie_pairs():
    tiers = [[2], [0, 3], [1]]
    assert ranking_pairs(tiers) == [(2, 0), (2, 3), (2, 1), (0, 1), (3, 1)]
    assert tie_pairs(tiers) == [(0, 3)]
    assert len(ranking_pairs([[i] for i in range(6)])) == 15  # C(6, 2)
    assert ranking_pairs([[0, 1, 2]]) == [] and tie_pairs([[0, 1, 2]]) == [(0, 1), (0, 2), (1, 2)]


def test_build_pair_batch_layout():
    # record 0: K=4 ranking [2, [0, 3], 1]   -> responses 0..3 of the batch
    # record 1: K=2 soft label p = 0.3        -> responses 4, 5; response 1 favoured: pair (5, 4), p 0.7
    # record 2: K=2 full tie                  -> responses 6, 7
    pb = build_pair_batch([[[2], [0, 3], [1]], [[1], [0]], [[0, 1]]], [None, 0.3, None], [1.0, 2.0, 0.5], tie_mode="soft")
    assert pb.winner.tolist() == [2, 2, 2, 0, 3, 0, 5, 6]
    assert pb.loser.tolist() == [0, 3, 1, 1, 1, 3, 4, 7]
    assert torch.allclose(pb.p, torch.tensor([1, 1, 1, 1, 1, 0.5, 0.7, 0.5]))
    assert pb.group.tolist() == [0, 0, 0, 0, 0, 0, 1, 2]
    assert pb.num_responses.tolist() == [4, 2, 2] and pb.num_groups == 3
    assert pb.record_weight.tolist() == [1.0, 2.0, 0.5]
    assert pb.is_hard.tolist() == [True] * 5 + [False] * 3
    assert pb.is_decided.tolist() == [True] * 5 + [False, True, False]  # the tie pairs are not
    skip = build_pair_batch([[[2], [0, 3], [1]], [[0, 1]]])
    assert skip.winner.tolist() == [2, 2, 2, 0, 3] and skip.num_groups == 2
    assert isinstance(skip.to("cpu"), PairBatch)


def test_records_of_a_batch_equal_a_batch_of_those_records():
    rng = random.Random(3)
    tiers_list, ps, weights = random_records(rng, 12)
    whole = build_pair_batch(tiers_list, ps, weights, tie_mode="soft")
    for start, stop in ((0, 5), (5, 6), (6, 12), (3, 3)):
        part, alone = whole.records(start, stop), build_pair_batch(tiers_list[start:stop], ps[start:stop],
                                                                   weights[start:stop], tie_mode="soft")
        assert all(torch.equal(getattr(part, k), getattr(alone, k)) for k in vars(alone)), (start, stop)


def test_build_pair_batch_errors():
    with pytest.raises(ValueError, match="tie_mode"):
        build_pair_batch([[[0], [1]]], tie_mode="half")
    with pytest.raises(ValueError, match="K = 2"):
        build_pair_batch([[[0], [1], [2]]], [0.6])
    with pytest.raises(ValueError, match="not in"):
        build_pair_batch([[[0], [1]]], [1.5])
    with pytest.raises(ValueError, match="records"):
        build_pair_batch([[[0], [1]]], [None, None])


# ---- K-way ranking loss: hand values -----------------------------------------------------------


def test_k3_ranking_hand_value():
    # ranking [0, 1, 2], rewards (2, 1, 0): pairs (0,1) d=1, (0,2) d=2, (1,2) d=1
    # loss = (log(1+e^-1) + log(1+e^-2) + log(1+e^-1)) / 3 = (0.3133 + 0.1269 + 0.3133) / 3 = 0.2512
    pb = build_pair_batch([[[0], [1], [2]]])
    loss = ranking_loss(torch.tensor([2.0, 1.0, 0.0]), pb)
    assert close(loss, (2 * L1 + L2) / 3)
    assert close(loss, 0.2512, 1e-3)


def test_ties_skip_and_soft():
    # tiers [[0], [1, 2]], rewards (1, 0, 0)
    rewards = torch.tensor([1.0, 0.0, 0.0])
    # skip: pairs (0,1), (0,2), each d = 1 -> L1
    assert close(ranking_loss(rewards, build_pair_batch([[[0], [1, 2]]], tie_mode="skip")), L1)
    # soft: + tie pair (1,2) with d = 0 -> -[0.5 log s(0) + 0.5 log s(0)] = log 2; 3 pairs in the count
    assert close(ranking_loss(rewards, build_pair_batch([[[0], [1, 2]]], tie_mode="soft")), (2 * L1 + LN2) / 3)
    # a lone tie: soft -> log 2 at d = 0; skip -> no pair at all -> 0
    assert close(ranking_loss(torch.zeros(2), build_pair_batch([[[0, 1]]], tie_mode="soft")), LN2)
    assert ranking_loss(torch.zeros(2), build_pair_batch([[[0, 1]]], tie_mode="skip")).item() == 0.0


def test_soft_label_hand_values():
    # p = 0.7 that response 0 wins, d = r0 - r1 = 1:
    # -[0.7 log s(1) + 0.3 log s(-1)] = 0.7 L1 + 0.3 (1 + L1) = L1 + 0.3 = 0.6133
    pb = build_pair_batch([[[0], [1]]], [0.7])
    assert close(ranking_loss(torch.tensor([1.0, 0.0]), pb), L1 + 0.3)
    # p = 0.3 (response 1 favoured, stored as (1, 0) with 0.7), same rewards: d = -1
    # -[0.7 log s(-1) + 0.3 log s(1)] = 0.7 (1 + L1) + 0.3 L1 = L1 + 0.7
    assert close(ranking_loss(torch.tensor([1.0, 0.0]), build_pair_batch([[[1], [0]]], [0.3])), L1 + 0.7)
    # p = 1 is a hard win: -log s(1) = L1; p = 0.5 is trained toward equality even with tie_mode "skip"
    assert close(ranking_loss(torch.tensor([1.0, 0.0]), build_pair_batch([[[0], [1]]], [1.0])), L1)
    assert close(ranking_loss(torch.tensor([0.0, 0.0]), build_pair_batch([[[0, 1]]], [0.5])), LN2)


def test_margin_applies_to_hard_pairs_only():
    # record 0 hard (0 beats 1), record 1 soft p = 0.7; all d = 1; margin 0.5
    # hard: -log s(1 - 0.5) = log(1 + e^-0.5); soft: unchanged L1 + 0.3
    pb = build_pair_batch([[[0], [1]], [[0], [1]]], [None, 0.7])
    loss = ranking_loss(torch.tensor([1.0, 0.0, 1.0, 0.0]), pb, margin=0.5)
    assert close(loss, (math.log(1 + math.exp(-0.5)) + L1 + 0.3) / 2)


def test_record_weights_and_one_example_per_record():
    # record A: K=3 full ranking, rewards (2,1,0) -> (2 L1 + L2)/3 ; record B: K=2, d = -1 -> 1 + L1
    # weights 1 and 3: (1 * A + 3 * B) / 4. Record A's 3 pairs count as ONE example, not three.
    pb = build_pair_batch([[[0], [1], [2]], [[0], [1]]], records_weight=[1.0, 3.0])
    loss = ranking_loss(torch.tensor([2.0, 1.0, 0.0, 0.0, 1.0]), pb)
    assert close(loss, ((2 * L1 + L2) / 3 + 3 * (1 + L1)) / 4)


def test_zero_total_weight_gives_attached_zero():
    rewards = torch.tensor([1.0, 0.0], requires_grad=True)
    loss = ranking_loss(rewards, build_pair_batch([[[0], [1]]], records_weight=[0.0]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(rewards.grad, torch.zeros(2))


# ---- K-way ranking loss against a naive loop ---------------------------------------------------


def random_records(rng, n):
    tiers_list, ps, weights = [], [], []
    for _ in range(n):
        k = rng.randint(2, 6)
        perm = list(range(k))
        rng.shuffle(perm)
        tiers, i = [], 0
        while i < k:  # random tier sizes: ties are common
            size = 1 if rng.random() < 0.6 else rng.randint(1, k - i)
            tiers.append(perm[i:i + size])
            i += size
        p = None
        if k == 2 and rng.random() < 0.5:
            p = rng.choice([0.0, 0.2, 0.5, 0.65, 1.0, rng.random()])
        tiers_list.append(tiers)
        ps.append(p)
        weights.append(rng.choice([0.0, 0.5, 1.0, 2.0, rng.random()]))
    return tiers_list, ps, weights


def naive_ranking_loss(rewards, tiers_list, ps, weights, tie_mode, margin):
    """One record at a time, one pair at a time, straight from the equations."""
    num, den, offset = 0.0, 0.0, 0
    for tiers, p, w in zip(tiers_list, ps, weights):
        r = rewards[offset:offset + sum(len(t) for t in tiers)]
        offset += len(r)
        terms = []
        if p is not None:
            d = r[0] - r[1]
            if p == 1.0:
                d = d - margin
            elif p == 0.0:
                d = d + margin  # response 1 is the hard winner: -log s(r1 - r0 - margin)
            terms.append(-(p * F.logsigmoid(d) + (1 - p) * F.logsigmoid(-d)))
        else:
            for i, hi in enumerate(tiers):
                for lo in tiers[i + 1:]:
                    for a in hi:
                        for b in lo:
                            terms.append(-F.logsigmoid(r[a] - r[b] - margin))
                if tie_mode == "soft":
                    for x in range(len(hi)):
                        for y in range(x + 1, len(hi)):
                            d = r[hi[x]] - r[hi[y]]
                            terms.append(-(0.5 * F.logsigmoid(d) + 0.5 * F.logsigmoid(-d)))
        if terms:
            num = num + w * sum(terms) / len(terms)
            den += w
    return num / den if den > 0 else rewards.sum() * 0


@pytest.mark.parametrize("tie_mode", ["skip", "soft"])
@pytest.mark.parametrize("margin", [0.0, 0.3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_loss_matches_naive_loop(tie_mode, margin, seed):
    rng = random.Random(seed)
    tiers_list, ps, weights = random_records(rng, 40)
    pb = build_pair_batch(tiers_list, ps, weights, tie_mode=tie_mode)
    m = int(pb.num_responses.sum())
    rewards = (torch.randn(m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2).requires_grad_(True)
    fast = ranking_loss(rewards, pb, margin=margin)
    slow = naive_ranking_loss(rewards, tiers_list, ps, weights, tie_mode, margin)
    assert torch.allclose(fast, slow)
    (g_fast,) = torch.autograd.grad(fast, rewards)
    (g_slow,) = torch.autograd.grad(slow, rewards)
    assert torch.allclose(g_fast, g_slow)


def test_ranking_loss_teaches_a_linear_reward_model():
    # True reward w.x; K-way rankings (with exact ties rounded in) from it; a linear model trained
    # with ranking_loss recovers the order of fresh pairs.
    g = torch.Generator().manual_seed(0)
    w_true = torch.randn(8, generator=g)
    x = torch.randn(60, 4, 8, generator=g)  # 60 records, K = 4
    true_r = (x @ w_true).round(decimals=1)
    tiers_list = []
    for rec in true_r:
        values = sorted(set(rec.tolist()), reverse=True)
        tiers_list.append([[i for i in range(4) if rec[i].item() == v] for v in values])
    pb = build_pair_batch(tiers_list, tie_mode="soft")
    w = torch.zeros(8, requires_grad=True)
    first = None
    for _ in range(200):  # plain gradient descent
        loss = ranking_loss(x.reshape(-1, 8) @ w, pb)
        first = loss.item() if first is None else first
        (grad,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            w -= 0.5 * grad
    assert loss.item() < 0.5 * first  # log 2 = 0.69 at w = 0
    a, b = torch.randn(500, 8, generator=g), torch.randn(500, 8, generator=g)
    better = a @ w_true > b @ w_true
    with torch.no_grad():
        r_w = torch.where(better, a @ w, b @ w)
        r_l = torch.where(better, b @ w, a @ w)
    assert pairwise_accuracy(r_w, r_l).item() > 0.95


def test_sum_reduction_gives_accumulation_invariance():
    # Splitting a batch into micro-batches: sum of "sum" losses / total effective weight == "mean" loss
    rng = random.Random(7)
    tiers_list, ps, weights = random_records(rng, 24)
    rewards = torch.randn(sum(sum(len(t) for t in tiers) for tiers in tiers_list), dtype=torch.float64)
    full = ranking_loss(rewards, build_pair_batch(tiers_list, ps, weights, tie_mode="soft"))
    num, den, offset = 0.0, 0.0, 0
    for lo, hi in [(0, 5), (5, 6), (6, 24)]:
        pb = build_pair_batch(tiers_list[lo:hi], ps[lo:hi], weights[lo:hi], tie_mode="soft")
        m = int(pb.num_responses.sum())
        num = num + ranking_loss(rewards[offset:offset + m], pb, reduction="sum")
        den += pb.effective_weight.sum().item()
        offset += m
    assert torch.allclose(full, num / den)
    with pytest.raises(ValueError, match="reduction"):
        ranking_loss(rewards, build_pair_batch(tiers_list), reduction="none")


def test_effective_weight_zero_for_records_without_pairs():
    pb = build_pair_batch([[[0], [1]], [[0, 1]], [[1], [0]]], records_weight=[2.0, 5.0, 0.5])
    assert pb.effective_weight.tolist() == [2.0, 0.0, 0.5]


# ---- ensembles ---------------------------------------------------------------------------------


def test_record_losses_hand_values_for_two_heads():
    # record 0: ranking [0, 1, 2]; record 1: soft p = 0.7; heads: rewards (2, 1, 0 | 1, 0) and all 0
    pb = build_pair_batch([[[0], [1], [2]], [[0], [1]]], [None, 0.7])
    rewards = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    per = record_losses(rewards, pb)
    assert per.shape == (2, 2)
    assert close(per[0, 0], (2 * L1 + L2) / 3) and close(per[1, 0], L1 + 0.3)  # as in the hand values above
    assert close(per[0, 1], LN2) and close(per[1, 1], LN2)  # equal rewards: log 2 whatever the label
    assert torch.allclose(record_losses(rewards[:, 0], pb), per[:, 0])


@pytest.mark.parametrize("seed", [0, 1])
def test_ensemble_loss_is_each_heads_ranking_loss_on_its_resample(seed):
    # head e = ranking_loss with record weights w x counts[e], each divided by its own denominator
    rng = random.Random(seed)
    tiers_list, ps, weights = random_records(rng, 30)
    pb = build_pair_batch(tiers_list, ps, weights, tie_mode="soft")
    g = torch.Generator().manual_seed(seed)
    m, heads = int(pb.num_responses.sum()), 3
    rewards = torch.randn(m, heads, generator=g, dtype=torch.float64, requires_grad=True)
    counts = torch.randint(0, 3, (heads, pb.num_groups), generator=g).double()
    denominators = torch.tensor([2.0, 5.0, 0.5], dtype=torch.float64)
    fast = ensemble_ranking_loss(rewards, pb, counts, denominators, margin=0.2)
    slow = 0.0
    for e in range(heads):
        resampled = PairBatch(**{**vars(pb), "record_weight": pb.record_weight.double() * counts[e]})
        slow = slow + ranking_loss(rewards[:, e], resampled, 0.2, reduction="sum") / denominators[e]
    assert torch.allclose(fast, slow)
    assert torch.allclose(*(torch.autograd.grad(x, rewards)[0] for x in (fast, slow)))
    # one head, its own total weight as the denominator: the plain weighted-mean ranking loss
    one = ensemble_ranking_loss(rewards[:, :1], pb, torch.ones(1, pb.num_groups), pb.effective_weight.sum().view(1))
    assert torch.allclose(one, ranking_loss(rewards[:, 0], pb))
