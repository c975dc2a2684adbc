import math

import pytest
import torch

from alignloop.algorithms.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalty,
)

pytestmark = pytest.mark.numerics  # float results against hand values and naive loops

LN2 = math.log(2.0)


def test_hand_values_d_log2():
    # pi = 1/2, pi_ref = 1/4 -> d = log(1/2) - log(1/4) = log 2
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert math.isclose(kl_k1(logp, ref).item(), LN2, rel_tol=1e-6)
    # k2 = (log 2)^2 / 2 = 0.2402
    assert math.isclose(kl_k2(logp, ref).item(), LN2**2 / 2, rel_tol=1e-6)
    # k3 = exp(-log 2) - 1 + log 2 = 1/2 - 1 + 0.6931 = 0.1931
    assert math.isclose(kl_k3(logp, ref).item(), 0.5 - 1 + LN2, rel_tol=1e-6)


def test_hand_values_negative_d():
    # d = -log 2 (pi = 1/4, pi_ref = 1/2): k1 = -0.6931 (negative!), k2 = 0.2402,
    # k3 = exp(log 2) - 1 - log 2 = 2 - 1 - 0.6931 = 0.3069
    logp, ref = torch.tensor([math.log(0.25)]), torch.tensor([math.log(0.5)])
    assert math.isclose(kl_k1(logp, ref).item(), -LN2, rel_tol=1e-6)
    assert math.isclose(kl_k2(logp, ref).item(), LN2**2 / 2, rel_tol=1e-6)
    assert math.isclose(kl_k3(logp, ref).item(), 1 - LN2, rel_tol=1e-6)


def test_zero_when_equal():
    x = torch.randn(3, 5)
    for f in (kl_k1, kl_k2, kl_k3):
        assert torch.equal(f(x, x), torch.zeros(3, 5))


def test_k3_and_k2_never_negative():
    g = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(64, 33, generator=g) * 5, torch.randn(64, 33, generator=g) * 5
    assert (kl_k3(logp, ref) >= 0).all()
    assert (kl_k2(logp, ref) >= 0).all()
    tiny = torch.tensor([1e-9, -1e-9, 1e-4])  # expm1 keeps tiny d accurate and >= 0
    assert (kl_k3(tiny, torch.zeros(3)) >= 0).all()


def test_k1_and_k3_unbiased_for_exact_kl():
    # Sample tokens from pi over 5 symbols; the means of k1 and k3 approach KL(pi || pi_ref).
    g = torch.Generator().manual_seed(0)
    pi = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    ref = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2], dtype=torch.float64)
    exact = (pi * (pi / ref).log()).sum().item()
    a = torch.multinomial(pi, 400_000, replacement=True, generator=g)
    logp, logr = pi.log()[a], ref.log()[a]
    assert abs(kl_k1(logp, logr).mean().item() - exact) < 5e-3
    assert abs(kl_k3(logp, logr).mean().item() - exact) < 5e-3


def test_kl_penalty_dispatch():
    logp, ref = torch.tensor([0.3]), torch.tensor([0.1])
    assert torch.equal(kl_penalty(logp, ref, "k2"), kl_k2(logp, ref))
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(logp, ref, "k4")


def test_fixed_controller():
    c = FixedKLController(0.05)
    assert c.update(100.0, 256) == 0.05
    c2 = FixedKLController(1.0)
    c2.load_state_dict(c.state_dict())
    assert c2.value == 0.05


def test_adaptive_controller_hand_sequence():
    c = AdaptiveKLController(init_beta=0.2, target=6.0, horizon=10000)
    # KL 12 -> 12/6 - 1 = 1, clipped to 0.2 -> beta = 0.2 * (1 + 0.2 * 256/10000) = 0.2 * 1.00512
    b1 = c.update(12.0, 256)
    assert math.isclose(b1, 0.2 * (1 + 0.2 * 256 / 10000), rel_tol=1e-12)
    assert math.isclose(c.value, 0.201024, rel_tol=1e-12)
    # KL 6.6 -> 6.6/6 - 1 = 0.1 (inside the clip) -> beta *= 1 + 0.1 * 256/10000 = 1.00256
    c.update(6.6, 256)
    assert math.isclose(c.value, 0.201024 * 1.00256, rel_tol=1e-9)
    # KL 0 -> -1, clipped to -0.2 -> beta *= 1 - 0.2 * 512/10000 = 0.98976
    c.update(0.0, 512)
    assert math.isclose(c.value, 0.201024 * 1.00256 * 0.98976, rel_tol=1e-9)
    # KL at target -> no change
    before = c.value
    c.update(6.0, 256)
    assert math.isclose(c.value, before, rel_tol=1e-12)


def test_adaptive_controller_accepts_tensor_and_ignores_nan():
    c = AdaptiveKLController(0.1, 6.0, 10000)
    c.update(torch.tensor(3.0), 100)  # 3/6 - 1 = -0.5 -> -0.2 -> 0.1 * (1 - 0.2 * 0.01) = 0.0998
    assert math.isclose(c.value, 0.0998, rel_tol=1e-12)
    c.update(float("nan"), 100)
    assert math.isclose(c.value, 0.0998, rel_tol=1e-12)


def test_adaptive_controller_state_roundtrip():
    c = AdaptiveKLController(0.2, 6.0, 10000)
    for kl in (1.0, 9.0, 20.0):
        c.update(kl, 64)
    resumed = AdaptiveKLController(1.0, 1.0, 1.0)
    resumed.load_state_dict(c.state_dict())
    assert resumed.state_dict() == c.state_dict()
    assert resumed.update(7.0, 64) == c.update(7.0, 64)


def test_adaptive_controller_rejects_bad_target():
    with pytest.raises(ValueError):
        AdaptiveKLController(0.2, 0.0, 10000)
