"""Every database operation of the chat page and the arena (tables in chat_db.py), as functions
taking a `Session`: starting a conversation and its turns, storing answers, thumbs and arena
votes exactly once, and reading a conversation back.

A turn's answers are generated outside any transaction (the web layer streams them); what a
turn needs is handed out as `Job`s (which model, which side and attempt, the messages it
answers), and each finished answer is stored on its own with `save_answer`. A thumb or a
vote is one short write transaction; its unique constraint (one per answer, one per battle,
one per idempotency key) settles retries and races: the same submission again returns the
stored one (`created` False), a different one is a Conflict.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignloop.feedback.chat_db import MODES, OUTCOMES, ArenaBattle, ArenaVote, ChatConversation, ChatMessage, ChatThumb
from alignloop.feedback.db import locked, utcnow, writing
from alignloop.feedback.errors import Conflict, Invalid, NotFound
from alignloop.feedback.limits import MAX_COMMENT, MAX_KEY, is_db_id

SIDE_NAMES = ("Model A", "Model B")


class Job(NamedTuple):
    """One answer to generate: `model` answers `messages` (the conversation so far) on `side`
    (arena: 0 left, 1 right; chat: 0) as attempt `attempt` of turn `turn`."""

    conversation_id: int
    turn: int
    side: int
    attempt: int
    model: str
    messages: list[dict[str, str]]


@dataclass
class TurnView:
    """One turn of a conversation as it is stored: the user's message, the answers per side
    (every attempt, oldest first), the arena battle and its vote."""

    turn: int
    user: ChatMessage
    answers: dict[int, list[ChatMessage]] = field(default_factory=dict)
    battle: ArenaBattle | None = None
    vote: ArenaVote | None = None

    def answer(self, side: int) -> ChatMessage | None:
        """The newest attempt on `side` (the one the conversation goes on from), or None."""
        attempts = self.answers.get(side)
        return attempts[-1] if attempts else None

    def kept(self) -> ChatMessage | None:
        """The answer the next turn sees: chat: the newest attempt; arena: the preferred side
        (the right one when it won, else the left one)."""
        return self.answer(1 if self.vote is not None and self.vote.outcome == "b" else 0)

    def complete(self, mode: str) -> bool:
        """Can the conversation go on: chat: the turn has an answer; arena: its battle is voted."""
        return self.answer(0) is not None if mode == "chat" else self.vote is not None


def context(turns: Sequence[TurnView], upto: int) -> list[dict[str, str]]:
    """The messages a model answers at turn `upto`: each earlier turn's user message and the
    answer it kept, then turn `upto`'s user message."""
    out: list[dict[str, str]] = []
    for t in turns[:upto + 1]:
        out.append({"role": "user", "content": t.user.content})
        kept = t.kept() if t.turn < upto else None
        if kept is not None:
            out.append({"role": "assistant", "content": kept.content})
    return out


# --- reading ---------------------------------------------------------------------------------

def get_conversation(s: Session, rater_id: int, conversation_id: int) -> ChatConversation:
    """The rater's own conversation (anyone else's, or a missing one: NotFound)."""
    conv = s.get(ChatConversation, conversation_id, populate_existing=True) if is_db_id(conversation_id) else None
    if conv is None or conv.rater_id != rater_id:
        raise NotFound(f"no conversation {conversation_id} for you")
    return conv


def turns_of(s: Session, conversation_ids: Sequence[int]) -> dict[int, list[TurnView]]:
    """Per conversation its turns, in order (a few queries for any number of conversations)."""
    if not conversation_ids:
        return {}
    ids = list(conversation_ids)
    out: dict[int, dict[int, TurnView]] = {c: {} for c in ids}
    msgs = s.scalars(select(ChatMessage).where(ChatMessage.conversation_id.in_(ids))
                     .order_by(ChatMessage.conversation_id, ChatMessage.turn, ChatMessage.role.desc(),
                               ChatMessage.side, ChatMessage.attempt)
                     .execution_options(populate_existing=True)).all()
    for m in msgs:  # role desc: "user" before "assistant"
        if m.role == "user":
            out[m.conversation_id][m.turn] = TurnView(m.turn, m)
        else:
            out[m.conversation_id][m.turn].answers.setdefault(m.side, []).append(m)
    rows = s.execute(select(ArenaBattle, ArenaVote).outerjoin(ArenaVote, ArenaVote.battle_id == ArenaBattle.id)
                     .where(ArenaBattle.conversation_id.in_(ids))
                     .execution_options(populate_existing=True)).all()
    for battle, vote in rows:
        t = out[battle.conversation_id].get(battle.turn)
        if t is not None:
            t.battle, t.vote = battle, vote
    return {c: [turns[k] for k in sorted(turns)] for c, turns in out.items()}


def thumbs_of(s: Session, message_ids: Sequence[int]) -> dict[int, ChatThumb]:
    if not message_ids:
        return {}
    return {t.message_id: t for t in s.scalars(select(ChatThumb).where(ChatThumb.message_id.in_(list(message_ids))))}


# --- conversations and turns -----------------------------------------------------------------

def create_conversation(s: Session, rater_id: int, mode: str, model: str | None) -> ChatConversation:
    if mode not in MODES:
        raise Invalid(f"mode: chat or arena, not {mode!r}")
    with writing(s):
        conv = ChatConversation(rater_id=rater_id, mode=mode, model=model if mode == "chat" else None,
                                created_at=utcnow())
        s.add(conv)
    return conv


def draw_pair(models: Sequence[str], rng: random.Random) -> tuple[str, str]:
    """Two different models in random order: (left, right)."""
    if len(models) < 2:
        raise Invalid("The arena needs at least two models; this server has one.")
    a, b = rng.sample(list(models), 2)
    return a, b


def start_turn(s: Session, rater_id: int, conversation_id: int, content: str, turn: int, max_turns: int,
               pair: tuple[str, str] | None = None) -> tuple[list[Job], ArenaBattle | None, int]:
    """Store the user's message of turn `turn` (the next one: a resent message is a Conflict) and,
    in the arena, the battle of the drawn `pair`. Returns the jobs to answer it, the battle and
    the user message's id."""
    if not 0 <= turn < max_turns:
        raise Invalid(f"This conversation has reached its {max_turns} turns; start a new one.")
    try:
        with writing(s):
            conv = s.scalar(locked(select(ChatConversation).where(ChatConversation.id == conversation_id)))
            if conv is None or conv.rater_id != rater_id:
                raise NotFound(f"no conversation {conversation_id} for you")
            turns = turns_of(s, [conv.id])[conv.id]
            if turn != len(turns):
                raise Conflict(f"This message was sent already (the conversation is at turn {len(turns)}); reload the page.")
            if turns and not turns[-1].complete(conv.mode):
                raise Conflict("Vote on the last answers first." if conv.mode == "arena"
                               else "The last message has no answer yet: regenerate it first.")
            now = utcnow()
            user = ChatMessage(conversation_id=conv.id, turn=turn, role="user", side=0, attempt=0, content=content,
                               sampling={}, created_at=now)
            s.add(user)
            battle = None
            if conv.mode == "arena":
                assert pair is not None
                battle = ArenaBattle(conversation_id=conv.id, turn=turn, model_a=pair[0], model_b=pair[1], created_at=now)
                s.add(battle)
            s.flush()
            messages = context([*turns, TurnView(turn, user)], turn)
            models = [conv.model] if conv.mode == "chat" else list(pair)
            jobs = [Job(conv.id, turn, side, 0, m, messages) for side, m in enumerate(models)]
            return jobs, battle, user.id
    except IntegrityError:  # the same message won a race on another connection
        raise Conflict("This message was sent already; reload the page.") from None


def regenerate(s: Session, rater_id: int, conversation_id: int) -> list[Job]:
    """The jobs that answer the last turn again: chat: a new attempt; arena: the sides still
    without an answer (an answered battle cannot be regenerated)."""
    conv = get_conversation(s, rater_id, conversation_id)
    turns = turns_of(s, [conv.id])[conv.id]
    if not turns:
        raise Conflict("Nothing to regenerate: send a message first.")
    last = turns[-1]
    messages = context(turns, last.turn)
    if conv.mode == "chat":
        attempts = last.answers.get(0, [])
        return [Job(conv.id, last.turn, 0, attempts[-1].attempt + 1 if attempts else 0, conv.model, messages)]
    if last.vote is not None:
        raise Conflict("This battle was voted on; send a new message for a new battle.")
    missing = [side for side in (0, 1) if last.answer(side) is None]
    if not missing:
        raise Conflict("Both answers are here: vote on them.")
    models = (last.battle.model_a, last.battle.model_b)
    return [Job(conv.id, last.turn, side, 0, models[side], messages) for side in missing]


def save_answer(s: Session, job: Job, content: str, sampling: dict[str, Any], finish_reason: str | None,
                generation_s: float) -> int:
    """Store a finished answer of `job`; returns its message id (a place already taken: Conflict)."""
    try:
        with writing(s):
            m = ChatMessage(conversation_id=job.conversation_id, turn=job.turn, role="assistant", side=job.side,
                            attempt=job.attempt, content=content, model=job.model, sampling=sampling,
                            finish_reason=finish_reason, generation_s=round(generation_s, 3), created_at=utcnow())
            s.add(m)
        return m.id
    except IntegrityError:
        raise Conflict("This answer was stored already.") from None


# --- thumbs and votes ------------------------------------------------------------------------

class ThumbView(NamedTuple):
    id: int
    message_id: int
    up: bool
    reason: str
    created_at: dt.datetime


class VoteView(NamedTuple):
    id: int
    battle_id: int
    outcome: str
    flagged: bool
    models: tuple[str, str]  # (left, right): revealed once the vote is in
    created_at: dt.datetime


def _check_key(key: str | None) -> None:
    if key is not None and (not isinstance(key, str) or not key or len(key) > MAX_KEY):
        raise Invalid(f"idempotency key: 1 to {MAX_KEY} characters")


def _check_text(value: str, field_: str) -> str:
    if not isinstance(value, str) or len(value.strip()) > MAX_COMMENT:
        raise Invalid(f"{field_}: {len(str(value).strip())} characters; at most {MAX_COMMENT}")
    return value.strip()


def _thumb_view(t: ChatThumb) -> ThumbView:
    return ThumbView(t.id, t.message_id, t.up, t.reason, t.created_at)


def thumb(s: Session, rater_id: int, message_id: int, up: bool, reason: str = "",
          key: str | None = None) -> tuple[ThumbView, bool]:
    """A thumb up or down (with an optional reason) under one of the rater's chat answers, stored
    once: the same thumb again (or a retry with its key) returns the stored one; a different
    thumb on a thumbed answer, or a key used for another answer, is a Conflict."""
    _check_key(key)
    reason = _check_text(reason, "reason")
    if type(up) is not bool:
        raise Invalid("up: true (thumb up) or false (thumb down)")
    msg = s.get(ChatMessage, message_id) if is_db_id(message_id) else None
    conv = s.get(ChatConversation, msg.conversation_id) if msg is not None else None
    if msg is None or conv is None or conv.rater_id != rater_id or msg.role != "assistant":
        raise NotFound(f"no answer {message_id} for you")
    if conv.mode != "chat":
        raise Invalid("Arena answers take a vote, not a thumb.")

    def replay() -> tuple[ThumbView, bool]:
        stored = s.scalars(select(ChatThumb).where((ChatThumb.message_id == message_id)
                                                   | (ChatThumb.idempotency_key == key) if key else
                                                   ChatThumb.message_id == message_id)
                           .execution_options(populate_existing=True)).all()
        own = next((t for t in stored if t.message_id == message_id), None)
        if own is not None and ((key is not None and own.idempotency_key == key) or (own.up, own.reason) == (up, reason)):
            return _thumb_view(own), False
        if own is None and stored:
            raise Conflict("This idempotency key was used for another thumb.")
        raise Conflict("This answer has its thumb already.")

    try:
        with writing(s):
            if s.scalar(select(func.count()).select_from(ChatThumb).where(
                    (ChatThumb.message_id == message_id) | (ChatThumb.idempotency_key == key) if key else
                    ChatThumb.message_id == message_id)):
                raise _Replay()
            t = ChatThumb(message_id=message_id, rater_id=rater_id, up=up, reason=reason, idempotency_key=key,
                          created_at=utcnow())
            s.add(t)
        return _thumb_view(t), True
    except (_Replay, IntegrityError):
        s.rollback()
        return replay()


class _Replay(Exception):
    """Inside a write: the row is there already (answered outside the transaction)."""


def _vote_view(v: ArenaVote, b: ArenaBattle) -> VoteView:
    return VoteView(v.id, v.battle_id, v.outcome, v.flagged, (b.model_a, b.model_b), v.created_at)


def _own_battle(s: Session, rater_id: int, battle_id: int) -> tuple[ArenaBattle, TurnView]:
    b = s.get(ArenaBattle, battle_id, populate_existing=True) if is_db_id(battle_id) else None
    conv = s.get(ChatConversation, b.conversation_id) if b is not None else None
    if b is None or conv is None or conv.rater_id != rater_id:
        raise NotFound(f"no battle {battle_id} for you")
    turn = next(t for t in turns_of(s, [conv.id])[conv.id] if t.turn == b.turn)
    return b, turn


def vote(s: Session, rater_id: int, battle_id: int, outcome: str, flagged: bool = False, reason: str = "",
         key: str | None = None) -> tuple[VoteView, bool]:
    """The rater's verdict on one of their battles once both answers are in: "a" (left better),
    "b" (right better), "tie" or "both_bad"; `flagged`: a model revealed its identity. Stored
    once: the same vote again (or a retry with its key) returns the stored one, with the two
    models' names; a different vote on a voted battle is a Conflict."""
    _check_key(key)
    reason = _check_text(reason, "reason")
    if outcome not in OUTCOMES:
        raise Invalid(f"outcome: one of {', '.join(OUTCOMES)}, not {outcome!r}")
    if type(flagged) is not bool:
        raise Invalid("flagged: true or false")
    b, turn = _own_battle(s, rater_id, battle_id)

    def replay() -> tuple[VoteView, bool]:
        stored = s.scalars(select(ArenaVote).where((ArenaVote.battle_id == battle_id) | (ArenaVote.idempotency_key == key)
                                                   if key else ArenaVote.battle_id == battle_id)
                           .execution_options(populate_existing=True)).all()
        own = next((v for v in stored if v.battle_id == battle_id), None)
        if own is not None and ((key is not None and own.idempotency_key == key) or own.outcome == outcome):
            return _vote_view(own, b), False
        if own is None and stored:
            raise Conflict("This idempotency key was used for another vote.")
        raise Conflict("This battle has its vote already.")

    if turn.vote is not None:
        return replay()
    if turn.answer(0) is None or turn.answer(1) is None:
        raise Conflict("Both answers must be complete before you vote (regenerate the missing one).")
    try:
        with writing(s):
            if s.scalar(select(func.count()).select_from(ArenaVote).where(
                    (ArenaVote.battle_id == battle_id) | (ArenaVote.idempotency_key == key) if key else
                    ArenaVote.battle_id == battle_id)):
                raise _Replay()
            v = ArenaVote(battle_id=battle_id, rater_id=rater_id, outcome=outcome, flagged=flagged,
                          flag_reason=reason if flagged else "", idempotency_key=key, created_at=utcnow())
            s.add(v)
        return _vote_view(v, b), True
    except (_Replay, IntegrityError):
        s.rollback()
        return replay()


def flag(s: Session, rater_id: int, battle_id: int, reason: str = "") -> VoteView:
    """Flag a voted battle after the names were shown (a model said who it is): it leaves the
    leaderboard and the export unless they include flagged battles. Flagging twice is flagging."""
    reason = _check_text(reason, "reason")
    b, turn = _own_battle(s, rater_id, battle_id)
    if turn.vote is None:
        raise Conflict("Vote first (the vote form can flag the battle too).")
    with writing(s):
        v = s.scalar(locked(select(ArenaVote).where(ArenaVote.battle_id == battle_id)))
        if not v.flagged:
            v.flagged, v.flag_reason = True, reason
    return _vote_view(v, b)
