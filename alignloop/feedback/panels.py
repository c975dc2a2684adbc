"""Diverse panels: rater attributes, a campaign's options, and assignment balanced across groups.

**Attributes.** A rater carries free key/value attributes (`region=eu`, `language=de`,
`expert=yes`), set by an admin (`alignloop feedback set-attributes`, the admin page) or by the
rater on first login when a campaign asks for them (`ask`). They are exported with every
judgment (`meta.rater_attributes`), so the quality tools group raters by any of them.

**Options** of a campaign (`CampaignOptions`, stored in `campaigns.options`):

    panel:    {attribute: region, min_groups: 2}  each item is judged by raters of at least
              `min_groups` different values of `attribute`
    ask:      [region, language]                  a rater without these attributes is asked
                                                  for them before their first item
    practice: {items: 3, pass: 0.8, on_fail: retry}   a practice round first (practice.py)

**Balanced assignment** (`pick_item`). The rater, of group g (their value of the attribute;
None without one), may take a free place of an item whose raters so far (open or done, not
skipped) cover the groups S, with f free places left. The item still needs
m = max(0, n - |S|) new groups, where n = min(min_groups, |S| + the number of other groups
that still have a rater who never had this item). The rater is *new* to the item when g is
not None and g not in S. A rater who is not new may take a place only while f > m (the last
m places are held for the missing groups); among the items they may take, items they are new
to come first (that is what spreads every group over the items), then the oldest item.

It never deadlocks on an empty group: a group with no rater, or whose every rater already
had (answered or skipped) the item, does not count in n, so the item is filled by whoever
is there. When only one group exists at all, items fill as in a campaign without the
option, and the admin page's coverage shows which items lack groups. A place held for a
group waits only for a rater of that group who exists and has not had the item; adding or
removing a group's raters (or their attribute) changes n at once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.orm import Session

from alignloop.feedback.db import ITEM_IS_OPEN, Assignment, Item, Rater, writing
from alignloop.feedback.errors import Invalid, NotFound

MAX_ATTRIBUTES = 20
MAX_VALUE = 100
KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,39}$")
CANDIDATES = 200  # free items looked at per assignment in a panel campaign


class PanelOption(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attribute: str = Field(..., description="Rater attribute whose values are the groups (e.g. region).")
    min_groups: int = Field(2, ge=1, le=100, description="Each item needs raters of at least this many groups.")


class PracticeOption(BaseModel):
    items: int = Field(..., ge=1, le=100, description="Gold items a new rater answers first, each followed by its "
                       "known answer and explanation.")
    pass_: float = Field(0.8, alias="pass", gt=0.0, le=1.0, description="Mean practice score needed to start live items.")
    on_fail: Literal["retry", "stop"] = Field("retry", description="retry: another round of practice items; stop: "
                                              "no live items for this rater in the campaign.")
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CampaignOptions(BaseModel):
    """The panel and practice options of a campaign (JSON in `campaigns.options`)."""

    model_config = ConfigDict(extra="forbid")
    panel: PanelOption | None = None
    ask: list[str] = Field(default_factory=list, description="Attributes a rater is asked for on first login.")
    practice: PracticeOption | None = None

    def stored(self) -> dict[str, Any] | None:
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=False)
        if not data.get("ask"):
            data.pop("ask", None)
        return data or None

    @property
    def gated(self) -> bool:
        """A rater may have to do something (attributes, practice) before live items."""
        return bool(self.ask) or self.practice is not None


def check_options(raw: Any) -> CampaignOptions | None:
    """Campaign options from a dict (the CLI, a form, the database), or Invalid naming the field."""
    if raw is None or raw == {}:
        return None
    if isinstance(raw, CampaignOptions):
        opts = raw
    else:
        try:
            opts = CampaignOptions.model_validate(raw)
        except ValidationError as err:
            e = err.errors()[0]
            where = ".".join(str(x) for x in e["loc"])
            raise Invalid(f"options.{where}: {e['msg']}") from None
    for key in ([opts.panel.attribute] if opts.panel else []) + opts.ask:
        if not KEY.match(key):
            raise Invalid(f"options: attribute {key!r}: letters, digits, _ . -, starting with a letter (at most 40)")
    return opts if opts.stored() else None


def options_of(stored: dict[str, Any] | None) -> CampaignOptions | None:
    return None if not stored else CampaignOptions.model_validate(stored)


# --- attributes -------------------------------------------------------------------------------

def check_attributes(attrs: Any, where: str = "attributes") -> dict[str, str]:
    """{key: value} with keys like `region` and non-empty values of at most 100 characters
    (an empty value removes the key in `set_attributes`)."""
    if not isinstance(attrs, dict):
        raise Invalid(f"{where}: give key=value pairs")
    out = {}
    for k, v in attrs.items():
        if not isinstance(k, str) or not KEY.match(k):
            raise Invalid(f"{where}: key {k!r}: letters, digits, _ . -, starting with a letter (at most 40)")
        if not isinstance(v, str) or len(v.strip()) > MAX_VALUE or not v.strip().isprintable():
            raise Invalid(f"{where}: {k}: a value of at most {MAX_VALUE} printable characters")
        out[k] = v.strip()
    if len(out) > MAX_ATTRIBUTES:
        raise Invalid(f"{where}: at most {MAX_ATTRIBUTES} attributes")
    return out


def parse_attributes(text: str, where: str = "attributes") -> dict[str, str]:
    """'region=eu, expert=yes' -> {"region": "eu", "expert": "yes"}; 'region=' removes region."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise Invalid(f"{where}: {part!r} is not key=value")
        out[key.strip()] = value
    return check_attributes(out, where)


def set_attributes(s: Session, rater_id: int, attrs: dict[str, str]) -> dict[str, str]:
    """Merge `attrs` into the rater's attributes (an empty value removes the key); the result."""
    attrs = check_attributes(attrs)
    with writing(s):
        rater = s.get(Rater, rater_id, with_for_update=True, populate_existing=True)
        if rater is None:
            raise NotFound(f"no rater {rater_id}")
        merged = {**(rater.attributes or {}), **attrs}
        merged = {k: v for k, v in merged.items() if v}
        if len(merged) > MAX_ATTRIBUTES:
            raise Invalid(f"attributes: at most {MAX_ATTRIBUTES} per rater")
        s.execute(update(Rater).where(Rater.id == rater_id).values(attributes=merged))
    return merged


R, A, I = Rater.__table__, Assignment.__table__, Item.__table__
_ATTRS = select(R.c.attributes).where(R.c.id == bindparam("rater"))
_ALL_ATTRS = select(R.c.id, R.c.attributes)


def rater_attributes(conn: Connection, rater_id: int) -> dict[str, str]:
    return dict(conn.execute(_ATTRS, {"rater": rater_id}).scalar() or {})


def missing_attributes(opts: CampaignOptions | None, attrs: dict[str, str]) -> list[str]:
    """The attributes the campaign asks for (`ask`, and the panel's attribute when asked) that
    the rater has not given."""
    if opts is None:
        return []
    return [k for k in opts.ask if not attrs.get(k)]


# --- balanced assignment ---------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """A free item as the panel sees it: the groups of its raters so far (not skipped), its free
    places, and the groups that still have a rater who never had it."""

    item_id: int
    groups: tuple[str | None, ...]
    free: int
    reachable: frozenset[str]


def groups_needed(c: Candidate, min_groups: int) -> int:
    """m = max(0, n - |S|), n = min(min_groups, |S ∪ reachable|) (module docstring)."""
    covered = {g for g in c.groups if g is not None}
    n = min(min_groups, len(covered | c.reachable))
    return max(0, n - len(covered))


def pick_item(candidates: Sequence[Candidate], group: str | None, min_groups: int) -> int | None:
    """The item a rater of `group` is given (module docstring), or None when every free place
    they could take is held for another group. Candidates are in item order."""
    new, other = [], []
    for c in candidates:
        covered = {g for g in c.groups if g is not None}
        is_new = group is not None and group not in covered
        if is_new:
            new.append(c.item_id)
        elif c.free > groups_needed(c, min_groups):
            other.append(c.item_id)
    return (new or other or [None])[0]


def _free_for(rater_id: int):
    mine = select(A.c.item_id).where(A.c.rater_id == rater_id)
    return I.c.id.not_in(mine)


def diverse_item(conn: Connection, rater_id: int, campaign_id: int, panel: PanelOption) -> int | None:
    """Inside the write transaction: the free item a panel campaign gives this rater (on
    PostgreSQL the candidate rows are locked, skipping rows another rater is being given)."""
    q = (select(I.c.id, I.c.open_slots).where(I.c.campaign_id == campaign_id, ITEM_IS_OPEN, _free_for(rater_id))
         .order_by(I.c.id).limit(CANDIDATES))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(of=I, skip_locked=True)
    rows = conn.execute(q).all()
    if not rows:
        return None
    groups = {rid: (attrs or {}).get(panel.attribute) for rid, attrs in conn.execute(_ALL_ATTRS)}
    by_group: dict[str, set[int]] = {}
    for rid, g in groups.items():
        if g:
            by_group.setdefault(g, set()).add(rid)
    ids = [r.id for r in rows]
    had: dict[int, list[tuple[int, str]]] = {i: [] for i in ids}
    for item_id, rid, status in conn.execute(select(A.c.item_id, A.c.rater_id, A.c.status)
                                             .where(A.c.item_id.in_(ids))):
        had[item_id].append((rid, status))
    cands = []
    for r in rows:
        raters_had = {rid for rid, _ in had[r.id]} | {rater_id}
        taken = tuple(groups.get(rid) for rid, status in had[r.id] if status != "skipped")
        reachable = frozenset(g for g, members in by_group.items() if members - raters_had)
        cands.append(Candidate(r.id, taken, r.open_slots, reachable | ({groups.get(rater_id)} - {None})))
    return pick_item(cands, groups.get(rater_id), panel.min_groups)


# --- coverage (admin page) -------------------------------------------------------------------

def coverage(s: Session, campaign_id: int, panel: PanelOption) -> dict[str, Any]:
    """Per group of the panel's attribute: raters, judgments and items judged; and how many
    regular items have raters of at least `min_groups` groups (done judgments only)."""
    groups = {rid: (attrs or {}).get(panel.attribute) or "(none)" for rid, attrs in s.execute(_ALL_ATTRS)}
    rows = s.execute(select(A.c.item_id, A.c.rater_id).join(I, I.c.id == A.c.item_id)
                     .where(A.c.campaign_id == campaign_id, A.c.status == "done", I.c.is_gold.is_(False))).all()
    n_items = s.scalar(select(func.count()).select_from(Item).where(Item.campaign_id == campaign_id,
                                                                     Item.is_gold.is_(False)))
    per_group: dict[str, dict[str, Any]] = {}
    per_item: dict[int, set[str]] = {}
    for item_id, rid in rows:
        g = groups.get(rid, "(none)")
        d = per_group.setdefault(g, {"judgments": 0, "items": set(), "raters": set()})
        d["judgments"] += 1
        d["items"].add(item_id)
        d["raters"].add(rid)
        if g != "(none)":
            per_item.setdefault(item_id, set()).add(g)
    members: dict[str, int] = {}
    for g in groups.values():
        members[g] = members.get(g, 0) + 1
    out_groups = [{"group": g, "members": members.get(g, 0), "active_raters": len(d["raters"]),
                   "judgments": d["judgments"], "items": len(d["items"])} for g, d in sorted(per_group.items())]
    for g in sorted(set(members) - set(per_group)):
        if g != "(none)":
            out_groups.append({"group": g, "members": members[g], "active_raters": 0, "judgments": 0, "items": 0})
    hist: dict[int, int] = {}
    for gs in per_item.values():
        hist[len(gs)] = hist.get(len(gs), 0) + 1
    s.commit()
    return {"attribute": panel.attribute, "min_groups": panel.min_groups, "items": n_items or 0,
            "items_covered": sum(1 for gs in per_item.values() if len(gs) >= panel.min_groups),
            "items_by_groups": dict(sorted(hist.items())), "groups": out_groups}
