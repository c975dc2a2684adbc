"""Raters, their tokens and their sessions.

Only sha256 hashes of login links and API tokens are stored. A session cookie carries the
rater's `session_version`; raising it (logout, a fresh login link, "sign out everywhere")
makes every older cookie invalid. `caller_*` read who is asking, as a small `Caller` record
(one indexed row, no ORM object): the web app looks the rater up once per request.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, NamedTuple

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignloop.feedback.db import Rater, Setting, locked, writing
from alignloop.feedback.errors import Conflict, Invalid, NotFound
from alignloop.feedback.limits import MAX_NAME, MAX_TOKEN, is_db_id


class Caller(NamedTuple):
    """Who is asking: the fields of their rater row that a request needs."""

    id: int
    name: str
    role: str
    session_version: int

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


R = Rater.__table__
_CALLER = select(R.c.id, R.c.name, R.c.role, R.c.session_version)
_CALLER_BY_API_TOKEN = _CALLER.where(R.c.api_token_hash == bindparam("hash"))
_CALLER_BY_ID = _CALLER.where(R.c.id == bindparam("rater"))


def caller_for_api_token(s: Session, token: str) -> Caller | None:
    if not _token_ok(token):
        return None
    row = s.connection().execute(_CALLER_BY_API_TOKEN, {"hash": hash_token(token)}).one_or_none()
    return None if row is None else Caller(*row)


def caller(s: Session, rater_id: int) -> Caller | None:
    row = s.connection().execute(_CALLER_BY_ID, {"rater": rater_id}).one_or_none() if is_db_id(rater_id) else None
    return None if row is None else Caller(*row)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _token_ok(token: Any) -> bool:
    return isinstance(token, str) and 0 < len(token) <= MAX_TOKEN


def add_rater(s: Session, name: str, admin: bool = False, api_token: bool = False,
              base_url: str | None = None) -> tuple[Rater, str, str | None]:
    """Create a rater (or take the existing one of that name) and issue a fresh one-time login
    token, and an API token if asked. Only sha256 hashes are stored; the tokens are returned
    once. A fresh link for an existing rater ends their sessions (old cookies stop working).
    `admin` promotes; it never demotes an existing admin. `base_url`, the address the link was
    printed with, is remembered for the first admin: the app builds login links from it."""
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME:
        raise Invalid(f"name: give a rater name of 1 to {MAX_NAME} characters")
    name = name.strip()
    login = secrets.token_urlsafe(32)
    api = secrets.token_urlsafe(32) if api_token else None
    try:
        with writing(s):
            rater = s.scalar(locked(select(Rater).where(Rater.name == name)))
            if rater is None:
                rater = Rater(name=name, role="admin" if admin else "rater", session_version=0)
                s.add(rater)
            else:
                rater.session_version += 1
                if admin:
                    rater.role = "admin"
            rater.login_token_hash = hash_token(login)
            if api is not None:
                rater.api_token_hash = hash_token(api)
            if base_url and rater.is_admin and s.get(Setting, "base_url") is None:
                s.add(Setting(key="base_url", value=base_url))
    except IntegrityError:  # the same new name, added at the same moment elsewhere
        raise Conflict(f"rater {name!r} was being added at the same time; try again") from None
    return rater, login, api


def rater_for_login_token(s: Session, token: str) -> Rater | None:
    if not _token_ok(token):
        return None
    return s.scalar(select(Rater).where(Rater.login_token_hash == hash_token(token)))


def redeem_login_token(s: Session, token: str) -> Rater | None:
    """The rater the one-time login token belongs to; the token is used up (two browsers
    racing with one link: one wins)."""
    if not _token_ok(token):
        return None
    with writing(s):
        rater = s.scalar(locked(select(Rater).where(Rater.login_token_hash == hash_token(token))))
        if rater is not None:
            rater.login_token_hash = None
    return rater


def rater_for_api_token(s: Session, token: str) -> Rater | None:
    if not _token_ok(token):
        return None
    return s.scalar(select(Rater).where(Rater.api_token_hash == hash_token(token)))


def end_sessions(s: Session, rater_id: int, everywhere: bool = False) -> None:
    """Make every session cookie of the rater invalid (logout). `everywhere` (an admin's "sign
    out everywhere") also cancels their unused login link and their API token."""
    values: dict[str, Any] = {"session_version": Rater.session_version + 1}
    if everywhere:
        values.update(login_token_hash=None, api_token_hash=None)
    with writing(s):
        if s.execute(update(Rater).where(Rater.id == rater_id).values(**values)).rowcount != 1:
            raise NotFound(f"no rater {rater_id}")


def find_rater(s: Session, rater_id: int) -> Rater:
    rater = s.get(Rater, rater_id) if is_db_id(rater_id) else None
    if rater is None:
        raise NotFound(f"no rater {rater_id}")
    return rater


def setting(s: Session, key: str) -> str | None:
    row = s.get(Setting, key)
    return None if row is None else row.value
