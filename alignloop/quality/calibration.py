"""Rater calibration on gold items and the screening that follows from it.

A gold item carries `meta.is_gold = true` and `meta.gold_ranking` (the known answer). A
rater's **gold accuracy** is the share of the gold item's strictly ordered pairs that the
rater orders the same way; a tie by the rater on a strict gold pair counts half (the
rater did not get it wrong, but did not get it right either).

**Screening** (InstructGPT screened labelers at about 75 % agreement with the researchers):
a rater with at least `min_gold` gold pairs and accuracy below `threshold` is

    downweight   weight = clip((accuracy - 0.5) / (threshold - 0.5), 0, 1): a rater at chance
                 counts for nothing, one just under the threshold counts almost fully
    exclude      weight 0
    none         weight 1 (screening reported, not applied)

Raters with too few gold pairs keep weight 1 and are reported as `unscreened`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from alignloop.quality.judgments import Judgments
from alignloop.quality.stats import wilson

ScreenMode = Literal["downweight", "exclude", "none"]


def gold_accuracy(judgments: Judgments) -> pd.DataFrame:
    """Per rater: n_gold_items, n_gold_pairs, correct (ties half), accuracy, ci_low, ci_high."""
    p = judgments.pairs
    g = p[p["is_gold"] & (p["gold"].fillna(0) != 0)]
    cols = ["rater", "n_gold_items", "n_gold_pairs", "correct", "accuracy", "ci_low", "ci_high"]
    if g.empty:
        return pd.DataFrame(columns=cols)
    credit = np.where(g["y"] == 0, 0.5, (g["y"] == g["gold"]).astype(float))
    g = g.assign(credit=credit)
    rows = []
    for rater, r in g.groupby("rater"):
        n, k = len(r), float(r["credit"].sum())
        lo, hi = wilson(k, n)
        rows.append((rater, r["item"].nunique(), n, k, k / n, lo, hi))
    return pd.DataFrame(rows, columns=cols)


def screening(
    judgments: Judgments,
    threshold: float = 0.75,
    mode: ScreenMode = "downweight",
    min_gold: int = 5,
) -> dict[str, dict[str, Any]]:
    """Per rater (every rater, gold or not): accuracy, status and weight.

    status: `pass` (accuracy >= threshold), `below` (under it), `unscreened` (fewer than
    `min_gold` gold pairs)."""
    if not 0.5 < threshold <= 1.0:
        raise ValueError(f"gold threshold {threshold}: must be in (0.5, 1]")
    acc = gold_accuracy(judgments).set_index("rater")
    out: dict[str, dict[str, Any]] = {}
    for rater in judgments.raters:
        row = acc.loc[rater] if rater in acc.index else None
        n = int(row["n_gold_pairs"]) if row is not None else 0
        a = float(row["accuracy"]) if row is not None else float("nan")
        if n < min_gold:
            status, weight = "unscreened", 1.0
        elif a >= threshold:
            status, weight = "pass", 1.0
        else:
            status = "below"
            weight = {"downweight": float(np.clip((a - 0.5) / (threshold - 0.5), 0.0, 1.0)),
                      "exclude": 0.0, "none": 1.0}[mode]
        out[rater] = {
            "accuracy": a,
            "ci": [float(row["ci_low"]), float(row["ci_high"])] if row is not None else [None, None],
            "n_gold_items": int(row["n_gold_items"]) if row is not None else 0,
            "n_gold_pairs": n,
            "status": status,
            "weight": weight,
            "threshold": threshold,
            "mode": mode,
        }
    return out


def rater_weights(screen: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {r: s["weight"] for r, s in screen.items()}
