"""Hostile input and odd requests get a 4xx naming the field, never a 500 and never a stored
value of the wrong type: strict JSON types, ids past the database's integer range, Unicode
digits in forms, unbounded admin numbers; and every response, errors included, carries the
security headers, a 405 its Allow, a login link the configured address (not the Host)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from alignloop.data.records import Samples
from alignloop.feedback import reports, store
from alignloop.feedback.app import create_app
from alignloop.feedback.db import Campaign, DatabaseBusy, Judgment, Rater

from .conftest import SAMPLES, hidden

HUGE_IDS = [2**31, 2**63, 2**64 + 7]


@pytest.fixture
def env(db_path):
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        store.create_campaign(s, "camp", "rank", [Samples(**r) for r in SAMPLES], raters_per_item=2, gold_rate=0.0)
        store.create_campaign(s, "votes", "thumbs", [Samples(prompt="p", responses=["a", "b", "c"])],
                              raters_per_item=1, gold_rate=0.0)
        tokens = {n: store.add_rater(s, n, admin=n == "boss", api_token=True)[2] for n in ("ann", "boss")}
        links = {n: store.add_rater(s, n, admin=n == "lead")[1] for n in ("cat", "lead")}
    app = create_app(db_path, base_url="https://rate.example/app")
    api = {n: TestClient(app, headers={"Authorization": f"Bearer {t}"}) for n, t in tokens.items()}
    yield app, api, links, sessions


def login(app, token: str) -> TestClient:
    client = TestClient(app)
    page = client.get(f"/login/{token}")
    assert client.post(f"/login/{token}", data={"csrf_token": hidden(page.text, "csrf_token")}).status_code == 200
    return client


def count(sessions, model) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def field_named(reply, field: str) -> bool:
    """A 422 whose detail names `field` (FastAPI's list of errors, or a store message)."""
    detail = reply.json()["detail"]
    if isinstance(detail, str):
        return detail.startswith(field)
    return any(field in map(str, e["loc"]) for e in detail)


@pytest.mark.parametrize("body, field", [
    ({"ranking": ["0", "1", "2", "3"]}, "ranking"),  # strings are not indices
    ({"ranking": [0.0, 1.0, 2.0, 3.0]}, "ranking"),  # nor are floats
    ({"ranking": [True, False, 2, 3]}, "ranking"),  # nor are booleans
    ({"ranking": [0, [1, "2"], 3]}, "ranking"),
    ({"ranking": [0, 1, 2, 3], "unsafe": [True]}, "unsafe"),
    ({"ranking": [0, 1, 2, 3], "unsafe": ["1"]}, "unsafe"),
    ({"ranking": [0, 1, 2, 3], "comment": 5}, "comment"),
    ({"ranking": [0, 1, 2, 3], "rankings": [0]}, "rankings"),  # a typo is not ignored
])
def test_judgment_fields_take_exactly_their_json_types(env, body, field):
    _, api, _, sessions = env
    aid = api["ann"].get("/api/next").json()["assignment"]["assignment_id"]
    r = api["ann"].post(f"/api/assignments/{aid}/judgment", json=body)
    assert r.status_code == 422 and field_named(r, field), r.text
    assert count(sessions, Judgment) == 0


@pytest.mark.parametrize("labels", [[True, False, True], [1.0, 0.0, 1.0], ["1", "0", "1"]])
def test_thumbs_labels_take_integers_only(env, labels):
    _, api, _, sessions = env
    with sessions() as s:
        votes = store.find_campaign(s, "votes").id
    aid = api["ann"].get(f"/api/next?campaign_id={votes}").json()["assignment"]["assignment_id"]
    r = api["ann"].post(f"/api/assignments/{aid}/judgment", json={"labels": labels})
    assert r.status_code == 422 and field_named(r, "labels")
    assert api["ann"].post(f"/api/assignments/{aid}/judgment", json={"labels": [1, 0, 1]}).status_code == 201
    with sessions() as s:
        assert [type(v) for v in s.scalars(select(Judgment.labels)).one()] == [int, int, int]


@pytest.mark.parametrize("body, field", [
    ({"name": "mallory", "admin": "yes"}, "admin"),
    ({"name": "mallory", "admin": 1}, "admin"),
    ({"name": "mallory", "api_token": "false"}, "api_token"),
    ({"name": 7}, "name"),
])
def test_a_string_is_not_a_bool_when_adding_a_rater(env, body, field):
    _, api, _, sessions = env
    r = api["boss"].post("/api/raters", json=body)
    assert r.status_code == 422 and field_named(r, field)
    with sessions() as s:
        assert s.scalar(select(Rater).where(Rater.name == "mallory")) is None


@pytest.mark.parametrize("huge", HUGE_IDS)
def test_ids_past_the_integer_range_are_refused_not_a_500(env, huge):
    app, api, links, _ = env
    ann, boss = api["ann"], api["boss"]
    for r, field in [(ann.get(f"/api/assignments/{huge}"), "assignment_id"),
                     (ann.post(f"/api/assignments/{huge}/judgment", json={"ranking": [0, 1, 2, 3]}), "assignment_id"),
                     (ann.post(f"/api/assignments/{huge}/skip"), "assignment_id"),
                     (ann.get(f"/api/next?campaign_id={huge}"), "campaign_id"),
                     (boss.get(f"/api/campaigns/{huge}/export"), "campaign_id"),
                     (boss.post(f"/api/raters/{huge}/sign-out"), "rater_id")]:
        assert r.status_code == 422 and field_named(r, field), r.text
    lead = login(app, links["lead"])
    for path in (f"/assignments/{huge}", f"/admin/campaigns/{huge}/export", f"/admin?quality={huge}"):
        r = lead.get(path)
        assert r.status_code == 422 and "Invalid request" in r.text, path
    # in range but absent: a plain 404, as for someone else's assignment
    assert ann.get(f"/api/assignments/{2**31 - 1}").status_code == 404
    assert boss.get(f"/api/campaigns/{2**31 - 1}/export").status_code == 404


def test_the_store_treats_out_of_range_ids_as_missing(sessions):
    with sessions() as s:
        rater = store.add_rater(s, "ann")[0]
        for huge in HUGE_IDS:
            with pytest.raises(store.NotFound):
                store.get_assignment(s, rater, huge)
            with pytest.raises(store.NotFound):
                store.find_campaign(s, str(huge))
            assert store.next_assignment(s, rater, campaign_id=huge) is None
        with pytest.raises(store.NotFound):
            store.find_campaign(s, "²")  # str.isdigit() is true for it; int() is not


@pytest.mark.parametrize("field, value, message", [
    ("rank_0", "²", "rank of A: pick a number from 1 to 4."),
    ("rank_0", "①", "rank of A: pick a number from 1 to 4."),
    ("rank_0", "٣", "rank of A: pick a number from 1 to 4."),  # int() would read it as 3
    ("rank_0", " 1", "rank of A: pick a number from 1 to 4."),
    ("rank_0", "9" * 40, "rank of A: pick a number from 1 to 4."),
    ("unsafe", "¹", "unsafe: pick a number from 0 to 3."),
])
def test_form_numbers_take_ascii_digits_only(env, field, value, message):
    app, _, links, sessions = env
    cat = login(app, links["cat"])
    page = cat.get("/").text
    aid = int(page.split('action="/assignments/')[1].split("/")[0])
    data = {"csrf_token": hidden(page, "csrf_token"), "submission_key": hidden(page, "submission_key"),
            "rank_0": "1", "rank_1": "2", "rank_2": "3", "rank_3": "4", field: value}
    r = cat.post(f"/assignments/{aid}/judgment", data=data)
    assert r.status_code == 422 and message in r.text
    assert count(sessions, Judgment) == 0


def upload(client: TestClient, fields: dict, csrf: str | None = None):
    files = {"samples": ("s.jsonl", json.dumps({"prompt": "p", "responses": ["a", "b"]}).encode() + b"\n")}
    if csrf is None:
        return client.post("/api/campaigns", data=fields, files=files)
    return client.post("/admin/campaigns", data={"csrf_token": csrf, **fields}, files=files)


@pytest.mark.parametrize("fields, field", [
    ({"raters_per_item": str(2**64)}, "raters_per_item"),
    ({"raters_per_item": "2000000"}, "raters_per_item"),  # the CLI's bound is 100
    ({"raters_per_item": "0"}, "raters_per_item"),
    ({"raters_per_item": "³"}, "raters_per_item"),
    ({"gold_rate": "nan"}, "gold_rate"),
    ({"gold_rate": "1.5"}, "gold_rate"),
    ({"gold_rate": "1e-1"}, "gold_rate"),
    ({"seed": "-1"}, "seed"),
    ({"seed": str(2**40)}, "seed"),
])
def test_admin_numbers_have_the_cli_bounds(env, fields, field):
    app, api, links, sessions = env
    r = upload(api["boss"], {"name": "x", **fields})
    assert r.status_code == 422 and r.json()["detail"].startswith(f"{field}:"), r.text
    lead = login(app, links["lead"])
    r = upload(lead, {"name": "x", **fields}, csrf=hidden(lead.get("/admin").text, "csrf_token"))
    assert r.status_code == 422 and f"{field}:" in r.text
    assert count(sessions, Campaign) == 2
    ok = upload(api["boss"], {"name": "x", "raters_per_item": "100", "gold_rate": "0.25", "seed": "7"})
    assert ok.status_code == 201 and ok.json()["raters_per_item"] == 100


def test_the_store_refuses_out_of_bounds_campaign_settings(sessions):
    records = [Samples(prompt="p", responses=["a", "b"])]
    with sessions() as s:
        for kwargs, field in [({"raters_per_item": 101}, "raters_per_item"), ({"raters_per_item": True}, "raters_per_item"),
                              ({"gold_rate": float("nan")}, "gold_rate"), ({"seed": 2**31}, "seed")]:
            with pytest.raises(store.Invalid, match=f"^{field}:"):
                store.create_campaign(s, "c", "rank", records, **kwargs)
        assert reports.campaign_summaries(s) == []


SECURITY = ("content-security-policy", "x-content-type-options", "x-frame-options", "referrer-policy")


def has_security_headers(r) -> bool:
    return all(h in r.headers for h in SECURITY)


def test_every_response_has_the_security_headers_even_a_500(env, monkeypatch):
    app, api, links, _ = env
    cat = login(app, links["cat"])
    anon = TestClient(app)
    replies = [anon.get("/"), anon.get("/nowhere"), anon.get("/api/next"), anon.put("/api/next"),
               api["ann"].get(f"/api/assignments/{2**63}"), anon.get("/static/feedback.css"),
               anon.post("/api/raters", content=b"x", headers={"content-length": str(2**40)})]
    assert [r.status_code for r in replies] == [200, 404, 401, 405, 422, 200, 413]
    assert all(has_security_headers(r) for r in replies)
    assert replies[0].headers["cache-control"] == "no-store" and "cache-control" not in replies[5].headers

    def broken(*_args, **_kw):
        raise RuntimeError("a bug")

    monkeypatch.setattr(reports, "rater_progress", broken)
    r = api["ann"].get("/api/me/progress")
    assert r.status_code == 500 and has_security_headers(r) and "a bug" not in r.text
    page = cat.get("/")
    assert page.status_code == 500 and has_security_headers(page) and "Internal error" in page.text


def test_a_busy_database_is_a_503_with_retry_after_and_the_headers(env, monkeypatch):
    _, api, _, _ = env

    def busy(*_args, **_kw):
        raise DatabaseBusy("the write lock was busy")

    monkeypatch.setattr(store, "next_assignment_view", busy)
    r = api["ann"].get("/api/next")
    assert r.status_code == 503 and r.headers["retry-after"] == "2" and has_security_headers(r)
    assert "nothing was stored" in r.json()["detail"]


@pytest.mark.parametrize("method, path, allow", [
    ("PUT", "/api/next", "GET"),
    ("DELETE", "/login/abc", "GET, POST"),
    ("GET", "/logout", "POST"),
    ("POST", "/static/feedback.css", "GET, HEAD"),
])
def test_405_names_the_allowed_methods(env, method, path, allow):
    app, _, _, _ = env
    r = TestClient(app).request(method, path)
    assert r.status_code == 405 and r.headers["allow"] == allow and has_security_headers(r)


def test_login_links_and_redirects_never_come_from_the_host_header(env):
    app, api, links, _ = env
    forged = {"Host": "evil.example"}
    r = api["boss"].post("/api/raters", json={"name": "dan"}, headers=forged)
    assert r.json()["login_url"].startswith("https://rate.example/app/login/")
    lead = login(app, links["lead"])
    page = lead.post("/admin/raters", data={"csrf_token": hidden(lead.get("/admin").text, "csrf_token"), "name": "eve"},
                     headers=forged)
    assert "https://rate.example/app/login/" in page.text and "evil.example" not in page.text
    for path in ("/static", "/admin/", "/api/next/"):  # no slash redirects at all
        r = TestClient(app).get(path, headers=forged, follow_redirects=False)
        assert r.status_code in (401, 404) and "location" not in r.headers, path


def test_without_base_url_links_use_the_first_admins_address(db_path, capsys):
    from alignloop.cli import main

    main(["feedback", "add-rater", "lead", "--admin", "--db", str(db_path), "--base-url", "http://rate.lan:9000/"])
    assert "login link (works once): http://rate.lan:9000/login/" in capsys.readouterr().out
    main(["feedback", "add-rater", "bob", "--db", str(db_path)])  # no --base-url: the stored one
    assert "login link (works once): http://rate.lan:9000/login/" in capsys.readouterr().out
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        api = store.add_rater(s, "lead", admin=True, api_token=True)[2]
    boss = TestClient(create_app(db_path), headers={"Authorization": f"Bearer {api}", "Host": "evil.example"})
    assert boss.post("/api/raters", json={"name": "cy"}).json()["login_url"].startswith("http://rate.lan:9000/login/")
    with pytest.raises(SystemExit):
        main(["feedback", "add-rater", "x", "--db", str(db_path), "--base-url", "javascript:alert(1)"])
    assert "--base-url" in capsys.readouterr().err
