"""Versioned ledger schema: Alembic migrations in factory/storage/migrations, applied by `factory db upgrade`.

Policy (checked each time a `Ledger` opens its database, one query):

* SQLite (the embedded default) upgrades itself: a fresh file gets the current tables and is stamped
  at the head revision; an older file is migrated to the head; a file from before migrations existed
  is stamped at the first revision and then migrated.  One command still starts everything.
* Any other database (PostgreSQL in production) is never changed behind the operator's back: when its
  revision is not the head, opening the ledger fails with `SchemaError`, naming both revisions and the
  command to run (`factory db upgrade`).  Set FACTORY_DB_AUTO_UPGRADE=1 to opt in to the SQLite policy.
* A database at a revision this code does not know (written by newer code) is refused everywhere.

The version table is `factory_alembic_version`, so the ledger can share a database with Dagster,
whose own migrations use `alembic_version`.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa

from factory.errors import FactoryError

VERSION_TABLE = "factory_alembic_version"
MIGRATIONS = Path(__file__).parent / "migrations"
FIRST_REVISION = "0001"


class SchemaError(FactoryError):
    """The ledger database is not at the schema revision this code needs."""


def alembic_config(url: str | None = None, connection=None):
    """An Alembic Config for the ledger migrations (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def _script():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest migration revision shipped with this code."""
    return _script().get_current_head()


def known_revisions() -> set[str]:
    return {r.revision for r in _script().walk_revisions()}


def current_revision(conn) -> str | None:
    """The revision recorded in the database (None when it has never been stamped)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def _has_ledger_tables(conn) -> bool:
    return sa.inspect(conn).has_table("label_events")


def _engine(url: str) -> sa.Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url)


def status(url: str) -> dict:
    """Where a ledger database stands: its revision, the head, and whether it is up to date."""
    engine = _engine(url)
    try:
        with engine.connect() as c:
            cur = current_revision(c)
            tables = _has_ledger_tables(c)
    finally:
        engine.dispose()
    head = head_revision()
    return {"url": engine.url.render_as_string(hide_password=True), "current": cur, "head": head,
            "has_tables": tables, "up_to_date": cur == head}


def upgrade(url: str, revision: str = "head") -> dict:
    """Migrate the ledger database at `url` to `revision` (default: the head); returns before/after."""
    from alembic import command

    engine = _engine(url)
    try:
        with engine.begin() as c:
            before = current_revision(c)
            if before is None and _has_ledger_tables(c):
                # a ledger created before migrations existed has exactly the first revision's tables
                command.stamp(alembic_config(connection=c), FIRST_REVISION)
                before = FIRST_REVISION
            command.upgrade(alembic_config(connection=c), revision)
            after = current_revision(c)
    finally:
        engine.dispose()
    return {"before": before, "after": after}


def _auto_upgrade(url: str) -> bool:
    return url.startswith("sqlite") or os.environ.get("FACTORY_DB_AUTO_UPGRADE", "").lower() in ("1", "true", "yes")


def ensure_schema(engine: sa.Engine, url: str, metadata: sa.MetaData) -> None:
    """Make sure the ledger database is at the head revision, or refuse (see the module's policy)."""
    head = head_revision()
    with engine.connect() as c:
        cur = current_revision(c)
        tables = _has_ledger_tables(c) if cur != head else True
    if cur == head:
        if _auto_upgrade(url):
            metadata.create_all(engine)  # tables added to the code before their migration (embedded only)
        return
    if cur is not None and cur not in known_revisions():
        raise SchemaError(f"ledger database {engine.url.render_as_string(hide_password=True)} is at schema "
                          f"revision '{cur}', which this version of the factory does not know (head '{head}'): "
                          f"it was migrated by newer code; upgrade the factory package")
    if not _auto_upgrade(url):
        state = f"at revision '{cur}'" if cur else ("not versioned" if tables else "empty")
        raise SchemaError(f"ledger database {engine.url.render_as_string(hide_password=True)} is {state}; this "
                          f"code needs schema revision '{head}'. Run `factory db upgrade` (with the same "
                          f"FACTORY_DATABASE_URL) to migrate it, then start again")
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    with engine.begin() as c:  # on SQLite this is BEGIN IMMEDIATE: concurrent openers take turns
        cur = current_revision(c)
        if cur == head:
            return
        if cur is None and not _has_ledger_tables(c):
            metadata.create_all(c)
            MigrationContext.configure(c, opts={"version_table": VERSION_TABLE}).stamp(_script(), head)
            return
        if cur is None:
            command.stamp(alembic_config(connection=c), FIRST_REVISION)
        command.upgrade(alembic_config(connection=c), "head")
        # tables added to the code without a migration yet still appear in the embedded default
        metadata.create_all(c)

