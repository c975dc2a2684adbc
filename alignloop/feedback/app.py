"""The feedback web app: `create_app(db)` builds it for a SQLite path or a database URL.

Pages for raters and admins (server-rendered Jinja2, autoescaped; plain JS and CSS from
/static; no CDN) live in `pages.py`, the JSON API under /api in `api.py`, with its spec at
/openapi.json and a self-contained reader at /docs. On start the schema is migrated to the
newest Alembic revision.

Every response, errors included, carries the security headers. A request that cannot get
the database's write lock in time (another process writing, a long write) answers 503 with
Retry-After: nothing was stored, the client may send it again (with the same
Idempotency-Key). Any other unexpected error is a 500, logged with its traceback.

Run it with `alignloop serve --db feedback.db` (uvicorn), or
`uvicorn --factory alignloop.feedback.app:app_from_env` with ALIGNLOOP_DB set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alignloop.feedback import store
from alignloop.feedback.auth import AdminRequired, CsrfFailed, LoginRequired, check_base_url, csrf_token
from alignloop.feedback.db import is_busy
from alignloop.feedback.limits import BUSY_TIMEOUT_S, DEFAULT_BASE_URL, RETRY_AFTER_S
from alignloop.feedback.secret import session_key

if TYPE_CHECKING:
    from alignloop.feedback.chat_web import ChatSettings

HERE = Path(__file__).parent
MAX_BODY_BYTES = 32 * 1024 * 1024  # an uploaded samples file, with room for multipart framing
DEFAULT_SESSION_HOURS = 14 * 24
log = logging.getLogger(__name__)

SECURITY_HEADERS = [
    # No inline script or style anywhere: markup that slipped into a page could not run.
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),  # login links never leak through a Referer header
]


def _is_api_path(path: str) -> bool:
    return path.startswith("/api/") or path == "/api"


def _headers_for(path: str, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The security headers, and `no-store` unless the response is a static file or says how
    it may be cached itself (a clip video: private, immutable)."""
    if path == "/static" or path.startswith("/static/") or any(k.lower() == b"cache-control" for k, _ in headers):
        return SECURITY_HEADERS
    return [*SECURITY_HEADERS, (b"cache-control", b"no-store")]


def _failure(path: str, err: Exception) -> Response:
    """The answer to an exception nothing else handled: 503 (retry) when the database was busy,
    else 500."""
    if is_busy(err):
        message, status = "The database is busy; nothing was stored. Try again in a moment.", 503
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    else:
        message, status, headers = "Internal error; it was logged.", 500, {}
    if _is_api_path(path):
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    return HTMLResponse(f"<!doctype html><title>Error {status}</title><p>{message}</p><p><a href=\"/\">Back</a></p>",
                        status_code=status, headers=headers)


class GuardMiddleware:
    """The outermost layer: adds the security headers to every response, refuses request bodies
    over `MAX_BODY_BYTES` (413), and answers an unhandled exception itself (503 when the
    database was busy, else 500), so that those answers carry the headers too."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, started = scope["path"], False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                message["headers"] = [*headers, *_headers_for(path, headers)]
            await send(message)

        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            response = JSONResponse({"detail": f"request body over {self.max_body // 2**20} MiB"}, status_code=413)
            return await response(scope, receive, send_with_headers)
        try:
            await self.app(scope, self._limited(receive), send_with_headers)
        except Exception as err:
            if started:
                raise
            if not is_busy(err):
                log.exception("%s %s", scope["method"], path)
            await _failure(path, err)(scope, receive, send_with_headers)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise StarletteHTTPException(413, "request body too large")
            return message

        return limited_receive


def _templates() -> Jinja2Templates:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    env.globals["letter"] = store.letter
    return Jinja2Templates(env=env)


def _error(request: Request, status: int, message: str, title: str = "Error",
           headers: dict[str, str] | None = None) -> Response:
    if _is_api_path(request.url.path):
        headers = {**(headers or {}), **({"WWW-Authenticate": "Bearer"} if status == 401 else {})}
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    return request.app.state.templates.TemplateResponse(
        request, "error.html", {"title": title, "message": message, "rater": None, "csrf": csrf_token(request)},
        status_code=status, headers=headers)


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, scope: Scope) -> str:
    """The methods some route (not a mount: /static gives its own Allow) takes at this path."""
    routes = [r for r in app.router.routes if not isinstance(r, Mount)]
    return ", ".join(m for m in HTTP_METHODS
                     if any(r.matches({**scope, "method": m})[0] is Match.FULL for r in routes))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(store.FeedbackError)
    async def feedback_error(request: Request, err: store.FeedbackError):
        return _error(request, err.status, err.message)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _err: LoginRequired):
        return _error(request, 401, "Sign in first: open the personal login link you were given "
                                    "(an admin can issue a new one).", "Sign in")

    @app.exception_handler(AdminRequired)
    async def admin_required(request: Request, _err: AdminRequired):
        return _error(request, 403, "This page is for admins.", "Admins only")

    @app.exception_handler(CsrfFailed)
    async def csrf_failed(request: Request, _err: CsrfFailed):
        return _error(request, 403, "The form's security token is missing or out of date. "
                                    "Reload the page and try again.", "Form expired")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        if _is_api_path(request.url.path):
            return await request_validation_exception_handler(request, err)
        fields = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or e['loc'][0]}: {e['msg']}" for e in err.errors())
        return _error(request, 422, fields, "Invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        headers = dict(err.headers or {})
        if err.status_code == 405:
            headers["Allow"] = allowed_methods(request.app, request.scope) or headers.get("Allow", "")
        return _error(request, err.status_code, str(err.detail), headers=headers)


def create_app(db: str | Path = "feedback.db", upgrade: bool = True, secure_cookies: bool = False,
               gold_threshold: float = 0.75, base_url: str | None = None,
               default_base_url: str = DEFAULT_BASE_URL, session_hours: float = DEFAULT_SESSION_HOURS,
               secret_key_file: Path | None = None, busy_timeout: float = BUSY_TIMEOUT_S,
               media: Path | None = None, chat: ChatSettings | None = None) -> FastAPI:
    """The web app on database `db` (SQLite path or SQLAlchemy URL), migrated to head first.

    `secure_cookies` marks the session cookie Secure (when served over HTTPS); `gold_threshold`
    is the gold accuracy below which the admin page flags a rater. Login links shown to admins
    start with `base_url`, else the address the first admin was added with, else
    `default_base_url`. A session lasts `session_hours` from sign-in. The cookies are signed
    with `secret.session_key(secret_key_file)`. A request waits up to `busy_timeout` seconds
    for the database's write lock, then answers 503. Clip videos are served from `media`,
    else the folder beside a SQLite database (media.py). `chat` adds the chat page, the arena
    and the leaderboard (`alignloop chat`, chat_web.py)."""
    if not 0.5 < gold_threshold <= 1.0:
        raise ValueError(f"gold_threshold {gold_threshold}: must be in (0.5, 1]")
    if not 0 < session_hours <= 24 * 366:
        raise ValueError(f"session_hours {session_hours}: must be in (0, {24 * 366}]")
    key = session_key(secret_key_file)
    engine, sessions = store.open_db(db, upgrade=upgrade, busy_timeout=busy_timeout)

    app = FastAPI(
        title="alignloop feedback",
        version="1",
        description="Human feedback for RLHF: raters rank model responses. Authenticate with "
                    "`Authorization: Bearer <api token>` (`alignloop feedback add-rater NAME --api-token`).",
        docs_url=None, redoc_url=None,  # FastAPI's pages load from a CDN; /docs is served below
        redirect_slashes=False,  # a slash redirect would be built from the Host header
    )
    state = app.state
    state.engine, state.sessions, state.templates = engine, sessions, _templates()
    state.gold_threshold = gold_threshold
    state.base_url = check_base_url(base_url) if base_url else None
    state.default_base_url = check_base_url(default_base_url)
    state.session_lifetime_s = int(session_hours * 3600)
    state.media_dir = store.media_dir(db, media)

    from alignloop.feedback.api import router as api_router
    from alignloop.feedback.pages import router as page_router
    from alignloop.feedback.panel_pages import router as panel_router

    if chat is not None:  # before the rater pages: its `/` leads to the chat page
        from alignloop.feedback.chat_web import install_chat

        install_chat(app, chat)
    app.include_router(page_router)
    app.include_router(panel_router)
    app.include_router(api_router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs(request: Request):
        return app.state.templates.TemplateResponse(request, "docs.html", {"rater": None})

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"ok": True, "schema": store.schema_revision(engine)}

    _install_error_handlers(app)
    # order: the session middleware sits inside the guard, so every response gets the headers
    app.add_middleware(SessionMiddleware, secret_key=key, session_cookie="alignloop_session",
                       max_age=state.session_lifetime_s, same_site="lax", https_only=secure_cookies)
    app.add_middleware(GuardMiddleware)
    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory alignloop.feedback.app:app_from_env` (database from ALIGNLOOP_DB)."""
    return create_app(os.environ.get("ALIGNLOOP_DB", "feedback.db"))
