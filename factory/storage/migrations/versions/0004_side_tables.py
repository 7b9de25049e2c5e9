"""Tables that were created on first use: the workforce (annotators, their events, gold items),
guideline questions, raw payloads of redacted items, and the delivery ledger.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("annotator_events", "annotators", "deliveries", "gold_items", "guideline_questions", "raw_payloads")


def upgrade() -> None:
    # a database opened by older code may hold some of them already (created on first use)
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if 'annotator_events' not in have:
        op.create_table('annotator_events',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('annotator_id', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('data', sa.Text(), nullable=False),
        sa.Column('created_at', sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint('id')
        )
    if 'annotator_events' not in have:
        op.create_index(op.f('ix_annotator_events_annotator_id'), 'annotator_events', ['annotator_id'], unique=False)
    if 'annotators' not in have:
        op.create_table('annotators',
        sa.Column('annotator_id', sa.String(length=64), nullable=False),
        sa.Column('tier', sa.String(length=16), nullable=False),
        sa.Column('domains', sa.Text(), nullable=False),
        sa.Column('languages', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('max_open_tasks', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint('annotator_id')
        )
    if 'deliveries' not in have:
        op.create_table('deliveries',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('delivery_id', sa.String(length=64), nullable=False),
        sa.Column('client', sa.String(length=128), nullable=False),
        sa.Column('dataset', sa.String(length=64), nullable=False),
        sa.Column('version', sa.String(length=32), nullable=False),
        sa.Column('content_id', sa.String(length=64), nullable=True),
        sa.Column('file', sa.String(length=255), nullable=False),
        sa.Column('split', sa.String(length=64), nullable=True),
        sa.Column('items', sa.Integer(), nullable=False),
        sa.Column('bytes', sa.BigInteger(), nullable=False),
        sa.Column('tokens', sa.BigInteger(), nullable=False),
        sa.Column('tokenizer', sa.String(length=32), nullable=False),
        sa.Column('delivered_at', sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('delivery_id')
        )
    if 'deliveries' not in have:
        op.create_index(op.f('ix_deliveries_client'), 'deliveries', ['client'], unique=False)
    if 'gold_items' not in have:
        op.create_table('gold_items',
        sa.Column('dataset', sa.String(length=64), nullable=False),
        sa.Column('item_id', sa.String(length=64), nullable=False),
        sa.Column('label', sa.String(length=128), nullable=False),
        sa.Column('source', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint('dataset', 'item_id')
        )
    if 'guideline_questions' not in have:
        op.create_table('guideline_questions',
        sa.Column('question_id', sa.String(length=32), nullable=False),
        sa.Column('dataset', sa.String(length=64), nullable=False),
        sa.Column('item_id', sa.String(length=64), nullable=False),
        sa.Column('expert', sa.String(length=64), nullable=False),
        sa.Column('note', sa.Text(), nullable=False),
        sa.Column('guideline_version', sa.String(length=64), nullable=False),
        sa.Column('similar_items', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('resolved_in', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint('question_id')
        )
    if 'guideline_questions' not in have:
        op.create_index(op.f('ix_guideline_questions_dataset'), 'guideline_questions', ['dataset'], unique=False)
    if 'raw_payloads' not in have:
        op.create_table('raw_payloads',
        sa.Column('dataset', sa.String(length=64), nullable=False),
        sa.Column('item_id', sa.String(length=64), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('categories', sa.Text(), nullable=False),
        sa.Column('created_at', sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint('dataset', 'item_id')
        )


def downgrade() -> None:
    for t in TABLES:
        op.drop_table(t)
