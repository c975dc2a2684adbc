"""The feedback-quality report: one analysis (a JSON-able dict), an HTML page with plots
(matplotlib PNGs embedded as base64, so the page is one self-contained file) and the
headline figures for the web app's admin page (`summary_for_admin`)."""

from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from alignloop.data.io import atomic_path
from alignloop.data.records import Comparison
from alignloop.quality.agreement import agreement_summary, agreement_with_consensus
from alignloop.quality.ai_alignment import ai_human_alignment
from alignloop.quality.bias import detect_biases
from alignloop.quality.calibration import rater_weights, screening
from alignloop.quality.consensus import consensus
from alignloop.quality.groups import attributes_seen, group_report, rater_groups
from alignloop.quality.judgments import Judgment, Judgments, load_judgments
from alignloop.report_html import fmt, png, pyplot, table


def analyse(
    records: list[Judgment],
    consensus_method: str = "dawid-skene",
    gold_threshold: float = 0.75,
    screen: str = "downweight",
    min_gold: int = 5,
    alpha: float = 0.05,
    n_boot: int = 200,
    seed: int = 0,
    session_gap_min: float = 30.0,
    judgments: Judgments | None = None,
    ai_records: list[Comparison] | None = None,
    group_by: list[str] | None = None,
) -> dict[str, Any]:
    """Every figure of the report, as plain data (NaN becomes None in JSON).

    Records with `source: ai` (an AI judge's labels, mixed into `records` or given apart as
    `ai_records`) are kept out of every rater figure and only compared with the human labels
    in the `ai_human_alignment` section (see `ai_alignment_section`)."""
    ai = [r for r in records if r.source == "ai"] + list(ai_records or [])
    records = [r for r in records if r.source != "ai"]
    j = judgments or load_judgments(records, session_gap_min)
    screen_info = screening(j, gold_threshold, screen, min_gold)
    out: dict[str, Any] = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {
            "ranking_judgments": int(len(j.rankings)), "thumbs_judgments": int(len(j.thumbs)),
            "items": int(len(set(j.rankings["item"]) | set(j.thumbs["item"]))), "raters": j.raters,
            "campaigns": sorted(set(j.rankings["campaign"]) | set(j.thumbs["campaign"])),
            "gold_items": int(j.rankings[j.rankings["is_gold"]]["item"].nunique()) if len(j.rankings) else 0,
            "duplicates_dropped": j.duplicates_dropped,
            "abstentions": {str(r): int(n) for r, n in j.abstentions.groupby("rater").size().items()},
        },
        "settings": {"consensus_method": consensus_method, "gold_threshold": gold_threshold, "screen": screen,
                     "min_gold": min_gold, "alpha": alpha, "n_boot": n_boot, "seed": seed},
        "agreement": agreement_summary(j, n_boot, seed) if len(j.pairs) else {},
        "calibration": screen_info,
        "biases": detect_biases(j, alpha),
        "simulated_profiles": j.simulated,
    }
    if len(j.pairs):
        cons = consensus(j, consensus_method, rater_weights(screen_info), seed=seed)
        out["consensus"] = {
            "method": consensus_method,
            "raters": cons.raters,
            "agreement_with_consensus": agreement_with_consensus(j.pairs, cons.pairs),
            "mean_confidence": float(np.mean(np.maximum(cons.pairs["p"], 1 - cons.pairs["p"]))),
        }
    if ai:
        out["ai_human_alignment"] = ai_alignment_section(ai, records, n_boot, seed)
    # per group of raters (groups.py): every rater attribute in the records unless named
    attributes = group_by if group_by is not None else attributes_seen(records)[:MAX_GROUP_ATTRIBUTES]
    out["groups"] = {attr: rep for attr in attributes
                     if (rep := group_report(j, rater_groups(records, attr), n_boot, seed))}
    return out


MAX_GROUP_ATTRIBUTES = 5  # rater attributes reported by group when none are named


def ai_alignment_section(ai: list[Judgment], records: list[Judgment], n_boot: int = 200,
                         seed: int = 0) -> dict[str, Any]:
    """RLAIF's AI-labeler alignment: `ai_human_alignment` of the AI comparisons against the
    human (`source` human or simulated) comparisons, plus the judges, the record counts and
    the judge's position-flip rate: the share of AI labels with `meta.flipped` true, i.e.
    whose preference changed sides when the two responses were shown in the other order
    (None when no AI record carries `meta.flipped`)."""
    ai_pairs = [r for r in ai if isinstance(r, Comparison)]
    synthetic = bool(ai_pairs) and all(r.source == "simulated" for r in ai_pairs)
    # a synthetic labeller (the control loop's) is compared with people only, never with its own top-ups
    human = [r for r in records if isinstance(r, Comparison) and r.source in (("human",) if synthetic else ("human", "simulated"))]
    flips = [bool(r.meta["flipped"]) for r in ai_pairs if r.meta.get("flipped") is not None]
    return {
        **ai_human_alignment(ai_pairs, human, bootstrap=n_boot, seed=seed),
        "judges": sorted({r.rater or "unknown" for r in ai_pairs}),
        "synthetic": synthetic,
        "ai_records": len(ai_pairs), "human_records": len(human),
        "flip_rate": sum(flips) / len(flips) if flips else None, "flip_n": len(flips),
    }


def summary_for_admin(records: list[Judgment], **settings: Any) -> dict[str, Any]:
    """Headline figures for the admin page: per rater gold accuracy, screening status and
    weight, agreement with the other raters, its detected biases; the panel's pairwise
    agreement and Krippendorff's alpha; the position-bias p-value; length-bias effects; every
    bias test with its p-values (`bias_tests`)."""
    settings.setdefault("n_boot", 0)
    a = analyse(records, **settings)
    return admin_view(a)


def admin_view(a: dict[str, Any]) -> dict[str, Any]:
    """The admin headline figures out of a full analysis."""
    overall = a["agreement"].get("overall", {})
    per_rater = a["agreement"].get("raters", {})
    findings = a["biases"]["findings"]
    panel_pos = next((f for f in findings if f["detector"] == "position" and f["scope"] == "panel"), None)
    raters = {}
    for r in sorted(set(a["input"]["raters"]) | set(a["input"].get("abstentions", {}))):  # also who only abstained
        cal = a["calibration"].get(r, {})
        raters[r] = {
            "gold_accuracy": cal.get("accuracy"), "gold_pairs": cal.get("n_gold_pairs", 0),
            "status": cal.get("status"), "weight": cal.get("weight"),
            "agreement_with_others": per_rater.get(r, {}).get("agreement"),
            "biases": sorted(f["detector"] for f in findings if f["scope"] == r and f["detected"]),
            "abstained": a["input"].get("abstentions", {}).get(r, 0),
        }
    return _clean({
        "raters": raters,
        "pairwise_agreement": overall.get("pairwise_agreement"),
        "krippendorff_alpha": overall.get("krippendorff_alpha"),
        "position_bias": {"first_win_rate": panel_pos["first_win_rate"], "p": panel_pos["p"],
                          "detected": panel_pos["detected"]} if panel_pos else None,
        "length_bias": {f["scope"]: {"effect": f["effect"], "p": f["p"], "detected": f["detected"]}
                        for f in findings if f["detector"] == "length"},
        "gold_threshold": a["settings"]["gold_threshold"],
        "detected": [f"{f['detector']}:{f['scope']}" for f in findings if f["detected"]],
        "bias_tests": [{k: f.get(k) for k in ("detector", "scope", "effect", "effect_name", "p", "p_adjusted",
                                              "detected")} for f in findings],
        "alpha": a["biases"]["alpha"],
        "groups": {attr: {"groups": {name: {k: v[k] for k in ("raters", "votes", "agreement", "position", "length")}
                                     for name, v in g["groups"].items()},
                          "between": [{k: b[k] for k in ("a", "b", "cross_agreement", "gap", "flagged_pairs")}
                                      for b in g["between"]], "n_flagged_items": g["n_flagged_items"]}
                   for attr, g in (a.get("groups") or {}).items()},
    })


def _clean(x: Any) -> Any:
    """NaN / inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


# --- plots -------------------------------------------------------------------------------------

def plots(a: dict[str, Any]) -> dict[str, str]:
    """The report's figures of an analysis (`analyse`), key -> base64 PNG; `EXPLAIN[key]` says
    how to read each (the run report shows them too)."""
    plt = pyplot()
    figs: dict[str, str] = {}
    m = a["agreement"].get("matrix")
    if m and m["raters"]:
        vals = np.array([[np.nan if v is None else v for v in row] for row in m["agreement"]], float)
        n = len(m["raters"])
        fig, ax = plt.subplots(figsize=(1.2 + 0.7 * n, 1.0 + 0.6 * n))
        im = ax.imshow(vals, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(n), m["raters"], rotation=45, ha="right")
        ax.set_yticks(range(n), m["raters"])
        for x in range(n):
            for y in range(n):
                if np.isfinite(vals[y, x]):
                    ax.text(x, y, f"{vals[y, x]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if vals[y, x] < 0.6 else "black")
        fig.colorbar(im, ax=ax, label="pairwise agreement")
        ax.set_title("Agreement between raters (share of shared pairs voted alike)")
        figs["agreement_matrix"] = png(fig)
    cal = {r: c for r, c in a["calibration"].items() if c["n_gold_pairs"] > 0}
    if cal:
        names = sorted(cal)
        acc = [cal[r]["accuracy"] for r in names]
        lo = [cal[r]["accuracy"] - cal[r]["ci"][0] for r in names]
        hi = [cal[r]["ci"][1] - cal[r]["accuracy"] for r in names]
        colors = ["tab:green" if cal[r]["status"] == "pass" else "tab:red" if cal[r]["status"] == "below"
                  else "tab:gray" for r in names]
        fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(names), 3.2))
        ax.bar(names, acc, yerr=[lo, hi], color=colors, capsize=3)
        ax.axhline(a["settings"]["gold_threshold"], color="black", ls="--", lw=1, label="screening threshold")
        ax.axhline(0.5, color="gray", ls=":", lw=1, label="chance")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy on gold pairs")
        ax.set_title("Gold accuracy per rater (green pass, red below, grey too few gold)")
        ax.legend(fontsize=7, loc="lower right")
        ax.tick_params(axis="x", rotation=45)
        figs["gold_accuracy"] = png(fig)
    findings = a["biases"]["findings"]
    for det, key, ylabel, ref in (("position", "first_win_rate", "first-shown win rate", 0.5),
                                  ("length", None, "length effect (log-odds / sd)", 0.0)):
        fs = [f for f in findings if f["detector"] == det]
        if not fs:
            continue
        names = [f["scope"] for f in fs]
        val = [f[key] if key else f["effect"] for f in fs]
        err = [[v - f["ci"][0] for v, f in zip(val, fs)], [f["ci"][1] - v for v, f in zip(val, fs)]]
        fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(names), 3.2))
        ax.bar(names, val, yerr=err, capsize=3,
               color=["tab:red" if f["detected"] else "tab:blue" for f in fs])
        ax.axhline(ref, color="gray", ls=":", lw=1)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{det.capitalize()} bias (red = detected after Holm correction)")
        ax.tick_params(axis="x", rotation=45)
        figs[f"{det}_bias"] = png(fig)
    sessions = {r: s for r, s in a["biases"]["drift_sessions"].items() if len(s) >= 2}
    if sessions:
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        for r, s in sorted(sessions.items()):
            ax.plot([x["session"] for x in s], [x["agreement"] for x in s], marker="o", label=r)
        ax.set_xlabel("session")
        ax.set_ylabel("agreement with the other raters")
        ax.set_ylim(0, 1.05)
        ax.set_title("Drift: agreement with the leave-one-out consensus by session")
        ax.legend(fontsize=7)
        figs["drift"] = png(fig)
    return figs


# --- HTML ---------------------------------------------------------------------------------------

EXPLAIN = {
    "agreement_matrix": "Each cell: the share of response pairs, judged by both raters, that they ordered the same "
                        "way. Chance is 0.5; InstructGPT's labelers agreed about 73 %.",
    "gold_accuracy": "Share of gold pairs each rater ordered like the known answer (bars: 95 % Wilson interval). "
                     "Raters under the dashed line are down-weighted or excluded from consensus.",
    "position_bias": "How often the response shown first (top / left) beat the others. Display order is random, so "
                     "an unbiased rater sits at 0.5.",
    "length_bias": "How much more the longer response wins than the other raters' judgment explains "
                   "(log-odds per standard deviation of log length). 0 = no length preference.",
    "drift": "A rater's agreement with the other raters, session by session; a falling line is fatigue or drift.",
}


def _profile(p: dict | None) -> str:
    """A simulated rater's non-zero parameters, e.g. `noise=0.5, position_bias=0.3`."""
    if not p:
        return ""
    return ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in p.items()
                     if k not in ("name", "practice_scores") and v)


def render_html(a: dict[str, Any], figs: dict[str, str]) -> str:
    inp, ov = a["input"], a["agreement"].get("overall", {})
    parts = [f"<h1>Feedback quality report</h1><p>Generated {html.escape(a['generated_at'])}. "
             f"{inp['ranking_judgments']} ranking and {inp['thumbs_judgments']} thumbs judgments on {inp['items']} "
             f"items by {len(inp['raters'])} raters; {inp['gold_items']} gold items; campaigns: "
             f"{html.escape(', '.join(inp['campaigns']))}.{_abstentions_html(inp.get('abstentions') or {})}</p>"]
    parts.append("<h2>Agreement</h2>" + table(
        ["pairwise agreement", "95% CI", "Krippendorff's alpha", "95% CI", "mean Kendall's W", "items", "raters"],
        [[ov.get("pairwise_agreement"), ov.get("pairwise_agreement_ci"), ov.get("krippendorff_alpha"),
          ov.get("krippendorff_alpha_ci"), ov.get("kendall_w_mean"), ov.get("n_items"), ov.get("n_raters")]]))
    parts.append("<p class=note>Alpha: 1 perfect, 0 chance; &ge; 0.8 reliable, &ge; 0.667 tentative.</p>")
    for c, b in a["agreement"].get("campaigns", {}).items():
        parts.append(f"<h3>Campaign {html.escape(c)}</h3>" + table(
            ["pairwise agreement", "95% CI", "alpha", "items"],
            [[b["pairwise_agreement"], b["pairwise_agreement_ci"], b["krippendorff_alpha"], b["n_items"]]]))
    found = [f for f in a["biases"]["findings"] if f["detected"]]
    parts.append(f"<h2>Findings</h2><p>{len(found)} detected of {a['biases']['n_tests']} tests "
                 f"(Holm-corrected, family-wise alpha = {a['biases']['alpha']}).</p>")
    parts.append(table(["detector", "scope", "effect", "meaning", "z", "p", "p (Holm)", "n", "detected"],
                        [[f["detector"], f["scope"], f["effect"], f.get("effect_name", ""), f["z"], f["p"],
                          f["p_adjusted"], f["n"], "YES" if f["detected"] else ""] for f in a["biases"]["findings"]]))
    rater_rows = []
    cons = a.get("consensus", {})
    for r in inp["raters"]:
        cal = a["calibration"].get(r, {})
        ag = a["agreement"].get("raters", {}).get(r, {})
        rater_rows.append([r, ag.get("agreement"), ag.get("ci"),
                           cons.get("agreement_with_consensus", {}).get(r, {}).get("agreement"),
                           cal.get("accuracy"), cal.get("n_gold_pairs"), cal.get("status"), cal.get("weight"),
                           ", ".join(f"{k} {v:.2f}" for k, v in cons.get("raters", {}).get(r, {}).items()),
                           _profile(a["simulated_profiles"].get(r))])
    parts.append("<h2>Raters</h2>" + table(
        ["rater", "agreement with others", "95% CI", f"agreement with consensus ({cons.get('method', '')})",
         "gold accuracy", "gold pairs", "screening", "weight", "consensus model", "simulated profile"], rater_rows))
    if "ai_human_alignment" in a:
        parts.append(_ai_html(a["ai_human_alignment"]))
    for attr, g in (a.get("groups") or {}).items():
        parts.append(_groups_html(attr, g))
    for key, b64 in figs.items():
        parts.append(f"<h2>{key.replace('_', ' ').capitalize()}</h2><p class=note>{html.escape(EXPLAIN[key])}</p>"
                     f"<img alt='{key}' src='data:image/png;base64,{b64}'>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ccc;"
             "padding:3px 7px;text-align:left}th{background:#f2f2f2}.note{color:#555;font-size:.9em}"
             "img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Feedback quality report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def _groups_html(attr: str, g: dict[str, Any]) -> str:
    """Agreement and bias per group of raters and between groups (groups.py)."""
    rows = [[name, ", ".join(v["raters"]), v["votes"], v["items"], v["agreement"], v["agreement_ci"], v["position"],
             v["length"]] for name, v in g["groups"].items()]
    out = (f"<h2>Rater groups by {html.escape(attr)}</h2><p class=note>Agreement within each group; bias effects: "
           "first-shown win share - 0.5, longer-wins share - 0.5. Between groups: cross-group agreement (share of "
           "rater pairs, one from each group, voting alike on a shared pair of responses); gap = mean within-group "
           "agreement - cross agreement (&gt; 0: the groups disagree with each other more than among "
           "themselves); differences of the bias effects with bootstrap 95% intervals over items.</p>"
           + table(["group", "raters", "votes", "items", "agreement", "95% CI", "position effect", "length effect"],
                   rows))
    if g["between"]:
        out += table(["A", "B", "shared pairs", "cross agreement", "95% CI", "gap", "opposite majorities",
                      "position A - B", "95% CI", "length A - B", "95% CI"],
                     [[b["a"], b["b"], b["shared_units"], b["cross_agreement"], b["cross_agreement_ci"], b["gap"],
                       b["opposite_majority_share"], b["position_difference"], b["position_difference_ci"],
                       b["length_difference"], b["length_difference_ci"]] for b in g["between"]])
    if g["flagged_items"]:
        out += (f"<p>{g['n_flagged_items']} items on which the groups' majorities are opposite (at least "
                f"{g['min_votes']} votes per group): "
                + html.escape(", ".join(f["item"] for f in g["flagged_items"]))
                + (" ..." if g["n_flagged_items"] > len(g["flagged_items"]) else "") + "</p>")
    return out


def _abstentions_html(counts: dict[str, int]) -> str:
    if not counts:
        return ""
    each = ", ".join(f"{html.escape(r)} {n}" for r, n in sorted(counts.items()))
    return f" {sum(counts.values())} can't-tell answers (abstentions: not votes, left out of every figure): {each}."


def _ai_html(s: dict[str, Any]) -> str:
    judges = html.escape(", ".join(s["judges"]) or "unknown")
    if s.get("synthetic"):  # the control loop's synthetic labeller on the pairs people answered
        head = ("<h2>People vs the synthetic labeller</h2><p class=note>How often the synthetic labeller (" + judges
                + ") prefers the clip the people's majority preferred, on the pairs both labeled (chance 0.5); its "
                "answers on these pairs were not trained on. Soft alignment: its mean probability of the people's "
                "choice. Below, \"AI\" is the synthetic labeller.</p>")
    else:
        head = ("<h2>AI-labeler alignment</h2><p class=note>How often the AI judge (" + judges + ") prefers the "
                "response the human majority preferred, on the pairs both labeled (RLAIF's AI-labeler alignment; "
                "chance 0.5). Soft alignment: the mean AI probability of the human choice. The AI labels are not "
                "counted as a rater anywhere else in this report.</p>")
    return (head + table(
                ["alignment", "95% CI", "soft alignment", "matched pairs", "agree", "disagree", "human ties",
                 "AI ties", "AI pairs no person labeled", "AI records", "human records"],
                [[s["alignment"], s["ci95"], s["soft_alignment"], s["matched"], s["agree"], s["disagree"],
                  s["human_ties"], s["ai_ties"], s["ai_unmatched"], s["ai_records"], s["human_records"]]])
            + "<p>Position-flip rate (how often the judge flips with order: its preference changes sides when "
            f"the responses are shown the other way round): {fmt(s['flip_rate'])} of {s['flip_n']} labels.</p>")


def write_report(a: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.html and report.json (the same figures) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = _clean(a)
    figs = plots(clean)
    paths = {"html": out_dir / "report.html", "json": out_dir / "report.json"}
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(clean, indent=1, allow_nan=False), encoding="utf-8")
    with atomic_path(paths["html"]) as tmp:
        tmp.write_text(render_html(clean, figs), encoding="utf-8")
    return paths
