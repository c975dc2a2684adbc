"""API tokens for programmatic raters; time spent per judgment (backfilled).

Revision 0001 stored only when a judgment's page was first shown and when it was submitted;
this revision adds `judgments.time_spent_s` and fills it for the judgments already stored,
and `raters.api_token_hash` for the JSON API's Bearer tokens.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN + a unique index: no table rebuild, so SQLite never drops `raters`
    # (which, with foreign keys on, would cascade into assignments).
    op.add_column("raters", sa.Column("api_token_hash", sa.String(64), nullable=True))
    op.create_index("ix_raters_api_token_hash", "raters", ["api_token_hash"], unique=True)
    op.add_column("judgments", sa.Column("time_spent_s", sa.Float(), nullable=True))

    judgments = sa.table(
        "judgments",
        sa.column("id", sa.Integer()),
        sa.column("shown_at", sa.DateTime()),
        sa.column("submitted_at", sa.DateTime()),
        sa.column("time_spent_s", sa.Float()),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(judgments.c.id, judgments.c.shown_at, judgments.c.submitted_at).where(judgments.c.shown_at.is_not(None))
    ).all()
    for jid, shown, submitted in rows:
        seconds = max(0.0, (submitted - shown).total_seconds())
        conn.execute(sa.update(judgments).where(judgments.c.id == jid).values(time_spent_s=seconds))


def downgrade() -> None:
    op.drop_column("judgments", "time_spent_s")
    op.drop_index("ix_raters_api_token_hash", table_name="raters")
    op.drop_column("raters", "api_token_hash")
