"""Inter-rater agreement on the long pair table (see judgments.py).

A *unit* is one pair of responses (item, i, j); a rater's *vote* on it is y in {+1, 0, -1}
(i better, tie, j better).

- **Pairwise agreement** (as InstructGPT reports it): over all units and all pairs of raters
  who voted on the unit, the share of rater pairs whose votes are identical. On a unit with
  vote counts n_+, n_0, n_- (n in all), agreeing pairs = C(n_+, 2) + C(n_0, 2) + C(n_-, 2)
  out of C(n, 2). Chance level for two coin-flipping raters is 0.5.
- **Krippendorff's alpha** (the `krippendorff` package), ordinal, raters x units with the
  votes as values: 1 perfect agreement, 0 chance, < 0 systematic disagreement.
- **Kendall's tau-b** between two raters, pooled over the units both voted on:
  (C - D) / sqrt((C + D + T_a)(C + D + T_b)), C / D = same / opposite strict votes, T_a =
  units where only rater a tied.
- **Kendall's W** per item (K >= 2 responses, m >= 2 raters): 12 S / (m^2 (K^3 - K) -
  m sum T), S = sum over responses of (rank sum - mean rank sum)^2, T = sum of (t^3 - t)
  over each rater's tie groups. 1 = all raters rank identically, 0 = no agreement.

Worked example: three raters vote (+1, +1, -1) on every unit: pairwise agreement 1/3;
if the units alternate (+1, +1, -1) / (-1, -1, +1), alpha = 1 - (2/3) / (6/11) = -2/9.
"""

from __future__ import annotations

from typing import Any

import krippendorff
import numpy as np
import pandas as pd

from alignloop.quality.judgments import Judgments
from alignloop.quality.stats import bootstrap_ci, ratio_bootstrap

UNIT = ["item", "i", "j"]


def _counts(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per unit: columns -1, 0, 1 (vote counts) and n."""
    c = pairs.groupby(UNIT + ["y"]).size().unstack("y", fill_value=0)
    for v in (-1, 0, 1):
        if v not in c.columns:
            c[v] = 0
    c = c[[-1, 0, 1]]
    c["n"] = c.sum(axis=1)
    return c


def _agreeing(c: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(agreeing rater pairs, rater pairs) per unit."""
    agree = sum(c[v] * (c[v] - 1) / 2 for v in (-1, 0, 1))
    total = c["n"] * (c["n"] - 1) / 2
    return agree.to_numpy(float), total.to_numpy(float)


def pairwise_agreement(pairs: pd.DataFrame) -> float:
    """Share of (rater pair, unit) combinations with identical votes (NaN if none)."""
    if pairs.empty:
        return float("nan")
    agree, total = _agreeing(_counts(pairs))
    return float(agree.sum() / total.sum()) if total.sum() > 0 else float("nan")


def _per_item(values: np.ndarray, items: pd.Index) -> np.ndarray:
    return pd.Series(values, index=items).groupby(level=0).sum().to_numpy(float)


def pairwise_agreement_ci(pairs: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval over items."""
    if pairs.empty:
        return float("nan"), float("nan")
    c = _counts(pairs)
    agree, total = _agreeing(c)
    items = c.index.get_level_values("item")
    return ratio_bootstrap(_per_item(agree, items), _per_item(total, items), n_boot, seed)


def krippendorff_alpha(pairs: pd.DataFrame) -> float:
    """Ordinal Krippendorff's alpha over units (item, i, j); NaN when undefined (fewer than
    two distinct votes, or no unit with two raters)."""
    if pairs.empty or pairs["y"].nunique() < 2:
        return float("nan")
    table = pairs.pivot_table(index="rater", columns=UNIT, values="y", aggfunc="last")
    if (table.notna().sum(axis=0) >= 2).sum() == 0:
        return float("nan")
    return float(krippendorff.alpha(reliability_data=table.to_numpy(float), level_of_measurement="ordinal",
                                    value_domain=[-1.0, 0.0, 1.0]))


def rater_vs_others(pairs: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per rater: share of the other raters' votes on the same units that equal this rater's
    vote, with a bootstrap interval over items."""
    out: dict[str, dict[str, float]] = {}
    if pairs.empty:
        return out
    c = _counts(pairs)
    joined = pairs.join(c, on=UNIT)
    same = np.choose(joined["y"].to_numpy() + 1, [joined[-1], joined[0], joined[1]]) - 1
    joined = joined.assign(same=same, others=joined["n"] - 1)
    for rater, g in joined.groupby("rater"):
        per_item = g.groupby("item")[["same", "others"]].sum()
        den = per_item["others"].sum()
        out[str(rater)] = {
            "agreement": float(per_item["same"].sum() / den) if den > 0 else float("nan"),
            "ci": list(ratio_bootstrap(per_item["same"], per_item["others"], n_boot, seed)),
            "n_votes": int(len(g)),
            "n_comparisons": int(den),
        }
    return out


def rater_matrix(pairs: pd.DataFrame) -> dict[str, Any]:
    """Rater x rater pairwise agreement, Kendall's tau-b and number of shared units."""
    raters = sorted(pairs["rater"].unique()) if not pairs.empty else []
    r = len(raters)
    agree = np.full((r, r), np.nan)
    tau = np.full((r, r), np.nan)
    shared = np.zeros((r, r), dtype=int)
    if r:
        v = pairs[UNIT + ["rater", "y"]]
        m = v.merge(v, on=UNIT, suffixes=("_a", "_b"))
        m = m[m["rater_a"] != m["rater_b"]]
        index = {x: k for k, x in enumerate(raters)}
        for (a, b), g in m.groupby(["rater_a", "rater_b"]):
            ya, yb = g["y_a"].to_numpy(), g["y_b"].to_numpy()
            conc = np.sum((ya * yb) > 0)
            disc = np.sum((ya * yb) < 0)
            ta = np.sum((ya == 0) & (yb != 0))
            tb = np.sum((yb == 0) & (ya != 0))
            den = np.sqrt(float((conc + disc + ta) * (conc + disc + tb)))
            ka, kb = index[a], index[b]
            agree[ka, kb] = float(np.mean(ya == yb))
            tau[ka, kb] = (conc - disc) / den if den > 0 else np.nan
            shared[ka, kb] = len(g)
        for k in range(r):
            agree[k, k], tau[k, k] = 1.0, 1.0
    return {"raters": raters, "agreement": _nan_to_none(agree), "tau": _nan_to_none(tau), "shared": shared.tolist()}


def _nan_to_none(a: np.ndarray) -> list:
    return [[None if not np.isfinite(x) else float(x) for x in row] for row in a]


def tie_ranks(tiers: list[list[int]], k: int) -> np.ndarray:
    """Rank of each response (1 = best), ties get the mean of their ranks."""
    ranks = np.zeros(k)
    start = 1
    for tier in tiers:
        ranks[tier] = start + (len(tier) - 1) / 2
        start += len(tier)
    return ranks


def kendall_w(tier_lists: list[list[list[int]]], k: int) -> float:
    """Kendall's W of m raters ranking the same k responses (tie-corrected); NaN when m < 2
    or when every rater tied everything."""
    m = len(tier_lists)
    if m < 2 or k < 2:
        return float("nan")
    ranks = np.array([tie_ranks(t, k) for t in tier_lists])  # (m, k)
    rank_sums = ranks.sum(axis=0)
    s = float(np.sum((rank_sums - rank_sums.mean()) ** 2))
    ties = sum(len(g) ** 3 - len(g) for t in tier_lists for g in t)
    den = m * m * (k ** 3 - k) - m * ties
    return 12 * s / den if den > 0 else float("nan")


def kendall_w_items(judgments: Judgments) -> pd.Series:
    """Kendall's W per item (items with at least two raters)."""
    out = {}
    for item, g in judgments.rankings.groupby("item"):
        if len(g) >= 2:
            out[item] = kendall_w(list(g["tiers"]), int(g["k"].iloc[0]))
    return pd.Series(out, dtype=float)


def agreement_with_consensus(pairs: pd.DataFrame, consensus: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per rater: share of its strict votes on units where the consensus is strict (p != 0.5)
    that go the consensus's way. `consensus` has columns item, i, j, p (P(i better))."""
    c = consensus[UNIT + ["p"]]
    m = pairs[pairs["y"] != 0].merge(c, on=UNIT)
    m = m[m["p"] != 0.5]
    out = {}
    for rater, g in m.groupby("rater"):
        hit = (g["y"] > 0) == (g["p"] > 0.5)
        out[str(rater)] = {"agreement": float(hit.mean()), "n_votes": int(len(g))}
    return out


def agreement_block(judgments: Judgments, n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """Headline figures for one set of judgments (the whole panel or one campaign)."""
    p = judgments.pairs
    w = kendall_w_items(judgments)
    multi = p.groupby(UNIT)["rater"].transform("nunique") >= 2 if not p.empty else pd.Series(dtype=bool)
    return {
        "pairwise_agreement": pairwise_agreement(p),
        "pairwise_agreement_ci": list(pairwise_agreement_ci(p, n_boot, seed)),
        "krippendorff_alpha": krippendorff_alpha(p),
        "krippendorff_alpha_ci": list(bootstrap_ci(p, krippendorff_alpha, min(n_boot, 100), seed)),
        "kendall_w_mean": float(w.mean()) if len(w) else float("nan"),
        "kendall_w_ci": list(ratio_bootstrap(w.to_numpy(), np.ones(len(w)), n_boot, seed)) if len(w) else [None, None],
        "n_items": int(p["item"].nunique()) if not p.empty else 0,
        "n_units_multi_rater": int(p[multi][UNIT].drop_duplicates().shape[0]) if not p.empty else 0,
        "n_raters": int(p["rater"].nunique()) if not p.empty else 0,
        "n_judgments": int(judgments.rankings.shape[0]),
    }


def agreement_summary(judgments: Judgments, n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """Overall, per campaign and per rater agreement, with bootstrap intervals over items."""
    campaigns = sorted(judgments.rankings["campaign"].unique()) if not judgments.rankings.empty else []
    return {
        "overall": agreement_block(judgments, n_boot, seed),
        "campaigns": {c: agreement_block(judgments.subset("campaign", c), n_boot, seed) for c in campaigns}
        if len(campaigns) > 1 else {},
        "raters": rater_vs_others(judgments.pairs, n_boot, seed),
        "matrix": rater_matrix(judgments.pairs),
    }
