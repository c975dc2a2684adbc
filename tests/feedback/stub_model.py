"""A torch-free stand-in for an OpenAI-compatible model server, for the chat tests: a tiny
FastAPI app on loopback (uvicorn in a thread) whose `POST /v1/chat/completions` streams a
deterministic answer word by word as server-sent events (or answers it whole without
`stream`).

    with StubModel("alpha", delay=0.01) as m:      # m.url = http://127.0.0.1:PORT
        ...                                        # answer: "alpha says: <last user message>"

`mode` (settable while running): "ok"; "fail" (HTTP 500); "hang" (sends one word, then nothing
until the client gives up: an upstream time-out); "garbage" (a chunk that is not JSON).
`answer(messages)` may replace the answer; `requests` records every request body.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StubModel:
    def __init__(self, name: str, delay: float = 0.0, mode: str = "ok",
                 answer: Callable[[list[dict]], str] | None = None):
        self.name, self.delay, self.mode = name, delay, mode
        self.answer = answer or (lambda messages: f"{self.name} says: {messages[-1]['content']}")
        self.requests: list[dict] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.hang_release = threading.Event()

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def completions(request: Request):
            body = await request.json()
            self.requests.append(body)
            if self.mode == "fail":
                return JSONResponse({"error": {"message": "stub failure", "type": "server_error"}}, status_code=500)
            words = self.answer(body["messages"]).split(" ")
            words = [w + " " for w in words[:-1]] + words[-1:]
            if not body.get("stream"):
                return {"id": "stub", "object": "chat.completion", "model": self.name,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)},
                                     "finish_reason": "stop"}]}
            return StreamingResponse(self._events(words), media_type="text/event-stream")

        return app

    async def _events(self, words: list[str]):
        def chunk(delta: dict, finish: str | None) -> str:
            return "data: " + json.dumps({"id": "stub", "object": "chat.completion.chunk", "model": self.name,
                                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

        yield chunk({"role": "assistant"}, None)
        if self.mode == "garbage":
            yield "data: {not json\n\n"
            return
        for i, w in enumerate(words):
            yield chunk({"content": w}, None)
            if self.mode == "hang" and i == 0:
                while not self.hang_release.is_set():
                    await asyncio.sleep(0.05)
                return
            if self.delay:
                await asyncio.sleep(self.delay)
        yield chunk({}, "stop")
        yield "data: [DONE]\n\n"

    def __enter__(self) -> StubModel:
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 20
        while not self._server.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"stub model {self.name} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.hang_release.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


def main() -> None:
    """`python -m tests.feedback.stub_model --name NAME --port PORT [--delay S]`: one stub model
    server in the foreground (a stand-in model for trying `alignloop chat` without a model)."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--name", default="stub")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--delay", type=float, default=0.05, help="seconds between words")
    args = p.parse_args()
    stub = StubModel(args.name, delay=args.delay)
    stub.port, stub.url = args.port, f"http://127.0.0.1:{args.port}"
    uvicorn.run(stub.app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
