"""What the rating and admin pages show of panels and practice rounds (no routes: pages.py and
panel_pages.py both read these, so neither imports the other's module for them).

`pending_step`: a campaign that still has items for the rater but wants their attributes
(`ask`) or a practice round before its live items. `admin_panels`: per campaign with options,
its coverage per group and its raters' practice curves.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from alignloop.feedback import store
from alignloop.feedback.assignments import _WITH_FREE_IN
from alignloop.feedback.campaigns import CampaignInfo
from alignloop.feedback.db import Campaign
from alignloop.feedback.raters import Caller


def pending_step(s: Session, rater: Caller) -> tuple[str, CampaignInfo] | None:
    """("profile", campaign) when a campaign with items left for the rater asks for attributes
    they have not given; ("practice", campaign) when its practice round is not done; else None."""
    conn = s.connection()
    for cid in sorted(store.gated_campaigns(conn, rater.id)):
        if conn.execute(_WITH_FREE_IN, {"rater": rater.id, "campaign": cid}).scalar() is None:
            continue  # nothing left for them there: nothing to ask
        info = store.campaign_info(conn, cid)
        if store.missing_attributes(info.options, store.rater_attributes(conn, rater.id)):
            return "profile", info
        state = store.practice_state(conn, rater.id, info)
        if state is not None and state.status == "todo":
            return "practice", info
    return None


def admin_panels(s: Session) -> list[dict[str, Any]]:
    """Per ready campaign with options: its options, coverage per group and practice curves."""
    out = []
    for c in s.query(Campaign).filter(Campaign.ready, Campaign.options.is_not(None)).order_by(Campaign.id):
        opts = store.CampaignOptions.model_validate(c.options)
        entry: dict[str, Any] = {"id": c.id, "name": c.name, "options": opts.stored()}
        if opts.panel is not None:
            entry["coverage"] = store.coverage(s, c.id, opts.panel)
        if opts.practice is not None:
            entry["practice"] = store.practice_curves(s, c.id, opts.practice.pass_)
            entry["practice_pass"] = opts.practice.pass_
        out.append(entry)
    s.commit()
    return out
