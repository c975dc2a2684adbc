"""Nothing is lost, nothing is doubled: a real server process on loopback, many raters at
once, retries with the same idempotency key, and a server killed mid-submission."""

from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import func, select, text

from alignloop.data.records import Samples
from alignloop.feedback import store
from alignloop.feedback.db import Assignment, Judgment

N_RATERS = 20
N_JUDGMENTS = 500


def setup_db(db_path, n_items: int, raters_per_item: int, n_raters: int) -> list[str]:
    engine, sessions = store.open_db(db_path)
    with sessions() as s:
        records = [Samples(prompt=f"prompt {i}", responses=[f"answer {i}.{j}" for j in range(4)]) for i in range(n_items)]
        store.create_campaign(s, "load", "rank", records, raters_per_item=raters_per_item, gold_rate=0.0)
        tokens = [store.add_rater(s, f"rater{r}", api_token=True)[2] for r in range(n_raters)]
    engine.dispose()
    return tokens


def test_20_raters_submit_500_judgments_each_stored_exactly_once(db_path, server_factory):
    tokens = setup_db(db_path, n_items=N_JUDGMENTS // 2, raters_per_item=2, n_raters=N_RATERS)
    server = server_factory(db_path)
    acknowledged: list[tuple[int, int, int]] = []  # (assignment, judgment, status)
    lock = threading.Lock()
    errors: list[str] = []

    def rater(index: int) -> int:
        rng = random.Random(index)
        headers = {"Authorization": f"Bearer {tokens[index]}"}
        n = 0
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            while True:
                nxt = client.get("/api/next").json()
                if nxt["assignment"] is None:
                    return n
                aid = nxt["assignment"]["assignment_id"]
                ranking = list(range(4))
                rng.shuffle(ranking)
                key = {"Idempotency-Key": uuid.uuid4().hex}
                url = f"/api/assignments/{aid}/judgment"
                if n % 5 == 0:  # a double click: the same submission twice at the same moment
                    with ThreadPoolExecutor(2) as pool:
                        replies = list(pool.map(lambda _: client.post(url, json={"ranking": ranking}, headers=key), range(2)))
                else:
                    replies = [client.post(url, json={"ranking": ranking}, headers=key)]
                if n % 7 == 3:  # a retry after a lost reply
                    replies.append(client.post(url, json={"ranking": ranking}, headers=key))
                with lock:
                    for r in replies:
                        if r.status_code not in (200, 201):
                            errors.append(f"{r.status_code} {r.text}")
                            continue
                        acknowledged.append((aid, r.json()["judgment_id"], r.status_code))
                n += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(N_RATERS) as pool:
        per_rater = list(pool.map(rater, range(N_RATERS)))
    elapsed = time.perf_counter() - start

    assert errors == []
    assert sum(per_rater) == N_JUDGMENTS
    created = [a for a, _, status in acknowledged if status == 201]
    assert len(created) == len(set(created)) == N_JUDGMENTS  # exactly one 201 per assignment
    by_assignment: dict[int, set[int]] = {}
    for aid, jid, _ in acknowledged:
        by_assignment.setdefault(aid, set()).add(jid)
    assert all(len(ids) == 1 for ids in by_assignment.values())  # every retry got the stored judgment
    assert len(acknowledged) > N_JUDGMENTS  # retries happened

    engine, sessions = store.open_db(db_path)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Judgment)) == N_JUDGMENTS
        assert s.scalar(select(func.count(func.distinct(Judgment.assignment_id)))) == N_JUDGMENTS
        per_item = s.execute(select(Assignment.item_id, func.count(func.distinct(Assignment.rater_id)))
                             .group_by(Assignment.item_id)).all()
        assert len(per_item) == N_JUDGMENTS // 2 and {n for _, n in per_item} == {2}
        assert s.scalar(select(func.count()).select_from(Assignment).where(Assignment.status != "done")) == 0
    engine.dispose()
    print(f"\n{N_RATERS} raters: {N_JUDGMENTS} judgments stored of {N_JUDGMENTS} expected, "
          f"{len(acknowledged)} acknowledged replies, {elapsed:.1f} s")


def test_a_killed_server_loses_nothing_it_acknowledged(db_path, server_factory):
    tokens = setup_db(db_path, n_items=400, raters_per_item=1, n_raters=10)
    server = server_factory(db_path)
    acked: dict[int, tuple[int, list[int]]] = {}  # assignment -> (judgment id, ranking sent)
    pending: dict[int, tuple[str, str, list[int]]] = {}  # in flight when the server died
    lock = threading.Lock()
    stop = threading.Event()

    def rater(index: int) -> None:
        headers = {"Authorization": f"Bearer {tokens[index]}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            while not stop.is_set():
                try:
                    nxt = client.get("/api/next").json()
                except httpx.HTTPError:
                    return
                if nxt["assignment"] is None:
                    return
                aid = nxt["assignment"]["assignment_id"]
                ranking = [index % 4, (index + 1) % 4, (index + 2) % 4, (index + 3) % 4]
                key = uuid.uuid4().hex
                with lock:
                    pending[aid] = (tokens[index], key, ranking)
                try:
                    r = client.post(f"/api/assignments/{aid}/judgment", json={"ranking": ranking},
                                    headers={"Idempotency-Key": key})
                except httpx.HTTPError:
                    return  # the server died with this submission in flight
                assert r.status_code == 201, r.text
                with lock:
                    acked[aid] = (r.json()["judgment_id"], r.json()["ranking"])
                    del pending[aid]

    threads = [threading.Thread(target=rater, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    while len(acked) < 80:
        time.sleep(0.005)
    server.kill()  # SIGKILL: no shutdown, no flush by the server
    stop.set()
    for t in threads:
        t.join(30)

    engine, sessions = store.open_db(db_path)
    with sessions() as s:
        assert s.connection().exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        stored = {j.assignment_id: (j.id, j.ranking) for j in s.scalars(select(Judgment))}
    engine.dispose()
    assert len(acked) >= 80
    for aid, value in acked.items():
        assert stored.get(aid) == value, f"acknowledged judgment of assignment {aid} lost"
    assert set(stored) <= set(acked) | set(pending)  # nothing appeared from nowhere

    print(f"\nkilled: {len(acked)} acknowledged (all stored), {len(pending)} in flight "
          f"({len(set(stored) & set(pending))} of them stored before the kill)")
    # After a restart, clients retry what was in flight with the same key: each is stored once.
    restarted = server_factory(db_path)
    for aid, (token, key, ranking) in pending.items():
        r = httpx.post(f"{restarted.url}/api/assignments/{aid}/judgment", json={"ranking": ranking},
                       headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key})
        assert r.status_code == (200 if aid in stored else 201), r.text
    engine, sessions = store.open_db(db_path)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Judgment)) == len(set(acked) | set(pending))
        assert s.execute(text("SELECT COUNT(*) FROM judgments GROUP BY assignment_id HAVING COUNT(*) > 1")).all() == []
    engine.dispose()
