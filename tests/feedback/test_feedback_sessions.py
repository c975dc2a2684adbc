"""Session cookies: signed with a key kept outside the database (ALIGNLOOP_SECRET_KEY or a key
file made with mode 0600), so a copy of the database signs nothing; revoked by logout, by a
fresh login link and by an admin's "sign out everywhere"; limited in lifetime from sign-in."""

from __future__ import annotations

import base64
import json
import stat
import time

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner
from sqlalchemy import select, text

from alignloop.data.records import Samples
from alignloop.feedback import store
from alignloop.feedback.app import create_app
from alignloop.feedback.db import Rater, make_engine, writer
from alignloop.feedback.secret import SecretKeyError

from .conftest import SAMPLES, hidden

COOKIE = "alignloop_session"


@pytest.fixture
def site(db_path):
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        store.create_campaign(s, "camp", "rank", [Samples(**r) for r in SAMPLES], raters_per_item=3, gold_rate=0.0)
        ann, ann_link, ann_api = store.add_rater(s, "ann", api_token=True)
        links = {"ann": ann_link, **{n: store.add_rater(s, n, admin=n == "boss")[1] for n in ("bob", "boss")}}
    return create_app(db_path), links, ann_api, sessions


def login(app, token: str) -> TestClient:
    client = TestClient(app)
    page = client.get(f"/login/{token}")
    client.post(f"/login/{token}", data={"csrf_token": hidden(page.text, "csrf_token")}, follow_redirects=False)
    return client


def with_cookie(app, value: str) -> TestClient:
    client = TestClient(app)
    client.cookies.set(COOKIE, value)
    return client


def sign(session: dict, key: str) -> str:
    """A session cookie as Starlette's SessionMiddleware makes it, signed with `key`."""
    return TimestampSigner(key).sign(base64.b64encode(json.dumps(session).encode())).decode()


def signed_in(client: TestClient) -> bool:
    r = client.get("/api/me/progress")
    assert r.status_code in (200, 401), r.text
    return r.status_code == 200


def test_the_key_file_is_made_once_with_mode_0600_and_the_database_holds_no_key(site, app_home, db_path):
    app, links, _, _ = site
    key_file = app_home / "feedback-secret-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and stat.S_IMODE(app_home.stat().st_mode) == 0o700
    key = key_file.read_text().strip()
    assert len(key) >= 32
    ann = login(app, links["ann"])
    again = create_app(db_path)  # a restart (or a second worker) reads the same key
    assert key_file.read_text().strip() == key and signed_in(with_cookie(again, ann.cookies[COOKIE]))
    wal = db_path.with_name(db_path.name + "-wal")
    data = db_path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert key.encode() not in data


def test_a_copy_of_the_database_cannot_sign_an_admin_session(db_path):
    # a database of revision 2 kept its signing key in `settings`; the upgrade deletes it
    engine = make_engine(db_path)
    store.migrate(engine, "0002")
    old_key = "the key that every copy of the database file carried"
    with writer(engine).begin() as conn:
        conn.execute(text("INSERT INTO settings (key, value) VALUES ('session_secret', :k)"), {"k": old_key})
        conn.execute(text("INSERT INTO raters (id, name, role, created_at) VALUES (1, 'boss', 'admin', '2025-01-01')"))
    store.migrate(engine)
    engine.dispose()  # the last connection: the WAL is checkpointed into the file
    assert old_key.encode() not in db_path.read_bytes()  # not even in a free page
    app = create_app(db_path)
    with app.state.sessions() as s:
        stored = [v for (v,) in s.execute(text("SELECT value FROM settings"))]
    for key in [old_key, *stored]:  # everything a copy of the database holds
        for session in ({"rater_id": 1}, {"rater_id": 1, "sv": 0, "iat": int(time.time()), "csrf": "c"}):
            forged = with_cookie(app, sign(session, key))
            assert forged.get("/admin").status_code == 401
            assert forged.post("/api/raters", json={"name": "mallory", "admin": True},
                               headers={"X-CSRF-Token": "c"}).status_code == 401


def test_logout_revokes_the_cookie_and_every_copy_of_it(site):
    app, links, _, _ = site
    ann = login(app, links["ann"])
    stolen = ann.cookies[COOKIE]
    assert signed_in(with_cookie(app, stolen))
    r = ann.post("/logout", data={"csrf_token": hidden(ann.get("/").text, "csrf_token")}, follow_redirects=False)
    assert r.status_code == 303
    assert not signed_in(with_cookie(app, stolen)) and not signed_in(ann)


def test_a_fresh_login_link_ends_the_old_sessions(site):
    app, links, _, sessions = site
    ann = login(app, links["ann"])
    stolen = ann.cookies[COOKIE]
    with sessions() as s:
        _, fresh, _ = store.add_rater(s, "ann")
    assert not signed_in(with_cookie(app, stolen))
    assert signed_in(login(app, fresh))


def test_an_admin_signs_a_rater_out_everywhere(site):
    app, links, ann_api, sessions = site
    stolen = login(app, links["ann"]).cookies[COOKIE]
    bearer = TestClient(app, headers={"Authorization": f"Bearer {ann_api}"})
    with sessions() as s:
        ids = {r.name: r.id for r in s.scalars(select(Rater))}
    assert signed_in(bearer) and bearer.post(f"/api/raters/{ids['bob']}/sign-out").status_code == 403  # raters cannot
    boss = login(app, links["boss"])
    page = boss.post(f"/admin/raters/{ids['ann']}/sign-out",
                     data={"csrf_token": hidden(boss.get("/admin").text, "csrf_token")})
    assert page.status_code == 200 and "ann is signed out everywhere" in page.text
    assert not signed_in(with_cookie(app, stolen)) and not signed_in(bearer)  # the cookie and the API token
    # through the API, for bob, whose login link was never used: the link stops working
    with sessions() as s:
        admin = TestClient(app, headers={"Authorization": f"Bearer {store.add_rater(s, 'boss', api_token=True)[2]}"})
    assert admin.post(f"/api/raters/{ids['bob']}/sign-out").status_code == 204
    assert TestClient(app).get(f"/login/{links['bob']}").status_code == 404
    assert admin.post("/api/raters/999/sign-out").status_code == 404


def _fresh_link(sessions, name: str) -> str:
    with sessions() as s:
        return store.add_rater(s, name)[1]


def test_the_session_lifetime_counts_from_sign_in(db_path, app_home):
    app = create_app(db_path, session_hours=1)
    key = (app_home / "feedback-secret-key").read_text().strip()
    with app.state.sessions() as s:
        ann = store.add_rater(s, "ann")[0]
    now = int(time.time())

    def cookie(**fields) -> TestClient:
        return with_cookie(app, sign({"rater_id": ann.id, "sv": 0, "iat": now, "csrf": "c", **fields}, key))

    assert signed_in(cookie(iat=now - 1800))
    assert not signed_in(cookie(iat=now - 3700))  # an hour after sign-in, however often it was used
    assert not signed_in(cookie(iat=now + 3600))
    assert not signed_in(cookie(sv=1))  # not the rater's current session version
    assert not signed_in(cookie(rater_id=str(ann.id))) and not signed_in(cookie(rater_id=2**63))
    assert not signed_in(cookie(iat="now"))


def test_rotating_the_key_signs_everyone_out(site, app_home, db_path, monkeypatch):
    app, links, _, sessions = site
    cookie = login(app, links["ann"]).cookies[COOKIE]
    (app_home / "feedback-secret-key").unlink()  # rotate: a new key is made at the next start
    rotated = create_app(db_path)
    assert not signed_in(with_cookie(rotated, cookie))
    monkeypatch.setenv("ALIGNLOOP_SECRET_KEY", "k" * 40)  # or give the key in the environment
    from_env = create_app(db_path)
    ann = login(from_env, _fresh_link(sessions, "ann"))
    assert signed_in(ann) and signed_in(with_cookie(create_app(db_path), ann.cookies[COOKIE]))
    assert not signed_in(with_cookie(rotated, ann.cookies[COOKIE]))


def test_unusable_keys_are_refused(db_path, app_home, monkeypatch, capsys):
    app_home.mkdir(mode=0o700)
    key_file = app_home / "feedback-secret-key"
    key_file.write_text("x" * 64)
    key_file.chmod(0o644)
    with pytest.raises(SecretKeyError, match="chmod 600"):
        create_app(db_path)
    from alignloop.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--db", str(db_path), "--secret-key-file", str(key_file)])
    assert "group or others may access this key file" in capsys.readouterr().err
    monkeypatch.setenv("ALIGNLOOP_SECRET_KEY", "short")
    with pytest.raises(SecretKeyError, match="at least 32 characters"):
        create_app(db_path)
