"""Read-only views of the feedback database: progress, campaign and rater summaries, export.

Like `store`, every function takes a `Session`; the web layer and the CLI call only these
and the functions in `store`.

Export writes one record per judgment (DESIGN.md section 2): a `Comparison` for rank and
compare campaigns (responses in their original order, ranking in original indices, best
first, a nested list for a tie), one `BinaryFeedback` per response for thumbs campaigns.
`source` is "human"; `rater` is the rater's name; `meta` carries what the quality stage
needs (the fields alignloop/quality/judgments.py reads): display order, time spent,
timestamps, campaign, item, the gold answer (`gold_ranking`; `gold_label` per thumbs
response), unsafe flags and the comment. A clips judgment also carries `media` (each clip's
video digest), `answer` (left, right, equal or cant_tell, as the rater saw the clips) and
`abstained`; "can't tell" is exported as a tie of weight 0 with `abstained` true, so that a
reader that knows abstentions drops it (quality/judgments.py) and one that does not learns
nothing from it; "equal" is an ordinary tie.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import defaultdict
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, selectinload

from alignloop.data.records import BinaryFeedback, Comparison
from alignloop.feedback.db import ITEM_IS_OPEN, Assignment, Campaign, Item, Judgment, Rater
from alignloop.feedback.errors import Invalid
from alignloop.feedback.raters import Caller

log = logging.getLogger(__name__)
ADMIN_QUALITY_MAX = 50_000  # judgments: above this the admin page points to `alignloop quality report`


def _progress_statement():
    A, C, I = Assignment.__table__, Campaign.__table__, Item.__table__
    ready = select(C.c.id).where(C.c.ready)
    mine = select(func.count()).select_from(A).where(A.c.rater_id == bindparam("rater"))
    free = select(func.count()).select_from(I).where(ITEM_IS_OPEN, I.c.campaign_id.in_(ready))
    had = mine.join(I, I.c.id == A.c.item_id).where(ITEM_IS_OPEN, I.c.campaign_id.in_(ready))
    return select(*(mine.where(A.c.status == status).scalar_subquery() for status in ("done", "open", "skipped")),
                  free.scalar_subquery(), had.scalar_subquery())


_PROGRESS = _progress_statement()  # prepared once: it runs on every rating page and /api/next


def rater_progress(s: Session, rater: Rater | Caller) -> dict[str, int]:
    """done: judgments given; open: assigned, not answered; available: regular items of ready
    campaigns this rater never had that still have a free place (the free items, a count over
    the partial index, minus the free ones they had); assigned: done + open + available (items
    fill up as others work, so it can shrink). One query."""
    done, open_, skipped, n_free, n_had = s.connection().execute(_PROGRESS, {"rater": rater.id}).one()
    available = n_free - n_had
    return {"done": done, "open": open_, "skipped": skipped, "available": available,
            "assigned": done + open_ + available}


def campaign_summaries(s: Session) -> list[dict[str, Any]]:
    """Per campaign: items, gold items, judgments, completion and per-rater counts."""
    out = []
    for c in s.scalars(select(Campaign).where(Campaign.ready).order_by(Campaign.id)):
        n_items = s.scalar(select(func.count()).select_from(Item).where(Item.campaign_id == c.id,
                                                                         Item.is_gold.is_(False)))
        n_gold = s.scalar(select(func.count()).select_from(Item).where(Item.campaign_id == c.id,
                                                                        Item.is_gold.is_(True)))
        rows = s.execute(
            select(Rater.name, Item.is_gold, Assignment.status, func.count())
            .join(Assignment, Assignment.rater_id == Rater.id).join(Item, Item.id == Assignment.item_id)
            .where(Assignment.campaign_id == c.id).group_by(Rater.name, Item.is_gold, Assignment.status)
        ).all()
        per_rater: dict[str, int] = defaultdict(int)
        judgments = gold_judgments = skipped = open_ = 0
        abstained = s.scalar(select(func.count()).select_from(Judgment)
                             .join(Assignment, Assignment.id == Judgment.assignment_id)
                             .where(Assignment.campaign_id == c.id, Judgment.abstained.is_(True))) if c.kind == "clips" else 0
        for name, is_gold, status, n in rows:
            if status == "done":
                per_rater[name] += n
                if is_gold:
                    gold_judgments += n
                else:
                    judgments += n
            elif status == "skipped":
                skipped += n
            else:
                open_ += n
        per_item = (select(func.count().label("n")).select_from(Assignment)
                    .join(Item, Item.id == Assignment.item_id)
                    .where(Assignment.campaign_id == c.id, Assignment.status == "done", Item.is_gold.is_(False))
                    .group_by(Assignment.item_id).subquery())
        complete = s.scalar(select(func.count()).select_from(per_item).where(per_item.c.n >= c.raters_per_item))
        expected = n_items * c.raters_per_item
        out.append({
            "id": c.id, "name": c.name, "kind": c.kind, "raters_per_item": c.raters_per_item,
            "gold_rate": c.gold_rate, "items": n_items, "gold_items": n_gold, "judgments": judgments,
            "gold_judgments": gold_judgments, "expected": expected, "open": open_, "skipped": skipped,
            "complete_items": complete, "completion": judgments / expected if expected else 0.0, "abstained": abstained,
            "per_rater": dict(sorted(per_rater.items())), "created_at": c.created_at.isoformat() + "Z",
        })
    s.commit()
    return out


def rater_summaries(s: Session) -> list[dict[str, Any]]:
    """Per rater: judgments, skips, open items and time per item (mean and median seconds)."""
    times: dict[int, list[float]] = defaultdict(list)
    for rid, t in s.execute(select(Assignment.rater_id, Judgment.time_spent_s)
                            .join(Judgment, Judgment.assignment_id == Assignment.id)):
        if t is not None:
            times[rid].append(t)
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for rid, status, n in s.execute(select(Assignment.rater_id, Assignment.status, func.count())
                                    .group_by(Assignment.rater_id, Assignment.status)):
        counts[rid][status] = n
    out = []
    for r in s.scalars(select(Rater).order_by(Rater.id)):
        t = times.get(r.id, [])
        out.append({
            "id": r.id, "name": r.name, "role": r.role,
            "judgments": counts[r.id].get("done", 0), "skipped": counts[r.id].get("skipped", 0),
            "open": counts[r.id].get("open", 0),
            "mean_time_s": statistics.fmean(t) if t else None,
            "median_time_s": statistics.median(t) if t else None,
            "api_access": r.api_token_hash is not None,
            "attributes": dict(r.attributes or {}),
        })
    s.commit()
    return out


def campaign_ids(s: Session) -> list[int]:
    ids = list(s.scalars(select(Campaign.id).where(Campaign.ready).order_by(Campaign.id)))
    s.commit()
    return ids


def _iso(t) -> str | None:
    return None if t is None else t.isoformat() + "Z"


def export_records(s: Session, campaign_ids: list[int] | None = None,
                   include_gold: bool = True) -> list[Comparison | BinaryFeedback]:
    """One record per judgment (one per response for thumbs), oldest judgment first."""
    q = (select(Judgment, Assignment, Item, Campaign, Rater)
         .join(Assignment, Assignment.id == Judgment.assignment_id)
         .join(Item, Item.id == Assignment.item_id).join(Campaign, Campaign.id == Assignment.campaign_id)
         .join(Rater, Rater.id == Assignment.rater_id).order_by(Judgment.id).options(selectinload(Item.media)))
    q = q.where(Campaign.ready)
    if campaign_ids is not None:
        q = q.where(Campaign.id.in_(campaign_ids))
    if not include_gold:
        q = q.where(Item.is_gold.is_(False))
    rows = s.execute(q).all()
    kinds = {c.kind == "thumbs" for _, _, _, c, _ in rows}
    if len(kinds) > 1:
        raise Invalid("export: thumbs and ranking campaigns cannot share one file; choose a campaign")
    out: list[Comparison | BinaryFeedback] = []
    for j, a, item, c, r in rows:
        meta = {
            "campaign": c.name, "campaign_id": c.id, "kind": c.kind, "item_id": item.id,
            "item_source_id": item.source_id, "assignment_id": a.id, "judgment_id": j.id, "rater_id": r.id,
            "display_order": j.display_order, "shown_at": _iso(j.shown_at), "submitted_at": _iso(j.submitted_at),
            "time_spent_s": j.time_spent_s, "is_gold": item.is_gold, "unsafe": j.unsafe, "comment": j.comment,
            "model": item.model, "sampling": item.sampling,
        }
        if r.attributes:  # the rater's attributes (panels.py): the quality tools group raters by them
            meta["rater_attributes"] = dict(r.attributes)
        if item.is_gold and c.kind != "thumbs":
            meta["gold_ranking"] = item.gold_answer
        if c.kind == "thumbs":
            for i, response in enumerate(item.responses):
                extra = {"gold_label": item.gold_answer[i]} if item.is_gold else {}
                out.append(BinaryFeedback(**item.prompt, id=f"{c.name}/j{j.id}/r{i}", response=response,
                                          label=j.labels[i], rater=r.name, source="human",
                                          meta={**meta, **extra, "response_index": i, "unsafe": i in j.unsafe}))
        elif c.kind == "clips":
            meta.update(media=[m.sha256 for m in item.media], answer=clip_answer(j.ranking, j.display_order, j.abstained),
                        abstained=j.abstained)
            out.append(Comparison(**item.prompt, id=f"{c.name}/j{j.id}", responses=item.responses,
                                  ranking=[[0, 1]] if j.abstained else j.ranking, weight=0.0 if j.abstained else 1.0,
                                  rater=r.name, source="human", meta=meta))
        else:
            out.append(Comparison(**item.prompt, id=f"{c.name}/j{j.id}", responses=item.responses,
                                  ranking=j.ranking, rater=r.name, source="human", meta=meta))
    s.commit()
    return out


def clip_answer(ranking: list | None, display_order: list[int], abstained: bool) -> str:
    """A clips judgment as the rater gave it: left, right (the better clip as shown), equal or cant_tell."""
    if abstained:
        return "cant_tell"
    if isinstance(ranking[0], list):
        return "equal"
    return "left" if ranking[0] == display_order[0] else "right"


def quality_summary(s: Session, campaign: dict[str, Any], gold_threshold: float = 0.75) -> dict[str, Any]:
    """The headline quality figures of one campaign (a `campaign_summaries` row) for the admin
    page, computed on request by `alignloop.quality.report.summary_for_admin` with cheap
    settings (no bootstrap, majority consensus: about 0.1 ms per judgment).

    `state` is "ok" (the figures, plus `seconds`), "empty" (no judgments yet), "too_many"
    (over ADMIN_QUALITY_MAX judgments) or "error" (`message`: the analysis failed)."""
    n = campaign["judgments"] + campaign["gold_judgments"]
    if n == 0:
        return {"state": "empty"}
    if n > ADMIN_QUALITY_MAX:
        return {"state": "too_many", "judgments": n}
    from alignloop.quality.report import summary_for_admin

    records = export_records(s, [campaign["id"]])
    start = time.perf_counter()
    try:
        head = summary_for_admin(records, gold_threshold=gold_threshold, consensus_method="majority", n_boot=0)
    except Exception as err:  # the dashboard must still show progress when the analysis fails
        log.exception("quality figures of campaign %s", campaign["id"])
        return {"state": "error", "message": f"{type(err).__name__}: {err}"}
    return {"state": "ok", "seconds": time.perf_counter() - start, "judgments": n, **head}
