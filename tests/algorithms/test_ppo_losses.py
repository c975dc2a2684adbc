import math

import pytest
import torch

from alignloop.algorithms.ppo_losses import (
    entropy_from_logits,
    explained_variance,
    k3_loss_term,
    logprobs_from_logits,
    policy_loss,
    value_loss,
)

pytestmark = pytest.mark.numerics  # float results against hand values and naive loops

E = math.e


def test_policy_loss_hand_values():
    # Four real tokens and one padded one (garbage log-prob, must be ignored).
    # log ratio (logp - old):  +1     +1     -1     -1     (pad)
    # ratio:                    e      e     1/e    1/e
    # advantage:               +1     -1     +1     -1
    # pg_loss1 = -A*ratio:     -e      e    -1/e    1/e
    # clamp(ratio, 0.8, 1.2):  1.2    1.2    0.8    0.8
    # pg_loss2:               -1.2    1.2   -0.8    0.8
    # max:                    -1.2     e    -1/e    0.8
    # clipped (pg2 > pg1):     yes     no     no    yes   -> clipfrac 2/4
    old = torch.zeros(1, 5)
    logp = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1e9]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = policy_loss(logp, old, adv, mask, clip_eps=0.2)
    assert math.isclose(loss.item(), (-1.2 + E - 1 / E + 0.8) / 4, rel_tol=1e-6)
    assert stats["clipfrac"].item() == 0.5
    # approx_kl = mean of r - 1 - log r: (e - 1 - 1) and (1/e - 1 + 1)
    assert math.isclose(stats["approx_kl"].item(), ((E - 2) + 1 / E) / 2, rel_tol=1e-6)
    assert math.isclose(stats["ratio_mean"].item(), (E + 1 / E) / 2, rel_tol=1e-6)
    assert math.isclose(stats["ratio_max"].item(), E, rel_tol=1e-6)
    loss.backward()
    # clipped tokens get no gradient; the others d/dlogp (-A * exp(logp - old)) / 4 = -A*ratio/4
    assert torch.allclose(logp.grad, torch.tensor([[0.0, E / 4, -1 / E / 4, 0.0, 0.0]]))
    assert all(not v.requires_grad for v in stats.values())


def test_policy_loss_on_policy_is_minus_mean_advantage():
    # ratio 1 everywhere (first epoch): loss = -masked_mean(A), nothing clipped, approx_kl 0
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(3, 6, generator=g)
    adv = torch.randn(3, 6, generator=g)
    mask = torch.ones(3, 6)
    mask[0, 4:] = 0
    loss, stats = policy_loss(logp, logp, adv, mask)
    assert torch.allclose(loss, -(adv * mask).sum() / mask.sum())
    assert stats["clipfrac"].item() == 0.0 and stats["approx_kl"].item() == 0.0


def test_policy_loss_ratio_clamped():
    # log ratio 1000 would overflow exp; clamp to 20 keeps the loss finite
    loss, stats = policy_loss(torch.tensor([[1000.0]]), torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1))
    assert math.isclose(loss.item(), math.exp(20), rel_tol=1e-5)
    assert torch.isfinite(stats["approx_kl"])


def test_value_loss_hand_values():
    # clip 0.2, V_old = 0.5, R = 1 for all three tokens:
    #   V = 1.0: (V-R)^2 = 0;    V_clip = 0.5 + 0.2 = 0.7, (0.7-1)^2 = 0.09 -> 0.09 (clipped larger)
    #   V = 0.6: (0.6-1)^2 = 0.16; V_clip = 0.6 (inside), 0.16            -> 0.16
    #   V = 0.0: (0-1)^2 = 1;    V_clip = 0.5 - 0.2 = 0.3, (0.3-1)^2 = 0.49 -> 1.0
    # loss = 0.5 * (0.09 + 0.16 + 1.0) / 3 = 0.208333
    values = torch.tensor([[1.0, 0.6, 0.0, 123.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    ret = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = value_loss(values, old, ret, mask, clip=0.2)
    assert math.isclose(loss.item(), 0.5 * 1.25 / 3, rel_tol=1e-6)
    assert math.isclose(stats["vf_clipfrac"].item(), 1 / 3, rel_tol=1e-6)
    loss.backward()
    # grads: clipped-larger token 0 (the clipped branch is constant in V); others (V - R) / 3
    assert torch.allclose(values.grad, torch.tensor([[0.0, -0.4 / 3, -1.0 / 3, 0.0]]))
    # unclipped: 0.5 * (0 + 0.16 + 1) / 3 = 0.193333
    loss, stats = value_loss(values, old, ret, mask, clip=None)
    assert math.isclose(loss.item(), 0.5 * 1.16 / 3, rel_tol=1e-6)
    assert stats["vf_clipfrac"].item() == 0.0


def test_logprobs_from_logits_matches_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 17, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 17, (3, 5), generator=g)
    for temp in (1.0, 0.7, 1.5):
        ours = logprobs_from_logits(logits, tokens, temperature=temp)
        ref = torch.log_softmax(logits / temp, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(ours, ref)
        (g1,) = torch.autograd.grad(ours.sum(), logits)
        (g2,) = torch.autograd.grad(ref.sum(), logits)
        assert torch.allclose(g1, g2)


def test_logprobs_from_bf16_logits_are_float32():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 4, 50, generator=g) * 4).to(torch.bfloat16)
    tokens = torch.randint(0, 50, (2, 4), generator=g)
    out = logprobs_from_logits(logits, tokens, temperature=0.9)
    assert out.dtype == torch.float32
    ref = torch.log_softmax(logits.float() / 0.9, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(out, ref, atol=1e-6)


def test_entropy_from_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 11, generator=g, dtype=torch.float64)
    p = torch.softmax(logits, -1)
    assert torch.allclose(entropy_from_logits(logits), -(p * p.log()).sum(-1))
    p7 = torch.softmax(logits / 0.7, -1)
    assert torch.allclose(entropy_from_logits(logits, temperature=0.7), -(p7 * p7.log()).sum(-1))
    # uniform over V = 11 -> log 11; a (near) one-hot distribution -> 0, and no nan from 0 * log 0
    assert torch.allclose(entropy_from_logits(torch.zeros(1, 1, 11)), torch.tensor([[math.log(11)]]))
    peaked = entropy_from_logits(torch.tensor([[[1000.0, 0.0, 0.0]]]))
    assert torch.isfinite(peaked).all() and peaked.abs().item() < 1e-6


def test_explained_variance():
    mask = torch.tensor([[1, 1, 1, 0]])
    ret = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    # R = (1, 2, 3), V = (1, 2, 2): Var[R] = 2/3; R - V = (0, 0, 1), mean 1/3,
    # Var = ((1/3)^2 + (1/3)^2 + (2/3)^2) / 3 = 2/9  -> 1 - (2/9) / (2/3) = 2/3
    ev = explained_variance(torch.tensor([[1.0, 2.0, 2.0, -9.0]]), ret, mask)
    assert math.isclose(ev.item(), 2 / 3, rel_tol=1e-6)
    assert explained_variance(ret, ret, mask).item() == 1.0
    assert math.isclose(explained_variance(torch.full((1, 4), 2.0), ret, mask).item(), 0.0, abs_tol=1e-7)
    assert math.isnan(explained_variance(ret, torch.ones(1, 4), mask).item())


def test_k3_loss_term_value_and_gradient():
    # d = log 2 on both real tokens: k3 = 1/2 - 1 + log 2 = 0.1931 each; the padded token is ignored
    logp = torch.tensor([[math.log(0.5), math.log(0.5), 5.0]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25), math.log(0.25), -5.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss = k3_loss_term(logp, ref, mask)
    assert math.isclose(loss.item(), 0.5 - 1 + math.log(2), rel_tol=1e-6)
    loss.backward()
    # d k3 / d logp = 1 - pi_ref/pi = 1 - 0.5 = 0.5, divided by 2 real tokens
    assert torch.allclose(logp.grad, torch.tensor([[0.25, 0.25, 0.0]]))


def test_losses_treat_targets_as_constants():
    # gradients must reach logp / values only, never the advantages, old log-probs or returns
    adv = torch.ones(1, 2, requires_grad=True)
    old = torch.zeros(1, 2, requires_grad=True)
    logp = torch.zeros(1, 2, requires_grad=True)
    loss, _ = policy_loss(logp, old, adv, torch.ones(1, 2))
    loss.backward()
    assert adv.grad is None and old.grad is None and logp.grad is not None
    ret = torch.ones(1, 2, requires_grad=True)
    values = torch.zeros(1, 2, requires_grad=True)
    vloss, _ = value_loss(values, values.detach(), ret, torch.ones(1, 2))
    vloss.backward()
    assert ret.grad is None and values.grad is not None
