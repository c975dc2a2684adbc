"""Server-rendered pages: login by link, the rating page, the admin dashboard, and the clip
videos those pages play.

Every POST form carries the session's CSRF token (checked by `auth.csrf_form`); a rater's
answer arrives in display positions (`rank_<p>` numbers, 1 best, equal numbers tie;
`label_<p>` 1/0 for thumbs; `answer` left | right | equal | cant_tell for clips; `unsafe`
positions; `comment`) with a `submission_key` made when the page was rendered, so a double
click or a resent form stores one judgment.

`/media/{sha256}` serves a clip's video to the rater holding an open assignment on an item
that shows it, and to admins (anyone else, and any unknown digest, gets the same 404): the
digest is the only thing taken from the request, the content type comes from the database,
HTTP range requests are answered 206 (browsers seek in video with them), and the response
may be cached privately for good (its bytes never change under that name; ETag = digest).
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from alignloop.feedback import reports, store
from alignloop.feedback.auth import (DB, api_rater, csrf_form, csrf_token, login_link, optional_rater, page_admin,
                                     page_rater, start_session)
from alignloop.feedback.db import Assignment
from alignloop.feedback.limits import MAX_COMMENT
from alignloop.feedback.raters import Caller
from alignloop.feedback.web import (MAX_UPLOAD_BYTES, IdPath, IdQuery, campaign_from_form, form_int, form_text,
                                    jsonl_response)

router = APIRouter(include_in_schema=False)


def render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> HTMLResponse:
    ctx = {"csrf": csrf_token(request), "rater": None, **ctx}
    return request.app.state.templates.TemplateResponse(request, name, ctx, status_code=status)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# --- login -----------------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse)
def home(request: Request, saved: int = 0, rater: Caller | None = Depends(optional_rater),
         s: Session = DB):
    if rater is None:
        return render(request, "welcome.html", {})
    from alignloop.feedback.panel_views import pending_step

    step = pending_step(s, rater)  # attributes a campaign asks for, or its practice round, first
    if step is not None:
        return see_other(f"/{step[0]}/{step[1].id}")
    a = store.next_assignment(s, rater)
    if a is None:
        return render(request, "done.html", {"rater": rater, "progress": reports.rater_progress(s, rater),
                                             "saved": bool(saved)})
    return see_other(f"/assignments/{a.id}" + ("?saved=1" if saved else ""))


@router.get("/login/{token}", response_class=HTMLResponse)
def login_page(request: Request, token: str, s: Session = DB):
    rater = store.rater_for_login_token(s, token)
    if rater is None:
        raise store.NotFound("This login link is not valid or was used already. Ask an admin for a new one.")
    return render(request, "login.html", {"name": rater.name, "token": token})


@router.post("/login/{token}")
def login(request: Request, token: str, _form: FormData = Depends(csrf_form), s: Session = DB):
    rater = store.redeem_login_token(s, token)
    if rater is None:
        raise store.NotFound("This login link is not valid or was used already. Ask an admin for a new one.")
    start_session(request, rater)
    return see_other("/")


@router.post("/logout")
def logout(request: Request, _form: FormData = Depends(csrf_form), rater: Caller | None = Depends(optional_rater),
           s: Session = DB):
    """Sign out: this cookie, and any copy of it, stops working (so do the rater's other sessions)."""
    if rater is not None:
        store.end_sessions(s, rater.id)
    request.session.clear()
    return see_other("/")


# --- rating ----------------------------------------------------------------------------------

CLIP_ANSWERS = {"left": [0, 1], "right": [1, 0], "equal": [[0, 1]], "cant_tell": None}  # in display positions
SIDES = ("left", "right")
MEDIA_CACHE = "private, max-age=31536000, immutable"


def render_clips(request: Request, s: Session, rater: Caller, a: Assignment, error: str | None = None,
                 saved: bool = False) -> HTMLResponse:
    """The clips page: the item's two videos side by side, left = display position 0."""
    media = [m.sha256 for m in a.item.media]
    clips = [{"pos": p, "side": SIDES[p], "src": f"/media/{media[orig]}"} for p, orig in enumerate(a.display_order)]
    ctx = {"rater": rater, "a": a, "campaign": a.campaign, "question": store.chat_messages(a.item.prompt)[-1]["content"],
           "clips": clips, "progress": reports.rater_progress(s, rater), "key": secrets.token_urlsafe(18),
           "error": error, "saved": saved}
    return render(request, "clips.html", ctx, status=422 if error else 200)


def render_item(request: Request, s: Session, rater: Caller, a: Assignment, error: str | None = None,
                form: FormData | None = None, saved: bool = False) -> HTMLResponse:
    if a.campaign.kind == "clips":
        return render_clips(request, s, rater, a, error, saved)
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
        "max_comment": MAX_COMMENT,
    }
    return render(request, "item.html", ctx, status=422 if error else 200)


@router.get("/assignments/{assignment_id}", response_class=HTMLResponse)
def show_assignment(request: Request, assignment_id: IdPath, saved: int = 0, rater: Caller = Depends(page_rater),
                    s: Session = DB):
    a = store.get_assignment(s, rater, assignment_id)
    if a.status != "open":
        return render(request, "done.html", {"rater": rater, "progress": reports.rater_progress(s, rater),
                                             "closed": a.status})
    store.mark_shown(s, a)
    return render_item(request, s, rater, a, saved=bool(saved))


@router.post("/assignments/{assignment_id}/judgment")
def submit(request: Request, assignment_id: IdPath, form: FormData = Depends(csrf_form),
           rater: Caller = Depends(page_rater), s: Session = DB):
    a = store.get_assignment(s, rater, assignment_id)
    k = len(a.item.responses)
    try:
        key = form_text(form, "submission_key")
        comment = form_text(form, "comment")
        unsafe = [form_int(v, 0, k - 1, "unsafe") for v in form.getlist("unsafe")]
        ranking = labels = None
        abstain = False
        if a.campaign.kind == "clips":
            answer = form_text(form, "answer")
            if answer not in CLIP_ANSWERS:
                raise store.Invalid("Pick an answer: left is better, right is better, equal, or can't tell.")
            ranking, abstain = CLIP_ANSWERS[answer], answer == "cant_tell"
        elif a.campaign.kind == "thumbs":
            labels = [form_int(form.get(f"label_{p}"), 0, 1, f"response {store.letter(p)}") for p in range(k)]
            missing = [store.letter(p) for p, v in enumerate(labels) if v is None]
            if missing:
                raise store.Invalid(f"Give every response a thumbs up or down: {', '.join(missing)} "
                                    f"{'has' if len(missing) == 1 else 'have'} none.")
        else:
            ranks = [form_int(form.get(f"rank_{p}"), 1, k, f"rank of {store.letter(p)}") for p in range(k)]
            ranking = store.ranking_from_ranks(ranks)
        store.judge(s, rater.id, assignment_id, ranking=ranking, labels=labels,
                    unsafe=[p for p in unsafe if p is not None], comment=comment, key=key or None, abstain=abstain)
    except store.Invalid as err:
        s.rollback()
        return render_item(request, s, rater, store.get_assignment(s, rater, assignment_id), error=err.message,
                           form=form)
    return see_other("/?saved=1")


@router.post("/assignments/{assignment_id}/skip")
def skip(request: Request, assignment_id: IdPath, _form: FormData = Depends(csrf_form),
         rater: Caller = Depends(page_rater), s: Session = DB):
    store.skip_assignment(s, rater, assignment_id)
    return see_other("/")


# --- clip videos -----------------------------------------------------------------------------

@router.api_route("/media/{digest}", methods=["GET", "HEAD"])
def media(request: Request, digest: str, rater: Caller = Depends(api_rater), s: Session = DB):
    """A clip's video, for its rater (cookie or API token) and admins; range requests answer 206."""
    folder = request.app.state.media_dir
    content_type = store.media_for(s, rater, digest)
    path = store.media_path(folder, digest, content_type) if content_type and folder is not None else None
    if path is None or not path.is_file():
        raise store.NotFound("No such video for you.")
    etag = f'"{digest}"'
    headers = {"ETag": etag, "Cache-Control": MEDIA_CACHE}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=content_type, headers=headers)


# --- admin -----------------------------------------------------------------------------------

def render_admin(request: Request, s: Session, rater: Caller, status: int = 200, quality_id: int | None = None,
                 **extra: Any) -> HTMLResponse:
    """The dashboard; the quality figures are of campaign `quality_id` (default: the newest)."""
    campaigns = reports.campaign_summaries(s)
    chosen = next((c for c in campaigns if c["id"] == quality_id), campaigns[-1] if campaigns else None)
    quality = reports.quality_summary(s, chosen, request.app.state.gold_threshold) if chosen else None
    from alignloop.feedback.panel_views import admin_panels

    ctx = {"panels": admin_panels(s),"rater": rater, "campaigns": campaigns, "raters": reports.rater_summaries(s),
           "max_upload_mb": MAX_UPLOAD_BYTES // 2**20, "quality_campaign": chosen, "quality": quality,
           "gold_threshold": request.app.state.gold_threshold, **extra}
    return render(request, "admin.html", ctx, status=status)


@router.get("/admin", response_class=HTMLResponse)
def admin(request: Request, created: str = "", quality: IdQuery = None, admin: Caller = Depends(page_admin),
          s: Session = DB):
    return render_admin(request, s, admin, quality_id=quality, created=created[:200])


@router.post("/admin/campaigns")
def admin_create_campaign(request: Request, form: FormData = Depends(csrf_form),
                          admin: Caller = Depends(page_admin), s: Session = DB):
    try:
        campaign = campaign_from_form(s, form)
    except (store.Invalid, store.Conflict) as err:
        s.rollback()
        return render_admin(request, s, admin, status=err.status, error=err.message)
    return see_other(f"/admin?created={quote(campaign.name)}")


@router.post("/admin/raters", response_class=HTMLResponse)
def admin_add_rater(request: Request, form: FormData = Depends(csrf_form), admin: Caller = Depends(page_admin),
                    s: Session = DB):
    try:
        rater, login, api = store.add_rater(s, form_text(form, "name"), admin=form.get("admin") == "1",
                                            api_token=form.get("api_token") == "1")
    except (store.Invalid, store.Conflict) as err:
        s.rollback()
        return render_admin(request, s, admin, status=err.status, error=err.message)
    link = login_link(request, s, login)
    return render_admin(request, s, admin, new_rater={"name": rater.name, "link": link, "api_token": api})


@router.post("/admin/raters/{rater_id}/sign-out", response_class=HTMLResponse)
def admin_sign_out(request: Request, rater_id: IdPath, _form: FormData = Depends(csrf_form),
                   admin: Caller = Depends(page_admin), s: Session = DB):
    """Sign a rater out everywhere: their cookies, unused login link and API token stop working."""
    name = store.find_rater(s, rater_id).name
    store.end_sessions(s, rater_id, everywhere=True)
    if rater_id == admin.id:
        request.session.clear()
        return see_other("/")
    return render_admin(request, s, admin, signed_out=name)


@router.get("/admin/campaigns/{campaign_id}/export")
def admin_export(campaign_id: IdPath, _admin: Caller = Depends(page_admin), s: Session = DB):
    campaign = store.find_campaign(s, campaign_id)
    return jsonl_response(reports.export_records(s, [campaign.id]), f"{campaign.name}.jsonl")
