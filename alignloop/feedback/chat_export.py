"""What the chat page and the arena collected, as the records the other stages read
(DESIGN.md section 2), and as the leaderboard's battles and thumbs.

    thumbs.jsonl       binary feedback, one per thumb: the conversation up to the answer's
                       prompt, the answer, label 1 (up) / 0 (down)          -> alignloop kto, quality
    comparisons.jsonl  one per arena vote: the shared conversation, [left, right] answers,
                       ranking [0, 1] | [1, 0] | [[0, 1]] (tie; both bad is a tie with
                       meta.both_bad)                                      -> alignloop reward, dpo
    prompts.jsonl      every user message with the conversation before it, once each
                                                                           -> the next round's sampling

A flagged battle (a model revealed its identity) is left out of the comparisons and the
leaderboard unless `include_flagged`. An empty answer cannot be a record (the readers refuse
an empty response): it is counted in `skipped` instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import false, select
from sqlalchemy.orm import Session

from alignloop.data.records import BinaryFeedback, Comparison, PromptRecord
from alignloop.feedback.chat_db import ArenaBattle, ArenaVote, ChatConversation, ChatMessage, ChatThumb
from alignloop.feedback.chat_store import TurnView, context, thumbs_of, turns_of
from alignloop.feedback.db import Rater

RANKING = {"a": [0, 1], "b": [1, 0], "tie": [[0, 1]], "both_bad": [[0, 1]]}


def _iso(t) -> str:
    return t.replace(microsecond=0).isoformat() + "Z"


class Collected(NamedTuple):
    """Every conversation with its rater's name and its turns."""

    conversations: list[tuple[ChatConversation, str, list[TurnView]]]
    thumbs: dict[int, Any]  # message id -> ChatThumb


def collect(s: Session) -> Collected:
    rows = s.execute(select(ChatConversation, Rater.name).join(Rater, Rater.id == ChatConversation.rater_id)
                     .order_by(ChatConversation.id)).all()
    turns = turns_of(s, [c.id for c, _ in rows])
    message_ids = [m.id for ts in turns.values() for t in ts for ms in t.answers.values() for m in ms]
    return Collected([(c, name, turns[c.id]) for c, name in rows], thumbs_of(s, message_ids))


def thumb_records(data: Collected) -> tuple[list[BinaryFeedback], int]:
    """One binary-feedback record per thumb (oldest first), and how many were skipped (empty answer)."""
    rows, skipped = [], 0
    for conv, rater, turns in data.conversations:
        for t in turns:
            for m in t.answers.get(0, []) if conv.mode == "chat" else []:
                th = data.thumbs.get(m.id)
                if th is None:
                    continue
                if not m.content.strip():
                    skipped += 1
                    continue
                rows.append(((th.created_at, th.id), BinaryFeedback(
                    id=f"chat/t{th.id}", messages=context(turns, t.turn), response=m.content, label=1 if th.up else 0,
                    rater=rater, source="human",
                    meta={"model": m.model, "rater": rater, "reason": th.reason, "conversation_id": conv.id,
                          "message_id": m.id, "turn": t.turn, "attempt": m.attempt, "sampling": m.sampling,
                          "finish_reason": m.finish_reason, "answered_at": _iso(m.created_at),
                          "rated_at": _iso(th.created_at)})))
    rows.sort(key=lambda r: r[0])
    return [r for _, r in rows], skipped


def battle_rows(data: Collected, include_flagged: bool = False) -> list[tuple[ChatConversation, str, TurnView]]:
    """The voted battles (flagged ones only with `include_flagged`), oldest vote first."""
    rows = [(conv, rater, t) for conv, rater, turns in data.conversations if conv.mode == "arena" for t in turns
            if t.vote is not None and (include_flagged or not t.vote.flagged)]
    rows.sort(key=lambda r: (r[2].vote.created_at, r[2].vote.id))
    return rows


def comparison_records(data: Collected, include_flagged: bool = False) -> tuple[list[Comparison], int]:
    """One comparison per arena vote, and how many were skipped (an empty answer)."""
    out, skipped = [], 0
    for conv, rater, t in battle_rows(data, include_flagged):
        left, right = t.answer(0), t.answer(1)
        if not left.content.strip() or not right.content.strip():
            skipped += 1
            continue
        turns = next(ts for c, _, ts in data.conversations if c.id == conv.id)
        v, b = t.vote, t.battle
        out.append(Comparison(
            id=f"arena/b{b.id}", messages=context(turns, t.turn), responses=[left.content, right.content],
            ranking=RANKING[v.outcome], rater=rater, source="human",
            meta={"models": [b.model_a, b.model_b], "both_bad": v.outcome == "both_bad", "outcome": v.outcome,
                  "flagged": v.flagged, "flag_reason": v.flag_reason, "battle_id": b.id, "conversation_id": conv.id,
                  "turn": t.turn, "sampling": [left.sampling, right.sampling],
                  "finish_reasons": [left.finish_reason, right.finish_reason], "voted_at": _iso(v.created_at)}))
    return out, skipped


def prompt_records(data: Collected) -> list[PromptRecord]:
    """Every user message with the conversation before it (chat and arena), each distinct
    conversation once, oldest first."""
    out, seen = [], set()
    for conv, _, turns in data.conversations:
        for t in turns:
            messages = context(turns, t.turn)
            key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
            if key in seen:
                continue
            seen.add(key)
            out.append(PromptRecord(id=f"chat/m{t.user.id}", messages=messages,
                                    meta={"conversation_id": conv.id, "mode": conv.mode, "turn": t.turn}))
    return out


def arena_inputs(s: Session, include_flagged: bool = False):
    """The leaderboard's inputs: a `quality.arena.Battle` per arena vote (flagged ones only with
    `include_flagged`) and a `Thumb` per thumb under a chat answer (two queries)."""
    from alignloop.quality.arena import Battle, Thumb

    votes = (select(ArenaBattle.model_a, ArenaBattle.model_b, ArenaVote.outcome)
             .join(ArenaVote, ArenaVote.battle_id == ArenaBattle.id).order_by(ArenaVote.id))
    if not include_flagged:
        votes = votes.where(ArenaVote.flagged == false())
    thumbs = (select(ChatMessage.model, ChatThumb.up).join(ChatThumb, ChatThumb.message_id == ChatMessage.id)
              .order_by(ChatThumb.id))
    return [Battle(*row) for row in s.execute(votes)], [Thumb(*row) for row in s.execute(thumbs)]


class Written(NamedTuple):
    thumbs: int
    comparisons: int
    prompts: int
    skipped: int  # votes and thumbs on an empty answer


def write_export(data: Collected, out: Path, include_flagged: bool = False) -> Written:
    """thumbs.jsonl, comparisons.jsonl and prompts.jsonl in folder `out` (each written whole to a
    temporary file, then renamed)."""
    from alignloop.data.io import write_jsonl

    out.mkdir(parents=True, exist_ok=True)
    thumbs, skipped_t = thumb_records(data)
    comparisons, skipped_c = comparison_records(data, include_flagged)
    prompts = prompt_records(data)
    write_jsonl(out / "thumbs.jsonl", thumbs)
    write_jsonl(out / "comparisons.jsonl", comparisons)
    write_jsonl(out / "prompts.jsonl", prompts)
    return Written(len(thumbs), len(comparisons), len(prompts), skipped_t + skipped_c)


def arena_from_db(db: str, include_flagged: bool = False):
    """The leaderboard's inputs (`arena_inputs`) from a feedback database, which is only read:
    neither created nor migrated. Raises ValueError for a missing or outdated database."""
    from alignloop.feedback import store

    if "://" not in db and not Path(db).expanduser().exists():
        raise ValueError(f"--db {db}: no such database file")
    engine, sessions = store.open_db(db, upgrade=False)
    try:
        have, head = store.schema_revision(engine), store.head_revision()
        if have != head:
            raise ValueError(f"--db {db}: schema revision {have}, this version reads {head}; any "
                             "`alignloop feedback` command (e.g. status) upgrades it")
        with sessions() as s:
            return arena_inputs(s, include_flagged)
    finally:
        engine.dispose()
