"""Alembic migrations of the ledger schema (run with `factory db upgrade`; see factory/storage/db.py)."""
