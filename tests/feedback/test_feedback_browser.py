"""Headless Chromium (Debian's chromium driven by Playwright): raters log in by link, rank
four responses by clicking, by keyboard and by dragging, submit, and the judgments appear in
`alignloop feedback export`. Screenshots (desktop and a 390 px phone) go to the test's tmp
folder, or to $ALIGNLOOP_SCREENSHOTS when set."""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignloop.data.records import Samples
from alignloop.feedback import store

from .conftest import REPO, SAMPLES

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("ALIGNLOOP_SCREENSHOTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def make_campaign(db_path) -> dict[str, str]:
    engine, sessions = store.open_db(db_path)
    with sessions() as s:
        store.create_campaign(s, "browser", "rank", [Samples(**SAMPLES[0])], raters_per_item=3, gold_rate=0.0,
                              instructions="Best answer first. Tie answers that are equally good.")
        links = {n: store.add_rater(s, n)[1] for n in ("ann", "bob", "carol")}
    engine.dispose()
    return links


def open_item(browser, server, token: str, viewport: dict):
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{server.url}/login/{token}")
    page.click("#continue")
    page.wait_for_selector("#cards .card")
    return context, page, dialogs


def shown_order(page) -> list[int]:
    """Display position -> original index, read from the page."""
    texts = [t for t in page.locator("#cards .card .text").all_inner_texts()]
    return [SAMPLES[0]["responses"].index(t) for t in texts]


def export(db_path, out: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "alignloop.cli", "feedback", "export", "--db", str(db_path), "--out", str(out)],
                   check=True, env=env, capture_output=True)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_raters_rank_in_a_browser_and_the_judgments_are_exported(browser, db_path, server_factory, shots, tmp_path):
    links = make_campaign(db_path)
    server = server_factory(db_path)

    # ann, desktop: clicks the cards best first (B, D, A, C), flags C unsafe, comments, submits
    ctx, page, dialogs = open_item(browser, server, links["ann"], {"width": 1280, "height": 900})
    assert page.locator("#cards .card").count() == 4
    assert "<script>alert('xss')</script>" in page.content().replace("&lt;", "<").replace("&gt;", ">").replace("&#39;", "'")
    assert "<script>alert('xss')</script>" in "".join(page.locator("#cards .card .text").all_inner_texts())
    ann_order = shown_order(page)
    for letter in "BDAC":
        page.click(f"#card-{letter} .text")
    assert [page.locator(f"#card-{x} select").input_value() for x in "ABCD"] == ["3", "1", "4", "2"]
    page.check("#card-C input[name=unsafe]")
    page.fill("textarea[name=comment]", "C is evasive")
    page.screenshot(path=str(shots / "rate-desktop.png"), full_page=True)
    page.click("#submit")
    page.wait_for_url("**/?saved=1")
    assert "All done" in page.content()
    assert dialogs == []  # the <script> in a response never ran
    ctx.close()

    # bob, phone-sized: keyboard only: 3, then T (tie) and 1, then 2, then 4; Enter submits
    ctx, page, dialogs = open_item(browser, server, links["bob"], {"width": 390, "height": 844})
    bob_order = shown_order(page)
    page.screenshot(path=str(shots / "rate-phone.png"), full_page=True)
    for key in ("3", "t", "1", "2", "4"):
        page.keyboard.press(key)
    assert [page.locator(f"#card-{x} select").input_value() for x in "ABCD"] == ["1", "2", "1", "3"]
    assert page.locator(".card.tied").count() == 2
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width} px)"
    page.screenshot(path=str(shots / "rate-phone-ranked.png"), full_page=True)
    page.keyboard.press("Enter")
    page.wait_for_url("**/?saved=1")
    assert dialogs == []
    ctx.close()

    records = {r["rater"]: r for r in export(db_path, tmp_path / "comparisons.jsonl")}
    assert set(records) == {"ann", "bob"}
    ann, bob = records["ann"], records["bob"]
    assert ann["source"] == "human" and ann["responses"] == SAMPLES[0]["responses"]
    # ann clicked positions B, D, A, C = 1, 3, 0, 2
    assert ann["ranking"] == [ann_order[1], ann_order[3], ann_order[0], ann_order[2]]
    assert ann["meta"]["display_order"] == ann_order and ann["meta"]["unsafe"] == [ann_order[2]]
    assert ann["meta"]["comment"] == "C is evasive" and ann["meta"]["time_spent_s"] > 0
    # bob: C first, A tied with it, then B, then D
    assert bob["ranking"] == [sorted([bob_order[0], bob_order[2]]), bob_order[1], bob_order[3]]


def test_drag_and_drop_orders_the_responses(browser, db_path, server_factory, shots, tmp_path):
    links = make_campaign(db_path)
    server = server_factory(db_path)
    ctx, page, _ = open_item(browser, server, links["carol"], {"width": 700, "height": 1000})
    order = shown_order(page)
    # drag D to the top, then drop B below C: the list becomes D, A, C, B
    for source, target, below in (("D", "A", False), ("B", "C", True)):
        handle = page.locator(f"#card-{source} .handle").bounding_box()
        box = page.locator(f"#card-{target}").bounding_box()
        page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
        page.mouse.down()
        y = box["y"] + box["height"] * (0.8 if below else 0.2)
        page.mouse.move(box["x"] + box["width"] / 2, y, steps=8)
        page.mouse.up()
    letters = [html.unescape(t) for t in page.locator("#cards .card .letter").all_inner_texts()]
    assert letters == ["D", "A", "C", "B"]
    assert [page.locator(f"#card-{x} select").input_value() for x in "DACB"] == ["1", "2", "3", "4"]
    page.screenshot(path=str(shots / "rate-dragged.png"), full_page=True)
    page.click("#submit")
    page.wait_for_url("**/?saved=1")
    ctx.close()
    (rec,) = export(db_path, tmp_path / "c.jsonl")
    assert rec["rater"] == "carol" and rec["ranking"] == [order[3], order[0], order[2], order[1]]


PLAYING = """() => ['clip-left', 'clip-right'].map(id => document.getElementById(id))
    .every(v => v && v.readyState === 4 && !v.paused && v.currentTime > 0.25)"""


def clip_page(browser, server, token: str, viewport: dict):
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.goto(f"{server.url}/login/{token}")
    page.click("#continue")
    page.wait_for_selector("#clip-left")
    return context, page


def test_a_rater_compares_two_clips_that_play_and_answers_by_keyboard(browser, db_path, server_factory, shots, tmp_path):
    from .clips import clips_campaign

    made = clips_campaign(db_path, tmp_path, items=2, raters_per_item=2)
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        links = {n: store.add_rater(s, n)[1] for n in ("ann", "bob")}
    server = server_factory(db_path)

    ctx, page = clip_page(browser, server, links["ann"], {"width": 1280, "height": 900})
    first = page.url
    # both videos load (readyState 4) and play, together
    page.wait_for_function(PLAYING, timeout=30_000)
    times = page.evaluate("() => ['clip-left', 'clip-right'].map(id => document.getElementById(id).currentTime)")
    page.wait_for_timeout(400)
    later = page.evaluate("() => ['clip-left', 'clip-right'].map(id => document.getElementById(id).currentTime)")
    assert later != times, "currentTime does not advance"
    assert abs(later[0] - later[1]) < 0.3, f"the clips are out of step: {later}"
    assert page.evaluate("() => document.getElementById('clip-left').muted && document.getElementById('clip-right').muted")
    shown = [page.get_attribute(f"#clip-{side}", "src") for side in ("left", "right")]
    others = [f"/media/{d}" for d in made["digests"] if f"/media/{d}" not in shown]
    # the browser's own session: the other item's clips are refused, this item's are served (and seekable)
    assert all(ctx.request.get(server.url + url).status == 404 for url in others)
    part = ctx.request.get(server.url + shown[0], headers={"Range": "bytes=0-99"})
    assert part.status == 206 and part.headers["content-type"] == "video/mp4" and len(part.body()) == 100
    page.screenshot(path=str(shots / "clips-desktop.png"))
    # the replay button starts both from the beginning
    page.click("#replay")
    assert page.evaluate("() => document.getElementById('clip-left').currentTime") < 0.3
    # ArrowLeft pressed twice before the page leaves: one answer is sent, one judgment stored
    page.evaluate("() => { for (let i = 0; i < 2; i++) document.dispatchEvent("
                  "new KeyboardEvent('keydown', {key: 'ArrowLeft', bubbles: true})); }")
    page.wait_for_url(lambda url: url != first and "/assignments/" in url and "saved=1" in url)
    assert "Saved." in page.content()
    # the next item comes, and plays
    page.wait_for_function(PLAYING, timeout=30_000)
    page.keyboard.press("4")  # can't tell
    page.wait_for_url("**/?saved=1")
    assert "All done" in page.content()
    ctx.close()

    # bob, phone-sized: the two clips still side by side, nothing scrolls sideways
    ctx, page = clip_page(browser, server, links["bob"], {"width": 390, "height": 844})
    page.wait_for_function(PLAYING, timeout=30_000)
    left, right = page.locator("#clip-left").bounding_box(), page.locator("#clip-right").bounding_box()
    assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 2
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(shots / "clips-phone.png"), full_page=True)
    page.keyboard.press("ArrowRight")
    page.wait_for_url("**/assignments/**saved=1")
    ctx.close()

    records = export(db_path, tmp_path / "clips.jsonl")
    ann = [r for r in records if r["rater"] == "ann"]
    assert len(ann) == 2 and len({r["meta"]["item_id"] for r in ann}) == 2  # one judgment per item
    left_answer, cant_tell = ann
    assert left_answer["meta"]["answer"] == "left" and left_answer["ranking"] == left_answer["meta"]["display_order"]
    assert f"/media/{left_answer['meta']['media'][left_answer['ranking'][0]]}" == shown[0]  # the clip shown left won
    assert cant_tell["meta"]["answer"] == "cant_tell" and cant_tell["meta"]["abstained"] and cant_tell["weight"] == 0
    bob = [r for r in records if r["rater"] == "bob"]
    assert len(bob) == 1 and bob[0]["meta"]["answer"] == "right"


def test_a_new_rater_passes_a_practice_round_in_a_browser(browser, db_path, server_factory, shots, tmp_path):
    """A campaign with `practice: {items: 2, pass: 1.0, on_fail: retry}`: dan gives his region,
    answers a practice item wrongly (sees the known answer and its explanation), starts a new
    round, answers both right and then gets the live item; practice answers are not exported."""
    from alignloop.data.records import Comparison

    right = [f"Paris is the capital of France ({k})." for k in range(3)]
    gold = [Comparison(id=f"g{k}", prompt=f"Capital of France? ({k})", responses=[right[k], f"Lyon ({k})."],
                       ranking=[0, 1], explanation=f"Paris has been the capital for centuries ({k}).")
            for k in range(3)]
    engine, sessions = store.open_db(db_path)
    with sessions() as s:
        store.create_campaign(s, "practice", "compare", [Samples(prompt="Which is kinder?", responses=["Thanks!", "No."])],
                              raters_per_item=1, gold=gold, gold_rate=0.0,
                              options={"ask": ["region"], "practice": {"items": 2, "pass": 1.0, "on_fail": "retry"}})
        token = store.add_rater(s, "dan")[1]
    engine.dispose()
    server = server_factory(db_path)
    ctx = browser.new_context(viewport={"width": 1000, "height": 900})
    page = ctx.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{server.url}/login/{token}")
    page.click("#continue")
    page.wait_for_selector("#profile")
    page.fill("input[name=attr_region]", "eu")
    page.click("#save-profile")

    def answer(correctly: bool) -> None:
        page.wait_for_selector("#practice-notice")
        texts = page.locator("#cards .card .text").all_inner_texts()
        good = next(p for p, t in enumerate(texts) if t.startswith("Paris"))
        pick = good if correctly else 1 - good
        page.keyboard.press(str(pick + 1))  # the rating page's keys work on practice items too
        page.keyboard.press(str(2 - pick))
        page.click("#submit")
        page.wait_for_selector("#practice-feedback")

    answer(correctly=False)
    assert "your score 0%" in page.inner_text("h1")
    assert page.locator("#known-answer li").first.inner_text().startswith("A Paris") or \
        page.locator("#known-answer li").first.inner_text().startswith("B Paris")
    assert "capital for centuries" in page.inner_text("#explanation")
    page.screenshot(path=str(shots / "practice-feedback.png"), full_page=True)
    page.click("#practice-next")
    answer(correctly=True)
    assert page.locator("#practice-retry").count() == 1  # 1 of 2 right: below the pass mark, a new round
    page.click("#practice-next")
    answer(correctly=True)
    page.click("#practice-next")
    answer(correctly=True)
    assert page.locator("#practice-passed").count() == 1
    page.click("#practice-next")
    page.wait_for_selector("#judgment[action^='/assignments/']")
    assert "Which is kinder?" in page.content()
    page.keyboard.press("1")
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    page.wait_for_url("**/?saved=1")
    assert dialogs == []
    ctx.close()
    records = export(db_path, tmp_path / "c.jsonl")
    assert [(r["rater"], r["prompt"]) for r in records] == [("dan", "Which is kinder?")]
    assert records[0]["meta"]["rater_attributes"] == {"region": "eu"}
    with store.open_db(db_path)[1]() as s:
        assert [a["score"] for a in store.practice_curves(s, 1, 1.0)[0]["answers"]] == [0.0, 1.0, 1.0, 1.0]
