"""Practice rounds: a new rater answers M gold items first and, after each, sees the known
answer and its explanation; live items start once a round's mean score reaches `pass`.

A round (an *attempt*) is M gold items of the campaign drawn for this rater and attempt
(seeded: `random.Random(f"{seed}:practice:{rater}:{attempt}")`), in that order. Each answer
is scored against the gold answer (`answer_score`) and stored as a `PracticeAnswer`, never
as a judgment: practice answers are not exported, not counted in agreement or gold
accuracy, and the campaign's progress does not count them. After M answers the round is
over: a mean score >= `pass` passes; below it, `on_fail: retry` starts attempt + 1 (a new
draw of M gold items, possibly some seen before), `on_fail: stop` ends the campaign for this
rater (they get none of its live items; the admin page shows them as failed).

A gold item a rater practised on is never mixed into their live items as a gold check
(they have seen its answer): assignments.py leaves it out of their gold draws.

Scores: rank / compare: the share of the gold answer's strictly ordered pairs the rater
orders the same way, a tie by the rater counting half (as calibration.py scores gold
accuracy); a gold answer without a strict pair scores 1 for any answer. Thumbs: the share
of responses labelled as the gold labels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignloop.feedback.campaigns import CampaignInfo, item_text
from alignloop.feedback.db import Item, PracticeAnswer, Rater, utcnow, writing
from alignloop.feedback.errors import Conflict, NotFound
from alignloop.feedback.judgments import _answer
from alignloop.feedback.panels import PracticeOption

P, I = PracticeAnswer.__table__, Item.__table__
_GOLD_IDS = select(I.c.id).where(I.c.campaign_id == bindparam("campaign"), I.c.is_gold.is_(True)).order_by(I.c.id)
_ANSWERS = (select(P.c.attempt, P.c.item_id, P.c.score).where(P.c.campaign_id == bindparam("campaign"),
                                                              P.c.rater_id == bindparam("rater")).order_by(P.c.id))
_GOLD_ANSWER = select(I.c.gold_answer, I.c.explanation).where(I.c.id == bindparam("item"))


def _tiers(ranking: list[Any]) -> list[list[int]]:
    return [e if isinstance(e, list) else [e] for e in ranking]


def ranking_score(gold: list[Any], ranking: list[Any]) -> float:
    """Share of the gold ranking's strict pairs (i above j) the answer orders the same way, a
    tie in the answer counting 1/2; 1.0 when the gold ranking has no strict pair.

    gold [0, 1, 2] and answer [0, [1, 2]]: pairs (0,1) right, (0,2) right, (1,2) tied -> 2.5 / 3."""
    g = {x: t for t, tier in enumerate(_tiers(gold)) for x in tier}
    a = {x: t for t, tier in enumerate(_tiers(ranking)) for x in tier}
    credit, n = 0.0, 0
    for i, j in combinations(sorted(g), 2):
        if g[i] == g[j]:
            continue
        n += 1
        if a[i] == a[j]:
            credit += 0.5
        elif (a[i] < a[j]) == (g[i] < g[j]):
            credit += 1.0
    return credit / n if n else 1.0


def labels_score(gold: list[int], labels: list[int]) -> float:
    """Share of responses labelled as the gold labels."""
    return sum(int(a == b) for a, b in zip(gold, labels)) / len(gold)


def practice_items(seed: int, rater_id: int, attempt: int, gold_ids: list[int], m: int) -> list[int]:
    """The M gold items of this rater's attempt, in order (seeded, so a page reload keeps them)."""
    return random.Random(f"{seed}:practice:{rater_id}:{attempt}").sample(sorted(gold_ids), min(m, len(gold_ids)))


@dataclass(frozen=True)
class PracticeState:
    """Where a rater stands in a campaign's practice round."""

    campaign_id: int
    status: Literal["todo", "passed", "failed"]
    attempt: int  # the current (or last) attempt, from 1
    items: tuple[int, ...]  # the current attempt's gold items
    answered: tuple[int, ...]  # of those, answered so far
    scores: tuple[float, ...]  # the current attempt's scores so far
    history: tuple[tuple[int, float], ...]  # every practice answer: (attempt, score), oldest first
    threshold: float
    m: int

    @property
    def next_item(self) -> int | None:
        if self.status != "todo":
            return None
        return next((i for i in self.items if i not in self.answered), None)

    @property
    def mean(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None


def round_outcome(scores: list[float], m: int, threshold: float) -> Literal["open", "passed", "failed"]:
    """A round of M practice answers: open until M answers, then passed if the mean of the first
    M (two browser tabs racing may store one more) is >= threshold."""
    if len(scores) < m:
        return "open"
    return "passed" if sum(scores[:m]) / m >= threshold - 1e-12 else "failed"


def practice_state(conn: Connection, rater_id: int, campaign: CampaignInfo) -> PracticeState | None:
    """The rater's practice state in `campaign`; None when it has no practice round."""
    opt: PracticeOption | None = campaign.options.practice if campaign.options else None
    if opt is None:
        return None
    rows = conn.execute(_ANSWERS, {"campaign": campaign.id, "rater": rater_id}).all()
    gold_ids = list(conn.execute(_GOLD_IDS, {"campaign": campaign.id}).scalars())
    m = min(opt.items, len(gold_ids))
    history = tuple((r.attempt, float(r.score)) for r in rows)
    attempt = 1
    while True:
        these = [r for r in rows if r.attempt == attempt]
        scores = [float(r.score) for r in these]
        outcome = round_outcome(scores, m, opt.pass_)
        items = tuple(practice_items(campaign.seed, rater_id, attempt, gold_ids, m))
        state = dict(campaign_id=campaign.id, attempt=attempt, items=items,
                     answered=tuple(r.item_id for r in these), scores=tuple(scores), history=history,
                     threshold=opt.pass_, m=m)
        if outcome == "open":
            return PracticeState(status="todo", **state)
        if outcome == "passed":
            return PracticeState(status="passed", **state)
        if opt.on_fail == "stop":
            return PracticeState(status="failed", **state)
        attempt += 1


@dataclass(frozen=True)
class PracticeResult:
    """What the rater is shown after a practice answer."""

    score: float
    gold_answer: list[Any]
    explanation: str | None
    state: PracticeState


def submit_practice(s: Session, rater_id: int, campaign: CampaignInfo, item_id: int, ranking: Any = None,
                    labels: Any = None) -> PracticeResult:
    """Store the rater's practice answer (in display positions) on `item_id`, which must be
    their current practice item; its score and the new state. A resent answer to an item of
    the attempt already answered is a Conflict."""
    conn = s.connection()
    state = practice_state(conn, rater_id, campaign)
    if state is None:
        raise NotFound(f"campaign {campaign.name!r} has no practice round")
    if state.status != "todo" or item_id not in state.items:
        raise Conflict("This practice item is not yours to answer now.")
    if item_id in state.answered:
        raise Conflict("This practice item was already answered.")
    item = item_text(conn, item_id)
    order = practice_order(campaign, rater_id, state.attempt, item_id, len(item.responses))
    answer = _answer(campaign.kind, len(item.responses), order, ranking, labels, [])
    gold, explanation = conn.execute(_GOLD_ANSWER, {"item": item_id}).one()
    score = labels_score(gold, answer["labels"]) if campaign.kind == "thumbs" else ranking_score(gold, answer["ranking"])
    try:
        with writing(s):
            s.execute(insert(PracticeAnswer).values(
                campaign_id=campaign.id, rater_id=rater_id, item_id=item_id, attempt=state.attempt,
                ranking=answer["ranking"], labels=answer["labels"], display_order=order, score=score,
                submitted_at=utcnow()))
    except IntegrityError:
        raise Conflict("This practice item was already answered.") from None
    new = practice_state(s.connection(), rater_id, campaign)
    s.commit()
    return PracticeResult(score, gold, explanation, new)


def practice_order(campaign: CampaignInfo, rater_id: int, attempt: int, item_id: int, k: int) -> list[int]:
    """The order the rater is shown a practice item in (fixed per campaign, rater, attempt)."""
    order = list(range(k))
    random.Random(f"{campaign.seed}:practice-order:{item_id}:{rater_id}:{attempt}").shuffle(order)
    return order


def practised_items(conn: Connection, rater_id: int, campaign_id: int) -> set[int]:
    return set(conn.execute(select(P.c.item_id).where(P.c.rater_id == rater_id, P.c.campaign_id == campaign_id))
               .scalars())


def practice_curves(s: Session, campaign_id: int, threshold: float) -> list[dict[str, Any]]:
    """Per rater who practised in the campaign: each answer's (attempt, score) in order, the
    running mean of the current attempt and the outcome of each attempt (admin page)."""
    rows = s.execute(select(Rater.name, P.c.attempt, P.c.score).join(Rater, Rater.id == P.c.rater_id)
                     .where(P.c.campaign_id == campaign_id).order_by(Rater.name, P.c.id)).all()
    s.commit()
    out: dict[str, dict[str, Any]] = {}
    for name, attempt, score in rows:
        d = out.setdefault(name, {"rater": name, "answers": [], "attempts": {}})
        d["answers"].append({"attempt": attempt, "score": float(score)})
        d["attempts"].setdefault(attempt, []).append(float(score))
    for d in out.values():
        d["attempts"] = [{"attempt": a, "n": len(v), "mean": sum(v) / len(v)} for a, v in sorted(d["attempts"].items())]
    return list(out.values())
