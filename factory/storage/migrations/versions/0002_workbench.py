"""Workbench: task leases (task_assignments), indexes for the queue (tasks by creation) and for label events by
actor, users, web sessions and
failed logins (factory/users.py).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _has(table: str) -> bool:
    return sa.inspect(op.get_bind()).has_table(table)


def _has_index(table: str, name: str) -> bool:
    return any(ix["name"] == name for ix in sa.inspect(op.get_bind()).get_indexes(table))


def upgrade() -> None:
    # embedded ledgers may have these already (create_all ran before this migration existed): create what is missing
    if not _has("task_assignments"):
        op.create_table(
            "task_assignments",
            sa.Column("task_id", sa.String(64), primary_key=True),
            sa.Column("assignee", sa.String(128), nullable=False),
            sa.Column("assigned_at", sa.String(32), nullable=False),
            sa.Column("lease_until", sa.String(32), nullable=False),
            sa.Column("n_assignments", sa.Integer, nullable=False),
        )
    if not _has_index("task_assignments", "ix_task_assignments_assignee"):
        op.create_index("ix_task_assignments_assignee", "task_assignments", ["assignee"])
    if not _has_index("tasks", "ix_tasks_queue"):
        op.create_index("ix_tasks_queue", "tasks", ["created_at", "task_id"])
    if not _has_index("label_events", "ix_events_actor"):
        op.create_index("ix_events_actor", "label_events", ["actor", "kind"])
    if not _has("users"):
        op.create_table(
            "users",
            sa.Column("name", sa.String(128), primary_key=True),
            sa.Column("role", sa.String(16), nullable=False),
            sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
            sa.Column("created_at", sa.String(32), nullable=False),
            sa.Column("disabled", sa.Boolean, nullable=False),
        )
    if not _has("web_sessions"):
        op.create_table(
            "web_sessions",
            sa.Column("session_sha256", sa.String(64), primary_key=True),
            sa.Column("name", sa.String(128), nullable=False),
            sa.Column("csrf_token", sa.String(64), nullable=False),
            sa.Column("created_at", sa.String(32), nullable=False),
            sa.Column("expires_at", sa.String(32), nullable=False),
        )
    if not _has("login_failures"):
        op.create_table(
            "login_failures",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("key", sa.String(300), nullable=False),
            sa.Column("at", sa.Float, nullable=False),
        )
    if not _has_index("login_failures", "ix_login_failures_key"):
        op.create_index("ix_login_failures_key", "login_failures", ["key"])


def downgrade() -> None:
    op.drop_index("ix_events_actor", table_name="label_events")
    op.drop_index("ix_tasks_queue", table_name="tasks")
    for name in ("login_failures", "web_sessions", "users", "task_assignments"):
        op.drop_table(name)
