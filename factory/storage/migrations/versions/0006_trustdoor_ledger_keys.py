"""Per-ledger secrets: the key of the unguessable public task ids (HMAC of the internal task key).

Revision ID: 0005_trustdoor
Revises: 0005_ingest
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_trustdoor"
down_revision = "0005_ingest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # an embedded ledger opened by newer code may hold it already (created on first use)
    if "ledger_keys" in set(sa.inspect(op.get_bind()).get_table_names()):
        return
    op.create_table("ledger_keys",
                    sa.Column("name", sa.String(length=64), nullable=False),
                    sa.Column("value", sa.String(length=128), nullable=False),
                    sa.Column("created_at", sa.String(length=32), nullable=False),
                    sa.PrimaryKeyConstraint("name"))


def downgrade() -> None:
    op.drop_table("ledger_keys")
