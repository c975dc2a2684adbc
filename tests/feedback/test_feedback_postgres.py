"""The same store on PostgreSQL: migrations with data, the models against the schema, and
many raters at once (slot races resolved by the unique constraints). Skipped unless a server
is reachable: set ALIGNLOOP_TEST_POSTGRES_URL (default
postgresql+psycopg://postgres:postgres@127.0.0.1/postgres)."""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from alignloop.data.records import Samples
from alignloop.feedback import reports, store
from alignloop.feedback.db import Assignment, Base, Judgment, Rater, make_engine

URL = os.environ.get("ALIGNLOOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1/postgres")


@pytest.fixture
def pg_url():
    pytest.importorskip("psycopg")
    admin = create_engine(URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 2})
    try:
        with admin.connect():
            pass
    except Exception as err:  # no server: the test does not apply here
        admin.dispose()
        pytest.skip(f"no PostgreSQL server at {URL}: {type(err).__name__}")
    name = f"alignloop_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_postgres_migrations_keep_data_and_match_the_models(pg_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(pg_url)
    store.migrate(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO raters (name, role, created_at) VALUES ('ann', 'rater', now())"))
    store.migrate(engine)
    assert store.schema_revision(engine) == store.head_revision()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM raters")).scalar() == "ann"
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()


def test_postgres_many_raters_at_once(pg_url):
    engine, sessions = store.open_db(pg_url)
    with sessions() as s:
        records = [Samples(prompt=f"p{i}", responses=["a", "b", "c"]) for i in range(40)]
        store.create_campaign(s, "pg", "rank", records, raters_per_item=3, gold_rate=0.0)
        names = [store.add_rater(s, f"r{i}")[0].name for i in range(12)]

    def work(name: str) -> int:
        n = 0
        with sessions() as s:
            rater = s.scalar(select(Rater).where(Rater.name == name))
            while (a := store.next_assignment(s, rater)) is not None:
                key = f"{name}-{a.id}"
                store.submit_judgment(s, rater, a.id, ranking=[0, [1, 2]], key=key)
                store.submit_judgment(s, rater, a.id, ranking=[0, [1, 2]], key=key)  # a retry
                n += 1
        return n

    with ThreadPoolExecutor(len(names)) as pool:
        total = sum(pool.map(work, names))
    with sessions() as s:
        assert total == 120 and s.scalar(select(func.count()).select_from(Judgment)) == 120
        per_item = s.execute(select(Assignment.item_id, func.count(func.distinct(Assignment.rater_id)))
                             .group_by(Assignment.item_id)).all()
        assert len(per_item) == 40 and {n for _, n in per_item} == {3}
        assert len(reports.export_records(s)) == 120
    engine.dispose()


def test_postgres_quality_figures_read_the_database_as_it_is(pg_url):
    from alignloop.quality.cli import load_judgments_from_db
    from alignloop.quality.report import summary_for_admin

    from .test_feedback_quality import N_GOLD, N_ITEMS, seed_campaign

    engine, sessions = store.open_db(pg_url)
    seed_campaign(sessions)
    with sessions() as s:
        exported = reports.export_records(s)
    records = load_judgments_from_db(pg_url)
    assert len(records) == 3 * (N_ITEMS + N_GOLD) and records == exported
    head = summary_for_admin(records)
    assert head["raters"]["sloppy"]["status"] == "below" and "position:lefty" in head["detected"]
    engine.dispose()
