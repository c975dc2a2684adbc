"""The same store on PostgreSQL: migrations with data, the models against the schema, many
raters at once (items locked with SKIP LOCKED, slot races settled by the unique constraints),
and a lock wait past the busy timeout reported as busy (a 503 in the app). Skipped unless a server
is reachable: set ALIGNLOOP_TEST_POSTGRES_URL (default
postgresql+psycopg://postgres:postgres@127.0.0.1/postgres)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from alignloop.data.records import Samples
from alignloop.feedback import reports, store
from alignloop.feedback.db import Assignment, Base, Item, Judgment, Rater, is_busy, make_engine, writing

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


def pg_campaign(sessions, n_items: int, raters_per_item: int) -> tuple[list[int], Rater]:
    with sessions() as s:
        store.create_campaign(s, "pg", "rank", [Samples(prompt=f"p{i}", responses=["a", "b"]) for i in range(n_items)],
                              raters_per_item=raters_per_item, gold_rate=0.0)
        return list(s.scalars(select(Item.id).order_by(Item.id))), store.add_rater(s, "ann")[0]


def test_postgres_a_rater_skips_an_item_being_given_to_another(pg_url):
    engine, sessions = store.open_db(pg_url, busy_timeout=2)
    items, ann = pg_campaign(sessions, n_items=3, raters_per_item=1)
    holder = sessions()
    with writing(holder):  # another rater's assignment transaction holds the first item's row
        holder.execute(select(Item).where(Item.id == items[0]).with_for_update())
        with sessions() as s:  # SKIP LOCKED: no wait (a wait would end in lock_timeout, an error)
            assert store.next_assignment(s, s.get(Rater, ann.id)).item_id == items[1]
    holder.close()
    engine.dispose()


def test_postgres_when_every_free_item_is_being_given_the_rater_waits_for_it(pg_url):
    engine, sessions = store.open_db(pg_url, busy_timeout=10)
    items, ann = pg_campaign(sessions, n_items=1, raters_per_item=2)
    holder = sessions()
    locked = threading.Event()

    def hold_then_release():
        with writing(holder):
            holder.execute(select(Item).where(Item.id == items[0]).with_for_update())
            locked.set()
            time.sleep(0.5)

    thread = threading.Thread(target=hold_then_release)
    thread.start()
    locked.wait(10)
    with sessions() as s:
        assert store.next_assignment(s, s.get(Rater, ann.id)).item_id == items[0]  # not "nothing left"
    thread.join()
    holder.close()
    engine.dispose()


def test_postgres_a_lock_wait_past_the_busy_timeout_is_busy(pg_url):
    engine, sessions = store.open_db(pg_url, busy_timeout=0.3)
    _, ann = pg_campaign(sessions, n_items=1, raters_per_item=1)
    with sessions() as s:
        a = store.next_assignment(s, ann)
    holder = sessions()
    with writing(holder):
        holder.execute(select(Assignment).where(Assignment.id == a.id).with_for_update())
        with sessions() as s, pytest.raises(OperationalError) as err:
            store.submit_judgment(s, s.get(Rater, ann.id), a.id, ranking=[0, 1])
        assert is_busy(err.value)
    holder.close()
    with sessions() as s:
        assert store.submit_judgment(s, s.get(Rater, ann.id), a.id, ranking=[0, 1])[1] is True
    engine.dispose()
