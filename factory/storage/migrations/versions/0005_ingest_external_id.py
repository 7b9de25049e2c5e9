"""The user's own item ids and the duplicate key: items.external_id (spec task.id_column), items.text_key
(hash of the NFKC / zero-width-free / whitespace-collapsed text), duplicates.external_id.

Revision ID: 0005_ingest
Revises: 0004
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_ingest"
down_revision = "0004"
branch_labels = None
depends_on = None


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    have = _columns("items")
    with op.batch_alter_table("items") as t:  # batch mode: SQLite rebuilds the table, PostgreSQL alters it
        if "external_id" not in have:
            t.add_column(sa.Column("external_id", sa.String(256)))
        if "text_key" not in have:
            t.add_column(sa.Column("text_key", sa.String(64)))
    indexes = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("items")}
    if "ix_items_external_id" not in indexes:
        op.create_index("ix_items_external_id", "items", ["dataset", "external_id"])
    if "ix_items_text_key" not in indexes:
        op.create_index("ix_items_text_key", "items", ["dataset", "text_key"])
    if "external_id" not in _columns("duplicates"):
        with op.batch_alter_table("duplicates") as t:
            t.add_column(sa.Column("external_id", sa.String(256)))
    # items ingested before this revision have no text_key: duplicates of them are still caught by item id
    # (the NFC hash); only zero-width / NFKC / whitespace variants of such old items are not.


def downgrade() -> None:
    op.drop_index("ix_items_text_key", "items")
    op.drop_index("ix_items_external_id", "items")
    with op.batch_alter_table("items") as t:
        t.drop_column("text_key")
        t.drop_column("external_id")
    with op.batch_alter_table("duplicates") as t:
        t.drop_column("external_id")
