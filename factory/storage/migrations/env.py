"""Alembic environment of the ledger: the URL and connection come from factory.storage.db, never from a file.

`factory db upgrade` (factory.storage.db.upgrade) passes either a URL or an open connection in
`config.attributes`; the version table is `factory_alembic_version` so the ledger can share a
database with Dagster's own `alembic_version` without a clash.
"""
from alembic import context

from factory.storage.db import VERSION_TABLE
from factory.storage.ledger import metadata

config = context.config


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        _run(conn)
        return
    import sqlalchemy as sa

    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as c:
            _run(c)
            c.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=metadata,
                      version_table=VERSION_TABLE, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
