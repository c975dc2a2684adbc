"""Clips campaigns: two videos per item, answers left / right / equal / can't tell (a tie and an
abstention, so exported and read by the quality tools), videos served only to the rater who
holds the item and to admins, by digest only, with range requests and cache headers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from alignloop.data.records import Comparison, Samples
from alignloop.feedback import reports, store
from alignloop.feedback.app import create_app
from alignloop.feedback.db import ItemMedia, Media
from alignloop.quality.judgments import load_judgments
from alignloop.quality.report import summary_for_admin

from .clips import TASK, clips_campaign, write_clip
from .conftest import REPO, hidden


@pytest.fixture
def app_env(db_path, tmp_path):
    made = clips_campaign(db_path, tmp_path, items=2, raters_per_item=2)
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        tokens = {n: store.add_rater(s, n, admin=n == "boss", api_token=True)[2] for n in ("ann", "bob", "cat", "boss")}
    app = create_app(db_path)
    clients = {n: TestClient(app, headers={"Authorization": f"Bearer {t}"}) for n, t in tokens.items()}
    clients["anon"] = TestClient(app)
    yield clients, sessions, made
    for c in clients.values():
        c.close()


def test_a_clips_item_is_two_videos_and_takes_the_four_answers(app_env):
    clients, sessions, made = app_env
    answers = {}
    for name, body in (("ann", {"ranking": [0, 1]}), ("bob", {"ranking": [[0, 1]]})):
        a = clients[name].get("/api/next").json()["assignment"]
        assert a["kind"] == "clips" and a["messages"][-1]["content"] == TASK
        urls = [r["media_url"] for r in a["responses"]]
        assert all(u.startswith("/media/") and len(u) == len("/media/") + 64 for u in urls)
        r = clients[name].post(f"/api/assignments/{a['assignment_id']}/judgment", json=body)
        assert r.status_code == 201, r.text
        answers[name] = (a, r.json())
    # ann: left better = position 0 first, in original indices
    a, j = answers["ann"]
    assert j["ranking"] == [j["display_order"][0], j["display_order"][1]] and j["abstained"] is False
    assert answers["bob"][1]["ranking"] == [[0, 1]]
    # the second item: ann can't tell, bob says right is better
    for name, body in (("ann", {"abstain": True}), ("bob", {"ranking": [1, 0]})):
        a = clients[name].get("/api/next").json()["assignment"]
        r = clients[name].post(f"/api/assignments/{a['assignment_id']}/judgment", json=body)
        assert r.status_code == 201 and r.json()["abstained"] is body.get("abstain", False), r.text
        if name == "ann":
            assert r.json()["ranking"] is None
    with sessions() as s:
        records = reports.export_records(s)
        (summary,) = reports.campaign_summaries(s)
    assert summary["complete_items"] == 2 and summary["abstained"] == 1
    by = {(r.rater, r.meta["item_source_id"]): r for r in records}
    ann_left = by[("ann", "c0|c1")]
    assert ann_left.meta["answer"] == "left" and ann_left.meta["media"] == made["digests"][:2]
    assert ann_left.ranking == [ann_left.meta["display_order"][0], ann_left.meta["display_order"][1]]
    tie = by[("bob", "c0|c1")]
    assert tie.meta["answer"] == "equal" and tie.ranking == [[0, 1]] and tie.weight == 1.0
    abstained = by[("ann", "c2|c3")]
    assert abstained.meta["answer"] == "cant_tell" and abstained.meta["abstained"] is True
    assert abstained.weight == 0.0 and abstained.ranking == [[0, 1]]  # a reader that ignores meta learns nothing
    right = by[("bob", "c2|c3")]
    assert right.meta["answer"] == "right" and right.ranking[0] == right.meta["display_order"][1]
    # quality: the tie is a tie (y = 0), the abstention no vote at all, clip names no length
    j = load_judgments(records)
    assert len(j.rankings) == 3 and list(j.abstentions["rater"]) == ["ann"]
    assert sorted(j.pairs["y"].tolist()) == sorted([1 if ann_left.ranking == [0, 1] else -1, 0,
                                                    1 if right.ranking == [0, 1] else -1])
    assert (j.pairs["dlen"] == 0).all()
    head = summary_for_admin(records)
    assert head["raters"]["ann"]["abstained"] == 1 and head["raters"]["bob"]["abstained"] == 0
    assert head["length_bias"] == {}  # not measured on clips


def test_a_rater_cannot_fetch_a_clip_of_another_raters_item(app_env):
    clients, sessions, made = app_env
    a = clients["ann"].get("/api/next").json()["assignment"]
    mine = [r["media_url"] for r in a["responses"]]
    theirs = [f"/media/{d}" for d in made["digests"] if f"/media/{d}" not in mine]
    assert len(theirs) == 2  # the other item's clips
    for url in mine:
        assert clients["ann"].get(url).status_code == 200
    for url in theirs:
        r = clients["ann"].get(url)
        assert r.status_code == 404 and "No such video for you." in r.text
        assert clients["ann"].get(url, headers={"Range": "bytes=0-10"}).status_code == 404
    assert clients["cat"].get(mine[0]).status_code == 404  # a rater without that item
    assert clients["anon"].get(mine[0]).status_code == 401  # nobody signed in
    assert clients["boss"].get(theirs[0]).status_code == 200  # admins see every video
    # once answered, the item's videos are no longer served to its rater
    clients["ann"].post(f"/api/assignments/{a['assignment_id']}/judgment", json={"ranking": [0, 1]})
    assert clients["ann"].get(mine[0]).status_code == 404


def test_videos_answer_range_requests_with_their_type_and_cache_headers(app_env):
    clients, _, made = app_env
    digest, body = made["digests"][0], made["videos"][0].read_bytes()
    boss, url = clients["boss"], f"/media/{made['digests'][0]}"
    full = boss.get(url)
    assert full.status_code == 200 and full.content == body
    assert full.headers["content-type"] == "video/mp4" and full.headers["accept-ranges"] == "bytes"
    assert full.headers["etag"] == f'"{digest}"' and full.headers["content-length"] == str(len(body))
    assert full.headers["cache-control"] == "private, max-age=31536000, immutable"  # no no-store beside it
    assert full.headers["x-content-type-options"] == "nosniff"
    n = len(body)
    for header, start, end in (("bytes=0-99", 0, 99), ("bytes=100-", 100, n - 1), ("bytes=-50", n - 50, n - 1),
                               (f"bytes=10-{n + 500}", 10, n - 1)):
        r = boss.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.headers["content-range"] == f"bytes {start}-{end}/{n}"
        assert r.content == body[start:end + 1] and r.headers["content-length"] == str(end - start + 1)
        assert r.headers["content-type"] == "video/mp4"
    assert boss.get(url, headers={"Range": f"bytes={n}-"}).status_code == 416
    assert boss.get(url, headers={"Range": f"bytes={n}-"}).headers["content-range"] == f"bytes */{n}"
    stale = boss.get(url, headers={"Range": "bytes=0-9", "If-Range": '"another"'})
    assert stale.status_code == 200 and stale.content == body  # If-Range that does not match: the whole file
    head = boss.head(url)
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(n)
    again = boss.get(url, headers={"If-None-Match": f'"{digest}"'})
    assert again.status_code == 304 and again.content == b""
    missing = boss.get("/media/" + "0" * 64)
    assert missing.status_code == 404 and missing.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path", ["/media/..%2f..%2fetc%2fpasswd", "/media/%2e%2e", "/media/{d}.mp4",
                                  "/media/{D}", "/media/{d}/../feedback.db", "/media/ab/{d}.mp4", "/media/"])
def test_nothing_but_a_stored_digest_reaches_a_file(app_env, path):
    clients, _, made = app_env
    d = made["digests"][0]
    r = clients["boss"].get(path.format(d=d, D=d.upper()))
    assert r.status_code == 404 and "ftyp" not in r.text


def test_a_video_file_that_is_not_in_the_database_is_not_served(app_env, db_path, tmp_path):
    clients, sessions, _ = app_env
    stray = write_clip(tmp_path / "stray.mp4", 5)
    from alignloop.feedback.media import file_digest, media_path

    digest = file_digest(stray)
    path = media_path(store.default_media_dir(db_path), digest, "video/mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(stray.read_bytes())  # the file is there, its row is not
    assert clients["boss"].get(f"/media/{digest}").status_code == 404


def test_a_clips_campaign_needs_its_videos_in_the_media_folder(db_path, tmp_path, sessions):
    video = write_clip(tmp_path / "a.mp4", 0)
    with sessions() as s:
        digest = store.add_media(s, store.default_media_dir(db_path), video)
        assert store.add_media(s, store.default_media_dir(db_path), video) == digest  # the same bytes: one row
        assert len(s.scalars(select(Media)).all()) == 1
        with pytest.raises(store.Invalid, match="not in the media folder"):
            store.create_campaign(s, "x", "clips", [Samples(prompt=TASK, responses=["a", "b"],
                                                            meta={"media": [digest, "f" * 64]})])
        with pytest.raises(store.Invalid, match="meta.media"):
            store.create_campaign(s, "x", "clips", [Samples(prompt=TASK, responses=["a", "b"])])
        with pytest.raises(store.Invalid, match="exactly 2 clips"):
            store.create_campaign(s, "x", "clips", [Samples(prompt=TASK, responses=["a", "b", "c"],
                                                            meta={"media": [digest] * 3})])
        text = tmp_path / "fake.mp4"
        text.write_text("not a video")
        with pytest.raises(store.Invalid, match="not an MP4 file"):
            store.add_media(s, store.default_media_dir(db_path), text)
        with pytest.raises(store.Invalid, match=r"\.mp4 \(H.264\) or \.webm"):
            store.add_media(s, store.default_media_dir(db_path), tmp_path / "a.gif")
        c = store.create_campaign(s, "ok", "clips", [Samples(prompt=TASK, responses=["a", "b"],
                                                             meta={"media": [digest, digest]})])
        assert [(m.position, m.sha256) for m in s.scalars(select(ItemMedia))] == [(0, digest), (1, digest)]
        rater = store.add_rater(s, "ann")[0]
        a = store.next_assignment(s, rater)
        assert a.campaign_id == c.id
        with pytest.raises(store.Invalid, match="takes no ranking"):
            store.judge(s, rater.id, a.id, ranking=[0, 1], abstain=True)
        with pytest.raises(store.Invalid, match="ranking"):
            store.judge(s, rater.id, a.id, ranking=[0, 1, 2])
        store.judge(s, rater.id, a.id, abstain=True)


def test_cant_tell_is_only_for_clips(sessions):
    from .conftest import SAMPLES

    with sessions() as s:
        store.create_campaign(s, "text", "compare", [Samples(prompt="p", responses=["a", "b"])], gold_rate=0.0)
        rater = store.add_rater(s, "ann")[0]
        a = store.next_assignment(s, rater)
        with pytest.raises(store.Invalid, match="only a clips campaign"):
            store.judge(s, rater.id, a.id, abstain=True)
    assert SAMPLES  # the text fixtures are untouched


def test_the_rater_page_plays_both_clips_and_takes_a_button_answer(db_path, tmp_path):
    made = clips_campaign(db_path, tmp_path, items=1, raters_per_item=1)
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        link = store.add_rater(s, "ann")[1]
    client = TestClient(create_app(db_path))
    page = client.get(f"/login/{link}")
    client.post(f"/login/{link}", data={"csrf_token": hidden(page.text, "csrf_token")})
    page = client.get("/", follow_redirects=True)
    assert page.status_code == 200 and 'id="clip-left"' in page.text and 'id="clip-right"' in page.text
    assert page.text.count(" muted ") == 2 and "playsinline" in page.text and "/static/clips.js" in page.text
    assert "Which clip swings the pendulum up better?" in page.text and TASK in page.text
    srcs = [page.text.split(f'id="clip-{side}" src="')[1].split('"')[0] for side in ("left", "right")]
    assert sorted(srcs) == sorted(f"/media/{d}" for d in made["digests"])
    assert all(client.get(src).status_code == 200 for src in srcs)
    form = {"csrf_token": hidden(page.text, "csrf_token"), "submission_key": hidden(page.text, "submission_key")}
    assert client.post(page.url.path + "/judgment", data={**form, "answer": "sideways"}).status_code == 422
    done = client.post(page.url.path + "/judgment", data={**form, "answer": "right"}, follow_redirects=False)
    assert done.status_code == 303
    again = client.post(page.url.path + "/judgment", data={**form, "answer": "right"},
                        follow_redirects=False)  # resent: one judgment
    assert again.status_code == 303
    with sessions() as s:
        (rec,) = reports.export_records(s)
    assert rec.meta["answer"] == "right" and srcs[1] == f"/media/{rec.meta['media'][rec.ranking[0]]}"


def test_the_admin_page_shows_a_clips_campaigns_progress_and_agreement(app_env):
    clients, sessions, _ = app_env
    for name in ("ann", "bob"):
        a = clients[name].get("/api/next").json()["assignment"]
        clients[name].post(f"/api/assignments/{a['assignment_id']}/judgment", json={"abstain": True}
                           if name == "ann" else {"ranking": [0, 1]})
    with sessions() as s:
        link = store.add_rater(s, "root", admin=True)[1]
    browser = TestClient(clients["anon"].app)
    page = browser.get(f"/login/{link}")
    browser.post(f"/login/{link}", data={"csrf_token": hidden(page.text, "csrf_token")})
    admin = browser.get("/admin").text
    assert "clips · 2/item" in admin and "2 / 4 (1 can't tell)" in admin
    assert 'id="quality-panel"' in admin and "<th>Can't tell</th>" in admin
    ann_row = admin.split('id="quality-raters"')[1].split("<td>ann</td>")[1].split("</tr>")[0]
    assert ann_row.rstrip().endswith("<td>1</td>")  # ann's one abstention


def test_feedback_create_kind_clips_puts_the_videos_in_the_media_folder(tmp_path):
    videos = [write_clip(tmp_path / "v" / f"{k}.mp4", k) for k in range(4)]
    samples = tmp_path / "pairs.jsonl"
    samples.write_text("".join(json.dumps({"prompt": TASK, "responses": [f"c{2 * i}", f"c{2 * i + 1}"],
                                           "meta": {"videos": [f"v/{2 * i}.mp4", f"v/{2 * i + 1}.mp4"]}}) + "\n"
                               for i in range(2)))
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"prompt": TASK, "responses": ["g0", "g1"], "ranking": [1, 0],
                                "meta": {"videos": ["v/0.mp4", "v/3.mp4"]}}) + "\n")
    db = tmp_path / "fb.db"
    r = subprocess.run([sys.executable, "-m", "alignloop.cli", "feedback", "create", "--db", str(db), "--samples",
                        str(samples), "--kind", "clips", "--gold", str(gold), "--raters-per-item", "2"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "2 items (clips, 2 raters per item), 1 gold items" in r.stdout
    stored = sorted(p.name for p in (tmp_path / "fb-media").rglob("*.mp4"))
    assert len(stored) == 4 and all(len(n) == 64 + 4 for n in stored)
    _, sessions = store.open_db(db)
    with sessions() as s:
        assert len(s.scalars(select(ItemMedia)).all()) == 6
        rater = store.add_rater(s, "ann")[0]
        a = store.next_assignment(s, rater)
        assert [m.sha256 for m in a.item.media] == a.item.meta["media"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": TASK, "responses": ["a", "b"], "meta": {"videos": ["v/0.mp4"]}}) + "\n")
    r = subprocess.run([sys.executable, "-m", "alignloop.cli", "feedback", "create", "--db", str(db), "--samples",
                        str(bad), "--kind", "clips"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode != 0 and "meta.videos" in r.stderr and "Traceback" not in r.stderr


def test_gold_clip_pairs_calibrate_raters(db_path, tmp_path):
    clips_campaign(db_path, tmp_path, items=1, raters_per_item=1, gold=2, gold_rate=1.0)
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        rater = store.add_rater(s, "ann")[0]
        shown = []
        while (a := store.next_assignment(s, rater)) is not None:
            shown.append(a.item.is_gold)
            store.judge(s, rater.id, a.id, ranking=[list(a.display_order).index(0), list(a.display_order).index(1)])
        records = reports.export_records(s)
    assert shown.count(True) == 2 and shown.count(False) == 1
    gold = [r for r in records if r.meta["is_gold"]]
    assert all(r.meta["gold_ranking"] == [0, 1] and r.ranking == [0, 1] for r in gold)
    assert isinstance(records[0], Comparison)
