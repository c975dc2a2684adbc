"""The chat page and the arena: conversations, their messages, thumbs under answers, arena
battles and their votes (feedback/chat_db.py).

- `chat_conversations`: one rater's chat with a model (mode chat) or series of battles (arena).
- `chat_messages`: user messages and answers, numbered by turn; an answer keeps its model,
  sampling settings, finish reason and generation time; arena answers their side (0 left,
  1 right), chat answers their attempt (regenerate). One row per (conversation, turn, role,
  side, attempt).
- `chat_thumbs`: up or down (and a reason) under an answer, one per answer.
- `arena_battles`: the two models drawn for one turn of an arena conversation (left, right).
- `arena_votes`: the rater's verdict on a battle (a, b, tie, both_bad) and whether it was
  flagged (a model revealed its identity), one per battle.
Existing tables are unchanged.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chat_conversations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("rater_id", sa.Integer(), sa.ForeignKey("raters.id", ondelete="CASCADE"), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_chat_conversations_rater_id", "chat_conversations", ["rater_id"])
    op.create_table(
        "chat_messages",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("conversation_id", sa.Integer(), sa.ForeignKey("chat_conversations.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("side", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("sampling", sa.JSON(), nullable=False),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("generation_s", sa.Float(), nullable=True),
        sa.UniqueConstraint("conversation_id", "turn", "role", "side", "attempt", name="uq_chat_message_place"),
    )
    op.create_table(
        "chat_thumbs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("message_id", sa.Integer(), sa.ForeignKey("chat_messages.id", ondelete="CASCADE"),
                  nullable=False, unique=True),
        sa.Column("rater_id", sa.Integer(), sa.ForeignKey("raters.id", ondelete="CASCADE"), nullable=False),
        sa.Column("up", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.String(100), nullable=True, unique=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_chat_thumbs_rater_id", "chat_thumbs", ["rater_id"])
    op.create_table(
        "arena_battles",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("conversation_id", sa.Integer(), sa.ForeignKey("chat_conversations.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("model_a", sa.String(200), nullable=False),
        sa.Column("model_b", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("conversation_id", "turn", name="uq_arena_battle_turn"),
    )
    op.create_table(
        "arena_votes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("battle_id", sa.Integer(), sa.ForeignKey("arena_battles.id", ondelete="CASCADE"),
                  nullable=False, unique=True),
        sa.Column("rater_id", sa.Integer(), sa.ForeignKey("raters.id", ondelete="CASCADE"), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("flag_reason", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.String(100), nullable=True, unique=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_arena_votes_rater_id", "arena_votes", ["rater_id"])


def downgrade() -> None:
    op.drop_index("ix_arena_votes_rater_id", table_name="arena_votes")
    op.drop_table("arena_votes")
    op.drop_table("arena_battles")
    op.drop_index("ix_chat_thumbs_rater_id", table_name="chat_thumbs")
    op.drop_table("chat_thumbs")
    op.drop_table("chat_messages")
    op.drop_index("ix_chat_conversations_rater_id", table_name="chat_conversations")
    op.drop_table("chat_conversations")
