"""Assignments: a rater's next item, one of their own, when they first saw it, giving it back.

Positions and indices: a rater sees the K responses of an item in a random order fixed per
assignment (`display_order[p]` = original index of the response shown at position p).
Raters and API clients answer in positions; the store keeps rankings in original indices,
plus the display order (judgments.py).

Giving a rater an item reads without a lock which campaign has a free item for them, then
in one short write transaction takes the first free item (on PostgreSQL locked with `FOR
UPDATE SKIP LOCKED`, so raters asking at once get different items), a free slot of it (the
unique (item, slot) and (item, rater) constraints settle any race the locks did not
prevent: the transaction is then rolled back and the rater looks again) and counts its free
places down. The rater's request path is SQLAlchemy Core on prepared statements, with the
campaign and the item texts from the per-process cache (campaigns.py): a few indexed
statements and no ORM objects. `next_assignment` and `get_assignment` return ORM objects
for the pages, the CLI and tests.

Campaign options (panels.py): a campaign that asks for rater attributes the rater has not
given, or has a practice round they have not passed, gives them none of its items yet
(`gated_campaigns`; the pages lead them to the form or the practice round first); a panel
campaign picks the item by `panels.diverse_item` (balanced across groups) and, when all its
free places are held for other groups, the next campaign is looked at.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from alignloop.feedback.campaigns import CampaignInfo, ItemText, campaign_info, chat_messages, item_text
from alignloop.feedback.db import ITEM_IS_OPEN, Assignment, Campaign, Item, PracticeAnswer, Rater, utcnow, writing
from alignloop.feedback.errors import Conflict, NotFound
from alignloop.feedback.limits import is_db_id
from alignloop.feedback.panels import diverse_item, missing_attributes, options_of, rater_attributes
from alignloop.feedback.raters import Caller

ASSIGN_ATTEMPTS = 8  # a new assignment is looked for this often while other raters take the free items
ASSIGNMENT_WITH = [joinedload(Assignment.item), joinedload(Assignment.campaign), joinedload(Assignment.judgment)]


@dataclass(frozen=True, slots=True)
class AssignmentView:
    """One assignment as its rater is shown it: the campaign and item from the cache."""

    id: int
    campaign: CampaignInfo
    item: ItemText
    status: str  # open | done | skipped
    display_order: tuple[int, ...]  # display_order[p] = original index of the response shown at position p


def view_of(a: Assignment) -> AssignmentView:
    """The view of an ORM assignment (loaded with its item and campaign)."""
    c, i = a.campaign, a.item
    return AssignmentView(a.id, CampaignInfo(c.id, c.name, c.kind, c.instructions, c.raters_per_item, c.gold_rate,
                                             c.seed, options_of(c.options)),
                          ItemText(i.id, i.campaign_id, tuple(chat_messages(i.prompt)), tuple(i.responses), i.is_gold,
                                   tuple(m.sha256 for m in i.media) if c.kind == "clips" else ()),
                          a.status, tuple(a.display_order))


def display_order(seed: int, item_id: int, rater_id: int, k: int) -> list[int]:
    """The order this rater is shown the item's k responses in (fixed by the campaign's seed)."""
    order = list(range(k))
    random.Random(f"{seed}:order:{item_id}:{rater_id}").shuffle(order)
    return order


# --- the statements of the rater's request path (prepared once, cached compiled) -------------

A, C, I = Assignment.__table__, Campaign.__table__, Item.__table__
_MINE = select(A.c.item_id).where(A.c.rater_id == bindparam("rater"))


def _free_items(campaign_id):
    """Regular items of the campaign with a free place that this rater never had (`campaign_id`
    a column: the query then correlates)."""
    return select(I.c.id).where(I.c.campaign_id == campaign_id, ITEM_IS_OPEN, I.c.id.not_in(_MINE))


_OPEN = (select(A.c.id, A.c.campaign_id, A.c.item_id, A.c.status, A.c.display_order, A.c.shown_at)
         .join_from(A, C, C.c.id == A.c.campaign_id)
         .where(A.c.rater_id == bindparam("rater"), A.c.status == "open", C.c.ready).order_by(A.c.id).limit(1))
_OPEN_IN = _OPEN.where(A.c.campaign_id == bindparam("campaign"))
_WITH_FREE = select(C.c.id).where(C.c.ready, _free_items(C.c.id).exists()).order_by(C.c.id).limit(1)
_WITH_FREE_IN = _WITH_FREE.where(C.c.id == bindparam("campaign"))
_FREE_ITEM = _free_items(bindparam("campaign")).order_by(I.c.id).limit(1)
_FREE_ITEM_SKIP_LOCKED = _FREE_ITEM.with_for_update(of=I, skip_locked=True)
_FREE_ITEM_WAIT = _FREE_ITEM.with_for_update(of=I)
_SLOTS = select(A.c.slot).where(A.c.item_id == bindparam("item"), A.c.slot.is_not(None))
_N_HAD = select(func.count()).select_from(A).where(A.c.rater_id == bindparam("rater"),
                                                   A.c.campaign_id == bindparam("campaign"))
P = PracticeAnswer.__table__
_PRACTISED = select(P.c.item_id).where(P.c.rater_id == bindparam("rater"))
_GOLD = (select(I.c.id).where(I.c.campaign_id == bindparam("campaign"), I.c.is_gold.is_(True), I.c.id.not_in(_MINE),
                              I.c.id.not_in(_PRACTISED))  # a practised item's answer was shown: no gold check
         .order_by(I.c.id).limit(50))
_WITH_OPTIONS = select(C.c.id).where(C.c.ready, C.c.options.is_not(None)).order_by(C.c.id)
_INSERT = insert(A)
_TAKE_PLACE = update(I).where(I.c.id == bindparam("b_item")).values(open_slots=I.c.open_slots - 1)
_MARK_SHOWN = update(A).where(A.c.id == bindparam("b_id"), A.c.shown_at.is_(None)).values(shown_at=bindparam("b_now"))


def _gold_item(conn: Connection, rater_id: int, campaign: CampaignInfo) -> int | None:
    """With probability `gold_rate` (seeded by the rater's count of items in the campaign) a
    gold item of the campaign the rater has not seen; else None."""
    params = {"rater": rater_id, "campaign": campaign.id}
    n_had = conn.execute(_N_HAD, params).scalar_one()
    rng = random.Random(f"{campaign.seed}:gold:{rater_id}:{n_had}")
    if rng.random() >= campaign.gold_rate:
        return None
    gold = conn.execute(_GOLD, params).scalars().all()
    return rng.choice(gold) if gold else None


def _give(conn: Connection, rater_id: int, campaign: CampaignInfo, item: ItemText,
          shown: bool) -> AssignmentView | None:
    """Give the rater the item (a free slot of a regular item); None if it has none."""
    slot = None
    if not item.is_gold:
        used = set(conn.execute(_SLOTS, {"item": item.id}).scalars())
        slot = next((k for k in range(campaign.raters_per_item) if k not in used), None)
        if slot is None:
            return None
    order = display_order(campaign.seed, item.id, rater_id, len(item.responses))
    now = utcnow()
    row = {"campaign_id": campaign.id, "item_id": item.id, "rater_id": rater_id, "slot": slot, "status": "open",
           "display_order": order, "created_at": now, "shown_at": now if shown else None}
    assignment_id = conn.execute(_INSERT, row).inserted_primary_key[0]
    if not item.is_gold:
        conn.execute(_TAKE_PLACE, {"b_item": item.id})
    return AssignmentView(assignment_id, campaign, item, "open", tuple(order))


def _assign(conn: Connection, rater_id: int, campaign: CampaignInfo, shown: bool) -> AssignmentView | None:
    """Inside a write transaction: a new assignment in `campaign`, or None when it has nothing
    left for this rater. With probability `gold_rate` a gold item they have not seen is
    mixed in instead of the first free regular item. On PostgreSQL the free item is locked,
    skipping items another rater is being given right now; only when every free item is
    being given, wait for them. (SQLite's write lock already excludes every writer.)"""
    params = {"rater": rater_id, "campaign": campaign.id}
    if campaign.options is not None and campaign.options.panel is not None:
        item_id = diverse_item(conn, rater_id, campaign.id, campaign.options.panel)
    elif conn.dialect.name == "postgresql":
        item_id = (conn.execute(_FREE_ITEM_SKIP_LOCKED, params).scalar()
                   or conn.execute(_FREE_ITEM_WAIT, params).scalar())
    else:
        item_id = conn.execute(_FREE_ITEM, params).scalar()
    if item_id is None:
        return None
    gold_id = _gold_item(conn, rater_id, campaign) if campaign.gold_rate > 0 else None
    if gold_id is not None and (a := _give(conn, rater_id, campaign, item_text(conn, gold_id), shown)) is not None:
        return a
    return _give(conn, rater_id, campaign, item_text(conn, item_id), shown)


def gated_campaigns(conn: Connection, rater_id: int) -> set[int]:
    """Ready campaigns whose live items this rater cannot have yet: they ask for attributes the
    rater has not given, or have a practice round the rater has not passed (practice.py)."""
    from alignloop.feedback.practice import practice_state

    ids = list(conn.execute(_WITH_OPTIONS).scalars())
    if not ids:
        return set()
    attrs = rater_attributes(conn, rater_id)
    out = set()
    for cid in ids:
        info = campaign_info(conn, cid)
        if info is None or info.options is None or not info.options.gated:
            continue
        state = practice_state(conn, rater_id, info)
        if missing_attributes(info.options, attrs) or (state is not None and state.status != "passed"):
            out.add(cid)
    return out


def _with_free(conn: Connection, params: dict, campaign_id: int | None, excluded: set[int]) -> int | None:
    """The first ready campaign (or `campaign_id`) with a free item for the rater, not in `excluded`."""
    if not excluded:
        return conn.execute(_WITH_FREE if campaign_id is None else _WITH_FREE_IN, params).scalar()
    stmt = _WITH_FREE if campaign_id is None else _WITH_FREE_IN
    return conn.execute(stmt.where(C.c.id.not_in(sorted(excluded))), params).scalar()


def _mark_shown(s: Session, assignment_id: int) -> None:
    with writing(s):
        s.connection().execute(_MARK_SHOWN, {"b_id": assignment_id, "b_now": utcnow()})


def next_assignment_view(s: Session, rater_id: int, campaign_id: int | None = None,
                         shown: bool = False) -> AssignmentView | None:
    """The rater's open assignment, or a new one: the first item (campaigns oldest first) that
    they never had and that has a free place among its `raters_per_item`. With probability
    `gold_rate` a gold item they have not seen is mixed in instead. None when nothing is left.
    `shown`: the caller shows it now (its shown time is set in the same transaction)."""
    if campaign_id is not None and not is_db_id(campaign_id):
        return None
    params = {"rater": rater_id} if campaign_id is None else {"rater": rater_id, "campaign": campaign_id}
    conn = s.connection()
    row = conn.execute(_OPEN if campaign_id is None else _OPEN_IN, params).one_or_none()
    if row is not None:
        campaign, item = campaign_info(conn, row.campaign_id), item_text(conn, row.item_id)
        if shown and row.shown_at is None:
            _mark_shown(s, row.id)
        return AssignmentView(row.id, campaign, item, row.status, tuple(row.display_order))
    excluded = gated_campaigns(conn, rater_id)  # attributes to give or a practice round to pass first
    attempts = 0
    while attempts < ASSIGN_ATTEMPTS:  # the read found a free item; under the lock it may be gone
        conn = s.connection()
        found = _with_free(conn, params, campaign_id, excluded)
        if found is None:
            return None
        campaign = campaign_info(conn, found)
        try:
            with writing(s):
                a = _assign(s.connection(), rater_id, campaign, shown)
        except IntegrityError:  # another connection took the slot (or this rater the item) meanwhile
            a = None
        if a is not None:
            return a
        if campaign.options is not None and campaign.options.panel is not None:
            excluded.add(found)  # its free places are held for other groups: look at the next campaign
        else:
            attempts += 1
    return None


def next_assignment(s: Session, rater: Rater | Caller, campaign_id: int | None = None,
                    shown: bool = False) -> Assignment | None:
    """`next_assignment_view`, as the ORM object (with its item, campaign and judgment)."""
    view = next_assignment_view(s, rater.id, campaign_id, shown)
    if view is None:
        return None
    return s.get(Assignment, view.id, options=ASSIGNMENT_WITH, populate_existing=True)


def get_assignment(s: Session, rater: Rater | Caller, assignment_id: int) -> Assignment:
    """The rater's own assignment (with its item, campaign and judgment); anyone else's (or a
    missing one) is the same NotFound."""
    a = s.get(Assignment, assignment_id, options=ASSIGNMENT_WITH) if is_db_id(assignment_id) else None
    if a is None or a.rater_id != rater.id:
        raise NotFound(f"no assignment {assignment_id} for you")
    return a


def mark_shown(s: Session, a: Assignment) -> None:
    """Remember when the rater first saw the item (time spent is measured from here)."""
    if a.shown_at is not None:
        return
    with writing(s):
        a = s.get(Assignment, a.id, populate_existing=True, with_for_update=True)
        if a.shown_at is None:
            a.shown_at = utcnow()


def skip_assignment(s: Session, rater: Rater | Caller, assignment_id: int) -> Assignment:
    """Give the item back: its place goes to another rater; this rater will not get it again."""
    a = get_assignment(s, rater, assignment_id)
    if a.status == "skipped":
        return a
    with writing(s):
        a = s.get(Assignment, a.id, populate_existing=True, with_for_update=True)
        if a.status == "done":
            raise Conflict("This item was already answered.")
        if a.slot is not None:
            s.execute(update(Item).where(Item.id == a.item_id).values(open_slots=Item.open_slots + 1))
        a.status, a.slot = "skipped", None
    return a
