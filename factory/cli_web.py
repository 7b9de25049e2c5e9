"""Commands for people-facing interfaces: `factory serve`, `factory users`, `factory export|import label-studio`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from factory.cli_common import ROOT_HELP, factory_at as _fx, fail as _fail
from factory.errors import FactoryError





# uvicorn's default (5 s) kills a worker that has not answered its supervisor's ping within 5 s of being spawned; on
# a busy host importing the app takes longer, and `--workers 2` then restarted its workers forever (seen at load 12)
WORKER_HEALTHCHECK_SECONDS = 60


@click.command()
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0 exposes it).")
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--dagster-url", default="http://127.0.0.1:3000", show_default=True,
              help="Where the Dagster UI runs (linked from the operator page).")
@click.option("--lease-minutes", default=10.0, show_default=True,
              help="How long a task stays assigned to the annotator who pulled it.")
@click.option("--undo-seconds", default=120.0, show_default=True, help="Grace period for U (undo).")
@click.option("--workers", default=1, show_default=True, help="uvicorn worker processes.")
@click.option("--worker-start-seconds", default=WORKER_HEALTHCHECK_SECONDS, show_default=True, type=click.IntRange(1),
              help="With --workers > 1: how long a worker may take to start (and to answer the supervisor's ping) "
                   "before it is killed and restarted.")
@click.option("--log-level", default="warning", show_default=True)
@click.option("--secure-cookies", is_flag=True,
              help="Mark session cookies Secure (browsers send them over HTTPS only). Use it whenever the workbench "
                   "is reached through a TLS-terminating proxy; without TLS, sign-in then stops working.")
@click.option("--max-body-kb", default=1024, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Largest request body accepted; bigger ones get 413.")
def serve(port: int, host: str, root: str | None, dagster_url: str, lease_minutes: float, undo_seconds: float,
          workers: int, worker_start_seconds: int, log_level: str, secure_cookies: bool, max_body_kb: int) -> None:
    """Run the annotator workbench and REST API (its OpenAPI document is at /openapi.json).

    \b
    Pages: /queue (annotators), /arbitrate (experts), /audit (auditors),
    /operator (operators), /releases (clients).  Create users first:
      factory users add ann-1 --role annotator
    Anywhere but your own machine, run it behind a TLS-terminating proxy
    (nginx, Caddy, a cloud load balancer) and pass --secure-cookies.
    """
    import uvicorn

    fx = _fx(root)
    fx.ledger  # create the tables before workers start
    os.environ.update({"FACTORY_HOME": str(fx.paths.root), "FACTORY_WEB_DAGSTER_URL": dagster_url,
                       "FACTORY_WEB_LEASE_SECONDS": str(lease_minutes * 60),
                       "FACTORY_WEB_UNDO_SECONDS": str(undo_seconds),
                       "FACTORY_WEB_SECURE_COOKIES": "1" if secure_cookies else "",
                       "FACTORY_WEB_MAX_BODY_BYTES": str(max_body_kb * 1024)})
    from factory.web.app import _secret

    os.environ.setdefault("FACTORY_WEB_SECRET", _secret(fx))  # every worker signs sessions with the same key
    click.echo(f"workbench on http://{host}:{port}/  (factory {fx.paths.root}; OpenAPI at /openapi.json)")
    uvicorn.run("factory.web.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False, timeout_worker_healthcheck=worker_start_seconds)


@click.group()
def users() -> None:
    """People who use the workbench and the API, with one role each."""


@users.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["annotator", "expert", "operator", "auditor", "client"]))
@click.option("--root", default=None, help=ROOT_HELP)
def users_add(name: str, role: str, root: str | None) -> None:
    """Add user NAME with ROLE and print their API token (shown once, stored hashed)."""
    from factory.users import UserStore

    try:
        token = UserStore.for_ledger(_fx(root).ledger).add(name, role)
    except FactoryError as e:
        _fail(e)
    click.echo(f"added {name} ({role}); API token (shown once, keep it secret):\n{token}")


@users.command("list")
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True)
def users_list(root: str | None, as_json: bool) -> None:
    """List users and their roles (never tokens)."""
    from factory.users import UserStore

    df = UserStore.for_ledger(_fx(root).ledger).list()
    click.echo(df.to_json(orient="records", indent=1) if as_json else (df.to_string(index=False) if len(df) else "(none)"))


@users.command("token")
@click.argument("name")
@click.option("--root", default=None, help=ROOT_HELP)
def users_token(name: str, root: str | None) -> None:
    """Give NAME a new token (the old one stops working, their sessions end)."""
    from factory.users import UserStore

    try:
        token = UserStore.for_ledger(_fx(root).ledger).rotate(name)
    except FactoryError as e:
        _fail(e)
    click.echo(f"new API token for {name} (shown once):\n{token}")


@users.command("disable")
@click.argument("name")
@click.option("--enable", is_flag=True, help="Re-enable instead.")
@click.option("--root", default=None, help=ROOT_HELP)
def users_disable(name: str, enable: bool, root: str | None) -> None:
    """Disable NAME (token and sessions stop working) or re-enable them."""
    from factory.users import UserStore

    try:
        UserStore.for_ledger(_fx(root).ledger).set_disabled(name, not enable)
    except FactoryError as e:
        _fail(e)
    click.echo(f"{name}: {'enabled' if enable else 'disabled'}")


@click.group("export")
def export_group() -> None:
    """Export tasks to other tools."""


@export_group.command("label-studio")
@click.option("--batch", "batch_id", required=True, help="Batch id.")
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False),
              help="Output JSON (default: label-studio-BATCH.json); the labeling config goes beside it (.xml).")
@click.option("--all", "include_answered", is_flag=True, help="Also tasks already answered.")
@click.option("--root", default=None, help=ROOT_HELP)
def export_label_studio(batch_id: str, out_path: str | None, include_answered: bool, root: str | None) -> None:
    """Write the batch's routed tasks with the models' predictions as Label Studio JSON tasks."""
    from factory.labelstudio import export_tasks, label_config

    fx = _fx(root)
    try:
        tasks = export_tasks(fx, batch_id, include_answered=include_answered)
        spec = fx.spec(fx.ledger.batch(batch_id)["dataset"])
    except FactoryError as e:
        _fail(e)
    out = Path(out_path or f"label-studio-{batch_id}.json")
    out.write_text(json.dumps(tasks, indent=1, ensure_ascii=False), encoding="utf-8")
    out.with_suffix(".xml").write_text(label_config(spec), encoding="utf-8")
    click.echo(f"wrote {len(tasks)} task(s) to {out} and the labeling config to {out.with_suffix('.xml')}\n"
               f"import both into a Label Studio project; bring the answers back with "
               f"`factory import label-studio EXPORT.json`")


@click.group("import")
def import_group() -> None:
    """Import answers from other tools."""


@import_group.command("label-studio")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--annotator-map", default=None, type=click.Path(exists=True, dir_okay=False),
              help="JSON {\"ls user id or email\": \"annotator\"} or CSV ls_user,annotator; with it, unmapped users "
                   "are refused. Without it, annotators are named ls:<email or id>.")
@click.option("--dry-run", is_flag=True, help="Check everything, write nothing.")
@click.option("--root", default=None, help=ROOT_HELP)
def import_label_studio(path: str, annotator_map: str | None, dry_run: bool, root: str | None) -> None:
    """Turn a Label Studio JSON export into human label events; any problem and nothing is imported."""
    from factory.labelstudio import import_export, read_annotator_map

    fx = _fx(root)
    try:
        mapping = read_annotator_map(annotator_map) if annotator_map else None
        rep = import_export(fx, path, mapping, dry_run=dry_run)
    except FactoryError as e:
        _fail(e)
    if rep.problems:
        _fail(rep.summary())
    click.echo(rep.summary() + (f"\ndry run: {len(rep.plan)} answer(s) would be recorded" if dry_run else ""))
