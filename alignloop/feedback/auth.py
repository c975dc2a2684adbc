"""Who is asking: login links, session cookies, API tokens and CSRF tokens.

- A rater logs in with a one-time link `/login/{token}` printed by `alignloop feedback
  add-rater`. The database holds only the sha256 of the token; the GET shows a "Continue"
  button and the POST uses the token up (link previewers that fetch URLs do not burn it) and
  starts a session. Login links name the app's configured address (`serve --base-url`, else
  the one the first admin was added with), never the request's Host header.
- The session is a cookie signed by Starlette's SessionMiddleware (itsdangerous) with a key
  kept outside the database (`secret.py`). It carries the rater id, the rater's session
  version, the sign-in time and a CSRF token. It is refused when the version is not the
  rater's current one (logout, a fresh login link and "sign out everywhere" raise it) or when
  it is older than the session lifetime (`serve --session-hours`, counted from sign-in).
- Every form POST carries that CSRF token in a hidden field `csrf_token`; API calls that
  authenticate by cookie send it as `X-CSRF-Token`. API calls with `Authorization: Bearer
  <api token>` carry no cookie and need no CSRF token.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from alignloop.feedback import store
from alignloop.feedback.db import Rater
from alignloop.feedback.limits import MAX_DB_REQUESTS, is_db_id
from alignloop.feedback.raters import Caller

MAX_FORM_FIELDS = 200
CLOCK_SKEW_S = 60  # a sign-in time this far in the future is still accepted (several servers)


class LoginRequired(Exception):
    """No valid session or API token (401)."""


class AdminRequired(Exception):
    """Signed in, but not an admin (403)."""


class CsrfFailed(Exception):
    """A POST without the session's CSRF token (403)."""


async def db_session(request: Request) -> AsyncIterator[Session]:
    """The request's Session. Creating it does no I/O; it connects at its first query."""
    s = request.app.state.sessions()
    try:
        yield s
    finally:
        s.close()


# The one way a request gets its Session (`s: Session = DB`). It is closed as soon as the
# endpoint returns, and at most MAX_DB_REQUESTS requests hold one at a time (the others wait
# without a thread or a connection). A Session holds at most one pooled connection, and the
# pool has more than MAX_DB_REQUESTS, so a request never waits for a connection while holding
# a worker thread: a crowd of requests cannot tie up every thread and every connection with
# none of them able to finish.
DB = Depends(db_session, scope="function", max_concurrency=MAX_DB_REQUESTS)


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use (anonymous visitors get one too)."""
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def check_csrf(request: Request, submitted: str | None) -> None:
    expected = request.session.get("csrf")
    if not expected or not submitted or not hmac.compare_digest(str(expected), str(submitted)):
        raise CsrfFailed()


def start_session(request: Request, rater: Rater | Caller) -> None:
    """A fresh session for `rater` (new CSRF token: nothing from before the login carries over)."""
    request.session.clear()
    request.session.update(rater_id=rater.id, sv=rater.session_version, iat=int(time.time()),
                           csrf=secrets.token_urlsafe(32))


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _session_is_current(request: Request) -> bool:
    """The cookie's fields are well formed and its sign-in is within the session lifetime."""
    data = request.session
    issued = data.get("iat")
    if not is_db_id(data.get("rater_id")) or type(data.get("sv")) is not int or type(issued) is not int:
        return False
    return -CLOCK_SKEW_S <= time.time() - issued <= request.app.state.session_lifetime_s


def _session_rater(request: Request, s: Session) -> Caller | None:
    """The signed-in rater, or None (and the session is emptied) when the cookie is missing,
    malformed, expired or revoked."""
    if "rater_id" not in request.session:
        return None
    rater = store.caller(s, request.session["rater_id"]) if _session_is_current(request) else None
    if rater is None or rater.session_version != request.session["sv"]:
        request.session.clear()
        return None
    return rater


def optional_rater(request: Request, s: Session = DB) -> Caller | None:
    return _session_rater(request, s)


def page_rater(request: Request, s: Session = DB) -> Caller:
    rater = _session_rater(request, s)
    if rater is None:
        raise LoginRequired()
    return rater


def page_admin(rater: Caller = Depends(page_rater)) -> Caller:
    if not rater.is_admin:
        raise AdminRequired()
    return rater


def api_rater(request: Request, s: Session = DB) -> Caller:
    """Bearer API token, or the session cookie (then POSTs need the X-CSRF-Token header)."""
    token = bearer_token(request)
    if token is not None:
        rater = store.caller_for_api_token(s, token)
        if rater is None:
            raise LoginRequired()
        return rater
    rater = _session_rater(request, s)
    if rater is None:
        raise LoginRequired()
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        check_csrf(request, request.headers.get("x-csrf-token"))
    return rater


def api_admin(rater: Caller = Depends(api_rater)) -> Caller:
    if not rater.is_admin:
        raise AdminRequired()
    return rater


async def csrf_form(request: Request) -> FormData:
    """The posted form, after checking its CSRF token."""
    form = await request.form(max_files=2, max_fields=MAX_FORM_FIELDS)
    token = form.get("csrf_token")
    check_csrf(request, token if isinstance(token, str) else None)
    return form


def check_base_url(url: str) -> str:
    """The app's public address (scheme, host, optional port and path), without a trailing /."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"base URL {url!r}: give http(s)://HOST[:PORT][/PATH], without query or fragment")
    return url.rstrip("/")


def login_link(request: Request, s: Session, token: str) -> str:
    """The login link of `token` at the configured address (never the request's Host)."""
    state = request.app.state
    base = state.base_url or store.setting(s, "base_url") or state.default_base_url
    return f"{base}/login/{token}"
