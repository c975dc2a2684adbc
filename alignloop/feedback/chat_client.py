"""The chat page's client of model servers: OpenAI-compatible `POST /v1/chat/completions` with
`stream: true` (server-sent events), over httpx. Any such server works: `alignloop
serve-model`, vLLM, SGLang, llama.cpp's server.

    data: {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}], ...}
    data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], ...}
    data: [DONE]

`stream_chat` hands the answer's text pieces to a callback as they arrive and returns the
whole `Generation` (text, finish reason, seconds);
whatever goes wrong becomes one `UpstreamError` whose message a person can read (the server is
down, answered an error, sent something that is not the wire format, or did not finish within
the time-out). Nothing here touches the database.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,99}")
CONNECT_TIMEOUT_S = 5.0
MAX_ERROR_BYTES = 2000


class UpstreamError(Exception):
    """A model server did not give an answer. `kind`: unreachable | timeout | http | protocol."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


@dataclass(frozen=True)
class Endpoint:
    """One model: its name (also the `model` field of each request, as vLLM's
    --served-model-name) and the chat-completions URL of its server."""

    name: str
    url: str


def completions_url(base: str) -> str:
    """`http://host:8001`, `.../v1` or `.../v1/chat/completions` -> the chat-completions URL."""
    base = base.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


def parse_models(spec: str) -> list[Endpoint]:
    """`NAME=URL,NAME2=URL2` -> endpoints, or ValueError naming the bad entry."""
    out: list[Endpoint] = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        name, sep, url = entry.partition("=")
        name, url = name.strip(), url.strip()
        if not sep or not NAME.fullmatch(name):
            raise ValueError(f"--models entry {entry!r}: give NAME=URL (a name of letters, digits and ._:/@+-)")
        parts = httpx.URL(url) if url else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.host:
            raise ValueError(f"--models entry {entry!r}: the URL must be http(s)://HOST[:PORT][/v1]")
        if any(e.name == name for e in out):
            raise ValueError(f"--models: the name {name!r} is given twice")
        out.append(Endpoint(name, completions_url(url)))
    if not out:
        raise ValueError("--models: give at least one NAME=URL")
    return out


@dataclass
class Generation:
    """What one streamed answer produced (filled in as it goes)."""

    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    seconds: float = 0.0

    @property
    def content(self) -> str:
        return "".join(self.text)


def _delta(line: str) -> tuple[str | None, str | None, bool]:
    """One SSE line -> (text piece, finish reason, done). Raises UpstreamError on a bad chunk."""
    if not line.startswith("data:"):
        return None, None, False  # comments (": ping"), event names, blank separators
    payload = line[5:].strip()
    if payload == "[DONE]":
        return None, None, True
    try:
        chunk = json.loads(payload)
        if "error" in chunk and "choices" not in chunk:
            raise UpstreamError("http", f"the model server reported an error: {str(chunk['error'])[:300]}")
        choice = chunk["choices"][0] if chunk["choices"] else {}
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if text is not None and not isinstance(text, str):
            raise TypeError("content")
        return text, choice.get("finish_reason"), False
    except UpstreamError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise UpstreamError("protocol", "the model server sent a chunk that is not OpenAI's streaming format") from None


async def stream_chat(endpoint: Endpoint, messages: list[dict[str, str]], sampling: dict[str, Any],
                      emit: Callable[[str], None], timeout_s: float, max_chars: int) -> Generation:
    """Stream `endpoint`'s answer to `messages`, calling `emit(piece)` for each piece of text.
    The whole answer must arrive within `timeout_s` seconds; an answer over `max_chars` is cut
    there (finish reason "length"). Raises UpstreamError."""
    gen = Generation()
    body = {"model": endpoint.name, "messages": messages, "stream": True, **sampling}
    start = time.monotonic()
    timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
    try:
        with anyio.fail_after(timeout_s):
            async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
                async with client.stream("POST", endpoint.url, json=body,
                                         headers={"accept": "text/event-stream"}) as response:
                    if response.status_code != 200:
                        detail = (await response.aread())[:MAX_ERROR_BYTES].decode("utf-8", "replace")
                        raise UpstreamError("http", f"the model server answered HTTP {response.status_code}"
                                                    + (f": {detail[:300]}" if detail.strip() else ""))
                    n = 0
                    async for line in response.aiter_lines():
                        text, finish, done = _delta(line)
                        if finish is not None:
                            gen.finish_reason = str(finish)[:32]
                        if text:
                            text = text[:max_chars - n]
                            n += len(text)
                            gen.text.append(text)
                            emit(text)
                            if n >= max_chars:
                                gen.finish_reason = "length"
                                break
                        if done:
                            break
                    else:
                        if gen.finish_reason is None:
                            raise UpstreamError("protocol", "the model server closed the stream before the answer ended")
    except TimeoutError:
        raise UpstreamError("timeout", f"no complete answer within {timeout_s:g} s (time-out)") from None
    except httpx.TimeoutException:
        raise UpstreamError("timeout", f"no complete answer within {timeout_s:g} s (time-out)") from None
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as err:
        raise UpstreamError("unreachable", f"the model server is not reachable ({type(err).__name__}: {err})") from None
    except httpx.HTTPError as err:
        raise UpstreamError("unreachable", f"the model server failed ({type(err).__name__}: {err})") from None
    gen.seconds = time.monotonic() - start
    return gen
