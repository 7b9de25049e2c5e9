"""Smart dispatch: tasks.required_tier (the least tier that may answer) and tasks.domain.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    have = _columns("tasks")
    with op.batch_alter_table("tasks") as t:  # batch mode: SQLite rebuilds the table, PostgreSQL alters it
        if "required_tier" not in have:
            t.add_column(sa.Column("required_tier", sa.String(16)))
        if "domain" not in have:
            t.add_column(sa.Column("domain", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as t:
        t.drop_column("domain")
        t.drop_column("required_tier")
