"""Shared pieces of the chat tests: an app with chat models, signing in, reading a stream."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient

from alignloop.feedback import store
from alignloop.feedback.app import create_app
from alignloop.feedback.chat_client import Endpoint, completions_url
from alignloop.feedback.chat_web import ChatSettings

from .conftest import hidden
from .stub_model import StubModel, free_port


def chat_app(db_path, models, **settings):
    """The feedback app with the chat routes, talking to `models` (StubModels or Endpoints)."""
    endpoints = [m if isinstance(m, Endpoint) else Endpoint(m.name, completions_url(m.url)) for m in models]
    settings.setdefault("n_boot", 20)
    return create_app(db_path, chat=ChatSettings(endpoints=endpoints, **settings))


def add_rater(sessions, name: str, admin: bool = False) -> str:
    with sessions() as s:
        return store.add_rater(s, name, admin=admin)[1]


def login(app, token: str) -> tuple[TestClient, str]:
    """A signed-in client and its CSRF token."""
    client = TestClient(app)
    page = client.get(f"/login/{token}")
    r = client.post(f"/login/{token}", data={"csrf_token": hidden(page.text, "csrf_token")}, follow_redirects=False)
    assert r.status_code == 303
    chat = client.get("/chat")
    assert chat.status_code == 200, chat.text
    return client, re.search(r'data-csrf="([^"]+)"', chat.text).group(1)


def events(response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def answer_text(evs: list[dict], side: int = 0) -> str:
    return "".join(e["text"] for e in evs if e["event"] == "delta" and e["side"] == side)


def answer_event(evs: list[dict], side: int = 0) -> dict | None:
    return next((e for e in evs if e["event"] in ("answer", "error") and e["side"] == side), None)


class Chatter:
    """One signed-in rater talking to the JSON API of the chat."""

    def __init__(self, client: TestClient, csrf: str):
        self.client, self.csrf = client, csrf
        self.headers = {"x-csrf-token": csrf}

    def new(self, mode: str = "chat", model: str | None = None) -> dict:
        r = self.client.post("/api/chat/conversations", json={"mode": mode, **({"model": model} if model else {})},
                             headers=self.headers)
        assert r.status_code == 201, r.text
        return r.json()

    def send(self, conversation: int, content: str, turn: int):
        return self.client.post(f"/api/chat/conversations/{conversation}/messages",
                                json={"content": content, "turn": turn}, headers=self.headers)

    def regenerate(self, conversation: int):
        return self.client.post(f"/api/chat/conversations/{conversation}/regenerate", headers=self.headers)

    def thumb(self, message_id: int, up: bool, reason: str = "", key: str | None = None):
        return self.client.post(f"/api/chat/messages/{message_id}/thumb", json={"up": up, "reason": reason},
                                headers={**self.headers, **({"idempotency-key": key} if key else {})})

    def vote(self, battle_id: int, outcome: str, flagged: bool = False, key: str | None = None):
        return self.client.post(f"/api/chat/battles/{battle_id}/vote", json={"outcome": outcome, "flagged": flagged},
                                headers={**self.headers, **({"idempotency-key": key} if key else {})})


@pytest.fixture
def models():
    """Two stub model servers, alpha and beta, streaming a word every 2 ms."""
    with StubModel("alpha", delay=0.002) as a, StubModel("beta", delay=0.002) as b:
        yield a, b


@pytest.fixture
def site(db_path, sessions, models):
    """make(**settings) -> (app, rater(name, admin=False) -> a signed-in Chatter)."""
    def make(**settings):
        app = chat_app(db_path, models, **settings)
        return app, lambda name, admin=False: Chatter(*login(app, add_rater(sessions, name, admin)))
    return make


class AppServer:
    """A FastAPI app served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the chat server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
