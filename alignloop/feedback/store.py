"""Every database operation of the feedback app, as functions taking a `Session`.

The web pages, the JSON API and the CLI call only these. A function reads and validates in
a plain transaction (no lock), then writes in one short write transaction (`db.writing`)
that re-reads, locked, the rows the write depends on: one submission is one transaction,
and the write lock is held only for the write's own statements. Errors are
`FeedbackError`s carrying an HTTP status and a message a rater can act on.

Positions and indices: a rater sees the K responses of an item in a random order fixed per
assignment (`display_order[p]` = original index of the response shown at position p).
Raters and API clients answer in positions; the store keeps rankings in original indices,
plus the display order, so the answer is independent of what the rater happened to see.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Select, delete, func, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, sessionmaker

from alignloop.data.records import BinaryFeedback, Comparison, RankingEntry, Samples
from alignloop.feedback.db import (ITEM_IS_OPEN, KINDS, Assignment, Campaign, Item, Judgment, Rater, Setting,
                                   make_engine, utcnow, writer, writing)
from alignloop.feedback.limits import (BUSY_TIMEOUT_S, MAX_CAMPAIGN_NAME, MAX_COMMENT, MAX_ID, MAX_INSTRUCTIONS,
                                       MAX_KEY, MAX_NAME, MAX_PROMPT_CHARS, MAX_RATERS_PER_ITEM, MAX_RESPONSE_CHARS,
                                       MAX_RESPONSES, MAX_SEED, MAX_TOKEN)

ASSIGN_ATTEMPTS = 8  # a new assignment is looked for this often while other raters take the free items
ASSIGNMENT_WITH = [joinedload(Assignment.item), joinedload(Assignment.campaign), joinedload(Assignment.judgment)]
ITEM_BATCH_ROWS = 200  # a new campaign's items go in in transactions of at most this many items ...
ITEM_BATCH_CHARS = 1_000_000  # ... or this many characters of text, so the write lock is held briefly


class FeedbackError(Exception):
    """An operation refused; `status` is the HTTP status the web layer answers with."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(FeedbackError):
    status = 404


class Conflict(FeedbackError):
    status = 409


class Invalid(FeedbackError):
    status = 422


# --- database set-up ------------------------------------------------------------------------

def alembic_config() -> Config:
    return Config(str(Path(__file__).with_name("alembic.ini")))


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (Alembic); existing data is kept. A database already at
    the newest revision is only read."""
    if revision == "head" and schema_revision(engine) == head_revision():
        return
    cfg = alembic_config()
    with writer(engine).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def head_revision() -> str:
    """The newest schema revision this version of the code knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def schema_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def open_db(db: str | Path, upgrade: bool = True,
            busy_timeout: float = BUSY_TIMEOUT_S) -> tuple[Engine, sessionmaker[Session]]:
    """Engine and session factory for `--db` (a SQLite path or a URL), migrated to head unless
    `upgrade` is False (a reader that must not change the database). A write waits at most
    `busy_timeout` seconds for the lock."""
    engine = make_engine(db, busy_timeout=busy_timeout)
    if upgrade:
        migrate(engine)
    return engine, sessionmaker(engine, expire_on_commit=False, info={"busy_timeout": busy_timeout})


def _locked(stmt: Select) -> Select:
    """`stmt` inside a write transaction: fresh values, and the rows locked on PostgreSQL
    (SQLite's write lock already excludes every other writer)."""
    return stmt.with_for_update().execution_options(populate_existing=True)


def is_db_id(value: Any) -> bool:
    """An id the database can hold (anything else is simply not found)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID


def setting(s: Session, key: str) -> str | None:
    row = s.get(Setting, key)
    return None if row is None else row.value


# --- campaigns -------------------------------------------------------------------------------

def check_samples(record: Samples, kind: str, where: str) -> None:
    """Refuse a record the campaign kind cannot show, with a message naming where it came from."""
    k = len(record.responses)
    if kind == "compare" and k != 2:
        raise Invalid(f"{where}: field 'responses': a compare campaign needs exactly 2 responses, got {k} "
                      f"(use --kind rank for {k})")
    if kind == "rank" and k < 2:
        raise Invalid(f"{where}: field 'responses': a rank campaign needs at least 2 responses, got {k}")
    if k > MAX_RESPONSES:
        raise Invalid(f"{where}: field 'responses': {k} responses; at most {MAX_RESPONSES} fit on a page")
    for i, r in enumerate(record.responses):
        if not r.strip():
            raise Invalid(f"{where}: field 'responses[{i}]': empty response")
        if len(r) > MAX_RESPONSE_CHARS:
            raise Invalid(f"{where}: field 'responses[{i}]': {len(r)} characters (at most {MAX_RESPONSE_CHARS})")
    if sum(len(m["content"]) for m in record.chat()) > MAX_PROMPT_CHARS:
        raise Invalid(f"{where}: field 'prompt': longer than {MAX_PROMPT_CHARS} characters")


def check_campaign_settings(name: str, kind: str, raters_per_item: Any, gold_rate: Any, seed: Any,
                            instructions: str) -> str:
    """The stripped name, or Invalid naming the first field out of bounds (the CLI's bounds)."""
    if kind not in KINDS:
        raise Invalid(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    name = name.strip()
    if not name or len(name) > MAX_CAMPAIGN_NAME:
        raise Invalid(f"name: give a campaign name of 1 to {MAX_CAMPAIGN_NAME} characters")
    if type(raters_per_item) is not int or not 1 <= raters_per_item <= MAX_RATERS_PER_ITEM:
        raise Invalid(f"raters_per_item: a whole number from 1 to {MAX_RATERS_PER_ITEM}")
    if type(gold_rate) not in (int, float) or not 0.0 <= gold_rate <= 1.0:
        raise Invalid("gold_rate: a probability in [0, 1]")
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        raise Invalid(f"seed: a whole number from 0 to {MAX_SEED}")
    if len(instructions) > MAX_INSTRUCTIONS:
        raise Invalid(f"instructions: longer than {MAX_INSTRUCTIONS} characters")
    return name


def _item_rows(kind: str, samples: Sequence[Samples], gold: Sequence[Comparison | BinaryFeedback],
               raters_per_item: int, where: Sequence[str] | None) -> list[dict[str, Any]]:
    """Checked rows of a new campaign's items: one per samples record, then the gold items."""
    rows = []
    for i, rec in enumerate(samples):
        check_samples(rec, kind, where[i] if where else f"record {i + 1}")
        rows.append(dict(source_id=rec.id, prompt=rec.prompt_fields(), responses=list(rec.responses),
                         model=rec.model, sampling=rec.sampling, meta=rec.meta, is_gold=False, gold_answer=None,
                         open_slots=raters_per_item))
    for i, g in enumerate(gold):
        label = f"gold record {i + 1}"
        if kind == "thumbs":
            if not isinstance(g, BinaryFeedback):
                raise Invalid(f"{label}: a thumbs campaign takes binary feedback records as gold")
            responses, answer = [g.response], [g.label]
        else:
            if not isinstance(g, Comparison) or g.ranking is None:
                raise Invalid(f"{label}: a {kind} campaign takes comparison records with a ranking as gold")
            responses, answer = list(g.responses), [e if isinstance(e, int) else list(e) for e in g.ranking]
        check_samples(Samples(**g.prompt_fields(), responses=responses), kind, label)
        rows.append(dict(source_id=g.id, prompt=g.prompt_fields(), responses=responses, model=None, sampling={},
                         meta=g.meta, is_gold=True, gold_answer=answer, open_slots=0))
    return rows


def _batches(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    chars = 0
    for row in rows:
        size = sum(map(len, row["responses"])) + len(str(row["prompt"]))
        if batch and (len(batch) >= ITEM_BATCH_ROWS or chars + size > ITEM_BATCH_CHARS):
            yield batch
            batch, chars = [], 0
        batch.append(row)
        chars += size
    if batch:
        yield batch


def create_campaign(
    s: Session,
    name: str,
    kind: str,
    samples: Sequence[Samples],
    raters_per_item: int = 3,
    instructions: str = "",
    gold: Sequence[Comparison | BinaryFeedback] = (),
    gold_rate: float = 0.1,
    seed: int = 0,
    where: Sequence[str] | None = None,
) -> Campaign:
    """A campaign with one item per samples record, plus gold items with known answers.

    Gold items are Comparison records (rank, compare) or BinaryFeedback records (thumbs).
    `where[i]` names record i in error messages (file:line). Everything is checked before
    anything is written; the items then go in in short transactions while the campaign is
    hidden (`ready` false), and it appears whole at the end or, on an error, not at all. An
    unfinished campaign of the same name (its creation was interrupted) is replaced."""
    name = check_campaign_settings(name, kind, raters_per_item, gold_rate, seed, instructions)
    if not samples:
        raise Invalid("samples: no records")
    rows = _item_rows(kind, samples, gold, raters_per_item, where)
    if find_campaign_id(s, name) is not None:
        raise Conflict(f"a campaign named {name!r} exists already")
    campaign_id = _start_campaign(s, Campaign(name=name, kind=kind, raters_per_item=raters_per_item,
                                              instructions=instructions, gold_rate=gold_rate, seed=seed,
                                              ready=False))
    try:
        for batch in _batches(rows):
            with writing(s):
                s.execute(insert(Item), [{**row, "campaign_id": campaign_id} for row in batch])
        with writing(s):
            done = s.execute(update(Campaign).where(Campaign.id == campaign_id, Campaign.ready.is_(False))
                             .values(ready=True))
            if done.rowcount != 1:
                raise Conflict(f"campaign {name!r} was replaced while it was being created")
    except IntegrityError:  # its row was deleted under it by another creation of the same name
        _discard_campaign(s, campaign_id)
        raise Conflict(f"campaign {name!r} was replaced while it was being created") from None
    except BaseException:
        _discard_campaign(s, campaign_id)
        raise
    return s.get(Campaign, campaign_id, populate_existing=True)


def _start_campaign(s: Session, campaign: Campaign) -> int:
    """Insert the (hidden) campaign row, replacing an unfinished one of that name; its id."""
    try:
        with writing(s):
            old = s.scalar(_locked(select(Campaign).where(Campaign.name == campaign.name)))
            if old is not None and old.ready:
                raise Conflict(f"a campaign named {campaign.name!r} exists already")
            if old is not None:
                s.execute(delete(Campaign).where(Campaign.id == old.id))
            s.add(campaign)
    except IntegrityError:
        raise Conflict(f"a campaign named {campaign.name!r} exists already") from None
    return campaign.id


def _discard_campaign(s: Session, campaign_id: int) -> None:
    """Remove a campaign that could not be finished (best effort: it stays hidden otherwise)."""
    with contextlib.suppress(Exception):
        s.rollback()
        with writing(s):
            s.execute(delete(Campaign).where(Campaign.id == campaign_id, Campaign.ready.is_(False)))


def find_campaign_id(s: Session, name: str) -> int | None:
    return s.scalar(select(Campaign.id).where(Campaign.name == name, Campaign.ready))


def find_campaign(s: Session, ref: str | int) -> Campaign:
    """A (ready) campaign by id or by name."""
    c = None
    digits = isinstance(ref, str) and ref.isascii() and ref.isdigit() and len(ref) <= 12
    if is_db_id(ref) or (digits and is_db_id(int(ref))):
        c = s.get(Campaign, int(ref))
    if c is None:
        c = s.scalar(select(Campaign).where(Campaign.name == str(ref)))
    if c is None or not c.ready:
        raise NotFound(f"no campaign {str(ref)[:MAX_CAMPAIGN_NAME]!r}")
    return c


# --- raters, tokens and sessions -------------------------------------------------------------

def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _token_ok(token: Any) -> bool:
    return isinstance(token, str) and 0 < len(token) <= MAX_TOKEN


def add_rater(s: Session, name: str, admin: bool = False, api_token: bool = False,
              base_url: str | None = None) -> tuple[Rater, str, str | None]:
    """Create a rater (or take the existing one of that name) and issue a fresh one-time login
    token, and an API token if asked. Only sha256 hashes are stored; the tokens are returned
    once. A fresh link for an existing rater ends their sessions (old cookies stop working).
    `admin` promotes; it never demotes an existing admin. `base_url`, the address the link was
    printed with, is remembered for the first admin: the app builds login links from it."""
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME:
        raise Invalid(f"name: give a rater name of 1 to {MAX_NAME} characters")
    name = name.strip()
    login = secrets.token_urlsafe(32)
    api = secrets.token_urlsafe(32) if api_token else None
    try:
        with writing(s):
            rater = s.scalar(_locked(select(Rater).where(Rater.name == name)))
            if rater is None:
                rater = Rater(name=name, role="admin" if admin else "rater", session_version=0)
                s.add(rater)
            else:
                rater.session_version += 1
                if admin:
                    rater.role = "admin"
            rater.login_token_hash = hash_token(login)
            if api is not None:
                rater.api_token_hash = hash_token(api)
            if base_url and rater.is_admin and s.get(Setting, "base_url") is None:
                s.add(Setting(key="base_url", value=base_url))
    except IntegrityError:  # the same new name, added at the same moment elsewhere
        raise Conflict(f"rater {name!r} was being added at the same time; try again") from None
    return rater, login, api


def rater_for_login_token(s: Session, token: str) -> Rater | None:
    if not _token_ok(token):
        return None
    return s.scalar(select(Rater).where(Rater.login_token_hash == hash_token(token)))


def redeem_login_token(s: Session, token: str) -> Rater | None:
    """The rater the one-time login token belongs to; the token is used up (two browsers
    racing with one link: one wins)."""
    if not _token_ok(token):
        return None
    with writing(s):
        rater = s.scalar(_locked(select(Rater).where(Rater.login_token_hash == hash_token(token))))
        if rater is not None:
            rater.login_token_hash = None
    return rater


def rater_for_api_token(s: Session, token: str) -> Rater | None:
    if not _token_ok(token):
        return None
    return s.scalar(select(Rater).where(Rater.api_token_hash == hash_token(token)))


def end_sessions(s: Session, rater_id: int, everywhere: bool = False) -> None:
    """Make every session cookie of the rater invalid (logout). `everywhere` (an admin's "sign
    out everywhere") also cancels their unused login link and their API token."""
    values: dict[str, Any] = {"session_version": Rater.session_version + 1}
    if everywhere:
        values.update(login_token_hash=None, api_token_hash=None)
    with writing(s):
        if s.execute(update(Rater).where(Rater.id == rater_id).values(**values)).rowcount != 1:
            raise NotFound(f"no rater {rater_id}")


def find_rater(s: Session, rater_id: int) -> Rater:
    rater = s.get(Rater, rater_id) if is_db_id(rater_id) else None
    if rater is None:
        raise NotFound(f"no rater {rater_id}")
    return rater


# --- assignments -----------------------------------------------------------------------------

def _display_order(campaign: Campaign, item: Item, rater: Rater) -> list[int]:
    order = list(range(len(item.responses)))
    random.Random(f"{campaign.seed}:order:{item.id}:{rater.id}").shuffle(order)
    return order


def _mine(rater: Rater) -> Select:
    return select(Assignment.item_id).where(Assignment.rater_id == rater.id)


def _free_items(rater: Rater, campaign_id: Any, gold: bool) -> Select:
    """Items of the campaign this rater has never had: gold ones, or regular ones with a free
    place (`campaign_id` may be a column: the query then correlates)."""
    q = select(Item).where(Item.campaign_id == campaign_id, Item.id.not_in(_mine(rater)))
    return q.where(Item.is_gold.is_(True)) if gold else q.where(ITEM_IS_OPEN)


def _campaign_with_free_item(s: Session, rater: Rater, campaign_id: int | None) -> Campaign | None:
    """The oldest ready campaign (or campaign `campaign_id`) with a free item for this rater."""
    q = select(Campaign).where(Campaign.ready, _free_items(rater, Campaign.id, gold=False).exists())
    if campaign_id is not None:
        q = q.where(Campaign.id == campaign_id)
    return s.scalars(q.order_by(Campaign.id).limit(1)).first()


def _lock_free_item(s: Session, rater: Rater, campaign: Campaign) -> Item | None:
    """Inside the write transaction: the first free regular item for this rater, fresh. On
    PostgreSQL it is locked, skipping items another rater is being given right now (so
    concurrent raters spread over items instead of queueing on one); only when every free
    item is being given, wait for them. (SQLite's write lock already excludes every writer.)"""
    q = _free_items(rater, campaign.id, gold=False).order_by(Item.id).limit(1)
    q = q.execution_options(populate_existing=True)
    if s.get_bind().dialect.name != "postgresql":
        return s.scalars(q).first()
    return (s.scalars(q.with_for_update(of=Item, skip_locked=True)).first()
            or s.scalars(q.with_for_update(of=Item)).first())


def _free_slot(s: Session, item: Item, raters_per_item: int) -> int | None:
    used = set(s.scalars(select(Assignment.slot).where(Assignment.item_id == item.id, Assignment.slot.is_not(None))))
    return next((k for k in range(raters_per_item) if k not in used), None)


def _new_assignment(s: Session, rater: Rater, campaign: Campaign, item: Item, shown: bool) -> Assignment | None:
    """Give the rater the item (a free slot of a regular item); None if a race took it."""
    slot = None if item.is_gold else _free_slot(s, item, campaign.raters_per_item)
    if not item.is_gold and slot is None:
        return None
    a = Assignment(campaign=campaign, item=item, rater=rater, slot=slot, status="open",
                   display_order=_display_order(campaign, item, rater), shown_at=utcnow() if shown else None)
    try:
        with s.begin_nested():  # the unique constraints settle a race the locks did not prevent
            s.add(a)
            if not item.is_gold:
                item.open_slots = Item.open_slots - 1
    except IntegrityError:
        return None
    return a


def _gold_item(s: Session, rater: Rater, campaign: Campaign) -> Item | None:
    """With probability `gold_rate` (seeded by the rater's count of items in the campaign) a
    gold item of the campaign the rater has not seen; else None."""
    n_had = s.scalar(select(func.count()).select_from(Assignment).where(
        Assignment.rater_id == rater.id, Assignment.campaign_id == campaign.id))
    rng = random.Random(f"{campaign.seed}:gold:{rater.id}:{n_had}")
    if rng.random() >= campaign.gold_rate:
        return None
    gold = list(s.scalars(select(Item.id).where(Item.campaign_id == campaign.id, Item.is_gold.is_(True),
                                                Item.id.not_in(_mine(rater))).order_by(Item.id).limit(50)))
    return s.get(Item, rng.choice(gold)) if gold else None


def _assign(s: Session, rater: Rater, campaign: Campaign, shown: bool) -> Assignment | None:
    """Inside a write transaction: a new assignment in `campaign`, or None when it has nothing
    left for this rater. With probability `gold_rate` a gold item they have not seen is
    mixed in instead of the first free regular item."""
    item = _lock_free_item(s, rater, campaign)
    if item is None:
        return None
    gold = _gold_item(s, rater, campaign) if campaign.gold_rate > 0 else None
    if gold is not None and (a := _new_assignment(s, rater, campaign, gold, shown)) is not None:
        return a
    return _new_assignment(s, rater, campaign, item, shown)


def _open_assignment(s: Session, rater: Rater, campaign_id: int | None) -> Assignment | None:
    q = (select(Assignment).join(Campaign, Campaign.id == Assignment.campaign_id)
         .where(Assignment.rater_id == rater.id, Assignment.status == "open", Campaign.ready))
    if campaign_id is not None:
        q = q.where(Assignment.campaign_id == campaign_id)
    return s.scalars(q.order_by(Assignment.id).limit(1)).first()


def next_assignment(s: Session, rater: Rater, campaign_id: int | None = None,
                    shown: bool = False) -> Assignment | None:
    """The rater's open assignment, or a new one: the first item (campaigns oldest first) that
    they never had and that has a free place among its `raters_per_item`. With probability
    `gold_rate` a gold item they have not seen is mixed in instead. None when nothing is left.
    `shown`: the caller shows it now (its shown time is set in the same transaction)."""
    if campaign_id is not None and not is_db_id(campaign_id):
        return None
    current = _open_assignment(s, rater, campaign_id)
    if current is not None:
        if shown:
            mark_shown(s, current)
        return current
    for _attempt in range(ASSIGN_ATTEMPTS):  # the read found a free item; under the lock it may be gone
        campaign = _campaign_with_free_item(s, rater, campaign_id)
        if campaign is None:
            return None
        with writing(s):
            a = _assign(s, rater, campaign, shown)
        if a is not None:
            return a
    return None


def get_assignment(s: Session, rater: Rater, assignment_id: int) -> Assignment:
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


def _answer(a: Assignment, ranking: Any, labels: Any, unsafe: Any) -> dict[str, Any]:
    """The answer in display positions -> the stored fields in original indices, or Invalid."""
    k, order = len(a.item.responses), a.display_order
    out: dict[str, Any] = {"unsafe": sorted(order[p] for p in _check_positions(unsafe, k, "unsafe")),
                           "ranking": None, "labels": None}
    if a.campaign.kind == "thumbs":
        if ranking is not None:
            raise Invalid("ranking: a thumbs campaign takes labels (1 good, 0 bad), not a ranking")
        if not isinstance(labels, list) or len(labels) != k or not all(_is_position(v, 2) for v in labels):
            raise Invalid(f"labels: give {k} labels, one per response, each 1 (good) or 0 (bad)")
        out["labels"] = [0] * k
        for p, v in enumerate(labels):
            out["labels"][order[p]] = v
    else:
        if labels is not None:
            raise Invalid("labels: a rank or compare campaign takes a ranking, not labels")
        tiers = check_ranking(ranking, k)
        out["ranking"] = [order[t[0]] if len(t) == 1 else sorted(order[p] for p in t) for t in tiers]
    return out


def _replay(stored: Judgment | None, key: str | None) -> tuple[Judgment, bool]:
    """An answered assignment: the stored judgment again for a retry with its key, else Conflict."""
    if stored is not None and key is not None and stored.idempotency_key == key:
        return stored, False
    if stored is None:
        raise Conflict("This idempotency key was used for another submission.")
    raise Conflict("This item was already answered; its judgment is stored.")


def _store_judgment(s: Session, assignment_id: int, answer: dict[str, Any], comment: str,
                    key: str | None) -> tuple[Judgment, bool]:
    """Inside a write transaction: the judgment, unless the assignment was answered (a replay
    or a Conflict), skipped or the key was used for another one (Conflict)."""
    a = s.get(Assignment, assignment_id, populate_existing=True, with_for_update=True)
    same = Judgment.assignment_id == a.id
    stored = s.scalars(select(Judgment).where(or_(same, Judgment.idempotency_key == key) if key else same)).all()
    own = next((j for j in stored if j.assignment_id == a.id), None)
    if own is not None or stored:
        return _replay(own, key)
    if a.status == "skipped":
        raise Conflict("This item was skipped; it cannot be answered any more.")
    now = utcnow()
    shown = a.shown_at or a.created_at
    j = Judgment(assignment=a, idempotency_key=key, comment=comment, display_order=list(a.display_order),
                 shown_at=shown, submitted_at=now, time_spent_s=max(0.0, (now - shown).total_seconds()), **answer)
    s.add(j)
    a.status = "done"
    return j, True


def submit_judgment(
    s: Session,
    rater: Rater,
    assignment_id: int,
    ranking: Any = None,
    labels: Sequence[Any] | None = None,
    unsafe: Sequence[Any] = (),
    comment: str = "",
    key: str | None = None,
) -> tuple[Judgment, bool]:
    """Store the rater's answer, in display positions, as one transaction. Returns
    (judgment, created). Retrying with the same idempotency key returns the stored judgment
    (created False); a second, different answer to the same assignment is a Conflict."""
    if key is not None and (not isinstance(key, str) or not key or len(key) > MAX_KEY):
        raise Invalid(f"idempotency key: 1 to {MAX_KEY} characters")
    if not isinstance(comment, str) or len(comment.strip()) > MAX_COMMENT:
        raise Invalid(f"comment: {len(str(comment).strip())} characters; at most {MAX_COMMENT}")
    a = get_assignment(s, rater, assignment_id)
    if a.judgment is not None:
        return _replay(a.judgment, key)
    answer = _answer(a, ranking, labels, unsafe)
    try:
        with writing(s):
            return _store_judgment(s, a.id, answer, comment.strip(), key)
    except IntegrityError:  # the same submission won a race on another connection
        stored = s.scalar(select(Judgment).where(Judgment.assignment_id == a.id))
        return _replay(stored, key)


def skip_assignment(s: Session, rater: Rater, assignment_id: int) -> Assignment:
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


def parse_jsonl(data: bytes, filename: str, record_type: type) -> tuple[list[Any], list[str]]:
    """Records of an uploaded JSON Lines file and, for each, "file:line" for error messages."""
    import json

    from alignloop.data.io import DataError, parse_record

    records, where = [], []
    for lineno, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        loc = f"{filename}:{lineno}"
        try:
            obj = json.loads(raw.decode("utf-8"))
            records.append(parse_record(record_type, obj, loc))
        except UnicodeDecodeError:
            raise Invalid(f"{loc}: not valid UTF-8") from None
        except json.JSONDecodeError as err:
            raise Invalid(f"{loc}: invalid JSON ({err.msg} at column {err.colno})") from None
        except DataError as err:
            raise Invalid(str(err)) from None
        where.append(loc)
    if not records:
        raise Invalid(f"{filename}: no records")
    return records, where
