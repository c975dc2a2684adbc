"""The JSON API (under /api): the rater's operations for programmatic raters and the
AI-feedback stage, and the admin's. Spec at /openapi.json, readable at /docs.

Authenticate with `Authorization: Bearer <api token>` (`alignloop feedback add-rater NAME
--api-token`), or with the browser session cookie plus an `X-CSRF-Token` header on POSTs.

Responses are listed in the order this rater is shown them; `position` is the index in that
list, and a judgment names responses by position (ranking best first, a nested list for a
tie). In a clips campaign each response is a clip whose video is at its `media_url` (position
0 is shown on the left); answer with a ranking ([0, 1] left better, [1, 0] right better,
[[0, 1]] equal) or with `"abstain": true` (can't tell). Send an `Idempotency-Key` header with
a judgment: a retry with the same key returns the stored judgment (200) instead of storing a
second one (201 for the first).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from alignloop.feedback import reports, store
from alignloop.feedback.auth import DB, api_admin, api_rater, login_link
from alignloop.feedback.limits import MAX_COMMENT, MAX_KEY, MAX_NAME, MAX_RATERS_PER_ITEM, MAX_RESPONSES, MAX_SEED
from alignloop.feedback.raters import Caller
from alignloop.feedback.web import IdPath, IdQuery, campaign_from_form, jsonl_response

router = APIRouter(prefix="/api", tags=["feedback"])


class ResponseOut(BaseModel):
    position: int = Field(description="Index in the list as shown to this rater (0 = first shown).")
    label: str = Field(description="Letter shown on the page (A, B, ...).")
    text: str = Field(description="The response (clips: the clip's name).")
    media_url: str | None = Field(None, description="clips: the clip's video (GET it with the same credentials; "
                                                   "range requests are answered 206).")


class AssignmentOut(BaseModel):
    assignment_id: int
    campaign_id: int
    campaign: str
    kind: Literal["rank", "compare", "thumbs", "clips"]
    instructions: str
    messages: list[dict[str, str]] = Field(description="The prompt as chat messages (role, content).")
    responses: list[ResponseOut] = Field(description="In this rater's display order.")
    status: Literal["open", "done", "skipped"]


class ProgressOut(BaseModel):
    done: int
    open: int
    skipped: int
    available: int
    assigned: int = Field(description="done + open + still available to this rater.")


class NextOut(BaseModel):
    assignment: AssignmentOut | None = Field(description="null when nothing is left for you.")
    progress: ProgressOut


class StrictIn(BaseModel):
    """Request bodies take exactly their types (a string, float or bool is not an index; a
    string is not a bool) and no unknown fields; a refusal (422) names the field."""

    model_config = ConfigDict(strict=True, extra="forbid")


class JudgmentIn(StrictIn):
    ranking: list[StrictInt | list[StrictInt]] | None = Field(
        None, max_length=MAX_RESPONSES, description="rank/compare: positions best first; a nested list is a tie, e.g. [2, [0, 3], 1].")
    labels: list[StrictInt] | None = Field(None, max_length=MAX_RESPONSES,
                                           description="thumbs: per position 1 (good) or 0 (bad).")
    unsafe: list[StrictInt] = Field(default_factory=list, max_length=MAX_RESPONSES,
                                    description="Positions of responses flagged unsafe.")
    abstain: StrictBool = Field(False, description="clips: can't tell (give no ranking); stored as an abstention.")
    comment: StrictStr = Field("", max_length=MAX_COMMENT)


class JudgmentOut(BaseModel):
    judgment_id: int
    assignment_id: int
    created: bool = Field(description="False when this replays an earlier submission with the same key.")
    ranking: list[Any] | None = Field(description="Stored ranking, in ORIGINAL response indices.")
    labels: list[int] | None = Field(description="Stored labels, in original response order.")
    display_order: list[int] = Field(description="display_order[position] = original index.")
    submitted_at: str
    abstained: bool = Field(description="clips: the rater answered can't tell (ranking is null).")


class CampaignOut(BaseModel):
    id: int
    name: str
    kind: str
    raters_per_item: int
    gold_rate: float
    items: int
    gold_items: int
    judgments: int
    gold_judgments: int
    expected: int
    open: int
    skipped: int
    complete_items: int
    completion: float
    abstained: int = Field(description="clips: judgments that answered can't tell.")
    per_rater: dict[str, int]
    created_at: str


class RaterIn(StrictIn):
    name: StrictStr = Field(min_length=1, max_length=MAX_NAME)
    admin: StrictBool = False
    api_token: StrictBool = True


class RaterOut(BaseModel):
    id: int
    name: str
    role: str
    login_url: str = Field(description="One-time login link for the browser.")
    api_token: str | None = Field(description="Shown once; only its hash is stored.")


def assignment_json(a: store.AssignmentView) -> dict[str, Any]:
    """An assignment as `AssignmentOut` (built directly: the hot path skips pydantic's
    validation of what it built itself)."""
    texts, media = a.item.responses, a.item.media
    return {"assignment_id": a.id, "campaign_id": a.campaign.id, "campaign": a.campaign.name,
            "kind": a.campaign.kind, "instructions": a.campaign.instructions, "messages": a.item.messages,
            "responses": [{"position": p, "label": store.letter(p), "text": texts[o],
                           "media_url": f"/media/{media[o]}" if media else None}
                          for p, o in enumerate(a.display_order)],
            "status": a.status}


@router.get("/next", response_model=NextOut, summary="Your next item (assigned now if needed)")
def next_item(campaign_id: IdQuery = None, rater: Caller = Depends(api_rater), s: Session = DB):
    a = store.next_assignment_view(s, rater.id, campaign_id, shown=True)
    return JSONResponse({"assignment": None if a is None else assignment_json(a),
                         "progress": reports.rater_progress(s, rater)})


@router.get("/assignments/{assignment_id}", response_model=AssignmentOut, summary="One of your assignments")
def get_assignment(assignment_id: IdPath, rater: Caller = Depends(api_rater), s: Session = DB):
    return JSONResponse(assignment_json(store.view_of(store.get_assignment(s, rater, assignment_id))))


@router.post("/assignments/{assignment_id}/judgment", response_model=JudgmentOut, status_code=201,
             summary="Answer an assignment (idempotent with Idempotency-Key)")
def post_judgment(assignment_id: IdPath, body: JudgmentIn,
                  idempotency_key: str | None = Header(None, max_length=MAX_KEY),
                  rater: Caller = Depends(api_rater), s: Session = DB):
    j, created = store.judge(s, rater.id, assignment_id, ranking=body.ranking, labels=body.labels,
                             unsafe=body.unsafe, comment=body.comment, key=idempotency_key, abstain=body.abstain)
    return JSONResponse({"judgment_id": j.id, "assignment_id": j.assignment_id, "created": created,
                         "ranking": j.ranking, "labels": j.labels, "display_order": j.display_order,
                         "submitted_at": j.submitted_at.isoformat() + "Z", "abstained": bool(j.abstained)},
                        status_code=201 if created else 200)


@router.post("/assignments/{assignment_id}/skip", response_model=AssignmentOut, summary="Give an item back")
def post_skip(assignment_id: IdPath, rater: Caller = Depends(api_rater), s: Session = DB):
    return JSONResponse(assignment_json(store.view_of(store.skip_assignment(s, rater, assignment_id))))


@router.get("/me/progress", response_model=ProgressOut, summary="Your progress")
def my_progress(rater: Caller = Depends(api_rater), s: Session = DB):
    return JSONResponse(reports.rater_progress(s, rater))


@router.get("/campaigns", response_model=list[CampaignOut], summary="Campaigns with progress (admin)")
def list_campaigns(_admin: Caller = Depends(api_admin), s: Session = DB):
    return reports.campaign_summaries(s)


async def _upload_form(request: Request, _admin: Caller = Depends(api_admin), s: Session = DB) -> FormData:
    """The upload, read after the admin is known, with no transaction open meanwhile."""
    s.commit()
    return await request.form(max_files=2, max_fields=20)


@router.post("/campaigns", response_model=CampaignOut, status_code=201,
             summary="Create a campaign from an uploaded samples JSONL (admin)",
             openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["samples"], "properties": {
                     "samples": {"type": "string", "format": "binary", "description": "samples JSONL"},
                     "gold": {"type": "string", "format": "binary",
                              "description": "gold items: comparisons (rank/compare) or binary feedback (thumbs)"},
                     "name": {"type": "string"}, "kind": {"type": "string", "enum": ["rank", "compare", "thumbs", "clips"]},
                     "raters_per_item": {"type": "integer", "default": 3, "minimum": 1, "maximum": MAX_RATERS_PER_ITEM},
                     "instructions": {"type": "string"},
                     "gold_rate": {"type": "number", "default": 0.1, "minimum": 0, "maximum": 1},
                     "seed": {"type": "integer", "default": 0, "minimum": 0, "maximum": MAX_SEED}}}}}}})
def create_campaign(_admin: Caller = Depends(api_admin), form: FormData = Depends(_upload_form),
                    s: Session = DB):
    campaign = campaign_from_form(s, form)
    return next(c for c in reports.campaign_summaries(s) if c["id"] == campaign.id)


@router.get("/campaigns/{campaign_id}/export", summary="Judgments as JSONL, one record per judgment (admin)",
            response_class=Response, responses={200: {"content": {"application/x-ndjson": {}}}})
def export_campaign(campaign_id: IdPath, include_gold: bool = True, _admin: Caller = Depends(api_admin),
                    s: Session = DB):
    campaign = store.find_campaign(s, campaign_id)
    return jsonl_response(reports.export_records(s, [campaign.id], include_gold), f"{campaign.name}.jsonl")


@router.get("/raters", summary="Raters with counts and time per item (admin)")
def list_raters(_admin: Caller = Depends(api_admin), s: Session = DB) -> list[dict[str, Any]]:
    return reports.rater_summaries(s)


@router.post("/raters", response_model=RaterOut, status_code=201,
             summary="Add a rater, or issue fresh tokens to an existing one (admin)")
def add_rater(body: RaterIn, request: Request, _admin: Caller = Depends(api_admin), s: Session = DB):
    rater, login, api = store.add_rater(s, body.name, admin=body.admin, api_token=body.api_token)
    return RaterOut(id=rater.id, name=rater.name, role=rater.role, api_token=api, login_url=login_link(request, s, login))


@router.post("/raters/{rater_id}/sign-out", status_code=204, response_class=Response,
             summary="Sign a rater out everywhere: sessions, unused login link and API token (admin)")
def sign_out_rater(rater_id: IdPath, _admin: Caller = Depends(api_admin), s: Session = DB):
    store.find_rater(s, rater_id)
    store.end_sessions(s, rater_id, everywhere=True)
    return Response(status_code=204)
