"""Load, locks and faults against a real server on loopback: many raters while another
process creates a campaign and an admin uploads slowly (benchmarks/feedback_load.py, small);
a write lock held elsewhere makes writers wait (never a 500) and never blocks readers; a lock
held past the busy timeout is a 503 with Retry-After, and the retry stores the judgment once;
a slow upload holds no lock while its body arrives. Correctness only: the figures are the
benchmark's."""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from alignloop.data.records import Samples
from alignloop.feedback import store
from alignloop.feedback.app import create_app
from alignloop.feedback.db import Judgment

from .conftest import REPO
from .test_feedback_concurrency import setup_db
from .test_feedback_postgres import URL as PG_URL

spec = importlib.util.spec_from_file_location("feedback_load", REPO / "benchmarks" / "feedback_load.py")
feedback_load = sys.modules.setdefault("feedback_load", importlib.util.module_from_spec(spec))
spec.loader.exec_module(feedback_load)


def postgres_or_skip() -> str:
    pytest.importorskip("psycopg")
    from sqlalchemy import create_engine

    engine = create_engine(PG_URL, connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            return PG_URL
    except Exception as err:  # no server: the PostgreSQL case does not apply here
        pytest.skip(f"no PostgreSQL server at {PG_URL}: {type(err).__name__}")
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_60_raters_while_another_process_creates_a_campaign(backend):
    db = "sqlite" if backend == "sqlite" else postgres_or_skip()
    cfg = feedback_load.LoadConfig(raters=60, seconds=6, think=0.0, items=300, create_items=1500,
                                   upload_items=300, upload_seconds=2.0, db=db)
    r = feedback_load.run_load(cfg)
    print("\n" + feedback_load.report(r))
    assert r.five_xx == 0 and r.failures == [] and r.server_errors == []
    assert r.acknowledged and r.acknowledged == r.stored  # every acknowledged judgment, and nothing else
    assert "'created': 1500 items" in r.create and r.upload_status == 201
    assert r.campaign_items == {"load": 300, "created": 1500, "uploaded": 300}  # whole, each of them


def hold_write_lock(db_path) -> sqlite3.Connection:
    """Another process's writer, as far as the app can tell: a connection in BEGIN IMMEDIATE."""
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_writers_wait_for_a_lock_held_elsewhere_and_readers_do_not(db_path, server_factory):
    tokens = setup_db(db_path, n_items=21, raters_per_item=2, n_raters=42)
    server = server_factory(db_path)  # busy timeout 5 s
    clients = [httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {t}"}, timeout=30) for t in tokens]
    aids = [c.get("/api/next").json()["assignment"]["assignment_id"] for c in clients]
    lock = hold_write_lock(db_path)
    try:
        # reads take no lock: these answer while it is held (with a lock they would wait 5 s, then 503)
        assert clients[0].get(f"/api/assignments/{aids[0]}").status_code == 200
        assert clients[0].get("/api/me/progress").status_code == 200
        assert clients[0].get("/api/next").json()["assignment"]["assignment_id"] == aids[0]

        def submit(i: int) -> int:
            return clients[i].post(f"/api/assignments/{aids[i]}/judgment", json={"ranking": [3, 2, 1, 0]},
                                   headers={"Idempotency-Key": uuid.uuid4().hex}).status_code

        with ThreadPoolExecutor(len(clients)) as pool:  # more than the server's 40 worker threads
            replies = pool.map(submit, range(len(clients)))
            time.sleep(2.0)  # the other writer's 2 s
            lock.execute("COMMIT")
            statuses = list(replies)
    finally:
        lock.close()
        for c in clients:
            c.close()
    assert statuses == [201] * len(clients)
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Judgment)) == len(clients)


def test_a_lock_held_past_the_busy_timeout_is_a_503_and_the_retry_stores_once(db_path):
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        store.create_campaign(s, "c", "rank", [Samples(prompt="p", responses=["a", "b"])], raters_per_item=1)
        token = store.add_rater(s, "ann", api_token=True)[2]
    ann = TestClient(create_app(db_path, busy_timeout=0.3), headers={"Authorization": f"Bearer {token}"})
    aid = ann.get("/api/next").json()["assignment"]["assignment_id"]
    key = {"Idempotency-Key": "once"}
    lock = hold_write_lock(db_path)
    try:
        r = ann.post(f"/api/assignments/{aid}/judgment", json={"ranking": [1, 0]}, headers=key)
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0 and "nothing was stored" in r.json()["detail"]
        assert ann.get(f"/api/assignments/{aid}").json()["status"] == "open"
    finally:
        lock.execute("COMMIT")
        lock.close()
    assert ann.post(f"/api/assignments/{aid}/judgment", json={"ranking": [1, 0]}, headers=key).status_code == 201
    assert ann.post(f"/api/assignments/{aid}/judgment", json={"ranking": [1, 0]}, headers=key).status_code == 200
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Judgment)) == 1


def test_a_slow_upload_holds_no_lock_while_its_body_arrives(db_path, server_factory):
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        token = store.add_rater(s, "boss", admin=True, api_token=True)[2]
    server = server_factory(db_path)
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"samples\"; filename=\"big.jsonl\"\r\n"
            "Content-Type: application/x-ndjson\r\n\r\n").encode()
    lines = feedback_load.jsonl(feedback_load.samples(400, "big"))
    free_while_uploading = threading.Event()

    def body():
        yield head + lines[: len(lines) // 2]
        time.sleep(0.5)  # the server has the headers and waits for the rest of the body
        other = sqlite3.connect(db_path, isolation_level=None, timeout=0)
        other.execute("BEGIN IMMEDIATE")  # fails at once if the upload took the write lock
        other.execute("COMMIT")
        other.close()
        free_while_uploading.set()
        yield lines[len(lines) // 2:] + f"\r\n--{boundary}--\r\n".encode()

    r = httpx.post(f"{server.url}/api/campaigns", content=body(), timeout=30,
                   headers={"Authorization": f"Bearer {token}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert free_while_uploading.is_set() and r.status_code == 201 and r.json()["items"] == 400
