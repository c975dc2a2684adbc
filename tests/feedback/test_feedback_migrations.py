"""Alembic migrations: up from an empty database, up from an older one (data kept and
backfilled), and the ORM models agree with the migrated schema."""

from __future__ import annotations

import datetime as dt
import json

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from alignloop.feedback import reports, store
from alignloop.feedback.db import Base, Item, Rater, database_url, make_engine, writer

HEAD = "0006"


def test_upgrade_from_empty_database_reaches_head(db_path):
    engine = make_engine(db_path)
    assert store.schema_revision(engine) is None
    store.migrate(engine)
    assert store.schema_revision(engine) == HEAD
    tables = set(inspect(engine).get_table_names())
    assert {"campaigns", "items", "raters", "assignments", "judgments", "settings", "alembic_version"} <= tables
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    store.migrate(engine)  # a second run changes nothing
    assert store.schema_revision(engine) == HEAD
    engine.dispose()


def test_models_match_the_migrated_schema(db_path):
    engine = make_engine(db_path)
    store.migrate(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_upgrade_from_revision_1_keeps_data_and_fills_time_spent(db_path):
    engine = make_engine(db_path)
    store.migrate(engine, "0001")
    assert "api_token_hash" not in {c["name"] for c in inspect(engine).get_columns("raters")}
    shown, submitted = dt.datetime(2025, 3, 1, 12, 0, 0), dt.datetime(2025, 3, 1, 12, 0, 42, 500000)
    # a database as revision 1 wrote it: one campaign, item, rater, assignment and judgment
    with writer(engine).begin() as conn:
        conn.execute(text("INSERT INTO campaigns (id, name, kind, raters_per_item, instructions, gold_rate, seed, created_at) "
                          "VALUES (1, 'old', 'rank', 2, 'be kind', 0.0, 0, :t)"), {"t": shown})
        conn.execute(text("INSERT INTO items (id, campaign_id, source_id, prompt, responses, model, sampling, meta, is_gold) "
                          "VALUES (1, 1, 's1', :p, :r, 'm', '{}', '{}', 0)"),
                     {"p": json.dumps({"prompt": "hi"}), "r": json.dumps(["a", "b"])})
        conn.execute(text("INSERT INTO raters (id, name, role, login_token_hash, created_at) "
                          "VALUES (1, 'ann', 'rater', NULL, :t)"), {"t": shown})
        conn.execute(text("INSERT INTO assignments (id, campaign_id, item_id, rater_id, slot, display_order, status, created_at, shown_at) "
                          "VALUES (1, 1, 1, 1, 0, '[1, 0]', 'done', :t, :t)"), {"t": shown})
        conn.execute(text("INSERT INTO judgments (id, assignment_id, idempotency_key, ranking, labels, unsafe, comment, display_order, shown_at, submitted_at) "
                          "VALUES (1, 1, 'k', '[1, 0]', NULL, '[]', 'fine', '[1, 0]', :a, :b)"), {"a": shown, "b": submitted})
    store.migrate(engine)
    assert store.schema_revision(engine) == HEAD
    with engine.connect() as conn:
        assert conn.execute(text("SELECT time_spent_s FROM judgments WHERE id = 1")).scalar() == 42.5
    engine.dispose()

    _, sessions = store.open_db(db_path)
    with sessions() as s:
        (rec,) = reports.export_records(s)
        assert rec.prompt == "hi" and rec.responses == ["a", "b"] and rec.ranking == [1, 0]
        assert rec.rater == "ann" and rec.meta["comment"] == "fine" and rec.meta["time_spent_s"] == 42.5
        (summary,) = reports.campaign_summaries(s)
        assert summary["name"] == "old" and summary["judgments"] == 1
        # the new column works on the old rows
        rater, _, api = store.add_rater(s, "ann", api_token=True)
        assert rater.id == 1 and store.rater_for_api_token(s, api).id == 1
        assert s.get(Rater, 1).api_token_hash is not None


def _migrated_then_downgraded(db_path, revision: str):
    """A database migrated to the newest revision, then downgraded to `revision`."""
    from alembic import command

    engine = make_engine(db_path)
    store.migrate(engine)
    cfg = store.alembic_config()
    with writer(engine).begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
    return engine


def test_downgrade_to_revision_1_and_back(db_path):
    engine = _migrated_then_downgraded(db_path, "0001")
    assert store.schema_revision(engine) == "0001"
    assert "time_spent_s" not in {c["name"] for c in inspect(engine).get_columns("judgments")}
    store.migrate(engine)
    assert store.schema_revision(engine) == HEAD
    engine.dispose()


def test_database_option_takes_a_path_or_a_url(tmp_path):
    assert database_url(tmp_path / "f.db") == f"sqlite:///{tmp_path / 'f.db'}"
    assert database_url("postgresql://u:p@h:5432/db") == "postgresql+psycopg://u:p@h:5432/db"
    assert database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert database_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_upgrade_from_revision_2_counts_free_places_and_drops_the_stored_key(db_path):
    engine = make_engine(db_path)
    store.migrate(engine, "0002")
    t = dt.datetime(2025, 3, 1, 12, 0, 0)
    with writer(engine).begin() as conn:
        conn.execute(text("INSERT INTO settings (key, value) VALUES ('session_secret', 'a key anyone with the file had')"))
        conn.execute(text("INSERT INTO campaigns (id, name, kind, raters_per_item, instructions, gold_rate, seed, created_at) "
                          "VALUES (1, 'old', 'rank', 3, '', 0.0, 0, :t)"), {"t": t})
        for item_id, gold in ((1, 0), (2, 0), (3, 1)):
            conn.execute(text("INSERT INTO items (id, campaign_id, prompt, responses, sampling, meta, is_gold) "
                              "VALUES (:i, 1, '{\"prompt\": \"p\"}', '[\"a\", \"b\"]', '{}', '{}', :g)"), {"i": item_id, "g": gold})
        for rater_id in (1, 2, 3):
            conn.execute(text("INSERT INTO raters (id, name, role, created_at) VALUES (:r, :n, 'rater', :t)"),
                         {"r": rater_id, "n": f"r{rater_id}", "t": t})
        # item 1: slot 0 answered, slot 1 open, and one skipped (its slot given back): 1 place left
        for aid, rater_id, slot, status in ((1, 1, 0, "done"), (2, 2, 1, "open"), (3, 3, None, "skipped")):
            conn.execute(text("INSERT INTO assignments (id, campaign_id, item_id, rater_id, slot, display_order, status, created_at) "
                              "VALUES (:a, 1, 1, :r, :s, '[0, 1]', :st, :t)"), {"a": aid, "r": rater_id, "s": slot, "st": status, "t": t})
    store.migrate(engine)
    assert store.schema_revision(engine) == HEAD
    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT id, open_slots FROM items")).all()) == {1: 1, 2: 3, 3: 0}
        assert conn.execute(text("SELECT COUNT(*) FROM settings")).scalar() == 0
        assert conn.execute(text("SELECT session_version FROM raters")).scalars().all() == [0, 0, 0]
        assert conn.execute(text("SELECT ready FROM campaigns")).scalar() == 1
    engine.dispose()

    _, sessions = store.open_db(db_path)
    with sessions() as s:
        dan = store.add_rater(s, "dan")[0]
        a = store.next_assignment(s, dan)
        assert (a.item_id, a.slot) == (1, 2)  # the free place of item 1
        assert s.get(Item, 1).open_slots == 0
        assert reports.rater_progress(s, dan)["available"] == 1  # item 2


def test_downgrade_to_revision_2_and_back(db_path):
    engine = _migrated_then_downgraded(db_path, "0002")
    assert {"open_slots"}.isdisjoint(c["name"] for c in inspect(engine).get_columns("items"))
    store.migrate(engine)
    assert store.schema_revision(engine) == HEAD
    engine.dispose()


def _old_rows(engine, abstained: bool) -> None:
    """A campaign, item, rater, assignment and judgment as revisions 3 (no `abstained` column)
    and 4 (with it) stored them."""
    t = dt.datetime(2025, 3, 1)
    cols, vals = ("submitted_at, abstained", ":t, 0") if abstained else ("submitted_at", ":t")
    with writer(engine).begin() as conn:
        conn.execute(text("INSERT INTO campaigns (id, name, kind, raters_per_item, instructions, gold_rate, seed, "
                          "created_at, ready) VALUES (1, 'old', 'compare', 1, '', 0.0, 0, :t, 1)"), {"t": t})
        conn.execute(text("INSERT INTO items (id, campaign_id, prompt, responses, sampling, meta, is_gold, open_slots) "
                          "VALUES (1, 1, '{\"prompt\": \"p\"}', '[\"a\", \"b\"]', '{}', '{}', 0, 0)"))
        conn.execute(text("INSERT INTO raters (id, name, role, created_at, session_version) VALUES (1, 'ann', 'rater', :t, 0)"),
                     {"t": t})
        conn.execute(text("INSERT INTO assignments (id, campaign_id, item_id, rater_id, slot, display_order, status, "
                          "created_at) VALUES (1, 1, 1, 1, 0, '[0, 1]', 'done', :t)"), {"t": t})
        conn.execute(text(f"INSERT INTO judgments (id, assignment_id, ranking, unsafe, comment, display_order, "
                          f"{cols}) VALUES (1, 1, '[1, 0]', '[]', '', '[0, 1]', {vals})"), {"t": t})


def test_upgrade_from_revision_3_keeps_data_and_adds_clips(db_path, tmp_path):
    from .clips import TASK, write_clip
    from alignloop.data.records import Samples

    engine = make_engine(db_path)
    store.migrate(engine, "0003")
    assert "media" not in set(inspect(engine).get_table_names())
    _old_rows(engine, abstained=False)  # as revision 3 stored them
    store.migrate(engine)
    assert store.schema_revision(engine) == HEAD
    with engine.connect() as conn:
        assert conn.execute(text("SELECT abstained FROM judgments")).scalars().all() == [0]
    engine.dispose()
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        (rec,) = reports.export_records(s)
        assert rec.ranking == [1, 0] and rec.rater == "ann" and "abstained" not in rec.meta
        digest = store.add_media(s, store.default_media_dir(db_path), write_clip(tmp_path / "c.mp4", 0))
        store.create_campaign(s, "new", "clips", [Samples(prompt=TASK, responses=["x", "y"], meta={"media": [digest] * 2})])
        assert [c["kind"] for c in reports.campaign_summaries(s)] == ["compare", "clips"]


def test_downgrade_to_revision_3_and_back(db_path):
    engine = _migrated_then_downgraded(db_path, "0003")
    assert {"media", "item_media"}.isdisjoint(inspect(engine).get_table_names())
    assert "abstained" not in {c["name"] for c in inspect(engine).get_columns("judgments")}
    store.migrate(engine)
    assert store.schema_revision(engine) == HEAD
    engine.dispose()


def test_upgrade_from_revision_4_keeps_data_and_adds_panels_and_practice(db_path):
    from alignloop.data.records import Comparison, Samples

    engine = make_engine(db_path)
    store.migrate(engine, "0004")
    assert "practice_answers" not in set(inspect(engine).get_table_names())
    _old_rows(engine, abstained=True)  # as revision 4 stored them
    store.migrate(engine)
    assert store.schema_revision(engine) == HEAD
    with engine.connect() as conn:
        assert conn.execute(text("SELECT options FROM campaigns")).scalars().all() == [None]
        assert conn.execute(text("SELECT explanation FROM items")).scalars().all() == [None]
    engine.dispose()
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        (rec,) = reports.export_records(s)
        assert rec.ranking == [1, 0] and rec.rater == "ann" and "rater_attributes" not in rec.meta
        assert s.get(Rater, 1).attributes == {}
        assert store.set_attributes(s, 1, {"region": "eu"}) == {"region": "eu"}
        gold = [Comparison(prompt="g", responses=["x", "y"], ranking=[0, 1], explanation="x is right")]
        store.create_campaign(s, "new", "compare", [Samples(prompt="q", responses=["c", "d"])], raters_per_item=1,
                              gold=gold, options={"practice": {"items": 1}})
        info = store.campaign_info(s.connection(), 2)
        state = store.practice_state(s.connection(), 1, info)
        result = store.submit_practice(s, 1, info, state.next_item, ranking=[0, 1])
        assert result.explanation == "x is right" and result.state.status in ("passed", "todo")


def test_downgrade_to_revision_4_and_back(db_path):
    engine = _migrated_then_downgraded(db_path, "0004")
    assert "practice_answers" not in set(inspect(engine).get_table_names())
    assert "attributes" not in {c["name"] for c in inspect(engine).get_columns("raters")}
    store.migrate(engine)
    assert store.schema_revision(engine) == HEAD
    engine.dispose()


def test_upgrade_from_revision_5_keeps_data_and_adds_chat_and_arena(db_path):
    from alignloop.feedback import chat_export, chat_store
    from alignloop.feedback.chat_store import Job

    engine = make_engine(db_path)
    store.migrate(engine, "0005")
    assert "chat_messages" not in set(inspect(engine).get_table_names())
    t = dt.datetime(2025, 3, 1)
    with writer(engine).begin() as conn:  # a campaign, item, rater, assignment and judgment as revision 5 stored them
        conn.execute(text("INSERT INTO campaigns (id, name, kind, raters_per_item, instructions, gold_rate, seed, "
                          "created_at, ready) VALUES (1, 'old', 'compare', 1, '', 0.0, 0, :t, 1)"), {"t": t})
        conn.execute(text("INSERT INTO items (id, campaign_id, prompt, responses, sampling, meta, is_gold, open_slots) "
                          "VALUES (1, 1, '{\"prompt\": \"p\"}', '[\"a\", \"b\"]', '{}', '{}', 0, 0)"))
        conn.execute(text("INSERT INTO raters (id, name, role, created_at, session_version, attributes) "
                          "VALUES (1, 'ann', 'rater', :t, 0, '{}')"), {"t": t})
        conn.execute(text("INSERT INTO assignments (id, campaign_id, item_id, rater_id, slot, display_order, status, "
                          "created_at) VALUES (1, 1, 1, 1, 0, '[0, 1]', 'done', :t)"), {"t": t})
        conn.execute(text("INSERT INTO judgments (id, assignment_id, ranking, unsafe, comment, display_order, "
                          "submitted_at, abstained) VALUES (1, 1, '[1, 0]', '[]', '', '[0, 1]', :t, 0)"), {"t": t})
    store.migrate(engine)
    assert store.schema_revision(engine) == HEAD
    assert {"chat_conversations", "chat_messages", "chat_thumbs", "arena_battles", "arena_votes"} <= set(
        inspect(engine).get_table_names())
    engine.dispose()
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        (rec,) = reports.export_records(s)
        assert rec.ranking == [1, 0] and rec.rater == "ann"
        # the old rater chats in the arena and votes once
        conv = chat_store.create_conversation(s, 1, "arena", None)
        jobs, battle, _ = chat_store.start_turn(s, 1, conv.id, "hi", 0, 5, ("m1", "m2"))
        for job, text_ in zip(jobs, ("left answer", "right answer")):
            chat_store.save_answer(s, job, text_, {}, "stop", 0.1)
        assert chat_store.vote(s, 1, battle.id, "b")[1] is True
        assert chat_store.vote(s, 1, battle.id, "b")[1] is False
        (c,), _ = chat_export.comparison_records(chat_export.collect(s))
        assert c.responses == ["left answer", "right answer"] and c.ranking == [1, 0] and c.rater == "ann"
        assert isinstance(jobs[0], Job)


def test_downgrade_to_revision_5_and_back(db_path):
    engine = _migrated_then_downgraded(db_path, "0005")
    assert {"chat_conversations", "chat_messages", "chat_thumbs", "arena_battles", "arena_votes"}.isdisjoint(
        inspect(engine).get_table_names())
    store.migrate(engine)
    assert store.schema_revision(engine) == HEAD
    engine.dispose()
