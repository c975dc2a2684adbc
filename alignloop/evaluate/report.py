"""`alignloop report RUN`: one self-contained HTML file about a run folder.

It reads what the stages left in the run folder (DESIGN.md section 3) and never loads a model:

    RUN/config.yaml              the resolved recipe (shown as is)
    RUN/sft/metrics.jsonl        SFT loss and learning rate
    RUN/quality/report.json      feedback quality (`alignloop quality report --out RUN/quality`)
    RUN/reward/metrics.jsonl     reward-model loss, accuracy, calibration
    RUN/ppo/metrics.jsonl        PPO reward / KL / beta / entropy / length; ppo/samples.jsonl
    RUN/eval/eval.json           `alignloop evaluate --out RUN/eval`, with its samples files
    RUN/control/                 `alignloop control`: metrics.jsonl, baseline/metrics.jsonl, videos/

Each folder can be given explicitly (--sft, --quality, --reward, --ppo, --eval, --control). A
section whose inputs are missing says so; the control section appears only when the run has a
control folder, and a run with nothing but a control stage shows that section alone. Plots are
PNGs in data: URIs, the CSS is inline, and there is no script and no external link (the control
section's videos are relative links to the mp4 files beside the report): the file opens in a
browser with no network.
"""

from __future__ import annotations

import html
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from alignloop import metric_names as M
from alignloop.config import ConfigError, config_command
from alignloop.configs import ReportConfig
from alignloop.evaluate import figures
from alignloop.report_html import fmt, table

SECTIONS = [("sft", "SFT"), ("quality", "Feedback quality"), ("reward", "Reward model"), ("ppo", "PPO"),
            ("eval", "Evaluation"), ("samples", "Samples before and after")]
CONTROL = ("control", "Control task from preferences")  # shown when the run has a control stage
LM_STAGES = ("sft", "quality", "reward", "ppo", "eval")


def _img(b64: str | None, alt: str, note: str) -> str:
    if b64 is None:
        return ""
    return f"<figure><img alt='{html.escape(alt)}' src='data:image/png;base64,{b64}'><figcaption>{note}</figcaption></figure>"


def _missing(what: str, looked: Path | None) -> str:
    where = f" (looked for {html.escape(str(looked))})" if looked else ""
    return f"<p class=missing>No {what} in this run{where}.</p>"


def _metrics(folder: Path | None) -> list[dict] | None:
    from alignloop.train.tracking import read_metrics

    if folder is None or not (Path(folder) / "metrics.jsonl").exists():
        return None
    return read_metrics(folder)


def _last(rows: list[dict], key: str):
    vals = figures.series(rows, key)[1]
    return vals[-1] if vals else None


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------- sections


def section_sft(folder: Path | None) -> str:
    rows = _metrics(folder)
    if rows is None:
        return _missing("SFT stage", folder and folder / "metrics.jsonl")
    fig = figures.curves(rows, [("Loss (response tokens, nats/token)", [M.TRAIN_LOSS, M.EVAL_LOSS], "loss"),
                                ("Learning rate", [M.LR], "lr")], ncols=2)
    summary = table(["steps", "final train loss", "final held-out loss", "best held-out loss"],
                    [[_last(rows, "step") or max(r["step"] for r in rows), _last(rows, M.TRAIN_LOSS),
                      _last(rows, M.EVAL_LOSS), min(figures.series(rows, M.EVAL_LOSS)[1], default=None)]])
    return summary + _img(fig, "sft curves", "Supervised fine-tuning: cross-entropy on response tokens, on training "
                          "batches and on held-out demonstrations. A held-out loss that rises while the training loss "
                          "falls is over-fitting.")


def section_quality(path: Path | None) -> str:
    from alignloop.quality.report import EXPLAIN, plots

    if path is not None and path.is_dir():
        path = path / "report.json"
    if path is None or not path.exists():
        return _missing("feedback-quality report", path)
    a = json.loads(path.read_text(encoding="utf-8"))
    ov, inp = a["agreement"].get("overall", {}), a["input"]
    parts = [f"<p>{inp['ranking_judgments']} ranking and {inp['thumbs_judgments']} thumbs judgments on {inp['items']} "
             f"items by {len(inp['raters'])} raters ({inp['gold_items']} gold items). Full report: "
             f"<code>{html.escape(str(path.parent / 'report.html'))}</code>.</p>",
             table(["pairwise agreement", "95% CI", "Krippendorff's alpha", "mean Kendall's W", "consensus",
                    "biases detected"],
                   [[ov.get("pairwise_agreement"), ov.get("pairwise_agreement_ci"), ov.get("krippendorff_alpha"),
                     ov.get("kendall_w_mean"), a.get("consensus", {}).get("method"),
                     ", ".join(f"{f['detector']}:{f['scope']}" for f in a["biases"]["findings"] if f["detected"])
                     or "none"]])]
    rows = [[r, c.get("accuracy"), c.get("n_gold_pairs"), c.get("status"), c.get("weight")]
            for r, c in sorted(a["calibration"].items())]
    if rows:
        parts.append(table(["rater", "gold accuracy", "gold pairs", "screening", "weight"], rows))
    parts.append("<div class=grid>" + "".join(_img(b64, key, html.escape(EXPLAIN[key]))
                                              for key, b64 in plots(a).items()) + "</div>")
    return "".join(parts)


def section_reward(folder: Path | None) -> str:
    rows = _metrics(folder)
    if rows is None:
        return _missing("reward-model stage", folder and folder / "metrics.jsonl")
    fig = figures.curves(rows, [
        ("Loss (Bradley-Terry)", [M.TRAIN_LOSS, M.EVAL_LOSS], "loss"),
        ("Pairwise accuracy", [M.TRAIN_ACCURACY, M.EVAL_ACCURACY, M.EVAL_SOFT_AGREEMENT], "accuracy"),
        ("Calibration (held-out)", [M.EVAL_ECE, M.EVAL_SOFT_MAE], "error")])
    final = table(["held-out accuracy", "held-out loss", "soft-label agreement", "soft-label MAE", "ECE",
                   "held-out pairs", "normalisation mean", "normalisation std"],
                  [[_last(rows, k) for k in (M.EVAL_ACCURACY, M.EVAL_LOSS, M.EVAL_SOFT_AGREEMENT, M.EVAL_SOFT_MAE,
                                             M.EVAL_ECE, M.EVAL_PAIRS, M.NORMALIZATION_MEAN, M.NORMALIZATION_STD)]])
    return final + _img(fig, "reward curves", "Accuracy: share of held-out pairs the reward model orders like the "
                        "people (InstructGPT's reward models reached about 0.72). Calibration: expected calibration "
                        "error of sigmoid(r_a - r_b) as a probability, and the mean gap to soft labels; 0 is perfect.")


def section_ppo(folder: Path | None, n_samples: int) -> str:
    rows = _metrics(folder)
    if rows is None:
        return _missing("PPO stage", folder and folder / "metrics.jsonl")
    sources = sorted({k for r in rows for k in r if k.startswith(M.SCORE_PREFIX)})
    fig = figures.curves(rows, [
        ("Reward", [M.SCORE, M.RLHF_REWARD, *sources], "reward"),
        ("KL to reference (nats / response)", [M.KL], "KL"),
        ("KL coefficient beta", [M.BETA], "beta"),
        ("Policy entropy (nats / token)", [M.ENTROPY], "entropy"),
        ("Response length (tokens)", [M.LENGTH], "tokens"),
        ("Update size", [M.CLIPFRAC, M.APPROX_KL], ""),
        ("Value function", [M.EXPLAINED_VARIANCE], "explained variance"),
        ("Degeneration", [M.NO_EOS_SHARE, M.REPEATED_3GRAM_SHARE], "share")], xlabel="iteration")
    first, last = rows[0], rows[-1]
    keys = [M.SCORE, M.KL, M.BETA, M.ENTROPY, M.LENGTH]
    parts = [table(["", *keys], [["first iteration", *(first.get(k) for k in keys)],
                                 ["last iteration", *(last.get(k) for k in keys)]]),
             _img(fig, "ppo curves", "score: the reward sources' weighted sum; rlhf: score - beta * KL, what PPO "
                  "maximises. A score that climbs while KL, length or repetition grows fast is a sign of reward "
                  "hacking; falling entropy is the policy becoming deterministic.")]
    samples = _jsonl(Path(folder) / "samples.jsonl")
    if samples and n_samples:
        its = sorted({s["iteration"] for s in samples})
        shown = [s for s in samples if s["iteration"] in (its[0], its[-1])][: 2 * n_samples]
        parts.append(f"<h3>Training samples (iterations {its[0]} and {its[-1]})</h3>" + table(
            ["iteration", "prompt", "response", "score"],
            [[s["iteration"], s["prompt"], s["response"], s["score"]] for s in shown]))
    return "".join(parts)


EVAL_ROWS = [("gold reward", lambda m: (m["gold"] or {}).get("mean")),
             ("KL to reference, k1 (nats)", lambda m: m["kl_k1"]), ("KL to reference, k3 (nats)", lambda m: m["kl_k3"]),
             ("length (tokens)", lambda m: m["length_tokens"]), ("length (words)", lambda m: m["length_words"]),
             ("no-EOS share", lambda m: m["no_eos_share"]),
             ("harmlessness rate (refusal detector)", lambda m: m["harmlessness"]["rate"]),
             ("harmlessness rate (AI judge)", lambda m: m["harmlessness"]["judge_rate"]),
             ("over-refusal rate (ordinary prompts)", lambda m: m["over_refusal_rate"]),
             ("refusal margin, red-team prompts (reward of a refusal - the other answers to its prompt)",
              lambda m: _margin(m, "redteam")),
             ("refusal margin, ordinary prompts", lambda m: _margin(m, "ordinary"))]


def _margin(m: dict, kind: str) -> str | None:
    """evaluate.margin_cell ('+0.360 (11 of 15)'); None before it was measured."""
    from alignloop.evaluate.evaluate import margin_cell

    return margin_cell(m["refusal_margin"][kind]) if m.get("refusal_margin") else None


def section_eval(folder: Path | None, ppo_folder: Path | None) -> str:
    path = folder / "eval.json" if folder is not None else None
    if path is None or not path.exists():
        return _missing("evaluation stage", path)
    e = json.loads(path.read_text(encoding="utf-8"))
    if "methods" in e:  # several policies side by side (evaluate --policies)
        from alignloop.evaluate.compare import figure, table_html

        s = e["settings"]
        return (f"<p>Each model sampled once on the held-out prompts ({e[next(iter(e['methods']))]['responses']} "
                f"responses, temperature {s['temperature']}, {s['max_new_tokens']} new tokens at most, the same seed); "
                f"gain: the paired gold gain over the baseline with its standard error over prompts (z in brackets); "
                f"KL reference: <code>{html.escape(str(s['reference']))}</code>; train s and peak RSS: the stages that "
                f"made the model (PPO: reward model + PPO). Harmlessness: {html.escape(s['harmlessness'])}.</p>"
                + table_html(e["methods"]) + _img(figure(e["methods"]), "policies side by side",
                                                  "Left: gold reward of each model (error bars: the paired standard "
                                                  "error of its gain over the baseline). Right: gold reward against KL "
                                                  "to the reference.") + _categories(e, folder))
    roles = [r for r in ("baseline", "policy") if r in e]
    head = ["metric", *(f"{r} ({'SFT' if r == 'baseline' else 'RLHF'}): {e[r]['model']}" for r in roles)]
    rows = [[f"reward {figures.short(s)} (mean ± std)", *(f"{fmt(e[r]['reward'][s]['mean'])} ± {fmt(e[r]['reward'][s]['std'])}"
                                          for r in roles)] for s in e[roles[0]]["reward"]]
    rows += [[label, *(get(e[r]) for r in roles)] for label, get in EVAL_ROWS]
    s = e["settings"]
    parts = [f"<p>{e[roles[0]]['responses']} held-out responses per model (temperature {s['temperature']}, "
             f"{s['max_new_tokens']} new tokens at most); KL reference: <code>{html.escape(str(s['reference']))}</code>; "
             f"gold: <code>{html.escape(str(s['gold']))}</code>. Harmlessness: {html.escape(s['harmlessness'])}.</p>",
             table(head, rows)]
    if "win_rate" in e:
        w = e["win_rate"]
        parts.append(table(["policy win rate by", "reward model", "gold", "AI judge (both orders)", "people", "pairs"],
                           [["", w["reward"], w["gold"], w["judge"], w["human"], w["n"]]]))
        parts.append(_img(figures.win_rates(w), "win rates", "Share of held-out prompts where the policy's response "
                          "beats the baseline's (ties count 1/2); 0.5 = no difference."))
    parts.append(_categories(e, folder))
    ppo_rows = _metrics(ppo_folder)
    gold_key = next((k for r in ppo_rows or [] for k in r if k.startswith(M.SCORE_PREFIX) and s.get("gold")
                     and s["gold"] in k), None)
    parts.append(_img(figures.proxy_gold_kl(e["overoptimization"], ppo_rows, gold_key), "proxy vs gold",
                      "Over-optimisation (Gao et al. 2022): the proxy (reward-model) score keeps rising with KL while "
                      "the gold score peaks and falls once the policy exploits the reward model."))
    return "".join(parts)


def _categories(e: dict, folder: Path) -> str:
    """The per-category tables; an eval.json written before it had them is re-read from its samples."""
    from alignloop.evaluate import categories

    return categories.categories_html(e if "by_category" in e else categories.from_folder(folder))


def section_samples(folder: Path | None, n: int) -> str:
    if folder is None or not (folder / "samples_policy.jsonl").exists():
        return _missing("evaluation samples", folder and folder / "samples_policy.jsonl")
    parts = []
    for kind, title in (("samples", "Held-out prompts"), ("redteam", "Red-team prompts")):
        pol, base = _jsonl(folder / f"{kind}_policy.jsonl"), _jsonl(folder / f"{kind}_baseline.jsonl")
        if not pol:
            continue
        parts.append(f"<h3>{title}</h3>")
        for i, p in enumerate(pol[:n]):
            b = base[i] if i < len(base) else None
            prompt = p.get("prompt") or p["messages"][-1]["content"]
            cells = [("before (baseline)", b), ("after (policy)", p)] if b else [("policy", p)]
            cols = "".join(f"<div class=resp><div class=who>{who}{_scores(r)}</div>"
                           f"<pre>{html.escape(r['responses'][0])}</pre></div>" for who, r in cells)
            parts.append(f"<div class=sample><div class=prompt>{html.escape(prompt)}</div><div class=pair>{cols}</div></div>")
    return "".join(parts)


def _scores(record: dict) -> str:
    rewards = record.get("rewards") or {}
    shown = [f"{k.rsplit(':', 1)[-1]} {fmt(v[0])}" for k, v in rewards.items() if k != "total" or len(rewards) > 2]
    return f" <span class=scores>{html.escape(', '.join(shown))}</span>" if shown else ""


def _read_if(path: Path, parse, default):
    return parse(path.read_text(encoding="utf-8")) if path.exists() else default


def section_control(folder: Path, page_dir: Path) -> str:
    """`alignloop control`'s rounds: true return against labels used beside the true-reward
    baseline at the same env steps (table and figure), and links to the policy videos."""
    import yaml

    rows = _metrics(folder)
    if rows is None:
        return _missing("control-loop metrics", folder / "metrics.jsonl")
    cfg = _read_if(folder / "config.yaml", yaml.safe_load, {})
    summary = _read_if(folder / "summary.json", json.loads, None) or _read_if(folder / "result.json", json.loads, None)
    agent, learned = str(cfg.get("algo", "ppo")).upper(), cfg.get("reward", "learned") == "learned"
    base_rows = _metrics(folder / "baseline") or []
    base = {r[M.ENV_STEPS]: r.get(M.TRUE_RETURN) for r in base_rows if M.ENV_STEPS in r}
    # 1) what ran
    people = learned and cfg.get("feedback", "synthetic") != "synthetic"
    labels, by_people = _last(rows, M.LABELS) or 0, _last(rows, M.HUMAN_LABELS) or 0
    what = ("the environment's true reward" if not learned else
            f"a reward ensemble learned from {labels} comparisons of clips, {by_people} of them by people "
            f"(--feedback {cfg['feedback']})" if people else
            f"a reward ensemble learned from {labels} synthetic comparisons of clips")
    if summary is None:
        done = f"not finished: {len(rows) - 1} of {cfg.get('rounds', '?')} rounds logged"
    else:
        done = f"finished in {summary['seconds']:.0f} s" + (
            f" (the true-reward baseline {summary['baseline']['seconds']:.0f} s)" if summary.get("baseline") else "")
    intro = (f"<p><code>{html.escape(str(cfg.get('env', '?')))}</code>: {agent} on {what}, {cfg.get('rounds', '?')} "
             f"rounds, {_last(rows, M.ENV_STEPS) or 0:,} env steps; {done}. True return: the environment's own return "
             f"of the deterministic policy (mean over evaluation episodes from fixed seeds: "
             f"{cfg.get('eval_episodes', '?')}); round 0 is the untrained policy. Folder: "
             f"<code>{html.escape(str(folder))}</code>.</p>")
    # 2) one row per round, the true-reward agent's return at the same env steps beside it
    head = ["round", "env steps", "labels used", f"true return, {agent} on the {'learned' if learned else 'true'} reward",
            *([f"true return, {agent} on the true reward"] if base else []),
            *(["learned vs true reward correlation", "held-out accuracy"] if learned else []),
            *(["labels by people", "people vs synthetic labeller", "people vs true-return order"] if people else [])]
    body = [[r["step"], r.get(M.ENV_STEPS), r.get(M.LABELS), r.get(M.TRUE_RETURN),
             *([base.get(r.get(M.ENV_STEPS))] if base else []),
             *([r.get(M.REWARD_CORRELATION), r.get(M.EVAL_ACCURACY)] if learned else []),
             *([r.get(M.HUMAN_LABELS), r.get(M.HUMAN_SYNTHETIC_AGREEMENT), r.get(M.HUMAN_TRUE_AGREEMENT)]
               if people else [])] for r in rows]
    # 3) the figure
    note = ("True return per round. Left: against the labels used so far, with the true-reward agent's return after "
            "the same env steps beside it (the paper's comparison: how much of the true-reward agent's return the "
            "labels buy). Right: both against env steps." if learned else "True return per round against env steps.")
    fig = figures.control_returns(rows, base_rows, agent)
    return (intro + table(head, body) + _img(fig, "control true return", note)
            + (_people(summary, folder, page_dir) if people else "")
            + _videos(folder, page_dir, f"{agent} on the {'learned' if learned else 'true'} reward", agent))


def _people(summary: dict | None, folder: Path, page_dir: Path) -> str:
    """People's labels against the synthetic labeller and the true-return order (the run's
    result.json: control.human.feedback_agreement), and a link to their quality report."""
    fb = (summary or {}).get("feedback")
    if not fb:
        return ("<h3>People's labels</h3><p class=meta>The run has not finished: the agreement of people's labels "
                "with the synthetic labeller is in the table above, round by round.</p>")
    rows = []
    for name, a in (("the synthetic labeller", fb["agreement"]["synthetic"]),
                    ("the true-return order", fb["agreement"]["true_order"])):
        rows.append([f"people vs {name}", a["alignment"], a["agree"], a["disagree"], a["human_ties"]])
    report = Path(fb["quality_report"])
    report = report if report.is_absolute() or report.exists() else folder / "quality" / "report.html"
    link = (f" Their quality report (agreement between raters, gold accuracy, position bias, can't-tell answers): "
            f"<a href='{html.escape(os.path.relpath(report.resolve(), page_dir))}'>quality/report.html</a>."
            if report.exists() else "")
    intro = (f"<h3>People's labels</h3><p>{fb['human_labels']} of the labels came from people in "
             f"{len(fb.get('campaigns', []))} clips campaigns of <code>{html.escape(str(fb['db']))}</code>, "
             f"{fb['synthetic_labels']} from the synthetic labeller (--feedback {html.escape(fb['mode'])}). "
             f"Agreement: the share of pairs both sides decided on which people's majority chose the same clip; "
             f"gold pairs and can't-tell answers are left out.{link}</p>")
    return intro + table(["comparison", "agreement", "pairs agreed", "pairs disagreed", "people tied"], rows)


def _videos(folder: Path, page_dir: Path, who: str, agent: str) -> str:
    """Links to OUT/videos/round_NNN.mp4 (and the baseline's), relative to the report's folder."""
    parts = []
    for sub, label in (("", who), ("baseline", f"{agent} on the true reward (baseline)")):
        found = sorted((folder / sub / "videos").glob("round_*.mp4"))
        if found:
            links = ", ".join(f"<a href='{html.escape(os.path.relpath(v, page_dir))}'>round {int(v.stem[6:])}</a>"
                              for v in found)
            parts.append(f"<li>{label}: {links}</li>")
    if not parts:
        return ("<p class=meta>No policy videos (<code>video_every</code> was 0: "
                "<code>alignloop control --video-every K</code> writes them).</p>")
    return ("<h3>Policy videos</h3><p class=meta>One episode of the deterministic policy after each listed round "
            "(the first evaluation episode's seed), mp4 files beside this report.</p><ul>" + "".join(parts) + "</ul>")


# ---------------------------------------------------------------- the page

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;margin:0 auto;padding:1.5em;color:#1f2328;background:#f6f8fa}
h1{margin:.2em 0}h2{border-bottom:2px solid #d0d7de;padding-bottom:.2em;margin-top:0}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:1em 1.4em;margin:1.2em 0}
nav a{margin-right:1em;color:#0969da;text-decoration:none}.meta{color:#57606a;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td{max-width:420px;overflow-wrap:anywhere}figure{margin:.8em 0}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:.5em 1.5em;align-items:start}img{max-width:100%}
figcaption{color:#57606a;font-size:.85em;max-width:900px}.missing{color:#9a6700;background:#fff8c5;padding:.5em .8em;border-radius:6px}
.sample{border:1px solid #d0d7de;border-radius:6px;margin:.7em 0;overflow:hidden}
.prompt{background:#ddf4ff;padding:.5em .8em;font-weight:600}.pair{display:flex}.resp{flex:1;padding:.5em .8em;min-width:0}
.resp+.resp{border-left:1px solid #d0d7de}.who{font-size:.8em;color:#57606a;text-transform:uppercase}
.scores{text-transform:none;margin-left:.6em}pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:.3em 0;font-size:.85em}
details pre{background:#f6f8fa;padding:.6em}
"""


def report_path(cfg: ReportConfig) -> Path:
    """Where the report goes: --out, else RUN/report.html."""
    return Path(cfg.out) if cfg.out else (Path(cfg.run) if cfg.run else Path(".")) / "report.html"


def shown_sections(folders: dict[str, Path | None]) -> list[tuple[str, str]]:
    """The language-model sections, then the control section when its folder exists; only the
    control section when the run has nothing else."""
    control = folders["control"] is not None and folders["control"].is_dir()
    if control and not any(folders[k] is not None and folders[k].exists() for k in LM_STAGES):
        return [CONTROL]
    return [*SECTIONS, *([CONTROL] if control else [])]


def render(cfg: ReportConfig) -> str:
    run = Path(cfg.run) if cfg.run else None

    def stage(name: str, given: Path | None) -> Path | None:
        return Path(given) if given else (run / name if run else None)

    folders = {k: stage(k, getattr(cfg, k)) for k in (*LM_STAGES, "control")}
    shown = shown_sections(folders)
    writers = {"sft": lambda: section_sft(folders["sft"]), "quality": lambda: section_quality(folders["quality"]),
               "reward": lambda: section_reward(folders["reward"]), "ppo": lambda: section_ppo(folders["ppo"], cfg.samples),
               "eval": lambda: section_eval(folders["eval"], folders["ppo"]),
               "samples": lambda: section_samples(folders["eval"], cfg.samples),
               "control": lambda: section_control(folders["control"], report_path(cfg).resolve().parent)}
    bodies = {k: writers[k]() for k, _ in shown}
    title = cfg.title or f"alignloop run {run.resolve().name if run else ''}".strip()
    config = run / "config.yaml" if run else None
    recipe = (f"<details><summary>Run configuration ({html.escape(str(config))})</summary>"
              f"<pre>{html.escape(config.read_text(encoding='utf-8'))}</pre></details>"
              if config is not None and config.exists() else "")
    nav = "".join(f"<a href='#{k}'>{t}</a>" for k, t in shown)
    sections = "".join(f"<section id={k}><h2>{t}</h2>{bodies[k]}</section>" for k, t in shown)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!doctype html><html lang=en><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class=meta>Generated {stamp} by alignloop report from "
            f"<code>{html.escape(str(run or 'the stage folders given'))}</code>.</p>{recipe}<nav>{nav}</nav>"
            f"{sections}</body></html>")


def run_report(cfg: ReportConfig) -> Path:
    from alignloop.data.io import atomic_path
    from alignloop.progress import console

    if cfg.run is None and not any(getattr(cfg, k) for k in (*LM_STAGES, "control")):
        raise ConfigError("give the run folder (alignloop report RUN) or stage folders (--sft, --ppo, ...)")
    if cfg.run is not None and not Path(cfg.run).is_dir():
        raise FileNotFoundError(f"{cfg.run}: no such run folder")
    out = report_path(cfg)
    page = render(cfg)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    console.print(f"report: {out} ({len(page) / 1e6:.1f} MB, {page.count('data:image/png')} figures)")
    return out


command = config_command(ReportConfig, run_report, "report", positional=("run",),
                         help="Write one self-contained HTML report of a run folder: SFT, feedback quality, reward "
                              "model, PPO curves, evaluation, samples before/after, and a control stage's true return "
                              "against labels with its videos (opens with no network).")
