"""`db.writing`, the one way to write: a read transaction cannot write; a write waits its turn
and gives up as busy after the busy timeout; a commit is on disk (the WAL fsynced) before
`writing` returns, and commits made meanwhile share one fsync (group commit)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from alignloop.feedback import store
from alignloop.feedback.db import DatabaseBusy, Rater, is_busy, write_gate, writing


@pytest.fixture
def synced(monkeypatch):
    """The files fsynced through `db` (a slow disk: each fsync takes 50 ms)."""
    paths: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        time.sleep(0.05)
        real(fd)

    monkeypatch.setattr("alignloop.feedback.db.os.fsync", fsync)
    return paths


def test_a_read_transaction_cannot_write(sessions):
    with sessions() as s:
        s.add(Rater(name="ann", role="rater", session_version=0))
        with pytest.raises(OperationalError, match="readonly"):
            s.flush()
        s.rollback()
        with writing(s):
            s.add(Rater(name="ann", role="rater", session_version=0))
        assert s.scalar(select(Rater.name)) == "ann"


def test_a_commit_is_on_disk_before_writing_returns(sessions, db_path, synced):
    with sessions() as s:
        for name in ("ann", "bob"):
            with writing(s):
                s.add(Rater(name=name, role="rater", session_version=0))
            assert synced[-1] == f"{db_path}-wal"  # each write waited for its own fsync
        assert len(synced) == 2
        store.rater_for_api_token(s, "no such token")  # a read syncs nothing
        assert len(synced) == 2


def test_commits_made_meanwhile_share_one_fsync(sessions, synced):
    n = 10
    start = threading.Barrier(n)

    def add(i: int) -> None:
        with sessions() as s:
            start.wait()
            with writing(s):
                s.add(Rater(name=f"r{i}", role="rater", session_version=0))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with sessions() as s:
        assert len(s.scalars(select(Rater)).all()) == n
    assert 1 <= len(synced) < n  # while one fsync ran, the others committed and were covered together


def test_a_writer_gives_up_as_busy_after_the_busy_timeout(db_path):
    engine, sessions = store.open_db(db_path, busy_timeout=0.2)
    other_process = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    other_process.execute("BEGIN IMMEDIATE")
    with sessions() as s, pytest.raises(sqlite3.OperationalError) as err:
        with writing(s):
            s.add(Rater(name="ann", role="rater", session_version=0))
    assert is_busy(err.value)
    other_process.execute("ROLLBACK")
    gate = write_gate(engine)
    with gate.hold(1.0):  # this process's other writer holds its turn
        with sessions() as s, pytest.raises(DatabaseBusy):
            with writing(s):
                pass
    with sessions() as s:  # nothing was left half done
        assert s.scalar(select(Rater)) is None
        with writing(s):
            s.add(Rater(name="ann", role="rater", session_version=0))
    engine.dispose()
