"""Storage: the ledger's schema and every table (`ledger`, `tables`: `schema_metadata()`), the hash chain, the
event log and the task queue (`ledger.Ledger`), and the versioned schema (`db`: the migration policy,
`migrations/`: the Alembic revisions run by `factory db upgrade`).

Import the modules themselves (`from factory.storage.ledger import Ledger`); this package re-exports nothing,
so opening it costs nothing and imports no layer above it.
"""
