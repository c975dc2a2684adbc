"""Every database operation of the feedback app, as functions taking a `Session`, in one
namespace: `from alignloop.feedback import store; store.next_assignment(s, rater)`.

The web pages, the JSON API and the CLI call only these (and `reports`). They live in one
module per concept:

    schema.py       open_db, migrate: the engine, the session factory, the Alembic revision
    campaigns.py    creating and finding campaigns; the per-process cache of what never changes
    raters.py       raters, login links and API tokens, sessions; who is asking (`Caller`)
    assignments.py  a rater's next item, their own assignments, skipping
    judgments.py    checking an answer and storing it exactly once
    media.py        the videos of clips campaigns: the media folder, who may fetch which video
    panels.py       rater attributes, campaign options, assignment balanced across groups, coverage
    practice.py     practice rounds on gold items before live items

A function reads and validates in a plain transaction (no lock), then writes in one short
write transaction (`db.writing`) that re-reads, locked, the rows the write depends on: one
submission is one transaction, and the write lock is held only for the write's own
statements. Errors are `FeedbackError`s carrying an HTTP status and a message a rater can
act on (errors.py).
"""

from __future__ import annotations

from alignloop.feedback import chat_db  # noqa: F401  the chat page's and the arena's tables (chat_store.py)
from alignloop.feedback.assignments import (ASSIGN_ATTEMPTS, AssignmentView, display_order, gated_campaigns,
                                            get_assignment, mark_shown, next_assignment, next_assignment_view, skip_assignment,
                                            view_of)
from alignloop.feedback.campaigns import (CampaignInfo, ItemText, campaign_info, check_campaign_settings,
                                          chat_messages, check_samples, clip_media, create_campaign, find_campaign,
                                          find_campaign_id, item_text, parse_jsonl)
from alignloop.feedback.errors import Conflict, FeedbackError, Invalid, NotFound
from alignloop.feedback.judgments import (JudgmentView, check_ranking, judge, letter, ranking_from_ranks,
                                          submit_judgment)
from alignloop.feedback.limits import is_db_id
from alignloop.feedback.media import (add_media, attach_videos, check_video, default_media_dir, is_digest, media_dir, media_for,
                                      media_path, missing_media)
from alignloop.feedback.panels import (CampaignOptions, check_options, coverage, missing_attributes,
                                       parse_attributes, rater_attributes, set_attributes)
from alignloop.feedback.practice import PracticeState, practice_curves, practice_state, submit_practice
from alignloop.feedback.raters import (Caller, add_rater, caller, caller_for_api_token, end_sessions, find_rater,
                                       hash_token, rater_for_api_token, rater_for_login_token, redeem_login_token,
                                       setting)
from alignloop.feedback.schema import alembic_config, head_revision, migrate, open_db, schema_revision

__all__ = [
    "CampaignOptions", "PracticeState", "check_options", "coverage", "gated_campaigns", "missing_attributes",
    "parse_attributes", "practice_curves", "practice_state", "rater_attributes", "set_attributes", "submit_practice",
    "ASSIGN_ATTEMPTS", "AssignmentView", "CampaignInfo", "Caller", "Conflict", "FeedbackError", "Invalid", "ItemText",
    "JudgmentView", "NotFound", "add_rater", "alembic_config", "caller", "caller_for_api_token", "campaign_info",
    "add_media", "attach_videos", "chat_messages", "check_campaign_settings", "check_ranking", "check_samples", "check_video", "clip_media",
    "create_campaign", "default_media_dir", "display_order", "end_sessions",
    "find_campaign", "find_campaign_id", "find_rater", "get_assignment", "hash_token", "head_revision",
    "is_db_id", "is_digest", "item_text", "judge", "letter", "mark_shown", "media_dir", "media_for", "media_path",
    "migrate", "missing_media", "next_assignment", "next_assignment_view",
    "open_db", "parse_jsonl", "ranking_from_ranks", "rater_for_api_token", "rater_for_login_token",
    "redeem_login_token", "schema_revision", "setting", "skip_assignment", "submit_judgment", "view_of",
]
