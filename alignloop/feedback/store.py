"""Every database operation of the feedback app, as functions taking a `Session`.

The web pages, the JSON API and the CLI call only these. Each function that changes
something commits once at its end, so one submission is one transaction. Errors are
`FeedbackError`s carrying an HTTP status and a message a rater can act on.

Positions and indices: a rater sees the K responses of an item in a random order fixed per
assignment (`display_order[p]` = original index of the response shown at position p).
Raters and API clients answer in positions; the store keeps rankings in original indices,
plus the display order, so the answer is independent of what the rater happened to see.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from alignloop.data.records import BinaryFeedback, Comparison, RankingEntry, Samples
from alignloop.feedback.db import KINDS, Assignment, Campaign, Item, Judgment, Rater, Setting, make_engine, utcnow

MAX_COMMENT = 2000
MAX_RESPONSES = 16
MAX_RESPONSE_CHARS = 50_000
MAX_PROMPT_CHARS = 100_000
MAX_NAME = 100
MAX_INSTRUCTIONS = 20_000
MAX_KEY = 100


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
    """Bring the schema to `revision` (Alembic); existing data is kept."""
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def head_revision() -> str:
    """The newest schema revision this version of the code knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def schema_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def open_db(db: str | Path, upgrade: bool = True) -> tuple[Engine, sessionmaker[Session]]:
    """Engine and session factory for `--db` (a SQLite path or a URL), migrated to head unless
    `upgrade` is False (a reader that must not change the database)."""
    engine = make_engine(db)
    if upgrade:
        migrate(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)


def session_secret(s: Session) -> str:
    """The key that signs session cookies: made once per database, shared by every worker."""
    row = s.get(Setting, "session_secret")
    if row is None:
        s.add(Setting(key="session_secret", value=secrets.token_urlsafe(48)))
        try:
            s.commit()
        except IntegrityError:  # another process made it first
            s.rollback()
        row = s.get(Setting, "session_secret")
    else:
        s.commit()
    return row.value


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
    `where[i]` names record i in error messages (file:line)."""
    if kind not in KINDS:
        raise Invalid(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    name = name.strip()
    if not name or len(name) > 200:
        raise Invalid("name: give a campaign name of 1 to 200 characters")
    if raters_per_item < 1:
        raise Invalid("raters_per_item: at least 1")
    if not 0.0 <= gold_rate <= 1.0:
        raise Invalid("gold_rate: a probability in [0, 1]")
    if len(instructions) > MAX_INSTRUCTIONS:
        raise Invalid(f"instructions: longer than {MAX_INSTRUCTIONS} characters")
    if not samples:
        raise Invalid("samples: no records")
    if s.scalar(select(Campaign.id).where(Campaign.name == name)) is not None:
        raise Conflict(f"a campaign named {name!r} exists already")
    campaign = Campaign(name=name, kind=kind, raters_per_item=raters_per_item, instructions=instructions,
                        gold_rate=gold_rate, seed=seed)
    s.add(campaign)
    for i, rec in enumerate(samples):
        check_samples(rec, kind, where[i] if where else f"record {i + 1}")
        campaign.items.append(Item(source_id=rec.id, prompt=rec.prompt_fields(), responses=list(rec.responses),
                                   model=rec.model, sampling=rec.sampling, meta=rec.meta, is_gold=False))
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
        campaign.items.append(Item(source_id=g.id, prompt=g.prompt_fields(), responses=responses, model=None,
                                   sampling={}, meta=g.meta, is_gold=True, gold_answer=answer))
    try:
        s.commit()
    except IntegrityError:
        s.rollback()
        raise Conflict(f"a campaign named {name!r} exists already") from None
    return campaign


def find_campaign(s: Session, ref: str | int) -> Campaign:
    """A campaign by id or by name."""
    c = None
    if isinstance(ref, int) or str(ref).isdigit():
        c = s.get(Campaign, int(ref))
    if c is None:
        c = s.scalar(select(Campaign).where(Campaign.name == str(ref)))
    if c is None:
        raise NotFound(f"no campaign {ref!r}")
    return c


# --- raters and tokens -----------------------------------------------------------------------

def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_rater(s: Session, name: str, admin: bool = False, api_token: bool = False) -> tuple[Rater, str, str | None]:
    """Create a rater (or take the existing one of that name) and issue a fresh one-time login
    token, and an API token if asked. Only sha256 hashes are stored; the tokens are returned
    once. `admin` promotes; it never demotes an existing admin."""
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise Invalid(f"name: give a rater name of 1 to {MAX_NAME} characters")
    rater = s.scalar(select(Rater).where(Rater.name == name))
    if rater is None:
        rater = Rater(name=name, role="admin" if admin else "rater")
        s.add(rater)
    elif admin:
        rater.role = "admin"
    login = secrets.token_urlsafe(32)
    rater.login_token_hash = hash_token(login)
    api = None
    if api_token:
        api = secrets.token_urlsafe(32)
        rater.api_token_hash = hash_token(api)
    s.commit()
    return rater, login, api


def rater_for_login_token(s: Session, token: str) -> Rater | None:
    if not token or len(token) > 200:
        return None
    return s.scalar(select(Rater).where(Rater.login_token_hash == hash_token(token)))


def redeem_login_token(s: Session, token: str) -> Rater | None:
    """The rater the one-time login token belongs to; the token is used up."""
    rater = rater_for_login_token(s, token)
    if rater is not None:
        rater.login_token_hash = None
        s.commit()
    return rater


def rater_for_api_token(s: Session, token: str) -> Rater | None:
    if not token or len(token) > 200:
        return None
    return s.scalar(select(Rater).where(Rater.api_token_hash == hash_token(token)))


# --- assignments -----------------------------------------------------------------------------

def _display_order(campaign: Campaign, item: Item, rater: Rater) -> list[int]:
    order = list(range(len(item.responses)))
    random.Random(f"{campaign.seed}:order:{item.id}:{rater.id}").shuffle(order)
    return order


def _free_item_ids(s: Session, rater: Rater, campaign: Campaign, gold: bool, limit: int = 8) -> list[int]:
    """Items of `campaign` this rater has never had; regular ones only while a slot is free."""
    mine = select(Assignment.item_id).where(Assignment.rater_id == rater.id)
    q = select(Item.id).where(Item.campaign_id == campaign.id, Item.is_gold == gold, Item.id.not_in(mine))
    if not gold:
        taken = (select(func.count()).select_from(Assignment)
                 .where(Assignment.item_id == Item.id, Assignment.slot.is_not(None)).scalar_subquery())
        q = q.where(taken < campaign.raters_per_item)
    return list(s.scalars(q.order_by(Item.id).limit(limit)))


def _try_assign(s: Session, rater: Rater, campaign: Campaign, item_id: int, gold: bool) -> Assignment | None:
    item = s.get(Item, item_id)
    slot = None
    if not gold:
        used = set(s.scalars(select(Assignment.slot).where(Assignment.item_id == item_id,
                                                            Assignment.slot.is_not(None))))
        free = [k for k in range(campaign.raters_per_item) if k not in used]
        if not free:
            return None
        slot = free[0]
    a = Assignment(campaign_id=campaign.id, item_id=item_id, rater_id=rater.id, slot=slot,
                   display_order=_display_order(campaign, item, rater), status="open")
    try:
        with s.begin_nested():  # a racing rater took this slot: try the next item
            s.add(a)
    except IntegrityError:
        return None
    return a


def next_assignment(s: Session, rater: Rater, campaign_id: int | None = None) -> Assignment | None:
    """The rater's open assignment, or a new one: the first item (campaigns oldest first) that
    they never had and that has a free place among its `raters_per_item`. With probability
    `gold_rate` a gold item they have not seen is mixed in instead. None when nothing is left."""
    q = select(Assignment).where(Assignment.rater_id == rater.id, Assignment.status == "open")
    if campaign_id is not None:
        q = q.where(Assignment.campaign_id == campaign_id)
    current = s.scalars(q.order_by(Assignment.id).limit(1)).first()
    if current is not None:
        s.commit()
        return current
    cq = select(Campaign).order_by(Campaign.id)
    if campaign_id is not None:
        cq = cq.where(Campaign.id == campaign_id)
    for campaign in s.scalars(cq).all():
        for _attempt in range(5):
            regular = _free_item_ids(s, rater, campaign, gold=False)
            if not regular:
                break
            n_had = s.scalar(select(func.count()).select_from(Assignment).where(
                Assignment.rater_id == rater.id, Assignment.campaign_id == campaign.id))
            rng = random.Random(f"{campaign.seed}:gold:{rater.id}:{n_had}")
            if campaign.gold_rate > 0 and rng.random() < campaign.gold_rate:
                gold = _free_item_ids(s, rater, campaign, gold=True, limit=50)
                if gold:
                    a = _try_assign(s, rater, campaign, rng.choice(gold), gold=True)
                    if a is not None:
                        s.commit()
                        return a
            for item_id in regular:
                a = _try_assign(s, rater, campaign, item_id, gold=False)
                if a is not None:
                    s.commit()
                    return a
    s.commit()
    return None


def get_assignment(s: Session, rater: Rater, assignment_id: int) -> Assignment:
    """The rater's own assignment; anyone else's (or a missing one) is the same NotFound."""
    a = s.get(Assignment, assignment_id)
    if a is None or a.rater_id != rater.id:
        raise NotFound(f"no assignment {assignment_id} for you")
    return a


def mark_shown(s: Session, a: Assignment) -> None:
    """Remember when the rater first saw the item (time spent is measured from here)."""
    if a.shown_at is None:
        a.shown_at = utcnow()
    s.commit()


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
            if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p < k:
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


def _check_positions(values: Sequence[Any], k: int, field: str) -> list[int]:
    out = []
    for p in values:
        if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p < k:
            raise Invalid(f"{field}: {p!r} is not a response position (0 to {k - 1})")
        out.append(p)
    return sorted(set(out))


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
    a = get_assignment(s, rater, assignment_id)
    if key is not None and (not key or len(key) > MAX_KEY):
        raise Invalid(f"idempotency key: 1 to {MAX_KEY} characters")
    stored = s.scalar(select(Judgment).where(Judgment.assignment_id == a.id))
    if stored is not None:
        if key is not None and stored.idempotency_key == key:
            s.commit()
            return stored, False
        raise Conflict("This item was already answered; its judgment is stored.")
    if a.status == "skipped":
        raise Conflict("This item was skipped; it cannot be answered any more.")
    if key is not None and s.scalar(select(Judgment.id).where(Judgment.idempotency_key == key)) is not None:
        raise Conflict("This idempotency key was used for another submission.")
    k, order = len(a.item.responses), a.display_order
    comment = (comment or "").strip()
    if len(comment) > MAX_COMMENT:
        raise Invalid(f"comment: {len(comment)} characters; at most {MAX_COMMENT}")
    unsafe_orig = sorted(order[p] for p in _check_positions(list(unsafe), k, "unsafe"))
    ranking_orig = labels_orig = None
    if a.campaign.kind == "thumbs":
        if ranking is not None:
            raise Invalid("ranking: a thumbs campaign takes labels (1 good, 0 bad), not a ranking")
        if labels is None or len(labels) != k or any(v not in (0, 1) or isinstance(v, bool) for v in labels):
            raise Invalid(f"labels: give {k} labels, one per response, each 1 (good) or 0 (bad)")
        labels_orig = [0] * k
        for p, v in enumerate(labels):
            labels_orig[order[p]] = int(v)
    else:
        if labels is not None:
            raise Invalid("labels: a rank or compare campaign takes a ranking, not labels")
        tiers = check_ranking(ranking, k)
        ranking_orig = [order[t[0]] if len(t) == 1 else sorted(order[p] for p in t) for t in tiers]
    now = utcnow()
    shown = a.shown_at or a.created_at
    j = Judgment(assignment=a, idempotency_key=key, ranking=ranking_orig, labels=labels_orig,
                 unsafe=unsafe_orig, comment=comment, display_order=list(order), shown_at=shown,
                 submitted_at=now, time_spent_s=max(0.0, (now - shown).total_seconds()))
    s.add(j)
    a.status = "done"
    try:
        s.commit()
    except IntegrityError:  # the same submission won a race on another connection
        s.rollback()
        stored = s.scalar(select(Judgment).where(Judgment.assignment_id == assignment_id))
        if stored is not None and key is not None and stored.idempotency_key == key:
            return stored, False
        raise Conflict("This item was already answered; its judgment is stored.") from None
    return j, True


def skip_assignment(s: Session, rater: Rater, assignment_id: int) -> Assignment:
    """Give the item back: its place goes to another rater; this rater will not get it again."""
    a = get_assignment(s, rater, assignment_id)
    if a.status == "done":
        raise Conflict("This item was already answered.")
    a.status, a.slot = "skipped", None
    s.commit()
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
