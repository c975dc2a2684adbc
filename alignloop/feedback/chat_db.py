"""Database models of the chat page and the arena (revision 5), on the feedback app's `Base`.

    Rater 1--* ChatConversation 1--* ChatMessage 1--0..1 ChatThumb
               ChatConversation 1--* ArenaBattle 1--0..1 ArenaVote

A conversation is one rater's chat with one model (`mode` chat) or a series of arena battles
(`mode` arena). Its messages are numbered by `turn` (the n-th user message and its answers).
In chat mode each turn has one user message and one or more answers (`attempt` 0, 1, ...:
regenerate adds one); the newest attempt is the one the conversation goes on from. In arena
mode each turn is one battle: two models drawn at random answer the same conversation
(`side` 0 is the left, "Model A"; 1 the right, "Model B"), the rater votes, and the
conversation goes on from the answer they preferred (the left one for a tie or both bad).
Unique constraints make every row exactly-once under retries: a (conversation, turn, role,
side, attempt) holds one message, a message one thumb, a battle one vote, and each
idempotency key one thumb or vote.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from alignloop.feedback.db import Base, utcnow

MODES = ("chat", "arena")
OUTCOMES = ("a", "b", "tie", "both_bad")  # a: the left answer (Model A) is better; b: the right one


class ChatConversation(Base):
    __tablename__ = "chat_conversations"
    id: Mapped[int] = mapped_column(primary_key=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"), index=True)
    mode: Mapped[str] = mapped_column(String(16))  # chat | arena
    model: Mapped[str | None] = mapped_column(String(200))  # chat mode: the model; arena: NULL (per battle)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ChatMessage(Base):
    __tablename__ = "chat_messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "turn", "role", "side", "attempt", name="uq_chat_message_place"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("chat_conversations.id", ondelete="CASCADE"))
    turn: Mapped[int] = mapped_column(Integer)  # 0, 1, ...: the n-th user message and its answers
    role: Mapped[str] = mapped_column(String(16))  # user | assistant
    side: Mapped[int] = mapped_column(Integer, default=0)  # arena: 0 left (Model A), 1 right (Model B); chat: 0
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # chat: regenerate adds attempt 1, 2, ...
    content: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(200))  # assistant: the model that wrote it
    sampling: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # temperature, top_p, max_tokens
    finish_reason: Mapped[str | None] = mapped_column(String(32))  # the upstream's: stop | length | ...
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    generation_s: Mapped[float | None] = mapped_column(Float)  # assistant: seconds from request to the last token


class ChatThumb(Base):
    __tablename__ = "chat_thumbs"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("chat_messages.id", ondelete="CASCADE"), unique=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"), index=True)
    up: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text, default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ArenaBattle(Base):
    __tablename__ = "arena_battles"
    __table_args__ = (UniqueConstraint("conversation_id", "turn", name="uq_arena_battle_turn"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("chat_conversations.id", ondelete="CASCADE"))
    turn: Mapped[int] = mapped_column(Integer)
    model_a: Mapped[str] = mapped_column(String(200))  # shown on the left, "Model A"
    model_b: Mapped[str] = mapped_column(String(200))  # shown on the right, "Model B"
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ArenaVote(Base):
    __tablename__ = "arena_votes"
    id: Mapped[int] = mapped_column(primary_key=True)
    battle_id: Mapped[int] = mapped_column(ForeignKey("arena_battles.id", ondelete="CASCADE"), unique=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"), index=True)
    outcome: Mapped[str] = mapped_column(String(16))  # a | b | tie | both_bad
    # a model revealed its identity: left out of the leaderboard and the export unless asked for
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    flag_reason: Mapped[str] = mapped_column(Text, default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
