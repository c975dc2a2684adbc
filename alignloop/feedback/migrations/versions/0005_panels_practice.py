"""Diverse panels and practice rounds: rater attributes, campaign options, gold explanations
and practice answers.

- `raters.attributes`: free key/value attributes of a rater (region, language, expert, ...),
  a JSON object; `{}` for every rater stored before.
- `campaigns.options`: a campaign's panel and practice options (feedback/panels.py,
  feedback/practice.py), a JSON object or NULL (no options: every campaign stored before).
- `items.explanation`: a gold item's explanation of its known answer (shown after a practice
  answer); NULL for every item stored before.
- `practice_answers`: one row per practice answer of a rater in a campaign (attempt, item,
  answer, score), never a judgment: never exported as a label, never in agreement.
Existing campaigns, items, raters and judgments are unchanged.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN with a server default: no table rebuild (see revision 2).
    op.add_column("raters", sa.Column("attributes", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    op.add_column("campaigns", sa.Column("options", sa.JSON(), nullable=True))
    op.add_column("items", sa.Column("explanation", sa.Text(), nullable=True))
    op.create_table(
        "practice_answers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("campaign_id", sa.Integer(), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("rater_id", sa.Integer(), sa.ForeignKey("raters.id", ondelete="CASCADE"), nullable=False),
        sa.Column("item_id", sa.Integer(), sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("ranking", sa.JSON(), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=True),
        sa.Column("display_order", sa.JSON(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("submitted_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("campaign_id", "rater_id", "attempt", "item_id", name="uq_practice_answer"),
    )
    op.create_index("ix_practice_answers_rater", "practice_answers", ["rater_id", "campaign_id"])


def downgrade() -> None:
    op.drop_index("ix_practice_answers_rater", table_name="practice_answers")
    op.drop_table("practice_answers")
    op.drop_column("items", "explanation")
    op.drop_column("campaigns", "options")
    op.drop_column("raters", "attributes")
