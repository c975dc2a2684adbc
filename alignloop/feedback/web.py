"""Strict request parsing shared by the pages and the JSON API: ids bounded to the database's
integer range, form fields that take ASCII digits only and the CLI's bounds, the campaign
upload, and JSON Lines responses. A refused value is a `store.Invalid` (422) naming the field.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import Path, Query
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile

from alignloop.data.records import BinaryFeedback, Comparison, Samples
from alignloop.feedback import store
from alignloop.feedback.db import Campaign
from alignloop.feedback.limits import MAX_ID, MAX_RATERS_PER_ITEM, MAX_SEED

MAX_UPLOAD_BYTES = 20 * 1024 * 1024

IdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="An id (1 to 2^31 - 1).")]
IdQuery = Annotated[int | None, Query(ge=1, le=MAX_ID, description="An id (1 to 2^31 - 1).")]

_DIGITS = re.compile(r"[0-9]{1,12}")
_DECIMAL = re.compile(r"[0-9]{1,12}(\.[0-9]{0,12})?|\.[0-9]{1,12}")


def form_int(value: Any, lo: int, hi: int, what: str) -> int | None:
    """A whole number typed in a form (ASCII digits only), in [lo, hi]; None when empty."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _DIGITS.fullmatch(value) or not lo <= int(value) <= hi:
        raise store.Invalid(f"{what}: pick a number from {lo} to {hi}.")
    return int(value)


def form_fraction(value: Any, what: str) -> float | None:
    """A number in [0, 1] typed in a form (ASCII digits and a point); None when empty."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value) or not 0.0 <= float(value) <= 1.0:
        raise store.Invalid(f"{what}: a number from 0 to 1.")
    return float(value)


def form_text(form: FormData, field: str, default: str = "") -> str:
    value = form.get(field)
    if value is None:
        return default
    if not isinstance(value, str):
        raise store.Invalid(f"{field}: give text, not a file")
    return value


def read_upload(upload: Any, what: str) -> tuple[bytes, str]:
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise store.Invalid(f"{what}: choose a JSONL file")
    data = upload.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise store.Invalid(f"{what}: larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    return data, upload.filename[-100:]


def campaign_from_form(s: Session, form: FormData) -> Campaign:
    """Create a campaign from the admin form or the API's multipart upload (the body was read
    already; every field is checked before the store writes anything)."""
    kind = form_text(form, "kind") or "rank"
    rpi = form_int(form.get("raters_per_item"), 1, MAX_RATERS_PER_ITEM, "raters_per_item")
    gold_rate = form_fraction(form.get("gold_rate"), "gold_rate")
    seed = form_int(form.get("seed"), 0, MAX_SEED, "seed")
    name = form_text(form, "name").strip()
    instructions = form_text(form, "instructions")
    data, filename = read_upload(form.get("samples"), "samples")
    samples, where = store.parse_jsonl(data, filename, Samples)
    gold: list = []
    if isinstance(form.get("gold"), UploadFile) and form.get("gold").filename:
        gdata, gname = read_upload(form.get("gold"), "gold")
        gold, _ = store.parse_jsonl(gdata, gname, BinaryFeedback if kind == "thumbs" else Comparison)
    return store.create_campaign(s, name=name or filename.rsplit(".", 1)[0], kind=kind, samples=samples,
                                 raters_per_item=3 if rpi is None else rpi, instructions=instructions, gold=gold,
                                 gold_rate=0.1 if gold_rate is None else gold_rate, seed=seed or 0, where=where)


def jsonl_response(records: list, filename: str) -> Response:
    from alignloop.data.io import record_dict

    body = "".join(json.dumps(record_dict(r), ensure_ascii=False) + "\n" for r in records)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    return Response(body, media_type="application/x-ndjson",
                    headers={"content-disposition": f'attachment; filename="{safe}"'})
