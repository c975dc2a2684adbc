"""Bias detectors: each gives an effect size, a test statistic and a p-value; all p-values of
one report are corrected together (Holm-Bonferroni, family-wise error rate `alpha`), and a
finding is `detected` when its corrected p-value is below `alpha`.

The *leave-one-out consensus* of a vote is the mean of the OTHER raters' votes on the same
pair (in [-1, 1]); comparing a rater with it keeps the rater's own bias out of the reference.

- **position** (per rater and for the panel): in each ranking judgment, s = share of the
  other responses that the response shown first beats (ties half). Display order is random,
  so under no bias the first-shown response is a uniform draw among the K and E[s] = 1/2
  exactly, with a variance known from the ranking itself; z = sum(s - 1/2) / sqrt(sum var).
  Effect: first-shown win rate - 0.5.
- **length** (per rater): logistic regression of the rater's strict votes on the
  leave-one-out consensus, the standardised log-length difference and the display order;
  effect = the length coefficient (log-odds per standard deviation of log length; > 0 the
  longer response wins beyond what the other raters' judgment explains), one-sided Wald
  test (only a preference for the LONGER response is a finding, as the issue defines length
  bias; a negative effect is shown but never flagged: it mostly means that the other
  raters favour length).
  A whole panel that shares one length preference cannot be seen this way: check
  `longer_wins` on gold items for that.
- **leniency** (per rater, thumbs / ratings): mean of (the rater's value - the other raters'
  mean value) on the same items, one-sample t-test; > 0 lenient, < 0 harsh.
- **drift** (per rater, two sessions or more): logistic regression of "vote agrees with the
  leave-one-out consensus" on the session index scaled to [0, 1]; effect = fitted agreement
  in the last session - in the first; Wald test.
- **divergence** (per rater): the rater's agreement with the leave-one-out consensus minus
  the other raters' pooled agreement with theirs; one-sided two-proportion z-test (only
  *less* agreement is a finding).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from alignloop.quality.agreement import UNIT
from alignloop.quality.judgments import Judgments
from alignloop.quality.stats import holm, logistic_fit, z_pvalue

MIN_VOTES = 20  # a detector needs at least this many observations for a rater


def loo_consensus(pairs: pd.DataFrame) -> pd.Series:
    """Per vote: mean of the other raters' votes on the same unit (NaN if none)."""
    g = pairs.groupby(UNIT)["y"]
    total, count = g.transform("sum"), g.transform("size")
    others = count - 1
    return ((total - pairs["y"]) / others.where(others > 0)).astype(float)


def _finding(detector: str, scope: str, effect: float, z: float, p: float, n: int, **extra: Any) -> dict[str, Any]:
    return {"detector": detector, "scope": scope, "effect": float(effect), "z": float(z), "p": float(p),
            "n": int(n), **extra}


def _first_shown_shares(rankings: pd.DataFrame) -> pd.DataFrame:
    """Per judgment with a display order: s (share beaten by the first shown) and its null variance."""
    rows = []
    for r in rankings.itertuples(index=False):
        if not r.display_order or r.k < 2:
            continue
        pos = {x: t for t, tier in enumerate(r.tiers) for x in tier}
        share = np.array([
            (sum(pos[c] < pos[o] for o in range(r.k) if o != c) + 0.5 * sum(pos[c] == pos[o] for o in range(r.k) if o != c))
            / (r.k - 1) for c in range(r.k)])
        rows.append((r.rater, share[r.display_order[0]], float(np.mean((share - 0.5) ** 2))))
    return pd.DataFrame(rows, columns=["rater", "s", "var"])


def _position_test(d: pd.DataFrame, scope: str) -> dict[str, Any]:
    n, sd = len(d), float(np.sqrt(d["var"].sum()))
    z = float((d["s"] - 0.5).sum() / sd) if sd > 0 else float("nan")
    rate = float(d["s"].mean())
    half = 1.96 * sd / n if n else float("nan")
    return _finding("position", scope, rate - 0.5, z, z_pvalue(z), n, first_win_rate=rate,
                    ci=[rate - half, rate + half], effect_name="first-shown win rate - 0.5")


def position_bias(judgments: Judgments) -> list[dict[str, Any]]:
    d = _first_shown_shares(judgments.rankings)
    if d.empty:
        return []
    out = [_position_test(d, "panel")]
    out += [_position_test(g, str(r)) for r, g in d.groupby("rater") if len(g) >= MIN_VOTES]
    return out


def length_bias(judgments: Judgments) -> list[dict[str, Any]]:
    p = judgments.pairs
    if p.empty:
        return []
    p = p.assign(c=loo_consensus(p))
    out = []
    for rater, g in p.groupby("rater"):
        g = g[(g["y"] != 0) & g["c"].notna()]
        if len(g) < MIN_VOTES or g["dlen"].std() < 1e-9:
            continue
        x = np.column_stack([np.ones(len(g)), g["c"], g["dlen"], g["first"]])
        coef, se = logistic_fit(x, (g["y"] > 0).to_numpy(float))
        z = coef[2] / se[2]
        longer = g[g["dlen"] != 0]
        out.append(_finding("length", str(rater), coef[2], z, float(stats.norm.sf(z)), len(g),
                            ci=[coef[2] - 1.96 * se[2], coef[2] + 1.96 * se[2]],
                            longer_wins=float(((longer["y"] > 0) == (longer["dlen"] > 0)).mean()),
                            effect_name="log-odds per sd of log length, beyond consensus"))
    return out


def longer_wins(judgments: Judgments) -> dict[str, float]:
    """Descriptive: share of strict votes won by the longer response, all items and gold items
    (where the gold ranking says how often the longer one *should* win)."""
    p = judgments.pairs
    p = p[(p["y"] != 0) & (p["dlen"] != 0)]
    out = {"all": float(((p["y"] > 0) == (p["dlen"] > 0)).mean()) if len(p) else float("nan")}
    g = p[p["is_gold"] & (p["gold"].fillna(0) != 0)]
    if len(g):
        out["gold_items_votes"] = float(((g["y"] > 0) == (g["dlen"] > 0)).mean())
        out["gold_items_truth"] = float(((g["gold"] > 0) == (g["dlen"] > 0)).mean())
    return out


def leniency(judgments: Judgments) -> list[dict[str, Any]]:
    t = judgments.thumbs
    if t.empty:
        return []
    g = t.groupby("item")["value"]
    total, count = g.transform("sum"), g.transform("size")
    t = t.assign(d=t["value"] - (total - t["value"]) / (count - 1).where(count > 1))
    out = []
    for rater, r in t.dropna(subset=["d"]).groupby("rater"):
        if len(r) < MIN_VOTES:
            continue
        if r["d"].std() == 0:
            z, p = (0.0, 1.0) if r["d"].mean() == 0 else (np.inf * np.sign(r["d"].mean()), 0.0)
        else:
            res = stats.ttest_1samp(r["d"], 0.0)
            z, p = float(res.statistic), float(res.pvalue)
        mean = float(r["d"].mean())
        out.append(_finding("leniency", str(rater), mean, z, p, len(r), up_rate=float(r["value"].mean()),
                            direction="lenient" if mean > 0 else "harsh",
                            effect_name="value minus other raters' mean on the same items"))
    return out


def _agreement_votes(pairs: pd.DataFrame) -> pd.DataFrame:
    p = pairs.assign(c=loo_consensus(pairs))
    p = p[(p["y"] != 0) & p["c"].notna() & (p["c"] != 0)]
    return p.assign(agree=(np.sign(p["c"]) == p["y"]).astype(float))


def drift(judgments: Judgments) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """(findings, per rater the agreement with the leave-one-out consensus by session)."""
    a = _agreement_votes(judgments.pairs) if not judgments.pairs.empty else pd.DataFrame()
    out, by_session = [], {}
    if a.empty:
        return out, by_session
    for rater, g in a.groupby("rater"):
        s = g.groupby("session")["agree"].agg(["mean", "size"])
        by_session[str(rater)] = [{"session": int(k), "agreement": float(v["mean"]), "n": int(v["size"])}
                                  for k, v in s.iterrows()]
        sessions = sorted(g["session"].unique())
        if len(sessions) < 2 or len(g) < MIN_VOTES:
            continue
        rank = g["session"].map({v: k / (len(sessions) - 1) for k, v in enumerate(sessions)}).to_numpy(float)
        coef, se = logistic_fit(np.column_stack([np.ones(len(g)), rank]), g["agree"].to_numpy())
        z = coef[1] / se[1]
        first, last = 1 / (1 + np.exp(-coef[0])), 1 / (1 + np.exp(-coef.sum()))
        out.append(_finding("drift", str(rater), last - first, z, z_pvalue(z), len(g), n_sessions=len(sessions),
                            effect_name="agreement with consensus, last session - first"))
    return out, by_session


def divergence(judgments: Judgments) -> list[dict[str, Any]]:
    a = _agreement_votes(judgments.pairs) if not judgments.pairs.empty else pd.DataFrame()
    out = []
    if a.empty or a["rater"].nunique() < 2:
        return out
    for rater, g in a.groupby("rater"):
        o = a[a["rater"] != rater]
        if len(g) < MIN_VOTES:
            continue
        pr, po = g["agree"].mean(), o["agree"].mean()
        pool = a["agree"].mean()
        se = np.sqrt(pool * (1 - pool) * (1 / len(g) + 1 / len(o)))
        z = (pr - po) / se if se > 0 else 0.0
        out.append(_finding("divergence", str(rater), pr - po, z, float(stats.norm.cdf(z)), len(g),
                            agreement=float(pr), others_agreement=float(po),
                            effect_name="agreement with consensus minus the other raters'"))
    return out


def detect_biases(judgments: Judgments, alpha: float = 0.05) -> dict[str, Any]:
    """Run every detector; Holm-correct all p-values together; flag `detected`."""
    drift_findings, by_session = drift(judgments)
    findings = (position_bias(judgments) + length_bias(judgments) + leniency(judgments)
                + drift_findings + divergence(judgments))
    adjusted = holm([f["p"] for f in findings])
    for f, pa in zip(findings, adjusted):
        f["p_adjusted"] = pa
        f["detected"] = bool(np.isfinite(pa) and pa < alpha)
    return {"alpha": alpha, "correction": "holm", "n_tests": len(findings), "findings": findings,
            "drift_sessions": by_session, "longer_wins": longer_wins(judgments) if not judgments.pairs.empty else {}}


def detected(bias_report: dict[str, Any]) -> set[tuple[str, str]]:
    """{(detector, scope)} of the detected findings."""
    return {(f["detector"], f["scope"]) for f in bias_report["findings"] if f["detected"]}
