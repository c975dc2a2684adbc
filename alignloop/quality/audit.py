"""Auditing the feedback process: a campaign's labels over time, per rater and per group, with
alerts and a recommendation list that `alignloop quality consensus --apply-audit` applies.

Per day (UTC date of submission) and rater, per day and group, and per rater overall:
judgments, agreement with the other raters' votes on the same pairs (all days), gold accuracy
(strict gold pairs, a tie half), position effect (first-shown win share - 0.5), length effect
(longer-wins share - 0.5), median time per item, skip rate (skipped / (answered + skipped),
from the database only) and unsafe rate (judgments flagging a response unsafe).

**Drift alert** (gold accuracy drifting down). A rater's gold votes in time order: their
first `window` (the baseline, when they started) against their last `window` (at least
2 * window votes). With c right answers (ties count as wrong here) of the last window and C
of the first, Fisher's exact test asks whether the recent rate is lower (one-sided). The alert fires when p < alpha / R, R the
number of raters tested (Bonferroni): for raters whose accuracy does not change, the chance
that an audit raises any drift alert is at most alpha (Fisher's test is exact, hence
conservative: tests/quality/test_audit.py measures the rate on stable simulated raters).

**Speeding alert** (time per item collapses). The rater's last `window` judgments against
their first `window`: the alert fires when the recent median time is below `speed_ratio`
times the first window's median *and* a one-sided Mann-Whitney U test of recent < first
gives p < alpha / R. `since` is where it started: the first judgment of the earliest
trailing window of `window` judgments from which on every window's median stays below
`speed_ratio` times the baseline median.

**Recommendations** (one per rater at most, the strongest applies):

    exclude   speeding alert (drop the judgments from `since` on), or overall gold accuracy
              at or below `exclude_below` (drop all)
    retrain   drift alert (send the rater through a practice round again), with `weight`:
              their recent gold accuracy as screening weighs it, applied to their labels
    reweight  overall gold accuracy below `threshold` (weight clip((a - 0.5) / (threshold -
              0.5), 0, 1), as calibration.py screens)
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact, mannwhitneyu

from alignloop.data.io import atomic_path
from alignloop.quality.agreement import UNIT
from alignloop.quality.groups import _effects
from alignloop.quality.judgments import Judgment, Judgments, load_judgments


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).date().isoformat() if np.isfinite(t) else "unknown"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


def drift_test(correct: np.ndarray, window: int) -> dict[str, Any] | None:
    """One-sided Fisher exact test: are the last `window` answers (1 right, 0 wrong) right less
    often than the first `window`? None with fewer than 2 * window answers."""
    correct = np.asarray(correct, int)
    if len(correct) < 2 * window:
        return None
    recent, before = correct[-window:], correct[:window]
    table = [[int(recent.sum()), int(window - recent.sum())], [int(before.sum()), int(len(before) - before.sum())]]
    _, p = fisher_exact(table, alternative="less")
    return {"recent": float(recent.mean()), "before": float(before.mean()), "p": float(p), "n_recent": window,
            "n_before": int(len(before))}


def speed_test(times: np.ndarray, window: int, ratio: float) -> dict[str, Any] | None:
    """Last `window` times against the first `window`: medians, their ratio, a one-sided
    Mann-Whitney U p-value (recent faster), and `start`: the index where the collapse began
    (module docstring; None when the recent window has not collapsed). None with fewer than
    2 * window timed judgments (`times` in submission order, NaN for unknown)."""
    times = np.asarray(times, float)
    known = np.flatnonzero(np.isfinite(times))
    if len(known) < 2 * window:
        return None
    t = times[known]
    recent, before = t[-window:], t[:window]
    med_r, med_b = float(np.median(recent)), float(np.median(before))
    p = float(mannwhitneyu(recent, before, alternative="less").pvalue)
    collapsed = bool(med_b > 0 and med_r < ratio * med_b)
    start = None
    if collapsed:
        medians = np.array([np.median(t[k:k + window]) for k in range(len(t) - window + 1)])
        below = medians < ratio * med_b
        k = len(below) - 1
        while k > 0 and below[k - 1]:
            k -= 1
        start = int(known[k])
    return {"recent_median_s": med_r, "before_median_s": med_b, "ratio": med_r / med_b if med_b > 0 else float("nan"),
            "p": p, "collapsed": collapsed, "start": start}


def _agreement_parts(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per vote: same = other raters' identical votes on the unit, others = other raters' votes."""
    c = pairs.groupby(UNIT + ["y"]).size().unstack("y", fill_value=0)
    for v in (-1, 0, 1):
        if v not in c.columns:
            c[v] = 0
    n = c[[-1, 0, 1]].sum(axis=1).rename("n")
    j = pairs.join(c, on=UNIT).join(n, on=UNIT)
    same = np.choose(j["y"].to_numpy() + 1, [j[-1], j[0], j[1]]) - 1
    return pairs.assign(same=same, others=(j["n"] - 1).to_numpy())


def _figures(p: pd.DataFrame, r: pd.DataFrame, skips: int | None) -> dict[str, Any]:
    """The audit figures of one slice: p its pair votes (with same/others), r its judgments."""
    g = p[p["is_gold"] & (p["gold"].fillna(0) != 0)]
    credit = np.where(g["y"] == 0, 0.5, (g["y"] == g["gold"]).astype(float))
    others = float(p["others"].sum())
    n = int(len(r))
    eff = _effects(p)
    out = {"judgments": n, "agreement": float(p["same"].sum() / others) if others > 0 else None,
           "gold_accuracy": float(credit.mean()) if len(g) else None, "gold_pairs": int(len(g)),
           "position_effect": eff["position"], "length_effect": eff["length"],
           "median_time_s": float(r["time_spent_s"].median()) if r["time_spent_s"].notna().any() else None,
           "unsafe_rate": float(r["unsafe"].mean()) if n else None,
           "skip_rate": (skips / (skips + n) if skips + n else None) if skips is not None else None}
    return out


def audit(records: list[Judgment], skips: dict[tuple[str, str], int] | None = None,
          groups: dict[str, str] | None = None, window: int = 40, alpha: float = 0.05, speed_ratio: float = 0.5,
          threshold: float = 0.75, exclude_below: float = 0.55) -> dict[str, Any]:
    """The audit of ranking judgments (module docstring). `skips`: (rater, day) -> skipped
    assignments (from the database; None: unknown); `groups`: rater -> group."""
    records = [r for r in records if r.source != "ai" and not r.meta.get("abstained")]
    j: Judgments = load_judgments(records)
    rk = j.rankings
    if rk.empty:
        raise ValueError("audit: no ranking judgments")
    groups = groups or {}
    unsafe = {}
    for n, rec in enumerate(records):
        unsafe[n] = bool(rec.meta.get("unsafe"))
    rk = rk.assign(day=rk["t"].map(_day), unsafe=rk["judgment"].map(unsafe).astype(bool),
                   group=rk["rater"].map(groups))
    pairs = _agreement_parts(j.pairs)
    pairs = pairs.assign(day=pairs["t"].map(_day), group=pairs["rater"].map(groups))
    skips = skips

    def skip_count(rater: str | None, day: str | None, group: str | None = None) -> int | None:
        if skips is None:
            return None
        return sum(n for (r, d), n in skips.items() if (rater is None or r == rater) and (day is None or d == day)
                   and (group is None or groups.get(r) == group))

    per_day_rater = [{"day": d, "rater": r, **_figures(pairs[(pairs["day"] == d) & (pairs["rater"] == r)], g,
                                                        skip_count(r, d))}
                     for (d, r), g in rk.groupby(["day", "rater"])]
    per_day_group = [{"day": d, "group": gr, **_figures(pairs[(pairs["day"] == d) & (pairs["group"] == gr)], g,
                                                         skip_count(None, d, gr))}
                     for (d, gr), g in rk[rk["group"].notna()].groupby(["day", "group"])]
    per_rater = {r: {"group": groups.get(r), **_figures(pairs[pairs["rater"] == r], g, skip_count(r, None))}
                 for r, g in rk.groupby("rater")}
    per_group = {gr: _figures(pairs[pairs["group"] == gr], g, skip_count(None, None, gr))
                 for gr, g in rk[rk["group"].notna()].groupby("group")}
    per_day = [{"day": d, **_figures(pairs[pairs["day"] == d], g, skip_count(None, d))} for d, g in rk.groupby("day")]

    # alerts
    raters = sorted(per_rater)
    level = alpha / max(len(raters), 1)
    alerts, recs = [], []
    for r in raters:
        mine = rk[rk["rater"] == r].sort_values(["t", "judgment"], kind="stable")
        gp = pairs[(pairs["rater"] == r) & pairs["is_gold"] & (pairs["gold"].fillna(0) != 0)]
        gp = gp.sort_values(["t", "judgment"], kind="stable")
        drift = drift_test((gp["y"] == gp["gold"]).to_numpy(int), window)
        speed = speed_test(mine["time_spent_s"].to_numpy(float), window, speed_ratio)
        acc = per_rater[r]["gold_accuracy"]
        action = None
        if speed is not None and speed["collapsed"] and speed["p"] < level:
            since = float(mine["t"].iloc[speed["start"]])
            alerts.append({"rater": r, "alert": "speeding", **speed, "level": level,
                           "since": _iso(since) if np.isfinite(since) else None})
            action = {"rater": r, "action": "exclude", "since": _iso(since) if np.isfinite(since) else None,
                      "reason": f"time per item fell from {speed['before_median_s']:.1f} s to "
                                f"{speed['recent_median_s']:.1f} s (median; Mann-Whitney p = {speed['p']:.2g})"}
        if drift is not None and drift["p"] < level:
            alerts.append({"rater": r, "alert": "gold_drift", **drift, "level": level})
            if action is None:
                w = float(np.clip((drift["recent"] - 0.5) / (threshold - 0.5), 0.0, 1.0))
                action = {"rater": r, "action": "retrain", "weight": w,
                          "reason": f"gold accuracy fell from {drift['before']:.2f} to {drift['recent']:.2f} over the "
                                    f"last {window} gold pairs (Fisher p = {drift['p']:.2g})"}
        if action is None and acc is not None and per_rater[r]["gold_pairs"] >= window:
            if acc <= exclude_below:
                action = {"rater": r, "action": "exclude", "since": None,
                          "reason": f"gold accuracy {acc:.2f} (at or below {exclude_below})"}
            elif acc < threshold:
                action = {"rater": r, "action": "reweight", "weight": float((acc - 0.5) / (threshold - 0.5)),
                          "reason": f"gold accuracy {acc:.2f} below {threshold}"}
        if action is not None:
            recs.append(action)
    return {"generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": {"window": window, "alpha": alpha, "speed_ratio": speed_ratio, "threshold": threshold,
                         "exclude_below": exclude_below, "alert_level": level},
            "judgments": int(len(rk)), "raters": raters, "skips_known": skips is not None,
            "per_day": per_day, "per_rater": per_rater, "per_group": per_group, "per_day_rater": per_day_rater,
            "per_day_group": per_day_group, "alerts": alerts, "recommendations": recs}


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if not np.isfinite(v) else f"{v:.3f}"
    return html.escape(str(v))


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


FIGS = ["judgments", "agreement", "gold_accuracy", "gold_pairs", "position_effect", "length_effect",
        "median_time_s", "skip_rate", "unsafe_rate"]


def render_html(a: dict[str, Any]) -> str:
    s = a["settings"]
    parts = [f"<h1>Feedback audit</h1><p>{a['judgments']} judgments by {len(a['raters'])} raters. Alerts at p &lt; "
             f"{s['alert_level']:.3g} (family-wise {s['alpha']} over raters); window {s['window']}.</p>",
             "<h2>Alerts</h2>" + (_table(a["alerts"], ["rater", "alert", "recent", "before", "recent_median_s",
                                                        "before_median_s", "p", "since"]) if a["alerts"] else
                                  "<p>None.</p>"),
             "<h2>Recommendations</h2>" + (_table(a["recommendations"], ["rater", "action", "weight", "since",
                                                                          "reason"]) if a["recommendations"] else
                                           "<p>None.</p>"),
             "<h2>Per rater</h2>" + _table([{"rater": r, **v} for r, v in a["per_rater"].items()],
                                           ["rater", "group"] + FIGS),
             "<h2>Per group</h2>" + (_table([{"group": g, **v} for g, v in a["per_group"].items()], ["group"] + FIGS)
                                     if a["per_group"] else "<p>No rater groups.</p>"),
             "<h2>Per day</h2>" + _table(a["per_day"], ["day"] + FIGS),
             "<h2>Per day and group</h2>" + (_table(a["per_day_group"], ["day", "group"] + FIGS)
                                              if a["per_day_group"] else "<p>No rater groups.</p>"),
             "<h2>Per day and rater</h2>" + _table(a["per_day_rater"], ["day", "rater"] + FIGS)]
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:2px 6px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Feedback audit</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")


def clean(x: Any) -> Any:
    from alignloop.quality.report import _clean

    return _clean(x)


def write_audit(a: dict[str, Any], out: str | Path) -> list[Path]:
    """out.json (and out.html when `out` ends in .html: then the JSON goes beside it)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = clean(a)
    json_path = out if out.suffix == ".json" else out.with_suffix(".json")
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, allow_nan=False), encoding="utf-8")
    paths = [json_path]
    if out.suffix == ".html":
        with atomic_path(out) as tmp:
            tmp.write_text(render_html(data), encoding="utf-8")
        paths.insert(0, out)
    return paths
