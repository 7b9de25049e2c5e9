"""The annotation factory's domain core: plain Python, no Dagster.

Public entry points: `factory.aggregate` (fuse answers), `factory.aggregate_spans` (fuse BIO span answers), `factory.pipeline` (the batch steps),
`factory.ingest.ingest`, `factory.release.release`, `factory.storage.ledger.Ledger`.
"""
from factory.engine import aggregate, aggregate_full
from factory.engine.multilabel import aggregate_multilabel
from factory.engine.spans import aggregate_spans

__all__ = ["aggregate", "aggregate_full", "aggregate_multilabel", "aggregate_spans"]
__version__ = "0.1.0"
