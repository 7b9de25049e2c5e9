"""What every `factory` command module shares: the --root help, the factory it names, and how errors end."""
from __future__ import annotations

import sys

import click

ROOT_HELP = "Factory root folder (datasets/, data/, releases/). Default: $FACTORY_HOME or the current directory."


def factory_at(root: str | None):
    """The factory under `root` (imported lazily: `factory --help` stays fast)."""
    from factory.pipeline import Factory

    return Factory.at(root)


def fail(e: object) -> None:
    """Print an error in red on stderr and exit 2 (bad input), the convention of every command."""
    click.secho(f"error: {e}", fg="red", err=True)
    sys.exit(2)
