"""Initial ledger schema: specs, batches, items, duplicates, quarantine, tasks, label events, chain heads,
check results, releases (the schema of factory/storage/ledger.py as of the first migration).

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spec_versions",
        sa.Column("dataset", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(32), primary_key=True),
        sa.Column("guideline_version", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("recorded_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "batches",
        sa.Column("batch_id", sa.String(64), primary_key=True),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("source_path", sa.Text, nullable=False),
        sa.Column("source_sha256", sa.String(64), nullable=False),
        sa.Column("n_rows", sa.Integer, nullable=False),
        sa.Column("n_items", sa.Integer, nullable=False),
        sa.Column("n_duplicates", sa.Integer, nullable=False),
        sa.Column("n_quarantined", sa.Integer, nullable=False),
        sa.Column("spec_version", sa.String(32), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.UniqueConstraint("dataset", "source_sha256", name="uq_batch_source"),
    )
    op.create_index("ix_batches_dataset", "batches", ["dataset"])
    op.create_table(
        "items",
        sa.Column("dataset", sa.String(64), primary_key=True),
        sa.Column("item_id", sa.String(64), primary_key=True),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("meta", sa.Text, nullable=False),
        sa.Column("source_file", sa.Text, nullable=False),
        sa.Column("source_row", sa.Integer, nullable=False),
    )
    op.create_index("ix_items_batch_id", "items", ["batch_id"])
    op.create_table(
        "duplicates",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("item_id", sa.String(64), nullable=False),
        sa.Column("source_file", sa.Text, nullable=False),
        sa.Column("source_row", sa.Integer, nullable=False),
        sa.Column("first_batch_id", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
    )
    op.create_index("ix_duplicates_batch_id", "duplicates", ["batch_id"])
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("source_file", sa.Text, nullable=False),
        sa.Column("source_row", sa.Integer, nullable=False),
        sa.Column("field", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("raw", sa.Text, nullable=False),
    )
    op.create_index("ix_quarantine_batch_id", "quarantine", ["batch_id"])
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("item_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("suggestion", sa.String(128)),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(64)),
    )
    op.create_index("ix_tasks_batch_id", "tasks", ["batch_id"])
    op.create_table(
        "label_events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(32), nullable=False, unique=True),
        sa.Column("dedup_key", sa.String(255), unique=True),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("item_id", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(64)),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("label", sa.String(128)),
        sa.Column("confidence", sa.Float),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("supersedes", sa.String(32)),
        sa.Column("spec_version", sa.String(32)),
        sa.Column("guideline_version", sa.String(64)),
        sa.Column("run_id", sa.String(64)),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_events_item", "label_events", ["dataset", "item_id"])
    op.create_index("ix_events_batch_kind", "label_events", ["dataset", "batch_id", "kind"])
    op.create_index("ix_events_task", "label_events", ["task_id"])
    op.create_table(
        "chain_heads",
        sa.Column("dataset", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "check_results",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("asset", sa.String(64), nullable=False),
        sa.Column("standard", sa.String(64), nullable=False),
        sa.Column("success", sa.Boolean, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("run_id", sa.String(64)),
        sa.Column("created_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "releases",
        sa.Column("dataset", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(32), primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("n_items", sa.Integer, nullable=False),
        sa.Column("batches", sa.Text, nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    for name in ("releases", "check_results", "chain_heads", "label_events", "tasks", "quarantine",
                 "duplicates", "items", "batches", "spec_versions"):
        op.drop_table(name)
