"""Per-token KL estimators and the KL coefficient controllers of PPO for language models.

With tokens sampled from the policy pi, and d = log pi(a|s) - log pi_ref(a|s) per token, three
single-sample estimators of KL(pi || pi_ref) (J. Schulman, "Approximating KL Divergence", 2020,
http://joschu.net/blog/kl-approx.html):

    k1 = d                      unbiased, high variance, can be NEGATIVE per token and even
                                summed over a short sequence (the "negative KL" users report
                                is this estimator, not a bug);
    k2 = d^2 / 2                biased (exact to second order), low variance, >= 0;
    k3 = exp(-d) - 1 + d        unbiased, low variance, always >= 0 (since e^x >= 1 + x).

PPO puts -beta * k1 in the per-token reward (InstructGPT; Ziegler et al. 2019; TRL); GRPO
(Shao et al. 2024) adds beta * mean k3 to the loss instead (see `ppo_losses.k3_loss_term`).

The controllers hold the coefficient beta. They are plain Python (no tensors) with
`state_dict()` / `load_state_dict()` so that a resumed run continues with the same beta.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = d = logp - ref_logp, per token. Shapes `(B, T)` -> `(B, T)`."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = d^2 / 2 with d = logp - ref_logp, per token. Shapes `(B, T)` -> `(B, T)`."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(-d) - 1 + d with d = logp - ref_logp, per token. Shapes `(B, T)` -> `(B, T)`.

    Equivalently r - 1 - log r with r = pi_ref / pi. Non-negative for every d; it overflows
    only for d < -88 in float32 (pi_ref 1e38 times more likely than pi), which real models
    do not produce. Padded positions may hold anything; mask the result.
    """
    d = logp - ref_logp
    return torch.expm1(-d) + d


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k1") -> Tensor:
    """The per-token estimator named by a config string ("k1", "k2" or "k3"). `(B, T)` -> `(B, T)`."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[estimator](logp, ref_logp)


class FixedKLController:
    """A constant KL coefficient: `.value` is always `beta`; `update` does nothing."""

    def __init__(self, beta: float):
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No-op; returns the (unchanged) coefficient."""
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
    Preferences", sec. 2.2; lm-human-preferences, TRL's AdaptiveKLController).

        e     = clip(KL / target - 1, -0.2, 0.2)       proportional error, clipped
        beta <- beta * (1 + e * n_steps / horizon)

    where KL is the measured KL of the last batch (per sequence: sum over response tokens,
    averaged over the batch, in nats) and n_steps the number of samples (sequences) in it.
    KL above target raises beta, below target lowers it; at most by a factor
    1 +- 0.2 * n_steps / horizon per update. Defaults from TRL v0.8: init 0.2, target 6,
    horizon 10000.
    """

    def __init__(self, init_beta: float = 0.2, target: float = 6.0, horizon: float = 10000.0):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target ({target}) and horizon ({horizon}) must be > 0")
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Apply one update with the batch's measured KL; returns the new coefficient.

        `current_kl` may be a 0-dim tensor (it is read with `float`). A nan KL leaves beta
        unchanged rather than poisoning it.
        """
        kl = float(current_kl)
        if math.isnan(kl):
            return self.value
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])
