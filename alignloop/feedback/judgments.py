"""Judgments: checking a rater's answer and storing it exactly once.

A rater answers in display positions (a ranking best first, a nested list for a tie; for
thumbs a label per position; on a clips item "left better" is [0, 1], "right better" [1, 0],
"equal" the tie [[0, 1]] and "can't tell" an abstention: no ranking, `abstained` true); the
judgment keeps original indices plus the display order,
so the answer is independent of what the rater happened to see. One submission is one short
write transaction that re-reads the assignment locked and stores the judgment unless the
assignment was answered already (the same judgment again for a retry with its idempotency
key, else a Conflict) or skipped; the unique constraints on the assignment and the key
settle a race between two connections. `judge` is the request path (SQLAlchemy Core,
prepared statements, the item from the per-process cache); `submit_judgment` returns the
ORM object.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignloop.data.records import RankingEntry
from alignloop.feedback.campaigns import campaign_info, item_text
from alignloop.feedback.db import Assignment, Judgment, Rater, utcnow, writing
from alignloop.feedback.errors import Conflict, Invalid, NotFound
from alignloop.feedback.limits import MAX_COMMENT, MAX_KEY, is_db_id
from alignloop.feedback.raters import Caller


class JudgmentView(NamedTuple):
    """A stored judgment, as the API answers it."""

    id: int
    assignment_id: int
    idempotency_key: str | None
    ranking: list[Any] | None  # original indices best first, nested = tie (rank, compare)
    labels: list[int] | None  # 1/0 per original index (thumbs)
    display_order: list[int]
    submitted_at: dt.datetime
    abstained: bool  # clips: "can't tell" (ranking None)


def letter(position: int) -> str:
    return chr(ord("A") + position)


def ranking_from_ranks(ranks: Sequence[int | None]) -> list[RankingEntry]:
    """Per display position a rank number (1 best; equal numbers tie) -> ranking of positions,
    best first: ranks [2, 1, 2, 3] -> [1, [0, 2], 3]."""
    missing = [letter(p) for p, r in enumerate(ranks) if r is None]
    if missing:
        raise Invalid(f"Give every response a rank: {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} none.")
    tiers: dict[int, list[int]] = {}
    for p, r in enumerate(ranks):
        tiers.setdefault(int(r), []).append(p)
    return [t[0] if len(t) == 1 else t for _, t in sorted(tiers.items())]


def _is_position(p: Any, k: int) -> bool:
    return isinstance(p, int) and not isinstance(p, bool) and 0 <= p < k


def check_ranking(ranking: Any, k: int) -> list[list[int]]:
    """A ranking of display positions as tiers, or Invalid naming what is wrong."""
    if not isinstance(ranking, list) or not ranking:
        raise Invalid("ranking: give a list of response positions, best first (a nested list is a tie)")
    tiers, seen = [], set()
    for entry in ranking:
        tier = entry if isinstance(entry, list) else [entry]
        if not tier:
            raise Invalid("ranking: an empty tie group")
        for p in tier:
            if not _is_position(p, k):
                raise Invalid(f"ranking: {p!r} is not a response position (0 to {k - 1})")
            if p in seen:
                raise Invalid(f"ranking: response {letter(p)} (position {p}) appears twice")
            seen.add(p)
        tiers.append(list(tier))
    missing = [p for p in range(k) if p not in seen]
    if missing:
        names = ", ".join(f"{letter(p)} (position {p})" for p in missing)
        raise Invalid(f"ranking: rank every response; missing {names}")
    return tiers


def _check_positions(values: Any, k: int, field: str) -> list[int]:
    if not isinstance(values, (list, tuple)):
        raise Invalid(f"{field}: give a list of response positions")
    for p in values:
        if not _is_position(p, k):
            raise Invalid(f"{field}: {p!r} is not a response position (0 to {k - 1})")
    return sorted(set(values))


def _answer(kind: str, k: int, order: Sequence[int], ranking: Any, labels: Any, unsafe: Any,
            abstain: bool = False) -> dict[str, Any]:
    """The answer in display positions -> the stored fields in original indices, or Invalid."""
    out: dict[str, Any] = {"unsafe": sorted(order[p] for p in _check_positions(unsafe, k, "unsafe")),
                           "ranking": None, "labels": None, "abstained": False}
    if abstain is not False:
        if abstain is not True or kind != "clips":
            raise Invalid("abstain: only a clips campaign takes \"can't tell\" (abstain: true)")
        if ranking is not None or labels is not None:
            raise Invalid("abstain: \"can't tell\" takes no ranking and no labels")
        out["abstained"] = True
    elif kind == "thumbs":
        if ranking is not None:
            raise Invalid("ranking: a thumbs campaign takes labels (1 good, 0 bad), not a ranking")
        if not isinstance(labels, list) or len(labels) != k or not all(_is_position(v, 2) for v in labels):
            raise Invalid(f"labels: give {k} labels, one per response, each 1 (good) or 0 (bad)")
        out["labels"] = [0] * k
        for p, v in enumerate(labels):
            out["labels"][order[p]] = v
    else:
        if labels is not None:
            raise Invalid(f"labels: a {kind} campaign takes a ranking, not labels")
        tiers = check_ranking(ranking, k)
        out["ranking"] = [order[t[0]] if len(t) == 1 else sorted(order[p] for p in t) for t in tiers]
    return out


def _replay(stored: JudgmentView | None, key: str | None) -> tuple[JudgmentView, bool]:
    """An answered assignment: the stored judgment again for a retry with its key, else Conflict."""
    if stored is not None and key is not None and stored.idempotency_key == key:
        return stored, False
    if stored is None:
        raise Conflict("This idempotency key was used for another submission.")
    raise Conflict("This item was already answered; its judgment is stored.")


# --- the statements of the rater's request path (prepared once, cached compiled) -------------

A, J = Assignment.__table__, Judgment.__table__
_J_COLUMNS = (J.c.id, J.c.assignment_id, J.c.idempotency_key, J.c.ranking, J.c.labels, J.c.display_order,
              J.c.submitted_at, J.c.abstained)
_TO_JUDGE = (select(A.c.rater_id, A.c.campaign_id, A.c.item_id, A.c.display_order.label("order"),
                    *(c.label(f"j_{c.name}") for c in _J_COLUMNS))
             .select_from(A).outerjoin(J, J.c.assignment_id == A.c.id).where(A.c.id == bindparam("assignment")))
_LOCK = (select(A.c.status, A.c.display_order, A.c.shown_at, A.c.created_at)
         .where(A.c.id == bindparam("assignment")).with_for_update())
_STORED = select(*_J_COLUMNS).where(J.c.assignment_id == bindparam("assignment"))
_STORED_OR_KEY = select(*_J_COLUMNS).where(or_(J.c.assignment_id == bindparam("assignment"),
                                                J.c.idempotency_key == bindparam("key")))
_INSERT = insert(J)
_DONE = update(A).where(A.c.id == bindparam("b_assignment")).values(status="done")


def _store(conn: Connection, assignment_id: int, answer: dict[str, Any], comment: str,
           key: str | None) -> tuple[JudgmentView, bool]:
    """Inside a write transaction: the judgment, unless the assignment was answered (a replay
    or a Conflict), skipped or the key was used for another one (Conflict)."""
    a = conn.execute(_LOCK, {"assignment": assignment_id}).one()
    stored = [JudgmentView(*row) for row in conn.execute(_STORED_OR_KEY if key else _STORED,
                                                         {"assignment": assignment_id, "key": key})]
    own = next((j for j in stored if j.assignment_id == assignment_id), None)
    if own is not None or stored:
        return _replay(own, key)
    if a.status == "skipped":
        raise Conflict("This item was skipped; it cannot be answered any more.")
    now = utcnow()
    shown = a.shown_at or a.created_at
    order = list(a.display_order)
    row = {"assignment_id": assignment_id, "idempotency_key": key, "comment": comment, "display_order": order,
           "shown_at": shown, "submitted_at": now, "time_spent_s": max(0.0, (now - shown).total_seconds()), **answer}
    judgment_id = conn.execute(_INSERT, row).inserted_primary_key[0]
    conn.execute(_DONE, {"b_assignment": assignment_id})
    return (JudgmentView(judgment_id, assignment_id, key, answer["ranking"], answer["labels"], order, now,
                         answer["abstained"]), True)


def judge(
    s: Session,
    rater_id: int,
    assignment_id: int,
    ranking: Any = None,
    labels: Sequence[Any] | None = None,
    unsafe: Sequence[Any] = (),
    comment: str = "",
    key: str | None = None,
    abstain: bool = False,
) -> tuple[JudgmentView, bool]:
    """Store the rater's answer, in display positions, as one transaction. Returns
    (judgment, created). Retrying with the same idempotency key returns the stored judgment
    (created False); a second, different answer to the same assignment is a Conflict; anyone
    else's assignment (or a missing one) is NotFound. `abstain`: "can't tell" (clips only)."""
    if key is not None and (not isinstance(key, str) or not key or len(key) > MAX_KEY):
        raise Invalid(f"idempotency key: 1 to {MAX_KEY} characters")
    if not isinstance(comment, str) or len(comment.strip()) > MAX_COMMENT:
        raise Invalid(f"comment: {len(str(comment).strip())} characters; at most {MAX_COMMENT}")
    conn = s.connection()
    row = conn.execute(_TO_JUDGE, {"assignment": assignment_id}).one_or_none() if is_db_id(assignment_id) else None
    campaign = item = None
    if row is not None and row.rater_id == rater_id:
        campaign, item = campaign_info(conn, row.campaign_id), item_text(conn, row.item_id)
    if campaign is None or item is None:
        raise NotFound(f"no assignment {assignment_id} for you")
    if row.j_id is not None:
        return _replay(JudgmentView(*row[4:]), key)
    answer = _answer(campaign.kind, len(item.responses), row.order, ranking, labels, unsafe, abstain)
    try:
        with writing(s):
            return _store(s.connection(), assignment_id, answer, comment.strip(), key)
    except IntegrityError:  # the same submission won a race on another connection
        stored = s.connection().execute(_STORED, {"assignment": assignment_id}).one_or_none()
        return _replay(None if stored is None else JudgmentView(*stored), key)


def submit_judgment(
    s: Session,
    rater: Rater | Caller,
    assignment_id: int,
    ranking: Any = None,
    labels: Sequence[Any] | None = None,
    unsafe: Sequence[Any] = (),
    comment: str = "",
    key: str | None = None,
    abstain: bool = False,
) -> tuple[Judgment, bool]:
    """`judge`, returning the ORM judgment."""
    view, created = judge(s, rater.id, assignment_id, ranking=ranking, labels=labels, unsafe=unsafe,
                          comment=comment, key=key, abstain=abstain)
    return s.get(Judgment, view.id, populate_existing=True), created
