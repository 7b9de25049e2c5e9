"""Operations commands of the `factory` CLI: the ledger database's schema (`factory db ...`)."""
from __future__ import annotations

import json
import sys

import click

from factory.errors import FactoryError

URL_HELP = "Ledger database URL. Default: $FACTORY_DATABASE_URL, else the SQLite file under the factory root."
ROOT_HELP = "Factory root folder. Default: $FACTORY_HOME or the current directory."


def _url(url: str | None, root: str | None) -> str:
    from factory.config import Paths

    return url or Paths.from_env(root).database_url


@click.group("db")
def db() -> None:
    """The ledger database: schema revision and migrations (Alembic, factory/storage/migrations).

    \b
    SQLite (the default) migrates itself when the factory opens it. Any other database
    (PostgreSQL) is only migrated by `factory db upgrade`; until then the factory refuses
    to start and names the revisions.
    """


@db.command("upgrade")
@click.option("--url", default=None, help=URL_HELP)
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(url: str | None, root: str | None, revision: str) -> None:
    """Migrate the ledger database to the newest schema revision (creates the tables on an empty database)."""
    from factory.storage.db import upgrade

    u = _url(url, root)
    try:
        res = upgrade(u, revision)
    except FactoryError as e:
        click.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    click.echo(f"ledger schema: {res['before'] or '(empty)'} -> {res['after']}")


@db.command("status")
@click.option("--url", default=None, help=URL_HELP)
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def db_status(url: str | None, root: str | None, as_json: bool) -> None:
    """Show the database's schema revision and the code's head revision; exit 1 when behind."""
    from factory.storage.db import status

    s = status(_url(url, root))
    if as_json:
        click.echo(json.dumps(s))
    else:
        click.echo(f"{s['url']}: revision {s['current'] or '(none)'}, code head {s['head']}: "
                   + ("up to date" if s["up_to_date"] else "behind: run `factory db upgrade`"))
    sys.exit(0 if s["up_to_date"] else 1)
