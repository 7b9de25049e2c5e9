"""The `factory` command line: the manual is `factory --help` and `factory COMMAND --help`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import pandas as pd

from factory.cli_common import ROOT_HELP, factory_at as _fx, fail as _fail
from factory.errors import FactoryError





def _echo_df(df: pd.DataFrame, as_json: bool) -> None:
    if as_json:
        click.echo(df.to_json(orient="records", indent=1))
    elif df.empty:
        click.echo("(none)")
    else:
        with pd.option_context("display.max_rows", 200, "display.max_columns", 20, "display.width", 160,
                               "display.max_colwidth", 60):
            click.echo(df.to_string(index=False))


class _Main(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["factory.json"] = "--json" in args  # a command that prints JSON draws no bars unless asked to
        return super().parse_args(ctx, args)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="annotation-factory")
@click.option("--progress/--no-progress", "show_progress", default=None,
              help="Progress bars (counts, rates) on stderr for long work. Default: on when stderr is a terminal "
                   "and the command prints no --json; FACTORY_PROGRESS=1/0 sets the default.")
@click.pass_context
def main(ctx: click.Context, show_progress: bool | None) -> None:
    """Annotation factory: models lay the base, people guard the gate.

    \b
    Typical flow:
      factory init NAME                      write datasets/NAME.yaml, then edit it
      factory ingest FILE --dataset NAME     a file or folder becomes a batch (Dagster partition)
      factory run --dataset NAME --batch B   pre-label, fuse, route; stops where people are needed
      factory tasks list / answer / import   people answer the routed tasks
      factory run --dataset NAME --batch B   final labels + quality checks
      factory run --dataset NAME --stage release
    Or see it all at once: `factory demo`.
    """
    from factory import progress

    progress.configure(show_progress, json=ctx.meta.get("factory.json", False))
    ctx.call_on_close(progress.reset)


# ----------------------------------------------------------------------------- design
@main.command()
@click.argument("name")
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--force", is_flag=True, help="Overwrite an existing spec file.")
@click.option("--type", "task_type", default="classification", show_default=True,
              help="Task type: classification (one class per item), multi-label (a set of tags per item), "
                   "spans (typed token spans per text, e.g. named entities) or "
                   "pairs (entity matching: is the left side the same as the right?).")
def init(name: str, root: str | None, force: bool, task_type: str) -> None:
    """Write a commented dataset spec template (for --type) to datasets/NAME.yaml."""
    from factory.spec import template

    fx = _fx(root)
    path = fx.paths.spec_path(name)
    try:
        text = template(name, task_type)
    except FactoryError as e:
        _fail(e)
    if path.exists() and not force:
        _fail(f"{path} exists; edit it, or pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {path}\nedit the classes, guideline and thresholds, then: factory ingest FILE --dataset {name}")


@main.command("validate")
@click.argument("legacy_name", required=False, metavar="[DATASET]")
@click.option("--dataset", default=None, help="Dataset name (datasets/NAME.yaml).")
@click.option("--root", default=None, help=ROOT_HELP)
def validate_cmd(legacy_name: str | None, dataset: str | None, root: str | None) -> None:
    """Validate datasets/NAME.yaml (`--dataset NAME`) and print its version."""
    from factory.cli_common import check_names

    if legacy_name and dataset and legacy_name != dataset:
        _fail(f"two dataset names given ('{legacy_name}' and --dataset '{dataset}'); give --dataset only")
    if legacy_name:
        click.secho(f"note: `factory validate {legacy_name}` is deprecated; use `factory validate --dataset "
                    f"{legacy_name}` like every other command", fg="yellow", err=True)
    dataset = dataset or legacy_name
    if not dataset:
        _fail("which dataset? `factory validate --dataset NAME`")
    check_names({"dataset": dataset, "root": root}, "validate")
    try:
        spec = _fx(root).spec(dataset)
    except FactoryError as e:
        _fail(e)
    click.echo(f"{dataset}: valid, spec version {spec.version}, guideline {spec.guideline.version}, "
               f"{len(spec.classes)} classes, mode {spec.mode}")


# ----------------------------------------------------------------------------- collection
@main.command()
@click.argument("path", type=click.Path(exists=False))
@click.option("--dataset", required=True, help="Dataset name (datasets/NAME.yaml).")
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--run/--no-run", "run_", default=False, help="Also run the first stage (spec, raw items, seed tasks).")
def ingest(path: str, dataset: str, root: str | None, run_: bool) -> None:
    """Ingest a CSV, JSONL, Parquet file or a folder of .txt files as one batch.

    Malformed rows are quarantined with file, row, field and reason; a file with a header-level
    problem (empty, not UTF-8, unknown or missing column) is refused whole and nothing is written.
    """
    from factory.ingest import ingest as do_ingest

    fx = _fx(root)
    try:
        spec = fx.spec(dataset)
        rep = do_ingest(path, spec, fx.ledger, fx.progress)
    except FactoryError as e:
        _fail(e)
    from assets.runner import add_batch_partition, instance_for, run_stage

    instance = instance_for(fx.paths.root)
    add_batch_partition(instance, dataset, rep.batch_id)
    click.echo(rep.summary())
    if run_:
        r = run_stage(fx.paths.root, dataset, "prepare", instance, rep.batch_id)
        click.echo(f"stage prepare: {'ok' if r.success else 'FAILED: ' + '; '.join(r.failures)}")
    click.echo(f"next: factory run --dataset {dataset} --batch {rep.batch_id}")


@main.command()
@click.option("--dataset", required=True, help="Dataset name.")
@click.option("--batch", "batch_id", default=None, help="Batch id (default: every batch not finished yet).")
@click.option("--stage", type=click.Choice(["auto", "prepare", "annotate", "finalise", "release"]), default="auto",
              show_default=True, help="auto runs every stage that can run and stops where people are needed.")
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--verbose", is_flag=True, help="Show Dagster's step logs.")
def run(dataset: str, batch_id: str | None, stage: str, root: str | None, verbose: bool) -> None:
    """Materialise a dataset's assets for a batch through Dagster (the same graph `dagster dev` shows)."""
    from assets.runner import instance_for, run_stage

    fx = _fx(root)
    instance = instance_for(fx.paths.root)
    level = "DEBUG" if verbose else "WARNING"
    if stage == "release":
        # a refusal is an answer, not a crash: Dagster's step-failure log (with its stack) only under --verbose
        r = run_stage(fx.paths.root, dataset, "release", instance, log_level="DEBUG" if verbose else "CRITICAL")
        if r.refused:  # a gate said no: the version and each failing gate, no Dagster noise
            from factory.cli_release import refused_exit

            refused_exit("\n".join(f"  release: {f}" for f in r.failures))
        _report_stage(r)
        sys.exit(0 if r.success else 1)
    from factory.pipeline import needs_finalise

    batches = [batch_id] if batch_id else [b for b in fx.ledger.batches(dataset)["batch_id"]
                                           if needs_finalise(fx, dataset, b)]
    if not batches:
        click.echo(f"no unfinished batch of '{dataset}'; ingest one with `factory ingest FILE --dataset {dataset}`")
        return
    ok = True
    for b in batches:
        routed = fx.paths.table("routing", dataset, b).exists()
        todo = (["finalise"] if routed else ["prepare", "annotate", "finalise"]) if stage == "auto" else [stage]
        for st in todo:
            click.echo(f"batch {b}: stage {st} …")
            r = run_stage(fx.paths.root, dataset, st, instance, b, log_level=level)
            _report_stage(r)
            if st == "annotate" and r.success:
                _report_deferred(fx, dataset, b)
            if not r.success:
                ok = False
                break
            open_tasks = fx.ledger.tasks(dataset, batch_id=b, status="open")
            if r.waiting or (len(open_tasks) and st != "finalise"):
                # waiting for people is the normal state of a labelling factory: say what waits and what next
                click.echo(f"  {len(open_tasks)} task(s) of batch {b} wait for people: "
                           f"factory tasks list --dataset {dataset} --batch {b}; then: "
                           f"factory run --dataset {dataset} --batch {b}")
                break
    sys.exit(0 if ok else 1)


def _report_deferred(fx, dataset: str, batch_id: str) -> None:
    """One line: how many flagged items exceed the review budget, and what to run next."""
    from factory.pipeline import deferred_items

    n = len(deferred_items(fx, dataset, batch_id))
    if n:
        click.secho(f"  {n} flagged item(s) exceed review.budget ({fx.spec(dataset).review.budget}) and are deferred: "
                    f"no label, not released; they get first claim on the next batch's budget. See them: "
                    f"factory tasks list --dataset {dataset} --status deferred (or raise review.budget and run "
                    f"factory run --dataset {dataset} --batch {batch_id} --stage annotate)", fg="yellow")


def _report_stage(r) -> None:
    if r.success and not r.waiting:
        click.secho(f"  {r.stage}: ok (run {r.run_id[:8]})", fg="green")
        return
    for w in r.waiting_for:
        click.secho(f"  {r.stage}: waiting: {w}", fg="yellow")
    for f in r.failures:
        click.secho(f"  {r.stage}: FAILED: {f}", fg="red")
    for c in r.failed_checks:
        click.secho(f"  failed check: {c}", fg="red")


@main.group()
def batches() -> None:
    """Inspect batches: counts, duplicates and quarantined rows."""


@batches.command("list")
@click.option("--dataset", default=None)
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True)
def batches_list(dataset: str | None, root: str | None, as_json: bool) -> None:
    """List batches with their counts."""
    df = _fx(root).ledger.batches(dataset)
    _echo_df(df[["batch_id", "dataset", "n_rows", "n_items", "n_duplicates", "n_quarantined", "created_at"]], as_json)


@batches.command("show")
@click.argument("batch_id")
@click.option("--root", default=None, help=ROOT_HELP)
def batches_show(batch_id: str, root: str | None) -> None:
    """Show a batch, its quarantined rows and its duplicates."""
    fx = _fx(root)
    b = fx.ledger.batch(batch_id)
    if not b:
        _fail(f"batch '{batch_id}': no such batch; see `factory batches list`")
    for k, v in b.items():
        click.echo(f"{k:>15}: {v}")
    q = fx.ledger.table("quarantine", batch_id=batch_id)
    click.echo(f"\nquarantined rows ({len(q)}):")
    _echo_df(q[["source_file", "source_row", "field", "reason"]], False)
    d = fx.ledger.table("duplicates", batch_id=batch_id)
    click.echo(f"\nduplicates ({len(d)}):")
    _echo_df(d[["item_id", "source_file", "source_row", "scope", "first_batch_id"]], False)


# ----------------------------------------------------------------------------- people
@main.group()
def tasks() -> None:
    """Review tasks for people: list, answer, import answers."""


@tasks.command("list")
@click.option("--dataset", default=None)
@click.option("--batch", "batch_id", default=None)
@click.option("--status", type=click.Choice(["open", "answered", "all", "deferred"]), default="open", show_default=True,
              help="deferred: flagged items beyond the review budget that wait for one (no task yet).")
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True,
              help="Full records: whole text, metadata, reasons as a list, your ids.")
@click.option("--text/--no-text", default=True, help="Show the start of each item's text.")
def tasks_list(dataset, batch_id, status, root, as_json, text) -> None:
    """List tasks with the reasons they were routed to people, your own item ids (task.id_column), or, with
    --status deferred, the deferred items."""
    from factory.pipeline import deferred_items

    fx = _fx(root)
    if status == "deferred":
        _list_deferred(fx, dataset, batch_id, as_json, text)
        return
    df = fx.ledger.tasks(dataset, batch_id=batch_id, status=None if status == "all" else status)
    if as_json:
        click.echo(json.dumps(task_records(fx, df, with_text=text), indent=1, ensure_ascii=False, default=str))
        return
    items = _task_items(fx, df)
    if not df.empty:
        df["external_id"] = df["item_id"].map(lambda i: (items.get(i) or {}).get("external_id"))
        if text:
            df["text"] = df["item_id"].map(lambda i: ((items.get(i) or {}).get("text") or "")[:60].replace("\n", " "))
    cols = ["task_id", "dataset", "batch_id", "item_id", "kind", "reasons", "status", "answer", "annotator"]
    if not df.empty and df["external_id"].notna().any():
        cols.insert(4, "external_id")
    if text:
        cols.append("text")
    _echo_df(df[cols] if not df.empty else df, False)
    n = sum(len(deferred_items(fx, ds, batch_id)) for ds in ([dataset] if dataset else fx.datasets()))
    if n:
        click.echo(f"{n} flagged item(s) are deferred beyond the review budget (no task yet): "
                   f"factory tasks list --status deferred")


def _task_items(fx, df: pd.DataFrame) -> dict[str, dict]:
    """The ledger rows of the items behind some tasks, by item id."""
    out: dict[str, dict] = {}
    for ds in (df["dataset"].unique() if not df.empty else []):
        it = fx.ledger.items(ds, item_ids=df.loc[df["dataset"] == ds, "item_id"].tolist())
        out.update({r["item_id"]: r for r in it.to_dict("records")})
    return out


def task_records(fx, df: pd.DataFrame, with_text: bool = True) -> list[dict]:
    """Tasks as typed JSON-ready records: reasons a list, metadata an object, whole text, the user's own id."""
    items = _task_items(fx, df)

    def plain(v):
        return None if v is None or (isinstance(v, float) and v != v) else v

    out = []
    for r in df.to_dict("records"):
        it = items.get(r["item_id"]) or {}
        rec = {k: plain(r.get(k)) for k in ("task_id", "dataset", "batch_id", "item_id")}
        rec["external_id"] = plain(it.get("external_id"))
        rec.update({k: plain(r.get(k)) for k in ("kind", "status", "answer", "annotator", "required_tier",
                                                   "domain", "suggestion", "created_at")})
        reasons = r.get("reasons")
        rec["reasons"] = json.loads(reasons) if isinstance(reasons, str) else list(reasons or [])
        rec["meta"] = json.loads(it["meta"]) if it.get("meta") else {}
        if with_text:
            rec["text"] = it.get("text")
        rec["source"] = {"file": it.get("source_file"), "row": plain(it.get("source_row"))} if it else None
        out.append(rec)
    return out


def _resolve_task(fx, ident: str) -> str:
    """A task id, or the one open task of the item `ident` names (its item id or the user's own id)."""
    if fx.ledger.task(ident) is not None:
        return ident
    items = fx.ledger.resolve_item(None, ident)
    if not items:
        return ident  # the answering code reports the unknown task
    open_tasks = fx.ledger.tasks(status="open")
    cands = [t for t, d, i in open_tasks[["task_id", "dataset", "item_id"]].itertuples(index=False)
             if (d, i) in set(items)]
    if len(cands) == 1:
        return cands[0]
    what = ", ".join(f"{d}/{i}" for d, i in items)
    if not cands:
        _fail(f"'{ident}' names item {what}, which has no open task; see `factory tasks list --status all`")
    _fail(f"'{ident}' names item {what}, which has {len(cands)} open tasks ({', '.join(cands)}); give the task id")


def _list_deferred(fx, dataset: str | None, batch_id: str | None, as_json: bool, text: bool) -> None:
    """The deferred items of one or every dataset: id, batch, reasons, the machines' label and confidence."""
    from factory.pipeline import deferred_items

    frames = []
    for ds in [dataset] if dataset else fx.datasets():
        d = deferred_items(fx, ds, batch_id)
        if len(d) and text:
            it = fx.ledger.items(ds, item_ids=d["item_id"].tolist()).set_index("item_id")["text"]
            d["text"] = d["item_id"].map(lambda i: str(it.get(i, ""))[:60].replace("\n", " "))
        frames.append(d.assign(dataset=ds))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    cols = [c for c in ["dataset", "batch_id", "item_id", "reasons", "fused_label", "confidence", "text"] if c in df]
    _echo_df(df[cols] if not df.empty else df, as_json)
    if not as_json:
        click.echo(f"{len(df)} deferred item(s): no accepted label and not released until a person answers; "
                   f"the next routing pass (a new batch, or `factory run --stage annotate`) funds them first")


@tasks.command("answer")
@click.argument("task_id", metavar="TASK_ID|ITEM_ID|YOUR_ID")
@click.argument("label")
@click.option("--annotator", required=True, help="Pseudonymous id of the person answering.")
@click.option("--rationale", default=None, help="Why: required for an expert arbitration task.")
@click.option("--correct", is_flag=True, help="Correct an earlier answer (a new event superseding it).")
@click.option("--root", default=None, help=ROOT_HELP)
def tasks_answer(task_id: str, label: str, annotator: str, rationale: str | None, correct: bool,
                 root: str | None) -> None:
    """Answer TASK_ID with LABEL (one of the dataset's classes; multi-label: the ticked classes joined by '|',
    "" for none).  Instead of a task id you may name the item,
    by its item id or your own id (task.id_column), when it has exactly one open task.

    The answer goes through the gate (factory.gate): a task leased to someone else, a suspended or
    under-tier annotator, an unregistered one above L1, a review of one's own label and an
    arbitration without a rationale are refused (and logged in the annotator's history).
    """
    from factory.gate import submit

    fx = _fx(root)
    task_id = _resolve_task(fx, task_id)
    try:
        res = submit(fx, task_id, label, annotator, rationale=rationale, correct=correct)
    except FactoryError as e:
        _fail(e)
    what = "arbitration recorded" if res.get("arbitration") else (
        "same answer already recorded" if res.get("duplicate") else "recorded")
    click.echo(f"task {task_id}: {what} '{label}' by {annotator} (event {res['event_id']})")


@tasks.command("import")
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Check every row, write nothing.")
@click.option("--root", default=None, help=ROOT_HELP)
def tasks_import(csv_path: str, dry_run: bool, root: str | None) -> None:
    """Import answers from a CSV with columns task_id (or item_id: the factory's or your own id), annotator, label,
    and optionally rationale (required on arbitration tasks) and submission_id (a retried import adds nothing twice).

    Every row goes through the same gate as a single answer (leases, workforce rules, schema); if
    any row is refused, nothing is imported and one report lists every refused row with its cause.
    """
    from factory.gate import Answer, submit_answers

    fx = _fx(root)
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as e:
        _fail(f"{csv_path}: not a readable CSV ({e})")
    if "label" not in df.columns and "labels" in df.columns:  # a set-valued dataset's column may say so
        df = df.rename(columns={"labels": "label"})
    missing = [c for c in ("annotator", "label") if c not in df.columns]
    if missing or not ({"task_id", "item_id"} & set(df.columns)):
        _fail(f"{csv_path}: needs columns task_id (or item_id), annotator, label (and rationale for arbitrations); "
              f"found {list(df.columns)}")
    by_item = None
    problems, answers = [], []
    for i, r in enumerate(df.to_dict("records"), start=2):
        where = f"{csv_path} row {i}"
        tid = r.get("task_id", "") or ""
        if not tid:
            if by_item is None:
                open_tasks = fx.ledger.tasks(status="open")
                by_item = open_tasks.groupby("item_id")["task_id"].agg(list).to_dict()
            ident = r.get("item_id", "")
            cands = by_item.get(ident) or [t for _, i in fx.ledger.resolve_item(None, ident)
                                           for t in by_item.get(i, [])]
            if len(cands) != 1:
                problems.append(f"{where}: item_id '{ident}' has {len(cands)} open tasks; give task_id")
                continue
            tid = cands[0]
        answers.append(Answer(label=r["label"], annotator=r["annotator"].strip(), task_id=tid,
                              rationale=r.get("rationale") or None, submission_id=r.get("submission_id") or None,
                              where=where))
    rep = submit_answers(fx, answers, source="import", dry_run=dry_run or bool(problems))
    problems += [f"{x.where}: {x.cause}" for x in rep.refused]
    if problems:
        _fail(f"{csv_path}: nothing imported, {len(problems)} refused row(s) of {len(df)}:\n  " + "\n  ".join(problems))
    if dry_run:
        click.echo(f"dry run: {rep.recorded} answer(s) from {csv_path} would be imported")
        return
    click.echo(f"imported {rep.recorded} answers from {csv_path}"
               + (f" ({rep.duplicates} already recorded)" if rep.duplicates else ""))


# ----------------------------------------------------------------------------- provenance and releases
@main.command()
@click.option("--dataset", required=True)
@click.option("--checkpoints", "checkpoint_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Another checkpoints file to check against (a copy kept off this machine); repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--root", default=None, help=ROOT_HELP)
def verify(dataset: str, checkpoint_files: tuple[str, ...], as_json: bool, root: str | None) -> None:
    """Walk the ledger's hash chain of DATASET and check it against everything published from it.

    \b
    - the chain itself: each event's hash and link (the first broken one is named);
    - every release of DATASET: the event count and chain head it was cut from (provenance/anchor.json)
      must still be in the ledger, its manifest.json must be the one recorded at release time, and every
      event it released must still be in the ledger with the same hash;
    - every checkpoint (checkpoints/DATASET.jsonl and --checkpoints FILE), its Ed25519 signature checked
      with FACTORY_VERIFY_KEY(_FILE) or the signing key's public half when one is configured.
    Exit 0 when all holds, 1 otherwise.  See docs/tamper-evidence.md.
    """
    from factory.anchoring import verify_ledger

    fx = _fx(root)
    try:
        res = verify_ledger(fx, dataset, list(checkpoint_files))
    except FactoryError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(res, indent=2, default=str))
        sys.exit(0 if res["ok"] else 1)
    for w in res["warnings"]:
        click.echo(f"warning: {w}")
    if res["ok"]:
        click.secho(f"ok: {res['events']} events, chain head {res['head'][:16]}…; {res['anchors']} published "
                    f"anchor(s) hold ({res['anchors_signed']} signed)", fg="green")
        return
    chain = fx.ledger.verify_chain(dataset)
    if not chain["ok"]:
        click.secho(f"BROKEN after {chain['events']} good events: seq {chain['seq']} event {chain['event_id']}: "
                    f"{chain['problem']}", fg="red")
    click.secho(f"{len(res['problems'])} problem(s):", fg="red")
    for p in res["problems"]:
        click.echo(f"  - {p}")
    sys.exit(1)


@main.command()
@click.option("--dataset", default=None, help="Dataset whose chain head to checkpoint.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Append to this file instead of checkpoints/DATASET.jsonl under the factory root.")
@click.option("--generate-key", "new_key", default=None, type=click.Path(dir_okay=False),
              help="Instead: write a new Ed25519 private key (PEM, mode 0600) to this path and print its public "
                   "key. Keep it outside the repository; point FACTORY_SIGNING_KEY_FILE at it.")
@click.option("--root", default=None, help=ROOT_HELP)
def checkpoint(dataset: str | None, out: str | None, new_key: str | None, root: str | None) -> None:
    """Publish DATASET's chain head and event count as a checkpoint record, signed with Ed25519 when
    FACTORY_SIGNING_KEY or FACTORY_SIGNING_KEY_FILE is set.  Copy the checkpoints file where the database's
    writers cannot reach it (another machine, a git repository, an e-mail): `factory verify` then shows any
    later rewrite of the events it covers."""
    from factory.anchoring import write_checkpoint
    from factory.signing import generate_key

    try:
        if new_key:
            click.echo(f"wrote a new Ed25519 signing key to {new_key} (mode 0600); its public key:\n"
                       f"{generate_key(new_key)}\nexport FACTORY_SIGNING_KEY_FILE={new_key}")
            return
        if not dataset:
            _fail("give --dataset NAME (or --generate-key PATH)")
        rec = write_checkpoint(_fx(root), dataset, out)
    except FactoryError as e:
        _fail(e)
    signed = f"signed with key {rec['key_id']}" if rec.get("signature") else \
        "UNSIGNED (set FACTORY_SIGNING_KEY_FILE to sign)"
    click.echo(f"checkpoint of {dataset}: {rec['events']} events, chain head {rec['head'][:16]}…, {signed}; "
               f"appended to {rec['file']}")


@main.command("verify-release")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--no-standard", is_flag=True, help="Only recompute hashes (skip re-running the quality standard).")
def verify_release(path: str, as_json: bool, no_standard: bool) -> None:
    """Verify a release folder with no database: every hash of manifest-sha256.txt (tampered, missing or
    extra files are named) and every other hash the folder records (manifest.json, croissant.json, the
    certificate), the release's own quality standard re-run on labels.parquet, every event hash in
    provenance/events.parquet and each batch's Merkle root, and every released label re-derived from those
    events and compared with labels.parquet, each split file and every other copy (file and item named).
    Exit 0 when all holds, 1 otherwise.  `factory verify --dataset D` checks a release against the ledger."""
    from factory.release import verify_release as do_verify

    res = do_verify(path, run_standard=not no_standard)
    if as_json:
        click.echo(json.dumps(res, indent=2, default=str))
        sys.exit(0 if res["ok"] else 1)
    if not res["ok"]:
        click.secho(f"{path}: {len(res['problems'])} problem(s):", fg="red")
        for p in res["problems"]:
            click.echo(f"  - {p}")
        sys.exit(1)
    s = res["summary"]
    exp = s.get("expectations")
    click.secho(f"{path}: ok — {s['dataset']} {s['version']}, {s['items']} items, every file matches "
                f"manifest-sha256.txt ({s['files']} files)", fg="green")
    if exp:
        click.echo(f"  standard {s['standard']}: {exp['passed']}/{exp['total']} expectations hold on labels.parquet")
    if "events" in s:
        click.echo(f"  provenance: {s['events']} event hashes recomputed, {s['merkle_roots']} batch Merkle root(s) match")
    if s.get("hashes_checked"):
        click.echo(f"  {s['hashes_checked']} other recorded hash(es) match (manifest.json, croissant.json, certificate)")
    if s.get("labels_rederived"):
        click.echo(f"  every released label re-derived from provenance/events.parquet, in every file that carries it")
    if s.get("anchor"):
        a = s["anchor"]
        click.echo(f"  cut from ledger event {a['events']} (chain head {a['head'][:16]}…), "
                   f"{'signature ' + a.get('signature', 'not checked') if a['signed'] else 'unsigned'}; "
                   f"`factory verify --dataset {s['dataset']}` checks the ledger against it")
    if s.get("audit_accuracy") is not None:
        click.echo(f"  audit accuracy recomputed from quality/evidence.parquet: {s['audit_accuracy']:.4f}")


@main.command()
@click.argument("item_id", metavar="ITEM_ID|YOUR_ID")
@click.option("--dataset", required=True)
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True, help="The whole story as JSON (with the Merkle inclusion proof).")
@click.option("--events", "events_only", is_flag=True, help="Only the list of label events (the old table).")
def trace(item_id: str, dataset: str, root: str | None, as_json: bool, events_only: bool) -> None:
    """Print an item's whole story: each labeler's version and probabilities, why it was routed, who
    answered (pseudonymous), corrections, the final label, spec/guideline versions, Dagster runs, the
    releases that carry it, and a Merkle proof that its final event is in its batch's root."""
    from factory.provenance import format_story, item_story

    fx = _fx(root)
    found = fx.ledger.resolve_item(dataset, item_id)  # the factory's item id or the user's own id
    if len(found) > 1:
        _fail(f"'{item_id}' names {len(found)} items of '{dataset}': {', '.join(i for _, i in found)}")
    if not found:
        try:
            spec_col = fx.spec(dataset).task.id_column
        except FactoryError:
            spec_col = None
        _fail(f"item '{item_id}': no such item in dataset '{dataset}' (neither an item id"
              + (f" nor a {spec_col}" if spec_col else "") + f"); see `factory tasks list --dataset {dataset} "
              f"--status all --json`")
    item_id = found[0][1]
    if events_only:
        ev = fx.ledger.events(dataset, item_id=item_id)
        if ev.empty:
            _fail(f"item '{item_id}': no events in dataset '{dataset}'")
        cols = ["seq", "created_at", "kind", "actor", "label", "confidence", "task_id", "supersedes",
                "guideline_version", "run_id"]
        _echo_df(ev[cols], as_json)
        return
    try:
        story = item_story(fx, dataset, item_id)
    except FactoryError as e:
        _fail(e)
    click.echo(json.dumps(story, indent=1, default=str) if as_json else format_story(story))


# ----------------------------------------------------------------------------- demo and benchmarks
@main.command()
@click.option("--root", default="factory-demo", show_default=True, help="Folder the demo builds (rebuilt each run).")
@click.option("--batches", "n_batches", default=2, show_default=True, help="How many batches to split the corpus into.")
@click.option("--limit", default=None, type=int, help="Use only the first N articles (default: all 2,225).")
@click.option("--seed-size", default=100, show_default=True, help="Human seed labels before the models train.")
@click.option("--mode", type=click.Choice(["prelabel-human", "human-model", "prelabel-model"]),
              default="prelabel-human", show_default=True, help="The collaboration mode of the demo dataset.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (progress goes to stderr).")
def demo(root: str, n_batches: int, limit: int | None, seed_size: int, mode: str, as_json: bool) -> None:
    """Run the whole flow on BBC News with SIMULATED reviewers, through the real Dagster assets.

    Noise model of the simulated reviewers: each has an accuracy drawn from U(0.85, 0.97); a wrong
    answer is uniform over the other classes.  Leaves a DAGSTER_HOME so `dagster dev` shows the
    materialised graph and its checks.
    """
    from assets.demo import run_demo

    def progress(msg: str) -> None:
        click.echo(msg, err=as_json)

    summary = run_demo(Path(root), batches=n_batches, limit=limit, seed_size=seed_size, mode=mode, progress=progress)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo("\n=== demo summary (reviewers are SIMULATED) ===")
    click.echo(f"items                 {summary['items']}")
    click.echo(f"auto-accepted         {summary['auto_accepted']:.1%}")
    click.echo(f"routed to people      {summary['routed']:.1%}  ({summary['human_answers']} simulated answers, "
               f"~{summary['human_minutes']:.0f} person-minutes)")
    click.echo("paths                 " + ", ".join(f"{k} {v}" for k, v in summary["paths"].items()))
    click.echo(f"accuracy vs gold      {summary['accuracy']:.2%}  (auto-accepted only: "
               f"{summary['accuracy_auto_accepted']:.2%}; models alone: {summary['accuracy_models_only']:.2%})")
    click.echo(f"release               {summary['release_version']} at {summary['release_path']}")
    click.echo(f"noise model           {summary['noise_model']}")
    click.echo(f"see the asset graph:  {summary['dagster_ui']}")


BENCHMARKS = ("aggregation", "replay", "verify", "speed", "pipeline", "guarantee", "workbench", "generalise", "scale",
              "spans", "spans_speed", "span_labelers", "span_calibration", "pairs")


@main.command()
@click.argument("name", type=click.Choice([*BENCHMARKS, "all"]))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for NAME.json and NAME.png.")
@click.option("--data", default=None, type=click.Path(exists=True), help="Benchmark data folder (e.g. ../shared/bench/crowd).")
@click.option("--answers", default=None, type=int, help="speed, scale: number of synthetic answers.")
@click.option("--seeds", default=None, type=int, help="replay, generalise: number of seeds.")
@click.option("--items", default=None, type=int, help="pipeline: items in the batch; generalise: items per text set; "
              "pairs: a stratified subsample of product.")
@click.option("--sets", default=None, help="generalise: comma-separated subset, e.g. dog,drugs-rating (default: all).")
def bench(name: str, out_dir: str, data: str | None, answers: int | None, seeds: int | None, items: int | None,
          sets: str | None) -> None:
    """Run a benchmark script from benchmarks/ and write DIR/NAME.json and DIR/NAME.png.

    `all` runs every benchmark and also writes DIR/summary.md (a Markdown table).  aggregation takes
    --data CROWD_FOLDER, replay takes --data CROWD_FOLDER/product (or the crowd folder itself; a crowd NER
    folder such as CROWD_FOLDER/ner runs the span loop's replay, benchmarks/span_replay.py),
    generalise takes --data CROWD_FOLDER (product and dog, plus text sets with a simulated crowd).
    """
    import importlib

    from factory.progress import bars

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    opts = {k: v for k, v in {"answers": answers, "seeds": seeds, "items": items}.items() if v is not None}
    if sets:
        opts["sets"] = [x.strip() for x in sets.split(",") if x.strip()]
    names = BENCHMARKS if name == "all" else (name,)
    rows = []
    for n in bars().track(names, "bench", unit="benchmarks", label=str):
        mod = importlib.import_module(f"benchmarks.{n}")
        d = Path(data) if data else None
        if n == "replay" and d is not None and importlib.import_module("benchmarks.span_replay").is_span_folder(d):
            mod = importlib.import_module("benchmarks.span_replay")  # crowd NER: the span loop's replay
        if n == "replay" and d is not None and (d / "product").is_dir():
            d = d / "product"
        if n in ("aggregation",) and d is not None and d.name == "product":
            d = d.parent
        click.echo(f"== benchmark {n} ==")
        result = mod.run(out, data=d, **opts)
        rows.extend((n, *r) for r in mod.summary_rows(result))
    if name == "all":
        lines = ["| benchmark | metric | value | goal |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        (out / "summary.md").write_text("\n".join(lines) + "\n")
        click.echo("\n".join(lines))


# ----------------------------------------------------------------------------- operations
from factory.cli_ops import db as _db_commands  # noqa: E402  (operations commands live in cli_ops)

main.add_command(_db_commands)


from factory.cli_web import export_group, import_group, serve, users  # noqa: E402  (web and interop commands)

main.add_command(serve)
main.add_command(users)
main.add_command(export_group)
main.add_command(import_group)


from factory.cli_release import release_group  # noqa: E402  (releases, lineage, feed)

main.add_command(release_group)


from factory.cli_people import annotators, gold, guideline, status  # noqa: E402  (people commands)

main.add_command(annotators)
main.add_command(gold)
main.add_command(guideline)
main.add_command(status)

from factory.cli_common import guard_names  # noqa: E402

guard_names(main)  # last: every command above, wherever it lives, refuses unknown dataset/batch/annotator names


if __name__ == "__main__":
    main()
