"""The media folder of clips campaigns: video files named by the sha256 of their bytes.

    FOLDER/ab/ab12...(64 hex digits).mp4      (.webm for WebM)

The folder lies beside the database (`feedback.db` -> `feedback-media/`, `default_media_dir`)
unless one is given (`--media`; a PostgreSQL URL has no "beside"). `add_media` copies (or
moves) a file in under its digest and records a `Media` row; the file is in place before the
row is written, so every row has its file. A request names a video by its digest only:
`media_path` builds the path from a checked 64-hex digest and the extension of the content
type stored in the row, and `media_for` says whether the caller may see it (an admin: any
video; a rater: one of an item they hold an open assignment on). Nothing here reads a path
from a request. No torch, no simulator: the control process renders the videos.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignloop.feedback.db import Assignment, ItemMedia, Media, database_url, writing
from alignloop.feedback.errors import Invalid
from alignloop.feedback.limits import MAX_MEDIA_BYTES
from alignloop.feedback.raters import Caller

CONTENT_TYPES = {".mp4": "video/mp4", ".webm": "video/webm"}
EXTENSIONS = {ctype: ext for ext, ctype in CONTENT_TYPES.items()}
DIGEST = re.compile(r"[0-9a-f]{64}")


def is_digest(value: object) -> bool:
    return isinstance(value, str) and DIGEST.fullmatch(value) is not None


def default_media_dir(db: str | Path) -> Path | None:
    """`NAME-media/` beside a SQLite database file `NAME.db`; None for other databases."""
    url = database_url(db)
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url[len("sqlite:///"):])
    return path.with_name(path.stem + "-media")


def media_dir(db: str | Path, given: str | Path | None) -> Path | None:
    """The media folder: `given`, else the one beside a SQLite database (None: neither)."""
    return Path(given) if given else default_media_dir(db)


def media_path(folder: Path, digest: str, content_type: str) -> Path:
    """Where the video `digest` lives: the only way from a digest to a file."""
    if not is_digest(digest) or content_type not in EXTENSIONS:
        raise ValueError(f"not a stored video: {digest!r} ({content_type!r})")
    return Path(folder) / digest[:2] / f"{digest}{EXTENSIONS[content_type]}"


def _sniff(head: bytes, suffix: str) -> bool:
    """The bytes are the container the suffix says (MP4: an `ftyp` box; WebM: an EBML header)."""
    if suffix == ".mp4":
        return head[4:8] == b"ftyp"
    return head[:4] == b"\x1a\x45\xdf\xa3"


def check_video(path: Path) -> tuple[str, int]:
    """(content type, size) of a video file, or Invalid naming what is wrong with it."""
    path = Path(path)
    ctype = CONTENT_TYPES.get(path.suffix.lower())
    if ctype is None:
        raise Invalid(f"{path}: a clip video must be .mp4 (H.264) or .webm, not {path.suffix or 'no suffix'}")
    if not path.is_file():
        raise Invalid(f"{path}: no such video file")
    size = path.stat().st_size
    if not 0 < size <= MAX_MEDIA_BYTES:
        raise Invalid(f"{path}: {size} bytes; a clip video has 1 to {MAX_MEDIA_BYTES // 2**20} MiB")
    with path.open("rb") as f:
        if not _sniff(f.read(16), path.suffix.lower()):
            raise Invalid(f"{path}: not an {path.suffix.lower()[1:].upper()} file")
    return ctype, size


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def add_media(s: Session, folder: Path, path: Path, move: bool = False) -> str:
    """Put the video `path` into the media folder under its digest (copied, or moved when
    `move`) and record it; its digest. Adding the same bytes again changes nothing."""
    ctype, size = check_video(path)
    digest = file_digest(path)
    dest = media_path(folder, digest, ctype)
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".in-", suffix=dest.suffix)
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)  # whole or not at all
        finally:
            Path(tmp).unlink(missing_ok=True)
    if move and Path(path).resolve() != dest.resolve():
        Path(path).unlink()
    try:
        with writing(s):
            if s.get(Media, digest) is None:
                s.add(Media(sha256=digest, content_type=ctype, size=size))
    except IntegrityError:  # the same video recorded at the same moment by another process
        pass
    return digest


def attach_videos(s: Session, folder: Path, records: Sequence, base: Path, where: str) -> list:
    """Clips records whose `meta.videos` name their clips' video files (relative to `base`, one
    per response) as records whose `meta.media` holds the digests, the files added to the
    media folder. A record that has `meta.media` already is kept as it is."""
    out = []
    for n, rec in enumerate(records, start=1):
        videos = rec.meta.get("videos")
        if "media" in rec.meta and videos is None:
            out.append(rec)
            continue
        if not isinstance(videos, list) or len(videos) != len(rec.responses) or not all(isinstance(v, str) for v in videos):
            raise Invalid(f"{where}: record {n}: field 'meta.videos': give one video file (.mp4 / .webm) per response")
        digests = [add_media(s, folder, Path(base) / v) for v in videos]
        out.append(rec.model_copy(update={"meta": {**rec.meta, "media": digests}}))
    return out


def missing_media(s: Session, digests: Sequence[str]) -> list[str]:
    """The digests among `digests` that no `Media` row records."""
    wanted = sorted(set(digests))
    known: set[str] = set()
    for i in range(0, len(wanted), 500):
        known |= set(s.scalars(select(Media.sha256).where(Media.sha256.in_(wanted[i:i + 500]))))
    return [d for d in wanted if d not in known]


M, IM, A = Media.__table__, ItemMedia.__table__, Assignment.__table__
_ANY = select(M.c.content_type).where(M.c.sha256 == bindparam("digest"))
_OPEN_ASSIGNED = (select(M.c.content_type).join_from(IM, M, M.c.sha256 == IM.c.sha256)
                  .join(A, A.c.item_id == IM.c.item_id)
                  .where(IM.c.sha256 == bindparam("digest"), A.c.rater_id == bindparam("rater"), A.c.status == "open")
                  .limit(1))


def media_for(s: Session, caller: Caller, digest: str) -> str | None:
    """The content type of video `digest` if `caller` may see it (an admin: any recorded video;
    a rater: a video of an item they hold an open assignment on), else None."""
    if not is_digest(digest):
        return None
    params = {"digest": digest, "rater": caller.id}
    return s.connection().execute(_ANY if caller.is_admin else _OPEN_ASSIGNED, params).scalar()
