"""20 people chatting at once with a real `alignloop chat` server (uvicorn on loopback, in a
thread) and two stub model servers: every chatter gets every answer whole, and every thumb and
vote, each sent twice at once, is stored exactly once. Correctness only: nothing is timed
(the run is bounded so that a hang fails instead of waiting for ever)."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
from sqlalchemy import func, select

from alignloop.feedback.chat_db import ArenaVote, ChatMessage, ChatThumb

from .chat_helpers import AppServer, add_rater, chat_app
from .conftest import hidden
from .stub_model import StubModel

CHATTERS = 20
pytestmark = pytest.mark.timeout(300)


async def chatter(url: str, token: str, n: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        page = await c.get(f"/login/{token}")
        await c.post(f"/login/{token}", data={"csrf_token": hidden(page.text, "csrf_token")})
        csrf = re.search(r'data-csrf="([^"]+)"', (await c.get("/chat")).text).group(1)
        h = {"x-csrf-token": csrf}

        async def turn(conv: int, text: str, t: int) -> list[dict]:
            async with c.stream("POST", f"/api/chat/conversations/{conv}/messages", json={"content": text, "turn": t},
                                headers=h) as r:
                assert r.status_code == 200, await r.aread()
                return [json.loads(line) async for line in r.aiter_lines() if line.strip()]

        out = {"answers": [], "thumbs": [], "votes": []}
        conv = (await c.post("/api/chat/conversations", json={"mode": "chat"}, headers=h)).json()
        for t in range(2):
            text = f"chatter {n} message {t}"
            evs = await turn(conv["id"], text, t)
            answer = next(e for e in evs if e["event"] in ("answer", "error"))
            assert answer["event"] == "answer", answer
            got = "".join(e["text"] for e in evs if e["event"] == "delta")
            out["answers"].append((conv["model"], text, got, answer["message_id"]))
            # the thumb twice at once, with one key (a double click): stored once
            key = {"idempotency-key": f"thumb-{n}-{t}"}
            codes = await asyncio.gather(*(c.post(f"/api/chat/messages/{answer['message_id']}/thumb",
                                                  json={"up": t == 0, "reason": f"r{n}"}, headers={**h, **key})
                                           for _ in range(2)))
            out["thumbs"].append(sorted(r.status_code for r in codes))
        arena = (await c.post("/api/chat/conversations", json={"mode": "arena"}, headers=h)).json()
        evs = await turn(arena["id"], f"chatter {n} arena", 0)
        assert [e["event"] for e in evs if e["event"] in ("answer", "error")] == ["answer", "answer"], evs
        battle = evs[0]["battle"]
        key = {"idempotency-key": f"vote-{n}"}
        codes = await asyncio.gather(*(c.post(f"/api/chat/battles/{battle}/vote", json={"outcome": "ab"[n % 2]},
                                              headers={**h, **key}) for _ in range(2)))
        out["votes"].append(sorted(r.status_code for r in codes))
        return out


def test_twenty_chatters_at_once_get_whole_answers_and_votes_stored_once(db_path, sessions):
    with StubModel("alpha", delay=0.005) as a, StubModel("beta", delay=0.005) as b:
        app = chat_app(db_path, [a, b], seed=0)
        tokens = [add_rater(sessions, f"chatter{n}") for n in range(CHATTERS)]
        with AppServer(app) as server:
            async def everyone():
                return await asyncio.wait_for(asyncio.gather(*(chatter(server.url, tok, n) for n, tok in enumerate(tokens))),
                                              timeout=240)

            results = asyncio.run(everyone())
    for n, r in enumerate(results):
        for model, text, got, _ in r["answers"]:
            assert got == f"{model} says: {text}"  # whole, in order
        assert r["thumbs"] == [[200, 201]] * 2 and r["votes"] == [[200, 201]]
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(ChatThumb)) == 2 * CHATTERS
        assert s.scalar(select(func.count()).select_from(ArenaVote)) == CHATTERS
        stored = {m.id: m.content for m in s.scalars(select(ChatMessage).where(ChatMessage.role == "assistant"))}
    assert len(stored) == 4 * CHATTERS  # 2 chat answers and 2 arena answers each
    for r in results:
        for _, _, got, mid in r["answers"]:
            assert stored[mid] == got
