"""Balancing feedback sources: per-rater label weights by group, by source, from gold accuracy,
and from an audit's recommendations; and how many consensus pairs change side because of them.

A rater's weight is the product of the factors that apply (each 1 when not asked for):

- **balance by group** (`balance_weights`): rater r of group g gets N / (G * N_g), N the
  labels of all grouped raters, N_g those of group g, G the number of groups; so each group's
  labels weigh N / G in total, whatever its size: a group that labelled three times as much
  does not count three times as much. Raters without the attribute keep 1.
- **set weights** (`parse_weights`, `set_weights`): `expert=2, crowd=1` multiplies the weight
  of every rater whose group value (or, when no group matches, whose records' `source`) is
  named.
- **from gold accuracy** (`gold_weights`): crowd-kit's `GoldMajorityVote` estimates each
  rater's accuracy a on the gold pairs; the weight is the log-odds log(a / (1 - a)) clipped
  to [0, 4] (a at chance or below counts nothing), which is the optimal weight of a weighted
  majority of independent voters (Nitzan & Paroush 1982). Raters without gold keep the
  median weight of those with gold (1 when nobody has gold).
- **audit** (`apply_audit`): an `alignloop quality audit` file's recommendations: `exclude`
  drops the rater's judgments (all, or those submitted at or after `since`), `reweight`
  multiplies the weight by `weight`, `retrain` keeps the labels and applies its `weight`
  when it has one (the audit gives the recent gold accuracy's screening weight).

The weights multiply the screening weights; `majority` uses them as vote weights and `raw`
writes them into each record's `weight` (the reward model reads `weight`). The model-based
methods (dawid-skene, noisy-bt) learn every rater's reliability themselves and cannot take
vote weights, so balancing asks for majority or raw.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alignloop.quality.judgments import Judgment, Judgments, gold_pairs

MAX_GOLD_WEIGHT = 4.0


def balance_weights(judgments: Judgments, groups: dict[str, str]) -> dict[str, float]:
    """rater -> N / (G * N_g) (module docstring); ungrouped raters are left out (weight 1)."""
    counts = judgments.rankings.groupby("rater").size()
    counts = counts[counts.index.isin(list(groups))]
    if counts.empty:
        return {}
    per_group = counts.groupby(counts.index.map(groups)).sum()
    n, g = float(per_group.sum()), len(per_group)
    return {str(r): n / (g * float(per_group[groups[r]])) for r in counts.index}


def parse_weights(spec: str) -> dict[str, float]:
    """'expert=2, crowd=1' -> {"expert": 2.0, "crowd": 1.0}; a clear error naming the bad part."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        try:
            w = float(value) if sep else float("nan")
        except ValueError:
            w = float("nan")
        if not key.strip() or not np.isfinite(w) or w < 0:
            raise ValueError(f"--weights {spec!r}: {part!r} is not name=weight with a weight >= 0")
        out[key.strip()] = w
    if not out:
        raise ValueError(f"--weights {spec!r}: give name=weight pairs, e.g. expert=2,crowd=1")
    return out


def set_weights(records: list[Judgment], groups: dict[str, str], named: dict[str, float]) -> dict[str, float]:
    """rater -> the weight named for their group value, else for their records' source."""
    out: dict[str, float] = {}
    for rec in records:
        rater = rec.rater if rec.rater is not None else "unknown"
        if rater in out:
            continue
        g = groups.get(rater)
        if g is not None and g in named:
            out[rater] = named[g]
        elif rec.source in named:
            out[rater] = named[rec.source]
    return out


def gold_weights(judgments: Judgments) -> dict[str, float]:
    """rater -> clip(log(a / (1 - a)), 0, 4) with a from crowd-kit's GoldMajorityVote on the
    strict gold pairs; raters without gold get the median (1 when nobody has gold)."""
    from crowdkit.aggregation import GoldMajorityVote

    p = judgments.pairs
    g = p[p["is_gold"] & (p["gold"].fillna(0) != 0) & (p["y"] != 0)]
    raters = judgments.raters
    if g.empty:
        return {r: 1.0 for r in raters}
    task = g["item"].astype(str) + "\x1f" + g["i"].astype(str) + "\x1f" + g["j"].astype(str)
    data = pd.DataFrame({"task": task.to_numpy(), "worker": g["rater"].to_numpy(), "label": (g["y"] > 0).astype(int)})
    truth = pd.Series((g["gold"] > 0).astype(int).to_numpy(), index=task.to_numpy())
    truth = truth[~truth.index.duplicated()]
    with warnings.catch_warnings():  # crowd-kit 1.4.2 uses pandas keywords that pandas 3 deprecates
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*inplace keyword.*")
        skills = GoldMajorityVote().fit(data, truth).skills_
    a = skills.clip(1e-3, 1 - 1e-3)
    w = np.clip(np.log(a / (1 - a)), 0.0, MAX_GOLD_WEIGHT)
    out = {str(r): float(v) for r, v in w.items()}
    fill = float(np.median(list(out.values()))) if out else 1.0
    return {r: out.get(r, fill) for r in raters}


def combine(*weights: dict[str, float]) -> dict[str, float]:
    """The product per rater of several weight maps (a rater missing from one counts 1 there)."""
    out: dict[str, float] = {}
    for w in weights:
        for r, v in w.items():
            out[r] = out.get(r, 1.0) * v
    return out


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    """The recommendations of an `alignloop quality audit` JSON file, checked."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--apply-audit {path}: cannot read it as JSON ({err})") from None
    recs = data.get("recommendations") if isinstance(data, dict) else None
    if not isinstance(recs, list):
        raise ValueError(f"--apply-audit {path}: no 'recommendations' list (write it with alignloop quality audit)")
    for n, r in enumerate(recs):
        if not isinstance(r, dict) or r.get("action") not in ("exclude", "reweight", "retrain") or \
                not isinstance(r.get("rater"), str):
            raise ValueError(f"--apply-audit {path}: recommendations[{n}]: needs 'rater' and 'action' "
                             "(exclude, reweight or retrain)")
        if r["action"] == "reweight" and not (isinstance(r.get("weight"), (int, float)) and r["weight"] >= 0):
            raise ValueError(f"--apply-audit {path}: recommendations[{n}]: reweight needs a 'weight' >= 0")
    return recs


def apply_audit(records: list[Judgment], recommendations: list[dict[str, Any]]) -> tuple[list[Judgment], dict[str, float], dict[str, int]]:
    """(records left, rater -> weight factor, counts of what was applied: excluded judgments,
    reweighted raters, raters to retrain)."""
    from alignloop.quality.judgments import _time

    since: dict[str, float] = {}
    weights: dict[str, float] = {}
    retrain = 0
    for r in recommendations:
        if r["action"] == "exclude":
            t = _time(r.get("since")) if r.get("since") else -np.inf
            since[r["rater"]] = min(since.get(r["rater"], np.inf), t)
        elif r["action"] == "reweight":
            weights[r["rater"]] = weights.get(r["rater"], 1.0) * float(r["weight"])
        else:
            retrain += 1
            if isinstance(r.get("weight"), (int, float)):
                weights[r["rater"]] = weights.get(r["rater"], 1.0) * float(r["weight"])
    kept = []
    for rec in records:
        rater = rec.rater if rec.rater is not None else "unknown"
        if rater in since:
            t = _time(rec.meta.get("submitted_at"))
            if since[rater] == -np.inf or not np.isfinite(t) or t >= since[rater]:
                continue
        kept.append(rec)
    return kept, weights, {"excluded_judgments": len(records) - len(kept), "reweighted_raters": len(weights),
                           "retrain": retrain}


def changed_sides(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, int]:
    """Units (item, i, j) whose consensus side (p > 1/2, p < 1/2 or a tie) differs between two
    consensus tables: changed (any change of side, ties included), flipped (from one response
    to the other), units compared, and units of `before` missing from `after` (lost)."""
    m = before[["item", "i", "j", "p"]].merge(after[["item", "i", "j", "p"]], on=["item", "i", "j"],
                                               suffixes=("_before", "_after"))
    sb, sa = np.sign(m["p_before"] - 0.5), np.sign(m["p_after"] - 0.5)
    return {"changed": int((sb != sa).sum()), "units": int(len(m)), "flipped": int(((sb * sa) < 0).sum()),
            "lost": int(len(before) - len(m))}
