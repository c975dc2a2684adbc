"""Headless Chromium (Debian's chromium driven by Playwright) on a real `alignloop chat` server
with two stub model servers: a rater signs in by link, sends a message and sees the answer
stream in (a model answer with <script> in it shown as text, never run), thumbs it, votes in the
arena (the names appear after the vote), and the leaderboard shows the battle. Screenshots of
the three pages go to the test's tmp folder, or to $ALIGNLOOP_SCREENSHOTS when set (the
README's docs/chat-*.png)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import func, select

from alignloop.feedback.chat_db import ArenaVote, ChatThumb

from .chat_helpers import AppServer, add_rater, chat_app
from .stub_model import StubModel
from .test_feedback_browser import browser  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

ANSWERS = {
    "alpha": "Photosynthesis is how plants make food: leaves catch sunlight, take in water and carbon dioxide, "
             "and turn them into sugar, giving off oxygen. <script>window.__xss = 1</script> Plain text only.",
    "beta": "Plants use light to turn water and air into sugar. That is photosynthesis.",
}


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("ALIGNLOOP_SCREENSHOTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_chat_thumb_arena_vote_and_leaderboard_in_chromium(browser, db_path, sessions, shots):  # noqa: F811
    with StubModel("alpha", delay=0.04, answer=lambda m: ANSWERS["alpha"]) as a, \
            StubModel("beta", delay=0.04, answer=lambda m: ANSWERS["beta"]) as b:
        app = chat_app(db_path, [a, b], seed=0)
        token = add_rater(sessions, "ann")
        with AppServer(app) as server:
            context = browser.new_context(viewport={"width": 1100, "height": 900})
            page = context.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"{server.url}/login/{token}")
            page.click("#continue")
            page.wait_for_url(f"{server.url}/chat")

            # 1) chat: the answer appears piece by piece, then whole; <script> is text
            page.select_option("#model", "alpha")
            page.fill("#input", "Explain photosynthesis to a child, please.")
            page.keyboard.press("Enter")
            page.wait_for_function("() => { const t = document.querySelector('.answer.streaming .text');"
                                   " return t && t.textContent.length > 0; }")
            partial = page.inner_text(".answer .text")
            page.wait_for_selector(".answer.done")
            whole = page.inner_text(".answer .text")
            assert 0 < len(partial) < len(whole) and whole == ANSWERS["alpha"]
            assert "<script>" in whole and page.evaluate("window.__xss") is None
            assert page.locator(".answer .text script").count() == 0
            page.fill(".answer-tools .reason", "clear and simple")
            page.click(".thumb.up")
            page.wait_for_selector("text=Thumb up stored.")
            page.screenshot(path=str(shots / "chat-chat.png"), full_page=True)

            # 2) arena: two anonymous answers side by side, a vote, then the names
            page.click("text=Arena")
            page.wait_for_url(f"{server.url}/arena")
            page.fill("#input", "Explain photosynthesis to a child, please.")
            page.click("#send")
            page.wait_for_function("() => document.querySelectorAll('.answer.done').length === 2")
            labels = page.locator(".answer .label").all_inner_texts()
            assert [x.strip().upper() for x in labels] == ["MODEL A", "MODEL B"]  # no names yet
            assert page.is_disabled("#send")  # vote first
            page.click("button.vote[data-outcome='a']")
            page.wait_for_selector(".vote-stored")
            revealed = page.locator(".answer .label").all_inner_texts()
            assert sorted(x.split(": ")[1] for x in revealed) == ["alpha", "beta"]
            assert not page.is_disabled("#send")
            page.screenshot(path=str(shots / "chat-arena.png"), full_page=True)
            winner = revealed[0].split(": ")[1]

            # 3) the leaderboard counts the battle and the thumb
            page.click("text=Leaderboard")
            page.wait_for_selector("#ratings")
            assert page.inner_text(f"tr[data-model='{winner}'] .battles") == "1"
            assert page.locator("#ratings tbody tr").first.get_attribute("data-model") == winner
            assert "100% (1/1)" in page.inner_text("tr[data-model='alpha'] .thumbs")
            page.screenshot(path=str(shots / "chat-leaderboard.png"), full_page=True)
            assert dialogs == []
            context.close()
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(ChatThumb)) == 1
        assert s.scalar(select(func.count()).select_from(ArenaVote)) == 1
