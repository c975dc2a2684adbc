"""The reward ensemble of the control loop: E small networks r(o, a), trained by Bradley-Terry on
summed fragment rewards (`algorithms.fragment_losses`), each on its own bootstrap resample.

Each member is an MLP for state-vector observations, or a small CNN for image observations
(a uint8 Box H x W x C, `envs.image_shape`): a few convolutions (the paper's Atari net, smaller),
the action joining after the convolutional trunk. Both read the same flat step features
`(..., D)` (`envs.features`: the flat observation, then the flat or one-hot action).

Training (`train_ensemble`, once per round, continuing from the previous round's weights):
  1) inputs standardised on every step of the labelled clips: each feature by its own mean / std
     (for images: the pixels by one mean / std over all of them, the action features by their own);
  2) each epoch: minibatches of training comparisons; member e's loss is the count-weighted mean
     of `fragment_preference_loss` over its bootstrap counts, plus weight_decay x |theta_e|^2;
  3) after each epoch the L2 coefficient is adapted (the paper's rule): doubled when the
     held-out loss exceeds 1.5x the training loss, halved when it is below 1.1x;
  4) outputs normalised: each member's rewards get mean 0 and std 1 over the labelled clips' steps;
     the reward the agent sees is the mean of the normalised members.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from alignloop.algorithms.fragment_losses import fragment_preference_loss, fragment_returns
from alignloop.algorithms.reward_metrics import pairwise_accuracy

CHUNK = 2048  # steps per forward pass of the CNN when no gradient is needed (bounds its activations' memory)


def mlp(dim: int, hidden: int) -> nn.Sequential:
    """D -> hidden -> hidden -> 1, leaky ReLUs."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LeakyReLU(),
                         nn.Linear(hidden, 1))


class ConvReward(nn.Module):
    """r(o, a) for image observations: `(..., P + A)` standardised features (P = H x W x C pixels,
    then A action features) -> `(..., 1)`.

        pixels (B, C, H, W) -> conv 5x5 /2 -> conv 3x3 /2 -> conv 3x3 /1 (16 channels, leaky ReLU)
                            -> average-pooled to at most 8 x 8 -> flatten -> linear -> hidden
        [hidden, action]    -> linear -> hidden -> linear -> 1
    """

    def __init__(self, image: tuple[int, int, int], actions: int, hidden: int, channels: int = 16):
        super().__init__()
        self.image = image
        self.first = image[0] <= 4 < image[-1]  # C x H x W (else H x W x C)
        c = image[0] if self.first else image[-1]
        self.trunk = nn.Sequential(nn.Conv2d(c, channels, 5, stride=2, padding=2), nn.LeakyReLU(),
                                   nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU(),
                                   nn.Conv2d(channels, channels, 3, stride=1, padding=1), nn.LeakyReLU())
        with torch.no_grad():
            h, w = self.trunk(torch.zeros(1, c, *self._hw())).shape[-2:]
        self.pool = nn.AdaptiveAvgPool2d((min(h, 8), min(w, 8)))
        self.embed = nn.Linear(channels * min(h, 8) * min(w, 8), hidden)
        self.head = nn.Sequential(nn.LeakyReLU(), nn.Linear(hidden + actions, hidden), nn.LeakyReLU(),
                                  nn.Linear(hidden, 1))

    def _hw(self) -> tuple[int, int]:
        return (self.image[1], self.image[2]) if self.first else (self.image[0], self.image[1])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, P + A)` -> `(B, 1)`."""
        n = math.prod(self.image)
        pixels = x[:, :n].reshape(-1, *self.image)
        if not self.first:
            pixels = pixels.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
        z = self.embed(self.pool(self.trunk(pixels)).flatten(1))  # (B, hidden)
        return self.head(torch.cat([z, x[:, n:]], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if torch.is_grad_enabled():
            out = self._forward(flat)
        else:
            out = torch.cat([self._forward(c) for c in flat.split(CHUNK)]) if len(flat) else flat[:, :1]
        return out.reshape(*x.shape[:-1], 1)


class RewardEnsemble(nn.Module):
    """E members (MLPs, or CNNs when `image` gives the observations' image shape) with the input
    standardisation and the per-member output normalisation as buffers (saved with the weights)."""

    def __init__(self, dim: int, members: int = 3, hidden: int = 64, image: tuple[int, int, int] | None = None):
        super().__init__()
        self.image = tuple(image) if image is not None else None
        pixels = math.prod(self.image) if self.image else 0
        self.members = nn.ModuleList(
            ConvReward(self.image, dim - pixels, hidden) if self.image else mlp(dim, hidden) for _ in range(members))
        self.register_buffer("in_mean", torch.zeros(dim))
        self.register_buffer("in_std", torch.ones(dim))
        self.register_buffer("out_mean", torch.zeros(members))
        self.register_buffer("out_std", torch.ones(members))

    def standardise_on(self, flat: torch.Tensor) -> None:
        """Step 1: the input statistics from `(S, D)` features of every labelled step."""
        mean, std = flat.mean(dim=0), flat.std(dim=0)
        if self.image:  # one mean / std for all pixels: a pixel constant in the clips must not blow up later
            n = math.prod(self.image)
            mean[:n], std[:n] = flat[:, :n].mean(), flat[:, :n].std()
        self.in_mean.copy_(mean)
        self.in_std.copy_(std.clamp_min(1e-6))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """`(..., D)` features -> `(..., E)` unnormalised rewards of each member."""
        z = (x - self.in_mean) / self.in_std
        return torch.cat([m(z) for m in self.members], dim=-1)

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """`(..., D)` -> `(..., E)`, each member with mean 0 and std 1 on the reference steps."""
        return (self.raw(x) - self.out_mean) / self.out_std

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """What the agent sees: `(N, D)` features -> `(N,)` mean of the normalised members."""
        return self.normalised(torch.as_tensor(x, dtype=torch.float32)).mean(dim=-1).numpy()

    @torch.no_grad()
    def member_returns(self, clip_features: np.ndarray) -> torch.Tensor:
        """`(N, T, D)` clips -> `(N, E)` each member's predicted (unnormalised) fragment return."""
        return fragment_returns(self.raw(torch.as_tensor(clip_features, dtype=torch.float32)))

    def l2(self) -> torch.Tensor:
        """`(E,)` sum of squared weights of each member (biases excluded)."""
        return torch.stack([sum(p.square().sum() for n, p in m.named_parameters() if n.endswith("weight"))
                            for m in self.members])


@dataclass
class Pairs:
    """Labelled comparisons as indices into the clips: P pairs."""

    a: np.ndarray  # (P,) index of the first clip (responses[0])
    b: np.ndarray  # (P,) index of the second clip (responses[1])
    p: np.ndarray  # (P,) float, P(a better): 1, 0, or 0.5 for "equal"
    heldout: np.ndarray  # (P,) bool


@dataclass
class FitStats:
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    weight_decay: float


def _losses(model: RewardEnsemble, feats: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: torch.Tensor,
            random_share: float) -> torch.Tensor:
    """`(P, E)` loss of every member on pairs (a, b) of the clips' `(N, T, D)` features."""
    idx = torch.cat([a, b]).unique()
    where = torch.full((feats.shape[0],), -1, dtype=torch.long)
    where[idx] = torch.arange(len(idx))
    returns = fragment_returns(model.raw(feats[idx]))  # (U, E): each clip used once
    return fragment_preference_loss(returns[where[a]], returns[where[b]], p, random_share)


def evaluate_pairs(model: RewardEnsemble, feats: torch.Tensor, pairs: Pairs, mask: np.ndarray,
                   random_share: float) -> tuple[float | None, float | None]:
    """(mean loss over members, accuracy of the ensemble mean on the decided pairs) on `mask`'s pairs."""
    if not mask.any():
        return None, None
    a, b = torch.as_tensor(pairs.a[mask]), torch.as_tensor(pairs.b[mask])
    p = torch.as_tensor(pairs.p[mask], dtype=torch.float32)
    with torch.no_grad():
        loss = _losses(model, feats, a, b, p, random_share).mean().item()
        ret = fragment_returns(model.normalised(feats)).mean(dim=-1)  # (N,) ensemble mean
        decided = p != 0.5
        if not decided.any():
            return loss, None
        first = torch.where(p[decided] > 0.5, ret[a[decided]], ret[b[decided]])
        second = torch.where(p[decided] > 0.5, ret[b[decided]], ret[a[decided]])
        return loss, pairwise_accuracy(first, second).item()


def train_ensemble(model: RewardEnsemble, clip_features: np.ndarray, pairs: Pairs, counts: np.ndarray,
                   weight_decay: float, epochs: int, batch_size: int, lr: float, random_share: float,
                   generator: torch.Generator) -> FitStats:
    """Fit the ensemble on the training pairs (in place), as the module docstring's steps say.

    counts: `(E, P_train)` bootstrap counts of each member over the training pairs, in order.
    """
    feats = torch.as_tensor(clip_features, dtype=torch.float32)  # (N, T, D)
    flat = feats.reshape(-1, feats.shape[-1])
    # 1) input standardisation on every labelled step
    model.standardise_on(flat)
    train = ~pairs.heldout
    a_all, b_all = torch.as_tensor(pairs.a[train]), torch.as_tensor(pairs.b[train])
    p_all = torch.as_tensor(pairs.p[train], dtype=torch.float32)
    c_all = torch.as_tensor(counts, dtype=torch.float32).T  # (P_train, E)
    params = [q for m in model.members for q in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    n = len(p_all)
    train_loss = val_loss = None
    for _ in range(epochs):
        # 2) one pass over the training pairs
        for batch in torch.randperm(n, generator=generator).split(batch_size):
            c = c_all[batch]  # (B, E)
            per = _losses(model, feats, a_all[batch], b_all[batch], p_all[batch], random_share)  # (B, E)
            loss = ((c * per).sum(dim=0) / c.sum(dim=0).clamp_min(1.0)).sum() + weight_decay * model.l2().sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        # 3) the paper's rule: validation loss at 1.1-1.5x the training loss
        with torch.no_grad():
            per = _losses(model, feats, a_all, b_all, p_all, random_share)
            train_loss = ((c_all * per).sum(dim=0) / c_all.sum(dim=0).clamp_min(1.0)).mean().item()
        val_loss, _ = evaluate_pairs(model, feats, pairs, pairs.heldout, random_share)
        if val_loss is not None and train_loss > 0:
            ratio = val_loss / train_loss
            if ratio > 1.5:
                weight_decay = min(weight_decay * 2 if weight_decay > 0 else 1e-5, 1.0)
            elif ratio < 1.1:
                weight_decay = weight_decay / 2 if weight_decay > 1e-6 else 0.0
    # 4) output normalisation on the labelled steps
    with torch.no_grad():
        r = model.raw(flat)
        model.out_mean.copy_(r.mean(dim=0))
        model.out_std.copy_(r.std(dim=0).clamp_min(1e-6))
    val_loss, val_acc = evaluate_pairs(model, feats, pairs, pairs.heldout, random_share)
    return FitStats(train_loss=float(train_loss), val_loss=val_loss, val_accuracy=val_acc, weight_decay=weight_decay)
