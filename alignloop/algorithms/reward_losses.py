"""Reward-model losses: Bradley-Terry, K-way rankings (InstructGPT), ties, soft labels, ensembles.

Notation: s = sigmoid, d = r_w - r_l for a (winner, loser) pair; M responses, P pairs and
G comparison records (groups) in a batch. Losses are in nats.

A batch of records is scored in ONE forward pass: the M responses of all records are
concatenated (record 0's K_0 responses, then record 1's, ...) into a `(M,)` reward tensor;
the pairs are index tensors into it, built once per batch by the pure-Python
`build_pair_batch`. `ranking_loss` is then a few gathers and one scatter, no loop over records;
`ensemble_ranking_loss` is the same over the E heads of an ensemble, `(M, E)` rewards.

Accuracy, calibration, normalisation and ensemble statistics: `reward_metrics`.
"""

from __future__ import annotations

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
    Move it with `.to(device)`. Accuracy (`reward_metrics`):
    `keep = pairs.is_decided; pairwise_accuracy(rewards[pairs.winner][keep], rewards[pairs.loser][keep])`.
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

    @property
    def is_decided(self) -> Tensor:
        """`(P,)` bool, True where the label favours `winner` (p > 0.5): the pairs accuracy counts."""
        return self.p > 0.5

    def to(self, device: torch.device | str) -> "PairBatch":
        return PairBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def records(self, start: int, stop: int) -> "PairBatch":
        """The pairs of records start..stop-1, indexed into those records' own responses: what
        `build_pair_batch` of those records alone gives (a micro-batch of a batch built once)."""
        keep = (self.group >= start) & (self.group < stop)
        offset = self.num_responses[:start].sum()
        return PairBatch(winner=self.winner[keep] - offset, loser=self.loser[keep] - offset, p=self.p[keep],
                         group=self.group[keep] - start, record_weight=self.record_weight[start:stop],
                         num_responses=self.num_responses[start:stop])


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


def record_losses(rewards: Tensor, pairs: PairBatch, margin: float | Tensor = 0.0) -> Tensor:
    """Each record's mean pair loss, loss_g = 1/|P_g| sum_{(w,l) in P_g} pair_loss(r_w - r_l, p_wl).

    `rewards` `(M,)` -> `(G,)`, or `(M, E)` (E ensemble heads) -> `(G, E)`; 0 for a record with
    no pair. `margin`: a float, or `(P,)` per pair (hard pairs only).
    """
    d = rewards[pairs.winner] - rewards[pairs.loser]  # (P,) or (P, E)
    extra = (1,) * (d.dim() - 1)
    margin = torch.as_tensor(margin, dtype=d.dtype, device=d.device)
    per_pair = pair_losses(d, pairs.p.view(-1, *extra), margin.view(-1, *extra) if margin.dim() else margin)
    g = pairs.num_groups
    pair_sum = torch.zeros((g, *per_pair.shape[1:]), dtype=per_pair.dtype, device=per_pair.device)
    pair_sum = pair_sum.index_add(0, pairs.group, per_pair)
    pair_count = torch.bincount(pairs.group, minlength=g).to(per_pair.dtype)  # (G,)
    return pair_sum / pair_count.clamp_min(1).view(-1, *extra)


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
    per_record = record_losses(rewards, pairs, margin)  # (G,)
    weight = pairs.effective_weight.to(per_record.dtype)  # (G,)
    if reduction == "sum":
        return (weight * per_record).sum()
    total = weight.sum()
    # all weights 0 -> numerator 0, divide by 1: a 0 that still backpropagates (no host sync)
    return (weight * per_record).sum() / torch.where(total > 0, total, torch.ones_like(total))


def ensemble_ranking_loss(rewards: Tensor, pairs: PairBatch, counts: Tensor, denominators: Tensor,
                          margin: float | Tensor = 0.0) -> Tensor:
    """The ranking loss of E ensemble heads, each on its own resample of the records (a scalar).

        loss = sum_e  sum_g c_eg loss_eg / D_e,    c_eg = record_weight_g x counts_eg (0 if P_g is empty)

    with loss_eg from `record_losses` on head e's rewards. Head e's term is `ranking_loss`
    (reduction "sum") of its rewards with record weights record_weight x counts[e], divided by
    D_e: pass D_e = sum_g c_eg over the WHOLE global batch (every micro-batch, every process),
    and the summed micro-batch losses equal each head's "mean" loss of that batch, added over
    the heads.

    Args:
        rewards: `(M, E)` rewards of the batch's responses under each head.
        pairs: from `build_pair_batch`, record weights unscaled.
        counts: `(E, G)` how often each head sees each record (bootstrap counts; ones for all).
        denominators: `(E,)` D_e as above (> 0).
    """
    per_record = record_losses(rewards, pairs, margin)  # (G, E)
    c = (pairs.effective_weight.unsqueeze(0) * counts.to(pairs.record_weight)).to(per_record.dtype)  # (E, G)
    return ((c * per_record.T).sum(dim=1) / denominators.to(per_record.dtype)).sum()
