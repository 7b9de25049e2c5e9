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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="annotation-factory")
def main() -> None:
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


# ----------------------------------------------------------------------------- design
@main.command()
@click.argument("name")
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--force", is_flag=True, help="Overwrite an existing spec file.")
def init(name: str, root: str | None, force: bool) -> None:
    """Write a commented dataset spec template to datasets/NAME.yaml."""
    from factory.spec import template

    fx = _fx(root)
    path = fx.paths.spec_path(name)
    try:
        text = template(name)
    except FactoryError as e:
        _fail(e)
    if path.exists() and not force:
        _fail(f"{path} exists; edit it, or pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {path}\nedit the classes, guideline and thresholds, then: factory ingest FILE --dataset {name}")


@main.command("validate")
@click.argument("dataset")
@click.option("--root", default=None, help=ROOT_HELP)
def validate_cmd(dataset: str, root: str | None) -> None:
    """Validate datasets/DATASET.yaml and print its version."""
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
        rep = do_ingest(path, spec, fx.ledger)
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
        r = run_stage(fx.paths.root, dataset, "release", instance, log_level=level)
        _report_stage(r)
        sys.exit(0 if r.success else 1)
    batches = [batch_id] if batch_id else [b for b in fx.ledger.batches(dataset)["batch_id"]
                                           if not fx.paths.table("final_labels", dataset, b).exists()]
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
            if not r.success:
                ok = ok and r.waiting
                break
            open_tasks = fx.ledger.tasks(dataset, batch_id=b, status="open")
            if len(open_tasks) and st != "finalise":
                click.echo(f"  {len(open_tasks)} task(s) wait for people: factory tasks list --batch {b}; "
                           f"then run this command again")
                break
    sys.exit(0 if ok else 1)


def _report_stage(r) -> None:
    if r.success:
        click.secho(f"  {r.stage}: ok (run {r.run_id[:8]})", fg="green")
        return
    for f in r.failures:
        click.secho(f"  {r.stage}: {'waiting' if r.waiting else 'FAILED'}: {f}", fg="yellow" if r.waiting else "red")
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
@click.option("--status", type=click.Choice(["open", "answered", "all"]), default="open", show_default=True)
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True)
@click.option("--text/--no-text", default=True, help="Show the start of each item's text.")
def tasks_list(dataset, batch_id, status, root, as_json, text) -> None:
    """List tasks with the reasons they were routed to people."""
    fx = _fx(root)
    df = fx.ledger.tasks(dataset, batch_id=batch_id, status=None if status == "all" else status)
    if text and not df.empty:
        texts = {}
        for ds in df["dataset"].unique():
            it = fx.ledger.items(ds, item_ids=df.loc[df["dataset"] == ds, "item_id"].tolist())
            texts.update(dict(zip(it["item_id"], it["text"])))
        df["text"] = df["item_id"].map(lambda i: texts.get(i, "")[:60].replace("\n", " "))
    cols = ["task_id", "dataset", "batch_id", "item_id", "kind", "reasons", "status", "answer", "annotator"]
    if text:
        cols.append("text")
    _echo_df(df[cols] if not df.empty else df, as_json)


@tasks.command("answer")
@click.argument("task_id")
@click.argument("label")
@click.option("--annotator", required=True, help="Pseudonymous id of the person answering.")
@click.option("--rationale", default=None, help="Why: required for an expert arbitration task.")
@click.option("--correct", is_flag=True, help="Correct an earlier answer (a new event superseding it).")
@click.option("--root", default=None, help=ROOT_HELP)
def tasks_answer(task_id: str, label: str, annotator: str, rationale: str | None, correct: bool,
                 root: str | None) -> None:
    """Answer TASK_ID with LABEL (one of the dataset's classes).

    The workforce rules apply: a suspended or under-tier annotator, a task leased to someone else,
    a review of one's own label and an arbitration without a rationale are refused and logged.
    """
    from factory.workforce import submit

    try:
        res = submit(_fx(root), task_id, label, annotator, rationale=rationale, correct=correct)
    except FactoryError as e:
        _fail(e)
    what = "arbitration recorded" if res.get("arbitration") else (
        "same answer already recorded" if res.get("duplicate") else "recorded")
    click.echo(f"task {task_id}: {what} '{label}' by {annotator} (event {res['event_id']})")


@tasks.command("import")
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--root", default=None, help=ROOT_HELP)
def tasks_import(csv_path: str, root: str | None) -> None:
    """Import answers from a CSV with columns task_id (or item_id), annotator, label.

    Every row is checked first (task exists and is open, label in the schema); if any row is bad,
    nothing is imported and every bad row is listed.
    """
    fx = _fx(root)
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as e:
        _fail(f"{csv_path}: not a readable CSV ({e})")
    missing = [c for c in ("annotator", "label") if c not in df.columns]
    if missing or not ({"task_id", "item_id"} & set(df.columns)):
        _fail(f"{csv_path}: needs columns task_id (or item_id), annotator, label; found {list(df.columns)}")
    open_tasks = fx.ledger.tasks(status="open")
    by_item = open_tasks.groupby("item_id")["task_id"].agg(list).to_dict()
    specs: dict = {}
    problems, plan = [], []
    seen: set = set()
    for i, r in enumerate(df.itertuples(index=False), start=2):
        tid = getattr(r, "task_id", "") or ""
        if not tid:
            cands = by_item.get(getattr(r, "item_id", ""), [])
            if len(cands) != 1:
                problems.append(f"row {i}: item_id '{getattr(r, 'item_id', '')}' has {len(cands)} open tasks; give task_id")
                continue
            tid = cands[0]
        t = fx.ledger.task(tid)
        if t is None:
            problems.append(f"row {i}: task '{tid}' does not exist")
            continue
        if tid in seen:
            problems.append(f"row {i}: task '{tid}' appears twice in the file")
            continue
        seen.add(tid)
        if tid not in set(open_tasks["task_id"]):
            problems.append(f"row {i}: task '{tid}' is already answered")
            continue
        spec = specs.setdefault(t["dataset"], fx.spec(t["dataset"]))
        if r.label not in spec.class_names:
            problems.append(f"row {i}: label '{r.label}' is not in the schema {spec.class_names}")
            continue
        if not r.annotator.strip():
            problems.append(f"row {i}: annotator is empty")
            continue
        plan.append((tid, r.label, r.annotator, spec))
    if problems:
        _fail(f"{csv_path}: nothing imported, {len(problems)} bad row(s):\n  " + "\n  ".join(problems[:50]))
    # one transaction: every answer is written or none
    fx.ledger.answer_tasks([{"task_id": tid, "label": label, "annotator": who, "source": "import",
                             "spec_version": spec.version, "guideline_version": spec.guideline.version}
                            for tid, label, who, spec in plan],
                           {ds: sp.class_names for ds, sp in specs.items()})
    click.echo(f"imported {len(plan)} answers from {csv_path}")


# ----------------------------------------------------------------------------- provenance and releases
@main.command()
@click.option("--dataset", required=True)
@click.option("--root", default=None, help=ROOT_HELP)
def verify(dataset: str, root: str | None) -> None:
    """Walk the ledger's hash chain of DATASET and report the first broken link."""
    res = _fx(root).ledger.verify_chain(dataset)
    if res["ok"]:
        click.secho(f"ok: {res['events']} events, chain head {res['head'][:16]}…", fg="green")
        return
    click.secho(f"BROKEN after {res['events']} good events: seq {res['seq']} event {res['event_id']}: "
                f"{res['problem']}", fg="red")
    sys.exit(1)


@main.command("verify-release")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--no-standard", is_flag=True, help="Only recompute hashes (skip re-running the quality standard).")
def verify_release(path: str, as_json: bool, no_standard: bool) -> None:
    """Verify a release folder with no database: every hash of manifest-sha256.txt (tampered, missing or
    extra files are named), the release's own quality standard re-run on labels.parquet, every event hash
    in provenance/events.parquet and each batch's Merkle root.  Exit 0 when all holds, 1 otherwise."""
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
    if s.get("audit_accuracy") is not None:
        click.echo(f"  audit accuracy recomputed from quality/evidence.parquet: {s['audit_accuracy']:.4f}")


@main.command()
@click.argument("item_id")
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


BENCHMARKS = ("aggregation", "replay", "verify", "speed", "pipeline", "guarantee", "workbench", "generalise")


@main.command()
@click.argument("name", type=click.Choice([*BENCHMARKS, "all"]))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for NAME.json and NAME.png.")
@click.option("--data", default=None, type=click.Path(exists=True), help="Benchmark data folder (e.g. ../shared/bench/crowd).")
@click.option("--answers", default=None, type=int, help="speed: number of synthetic answers.")
@click.option("--seeds", default=None, type=int, help="replay, generalise: number of seeds.")
@click.option("--items", default=None, type=int, help="pipeline: items in the batch; generalise: items per text set.")
def bench(name: str, out_dir: str, data: str | None, answers: int | None, seeds: int | None, items: int | None) -> None:
    """Run a benchmark script from benchmarks/ and write DIR/NAME.json and DIR/NAME.png.

    `all` runs every benchmark and also writes DIR/summary.md (a Markdown table).  aggregation takes
    --data CROWD_FOLDER, replay takes --data CROWD_FOLDER/product (or the crowd folder itself),
    generalise takes --data CROWD_FOLDER (product and dog, plus text sets with a simulated crowd).
    """
    import importlib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    opts = {k: v for k, v in {"answers": answers, "seeds": seeds, "items": items}.items() if v is not None}
    names = BENCHMARKS if name == "all" else (name,)
    rows = []
    for n in names:
        mod = importlib.import_module(f"benchmarks.{n}")
        d = Path(data) if data else None
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


if __name__ == "__main__":
    main()
