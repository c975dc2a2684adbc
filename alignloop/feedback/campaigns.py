"""Campaigns: creating one from samples (and gold) records, finding one, and the per-process
cache of what never changes once a campaign is ready.

A campaign is checked whole before anything is written; its items then go in in short write
transactions while it is hidden (`ready` false), and it appears whole at the end or, on an
error, not at all. A ready campaign is never changed or deleted again (only its items' free
places are counted down), and neither are its items' texts: `campaign_info` and `item_text`
keep them in memory per engine, so a rater's request reads them from the database once per
process. They cache only rows of ready campaigns: a hidden campaign's item ids can be reused
on SQLite when it is replaced, a ready one's never.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignloop.data.records import BinaryFeedback, Comparison, Samples
from alignloop.feedback.db import KINDS, Campaign, Item, ItemMedia, locked, writing
from alignloop.feedback.errors import Conflict, Invalid, NotFound
from alignloop.feedback.media import is_digest, missing_media
from alignloop.feedback.panels import CampaignOptions, check_options, options_of
from alignloop.feedback.limits import (MAX_CAMPAIGN_NAME, MAX_INSTRUCTIONS, MAX_PROMPT_CHARS, MAX_RATERS_PER_ITEM,
                                       MAX_RESPONSE_CHARS, MAX_RESPONSES, MAX_SEED, is_db_id)

ITEM_BATCH_ROWS = 200  # a new campaign's items go in in transactions of at most this many items ...
ITEM_BATCH_CHARS = 1_000_000  # ... or this many characters of text, so the write lock is held briefly
ITEM_CACHE_SIZE = 20_000  # item texts kept per engine (least recently used dropped first)
MAX_EXPLANATION = 5_000  # characters of a gold item's explanation


def check_samples(record: Samples, kind: str, where: str) -> None:
    """Refuse a record the campaign kind cannot show, with a message naming where it came from."""
    k = len(record.responses)
    if kind == "compare" and k != 2:
        raise Invalid(f"{where}: field 'responses': a compare campaign needs exactly 2 responses, got {k} "
                      f"(use --kind rank for {k})")
    if kind == "clips":
        if k != 2:
            raise Invalid(f"{where}: field 'responses': a clips campaign compares exactly 2 clips, got {k}")
        clip_media(record, where)
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


def clip_media(record: Samples | Comparison, where: str) -> list[str]:
    """The digests of a clips record's two videos (`meta.media`, in the order of `responses`),
    or Invalid. The videos are put in the media folder first (media.add_media)."""
    media = record.meta.get("media")
    if not isinstance(media, list) or len(media) != len(record.responses) or not all(map(is_digest, media)):
        raise Invalid(f"{where}: field 'meta.media': give the sha256 of each clip's video in the media folder, "
                      f"one per response (alignloop feedback create --kind clips reads meta.videos paths)")
    return list(media)


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
        if kind == "clips":
            rows[-1][MEDIA] = clip_media(rec, where[i] if where else f"record {i + 1}")
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
        check_samples(Samples(**g.prompt_fields(), responses=responses, meta=g.meta), kind, label)
        if g.explanation is not None and (not g.explanation.strip() or len(g.explanation) > MAX_EXPLANATION):
            raise Invalid(f"{label}: field 'explanation': give 1 to {MAX_EXPLANATION} characters")
        rows.append(dict(source_id=g.id, prompt=g.prompt_fields(), responses=responses, model=None, sampling={},
                         meta=g.meta, is_gold=True, gold_answer=answer, open_slots=0, explanation=g.explanation))
        if kind == "clips":
            rows[-1][MEDIA] = clip_media(g, label)
    return rows


MEDIA = "media"  # an item row's videos (clips): inserted into item_media, not into items


def _insert_items(s: Session, campaign_id: int, batch: list[dict[str, Any]]) -> None:
    """One batch of item rows; for clips also each item's videos (item_media), by the ids the
    insert returned in the rows' order."""
    rows = [{**{k: v for k, v in row.items() if k != MEDIA}, "campaign_id": campaign_id} for row in batch]
    if not any(MEDIA in row for row in batch):
        s.execute(insert(Item), rows)
        return
    ids = s.scalars(insert(Item).returning(Item.id, sort_by_parameter_order=True), rows).all()
    s.execute(insert(ItemMedia), [{"item_id": item_id, "position": p, "sha256": digest}
                                  for item_id, row in zip(ids, batch) for p, digest in enumerate(row[MEDIA])])


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
    options: CampaignOptions | dict[str, Any] | None = None,
) -> Campaign:
    """A campaign with one item per samples record, plus gold items with known answers.

    Gold items are Comparison records (rank, compare, clips) or BinaryFeedback records (thumbs).
    A clips record's two responses name clips; its `meta.media` gives the digest of each
    one's video, already in the media folder (media.add_media).
    `where[i]` names record i in error messages (file:line). Everything is checked before
    anything is written; the items then go in in short transactions while the campaign is
    hidden (`ready` false), and it appears whole at the end or, on an error, not at all. An
    unfinished campaign of the same name (its creation was interrupted) is replaced.
    `options`: panel and practice options (panels.py); a practice round needs at least
    `practice.items` gold items, a panel at most `raters_per_item` groups per item."""
    name = check_campaign_settings(name, kind, raters_per_item, gold_rate, seed, instructions)
    if not samples:
        raise Invalid("samples: no records")
    opts = check_options(options)
    if opts is not None and opts.practice is not None and kind == "clips":
        raise Invalid("options.practice: a clips campaign has no practice round (text items only)")
    if opts is not None and opts.practice is not None and opts.practice.items > len(gold):
        raise Invalid(f"options.practice.items: {opts.practice.items} practice items need as many gold items "
                      f"(--gold), got {len(gold)}")
    if opts is not None and opts.panel is not None and opts.panel.min_groups > raters_per_item:
        raise Invalid(f"options.panel.min_groups: {opts.panel.min_groups} groups per item need at least as many "
                      f"raters per item, got {raters_per_item}")
    rows = _item_rows(kind, samples, gold, raters_per_item, where)
    if kind == "clips":
        missing = missing_media(s, [d for row in rows for d in row[MEDIA]])
        if missing:
            raise Invalid(f"meta.media: {len(missing)} video(s) not in the media folder (e.g. {missing[0]}); add "
                          "them first (alignloop feedback create --kind clips does, from meta.videos)")
    if find_campaign_id(s, name) is not None:
        raise Conflict(f"a campaign named {name!r} exists already")
    campaign_id = _start_campaign(s, Campaign(name=name, kind=kind, raters_per_item=raters_per_item,
                                              instructions=instructions, gold_rate=gold_rate, seed=seed,
                                              ready=False, options=opts.stored() if opts else None))
    try:
        for batch in _batches(rows):
            with writing(s):
                _insert_items(s, campaign_id, batch)
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
            old = s.scalar(locked(select(Campaign).where(Campaign.name == campaign.name)))
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


# --- what never changes: ready campaigns and their items' texts, cached per engine -----------

@dataclass(frozen=True, slots=True)
class CampaignInfo:
    """The fixed fields of a ready campaign."""

    id: int
    name: str
    kind: str
    instructions: str
    raters_per_item: int
    gold_rate: float
    seed: int
    options: CampaignOptions | None = None  # panel and practice options (panels.py)


@dataclass(frozen=True, slots=True)
class ItemText:
    """What a rater is shown of an item: the prompt as chat messages and the responses in their
    original order (tuples: one object is shared by every request)."""

    id: int
    campaign_id: int
    messages: tuple[dict[str, str], ...]
    responses: tuple[str, ...]
    is_gold: bool
    media: tuple[str, ...] = ()  # clips: the digest of each response's video, in original order


class _Cache:
    """One engine's campaigns (few: all kept) and item texts (a bounded LRU)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.campaigns: dict[int, CampaignInfo] = {}
        self.items: OrderedDict[int, ItemText] = OrderedDict()


_caches: weakref.WeakKeyDictionary[Engine, _Cache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()
C, I = Campaign.__table__, Item.__table__
_CAMPAIGN = select(C.c.id, C.c.name, C.c.kind, C.c.instructions, C.c.raters_per_item, C.c.gold_rate, C.c.seed,
                   C.c.ready, C.c.options).where(C.c.id == bindparam("campaign"))
_ITEM = (select(I.c.id, I.c.campaign_id, I.c.prompt, I.c.responses, I.c.is_gold, C.c.ready, C.c.kind)
         .join_from(I, C, C.c.id == I.c.campaign_id).where(I.c.id == bindparam("item")))
IM = ItemMedia.__table__
_ITEM_MEDIA = select(IM.c.sha256).where(IM.c.item_id == bindparam("item")).order_by(IM.c.position)


def _cache(conn: Connection) -> _Cache:
    engine = conn.engine
    cache = _caches.get(engine)
    if cache is None:
        with _caches_lock:
            cache = _caches.setdefault(engine, _Cache())
    return cache


def chat_messages(prompt: dict[str, Any]) -> list[dict[str, str]]:
    """An item's stored prompt fields as chat messages (role, content)."""
    return prompt.get("messages") or [{"role": "user", "content": prompt["prompt"]}]


def campaign_info(conn: Connection, campaign_id: int) -> CampaignInfo | None:
    """The campaign's fixed fields, from memory once read (None: no such ready campaign)."""
    cache = _cache(conn)
    info = cache.campaigns.get(campaign_id)
    if info is None:
        row = conn.execute(_CAMPAIGN, {"campaign": campaign_id}).one_or_none()
        if row is None or not row.ready:
            return None
        info = CampaignInfo(row.id, row.name, row.kind, row.instructions, row.raters_per_item, row.gold_rate, row.seed,
                            options_of(row.options))
        cache.campaigns[campaign_id] = info
    return info


def item_text(conn: Connection, item_id: int) -> ItemText | None:
    """The item's prompt and responses, from memory once read (None: no such item of a ready
    campaign)."""
    cache = _cache(conn)
    with cache.lock:
        item = cache.items.get(item_id)
        if item is not None:
            cache.items.move_to_end(item_id)
            return item
    row = conn.execute(_ITEM, {"item": item_id}).one_or_none()
    if row is None or not row.ready:
        return None
    media = tuple(conn.execute(_ITEM_MEDIA, {"item": item_id}).scalars()) if row.kind == "clips" else ()
    item = ItemText(row.id, row.campaign_id, tuple(chat_messages(row.prompt)), tuple(row.responses), row.is_gold,
                    media)
    with cache.lock:
        cache.items[item_id] = item
        if len(cache.items) > ITEM_CACHE_SIZE:
            cache.items.popitem(last=False)
    return item


# --- uploads ---------------------------------------------------------------------------------

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
