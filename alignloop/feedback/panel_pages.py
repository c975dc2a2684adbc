"""Pages of diverse panels and practice rounds: the rater's attributes form, the practice
round (an item, then its known answer and explanation), and the admin's attributes form and
per-campaign coverage and practice curves.

The home page asks `panel_views.pending_step` first: a campaign that still has items for the
rater but wants their attributes (`ask`) or a practice round before its live items. The
answer of a practice item arrives like a judgment (`rank_<p>` numbers in display positions,
`label_<p>` for thumbs) and is stored as a practice answer (practice.py), never a judgment.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from alignloop.feedback import reports, store
from alignloop.feedback.auth import DB, csrf_form, page_admin, page_rater
from alignloop.feedback.campaigns import CampaignInfo
from alignloop.feedback.practice import practice_order
from alignloop.feedback.raters import Caller
from alignloop.feedback.web import IdPath, form_int, form_text

router = APIRouter(include_in_schema=False)


def _render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> HTMLResponse:
    from alignloop.feedback.pages import render

    return render(request, name, ctx, status)


def _ready_campaign(s: Session, campaign_id: int) -> CampaignInfo:
    info = store.campaign_info(s.connection(), campaign_id) if store.is_db_id(campaign_id) else None
    if info is None:
        raise store.NotFound(f"no campaign {campaign_id}")
    return info


# --- the rater's attributes -------------------------------------------------------------------

@router.get("/profile/{campaign_id}", response_class=HTMLResponse)
def profile(request: Request, campaign_id: IdPath, rater: Caller = Depends(page_rater), s: Session = DB,
            error: str | None = None):
    info = _ready_campaign(s, campaign_id)
    attrs = store.rater_attributes(s.connection(), rater.id)
    asked = info.options.ask if info.options else []
    return _render(request, "profile.html", {"rater": rater, "campaign": info, "asked": asked, "attrs": attrs,
                                             "error": error}, status=422 if error else 200)


@router.post("/profile/{campaign_id}")
def save_profile(request: Request, campaign_id: IdPath, form: FormData = Depends(csrf_form),
                 rater: Caller = Depends(page_rater), s: Session = DB):
    from alignloop.feedback.pages import see_other

    info = _ready_campaign(s, campaign_id)
    asked = info.options.ask if info.options else []
    values = {k: form_text(form, f"attr_{k}").strip() for k in asked}
    empty = [k for k, v in values.items() if not v]
    if empty:
        return profile(request, campaign_id, rater, s, error=f"Please fill in: {', '.join(empty)}.")
    try:
        store.set_attributes(s, rater.id, values)
    except store.Invalid as err:
        s.rollback()
        return profile(request, campaign_id, rater, s, error=err.message)
    return see_other("/")


# --- practice ---------------------------------------------------------------------------------

def _practice_cards(info: CampaignInfo, rater_id: int, attempt: int, item) -> tuple[list[int], list[dict]]:
    order = practice_order(info, rater_id, attempt, item.id, len(item.responses))
    cards = [{"pos": p, "letter": store.letter(p), "text": item.responses[orig], "rank": "", "label": "",
              "unsafe": False} for p, orig in enumerate(order)]
    return order, cards


@router.get("/practice/{campaign_id}", response_class=HTMLResponse)
def practice_page(request: Request, campaign_id: IdPath, rater: Caller = Depends(page_rater), s: Session = DB,
                  error: str | None = None):
    from alignloop.feedback.pages import see_other

    info = _ready_campaign(s, campaign_id)
    conn = s.connection()
    state = store.practice_state(conn, rater.id, info)
    if state is None or state.next_item is None:
        return see_other("/")
    item = store.item_text(conn, state.next_item)
    _, cards = _practice_cards(info, rater.id, state.attempt, item)
    ctx = {"rater": rater, "campaign": info, "kind": info.kind, "k": len(item.responses), "messages": item.messages,
           "cards": cards, "state": state, "item_id": item.id, "number": len(state.answered) + 1,
           "progress": reports.rater_progress(s, rater), "key": secrets.token_urlsafe(18), "error": error}
    return _render(request, "practice.html", ctx, status=422 if error else 200)


@router.post("/practice/{campaign_id}/answer", response_class=HTMLResponse)
def practice_answer(request: Request, campaign_id: IdPath, form: FormData = Depends(csrf_form),
                    rater: Caller = Depends(page_rater), s: Session = DB):
    info = _ready_campaign(s, campaign_id)
    conn = s.connection()
    item_id = form_int(form.get("item_id"), 1, 2**31 - 1, "item_id")
    state = store.practice_state(conn, rater.id, info)
    if state is None or item_id is None or item_id not in state.items:
        raise store.NotFound("No such practice item for you.")
    item = store.item_text(conn, item_id)
    k = len(item.responses)
    try:
        if info.kind == "thumbs":
            labels = [form_int(form.get(f"label_{p}"), 0, 1, f"response {store.letter(p)}") for p in range(k)]
            if any(v is None for v in labels):
                raise store.Invalid("Give every response a thumbs up or down.")
            result = store.submit_practice(s, rater.id, info, item_id, labels=labels)
        else:
            ranks = [form_int(form.get(f"rank_{p}"), 1, k, f"rank of {store.letter(p)}") for p in range(k)]
            result = store.submit_practice(s, rater.id, info, item_id, ranking=store.ranking_from_ranks(ranks))
    except store.Invalid as err:
        s.rollback()
        return practice_page(request, campaign_id, rater, s, error=err.message)
    order, _ = _practice_cards(info, rater.id, state.attempt, item)
    letter_of = {orig: store.letter(p) for p, orig in enumerate(order)}
    if info.kind == "thumbs":
        known = [{"letter": letter_of[i], "text": item.responses[i], "label": v}
                 for i, v in sorted(enumerate(result.gold_answer), key=lambda x: letter_of[x[0]])]
    else:
        known = [[{"letter": letter_of[i], "text": item.responses[i]} for i in (e if isinstance(e, list) else [e])]
                 for e in result.gold_answer]
    ctx = {"rater": rater, "campaign": info, "kind": info.kind, "result": result, "known": known,
           "state": result.state, "number": len(state.answered) + 1, "m": state.m,
           "new_round": result.state.status == "todo" and result.state.attempt > state.attempt}
    return _render(request, "practice_feedback.html", ctx)


# --- admin --------------------------------------------------------------------------------------

@router.post("/admin/raters/attributes", response_class=HTMLResponse)
def admin_set_attributes(request: Request, form: FormData = Depends(csrf_form), admin: Caller = Depends(page_admin),
                         s: Session = DB):
    from alignloop.feedback.db import Rater
    from alignloop.feedback.pages import render_admin

    name = form_text(form, "name").strip()
    try:
        rater = s.query(Rater).filter(Rater.name == name).one_or_none()
        if rater is None:
            raise store.NotFound(f"no rater {name[:100]!r}")
        merged = store.set_attributes(s, rater.id, store.parse_attributes(form_text(form, "attributes")))
    except (store.Invalid, store.NotFound) as err:
        s.rollback()
        return render_admin(request, s, admin, status=err.status, error=err.message)
    shown = ", ".join(f"{k}={v}" for k, v in sorted(merged.items())) or "none"
    return render_admin(request, s, admin, attributes_saved=f"{name}: {shown}")
