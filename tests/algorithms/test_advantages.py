import math

import pytest
import torch

from alignloop.algorithms.advantages import (
    gae,
    grpo_advantages,
    kl_penalized_scores,
    per_token_rewards,
    rloo_advantages,
    sequence_to_tokens,
)

pytestmark = pytest.mark.numerics  # float results against hand values and naive loops


def naive_gae(rewards, values, mask, gamma, lam):
    """Textbook GAE on each row's real tokens, one Python float at a time."""
    B, T = rewards.shape
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t]]
        running = 0.0
        for j in reversed(range(len(idx))):
            t = idx[j]
            next_v = values[b, idx[j + 1]].item() if j + 1 < len(idx) else 0.0
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            running = delta + gamma * lam * running
            adv[b][t] = running
    adv = torch.tensor(adv, dtype=torch.float64)
    return adv, (adv + values) * mask


def test_per_token_rewards_hand_values():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    kl = torch.tensor([[0.5, 1.0, 9.0], [0.0, 0.2, 0.4], [7.0, 7.0, 7.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0], [0, 1, 0]])
    r = per_token_rewards(scores, kl, mask, beta=0.1)
    expected = torch.tensor([
        [-0.05, -0.1 + 1.0, 0.0],   # last real token is t=1: -0.1*1.0 + score 1
        [0.0, -0.02, -0.04 + 2.0],  # full row: score on t=2
        [0.0, 0.0, 0.0],            # empty response: nothing, not even its score
        [0.0, -0.1 + 4.0, 0.0],     # single real token in the middle
    ])
    assert torch.allclose(r, expected)


def test_per_token_rewards_score_lands_on_last_real_token():
    g = torch.Generator().manual_seed(0)
    B, T = 7, 11
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T) < lengths[:, None]).int()
    scores = torch.randn(B, generator=g)
    r = per_token_rewards(scores, torch.zeros(B, T), mask, beta=0.3)
    for b in range(B):
        last = lengths[b].item() - 1
        assert r[b, last] == scores[b]
        assert (r[b, :last] == 0).all() and (r[b, last + 1:] == 0).all()
    # with beta = 0 the rewards of a row sum to its score; with kl they sum to score - beta * sum kl
    kl = torch.rand(B, T, generator=g)
    assert torch.allclose(per_token_rewards(scores, kl, mask, 0.3).sum(1), kl_penalized_scores(scores, kl, mask, 0.3))


def test_gae_hand_values():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    mask = torch.ones(1, 3)
    # gamma = lam = 1: A_t = (sum of future rewards) - V_t = 1 - 0.5; returns = 1
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[0.5, 0.5, 0.5]]))
    assert torch.allclose(ret, torch.ones(1, 3))
    # gamma = lam = 0.5:
    #   delta_2 = 1 + 0 - 0.5 = 0.5                 A_2 = 0.5
    #   delta_1 = 0 + 0.5*0.5 - 0.5 = -0.25         A_1 = -0.25 + 0.25*0.5 = -0.125
    #   delta_0 = -0.25                             A_0 = -0.25 + 0.25*(-0.125) = -0.28125
    adv, ret = gae(rewards, values, mask, gamma=0.5, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[-0.28125, -0.125, 0.5]]))
    assert torch.allclose(ret, torch.tensor([[0.21875, 0.375, 1.0]]))


def test_gae_value_after_last_real_token_is_zero():
    # padded values (99) must not be bootstrapped from: A_1 = r_1 - V_1 = 1 - 0.5
    adv, ret = gae(torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[0.5, 0.5, 99.0]]), torch.tensor([[1, 1, 0]]), 1.0, 1.0)
    assert torch.allclose(adv, torch.tensor([[0.5, 0.5, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[1.0, 1.0, 0.0]]))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (1.0, 1.0), (0.99, 0.95), (0.9, 0.0), (0.0, 0.7)])
@pytest.mark.parametrize("padding", ["right", "left", "holes"])
def test_gae_matches_naive_loop(gamma, lam, padding):
    g = torch.Generator().manual_seed(hash((gamma, lam, padding)) % 2**31)
    B, T = 6, 13
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    ar = torch.arange(T)
    if padding == "right":
        mask = (ar < lengths[:, None]).int()
    elif padding == "left":
        mask = (ar >= T - lengths[:, None]).int()
    else:
        mask = (torch.rand(B, T, generator=g) < 0.6).int()
    adv, ret = gae(rewards, values, mask, gamma, lam)
    adv_ref, ret_ref = naive_gae(rewards, values, mask, gamma, lam)
    assert torch.allclose(adv, adv_ref)
    assert torch.allclose(ret, ret_ref)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()


def test_gae_ignores_gradients_and_padding_garbage():
    rewards = torch.tensor([[1.0, float("nan")]], requires_grad=True)
    values = torch.tensor([[0.2, float("inf")]], requires_grad=True)
    adv, ret = gae(rewards, values, torch.tensor([[1, 0]]), 1.0, 0.95)
    assert not adv.requires_grad and not ret.requires_grad
    assert torch.allclose(adv, torch.tensor([[0.8, 0.0]])) and torch.allclose(ret, torch.tensor([[1.0, 0.0]]))


def test_rloo_hand_values():
    # K = 2: each baseline is the other sample: [1-2, 2-1, 3-4, 4-3]
    assert torch.equal(rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), 2), torch.tensor([-1.0, 1.0, -1.0, 1.0]))
    # K = 3, scores (1, 2, 6): baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5 -> (-3, -1.5, 4.5)
    assert torch.equal(rloo_advantages(torch.tensor([1.0, 2.0, 6.0]), 3), torch.tensor([-3.0, -1.5, 4.5]))


def test_rloo_equals_scaled_mean_centering():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(20, generator=g, dtype=torch.float64)
    a = rloo_advantages(s, 5).view(4, 5)
    centered = s.view(4, 5) - s.view(4, 5).mean(1, keepdim=True)
    assert torch.allclose(a, centered * 5 / 4)  # K/(K-1) * (r - mean)
    assert torch.allclose(a.sum(1), torch.zeros(4, dtype=torch.float64))


def test_grpo_hand_values():
    # scores (1, 2, 6): mean 3, deviations (-2, -1, 3), unbiased var (4+1+9)/2 = 7 -> std sqrt 7
    a = grpo_advantages(torch.tensor([1.0, 2.0, 6.0]), 3, eps=0.0)
    assert torch.allclose(a, torch.tensor([-2.0, -1.0, 3.0]) / math.sqrt(7))
    assert torch.allclose(grpo_advantages(torch.tensor([1.0, 2.0, 6.0]), 3, scale=False), torch.tensor([-2.0, -1.0, 3.0]))
    # groups (5, 5) and (1, 3). (5, 5): std 0 -> advantage 0, no nan.
    # (1, 3): mean 2, deviations (-1, 1), unbiased var (1+1)/1 = 2 -> (-1, 1) / (sqrt 2 + eps)
    a = grpo_advantages(torch.tensor([5.0, 5.0, 1.0, 3.0]), 2)
    assert torch.equal(a[:2], torch.zeros(2))
    assert torch.allclose(a[2:], torch.tensor([-1.0, 1.0]) / (math.sqrt(2) + 1e-6))


def test_group_size_must_divide_batch():
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(torch.zeros(4), 1)


def test_kl_penalized_scores_and_sequence_to_tokens():
    scores = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.5, 0.5, 100.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # 1 - 0.1*(0.5+0.5) = 0.9 ; 2 - 0.1*(1+2+3) = 1.4   (padded kl 100 ignored)
    assert torch.allclose(kl_penalized_scores(scores, kl, mask, 0.1), torch.tensor([0.9, 1.4]))
    assert torch.equal(sequence_to_tokens(torch.tensor([3.0, -1.0]), mask), torch.tensor([[3.0, 3.0, 0.0], [-1.0, -1.0, -1.0]]))
