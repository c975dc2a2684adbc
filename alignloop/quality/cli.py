"""Commands of the quality tools.

    alignloop quality report     --data comparisons.jsonl | --db feedback.db  [--ai ai_labels.jsonl]  --out DIR
    alignloop quality consensus  --data comparisons.jsonl --method dawid-skene --out consensus.jsonl
    alignloop quality arena      --db feedback.db [--n-boot 100] [--seed 0] [--include-flagged]
    alignloop feedback simulate  (`simulate_command`, attached to the feedback group)
    alignloop feedback plan      (`plan_command`, attached to the feedback group)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

import click
from pydantic import Field

from alignloop.config import StageConfig, config_command, save_config
from alignloop.data.formats import hint, record_kind
from alignloop.data.io import DataError, iter_converted, parse_record, read_records, write_as, write_jsonl
from alignloop.data.records import BinaryFeedback, Comparison, Samples

DEFAULT_GOLD = "alignloop.quality.gold:helpful_harmless"
DEFAULT_PANEL = "careful:noise=0.2, hasty:noise=1.0, lefty:position_bias=0.3, verbose:length_bias=0.5"


def read_judgments(path: str | Path) -> list[Comparison | BinaryFeedback]:
    """Comparison and BinaryFeedback records from one file, in any format data/io.py reads (a
    record with `response` and `label` is thumbs, anything else a comparison)."""
    out: list[Comparison | BinaryFeedback] = []
    for where, fmt, data in iter_converted(path):
        kind = BinaryFeedback if isinstance(data, dict) and record_kind(data) == "binary" else Comparison
        out.append(parse_record(kind, data, where, hint(fmt, data)))
    if not out:
        raise DataError(f"{path}: no records")
    return out


def load_judgments_from_db(db: str) -> list[Comparison | BinaryFeedback]:
    """Judgments of a feedback database (`--db`: a SQLite file path or a database URL), one
    record per judgment exactly as `alignloop feedback export` writes them, every campaign,
    gold items included. The database is only read: it is neither created nor migrated."""
    from alignloop.feedback import reports, store

    if not _db_exists(db):
        raise DataError(f"--db {db}: no such database file")
    engine, sessions = store.open_db(db, upgrade=False)
    try:
        have, head = store.schema_revision(engine), store.head_revision()
        if have is None:
            raise DataError(f"--db {db}: not a feedback database (no schema revision)")
        if have != head:
            raise DataError(f"--db {db}: schema revision {have}, this version reads {head}; any "
                            "`alignloop feedback` command (e.g. status) upgrades it")
        with sessions() as s:
            # per campaign: one export may not mix thumbs and ranking campaigns; quality can
            records = [r for c in reports.campaign_ids(s) for r in reports.export_records(s, [c])]
    finally:
        engine.dispose()
    records.sort(key=lambda r: r.meta["judgment_id"])  # stable: thumbs responses stay in order
    if not records:
        raise DataError(f"--db {db}: no judgments yet")
    return records


def _db_exists(db: str) -> bool:
    """A SQLite file (path or sqlite:/// URL) must exist: opening one would create it."""
    if "://" not in db:
        return Path(db).expanduser().exists()
    if db.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        path = make_url(db).database
        return bool(path) and Path(path).expanduser().exists()
    return True


def _load(data: Path | None, db: str | None) -> list[Comparison | BinaryFeedback]:
    if (data is None) == (db is None):
        raise DataError("give exactly one of --data FILE.jsonl or --db URL")
    return read_judgments(data) if data is not None else load_judgments_from_db(db)


class _Input(StageConfig):
    heading: ClassVar[str] = "Input (--data or --db) and gold screening, as for every quality command"

    data: Path | None = Field(None, description="Judgments: comparisons/thumbs JSONL (an export or a simulation).")
    db: str | None = Field(None, description="Or a feedback database: a SQLite file path or a URL "
                           "(sqlite:///feedback.db, postgresql://...); only read, never migrated.")
    gold_threshold: float = Field(0.75, gt=0.5, le=1.0, description="Screening: gold accuracy below this is flagged.")
    screen: Literal["downweight", "exclude", "none"] = Field(
        "downweight", description="What screening does to a rater below the threshold in consensus.")
    min_gold: int = Field(5, ge=1, description="Gold pairs a rater needs before screening applies.")
    seed: int = Field(0, description="Random seed (bootstrap, model initialisation).")


class QualityConfig(_Input):
    """`alignloop quality report`."""

    out: Path = Field(..., description="Output folder for report.html, report.json and config.yaml.")
    consensus_method: Literal["majority", "dawid-skene", "noisy-bt"] = Field(
        "dawid-skene", description="Consensus that per-rater agreement is measured against.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Family-wise error rate of the bias tests (Holm-corrected).")
    n_boot: int = Field(200, ge=0, description="Bootstrap resamples (over items) for confidence intervals.")
    session_gap_min: float = Field(30.0, gt=0, description="Minutes without a submission that end a rater's session.")
    ai: Path | None = Field(None, description="AI labels (`alignloop cai label` output), compared with the human "
                            "labels only in the ai_human_alignment section, never counted as a rater.")
    group_by: list[str] | None = Field(None, description="Rater attributes to report agreement and bias by group for "
                                       "(meta.rater_attributes; default: every attribute in the judgments, at most 5).")


def run_report(cfg: QualityConfig) -> dict:
    from alignloop.quality.report import admin_view, analyse, write_report

    records = _load(cfg.data, cfg.db)
    ai = read_records(cfg.ai, Comparison) if cfg.ai is not None else None
    a = analyse(records, cfg.consensus_method, cfg.gold_threshold, cfg.screen, cfg.min_gold, cfg.alpha,
                cfg.n_boot, cfg.seed, cfg.session_gap_min, ai_records=ai, group_by=cfg.group_by)
    paths = write_report(a, cfg.out)
    save_config(cfg, Path(cfg.out) / "config.yaml")
    head = admin_view(a)
    click.echo(f"pairwise agreement {_f(head['pairwise_agreement'])}, Krippendorff's alpha "
               f"{_f(head['krippendorff_alpha'])}, {len(a['input']['raters'])} raters")
    for r, v in head["raters"].items():
        click.echo(f"  {r:<14} gold {_f(v['gold_accuracy'])} ({v['status']}, weight {_f(v['weight'])})  "
                   f"agreement {_f(v['agreement_with_others'])}  biases: {', '.join(v['biases']) or '-'}")
    click.echo(f"detected: {', '.join(head['detected']) or 'nothing'}")
    for attr, g in a.get("groups", {}).items():
        for b in g["between"]:
            click.echo(f"groups by {attr}: {b['a']} vs {b['b']}: cross agreement {_f(b['cross_agreement'])} (within "
                       f"{_f(g['groups'][b['a']]['agreement'])} / {_f(g['groups'][b['b']]['agreement'])}); {b['a']} - "
                       f"{b['b']}: position effect {_f(b['position_difference'])} {_ci(b['position_difference_ci'])}, "
                       f"length effect {_f(b['length_difference'])} {_ci(b['length_difference_ci'])}; "
                       f"{b['flagged_pairs']} pairs with opposite majorities (>= {g['min_votes']} votes each)")
    if "ai_human_alignment" in a:
        s = a["ai_human_alignment"]
        click.echo(f"AI-labeler alignment {_f(s['alignment'])} ({s['agree']} of {s['agree'] + s['disagree']} "
                   f"pairs; {s['matched']} of {s['ai_records']} AI labels matched a human pair), "
                   f"position-flip rate {_f(s['flip_rate'])}")
    click.echo(f"wrote {paths['html']} and {paths['json']}")
    return a


def _f(v) -> str:
    return "-" if v is None or v != v else f"{v:.3f}"


def _ci(ci) -> str:
    return "" if not ci or any(v is None or v != v for v in ci) else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


class ConsensusConfig(_Input):
    """`alignloop quality consensus`."""

    out: Path = Field(..., description="Output of consensus comparisons: .jsonl, .parquet or a `datasets` folder.")
    format: Literal["alignloop", "trl"] = Field(
        "alignloop", description="alignloop comparisons, or TRL preference pairs (chosen, rejected; soft label p and "
                                 "weight in extra columns).")
    method: Literal["majority", "dawid-skene", "noisy-bt", "raw"] = Field(
        "dawid-skene", description="majority | dawid-skene | noisy-bt | raw (the votes, weighted by screening).")
    form: Literal["pairs", "ranking"] = Field(
        "pairs", description="For K > 2: one record per response pair (soft p) or one K-way consensus ranking.")
    use_gold: bool = Field(True, description="Dawid-Skene: pin gold pairs to their known answer during EM.")
    gold_file: Path | None = Field(None, description="Gold kept aside (simulate's <out>.gold.jsonl): print accuracy.")
    balance: Literal["none", "group"] = Field("none", description="group: weigh raters so that every group of "
                                              "--group-attribute counts as much in total, however much it labelled "
                                              "(majority and raw only; quality/balance.py).")
    group_attribute: str = Field("group", description="Rater attribute (meta.rater_attributes) whose values are the "
                                 "groups for --balance and --weights.")
    weights: str | None = Field(None, description="Weights by group value or source, e.g. 'expert=2,crowd=1' or "
                                "'human=1,ai=0.5' (majority and raw only).")
    gold_weights: bool = Field(False, description="Weigh each rater by the log-odds of their gold accuracy "
                               "(crowd-kit GoldMajorityVote; majority and raw only).")
    apply_audit: Path | None = Field(None, description="Apply the recommendations of an `alignloop quality audit` "
                                     "JSON file: exclude (drop judgments), reweight (multiply the weight), retrain "
                                     "(reported only).")


def run_consensus(cfg: ConsensusConfig) -> list:
    from alignloop.quality.calibration import rater_weights, screening
    from alignloop.quality.consensus import (accuracy_vs_gold, consensus, consensus_records,
                                             gold_pairs_from_records, raw_records)
    from alignloop.quality.judgments import load_judgments

    records = _load(cfg.data, cfg.db)
    original = records
    records, extra, applied = _balance_inputs(cfg, records)
    j = load_judgments(records)
    screened = rater_weights(screening(j, cfg.gold_threshold, cfg.screen, cfg.min_gold))
    weights = screened
    if extra is not None:  # --balance, --weights, --gold-weights, --apply-audit (quality/balance.py)
        from alignloop.quality.balance import changed_sides, combine

        weights = combine(screened, extra(j))
        click.echo("rater weights: " + ", ".join(f"{r} {w:.3f}" for r, w in sorted(weights.items())) + applied)
        j0 = load_judgments(original) if records is not original else j  # before --apply-audit's exclusions
        w0 = rater_weights(screening(j0, cfg.gold_threshold, cfg.screen, cfg.min_gold))
        moved = changed_sides(consensus(j0, "majority", w0).pairs, consensus(j, "majority", weights).pairs)
        click.echo(f"the weighting moved {moved['changed']} of {moved['units']} pairs of the majority consensus: "
                   f"{moved['flipped']} to the other response, {moved['changed'] - moved['flipped']} from or to a tie"
                   + (f"; {moved['lost']} pairs lost every vote" if moved["lost"] else ""))
    if cfg.method == "raw":
        out = raw_records(j, records, weights)
    else:
        cons = consensus(j, cfg.method, weights, use_gold=cfg.use_gold, seed=cfg.seed)
        out = consensus_records(j, cons, cfg.form)
        if cfg.gold_file:
            ordinary = sorted(set(j.rankings.loc[~j.rankings["is_gold"], "item"]))
            acc = accuracy_vs_gold(cons.pairs, gold_pairs_from_records(read_records(cfg.gold_file, Comparison), ordinary))
            click.echo(f"accuracy against gold on {acc['n_pairs']} non-gold pairs: {acc['accuracy']:.3f} "
                       f"(log loss {acc['log_loss']:.3f})")
    n, _ = write_as(cfg.out, out, cfg.format)
    save_config(cfg, Path(cfg.out).with_suffix(".config.yaml"))
    dropped = sorted(r for r, w in weights.items() if w == 0)
    click.echo(f"wrote {n} consensus {'TRL rows' if cfg.format == 'trl' else 'records'} ({cfg.method}) to {cfg.out}"
               + (f"; excluded raters: {', '.join(dropped)}" if dropped else ""))
    return out


def _balance_inputs(cfg: ConsensusConfig, records: list):
    """(records after --apply-audit, a function judgments -> extra rater weights or None, a note)."""
    from alignloop.quality.balance import (apply_audit, balance_weights, combine, gold_weights, parse_weights,
                                           read_audit, set_weights)
    from alignloop.quality.groups import rater_groups

    asked = cfg.balance != "none" or cfg.weights or cfg.gold_weights or cfg.apply_audit
    if not asked:
        return records, None, ""
    if cfg.method not in ("majority", "raw"):
        raise click.BadParameter(f"--method {cfg.method} learns each rater's reliability itself and takes no vote "
                                 "weights; use --method majority or raw with --balance, --weights, --gold-weights "
                                 "or --apply-audit")
    try:
        named = parse_weights(cfg.weights) if cfg.weights else None
        audit_weights: dict = {}
        note = ""
        if cfg.apply_audit:
            records, audit_weights, done = apply_audit(records, read_audit(cfg.apply_audit))
            note = (f" (audit: {done['excluded_judgments']} judgments excluded, {done['reweighted_raters']} raters "
                    f"reweighted, {done['retrain']} to retrain)")
            if not records:
                raise DataError(f"--apply-audit {cfg.apply_audit}: every judgment was excluded")
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    groups = rater_groups(records, cfg.group_attribute)
    if cfg.balance == "group" and not groups:
        raise DataError(f"--balance group: no rater has the attribute {cfg.group_attribute!r} "
                        "(meta.rater_attributes); name another with --group-attribute")

    def extra(j):
        parts = [audit_weights]
        if cfg.balance == "group":
            parts.append(balance_weights(j, groups))
        if named:
            parts.append(set_weights(records, groups, named))
        if cfg.gold_weights:
            parts.append(gold_weights(j))
        return combine(*parts)

    return records, extra, note


class AuditConfig(StageConfig):
    """`alignloop quality audit`."""

    db: str | None = Field(None, description="Feedback database (SQLite path or URL); only read. Skip rates need it.")
    data: Path | None = Field(None, description="Or judgments JSONL (an export or a simulation): no skip rates.")
    campaign: str | None = Field(None, description="Campaign name (default: every campaign).")
    out: Path = Field(..., description="audit.html (and audit.json beside it) or audit.json: the figures, the alerts "
                      "and the recommendations that `quality consensus --apply-audit` reads.")
    group_attribute: str = Field("group", description="Rater attribute (meta.rater_attributes) whose values are the "
                                 "groups of the per-group figures.")
    window: int = Field(40, ge=2, description="Alerts compare a rater's last WINDOW gold pairs (drift) or judgments "
                        "(speeding) with their first WINDOW.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Family-wise false-alarm rate of each alert over raters "
                         "(Bonferroni).")
    speed_ratio: float = Field(0.5, gt=0, lt=1, description="Speeding: the recent median time per item is below "
                               "this times the earlier median.")
    gold_threshold: float = Field(0.75, gt=0.5, le=1.0, description="Gold accuracy below this: reweight.")
    exclude_below: float = Field(0.55, ge=0.0, lt=1.0, description="Gold accuracy at or below this: exclude.")


def _skips_from_db(db: str, campaign: str | None) -> dict:
    """(rater, day) -> skipped assignments of the campaign(s)."""
    from sqlalchemy import select

    from alignloop.feedback import store
    from alignloop.feedback.db import Assignment, Campaign, Rater

    engine, sessions = store.open_db(db, upgrade=False)
    try:
        with sessions() as s:
            q = (select(Rater.name, Assignment.created_at).join(Rater, Rater.id == Assignment.rater_id)
                 .join(Campaign, Campaign.id == Assignment.campaign_id).where(Assignment.status == "skipped"))
            if campaign:
                q = q.where(Campaign.name == campaign)
            out: dict = {}
            for name, t in s.execute(q):
                key = (name, t.date().isoformat())
                out[key] = out.get(key, 0) + 1
            return out
    finally:
        engine.dispose()


def run_audit(cfg: AuditConfig) -> dict:
    from alignloop.quality.audit import audit, write_audit
    from alignloop.quality.groups import rater_groups

    records = _load(cfg.data, cfg.db)
    if cfg.campaign:
        records = [r for r in records if str(r.meta.get("campaign")) == cfg.campaign]
        if not records:
            raise DataError(f"--campaign {cfg.campaign}: no judgments")
    skips = _skips_from_db(cfg.db, cfg.campaign) if cfg.db else None
    try:
        a = audit(records, skips, rater_groups(records, cfg.group_attribute), cfg.window, cfg.alpha, cfg.speed_ratio,
                  cfg.gold_threshold, cfg.exclude_below)
    except ValueError as err:
        raise DataError(str(err)) from None
    paths = write_audit(a, cfg.out)
    click.echo(f"audit of {a['judgments']} judgments by {len(a['raters'])} raters over {len(a['per_day'])} day{'s' if len(a['per_day']) != 1 else ''}; "
               f"{len(a['alerts'])} alerts (p < {a['settings']['alert_level']:.3g} each)")
    for al in a["alerts"]:
        if al["alert"] == "speeding":
            click.echo(f"  speeding   {al['rater']}: median time {al['before_median_s']:.1f} s -> "
                       f"{al['recent_median_s']:.1f} s (p = {al['p']:.2g}) since {al['since']}")
        else:
            click.echo(f"  gold drift {al['rater']}: accuracy {al['before']:.2f} -> {al['recent']:.2f} over the last "
                       f"{al['n_recent']} gold pairs (p = {al['p']:.2g})")
    for r in a["recommendations"]:
        w = f" (weight {r['weight']:.2f})" if r.get("weight") is not None else ""
        click.echo(f"  recommend {r['action']} {r['rater']}{w}: {r['reason']}")
    click.echo("wrote " + " and ".join(str(p) for p in paths))
    return a


class SimulateConfig(StageConfig):
    """`alignloop feedback simulate`."""

    samples: Path | None = Field(None, description="Samples JSONL (prompt + responses); default: built-in demo samples.")
    demo_items: int = Field(200, ge=1, description="Items of built-in demo samples when --samples is not given.")
    demo_k: int = Field(2, ge=2, description="Responses per demo item.")
    gold: str = Field(DEFAULT_GOLD, description="Gold scorer module:function, (prompt, response) -> float.")
    raters: str = Field(DEFAULT_PANEL, description="Rater panel: 'name:key=value, ...' (keys: noise, position_bias, "
                        "length_bias, leniency, drift, confirmation, anchor, rush, learn, group=NAME; name*N "
                        "repeats a profile).")
    per_item: int = Field(3, ge=1, description="Raters per item (gold items get every rater).")
    out: Path = Field(..., description="Output JSONL of judgments; the gold is written to <out>.gold.jsonl.")
    seed: int = Field(0, description="Random seed.")
    gold_fraction: float = Field(0.1, ge=0, le=1, description="Share of items that are gold (calibration) items.")
    noise_model: Literal["thurstone", "bradley-terry"] = Field(
        "thurstone", description="Utility noise: Gaussian (Thurstone) or Gumbel (Bradley-Terry).")
    session_size: int = Field(50, ge=1, description="Judgments per rater session (sessions are 4 h apart).")
    campaign: str = Field("simulated", description="Campaign name written into meta.campaign.")
    feedback: Literal["ranking", "thumbs"] = Field("ranking", description="Rank the K responses, or thumbs on each.")
    practice_items: int = Field(0, ge=0, description="Practice round first: each rater answers this many items with "
                                "a known answer and learns from the feedback (rater parameter learn; the modelling "
                                "assumption is in alignloop/quality/simulate.py).")
    practice_pass: float = Field(0.8, gt=0, le=1, description="Practice round: mean score that ends it.")


def gold_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".jsonl") + ".gold.jsonl")


def _items(samples: Path | None, gold: str, n: int, k: int, seed: int):
    from alignloop.quality.demo_data import demo_samples
    from alignloop.quality.simulate import items_from_samples, load_scorer

    scorer = load_scorer(gold)
    recs = read_records(samples, Samples) if samples else demo_samples(n, k, seed)
    return items_from_samples(recs, scorer)


def run_simulate(cfg: SimulateConfig) -> tuple[list, list]:
    from alignloop.quality.simulate import parse_panel, simulate

    panel = parse_panel(cfg.raters)
    items = _items(cfg.samples, cfg.gold, cfg.demo_items, cfg.demo_k, cfg.seed)
    records, gold = simulate(items, panel, cfg.per_item, cfg.seed, cfg.gold_fraction, cfg.noise_model,
                             cfg.session_size, cfg.campaign, cfg.feedback, cfg.practice_items, cfg.practice_pass)
    write_jsonl(cfg.out, records)
    write_jsonl(gold_path(cfg.out), gold)
    save_config(cfg, Path(cfg.out).with_suffix(".config.yaml"))
    n_gold = sum(1 for g in gold if g.meta["is_gold"])
    click.echo(f"{len(records)} judgments by {len(panel)} simulated raters on {len(items)} items "
               f"({n_gold} gold items) -> {cfg.out}; gold ranking of every item -> {gold_path(cfg.out)}")
    return records, gold


class PlanConfig(StageConfig):
    """`alignloop feedback plan`."""

    samples: Path | None = Field(None, description="Samples JSONL; default: synthetic items (Gaussian gold scores).")
    items: int = Field(200, ge=2, description="Synthetic items when --samples is not given.")
    k: int = Field(2, ge=2, description="Responses per synthetic item.")
    gold: str = Field(DEFAULT_GOLD, description="Gold scorer module:function (with --samples).")
    raters: str = Field(DEFAULT_PANEL, description="Rater panel, as for simulate (name*N repeats a profile).")
    max_per_item: int | None = Field(None, ge=1, description="Largest raters-per-item to try (default: panel size).")
    repeats: int = Field(3, ge=1, description="Simulated campaigns per raters-per-item count.")
    seed: int = Field(0, description="Random seed.")
    methods: list[str] = Field(default_factory=lambda: ["majority", "dawid-skene", "noisy-bt"],
                               description="Consensus methods to compare.")
    noise_model: Literal["thurstone", "bradley-terry"] = Field("thurstone", description="Utility noise model.")
    out: Path | None = Field(None, description="Also write the table as JSON here.")


def run_plan(cfg: PlanConfig) -> list[dict]:
    from alignloop.quality.consensus import METHODS
    from alignloop.quality.simulate import parse_panel, plan, synthetic_items

    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        raise click.BadParameter(f"unknown method(s) {', '.join(bad)} (known: {', '.join(METHODS)})")
    panel = parse_panel(cfg.raters)
    items = _items(cfg.samples, cfg.gold, 0, 2, cfg.seed) if cfg.samples else synthetic_items(cfg.items, cfg.k, cfg.seed)
    rows = plan(items, panel, cfg.max_per_item, cfg.repeats, cfg.seed, cfg.methods, cfg.noise_model)
    click.echo(f"consensus accuracy against gold, {len(items)} items, panel of {len(panel)} "
               f"({', '.join(p.name for p in panel)}), mean +- sd over {cfg.repeats} simulated campaigns")
    click.echo(f"{'raters/item':>11} {'judgments':>9}  " + "  ".join(f"{m:>16}" for m in cfg.methods))
    for k in sorted({r["per_item"] for r in rows}):
        cells = {r["method"]: r for r in rows if r["per_item"] == k}
        click.echo(f"{k:>11} {cells[cfg.methods[0]]['judgments']:>9}  " + "  ".join(
            f"{cells[m]['accuracy']:>10.3f} +-{cells[m]['sd']:.3f}" for m in cfg.methods))
    if cfg.out:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(json.dumps({"config": cfg.model_dump(mode="json"), "rows": rows}, indent=1))
    return rows


class ArenaConfig(StageConfig):
    db: str = Field(..., description="Feedback database with the chat page's thumbs and the arena's votes "
                    "(`alignloop chat`): a SQLite file path or a database URL. Only read.")
    n_boot: int = Field(100, ge=0, le=100_000, description="Bootstrap resamples of the battles for the 95% intervals.")
    seed: int = Field(0, ge=0, description="Seed of the bootstrap.")
    include_flagged: bool = Field(False, description="Count battles flagged because a model revealed its identity.")


def run_arena(cfg: ArenaConfig) -> dict:
    """Print the arena leaderboard (quality/arena.py) of the database as JSON."""
    from alignloop.feedback.chat_export import arena_from_db
    from alignloop.quality.arena import leaderboard

    try:
        battles, thumbs = arena_from_db(cfg.db, cfg.include_flagged)
    except ValueError as err:
        raise DataError(str(err)) from None
    board = leaderboard(battles, thumbs, n_boot=cfg.n_boot, seed=cfg.seed).to_json()
    click.echo(json.dumps(board, indent=1))
    return board


report_command = config_command(QualityConfig, run_report, "report",
                                "Feedback-quality report: agreement, gold calibration, biases (HTML + JSON).")
consensus_command = config_command(ConsensusConfig, run_consensus, "consensus",
                                   "Consensus labels (majority, Dawid-Skene, noisy Bradley-Terry) as comparisons.")
audit_command = config_command(AuditConfig, run_audit, "audit",
                               "Audit of the feedback process: per day, rater and group; drift and speeding alerts; "
                               "recommendations for consensus --apply-audit.")
arena_command = config_command(ArenaConfig, run_arena, "arena",
                               "Arena leaderboard as JSON: Bradley-Terry ratings with bootstrap 95% intervals, "
                               "win rates, thumbs-up rates (alignloop chat's votes).")
simulate_command = config_command(SimulateConfig, run_simulate, "simulate",
                                  "Simulated rater panel: judgments of samples around a gold scorer, with biases.")
plan_command = config_command(PlanConfig, run_plan, "plan",
                              "How consensus accuracy against gold grows with raters per item, for a panel.")

group = click.Group("quality", help="Feedback quality: agreement, calibration, bias, consensus labels.",
                    commands={"report": report_command, "consensus": consensus_command, "arena": arena_command})
group.add_command(audit_command)
