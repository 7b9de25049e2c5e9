"""Chains per person: label_events.chain and chain_heads keyed by (dataset, chain).

Before this revision every event of a dataset linked into one chain, so every writer of a dataset queued on
one head row.  Existing events and heads become the dataset's root chain (''), whose hashes and published
anchors keep their meaning; new people's events link into their own chains (factory.storage.ledger).

Revision ID: 0007_chains
Revises: 0005_trustdoor
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_chains"
down_revision = "0005_trustdoor"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if "chain" not in {c["name"] for c in sa.inspect(bind).get_columns("label_events")}:
        op.add_column("label_events", sa.Column("chain", sa.String(160), nullable=False, server_default=""))
    if "ix_events_chain" not in {i["name"] for i in sa.inspect(bind).get_indexes("label_events")}:
        op.create_index("ix_events_chain", "label_events", ["dataset", "chain", "seq"])
    if "chain" in {c["name"] for c in sa.inspect(bind).get_columns("chain_heads")}:
        return
    # the primary key changes: rebuild the (small: a row per dataset) table the same way on every database
    heads = [dict(r._mapping) for r in bind.execute(sa.text("SELECT dataset, seq, hash FROM chain_heads"))]
    op.drop_table("chain_heads")
    table = op.create_table(
        "chain_heads",
        sa.Column("dataset", sa.String(64), primary_key=True),
        sa.Column("chain", sa.String(160), primary_key=True, server_default=""),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    if heads:
        op.bulk_insert(table, [dict(h, chain="") for h in heads])


def downgrade() -> None:
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT count(*) FROM chain_heads WHERE chain <> ''")).scalar():
        raise RuntimeError("person chains hold events: a single-chain ledger cannot represent them")
    heads = [dict(r._mapping) for r in bind.execute(sa.text("SELECT dataset, seq, hash FROM chain_heads"))]
    op.drop_table("chain_heads")
    table = op.create_table("chain_heads", sa.Column("dataset", sa.String(64), primary_key=True),
                            sa.Column("seq", sa.Integer, nullable=False), sa.Column("hash", sa.String(64), nullable=False))
    if heads:
        op.bulk_insert(table, heads)
    op.drop_index("ix_events_chain", "label_events")
    with op.batch_alter_table("label_events") as t:
        t.drop_column("chain")
