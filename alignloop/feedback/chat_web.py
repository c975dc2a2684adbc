"""The chat page, the arena and the leaderboard of `alignloop chat`: routes added to the feedback
app (`create_app(..., chat=ChatSettings(...))`), behind the same accounts, login links,
sessions and CSRF tokens as the rater pages.

    GET  /chat, /arena, /leaderboard                        pages (signed-in raters)
    GET  /api/chat/models                                   the model names (chat mode lets you pick one)
    POST /api/chat/conversations                            {"mode": "chat" | "arena", "model": NAME?}
    GET  /api/chat/conversations/{id}                       its turns (arena: names only of voted battles)
    POST /api/chat/conversations/{id}/messages              {"content", "turn"} -> the answer(s), streamed
    POST /api/chat/conversations/{id}/regenerate            the last turn again (chat) / its missing side (arena)
    POST /api/chat/messages/{id}/thumb                      {"up": bool, "reason"}           (Idempotency-Key)
    POST /api/chat/battles/{id}/vote                        {"outcome", "flagged", "reason"} (Idempotency-Key)
    POST /api/chat/battles/{id}/flag                        {"reason"}
    GET  /api/chat/leaderboard[?include_flagged=true]       what `alignloop quality arena` prints

A streamed answer is NDJSON, one event per line, as the model server sends its tokens:
`{"event": "turn", ...}` (the turn, its battle, the user message's id), `{"event": "delta",
"side": 0, "text": "..."}` pieces, per side `{"event": "answer", "side", "message_id",
"finish_reason", "seconds"}` once it is stored or `{"event": "error", "side", "kind",
"message"}` (the model server is down, answered an error or did not finish within the
time-out: nothing is stored and the turn can be regenerated), and last `{"event": "end"}`.
The app relays the model server's stream (chat_client.py) without holding a database
connection meanwhile; each answer is stored once it is complete.

Limits: a rater sends at most `messages_per_minute` messages (regenerations included) and one
at a time (429 with Retry-After), a message has at most `max_message_chars` characters and a
conversation `max_turns` turns (422). Both are counted in this process (the app runs as one).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from alignloop.feedback import chat_store, store
from alignloop.feedback.auth import DB, AdminRequired, api_rater, csrf_token, optional_rater, page_rater
from alignloop.feedback.chat_client import Endpoint, UpstreamError, stream_chat
from alignloop.feedback.chat_store import SIDE_NAMES, Job
from alignloop.feedback.errors import FeedbackError
from alignloop.feedback.limits import MAX_COMMENT, MAX_KEY, MAX_RESPONSE_CHARS
from alignloop.feedback.raters import Caller
from alignloop.feedback.web import IdPath

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatSettings:
    """What `alignloop chat` serves (its --help says each; feedback/chat_cli.py)."""

    endpoints: list[Endpoint]
    timeout_s: float = 120.0
    max_message_chars: int = 4000
    max_turns: int = 20
    messages_per_minute: int = 10
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    system: str = ""
    leaderboard_for: Literal["raters", "admins"] = "raters"
    n_boot: int = 100
    seed: int | None = None  # of the arena's draws (None: unpredictable)
    max_answer_chars: int = MAX_RESPONSE_CHARS
    names: list[str] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "names", [e.name for e in self.endpoints])

    def endpoint(self, name: str) -> Endpoint:
        return next(e for e in self.endpoints if e.name == name)

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


class TooMany(FeedbackError):
    status = 429


class Limiter:
    """Per rater: at most `per_minute` generations in any 60 s, and one at a time (a slot held
    past `hold_s` is given back: a response whose stream never started)."""

    def __init__(self, per_minute: int, hold_s: float):
        self.per_minute, self.hold_s = per_minute, hold_s
        self._recent: dict[int, deque[float]] = {}
        self._busy: dict[int, float] = {}
        self._lock = threading.Lock()

    def take(self, rater_id: int) -> None:
        now = time.monotonic()
        with self._lock:
            if self._busy.get(rater_id, 0.0) > now:
                raise TooMany("Wait for the answer in progress to finish.")
            recent = self._recent.setdefault(rater_id, deque())
            while recent and recent[0] <= now - 60:
                recent.popleft()
            if len(recent) >= self.per_minute:
                wait = int(recent[0] + 60 - now) + 1
                raise TooMany(f"At most {self.per_minute} messages a minute: try again in {wait} s.")
            recent.append(now)
            self._busy[rater_id] = now + self.hold_s

    def release(self, rater_id: int, refund: bool = False) -> None:
        """The answer is over; `refund`: the message was refused, so it does not count."""
        with self._lock:
            self._busy.pop(rater_id, None)
            if refund and self._recent.get(rater_id):
                self._recent[rater_id].pop()


# --- request bodies (exact JSON types; unknown fields refused) --------------------------------

class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewConversation(_Body):
    mode: Literal["chat", "arena"] = Field("chat", description="chat: one model; arena: two anonymous models per turn.")
    model: StrictStr | None = Field(None, description="Chat mode: the model's name (default: one drawn at random).")


class NewMessage(_Body):
    content: StrictStr = Field(..., description="The user's message.")
    turn: StrictInt = Field(..., ge=0, description="Its number in the conversation (0 first): a resent message is refused.")


class ThumbBody(_Body):
    up: StrictBool = Field(..., description="true: thumb up; false: thumb down.")
    reason: StrictStr = Field("", max_length=MAX_COMMENT, description="Why (optional).")


class VoteBody(_Body):
    outcome: Literal["a", "b", "tie", "both_bad"] = Field(..., description="a: left (Model A) better; b: right better.")
    flagged: StrictBool = Field(False, description="A model revealed its identity: left out of the leaderboard.")
    reason: StrictStr = Field("", max_length=MAX_COMMENT, description="Why it was flagged (optional).")


class FlagBody(_Body):
    reason: StrictStr = Field("", max_length=MAX_COMMENT, description="Why (optional).")


router = APIRouter()
pages = APIRouter(include_in_schema=False)


def settings_of(request: Request) -> ChatSettings:
    return request.app.state.chat


def _render(request: Request, name: str, ctx: dict[str, Any]) -> HTMLResponse:
    ctx = {"csrf": csrf_token(request), **ctx}
    return request.app.state.templates.TemplateResponse(request, name, ctx)


# --- pages -----------------------------------------------------------------------------------

@pages.get("/", response_class=HTMLResponse)
def home(request: Request, rater: Caller | None = Depends(optional_rater)):
    if rater is None:
        return _render(request, "welcome.html", {"rater": None})
    return RedirectResponse("/chat", status_code=303)


@pages.get("/chat", response_class=HTMLResponse)
def chat_page(request: Request, rater: Caller = Depends(page_rater)):
    cfg = settings_of(request)
    return _render(request, "chat.html", {"rater": rater, "models": cfg.names, "limits": _limits(cfg)})


@pages.get("/arena", response_class=HTMLResponse)
def arena_page(request: Request, rater: Caller = Depends(page_rater)):
    cfg = settings_of(request)
    return _render(request, "arena.html", {"rater": rater, "enough": len(cfg.names) >= 2, "limits": _limits(cfg)})


@pages.get("/leaderboard", response_class=HTMLResponse)
def leaderboard_page(request: Request, include_flagged: bool = False, rater: Caller = Depends(page_rater),
                     s: Session = DB):
    board = _leaderboard(request, s, rater, include_flagged)
    return _render(request, "leaderboard.html", {"rater": rater, "board": board, "include_flagged": include_flagged,
                                                 "names": [m.name for m in board.models]})


def _limits(cfg: ChatSettings) -> dict[str, Any]:
    return {"max_chars": cfg.max_message_chars, "max_turns": cfg.max_turns, "per_minute": cfg.messages_per_minute}


def _leaderboard(request: Request, s: Session, rater: Caller, include_flagged: bool):
    from alignloop.feedback.chat_export import arena_inputs
    from alignloop.quality.arena import leaderboard

    cfg = settings_of(request)
    if cfg.leaderboard_for == "admins" and not rater.is_admin:
        raise AdminRequired()
    battles, thumbs = arena_inputs(s, include_flagged)
    return leaderboard(battles, thumbs, n_boot=cfg.n_boot, seed=0)


# --- API -------------------------------------------------------------------------------------

@router.get("/api/chat/models")
def models(request: Request, _rater: Caller = Depends(api_rater)):
    cfg = settings_of(request)
    return {"models": cfg.names, "arena": len(cfg.names) >= 2, **_limits(cfg)}


@router.post("/api/chat/conversations", status_code=201)
def new_conversation(request: Request, body: NewConversation, rater: Caller = Depends(api_rater), s: Session = DB):
    cfg = settings_of(request)
    model = None
    if body.mode == "chat":
        if body.model is not None and body.model not in cfg.names:
            raise store.Invalid(f"model: {body.model!r} is not served here ({', '.join(cfg.names)})")
        model = body.model or request.app.state.chat_rng.choice(cfg.names)
    elif len(cfg.names) < 2:
        raise store.Invalid("The arena needs at least two models; this server has one.")
    conv = chat_store.create_conversation(s, rater.id, body.mode, model)
    return {"id": conv.id, "mode": conv.mode, "model": conv.model}


@router.get("/api/chat/conversations/{conversation_id}")
def conversation(conversation_id: IdPath, rater: Caller = Depends(api_rater), s: Session = DB):
    conv = chat_store.get_conversation(s, rater.id, conversation_id)
    turns = chat_store.turns_of(s, [conv.id])[conv.id]
    thumbs = chat_store.thumbs_of(s, [m.id for t in turns for ms in t.answers.values() for m in ms])
    out = []
    for t in turns:
        answers = []
        for side in sorted(t.answers):
            m = t.answer(side)
            th = thumbs.get(m.id)
            answers.append({"side": side, "message_id": m.id, "content": m.content, "attempt": m.attempt,
                            "finish_reason": m.finish_reason,
                            "model": m.model if conv.mode == "chat" or t.vote is not None else None,
                            "thumb": None if th is None else {"up": th.up, "reason": th.reason}})
        battle = None
        if t.battle is not None:
            battle = {"id": t.battle.id, "vote": None if t.vote is None else
                      {"outcome": t.vote.outcome, "flagged": t.vote.flagged,
                       "models": [t.battle.model_a, t.battle.model_b]}}
        out.append({"turn": t.turn, "user": t.user.content, "answers": answers, "battle": battle})
    return {"id": conv.id, "mode": conv.mode, "model": conv.model, "turns": out}


@router.post("/api/chat/conversations/{conversation_id}/messages")
async def send(request: Request, conversation_id: IdPath, body: NewMessage, rater: Caller = Depends(api_rater),
               s: Session = DB):
    cfg = settings_of(request)
    content = body.content.strip()
    if not content:
        raise store.Invalid("content: the message is empty")
    if len(content) > cfg.max_message_chars:
        raise store.Invalid(f"content: {len(content)} characters; at most {cfg.max_message_chars} per message")
    conv = await run_in_threadpool(chat_store.get_conversation, s, rater.id, conversation_id)
    if conv.mode == "chat":
        _check_served(cfg, [conv.model])
    pair = chat_store.draw_pair(cfg.names, request.app.state.chat_rng) if conv.mode == "arena" else None
    limiter: Limiter = request.app.state.chat_limiter
    limiter.take(rater.id)
    try:
        jobs, battle, user_id = await run_in_threadpool(chat_store.start_turn, s, rater.id, conv.id, content,
                                                        body.turn, cfg.max_turns, pair)
    except BaseException:
        limiter.release(rater.id, refund=True)
        raise
    head = {"event": "turn", "conversation": conv.id, "turn": body.turn, "user_message": user_id,
            "battle": None if battle is None else battle.id,
            "sides": [{"side": j.side, "label": _label(conv.mode, j)} for j in jobs]}
    return _stream(request, rater.id, conv.mode, jobs, head)


@router.post("/api/chat/conversations/{conversation_id}/regenerate")
async def regenerate(request: Request, conversation_id: IdPath, rater: Caller = Depends(api_rater), s: Session = DB):
    limiter: Limiter = request.app.state.chat_limiter
    conv = await run_in_threadpool(chat_store.get_conversation, s, rater.id, conversation_id)
    jobs = await run_in_threadpool(chat_store.regenerate, s, rater.id, conv.id)
    _check_served(settings_of(request), [j.model for j in jobs])
    limiter.take(rater.id)
    head = {"event": "turn", "conversation": conv.id, "turn": jobs[0].turn, "user_message": None, "regenerate": True,
            "sides": [{"side": j.side, "label": _label(conv.mode, j)} for j in jobs]}
    return _stream(request, rater.id, conv.mode, jobs, head)


@router.post("/api/chat/messages/{message_id}/thumb")
def thumb(message_id: IdPath, body: ThumbBody, idempotency_key: str | None = Header(None, max_length=MAX_KEY),
          rater: Caller = Depends(api_rater), s: Session = DB):
    view, created = chat_store.thumb(s, rater.id, message_id, body.up, body.reason, idempotency_key)
    return JSONResponse({"id": view.id, "message_id": view.message_id, "up": view.up, "reason": view.reason},
                        status_code=201 if created else 200)


@router.post("/api/chat/battles/{battle_id}/vote")
def vote(battle_id: IdPath, body: VoteBody, idempotency_key: str | None = Header(None, max_length=MAX_KEY),
         rater: Caller = Depends(api_rater), s: Session = DB):
    view, created = chat_store.vote(s, rater.id, battle_id, body.outcome, body.flagged, body.reason, idempotency_key)
    return JSONResponse(_vote_json(view), status_code=201 if created else 200)


@router.post("/api/chat/battles/{battle_id}/flag")
def flag(battle_id: IdPath, body: FlagBody, rater: Caller = Depends(api_rater), s: Session = DB):
    return _vote_json(chat_store.flag(s, rater.id, battle_id, body.reason))


@router.get("/api/chat/leaderboard")
def leaderboard_json(request: Request, include_flagged: bool = False, rater: Caller = Depends(api_rater),
                     s: Session = DB):
    return _leaderboard(request, s, rater, include_flagged).to_json()


def _check_served(cfg: ChatSettings, names: list[str]) -> None:
    """A conversation begun with a model this server no longer serves (restarted with other --models)."""
    gone = [n for n in names if n not in cfg.names]
    if gone:
        raise store.Conflict(f"{gone[0]} is not served here any more; start a new conversation.")


def _vote_json(v: chat_store.VoteView) -> dict[str, Any]:
    return {"id": v.id, "battle_id": v.battle_id, "outcome": v.outcome, "flagged": v.flagged,
            "models": list(v.models)}


def _label(mode: str, job: Job) -> str:
    """How an answer is named on the page: the model in chat mode, Model A / B in the arena."""
    return job.model if mode == "chat" else SIDE_NAMES[job.side]


# --- relaying the model servers' streams -----------------------------------------------------

def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8")


def _stream(request: Request, rater_id: int, mode: str, jobs: list[Job], head: dict[str, Any]) -> StreamingResponse:
    app = request.app
    return StreamingResponse(_relay(app, rater_id, mode, jobs, head), media_type="application/x-ndjson",
                             headers={"x-accel-buffering": "no"})


def _in_session(app: FastAPI, fn: Callable, *args: Any) -> Any:
    with app.state.sessions() as s:
        return fn(s, *args)


async def _answer(app: FastAPI, mode: str, job: Job, put: Callable[[dict[str, Any] | None], None]) -> None:
    """Generate one job's answer, relaying its pieces to `put`, then store it (or report why not)."""
    cfg: ChatSettings = app.state.chat
    label = _label(mode, job)
    messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + job.messages
    sampling = cfg.sampling()
    try:
        gen = await stream_chat(cfg.endpoint(job.model), messages, sampling,
                                lambda text: put({"event": "delta", "side": job.side, "text": text}),
                                cfg.timeout_s, cfg.max_answer_chars)
        message_id = await run_in_threadpool(_in_session, app, chat_store.save_answer, job, gen.content, sampling,
                                             gen.finish_reason, gen.seconds)
        put({"event": "answer", "side": job.side, "message_id": message_id, "finish_reason": gen.finish_reason,
             "seconds": round(gen.seconds, 3)})
    except UpstreamError as err:
        log.warning("chat: model %s (%s): %s", job.model, cfg.endpoint(job.model).url, err.message)
        put({"event": "error", "side": job.side, "kind": err.kind,
             "message": f"{label}: {err.message}. Nothing was stored; press Regenerate to try again."})
    except FeedbackError as err:
        put({"event": "error", "side": job.side, "kind": "store", "message": f"{label}: {err.message}"})
    except Exception:
        log.exception("chat: answering with %s", job.model)
        put({"event": "error", "side": job.side, "kind": "internal",
             "message": f"{label}: internal error; it was logged. Nothing was stored."})
    finally:
        put(None)


async def _relay(app: FastAPI, rater_id: int, mode: str, jobs: list[Job], head: dict[str, Any]) -> AsyncIterator[bytes]:
    """The NDJSON events of one turn: every side's answer generated at once, pieces interleaved
    as they come. A client that goes away cancels the generation (nothing is stored)."""
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    tasks: list[asyncio.Task] = []
    try:
        yield _line(head)
        tasks = [asyncio.create_task(_answer(app, mode, job, queue.put_nowait)) for job in jobs]
        running = len(tasks)
        while running:
            event = await queue.get()
            if event is None:
                running -= 1
            else:
                yield _line(event)
        yield _line({"event": "end"})
    finally:
        for t in tasks:
            t.cancel()
        app.state.chat_limiter.release(rater_id)


def install_chat(app: FastAPI, cfg: ChatSettings) -> None:
    """Add the chat page, the arena and the leaderboard to the feedback app `app`: `/` leads a
    signed-in rater to /chat. Call before the rater pages are included (their `/` comes later)."""
    app.state.chat = cfg
    app.state.chat_rng = random.Random(cfg.seed) if cfg.seed is not None else random.SystemRandom()
    app.state.chat_limiter = Limiter(cfg.messages_per_minute, hold_s=cfg.timeout_s * 2 + 30)
    app.state.templates.env.globals["chat_nav"] = True
    app.include_router(pages)
    app.include_router(router)
