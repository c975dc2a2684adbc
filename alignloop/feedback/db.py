"""Database models of the feedback app (SQLAlchemy 2 ORM), the engine factory and the one way
to write: a short write transaction (`writing`).

    Campaign 1--* Item            a prompt + K candidate responses (or a gold item with a known answer)
    Campaign 1--* Assignment *--1 Rater
    Item     1--* Assignment 1--0..1 Judgment
    Item     1--* ItemMedia  *--1 Media       clips campaigns: the video shown for each response (revision 4)
    Campaign 1--* PracticeAnswer *--1 Rater   a rater's practice round on gold items (revision 5)

An assignment is one rater's turn on one item. It holds the display order the rater saw
(`display_order[p]` = original index of the response shown at position p) and a `slot`
(0 .. raters_per_item-1) with a unique (item, slot) constraint: two raters racing for the
last free place of an item cannot both get it, on SQLite or PostgreSQL alike. Gold items
have no slot (every rater may see each gold item once); a skipped assignment gives its slot
back (slot = NULL). `Item.open_slots` counts the free places (raters_per_item minus the
slots taken; 0 for gold items), so finding a free item reads a small partial index instead
of counting every item's assignments (and `ix_items_gold` finds a campaign's gold items). A judgment belongs to exactly one assignment
(unique), so a retried or double-clicked submission can never store two.

Transactions are short. A read takes no lock (SQLite in WAL mode: readers never wait for
the writer; on SQLite a read transaction is also `query_only`, so a write that forgot
`writing` fails at once instead of racing). A write goes through `writing(session)`: on
SQLite it queues on this process's mutex for the database file, then takes the write lock
up front (BEGIN IMMEDIATE) and holds it only for its own statements; on PostgreSQL rows are
locked where a race matters (`SELECT ... FOR UPDATE [SKIP LOCKED]`, in the store). Whoever
cannot get the lock within `limits.BUSY_TIMEOUT_S` gets an error that `is_busy` recognises
(the web app answers 503 with Retry-After).

A `Media` row is a video file of the media folder (media.py), named by the sha256 of its
bytes: the only thing a request names a file by. `ItemMedia` says which video stands for
response `position` of an item; its index on `sha256` answers "may this rater see this
file" (an open assignment of theirs on an item that shows it) with one indexed join.

The schema is owned by the Alembic migrations in `migrations/`; `tests` check that these
models and the migrated schema agree.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from sqlalchemy import (
    JSON,
    Select,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    literal_column,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from alignloop.feedback.limits import BUSY_TIMEOUT_S

KINDS = ("rank", "compare", "thumbs", "clips")
ROLES = ("rater", "admin")
WRITE = "alignloop_write"  # execution option: this transaction writes (see `writing`)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Setting(Base):
    """Key/value settings of one installation (`base_url`: the address of the first admin's
    login link). The session signing key is never kept here (see `secret.py`)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Campaign(Base):
    __tablename__ = "campaigns"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # rank | compare | thumbs | clips
    raters_per_item: Mapped[int] = mapped_column(Integer)
    instructions: Mapped[str] = mapped_column(Text, default="")
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # False while its items are being loaded (in short transactions): nobody sees it yet (revision 3)
    ready: Mapped[bool] = mapped_column(Boolean, default=True)
    # panel and practice options (feedback/panels.py, practice.py); NULL: none (revision 5)
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    items: Mapped[list[Item]] = relationship(back_populates="campaign", order_by="Item.id")


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        Index("ix_items_open", "campaign_id", "id", sqlite_where=text("open_slots > 0"),
              postgresql_where=text("open_slots > 0")),
        Index("ix_items_gold", "campaign_id", "is_gold"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    source_id: Mapped[str | None] = mapped_column(String(200))  # the `id` of the input record
    prompt: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"prompt": str} or {"messages": [...]}
    responses: Mapped[list[str]] = mapped_column(JSON)
    model: Mapped[str | None] = mapped_column(String(200))
    sampling: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    # gold answer: a ranking (original indices, nested = tie) or, for thumbs, labels per response
    gold_answer: Mapped[list[Any] | None] = mapped_column(JSON)
    # free places: raters_per_item minus the slots taken; gold items have none (revision 3)
    open_slots: Mapped[int] = mapped_column(Integer, default=0)
    # gold items: why the known answer is right, shown after a practice answer (revision 5)
    explanation: Mapped[str | None] = mapped_column(Text)
    campaign: Mapped[Campaign] = relationship(back_populates="items")
    # clips campaigns: the video of each response, in original order (revision 4)
    media: Mapped[list[ItemMedia]] = relationship(order_by="ItemMedia.position")


class Media(Base):
    """A video file of the media folder, named by the sha256 hex of its bytes (revision 4)."""

    __tablename__ = "media"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    content_type: Mapped[str] = mapped_column(String(32))  # video/mp4 | video/webm
    size: Mapped[int] = mapped_column(Integer)  # bytes
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ItemMedia(Base):
    """Response `position` (original index) of an item is the video `sha256` (revision 4)."""

    __tablename__ = "item_media"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("media.sha256"), index=True)


# The one spelling of "this item has a free place": a literal 0, so that SQLite can use the
# partial index (it cannot prove that `open_slots > ?` implies the index's condition).
ITEM_IS_OPEN = Item.__table__.c.open_slots > literal_column("0")


class Rater(Base):
    __tablename__ = "raters"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="rater")  # rater | admin
    # sha256 hex of the one-time login token; NULL once used
    login_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    # sha256 hex of the long-lived API token (revision 2)
    api_token_hash: Mapped[str | None] = mapped_column(String(64), index=True, unique=True)
    # a session cookie is valid only while it carries this number; +1 signs the rater out everywhere (revision 3)
    session_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # free key/value attributes (region, language, expert, ...): panels.py (revision 5)
    attributes: Mapped[dict[str, str]] = mapped_column(JSON, default=dict, server_default=text("'{}'"))

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("item_id", "rater_id", name="uq_assignment_item_rater"),
        UniqueConstraint("item_id", "slot", name="uq_assignment_item_slot"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"), index=True)
    slot: Mapped[int | None] = mapped_column(Integer)
    display_order: Mapped[list[int]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | done | skipped
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    shown_at: Mapped[dt.datetime | None] = mapped_column(DateTime)  # first time the page was shown
    item: Mapped[Item] = relationship()
    campaign: Mapped[Campaign] = relationship()
    rater: Mapped[Rater] = relationship()
    judgment: Mapped[Judgment | None] = relationship(back_populates="assignment", uselist=False)


class Judgment(Base):
    __tablename__ = "judgments"
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), unique=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    # rank/compare/clips: original response indices best first, nested list = tie; thumbs, abstained: NULL
    ranking: Mapped[list[Any] | None] = mapped_column(JSON)
    # thumbs: 1/0 per original response index; rank/compare: NULL
    labels: Mapped[list[int] | None] = mapped_column(JSON)
    unsafe: Mapped[list[int]] = mapped_column(JSON, default=list)  # original indices flagged unsafe
    comment: Mapped[str] = mapped_column(Text, default="")
    display_order: Mapped[list[int]] = mapped_column(JSON)
    shown_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    submitted_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    time_spent_s: Mapped[float | None] = mapped_column(Float)  # revision 2
    # clips: "can't tell" (no ranking: the rater abstained; "equal" is a tie ranking) (revision 4)
    abstained: Mapped[bool] = mapped_column(Boolean, default=False)
    assignment: Mapped[Assignment] = relationship(back_populates="judgment")


class PracticeAnswer(Base):
    """One practice answer of a rater on a gold item of a campaign (revision 5): its attempt
    (1, 2, ... after a failed round with retry), the answer in original indices, and its
    score against the gold answer (share of strict gold pairs ordered the gold way, a tie
    half; thumbs: share of labels equal to the gold labels). Never a judgment: never
    exported, never counted in agreement."""

    __tablename__ = "practice_answers"
    __table_args__ = (
        UniqueConstraint("campaign_id", "rater_id", "attempt", "item_id", name="uq_practice_answer"),
        Index("ix_practice_answers_rater", "rater_id", "campaign_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    ranking: Mapped[list[Any] | None] = mapped_column(JSON)
    labels: Mapped[list[int] | None] = mapped_column(JSON)
    display_order: Mapped[list[int]] = mapped_column(JSON)
    score: Mapped[float] = mapped_column(Float)
    submitted_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


# --- engines ---------------------------------------------------------------------------------

class DatabaseBusy(Exception):
    """The write lock could not be had within the busy timeout (the web app answers 503)."""


def database_url(db: str | Path) -> str:
    """A SQLAlchemy URL from `--db`: a URL is kept (plain postgresql:// gets the psycopg 3 driver,
    the `postgres` extra), anything else is a SQLite file path."""
    text_ = str(db)
    for plain in ("postgresql://", "postgres://"):
        if text_.startswith(plain):
            return "postgresql+psycopg://" + text_[len(plain):]
    if "://" in text_:
        return text_
    return f"sqlite:///{Path(text_).expanduser().resolve()}"


def _sqlite_pragmas(busy_timeout: float):
    def on_connect(dbapi_conn, _record) -> None:
        # The driver must not open transactions itself: `_sqlite_begin` does (BEGIN IMMEDIATE
        # for a write, so it takes the lock before it reads; a deferred transaction that read
        # first would fail at once with SQLITE_BUSY when another writer committed meanwhile).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        mode = cur.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        # WAL: a commit reaches the OS at once (safe from a killed process) and `writing` makes
        # it durable with one fsync shared by every commit made meanwhile (group commit).
        cur.execute("PRAGMA synchronous=" + ("NORMAL" if mode == "wal" else "FULL"))
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return on_connect


def _sqlite_begin(conn) -> None:
    raw = conn.connection.driver_connection  # straight to sqlite3: these run for every transaction
    if conn.get_execution_options().get(WRITE):
        raw.execute("PRAGMA query_only=0")
        raw.execute("BEGIN IMMEDIATE")
    else:
        raw.execute("PRAGMA query_only=1")
        raw.execute("BEGIN")


def make_engine(db: str | Path, busy_timeout: float = BUSY_TIMEOUT_S, **kwargs: Any) -> Engine:
    """An engine for a SQLite file (WAL, busy timeout, read-only reads, immediate writes) or any
    URL (PostgreSQL: a lock wait over `busy_timeout` seconds is an error, not a stall)."""
    url = database_url(db)
    kwargs.setdefault("pool_timeout", busy_timeout)
    if url.startswith("sqlite"):
        if ":memory:" in url or url in ("sqlite://", "sqlite:///"):
            raise ValueError("an in-memory SQLite database cannot be shared; give a file path")
        kwargs.setdefault("pool_size", 20)
        kwargs.setdefault("max_overflow", 20)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if url.startswith("postgresql"):
        kwargs.setdefault("pool_size", 20)
        kwargs.setdefault("max_overflow", 20)
        kwargs.setdefault("connect_args", {"options": f"-c lock_timeout={int(busy_timeout * 1000)}"})
    return create_engine(url, **kwargs)


def locked(stmt: Select) -> Select:
    """An ORM `stmt` inside a write transaction: fresh values, and the rows locked on PostgreSQL
    (SQLite's write lock already excludes every other writer)."""
    return stmt.with_for_update().execution_options(populate_existing=True)


def writer(engine: Engine) -> Engine:
    """`engine` for Core writes outside a Session (migrations): its transactions may write."""
    return engine.execution_options(**{WRITE: True})


def is_busy(err: BaseException) -> bool:
    """The database could not be had in time: SQLite's write lock, a PostgreSQL lock wait over
    lock_timeout (or a deadlock, which a retry resolves), or a free pooled connection."""
    if isinstance(err, (DatabaseBusy, sqlalchemy.exc.TimeoutError)):
        return True
    if isinstance(err, sqlite3.OperationalError):  # from `_sqlite_begin`, on the driver's connection
        orig = err
    elif isinstance(err, sqlalchemy.exc.OperationalError):
        orig = err.orig
    else:
        return False
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
    return getattr(orig, "sqlstate", None) in ("55P03", "40P01")  # lock_not_available, deadlock_detected


# --- writing ---------------------------------------------------------------------------------

class WriteGate:
    """This process's side of one SQLite file's single writer.

    Writers queue on a mutex (woken in turn, no busy polling; only another process's writer
    is waited for in SQLite's busy handler). After a commit, `sync` makes it durable: one
    fsync of the WAL covers every commit made before it, so N raters committing at once
    cost one disk flush, not N (the connections run with synchronous=NORMAL: a commit alone
    survives a killed process, the fsync makes it survive a power cut)."""

    def __init__(self, path: str):
        self.wal = path + "-wal"
        self._mutex = threading.Lock()
        self._sync_lock = threading.Lock()
        self._committed = 0  # commits of this process, counted under the mutex
        self._synced = 0  # commits known to be on disk

    @contextmanager
    def hold(self, timeout: float) -> Iterator[None]:
        if not self._mutex.acquire(timeout=timeout):
            raise DatabaseBusy(f"the database's write lock was busy for {timeout:g} s")
        try:
            yield
        finally:
            self._mutex.release()

    def committed(self) -> int:
        """Count a commit (call while holding the mutex); returns its ticket for `sync`."""
        self._committed += 1
        return self._committed

    def sync(self, ticket: int) -> None:
        """Return once commit `ticket` is on disk."""
        with self._sync_lock:
            if self._synced >= ticket:
                return  # another writer's fsync covered it
            target = self._committed
            try:
                fd = os.open(self.wal, os.O_RDONLY)
            except FileNotFoundError:  # no WAL (not WAL mode: synchronous=FULL synced the commit)
                self._synced = target
                return
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._synced = target


_gates: dict[str, WriteGate] = {}
_gates_lock = threading.Lock()


def write_gate(engine: Engine) -> WriteGate | None:
    """The gate of a SQLite file (one per file per process); None for other databases."""
    if engine.dialect.name != "sqlite":
        return None
    path = engine.url.database
    with _gates_lock:
        if path not in _gates:
            _gates[path] = WriteGate(path)
        return _gates[path]


@contextmanager
def writing(s: Session) -> Iterator[Session]:
    """One short write transaction on `s`, committed at the end of the block (rolled back on an
    error). Whatever `s` was reading ends first: objects loaded before are kept but may be
    stale, so re-read inside the block what the write depends on. Raises DatabaseBusy (or an
    error `is_busy` recognises) when the lock is not had within the session's busy timeout."""
    s.commit()
    gate = write_gate(s.get_bind())
    timeout = s.info.get("busy_timeout", BUSY_TIMEOUT_S)
    with gate.hold(timeout) if gate is not None else nullcontext():
        try:
            s.connection(execution_options={WRITE: True})
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        ticket = gate.committed() if gate is not None else 0
    if gate is not None:
        gate.sync(ticket)
