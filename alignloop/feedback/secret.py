"""The key that signs session cookies. It is never kept in the database, so a copy or a backup
of the database cannot sign a session.

- `ALIGNLOOP_SECRET_KEY` (at least 32 characters), when set, is the key. Give every server
  process of one installation the same value.
- Otherwise the key file: `alignloop serve --secret-key-file PATH`, by default
  `$ALIGNLOOP_HOME/feedback-secret-key` (ALIGNLOOP_HOME is ~/.cache/alignloop unless set,
  as for the model cache). The first start creates it with a random key, mode 0600, in a
  folder of mode 0700; a key file that group or others may read is refused.

Rotating the key (a new ALIGNLOOP_SECRET_KEY, or delete the file and restart: a new one is
made) signs everyone out: every cookie signed with the old key is refused.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

ENV = "ALIGNLOOP_SECRET_KEY"
MIN_KEY_CHARS = 32


class SecretKeyError(ValueError):
    """The configured key is unusable (too short, or a key file others may read)."""


def default_key_file() -> Path:
    home = Path(os.environ.get("ALIGNLOOP_HOME", Path.home() / ".cache" / "alignloop"))
    return home / "feedback-secret-key"


def session_key(key_file: Path | None = None) -> str:
    """The signing key: ALIGNLOOP_SECRET_KEY, else the key file (created on first use)."""
    key = os.environ.get(ENV)
    if key is not None:
        return _checked(key.strip(), f"${ENV}")
    path = Path(key_file) if key_file is not None else default_key_file()
    if not path.exists():
        _create_key_file(path)
    return _read_key_file(path)


def _checked(key: str, where: str) -> str:
    if len(key) < MIN_KEY_CHARS:
        raise SecretKeyError(f"{where}: the session key must have at least {MIN_KEY_CHARS} characters")
    return key


def _read_key_file(path: Path) -> str:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretKeyError(f"{path}: group or others may access this key file (mode {stat.filemode(mode)}); "
                             f"run: chmod 600 {path}")
    return _checked(path.read_text(encoding="ascii").strip(), str(path))


def _create_key_file(path: Path) -> None:
    """Write a new random key, mode 0600; atomic (a link that fails when another process made
    the file first), so concurrent first starts agree on one key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)
