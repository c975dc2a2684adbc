"""The JSON API through httpx (Starlette's TestClient): rating, idempotency, authorisation,
admin operations, the offline /docs page."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from alignloop.feedback import store
from alignloop.feedback.app import create_app
from alignloop.feedback.db import Judgment
from alignloop.data.records import Samples

from .conftest import SAMPLES


@pytest.fixture
def env(db_path):
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        store.create_campaign(s, "camp", "rank", [Samples(**r) for r in SAMPLES], raters_per_item=2, gold_rate=0.0)
        tokens = {name: store.add_rater(s, name, admin=name == "boss", api_token=True)[2] for name in ("ann", "bob", "boss")}
    app = create_app(db_path)
    clients = {name: TestClient(app, headers={"Authorization": f"Bearer {t}"}) for name, t in tokens.items()}
    clients["anon"] = TestClient(app)
    yield clients, sessions
    for c in clients.values():
        c.close()


def n_judgments(sessions) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Judgment))


def test_rater_gets_next_item_and_answers_it(env):
    clients, sessions = env
    ann = clients["ann"]
    nxt = ann.get("/api/next").json()
    a = nxt["assignment"]
    assert a["campaign"] == "camp" and a["kind"] == "rank" and a["messages"][0]["role"] == "user"
    assert [r["position"] for r in a["responses"]] == [0, 1, 2, 3]
    assert sorted(r["text"] for r in a["responses"]) == sorted(SAMPLES[0]["responses"])
    assert nxt["progress"] == {"done": 0, "open": 1, "skipped": 0, "available": 2, "assigned": 3}
    r = ann.post(f"/api/assignments/{a['assignment_id']}/judgment",
                 json={"ranking": [1, [0, 3], 2], "unsafe": [2], "comment": "ok"}, headers={"Idempotency-Key": "x1"})
    assert r.status_code == 201, r.text
    body = r.json()
    order = body["display_order"]
    # positions -> original indices: position p showed original response order[p]
    assert body["ranking"] == [order[1], sorted([order[0], order[3]]), order[2]]
    assert [a["responses"][p]["text"] for p in range(4)] == [SAMPLES[0]["responses"][o] for o in order]
    assert ann.get("/api/me/progress").json()["done"] == 1


def test_retry_with_the_same_key_stores_one_judgment(env):
    clients, sessions = env
    ann = clients["ann"]
    aid = ann.get("/api/next").json()["assignment"]["assignment_id"]
    first = ann.post(f"/api/assignments/{aid}/judgment", json={"ranking": [0, 1, 2, 3]}, headers={"Idempotency-Key": "k"})
    retry = ann.post(f"/api/assignments/{aid}/judgment", json={"ranking": [0, 1, 2, 3]}, headers={"Idempotency-Key": "k"})
    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json()["judgment_id"] == first.json()["judgment_id"] and retry.json()["created"] is False
    other = ann.post(f"/api/assignments/{aid}/judgment", json={"ranking": [3, 2, 1, 0]}, headers={"Idempotency-Key": "k2"})
    assert other.status_code == 409 and "already answered" in other.json()["detail"]
    assert n_judgments(sessions) == 1


@pytest.mark.parametrize("body, message", [
    ({"ranking": [0, 1, 2]}, "missing D (position 3)"),
    ({"ranking": [0, 0, 1, 2, 3]}, "appears twice"),
    ({"ranking": [0, 1, 2, 9]}, "9 is not a response position (0 to 3)"),
    ({"labels": [1, 0, 1, 1]}, "takes a ranking, not labels"),
    ({"ranking": [0, 1, 2, 3], "unsafe": [7]}, "unsafe: 7 is not a response position"),
])
def test_invalid_judgment_is_refused_with_a_clear_message(env, body, message):
    clients, sessions = env
    aid = clients["ann"].get("/api/next").json()["assignment"]["assignment_id"]
    r = clients["ann"].post(f"/api/assignments/{aid}/judgment", json=body)
    assert r.status_code == 422 and message in r.json()["detail"]
    assert n_judgments(sessions) == 0


def test_body_limits_are_enforced(env):
    clients, _ = env
    aid = clients["ann"].get("/api/next").json()["assignment"]["assignment_id"]
    r = clients["ann"].post(f"/api/assignments/{aid}/judgment", json={"ranking": [0, 1, 2, 3], "comment": "x" * 2001})
    assert r.status_code == 422
    r = clients["ann"].post(f"/api/assignments/{aid}/judgment", json={"ranking": [0, 1, 2, 3]},
                            headers={"Idempotency-Key": "k" * 101})
    assert r.status_code == 422
    r = clients["ann"].post(f"/api/assignments/{aid}/judgment", content=b"x" * (33 * 2**20),
                            headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_rater_cannot_read_or_answer_another_raters_assignment(env):
    clients, sessions = env
    aid = clients["ann"].get("/api/next").json()["assignment"]["assignment_id"]
    bob = clients["bob"]
    assert bob.get(f"/api/assignments/{aid}").status_code == 404
    assert bob.post(f"/api/assignments/{aid}/judgment", json={"ranking": [0, 1, 2, 3]}).status_code == 404
    assert bob.post(f"/api/assignments/{aid}/skip").status_code == 404
    assert bob.get("/api/assignments/99999").status_code == 404  # missing and foreign look the same
    assert clients["ann"].get(f"/api/assignments/{aid}").json()["status"] == "open"
    assert n_judgments(sessions) == 0


def test_unauthenticated_and_non_admin_requests_are_refused(env):
    clients, _ = env
    anon, ann = clients["anon"], clients["ann"]
    assert anon.get("/api/next").status_code == 401
    assert anon.get("/api/next", headers={"Authorization": "Bearer wrong"}).status_code == 401
    for path in ("/api/campaigns", "/api/raters", "/api/campaigns/1/export"):
        assert ann.get(path).status_code == 403, path
    assert ann.post("/api/raters", json={"name": "mallory", "admin": True}).status_code == 403
    r = ann.post("/api/campaigns", files={"samples": ("s.jsonl", b"{}")}, data={"kind": "rank"})
    assert r.status_code == 403


def test_cookie_authenticated_api_posts_need_the_csrf_header(env, db_path):
    clients, sessions = env
    with sessions() as s:
        _, login, _ = store.add_rater(s, "cookie")
    browser = clients["anon"]
    page = browser.get(f"/login/{login}").text
    from .conftest import hidden

    browser.post(f"/login/{login}", data={"csrf_token": hidden(page, "csrf_token")})
    aid = browser.get("/api/next").json()["assignment"]["assignment_id"]
    assert browser.post(f"/api/assignments/{aid}/judgment", json={"ranking": [0, 1, 2, 3]}).status_code == 403
    token = hidden(browser.get(f"/assignments/{aid}").text, "csrf_token")
    r = browser.post(f"/api/assignments/{aid}/judgment", json={"ranking": [0, 1, 2, 3]}, headers={"X-CSRF-Token": token})
    assert r.status_code == 201


def test_skip_then_next_item(env):
    clients, _ = env
    ann = clients["ann"]
    first = ann.get("/api/next").json()["assignment"]["assignment_id"]
    assert ann.post(f"/api/assignments/{first}/skip").json()["status"] == "skipped"
    second = ann.get("/api/next").json()["assignment"]["assignment_id"]
    assert second != first
    assert ann.get("/api/me/progress").json()["skipped"] == 1


def test_admin_uploads_a_campaign_lists_and_exports(env):
    clients, _ = env
    boss, ann = clients["boss"], clients["ann"]
    upload = "".join(json.dumps({"prompt": f"q{i}", "responses": ["yes", "no"], "model": "m"}) + "\n" for i in range(4))
    gold = json.dumps({"prompt": "gold", "chosen": "good", "rejected": "bad"}) + "\n"
    r = boss.post("/api/campaigns", files={"samples": ("pairs.jsonl", upload.encode()), "gold": ("g.jsonl", gold.encode())},
                  data={"kind": "compare", "raters_per_item": "1", "name": "pairs", "gold_rate": "0"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert (created["name"], created["kind"], created["items"], created["gold_items"]) == ("pairs", "compare", 4, 1)
    bad = boss.post("/api/campaigns", files={"samples": ("bad.jsonl", b'{"prompt": "x", "responses": ["a","b","c"]}\n')},
                    data={"kind": "compare", "name": "bad"})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("bad.jsonl:1: field 'responses'")
    broken = boss.post("/api/campaigns", files={"samples": ("broken.jsonl", b'{"prompt": "x"}\n{oops\n')}, data={"name": "b2"})
    assert broken.status_code == 422 and broken.json()["detail"].startswith("broken.jsonl:1: field 'responses': missing")
    names = [c["name"] for c in boss.get("/api/campaigns").json()]
    assert names == ["camp", "pairs"]
    # ann answers one item of the new campaign; the export holds it
    a = ann.get(f"/api/next?campaign_id={created['id']}").json()["assignment"]
    assert a["campaign"] == "pairs" and len(a["responses"]) == 2
    ann.post(f"/api/assignments/{a['assignment_id']}/judgment", json={"ranking": [[0, 1]]})
    lines = boss.get(f"/api/campaigns/{created['id']}/export").text.splitlines()
    (rec,) = [json.loads(x) for x in lines]
    assert rec["source"] == "human" and rec["rater"] == "ann" and rec["ranking"] == [[0, 1]]
    order = rec["meta"]["display_order"]
    assert rec["meta"]["campaign"] == "pairs" and sorted(order) == [0, 1]
    assert [rec["responses"][order[p]] for p in (0, 1)] == [r["text"] for r in a["responses"]]


def test_admin_adds_a_rater_who_can_then_work(env):
    clients, _ = env
    r = clients["boss"].post("/api/raters", json={"name": "bot", "api_token": True}, headers={"Host": "evil.example"})
    assert r.status_code == 201
    body = r.json()
    assert body["login_url"].startswith("http://127.0.0.1:8000/login/") and body["role"] == "rater"  # not the Host
    bot = TestClient(clients["anon"].app, headers={"Authorization": f"Bearer {body['api_token']}"})
    assert bot.get("/api/next").json()["assignment"] is not None


def test_docs_page_works_offline_and_the_spec_lists_the_api(env):
    clients, _ = env
    page = clients["anon"].get("/docs")
    assert page.status_code == 200
    assert '<script src="/static/docs.js"></script>' in page.text and "cdn" not in page.text.lower()
    assert "http" not in "".join(line for line in page.text.splitlines() if "src=" in line or "href=" in line)
    assert clients["anon"].get("/static/docs.js").status_code == 200
    spec = clients["anon"].get("/openapi.json").json()
    for path in ("/api/next", "/api/assignments/{assignment_id}/judgment", "/api/assignments/{assignment_id}/skip",
                 "/api/me/progress", "/api/campaigns", "/api/campaigns/{assignment_id}/export".replace("assignment_id", "campaign_id")):
        assert path in spec["paths"], path
    assert not any(p.startswith("/admin") or p.startswith("/login") for p in spec["paths"])


def test_the_hot_endpoints_answer_exactly_their_documented_models(env):
    """/api/next, the judgment and the skip build their JSON without pydantic: it must still be
    exactly what the spec says (every field, no other, the types)."""
    from alignloop.feedback.api import AssignmentOut, JudgmentOut, NextOut, ProgressOut

    def exactly(model, data):
        assert set(data) == set(model.model_fields), (model.__name__, sorted(data))
        return model.model_validate(data, strict=True)

    clients, _ = env
    ann = clients["ann"]
    nxt = exactly(NextOut, ann.get("/api/next").json())
    exactly(AssignmentOut, ann.get("/api/next").json()["assignment"])
    exactly(ProgressOut, ann.get("/api/next").json()["progress"])
    aid = nxt.assignment.assignment_id
    assert exactly(AssignmentOut, ann.get(f"/api/assignments/{aid}").json()) == nxt.assignment
    for status in (201, 200):  # the first answer, then its replay
        r = ann.post(f"/api/assignments/{aid}/judgment", json={"ranking": [0, 1, 2, 3]}, headers={"Idempotency-Key": "k"})
        assert r.status_code == status
        j = exactly(JudgmentOut, r.json())
        assert j.created == (status == 201) and j.submitted_at.endswith("Z")
    other = ann.get("/api/next").json()["assignment"]["assignment_id"]
    skipped = exactly(AssignmentOut, ann.post(f"/api/assignments/{other}/skip").json())
    assert skipped.status == "skipped"
    exactly(ProgressOut, ann.get("/api/me/progress").json())
