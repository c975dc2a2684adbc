"""Server-rendered pages: login by link, the rating page, the admin dashboard.

Every POST form carries the session's CSRF token (checked by `auth.csrf_form`); a rater's
answer arrives in display positions (`rank_<p>` numbers, 1 best, equal numbers tie;
`label_<p>` 1/0 for thumbs; `unsafe` positions; `comment`) with a `submission_key` made when
the page was rendered, so a double click or a resent form stores one judgment.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile

from alignloop.data.records import BinaryFeedback, Comparison, Samples
from alignloop.feedback import reports, store
from alignloop.feedback.auth import (csrf_form, csrf_token, db_session, optional_rater, page_admin, page_rater,
                                     start_session)
from alignloop.feedback.db import Assignment, Rater

router = APIRouter(include_in_schema=False)
MAX_UPLOAD_BYTES = 20 * 1024 * 1024


def render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> HTMLResponse:
    ctx = {"csrf": csrf_token(request), "rater": None, **ctx}
    return request.app.state.templates.TemplateResponse(request, name, ctx, status_code=status)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# --- login -----------------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse)
def home(request: Request, saved: int = 0, rater: Rater | None = Depends(optional_rater),
         s: Session = Depends(db_session)):
    if rater is None:
        return render(request, "welcome.html", {})
    a = store.next_assignment(s, rater)
    if a is None:
        return render(request, "done.html", {"rater": rater, "progress": reports.rater_progress(s, rater),
                                             "saved": bool(saved)})
    return see_other(f"/assignments/{a.id}" + ("?saved=1" if saved else ""))


@router.get("/login/{token}", response_class=HTMLResponse)
def login_page(request: Request, token: str, s: Session = Depends(db_session)):
    rater = store.rater_for_login_token(s, token)
    if rater is None:
        raise store.NotFound("This login link is not valid or was used already. Ask an admin for a new one.")
    return render(request, "login.html", {"name": rater.name, "token": token})


@router.post("/login/{token}")
def login(request: Request, token: str, _form: FormData = Depends(csrf_form), s: Session = Depends(db_session)):
    rater = store.redeem_login_token(s, token)
    if rater is None:
        raise store.NotFound("This login link is not valid or was used already. Ask an admin for a new one.")
    start_session(request, rater)
    return see_other("/")


@router.post("/logout")
def logout(request: Request, _form: FormData = Depends(csrf_form)):
    request.session.clear()
    return see_other("/")


# --- rating ----------------------------------------------------------------------------------

def render_item(request: Request, s: Session, rater: Rater, a: Assignment, error: str | None = None,
                form: FormData | None = None, saved: bool = False) -> HTMLResponse:
    item = a.item
    k = len(item.responses)
    cards = []
    for p, orig in enumerate(a.display_order):
        cards.append({
            "pos": p, "letter": store.letter(p), "text": item.responses[orig],
            "rank": (form.get(f"rank_{p}") if form else "") or "",
            "label": (form.get(f"label_{p}") if form else "") or "",
            "unsafe": bool(form and str(p) in form.getlist("unsafe")),
        })
    ctx = {
        "rater": rater, "a": a, "campaign": a.campaign, "kind": a.campaign.kind, "k": k,
        "messages": item.prompt.get("messages") or [{"role": "user", "content": item.prompt["prompt"]}],
        "cards": cards, "progress": reports.rater_progress(s, rater), "key": secrets.token_urlsafe(18),
        "error": error, "comment": (form.get("comment") if form else "") or "", "saved": saved,
        "max_comment": store.MAX_COMMENT,
    }
    return render(request, "item.html", ctx, status=422 if error else 200)


@router.get("/assignments/{assignment_id}", response_class=HTMLResponse)
def show_assignment(request: Request, assignment_id: int, saved: int = 0, rater: Rater = Depends(page_rater),
                    s: Session = Depends(db_session)):
    a = store.get_assignment(s, rater, assignment_id)
    if a.status != "open":
        return render(request, "done.html", {"rater": rater, "progress": reports.rater_progress(s, rater),
                                             "closed": a.status})
    store.mark_shown(s, a)
    return render_item(request, s, rater, a, saved=bool(saved))


def _small_int(value: Any, lo: int, hi: int, what: str) -> int | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.isdigit() or not lo <= int(value) <= hi:
        raise store.Invalid(f"{what}: pick a number from {lo} to {hi}.")
    return int(value)


@router.post("/assignments/{assignment_id}/judgment")
def submit(request: Request, assignment_id: int, form: FormData = Depends(csrf_form),
           rater: Rater = Depends(page_rater), s: Session = Depends(db_session)):
    a = store.get_assignment(s, rater, assignment_id)
    k = len(a.item.responses)
    key = form.get("submission_key")
    comment = form.get("comment")
    try:
        unsafe = [_small_int(v, 0, k - 1, "unsafe") for v in form.getlist("unsafe")]
        ranking = labels = None
        if a.campaign.kind == "thumbs":
            labels = [_small_int(form.get(f"label_{p}"), 0, 1, f"response {store.letter(p)}") for p in range(k)]
            missing = [store.letter(p) for p, v in enumerate(labels) if v is None]
            if missing:
                raise store.Invalid(f"Give every response a thumbs up or down: {', '.join(missing)} "
                                    f"{'has' if len(missing) == 1 else 'have'} none.")
        else:
            ranks = [_small_int(form.get(f"rank_{p}"), 1, k, f"rank of {store.letter(p)}") for p in range(k)]
            ranking = store.ranking_from_ranks(ranks)
        store.submit_judgment(s, rater, assignment_id, ranking=ranking, labels=labels, unsafe=unsafe,
                              comment=comment if isinstance(comment, str) else "",
                              key=key if isinstance(key, str) and key else None)
    except store.Invalid as err:
        s.rollback()
        return render_item(request, s, rater, store.get_assignment(s, rater, assignment_id), error=err.message,
                           form=form)
    return see_other("/?saved=1")


@router.post("/assignments/{assignment_id}/skip")
def skip(request: Request, assignment_id: int, _form: FormData = Depends(csrf_form),
         rater: Rater = Depends(page_rater), s: Session = Depends(db_session)):
    store.skip_assignment(s, rater, assignment_id)
    return see_other("/")


# --- admin -----------------------------------------------------------------------------------

def render_admin(request: Request, s: Session, rater: Rater, status: int = 200, quality_id: int | None = None,
                 **extra: Any) -> HTMLResponse:
    """The dashboard; the quality figures are of campaign `quality_id` (default: the newest)."""
    campaigns = reports.campaign_summaries(s)
    chosen = next((c for c in campaigns if c["id"] == quality_id), campaigns[-1] if campaigns else None)
    quality = reports.quality_summary(s, chosen, request.app.state.gold_threshold) if chosen else None
    ctx = {"rater": rater, "campaigns": campaigns, "raters": reports.rater_summaries(s),
           "max_upload_mb": MAX_UPLOAD_BYTES // 2**20, "quality_campaign": chosen, "quality": quality,
           "gold_threshold": request.app.state.gold_threshold, **extra}
    return render(request, "admin.html", ctx, status=status)


@router.get("/admin", response_class=HTMLResponse)
def admin(request: Request, created: str = "", quality: int | None = None, admin: Rater = Depends(page_admin),
          s: Session = Depends(db_session)):
    return render_admin(request, s, admin, quality_id=quality, created=created[:200])


def read_upload(upload: Any, what: str) -> tuple[bytes, str]:
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise store.Invalid(f"{what}: choose a JSONL file")
    data = upload.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise store.Invalid(f"{what}: larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    return data, upload.filename[-100:]


def campaign_from_form(s: Session, form: FormData) -> Any:
    """Create a campaign from the admin form or the API's multipart upload."""
    kind = str(form.get("kind") or "rank")
    data, filename = read_upload(form.get("samples"), "samples")
    samples, where = store.parse_jsonl(data, filename, Samples)
    gold: list = []
    if isinstance(form.get("gold"), UploadFile) and form.get("gold").filename:
        gdata, gname = read_upload(form.get("gold"), "gold")
        gold, _ = store.parse_jsonl(gdata, gname, BinaryFeedback if kind == "thumbs" else Comparison)
    try:
        rpi = int(str(form.get("raters_per_item") or "3"))
        gold_rate = float(str(form.get("gold_rate") or "0.1"))
        seed = int(str(form.get("seed") or "0"))
    except ValueError:
        raise store.Invalid("raters per item and seed are whole numbers; gold rate is a number in [0, 1]") from None
    name = str(form.get("name") or "").strip() or filename.rsplit(".", 1)[0]
    return store.create_campaign(s, name=name, kind=kind, samples=samples, raters_per_item=rpi,
                                 instructions=str(form.get("instructions") or ""), gold=gold,
                                 gold_rate=gold_rate, seed=seed, where=where)


@router.post("/admin/campaigns")
def admin_create_campaign(request: Request, form: FormData = Depends(csrf_form),
                          admin: Rater = Depends(page_admin), s: Session = Depends(db_session)):
    try:
        campaign = campaign_from_form(s, form)
    except (store.Invalid, store.Conflict) as err:
        s.rollback()
        return render_admin(request, s, admin, status=err.status, error=err.message)
    return see_other(f"/admin?created={campaign.name}")


@router.post("/admin/raters", response_class=HTMLResponse)
def admin_add_rater(request: Request, form: FormData = Depends(csrf_form), admin: Rater = Depends(page_admin),
                    s: Session = Depends(db_session)):
    try:
        rater, login, api = store.add_rater(s, str(form.get("name") or ""), admin=form.get("admin") == "1",
                                            api_token=form.get("api_token") == "1")
    except store.Invalid as err:
        s.rollback()
        return render_admin(request, s, admin, status=err.status, error=err.message)
    link = str(request.base_url).rstrip("/") + f"/login/{login}"
    return render_admin(request, s, admin, new_rater={"name": rater.name, "link": link, "api_token": api})


@router.get("/admin/campaigns/{campaign_id}/export")
def admin_export(campaign_id: int, _admin: Rater = Depends(page_admin), s: Session = Depends(db_session)):
    campaign = store.find_campaign(s, campaign_id)
    return jsonl_response(reports.export_records(s, [campaign.id]), f"{campaign.name}.jsonl")


def jsonl_response(records: list, filename: str) -> Response:
    import json
    import re

    from alignloop.data.io import record_dict

    body = "".join(json.dumps(record_dict(r), ensure_ascii=False) + "\n" for r in records)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    return Response(body, media_type="application/x-ndjson",
                    headers={"content-disposition": f'attachment; filename="{safe}"'})
