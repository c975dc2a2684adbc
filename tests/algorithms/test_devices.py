"""Every function gives the same result on a CUDA device as on the CPU (skipped without a GPU)."""

import pytest
import torch

from alignloop.algorithms.advantages import gae, grpo_advantages, per_token_rewards, rloo_advantages, sequence_to_tokens
from alignloop.algorithms.kl import kl_k3
from alignloop.algorithms.masked import masked_whiten
from alignloop.algorithms.ppo_losses import (
    entropy_from_logits,
    explained_variance,
    k3_loss_term,
    logprobs_from_logits,
    policy_loss,
    value_loss,
)
from alignloop.algorithms.reward_losses import build_pair_batch, ranking_loss
from alignloop.algorithms.reward_metrics import expected_calibration_error


def run_all(device):
    g = torch.Generator().manual_seed(0)
    B, T, V = 4, 6, 13
    logits = torch.randn(B, T, V, generator=g)
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.arange(T) < torch.tensor([6, 3, 1, 0])[:, None]).int()
    ref_logp = torch.randn(B, T, generator=g)
    values = torch.randn(B, T, generator=g)
    scores = torch.randn(B, generator=g)
    rewards_rm = torch.randn(8, generator=g)  # K = 4 + 2 + 2
    pb = build_pair_batch([[[0], [1, 2], [3]], [[1], [0]], [[0], [1]]], [None, None, 0.8], tie_mode="soft")
    to = lambda x: x.to(device)  # noqa: E731
    logits, tokens, mask, ref_logp, values, scores, rewards_rm = map(to, (logits, tokens, mask, ref_logp, values, scores, rewards_rm))
    logp = logprobs_from_logits(logits, tokens, 0.7)
    rewards = per_token_rewards(scores, kl_k3(logp, ref_logp), mask, 0.1)
    adv, ret = gae(rewards, values, mask, 1.0, 0.95)
    adv = masked_whiten(adv, mask)
    pl, ps = policy_loss(logp, logp.detach() + 0.1, adv, mask)
    vl, vs = value_loss(values + 0.3, values, ret, mask)
    out = [logp, rewards, adv, ret, pl, vl, *ps.values(), *vs.values(), entropy_from_logits(logits),
           explained_variance(values, ret, mask), k3_loss_term(logp, ref_logp, mask),
           rloo_advantages(scores, 2), grpo_advantages(scores, 2), sequence_to_tokens(scores, mask),
           ranking_loss(rewards_rm, pb.to(device), margin=0.2),
           expected_calibration_error(torch.sigmoid(rewards_rm), (rewards_rm > 0).float())]
    return [x.cpu() for x in out]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    for a, b in zip(run_all("cpu"), run_all("cuda")):
        assert torch.allclose(a, b, atol=1e-5, equal_nan=True)


def test_cpu_path_runs():
    assert all(torch.isfinite(x).all() for x in run_all("cpu"))
