"""The feedback web app: `create_app(db)` builds it for a SQLite path or a database URL.

Pages for raters and admins (server-rendered Jinja2, autoescaped; plain JS and CSS from
/static; no CDN) live in `pages.py`, the JSON API under /api in `api.py`, with its spec at
/openapi.json and a self-contained reader at /docs. On start the schema is migrated to the
newest Alembic revision.

Run it with `alignloop serve --db feedback.db` (uvicorn), or
`uvicorn --factory alignloop.feedback.app:app_from_env` with ALIGNLOOP_DB set.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alignloop.feedback import store
from alignloop.feedback.auth import AdminRequired, CsrfFailed, LoginRequired, csrf_token

HERE = Path(__file__).parent
MAX_BODY_BYTES = 32 * 1024 * 1024  # an uploaded samples file, with room for multipart framing

SECURITY_HEADERS = [
    # No inline script or style anywhere: markup that slipped into a page could not run.
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),  # login links never leak through a Referer header
]


class GuardMiddleware:
    """Adds the security headers and refuses request bodies over `MAX_BODY_BYTES` (413)."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            response = JSONResponse({"detail": f"request body over {self.max_body // 2**20} MiB"}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise StarletteHTTPException(413, "request body too large")
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
                if scope["path"] != "/static" and not scope["path"].startswith("/static/"):
                    message["headers"].append((b"cache-control", b"no-store"))
            await send(message)

        await self.app(scope, limited_receive, send_with_headers)


def _templates() -> Jinja2Templates:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    env.globals["letter"] = store.letter
    return Jinja2Templates(env=env)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/api"


def _error(request: Request, status: int, message: str, title: str = "Error"):
    if _is_api(request):
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    return request.app.state.templates.TemplateResponse(
        request, "error.html", {"title": title, "message": message, "rater": None, "csrf": csrf_token(request)},
        status_code=status)


def create_app(db: str | Path = "feedback.db", upgrade: bool = True, secure_cookies: bool = False,
               gold_threshold: float = 0.75) -> FastAPI:
    """The web app on database `db` (SQLite path or SQLAlchemy URL), migrated to head first.
    `secure_cookies` marks the session cookie Secure (when served over HTTPS);
    `gold_threshold` is the gold accuracy below which the admin page flags a rater."""
    if not 0.5 < gold_threshold <= 1.0:
        raise ValueError(f"gold_threshold {gold_threshold}: must be in (0.5, 1]")
    engine, sessions = store.open_db(db, upgrade=upgrade)
    with sessions() as s:
        secret = store.session_secret(s)

    app = FastAPI(
        title="alignloop feedback",
        version="1",
        description="Human feedback for RLHF: raters rank model responses. Authenticate with "
                    "`Authorization: Bearer <api token>` (`alignloop feedback add-rater NAME --api-token`).",
        docs_url=None, redoc_url=None,  # FastAPI's pages load from a CDN; /docs is served below
    )
    app.state.engine, app.state.sessions, app.state.templates = engine, sessions, _templates()
    app.state.gold_threshold = gold_threshold

    from alignloop.feedback.api import router as api_router
    from alignloop.feedback.pages import router as page_router

    app.include_router(page_router)
    app.include_router(api_router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs(request: Request):
        return app.state.templates.TemplateResponse(request, "docs.html", {"rater": None})

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"ok": True, "schema": store.schema_revision(engine)}

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

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        return _error(request, err.status_code, str(err.detail))

    # order: the session middleware sits inside the guard, so every response gets the headers
    app.add_middleware(SessionMiddleware, secret_key=secret, session_cookie="alignloop_session",
                       max_age=14 * 24 * 3600, same_site="lax", https_only=secure_cookies)
    app.add_middleware(GuardMiddleware)
    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory alignloop.feedback.app:app_from_env` (database from ALIGNLOOP_DB)."""
    return create_app(os.environ.get("ALIGNLOOP_DB", "feedback.db"))
