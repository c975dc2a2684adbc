"""Agreement and bias per group of raters, and between groups.

A rater's group is their value of one attribute (`meta.rater_attributes[attribute]` in the
judgment records: the feedback export writes the raters' attributes there, the simulator
its raters' `group`); raters without it are left out of every group figure.

On the pair table (judgments.py: one vote y in {+1, 0, -1} per rater and unit (item, i, j)):

- **within(A)**: pairwise agreement among the raters of A only (agreement.py).
- **cross(A, B)**: over units with votes from both groups, the share of (a, b) rater pairs,
  a in A and b in B, whose votes are identical: sum_u sum_v n_A(u, v) n_B(u, v) /
  sum_u n_A(u) n_B(u). If the groups judged alike, cross(A, B) is about as high as within A
  and within B; `gap` = (within(A) + within(B)) / 2 - cross(A, B) > 0 says the groups
  disagree with each other more than among themselves. Intervals: bootstrap over items.
- **preference(A, B)**: per unit the group's mean vote m_A(u) in [-1, 1]; the share of
  shared units where sign(m_A) = -sign(m_B) != 0 (the two groups' majorities are opposite).
- **bias effects** per group: position = first-shown win share - 0.5 among strict votes
  where the display order is known; length = longer-wins share - 0.5 among strict votes on
  pairs of different length (dlen != 0). The difference A - B with a bootstrap interval
  over items answers "does group A prefer what group B does not?" for these two features.
- **flagged items**: a unit where each group has at least `min_votes` votes and their
  majorities are opposite; listed per item with each group's votes.

Worked example (tests/quality/test_groups.py): on one unit, A votes (+1, +1) and B votes
(-1, -1, +1): within(A) = 1, within(B) = 1/3, cross = (2 * 1 + 0 * 2) / (2 * 3) = 1/3, gap =
2/3 - 1/3 = 1/3; the majorities are opposite, so the unit is flagged with min_votes 2.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from alignloop.quality.agreement import UNIT, pairwise_agreement, pairwise_agreement_ci
from alignloop.quality.judgments import Judgment, Judgments
from alignloop.quality.stats import bootstrap_ci, ratio_bootstrap


def rater_groups(records: list[Judgment], attribute: str) -> dict[str, str]:
    """rater -> their value of `attribute` (the latest record's; raters without it left out)."""
    out: dict[str, str] = {}
    for rec in records:
        attrs = rec.meta.get("rater_attributes")
        if isinstance(attrs, dict) and attrs.get(attribute) not in (None, ""):
            out[rec.rater if rec.rater is not None else "unknown"] = str(attrs[attribute])
    return out


def attributes_seen(records: list[Judgment]) -> list[str]:
    """Every rater attribute key that occurs in the records."""
    keys: set[str] = set()
    for rec in records:
        attrs = rec.meta.get("rater_attributes")
        if isinstance(attrs, dict):
            keys |= set(attrs)
    return sorted(keys)


def _vote_counts(pairs: pd.DataFrame) -> pd.DataFrame:
    c = pairs.groupby(UNIT + ["y"]).size().unstack("y", fill_value=0)
    for v in (-1, 0, 1):
        if v not in c.columns:
            c[v] = 0
    return c[[-1, 0, 1]]


def cross_agreement_parts(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per shared unit: same = sum_v n_A(v) n_B(v), total = n_A n_B (index item, i, j)."""
    ca, cb = _vote_counts(a), _vote_counts(b)
    shared = ca.index.intersection(cb.index)
    ca, cb = ca.loc[shared], cb.loc[shared]
    same = (ca * cb).sum(axis=1)
    total = ca.sum(axis=1) * cb.sum(axis=1)
    return pd.DataFrame({"same": same, "total": total})


def cross_agreement(a: pd.DataFrame, b: pd.DataFrame) -> float:
    parts = cross_agreement_parts(a, b)
    return float(parts["same"].sum() / parts["total"].sum()) if parts["total"].sum() > 0 else float("nan")


def _effects(pairs: pd.DataFrame) -> dict[str, float]:
    """position: first-shown win share - 0.5; length: longer-wins share - 0.5 (strict votes)."""
    strict = pairs[pairs["y"] != 0]
    pos = strict[strict["first"] != 0]
    ln = strict[strict["dlen"].abs() > 1e-12]
    return {
        "position": float((np.sign(pos["y"]) == np.sign(pos["first"])).mean() - 0.5) if len(pos) else float("nan"),
        "length": float((np.sign(ln["y"]) == np.sign(ln["dlen"])).mean() - 0.5) if len(ln) else float("nan"),
        "n_position": int(len(pos)), "n_length": int(len(ln)),
    }


def _effect_gap_ci(a: pd.DataFrame, b: pd.DataFrame, key: str, n_boot: int, seed: int) -> list[float]:
    both = pd.concat([a.assign(_g=0), b.assign(_g=1)], ignore_index=True)

    def stat(t: pd.DataFrame) -> float:
        return _effects(t[t["_g"] == 0])[key] - _effects(t[t["_g"] == 1])[key]

    return list(bootstrap_ci(both, stat, n_boot, seed))


def opposite_majorities(a: pd.DataFrame, b: pd.DataFrame, min_votes: int = 1) -> pd.DataFrame:
    """Shared units with at least `min_votes` votes per group: item, i, j, mean vote and
    count per group, and `opposite` (the majorities have opposite signs)."""
    ga = a.groupby(UNIT)["y"].agg(m_a="mean", n_a="size")
    gb = b.groupby(UNIT)["y"].agg(m_b="mean", n_b="size")
    j = ga.join(gb, how="inner")
    j = j[(j["n_a"] >= min_votes) & (j["n_b"] >= min_votes)]
    j["opposite"] = np.sign(j["m_a"]) * np.sign(j["m_b"]) < 0
    return j.reset_index()


def group_report(judgments: Judgments, groups: dict[str, str], n_boot: int = 200, seed: int = 0,
                 min_votes: int = 2, max_flagged: int = 50) -> dict[str, Any]:
    """Per group and per pair of groups (module docstring); {} when fewer than one group."""
    pairs = judgments.pairs.assign(group=judgments.pairs["rater"].map(groups))
    pairs = pairs[pairs["group"].notna()]
    names = sorted(pairs["group"].unique())
    if not names:
        return {}
    per_group = {}
    for g in names:
        p = pairs[pairs["group"] == g]
        per_group[g] = {"raters": sorted(p["rater"].unique()), "votes": int(len(p)), "items": int(p["item"].nunique()),
                        "agreement": pairwise_agreement(p), "agreement_ci": list(pairwise_agreement_ci(p, n_boot, seed)),
                        **_effects(p)}
    between = []
    flagged: dict[str, dict[str, Any]] = {}
    for ga, gb in combinations(names, 2):
        a, b = pairs[pairs["group"] == ga], pairs[pairs["group"] == gb]
        parts = cross_agreement_parts(a, b)
        items = parts.index.get_level_values("item")
        cross = float(parts["same"].sum() / parts["total"].sum()) if parts["total"].sum() > 0 else float("nan")
        same_i = parts["same"].groupby(level="item").sum()
        total_i = parts["total"].groupby(level="item").sum()
        wa, wb = per_group[ga]["agreement"], per_group[gb]["agreement"]
        opp = opposite_majorities(a, b, 1)
        opp_strict = opposite_majorities(a, b, min_votes)
        row = {
            "a": ga, "b": gb, "shared_units": int(len(parts)), "shared_items": int(len(set(items))),
            "cross_agreement": cross, "cross_agreement_ci": list(ratio_bootstrap(same_i, total_i, n_boot, seed)),
            "gap": (wa + wb) / 2 - cross if np.isfinite(wa) and np.isfinite(wb) else float("nan"),
            "opposite_majority_share": float(opp["opposite"].mean()) if len(opp) else float("nan"),
            "flagged_pairs": int(opp_strict["opposite"].sum()),
            "position_difference": per_group[ga]["position"] - per_group[gb]["position"],
            "position_difference_ci": _effect_gap_ci(a, b, "position", n_boot, seed),
            "length_difference": per_group[ga]["length"] - per_group[gb]["length"],
            "length_difference_ci": _effect_gap_ci(a, b, "length", n_boot, seed),
        }
        between.append(row)
        for r in opp_strict[opp_strict["opposite"]].itertuples(index=False):
            f = flagged.setdefault(str(r.item), {"item": str(r.item), "pairs": []})
            f["pairs"].append({"i": int(r.i), "j": int(r.j), "groups": {ga: {"mean_vote": float(r.m_a), "votes": int(r.n_a)},
                                                                       gb: {"mean_vote": float(r.m_b), "votes": int(r.n_b)}}})
    flagged_list = sorted(flagged.values(), key=lambda f: f["item"])
    return {"groups": per_group, "between": between, "flagged_items": flagged_list[:max_flagged],
            "n_flagged_items": len(flagged_list), "min_votes": min_votes,
            "ungrouped_raters": sorted(set(judgments.raters) - set(groups))}
