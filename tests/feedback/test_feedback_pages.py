"""The server-rendered pages: login by link, rating forms, CSRF, escaping, admin pages."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from alignloop.data.records import Samples
from alignloop.feedback import store
from alignloop.feedback.app import create_app
from alignloop.feedback.db import Judgment

from .conftest import SAMPLES, hidden

XSS = "<script>alert('xss')</script>"


@pytest.fixture
def site(db_path):
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        store.create_campaign(s, "camp <i>1</i>", "rank", [Samples(**r) for r in SAMPLES], raters_per_item=2,
                              instructions=f"Rank by helpfulness. {XSS}", gold_rate=0.0)
        links = {name: store.add_rater(s, name, admin=name == "boss")[1] for name in ("ann", "bob", "boss")}
    app = create_app(db_path)
    yield app, links, sessions


def login(app, token: str) -> TestClient:
    client = TestClient(app)
    page = client.get(f"/login/{token}")
    assert page.status_code == 200 and "Continue as" in page.text
    r = client.post(f"/login/{token}", data={"csrf_token": hidden(page.text, "csrf_token")}, follow_redirects=False)
    assert r.status_code == 303
    return client


def item_page(client: TestClient) -> tuple[int, str]:
    r = client.get("/")
    assert r.status_code == 200, r.text
    aid = int(re.search(r'action="/assignments/(\d+)/judgment"', r.text).group(1))
    return aid, r.text


def shown_texts(html: str) -> list[str]:
    """The response texts in the order the page shows them."""
    return re.findall(r'<li class="card".*?<div class="text">(.*?)</div>', html, flags=re.S)


def n_judgments(sessions) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Judgment))


def form_for(html: str, ranks: list[int | str], **extra) -> dict:
    data = {"csrf_token": hidden(html, "csrf_token"), "submission_key": hidden(html, "submission_key"), **extra}
    data.update({f"rank_{p}": str(r) for p, r in enumerate(ranks)})
    return data


def test_login_link_works_once_and_needs_the_csrf_token(site):
    app, links, _ = site
    client = TestClient(app)
    page = client.get(f"/login/{links['ann']}")
    assert client.post(f"/login/{links['ann']}", data={}).status_code == 403  # no token: the link is not used up
    r = client.post(f"/login/{links['ann']}", data={"csrf_token": hidden(page.text, "csrf_token")}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert client.get("/", follow_redirects=False).headers["location"].startswith("/assignments/")
    again = TestClient(app).get(f"/login/{links['ann']}")
    assert again.status_code == 404 and "not valid or was used already" in again.text


def test_rater_ranks_an_item_with_a_tie_and_it_is_stored_in_original_indices(site):
    app, links, sessions = site
    ann = login(app, links["ann"])
    aid, html = item_page(ann)
    texts = shown_texts(html)
    original = SAMPLES[0]["responses"]
    import html as htmllib

    order = [original.index(htmllib.unescape(t)) for t in texts]  # display position -> original index
    r = ann.post(f"/assignments/{aid}/judgment", data=form_for(html, [2, 1, 2, 3], unsafe="3", comment="fine"),
                 follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/?saved=1"
    with sessions() as s:
        (j,) = s.scalars(select(Judgment)).all()
        assert j.display_order == order
        assert j.ranking == [order[1], sorted([order[0], order[2]]), order[3]]
        assert j.unsafe == [order[3]] and j.comment == "fine"
    nxt = ann.get("/?saved=1")
    assert "Saved." in nxt.text and "1 / 3" in nxt.text  # progress: done / assigned


def test_double_submit_stores_one_judgment(site):
    app, links, sessions = site
    ann = login(app, links["ann"])
    aid, html = item_page(ann)
    data = form_for(html, [1, 2, 3, 4])
    first = ann.post(f"/assignments/{aid}/judgment", data=data, follow_redirects=False)
    second = ann.post(f"/assignments/{aid}/judgment", data=data, follow_redirects=False)
    assert first.status_code == second.status_code == 303
    assert n_judgments(sessions) == 1


def test_post_without_or_with_a_wrong_csrf_token_is_refused(site):
    app, links, sessions = site
    ann = login(app, links["ann"])
    aid, html = item_page(ann)
    data = form_for(html, [1, 2, 3, 4])
    for bad in ({k: v for k, v in data.items() if k != "csrf_token"}, {**data, "csrf_token": "forged"}):
        r = ann.post(f"/assignments/{aid}/judgment", data=bad)
        assert r.status_code == 403 and "security token" in r.text
    # a token from another session (bob's) does not work for ann
    bob = login(app, links["bob"])
    _, bob_html = item_page(bob)
    r = ann.post(f"/assignments/{aid}/judgment", data={**data, "csrf_token": hidden(bob_html, "csrf_token")})
    assert r.status_code == 403
    assert ann.post(f"/assignments/{aid}/skip", data={}).status_code == 403
    assert ann.post("/logout", data={}).status_code == 403
    assert n_judgments(sessions) == 0


def test_markup_in_responses_prompt_and_instructions_is_shown_as_text(site):
    app, links, _ = site
    ann = login(app, links["ann"])
    _, html = item_page(ann)
    assert XSS not in html and "<b>bold?</b>" not in html
    assert "&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt;&lt;b&gt;bold?&lt;/b&gt;" in html
    assert "Rank by helpfulness. &lt;script&gt;" in html and "camp &lt;i&gt;1&lt;/i&gt;" in html
    assert "script-src 'self'" in ann.get("/").headers["content-security-policy"]
    boss = login(app, links["boss"])
    r = boss.post("/admin/raters", data={"csrf_token": hidden(boss.get("/admin").text, "csrf_token"),
                                         "name": "<img src=x onerror=alert(1)>"})
    assert r.status_code == 200 and "<img src=x" not in r.text and "&lt;img src=x onerror=alert(1)&gt;" in r.text
    assert "<i>1</i>" not in boss.get("/admin").text


def test_invalid_ranking_is_refused_with_a_message_and_the_choices_kept(site):
    app, links, sessions = site
    ann = login(app, links["ann"])
    aid, html = item_page(ann)
    r = ann.post(f"/assignments/{aid}/judgment", data=form_for(html, [1, 2, "", 3], comment="keep me"))
    assert r.status_code == 422
    assert "Give every response a rank: C has none." in r.text
    assert '<option value="2" selected>' in r.text and "keep me" in r.text
    r = ann.post(f"/assignments/{aid}/judgment", data=form_for(html, [1, 2, 9, 3]))
    assert r.status_code == 422 and "rank of C: pick a number from 1 to 4." in r.text
    r = ann.post(f"/assignments/{aid}/judgment", data=form_for(html, [1, 2, 3, 4], comment="x" * 2001))
    assert r.status_code == 422 and "at most 2000" in r.text
    assert n_judgments(sessions) == 0


def test_rater_cannot_open_or_answer_another_raters_item(site):
    app, links, sessions = site
    ann, bob = login(app, links["ann"]), login(app, links["bob"])
    aid, html = item_page(ann)
    assert bob.get(f"/assignments/{aid}").status_code == 404
    _, bob_html = item_page(bob)
    r = bob.post(f"/assignments/{aid}/judgment", data=form_for(bob_html, [1, 2, 3, 4]))
    assert r.status_code == 404
    assert bob.post(f"/assignments/{aid}/skip", data={"csrf_token": hidden(bob_html, "csrf_token")}).status_code == 404
    assert n_judgments(sessions) == 0
    assert ann.get(f"/assignments/{aid}").status_code == 200


def test_admin_pages_need_an_admin(site):
    app, links, _ = site
    assert TestClient(app).get("/admin").status_code == 401
    ann = login(app, links["ann"])
    assert ann.get("/admin").status_code == 403
    assert ann.get("/admin/campaigns/1/export").status_code == 403
    token = hidden(ann.get("/").text, "csrf_token")
    assert ann.post("/admin/raters", data={"csrf_token": token, "name": "x", "admin": "1"}).status_code == 403
    r = ann.post("/admin/campaigns", data={"csrf_token": token, "kind": "rank"},
                 files={"samples": ("s.jsonl", b'{"prompt": "p", "responses": ["a", "b"]}\n')})
    assert r.status_code == 403


def test_skip_moves_on(site):
    app, links, _ = site
    ann = login(app, links["ann"])
    aid, html = item_page(ann)
    r = ann.post(f"/assignments/{aid}/skip", data={"csrf_token": hidden(html, "csrf_token")}, follow_redirects=False)
    assert r.status_code == 303
    nxt, _ = item_page(ann)
    assert nxt != aid
    closed = ann.get(f"/assignments/{aid}")
    assert "Already skipped" in closed.text


def test_admin_dashboard_upload_add_rater_and_export(site, tmp_path):
    app, links, _ = site
    ann = login(app, links["ann"])
    aid, html = item_page(ann)
    ann.post(f"/assignments/{aid}/judgment", data=form_for(html, [1, 2, 3, 4]))
    boss = login(app, links["boss"])
    page = boss.get("/admin")
    assert page.status_code == 200
    row = re.search(r'<table id="campaigns">.*?<tbody>(.*?)</tbody>', page.text, flags=re.S).group(1)
    cells = [c.strip() for c in re.findall(r"<td>(.*?)</td>", row, flags=re.S)]
    assert cells[0] == "camp &lt;i&gt;1&lt;/i&gt;" and cells[2] == "3"  # items
    assert cells[3] == "1 / 6" and "ann: 1" in cells[9]  # judgments / expected, per-rater counts
    token = hidden(page.text, "csrf_token")
    thumbs = "".join(json.dumps({"prompt": f"p{i}", "responses": ["good", "meh"]}) + "\n" for i in range(3))
    r = boss.post("/admin/campaigns", data={"csrf_token": token, "kind": "thumbs", "raters_per_item": "1", "name": "thumbs"},
                  files={"samples": ("t.jsonl", thumbs.encode())}, follow_redirects=False)
    assert r.status_code == 303
    assert "Campaign “thumbs” created." in boss.get(r.headers["location"]).text
    bad = boss.post("/admin/campaigns", data={"csrf_token": token, "kind": "rank", "name": "x"},
                    files={"samples": ("x.jsonl", b'{"prompt": "p"}\n')})
    assert bad.status_code == 422 and "x.jsonl:1: field &#39;responses&#39;: missing" in bad.text
    added = boss.post("/admin/raters", data={"csrf_token": token, "name": "carol"})
    link = re.search(r'id="new-link">([^<]+)<', added.text).group(1)
    carol = login(app, link.removeprefix("http://127.0.0.1:8000/login/"))
    # carol gets the thumbs campaign only after the first campaign is used up; answer both kinds
    seen_thumbs = False
    for _ in range(5):
        r = carol.get("/")
        if "All done" in r.text:
            break
        aid, html = item_page(carol)
        if 'data-kind="thumbs"' in html:
            seen_thumbs = True
            carol.post(f"/assignments/{aid}/judgment", data={"csrf_token": hidden(html, "csrf_token"),
                       "submission_key": hidden(html, "submission_key"), "label_0": "1", "label_1": "0"})
        else:
            carol.post(f"/assignments/{aid}/judgment", data=form_for(html, [1, 1, 2, 3]))
    assert seen_thumbs
    export = boss.get("/admin/campaigns/1/export")
    assert export.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(x)["rater"] for x in export.text.splitlines()][:1] == ["ann"]
    thumbs_export = [json.loads(x) for x in boss.get("/admin/campaigns/2/export").text.splitlines()]
    assert thumbs_export and {r["label"] for r in thumbs_export} <= {0, 1} and thumbs_export[0]["source"] == "human"


def test_thumbs_page_takes_a_label_per_response(tmp_path):
    _, sessions = store.open_db(tmp_path / "thumbs.db")
    with sessions() as s:
        store.create_campaign(s, "t", "thumbs", [Samples(prompt="p", responses=["a", "b"])], raters_per_item=1)
        _, link, _ = store.add_rater(s, "tina")
    tina = login(create_app(tmp_path / "thumbs.db"), link)
    aid, html = item_page(tina)
    assert 'type="radio" name="label_1" value="0"' in html and "rank_0" not in html
    base = {"csrf_token": hidden(html, "csrf_token"), "submission_key": hidden(html, "submission_key")}
    r = tina.post(f"/assignments/{aid}/judgment", data={**base, "label_0": "1"})
    assert r.status_code == 422 and "Give every response a thumbs up or down: B has none." in r.text
    r = tina.post(f"/assignments/{aid}/judgment", data={**base, "label_0": "1", "label_1": "0"}, follow_redirects=False)
    assert r.status_code == 303
    with sessions() as s:
        (j,) = s.scalars(select(Judgment)).all()
        assert [j.labels[o] for o in j.display_order] == [1, 0]  # per position as posted
