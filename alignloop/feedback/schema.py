"""Opening a feedback database: the engine and session factory for `--db`, and the schema's
Alembic revision (`migrate` brings it to the newest; existing data is kept)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from alignloop.feedback.db import make_engine, writer
from alignloop.feedback.limits import BUSY_TIMEOUT_S


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
