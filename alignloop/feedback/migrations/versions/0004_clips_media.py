"""Clips campaigns: videos of the media folder, which response of an item each one shows, and
"can't tell" answers.

- `media`: one row per video file of the media folder (feedback/media.py), keyed by the
  sha256 of its bytes, with its content type and size.
- `item_media`: response `position` of an item is video `sha256`; indexed by `sha256`, so
  "does this rater have an open assignment on an item showing this video" is one join.
- `judgments.abstained`: the rater answered "can't tell" (no ranking is stored); false for
  every judgment stored before.
Existing campaigns, items and judgments are unchanged.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "media",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("content_type", sa.String(32), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "item_media",
        sa.Column("item_id", sa.Integer(), sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("sha256", sa.String(64), sa.ForeignKey("media.sha256"), nullable=False),
    )
    op.create_index("ix_item_media_sha256", "item_media", ["sha256"])
    # Plain ADD COLUMN with a server default: no table rebuild (see revision 2).
    op.add_column("judgments", sa.Column("abstained", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("judgments", "abstained")
    op.drop_index("ix_item_media_sha256", table_name="item_media")
    op.drop_table("item_media")
    op.drop_table("media")
