"""The chat tables on PostgreSQL: migrated, a chat with thumbs and an arena vote stored once
under concurrent duplicates, exported. Skipped unless a server is reachable (as
test_feedback_postgres.py: ALIGNLOOP_TEST_POSTGRES_URL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from alignloop.feedback import chat_export, store
from alignloop.feedback.chat_db import ArenaVote, ChatThumb

from .chat_helpers import Chatter, add_rater, answer_event, chat_app, events, login, models  # noqa: F401
from .test_feedback_postgres import pg_url  # noqa: F401


def test_chat_and_arena_on_postgres(pg_url, models, tmp_path):
    app = chat_app(pg_url, models, seed=1)
    engine, sessions = store.open_db(pg_url)
    ann = Chatter(*login(app, add_rater(sessions, "ann")))
    conv = ann.new("chat", "alpha")
    mid = answer_event(events(ann.send(conv["id"], "Hello from PostgreSQL", 0)))["message_id"]
    arena = ann.new("arena")
    battle = events(ann.send(arena["id"], "Which?", 0))[0]["battle"]
    with ThreadPoolExecutor(8) as pool:
        thumbs = list(pool.map(lambda _: ann.thumb(mid, True, key="t").status_code, range(8)))
        votes = list(pool.map(lambda _: ann.vote(battle, "tie", key="v").status_code, range(8)))
    assert sorted(thumbs) == [200] * 7 + [201] and sorted(votes) == [200] * 7 + [201]
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(ChatThumb)) == 1
        assert s.scalar(select(func.count()).select_from(ArenaVote)) == 1
        written = chat_export.write_export(chat_export.collect(s), tmp_path / "out")
    assert (written.thumbs, written.comparisons, written.prompts) == (1, 1, 2)
    app.state.engine.dispose()
    engine.dispose()
