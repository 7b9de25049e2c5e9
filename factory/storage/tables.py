"""The side tables beside the ledger's own, and `schema_metadata()`: every table the migrations build.

Storage layer: the workforce (annotators, their events, gold items), guideline questions, compliance
(raw payloads) and delivery modules keep their tables here, below the code that uses them, so the
schema can be gathered without importing that code.  Each group keeps its own `MetaData`: a module
still creates its tables on first use (`wf_metadata.create_all`, ...), and the ledger's own tables
(`factory.storage.ledger.metadata`) are still the ones a fresh embedded ledger creates when it opens.
"""
from __future__ import annotations

import sqlalchemy as sa

from factory.storage.ledger import metadata as ledger_metadata

# ----------------------------------------------------------------------------- workforce
wf_metadata = sa.MetaData()

annotators = sa.Table(
    "annotators", wf_metadata,
    sa.Column("annotator_id", sa.String(64), primary_key=True),
    sa.Column("tier", sa.String(16), nullable=False),
    sa.Column("domains", sa.Text, nullable=False),
    sa.Column("languages", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # active | suspended
    sa.Column("max_open_tasks", sa.Integer, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)

annotator_events = sa.Table(
    "annotator_events", wf_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("annotator_id", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)

gold_items = sa.Table(
    "gold_items", wf_metadata,
    sa.Column("dataset", sa.String(64), primary_key=True),
    sa.Column("item_id", sa.String(64), primary_key=True),
    sa.Column("label", sa.String(128), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)

# guideline questions live on the workforce metadata
questions_table = sa.Table(
    "guideline_questions", wf_metadata,
    sa.Column("question_id", sa.String(32), primary_key=True),
    sa.Column("dataset", sa.String(64), nullable=False, index=True),
    sa.Column("item_id", sa.String(64), nullable=False),
    sa.Column("expert", sa.String(64), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("guideline_version", sa.String(64), nullable=False),
    sa.Column("similar_items", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # open | requeued
    sa.Column("resolved_in", sa.String(64)),
    sa.Column("created_at", sa.String(32), nullable=False),
)

# ----------------------------------------------------------------------------- compliance
compliance_metadata = sa.MetaData()

raw_payloads = sa.Table(
    "raw_payloads", compliance_metadata,
    sa.Column("dataset", sa.String(64), primary_key=True),
    sa.Column("item_id", sa.String(64), primary_key=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("categories", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)

# ----------------------------------------------------------------------------- delivery
delivery_metadata = sa.MetaData()
deliveries = sa.Table(
    "deliveries", delivery_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.String(64), nullable=False, unique=True),  # idempotency key of the request
    sa.Column("client", sa.String(128), nullable=False, index=True),
    sa.Column("dataset", sa.String(64), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("content_id", sa.String(64)),
    sa.Column("file", sa.String(255), nullable=False),
    sa.Column("split", sa.String(64)),
    sa.Column("items", sa.Integer, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("tokenizer", sa.String(32), nullable=False),
    sa.Column("delivered_at", sa.String(32), nullable=False),
)


def schema_metadata() -> sa.MetaData:
    """Every table the migrations build: the ledger's and the side tables above (workforce, guideline
    questions, compliance raw payloads, deliveries), which their modules create on first use as well."""
    merged = sa.MetaData()
    for md in (ledger_metadata, wf_metadata, compliance_metadata, delivery_metadata):
        for t in md.tables.values():
            t.to_metadata(merged)
    return merged
