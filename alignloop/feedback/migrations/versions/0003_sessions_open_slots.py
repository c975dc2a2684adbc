"""Revocable sessions, free places per item, campaigns loaded in short transactions, and the
session signing key out of the database.

- `raters.session_version`: a session cookie is valid only while it carries the rater's
  current number; logout, a re-issued login link and "sign out everywhere" raise it.
- `items.open_slots`: free places of a regular item (raters_per_item minus the slots taken,
  backfilled from the assignments); 0 on gold items. The partial index `ix_items_open` finds
  the free items of a campaign without counting every item's assignments; `ix_items_gold`
  its gold items without reading every item.
- `campaigns.ready`: false while a new campaign's items are being inserted (existing
  campaigns are ready).
- The `session_secret` row of `settings` is deleted: the key now lives outside the database
  (ALIGNLOOP_SECRET_KEY or a key file), so a copy of the database cannot sign a session. On
  SQLite its bytes are overwritten (secure_delete), not left in a free page. Every existing
  session ends with this upgrade.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OPEN = sa.text("open_slots > 0")


def upgrade() -> None:
    # Plain ADD COLUMN with a server default: no table rebuild (see revision 2).
    op.add_column("raters", sa.Column("session_version", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("campaigns", sa.Column("ready", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.add_column("items", sa.Column("open_slots", sa.Integer(), nullable=False, server_default="0"))

    items = sa.table("items", sa.column("id"), sa.column("campaign_id"), sa.column("is_gold"),
                     sa.column("open_slots"))
    campaigns = sa.table("campaigns", sa.column("id"), sa.column("raters_per_item"))
    assignments = sa.table("assignments", sa.column("item_id"), sa.column("slot"))
    places = (sa.select(campaigns.c.raters_per_item).where(campaigns.c.id == items.c.campaign_id)
              .scalar_subquery())
    taken = (sa.select(sa.func.count()).select_from(assignments)
             .where(assignments.c.item_id == items.c.id, assignments.c.slot.is_not(None)).scalar_subquery())
    op.execute(sa.update(items).where(items.c.is_gold == sa.false()).values(open_slots=places - taken))
    op.create_index("ix_items_open", "items", ["campaign_id", "id"], sqlite_where=OPEN, postgresql_where=OPEN)
    op.create_index("ix_items_gold", "items", ["campaign_id", "is_gold"])

    settings = sa.table("settings", sa.column("key"))
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:  # overwrite the deleted key's bytes instead of leaving them in a free page
        op.execute("PRAGMA secure_delete = ON")
    op.execute(sa.delete(settings).where(settings.c.key == "session_secret"))
    if sqlite:
        op.execute("PRAGMA secure_delete = OFF")


def downgrade() -> None:
    op.drop_index("ix_items_gold", table_name="items")
    op.drop_index("ix_items_open", table_name="items")
    op.drop_column("items", "open_slots")
    op.drop_column("campaigns", "ready")
    op.drop_column("raters", "session_version")
