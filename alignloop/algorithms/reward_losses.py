"""Reward-model losses (Bradley-Terry, K-way rankings, ties, soft labels) and metrics.

Notation: s = sigmoid, d = r_w - r_l for a (winner, loser) pair; M responses, P pairs and
G comparison records (groups) in a batch. Losses are in nats.

A batch of records is scored in ONE forward pass: the M responses of all records are
concatenated (record 0's K_0 responses, then record 1's, ...) into a `(M,)` reward tensor;
the pairs are index tensors into it, built once per batch by the pure-Python
`build_pair_batch`. `ranking_loss` is then a few gathers and one scatter, no loop over records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor


def ranking_pairs(tiers: list[list[int]]) -> list[tuple[int, int]]:
    """All (winner, loser) pairs of a best-first tier list; responses in one tier are tied.

    [[2], [0, 3], [1]] -> [(2, 0), (2, 3), (2, 1), (0, 1), (3, 1)]: every response beats every
    response of every later tier; none within a tier. A full K-way ranking gives C(K, 2) pairs.
    """
    return [(w, l) for i, hi in enumerate(tiers) for lo in tiers[i + 1:] for w in hi for l in lo]


def tie_pairs(tiers: list[list[int]]) -> list[tuple[int, int]]:
    """The unordered pairs within each tier, in tier order: [[2], [0, 3], [1]] -> [(0, 3)]."""
    return [pair for tier in tiers for pair in combinations(tier, 2)]


def bradley_terry_loss(
    r_chosen: Tensor, r_rejected: Tensor, margin: float | Tensor = 0.0, weight: Tensor | None = None
) -> Tensor:
    """Bradley-Terry pairwise loss: mean_i -log s(r_chosen_i - r_rejected_i - margin_i).

    The one-line TRL `RewardTrainer` loss; the margin (Llama 2, Touvron et al. 2023) asks the
    chosen reward to exceed the rejected one by at least about `margin`.

    Args:
        r_chosen, r_rejected: `(N,)` rewards of the preferred / dispreferred response.
        margin: a float or `(N,)`.
        weight: optional `(N,)` non-negative pair weights: the loss is then the weighted mean
            sum_i w_i l_i / sum_i w_i.
    Returns:
        A scalar.
    """
    losses = -F.logsigmoid(r_chosen - r_rejected - margin)
    if weight is None:
        return losses.mean()
    return (weight * losses).sum() / weight.sum()


@dataclass
class PairBatch:
    """The pairs of a batch of comparison records, as index tensors into a `(M,)` reward tensor.

    Fields (P pairs, G records):
        winner: `(P,)` long, index of the better response: the one the label favours (for a
            tie or a soft label of exactly 0.5, the lower index).
        loser: `(P,)` long, index of the other response.
        p: `(P,)` float in [0.5, 1], target probability that `winner` beats `loser`: 1.0 for a
            hard win, 0.5 for a tie under tie_mode "soft", max(p, 1 - p) for a soft label.
        group: `(P,)` long, the record each pair belongs to (0..G-1).
        record_weight: `(G,)` float, each record's weight (its `weight` field, default 1).
        num_responses: `(G,)` long, K of each record (its responses are consecutive in the
            rewards tensor, in record order).
    Move it with `.to(device)`. Accuracy on the decided pairs:
    `keep = pairs.p > 0.5; pairwise_accuracy(rewards[pairs.winner][keep], rewards[pairs.loser][keep])`.
    """

    winner: Tensor
    loser: Tensor
    p: Tensor
    group: Tensor
    record_weight: Tensor
    num_responses: Tensor

    @property
    def num_groups(self) -> int:
        return self.record_weight.shape[0]

    @property
    def effective_weight(self) -> Tensor:
        """`(G,)` the weight each record has in `ranking_loss`: its record_weight, or 0 if it
        has no pair. Its sum is the denominator of the mean (see `reduction="sum"`)."""
        has_pairs = torch.bincount(self.group, minlength=self.num_groups) > 0
        return torch.where(has_pairs, self.record_weight, torch.zeros_like(self.record_weight))

    @property
    def is_hard(self) -> Tensor:
        """`(P,)` bool, True for hard wins (p == 1): the only pairs a margin applies to."""
        return self.p == 1.0

    def to(self, device: torch.device | str) -> "PairBatch":
        return PairBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def build_pair_batch(
    records_tiers: list[list[list[int]]],
    records_p: list[float | None] | None = None,
    records_weight: list[float] | None = None,
    tie_mode: str = "skip",
) -> PairBatch:
    """Build the pair index tensors of a batch of comparison records (pure Python, then tensors).

    Args:
        records_tiers: per record, its ranking as best-first tiers over response indices
            0..K-1 (`Comparison.tiers()`), e.g. [[2], [0, 3], [1]] for K = 4.
        records_p: per record, its soft label p (probability that response 0 beats response 1,
            K = 2 only) or None. A record with p gives the single pair (0, 1) with target p
            (stored as (1, 0) with 1 - p when p < 0.5), whatever its tiers say. p = 0.5 is
            trained toward equality whatever `tie_mode` is (a judge's 0.5 and 0.51 should not
            be handled differently); p = 1.0 (0.0) is a hard win for response 0 (1).
        records_weight: per record, its weight (default 1.0 each).
        tie_mode: "skip" -> tied responses give no pair; "soft" -> each tied pair is trained
            toward p = 0.5 and counts in its record's pair count.
    Returns:
        A `PairBatch`. Record i's responses are rewards[o_i : o_i + K_i] with
        o_i = K_0 + ... + K_{i-1}. A record with no pair (all tied, "skip") keeps its group
        id but contributes nothing to `ranking_loss`, not even to its denominator.
    """
    if tie_mode not in ("skip", "soft"):
        raise ValueError(f"tie_mode must be 'skip' or 'soft', got {tie_mode!r}")
    n = len(records_tiers)
    records_p = records_p if records_p is not None else [None] * n
    records_weight = records_weight if records_weight is not None else [1.0] * n
    if not (len(records_p) == len(records_weight) == n):
        raise ValueError(f"{n} records but {len(records_p)} p values and {len(records_weight)} weights")
    winner, loser, p, group, sizes = [], [], [], [], []
    offset = 0
    for g, (tiers, p_g) in enumerate(zip(records_tiers, records_p)):
        k = sum(len(t) for t in tiers)
        if p_g is not None:
            if k != 2:
                raise ValueError(f"record {g}: a soft label p needs K = 2 responses, got K = {k}")
            if not 0.0 <= p_g <= 1.0:
                raise ValueError(f"record {g}: soft label p = {p_g} is not in [0, 1]")
            pairs = [(0, 1, float(p_g))] if p_g >= 0.5 else [(1, 0, 1.0 - float(p_g))]
        else:
            pairs = [(w, l, 1.0) for w, l in ranking_pairs(tiers)]
            if tie_mode == "soft":
                pairs += [(a, b, 0.5) for a, b in tie_pairs(tiers)]
        for w, l, p_pair in pairs:
            winner.append(offset + w)
            loser.append(offset + l)
            p.append(p_pair)
            group.append(g)
        sizes.append(k)
        offset += k
    return PairBatch(
        winner=torch.tensor(winner, dtype=torch.long),
        loser=torch.tensor(loser, dtype=torch.long),
        p=torch.tensor(p, dtype=torch.float32),
        group=torch.tensor(group, dtype=torch.long),
        record_weight=torch.tensor(records_weight, dtype=torch.float32),
        num_responses=torch.tensor(sizes, dtype=torch.long),
    )


def pair_losses(d: Tensor, p: Tensor, margin: float | Tensor = 0.0) -> Tensor:
    """Per-pair loss for a reward difference d = r_w - r_l with target p = P(w beats l), `(P,)`.

        l = -[p log s(d') + (1 - p) log s(-d')],   d' = d - margin if p == 1 else d

    the cross-entropy against the soft target (distilled RLAIF, Lee et al. 2023; Constitutional
    AI soft labels, Bai et al. 2022). p = 1 gives Bradley-Terry -log s(d - margin); p = 0.5
    (a tie) gives -[log s(d) + log s(-d)] / 2, minimal (log 2) at d = 0. The margin applies to
    hard pairs only: for a soft or tied pair "by at least the margin" has no meaning.
    """
    d = d - torch.where(p == 1.0, torch.as_tensor(margin, dtype=d.dtype, device=d.device), torch.zeros_like(d))
    p = p.to(d.dtype)
    return -(p * F.logsigmoid(d) + (1.0 - p) * F.logsigmoid(-d))


def ranking_loss(
    rewards: Tensor, pairs: PairBatch, margin: float | Tensor = 0.0, reduction: str = "mean"
) -> Tensor:
    """The InstructGPT K-way ranking loss, vectorised over a batch of records (a scalar).

        loss_g = 1/|P_g| * sum_{(w,l) in P_g} pair_loss(r_w - r_l, p_wl)     (one record g)
        loss   = sum_g c_g loss_g / sum_g c_g,    c_g = record_weight_g (0 if P_g is empty)

    A record's C(K, 2) pairs (plus its tie pairs under tie_mode "soft") are ONE example, each
    pair weighted 1/|P_g| (Ouyang et al. 2022, eq. 1: treating the pairs as independent
    examples overfits within an epoch). `pair_loss` is `pair_losses` above: Bradley-Terry for
    hard wins (with `margin`), cross-entropy against p for ties and soft labels.

    Args:
        rewards: `(M,)` reward of every response of the batch, records concatenated in order.
        pairs: from `build_pair_batch` (on the rewards' device).
        margin: a float, or `(P,)` per pair (used on hard pairs only).
        reduction: "mean" -> the weighted mean above; "sum" -> its numerator
            sum_g c_g loss_g only. With gradient accumulation or several processes, sum the
            "sum" losses and divide by the total of `pairs.effective_weight.sum()` over all
            micro-batches: the result equals the "mean" loss of the whole batch.
    Returns:
        A scalar; 0 (still attached to `rewards`, so backward works) when no record has a
        pair with positive weight.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    d = rewards[pairs.winner] - rewards[pairs.loser]  # (P,)
    per_pair = pair_losses(d, pairs.p, margin)  # (P,)
    g = pairs.num_groups
    pair_sum = torch.zeros(g, dtype=per_pair.dtype, device=per_pair.device).index_add(0, pairs.group, per_pair)
    pair_count = torch.bincount(pairs.group, minlength=g).to(per_pair.dtype)  # (G,)
    weight = pairs.effective_weight.to(per_pair.dtype)  # (G,)
    per_record = pair_sum / pair_count.clamp_min(1)  # (G,)
    if reduction == "sum":
        return (weight * per_record).sum()
    total = weight.sum()
    # all weights 0 -> numerator 0, divide by 1: a 0 that still backpropagates (no host sync)
    return (weight * per_record).sum() / torch.where(total > 0, total, torch.ones_like(total))


def pairwise_accuracy(r_w: Tensor, r_l: Tensor) -> Tensor:
    """Share of pairs ranked correctly: mean_i [r_w_i > r_l_i], an exact tie counting 1/2. `(N,)` -> scalar."""
    return ((r_w > r_l).float() + 0.5 * (r_w == r_l).float()).mean()


def expected_calibration_error(prob: Tensor, label: Tensor, n_bins: int = 10) -> Tensor:
    """Expected calibration error of predicted pair probabilities (Guo et al. 2017, eq. 3).

        ECE = sum_b (n_b / N) * | mean_{i in b} prob_i - mean_{i in b} label_i |

    over `n_bins` equal-width bins of [0, 1] (bin b holds b/n <= prob < (b+1)/n; prob = 1 goes
    to the last bin; empty bins are skipped).

    Args:
        prob: `(N,)` predicted P(first beats second) = s(r_1 - r_2).
        label: `(N,)` observed outcome, 1/0 (hard) or a soft label in [0, 1].
    The orientation of a pair is arbitrary; to make the ECE independent of it, pass each pair
    both ways (prob and 1 - prob with label and 1 - label).
    """
    prob, label = prob.detach().float().flatten(), label.detach().float().flatten()
    bins = (prob * n_bins).long().clamp(0, n_bins - 1)
    count = torch.bincount(bins, minlength=n_bins).float()
    zeros = torch.zeros(n_bins, device=prob.device)
    gap = zeros.index_add(0, bins, prob) - zeros.index_add(0, bins, label)  # n_b * (mean prob - mean label)
    return gap.abs().sum() / count.sum().clamp_min(1)


def soft_label_agreement(r_1: Tensor, r_2: Tensor, p: Tensor) -> dict[str, Tensor]:
    """How well the reward model's pair probabilities match soft labels p = P(1 beats 2). `(N,)` each.

    Returns (scalars):
        `mae`: mean |s(r_1 - r_2) - p|;
        `side_agreement`: among pairs with p != 0.5, the share where s(r_1 - r_2) is on the
            same side of 0.5 as p (a model probability of exactly 0.5 counts 1/2); nan if none;
        `cross_entropy`: mean -[p log s(d) + (1 - p) log s(-d)] (its minimum is the entropy
            of the labels, not 0).
    """
    d = (r_1 - r_2).detach().float()
    p = p.detach().float()
    q = torch.sigmoid(d)
    decided = p != 0.5
    same = ((q > 0.5) == (p > 0.5)).float() * (q != 0.5).float() + 0.5 * (q == 0.5).float()
    side = same[decided].mean() if decided.any() else torch.tensor(math.nan)
    return {"mae": (q - p).abs().mean(), "side_agreement": side, "cross_entropy": pair_losses(d, p).mean()}


def normalize_stats(rewards: Tensor) -> tuple[float, float]:
    """Mean and (population) std of rewards on a reference set, to be stored with the model.

    InstructGPT normalises the reward model so that the demonstrations score mean 0; alignloop
    also scales to std 1 so that beta and the score clip mean the same for every reward model.
    """
    rewards = rewards.detach().double().flatten()
    return rewards.mean().item(), rewards.std(correction=0).item()


def normalize(rewards: Tensor, mean: float, std: float, eps: float = 1e-8) -> Tensor:
    """(rewards - mean) / max(std, eps), same shape as `rewards`."""
    return (rewards - mean) / max(std, eps)


def ensemble_stats(member_rewards: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and spread over an ensemble of reward models: `(E, B)` -> `(B,)`, `(B,)`.

    The spread is the sample std over the E members (E - 1 in the denominator); 0 for E = 1.
    """
    mean = member_rewards.mean(dim=0)
    if member_rewards.shape[0] < 2:
        return mean, torch.zeros_like(mean)
    return mean, member_rewards.std(dim=0)


def conservative_score(mean: Tensor, std: Tensor, k: float) -> Tensor:
    """mean - k * std: a lower confidence bound on the reward, to make reward hacking where the
    ensemble disagrees less attractive (Coste et al. 2023, "Reward Model Ensembles Help Mitigate
    Overoptimization", their uncertainty-weighted optimisation). Shapes `(B,)`."""
    return mean - k * std
