"""Who is asking: login links, session cookies, API tokens and CSRF tokens.

- A rater logs in with a one-time link `/login/{token}` printed by `alignloop feedback
  add-rater`. The database holds only the sha256 of the token; the GET shows a "Continue"
  button and the POST uses the token up (link previewers that fetch URLs do not burn it) and
  starts a session.
- The session is a cookie signed by Starlette's SessionMiddleware (itsdangerous) with a key
  kept in the database (so every worker and restart agrees). It carries the rater id and a
  CSRF token.
- Every form POST carries that CSRF token in a hidden field `csrf_token`; API calls that
  authenticate by cookie send it as `X-CSRF-Token`. API calls with `Authorization: Bearer
  <api token>` carry no cookie and need no CSRF token.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from alignloop.feedback.db import Rater

MAX_FORM_FIELDS = 200


class LoginRequired(Exception):
    """No valid session or API token (401)."""


class AdminRequired(Exception):
    """Signed in, but not an admin (403)."""


class CsrfFailed(Exception):
    """A POST without the session's CSRF token (403)."""


def db_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as s:
        yield s


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


def start_session(request: Request, rater: Rater) -> None:
    """A fresh session for `rater` (new CSRF token: nothing from before the login carries over)."""
    request.session.clear()
    request.session["rater_id"] = rater.id
    request.session["csrf"] = secrets.token_urlsafe(32)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _session_rater(request: Request, s: Session) -> Rater | None:
    rater_id = request.session.get("rater_id")
    if not isinstance(rater_id, int):
        return None
    rater = s.get(Rater, rater_id)
    if rater is None:
        request.session.clear()
    return rater


def optional_rater(request: Request, s: Session = Depends(db_session)) -> Rater | None:
    return _session_rater(request, s)


def page_rater(request: Request, s: Session = Depends(db_session)) -> Rater:
    rater = _session_rater(request, s)
    if rater is None:
        raise LoginRequired()
    return rater


def page_admin(rater: Rater = Depends(page_rater)) -> Rater:
    if not rater.is_admin:
        raise AdminRequired()
    return rater


def api_rater(request: Request, s: Session = Depends(db_session)) -> Rater:
    """Bearer API token, or the session cookie (then POSTs need the X-CSRF-Token header)."""
    from alignloop.feedback import store

    token = bearer_token(request)
    if token is not None:
        rater = store.rater_for_api_token(s, token)
        if rater is None:
            raise LoginRequired()
        return rater
    rater = _session_rater(request, s)
    if rater is None:
        raise LoginRequired()
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        check_csrf(request, request.headers.get("x-csrf-token"))
    return rater


def api_admin(rater: Rater = Depends(api_rater)) -> Rater:
    if not rater.is_admin:
        raise AdminRequired()
    return rater


async def csrf_form(request: Request) -> FormData:
    """The posted form, after checking its CSRF token."""
    form = await request.form(max_files=2, max_fields=MAX_FORM_FIELDS)
    token = form.get("csrf_token")
    check_csrf(request, token if isinstance(token, str) else None)
    return form
