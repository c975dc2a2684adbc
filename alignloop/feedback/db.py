"""Database models of the feedback app (SQLAlchemy 2 ORM) and the engine factory.

    Campaign 1--* Item            a prompt + K candidate responses (or a gold item with a known answer)
    Campaign 1--* Assignment *--1 Rater
    Item     1--* Assignment 1--0..1 Judgment

An assignment is one rater's turn on one item. It holds the display order the rater saw
(`display_order[p]` = original index of the response shown at position p) and a `slot`
(0 .. raters_per_item-1) with a unique (item, slot) constraint: two raters racing for the
last free place of an item cannot both get it, on SQLite or PostgreSQL alike. Gold items
have no slot (every rater may see each gold item once); a skipped assignment gives its slot
back (slot = NULL). A judgment belongs to exactly one assignment (unique), so a retried or
double-clicked submission can never store two.

The schema is owned by the Alembic migrations in `migrations/`; `tests` check that these
models and the migrated schema agree.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

KINDS = ("rank", "compare", "thumbs")
ROLES = ("rater", "admin")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Setting(Base):
    """Key/value settings of one installation (the session signing key)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Campaign(Base):
    __tablename__ = "campaigns"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # rank | compare | thumbs
    raters_per_item: Mapped[int] = mapped_column(Integer)
    instructions: Mapped[str] = mapped_column(Text, default="")
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    items: Mapped[list[Item]] = relationship(back_populates="campaign", order_by="Item.id")


class Item(Base):
    __tablename__ = "items"
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
    campaign: Mapped[Campaign] = relationship(back_populates="items")


class Rater(Base):
    __tablename__ = "raters"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="rater")  # rater | admin
    # sha256 hex of the one-time login token; NULL once used
    login_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    # sha256 hex of the long-lived API token (revision 2)
    api_token_hash: Mapped[str | None] = mapped_column(String(64), index=True, unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

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
    # rank/compare: original response indices best first, nested list = tie; thumbs: NULL
    ranking: Mapped[list[Any] | None] = mapped_column(JSON)
    # thumbs: 1/0 per original response index; rank/compare: NULL
    labels: Mapped[list[int] | None] = mapped_column(JSON)
    unsafe: Mapped[list[int]] = mapped_column(JSON, default=list)  # original indices flagged unsafe
    comment: Mapped[str] = mapped_column(Text, default="")
    display_order: Mapped[list[int]] = mapped_column(JSON)
    shown_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    submitted_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    time_spent_s: Mapped[float | None] = mapped_column(Float)  # revision 2
    assignment: Mapped[Assignment] = relationship(back_populates="judgment")


def database_url(db: str | Path) -> str:
    """A SQLAlchemy URL from `--db`: a URL is kept (plain postgresql:// gets the psycopg 3 driver,
    the `postgres` extra), anything else is a SQLite file path."""
    text = str(db)
    for plain in ("postgresql://", "postgres://"):
        if text.startswith(plain):
            return "postgresql+psycopg://" + text[len(plain):]
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # The driver must not open transactions itself: `_sqlite_begin` issues BEGIN IMMEDIATE, so
    # a transaction takes the write lock before it reads. With deferred transactions, a reader
    # that later writes fails at once with SQLITE_BUSY when another writer committed meanwhile
    # (busy_timeout does not help there); with IMMEDIATE the second writer simply waits.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a commit is on disk before it is acknowledged
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(db: str | Path, **kwargs: Any) -> Engine:
    """An engine for a SQLite file (WAL, busy timeout, immediate transactions) or any URL."""
    url = database_url(db)
    if url.startswith("sqlite"):
        if ":memory:" in url or url in ("sqlite://", "sqlite:///"):
            raise ValueError("an in-memory SQLite database cannot be shared; give a file path")
        kwargs.setdefault("pool_size", 20)
        kwargs.setdefault("max_overflow", 20)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)
