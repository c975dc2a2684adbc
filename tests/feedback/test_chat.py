"""The chat page and the arena against stub model servers (tests/feedback/stub_model.py): answers
streamed and stored, thumbs and arena votes stored exactly once under retries and races, sign-in
and CSRF, limits, upstream failures shown as errors, and the leaderboard."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from alignloop.feedback import store
from alignloop.feedback.chat_client import Endpoint, parse_models
from alignloop.feedback.chat_db import ArenaVote, ChatMessage, ChatThumb

from .chat_helpers import Chatter, add_rater, answer_event, answer_text, chat_app, events, login, models, site  # noqa: F401

STATIC = Path(__file__).resolve().parents[2] / "alignloop" / "feedback" / "static"


def count(sessions, table) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(table))


def test_a_chat_answer_streams_word_by_word_and_the_conversation_goes_on(site, sessions, models):
    app, rater = site()
    ann = rater("ann")
    conv = ann.new("chat", "alpha")
    assert conv["model"] == "alpha"
    evs = events(ann.send(conv["id"], "Hello there, model", 0))
    assert [e["event"] for e in evs][0] == "turn" and evs[-1] == {"event": "end"}
    deltas = [e["text"] for e in evs if e["event"] == "delta"]
    assert len(deltas) == len("alpha says: Hello there, model".split(" "))  # one piece per word, as sent
    assert "".join(deltas) == "alpha says: Hello there, model"
    first = answer_event(evs)
    assert first["event"] == "answer" and first["finish_reason"] == "stop"
    evs = events(ann.send(conv["id"], "And again", 1))
    assert answer_text(evs) == "alpha says: And again"
    # the second request carried the conversation so far, and the sampling settings
    body = models[0].requests[-1]
    assert body["stream"] is True and body["model"] == "alpha" and body["temperature"] == 0.7
    assert body["messages"] == [{"role": "user", "content": "Hello there, model"},
                                {"role": "assistant", "content": "alpha says: Hello there, model"},
                                {"role": "user", "content": "And again"}]
    with sessions() as s:
        stored = s.scalars(select(ChatMessage).order_by(ChatMessage.id)).all()
    assert [(m.role, m.turn, m.model) for m in stored] == [("user", 0, None), ("assistant", 0, "alpha"),
                                                         ("user", 1, None), ("assistant", 1, "alpha")]
    assert stored[1].sampling == {"temperature": 0.7, "top_p": 0.95, "max_tokens": 512}
    assert stored[1].id == first["message_id"] and stored[1].generation_s >= 0
    # a resent message (same turn) is refused, not stored twice
    assert ann.send(conv["id"], "And again", 1).status_code == 409
    assert count(sessions, ChatMessage) == 4


def test_regenerate_adds_an_attempt_that_the_conversation_goes_on_from(site, models):
    app, rater = site()
    ann = rater("ann")
    conv = ann.new("chat", "beta")
    first = answer_event(events(ann.send(conv["id"], "Hi", 0)))
    models[1].answer = lambda messages: "a second try"
    again = answer_event(events(ann.regenerate(conv["id"])))
    assert again["message_id"] != first["message_id"]
    answer_text(events(ann.send(conv["id"], "More", 1)))
    assert models[1].requests[-1]["messages"][1] == {"role": "assistant", "content": "a second try"}
    turns = ann.client.get(f"/api/chat/conversations/{conv['id']}").json()["turns"]
    assert turns[0]["answers"][0]["attempt"] == 1 and turns[0]["answers"][0]["content"] == "a second try"


def test_a_thumb_is_stored_once_under_retries_and_races(site, sessions):
    app, rater = site()
    ann, bob = rater("ann"), rater("bob")
    conv = ann.new("chat", "alpha")
    mid = answer_event(events(ann.send(conv["id"], "Rate me", 0)))["message_id"]
    r = ann.thumb(mid, False, "too short", key="k-1")
    assert r.status_code == 201 and r.json()["up"] is False
    assert ann.thumb(mid, False, "too short", key="k-1").status_code == 200  # a retry: the stored thumb
    assert ann.thumb(mid, False, "too short").status_code == 200  # the same thumb without a key
    assert ann.thumb(mid, True).status_code == 409  # a different thumb on a thumbed answer
    assert bob.thumb(mid, True).status_code == 404  # not bob's answer
    # eight identical submissions at once (a double click, a retried request): one row
    mid2 = answer_event(events(ann.send(conv["id"], "And me", 1)))["message_id"]
    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(lambda _: ann.thumb(mid2, True, key="k-2").status_code, range(8)))
    assert codes == [200] * 7 + [201]
    assert count(sessions, ChatThumb) == 2
    assert ann.thumb(mid, True, key="k-2").status_code == 409  # a key used for another answer


def test_an_arena_vote_is_stored_once_reveals_the_names_and_the_chat_goes_on_from_the_winner(site, sessions, models):
    app, rater = site(seed=3)
    ann = rater("ann")
    conv = ann.new("arena")
    evs = events(ann.send(conv["id"], "Which of you?", 0))
    head = evs[0]
    assert [s["label"] for s in head["sides"]] == ["Model A", "Model B"]  # anonymous
    left, right = answer_text(evs, 0), answer_text(evs, 1)
    assert {left.split(" ")[0], right.split(" ")[0]} == {"alpha", "beta"}
    shown = ann.client.get(f"/api/chat/conversations/{conv['id']}").json()
    assert [a["model"] for a in shown["turns"][0]["answers"]] == [None, None]  # no names before the vote
    assert ann.send(conv["id"], "Too early", 1).status_code == 409  # vote first
    battle = head["battle"]
    with ThreadPoolExecutor(6) as pool:
        codes = sorted(pool.map(lambda _: ann.vote(battle, "b", key="v-1").status_code, range(6)))
    assert codes == [200] * 5 + [201]
    r = ann.vote(battle, "b", key="v-1")
    assert r.json()["models"] == [left.split(" ")[0], right.split(" ")[0]]
    assert ann.vote(battle, "a").status_code == 409
    assert count(sessions, ArenaVote) == 1
    evs = events(ann.send(conv["id"], "Go on", 1))
    assert evs[0]["battle"] != battle
    assert answer_event(evs, 0)["event"] == answer_event(evs, 1)["event"] == "answer"
    for m in models:  # both new answers saw the right-hand answer, the one voted better
        assert m.requests[-1]["messages"][1] == {"role": "assistant", "content": right}
    shown = ann.client.get(f"/api/chat/conversations/{conv['id']}").json()
    assert shown["turns"][0]["battle"]["vote"]["outcome"] == "b"
    # flag after the reveal; flagging twice is flagging
    for _ in range(2):
        r = ann.client.post(f"/api/chat/battles/{battle}/flag", json={"reason": "said its name"}, headers=ann.headers)
        assert r.status_code == 200 and r.json()["flagged"] is True


def test_sign_in_and_csrf_are_required(site, sessions):
    app, rater = site()
    from fastapi.testclient import TestClient

    anon = TestClient(app)
    assert anon.get("/chat").status_code == 401
    assert anon.get("/arena").status_code == 401
    assert anon.get("/leaderboard").status_code == 401
    assert anon.post("/api/chat/conversations", json={"mode": "chat"}).status_code == 401
    assert anon.get("/", follow_redirects=False).status_code == 200  # the welcome page
    ann = rater("ann")
    assert ann.client.get("/", follow_redirects=False).headers["location"] == "/chat"
    # the cookie alone is not enough for a POST: the CSRF token must come with it
    assert ann.client.post("/api/chat/conversations", json={"mode": "chat"}).status_code == 403
    assert ann.client.post("/api/chat/conversations", json={"mode": "chat"},
                           headers={"x-csrf-token": "forged"}).status_code == 403
    conv = ann.new("chat", "alpha")
    r = ann.client.post(f"/api/chat/conversations/{conv['id']}/messages", json={"content": "x", "turn": 0})
    assert r.status_code == 403 and count(sessions, ChatMessage) == 0
    # another rater cannot read, continue or regenerate it
    bob = rater("bob")
    assert bob.client.get(f"/api/chat/conversations/{conv['id']}").status_code == 404
    assert bob.send(conv["id"], "hijack", 0).status_code == 404
    assert bob.regenerate(conv["id"]).status_code == 404
    # an API token works without a CSRF token (no cookie)
    with sessions() as s:
        _, _, token = store.add_rater(s, "bot", api_token=True)
    r = anon.post("/api/chat/conversations", json={"mode": "chat", "model": "beta"},
                  headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 201
    # unknown fields and wrong types are refused
    assert ann.client.post("/api/chat/conversations", json={"mode": "chat", "x": 1}, headers=ann.headers).status_code == 422
    assert ann.client.post("/api/chat/conversations", json={"mode": "chat", "model": "nope"},
                           headers=ann.headers).status_code == 422


def test_model_text_is_never_parsed_as_html():
    """The pages never carry model text (the script adds it); the script sets it as text only."""
    js = (STATIC / "chat.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "outerHTML" not in js
    assert "document.write" not in js


def test_limits_per_minute_message_length_and_conversation_length(site, sessions):
    app, rater = site(messages_per_minute=3, max_message_chars=20, max_turns=2)
    ann = rater("ann")
    conv = ann.new("chat", "alpha")
    r = ann.send(conv["id"], "x" * 21, 0)
    assert r.status_code == 422 and "at most 20" in r.json()["detail"]
    assert ann.send(conv["id"], "   ", 0).status_code == 422
    answer_text(events(ann.send(conv["id"], "one", 0)))
    answer_text(events(ann.send(conv["id"], "two", 1)))
    r = ann.send(conv["id"], "three", 2)
    assert r.status_code == 422 and "2 turns" in r.json()["detail"]
    conv2 = ann.new("chat", "alpha")
    answer_text(events(ann.send(conv2["id"], "three", 0)))  # the third message this minute
    r = ann.send(conv2["id"], "four", 1)
    assert r.status_code == 429 and "3 messages a minute" in r.json()["detail"]
    assert ann.regenerate(conv2["id"]).status_code == 429  # regenerations count too
    bob = rater("bob")  # limits are per rater
    assert answer_text(events(bob.send(bob.new("chat", "alpha")["id"], "hi", 0))) == "alpha says: hi"


def test_an_upstream_time_out_a_failure_and_a_down_server_are_shown_not_hung(site, sessions, models):
    app, rater = site(timeout_s=0.6)
    ann = rater("ann")
    conv = ann.new("chat", "alpha")
    models[0].mode = "hang"
    evs = events(ann.send(conv["id"], "Are you there?", 0))
    err = answer_event(evs)
    assert err["event"] == "error" and err["kind"] == "timeout" and "time-out" in err["message"]
    assert "alpha" in err["message"] and evs[-1] == {"event": "end"}
    assert count(sessions, ChatMessage) == 1  # the user's message; no half answer
    assert ann.send(conv["id"], "Hello?", 1).status_code == 409  # regenerate first
    models[0].mode = "fail"
    err = answer_event(events(ann.regenerate(conv["id"])))
    assert err["kind"] == "http" and "HTTP 500" in err["message"]
    models[0].mode = "garbage"
    assert answer_event(events(ann.regenerate(conv["id"])))["kind"] == "protocol"
    models[0].mode = "ok"
    assert answer_event(events(ann.regenerate(conv["id"])))["event"] == "answer"
    assert count(sessions, ChatMessage) == 2


def test_a_down_model_server_in_the_arena_names_only_its_side(db_path, sessions, models):
    from tests.feedback.stub_model import free_port

    down = Endpoint("gamma", f"http://127.0.0.1:{free_port()}/v1/chat/completions")  # nothing listens there
    app = chat_app(db_path, [models[0], down], seed=0)
    ann = Chatter(*login(app, add_rater(sessions, "ann")))
    conv = ann.new("arena")
    evs = events(ann.send(conv["id"], "Hi both", 0))
    kinds = {answer_event(evs, side)["event"] for side in (0, 1)}
    assert kinds == {"answer", "error"}
    bad = next(answer_event(evs, side) for side in (0, 1) if answer_event(evs, side)["event"] == "error")
    assert bad["kind"] == "unreachable" and bad["message"].startswith(("Model A:", "Model B:"))
    assert "gamma" not in bad["message"]  # the arena stays anonymous
    assert ann.vote(evs[0]["battle"], "a").status_code == 409  # both answers first


def test_the_arena_needs_two_models(db_path, sessions, models):
    app = chat_app(db_path, models[:1])
    ann = Chatter(*login(app, add_rater(sessions, "ann")))
    r = ann.client.post("/api/chat/conversations", json={"mode": "arena"}, headers=ann.headers)
    assert r.status_code == 422 and "two models" in r.json()["detail"]
    assert "needs at least two models" in ann.client.get("/arena").text


def test_models_option_is_checked():
    assert parse_models("a=http://h:1, b=http://h:2/v1") == [Endpoint("a", "http://h:1/v1/chat/completions"),
                                                             Endpoint("b", "http://h:2/v1/chat/completions")]
    for bad, why in (("a", "NAME=URL"), ("a=ftp://x", "http"), ("a=http://h,a=http://g", "twice"), ("", "at least")):
        with pytest.raises(ValueError, match=why):
            parse_models(bad)


def test_the_leaderboard_page_and_json(site, sessions):
    app, rater = site(seed=1)
    ann = rater("ann")
    assert "No votes yet" in ann.client.get("/leaderboard").text
    for i, outcome in enumerate(("a", "b", "a", "tie")):
        conv = ann.new("arena")
        evs = events(ann.send(conv["id"], f"q{i}", 0))
        assert ann.vote(evs[0]["battle"], outcome, flagged=i == 3).status_code == 201
    chat = ann.new("chat", "alpha")
    ann.thumb(answer_event(events(ann.send(chat["id"], "hi", 0)))["message_id"], True)
    board = ann.client.get("/api/chat/leaderboard").json()
    assert board["n_battles"] == 3 and sum(m["battles"] for m in board["models"]) == 6
    assert ann.client.get("/api/chat/leaderboard?include_flagged=true").json()["n_battles"] == 4
    alpha = next(m for m in board["models"] if m["name"] == "alpha")
    assert (alpha["thumbs_up"], alpha["thumbs_total"]) == (1, 1)
    page = ann.client.get("/leaderboard").text
    assert 'data-model="alpha"' in page and 'data-model="beta"' in page and "Win rate" in page
    assert "3 arena votes" in page
    app2, rater2 = site(leaderboard_for="admins")
    bob = rater2("bob")
    assert bob.client.get("/leaderboard").status_code == 403
    assert rater2("boss", admin=True).client.get("/leaderboard").status_code == 200


def test_a_conversation_with_a_model_no_longer_served_says_so(db_path, sessions, models):
    ann = Chatter(*login(chat_app(db_path, models), add_rater(sessions, "ann")))
    conv = ann.new("chat", "beta")
    answer_text(events(ann.send(conv["id"], "hi", 0)))
    again = Chatter(*login(chat_app(db_path, models[:1]), add_rater(sessions, "ann")))  # restarted without beta
    r = again.send(conv["id"], "still there?", 1)
    assert r.status_code == 409 and "beta is not served here any more" in r.json()["detail"]
    assert again.regenerate(conv["id"]).status_code == 409
    assert count(sessions, ChatMessage) == 2
