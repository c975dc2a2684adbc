"""The human-feedback stage of a recipe (`feedback: {kind: human}`): a campaign in the run's
feedback database, and the run paused (`Paused`, feedback/waiting.py) until every item has its
raters; then the campaign's judgments are exported as the stage's comparisons. Torch-free."""

from __future__ import annotations

from pathlib import Path

import yaml

from alignloop.feedback.waiting import Paused, waiting_message

__all__ = ["Paused", "run_campaign"]


def run_campaign(cfg, name: str, out: Path, command: str) -> None:
    """Create the campaign `name` (once: the name carries the stage's fingerprint) from
    `cfg` (a FeedbackCreateConfig) and export it to `out` when every item has its raters;
    until then raise Paused with where raters go and `command`, which goes on."""
    from alignloop.data.io import read_records, write_jsonl
    from alignloop.data.records import BinaryFeedback, Comparison, Samples
    from alignloop.feedback import reports, store

    engine, sessions = store.open_db(cfg.db)
    try:
        with sessions() as s:
            try:
                campaign = store.find_campaign(s, name)
            except store.NotFound:
                samples = read_records(cfg.samples, Samples)
                gold = read_records(cfg.gold, BinaryFeedback if cfg.kind == "thumbs" else Comparison) if cfg.gold else []
                text = cfg.instructions_file.read_text(encoding="utf-8") if cfg.instructions_file else cfg.instructions
                campaign = store.create_campaign(s, name=name, kind=cfg.kind, samples=samples,
                                                 raters_per_item=cfg.raters_per_item, instructions=text, gold=gold,
                                                 gold_rate=cfg.gold_rate, seed=cfg.seed)
            summary = next(x for x in reports.campaign_summaries(s) if x["id"] == campaign.id)
            if summary["complete_items"] < summary["items"]:
                raise Paused(waiting_message(summary, cfg.db, command))
            records = reports.export_records(s, [campaign.id])
    finally:
        engine.dispose()
    out = Path(out)
    write_jsonl(out, records)
    out.with_suffix(".config.yaml").write_text(yaml.safe_dump({**cfg.model_dump(mode="json"), "campaign": name}))
    print(f"campaign {name!r} complete: wrote {len(records)} judgments to {out}")
