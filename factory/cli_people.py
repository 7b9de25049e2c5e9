"""People commands: the annotator registry, gold items, guideline questions, and per-batch status."""
from __future__ import annotations

import json

import click
import pandas as pd

from factory.cli_common import ROOT_HELP, factory_at as _fx, fail as _fail
from factory.errors import FactoryError





def _policy(spec):
    from factory.workforce import Policy

    return Policy.from_spec(spec)


@click.group("annotators")
def annotators() -> None:
    """The annotator registry: pseudonymous ids, tiers (L1, L2, L3, expert), certification, status."""


@annotators.command("add")
@click.argument("annotator_id")
@click.option("--tier", type=click.Choice(["L1", "L2", "L3", "expert"]), default="L1", show_default=True)
@click.option("--domain", "domains", multiple=True, help="A domain this person knows (repeatable).")
@click.option("--language", "languages", multiple=True, help="A language this person reads (repeatable).")
@click.option("--max-open", default=50, show_default=True, help="Most tasks this person holds at once.")
@click.option("--root", default=None, help=ROOT_HELP)
def annotators_add(annotator_id, tier, domains, languages, max_open, root) -> None:
    """Register ANNOTATOR_ID (a pseudonym, never a real name)."""
    from factory.workforce import Workforce

    try:
        a = Workforce(_fx(root).ledger).add(annotator_id, tier, domains, languages, max_open)
    except FactoryError as e:
        _fail(e)
    click.echo(f"registered {a['annotator_id']} at tier {a['tier']} (domains {a['domains']}, languages {a['languages']})")


@annotators.command("list")
@click.option("--dataset", default=None, help="Add each person's gold accuracy on this dataset.")
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True)
def annotators_list(dataset, root, as_json) -> None:
    """List annotators with tier and status (and gold accuracy with its Wilson interval)."""
    from factory.workforce import Workforce

    wf = Workforce(_fx(root).ledger)
    df = wf.scores(dataset) if dataset else wf.list()[["annotator_id", "tier", "status", "domains", "languages"]]
    click.echo(df.to_json(orient="records", indent=1) if as_json else (df.to_string(index=False) if len(df) else "(none)"))


@annotators.command("show")
@click.argument("annotator_id")
@click.option("--root", default=None, help=ROOT_HELP)
def annotators_show(annotator_id, root) -> None:
    """Show one annotator and every change of tier or status with its reason."""
    from factory.workforce import Workforce

    wf = Workforce(_fx(root).ledger)
    try:
        a = wf.get(annotator_id)
    except FactoryError as e:
        _fail(e)
    for k, v in a.items():
        click.echo(f"{k:>15}: {v}")
    ev = wf.events(annotator_id)
    click.echo("\nhistory:")
    for r in ev.itertuples(index=False):
        click.echo(f"  {r.created_at}  {r.kind:<20} {r.reason}")


@annotators.command("certify")
@click.argument("annotator_id")
@click.option("--dataset", required=True)
@click.option("--tier", type=click.Choice(["L1", "L2", "L3", "expert"]), required=True)
@click.option("--grade", is_flag=True, help="Grade the finished test instead of opening one.")
@click.option("--root", default=None, help=ROOT_HELP)
def annotators_certify(annotator_id, dataset, tier, grade, root) -> None:
    """Open a qualification test (gold items, spec.workforce.test_size) for ANNOTATOR_ID, or --grade it.

    The test's tasks are leased to that person only; the gold answers are never shown.  Grading
    compares their accuracy with spec.workforce.pass_threshold[TIER] and records the outcome as an
    event (certified: tier raised; failed_certification: unchanged).
    """
    from factory.workforce import Workforce, open_qualification

    fx = _fx(root)
    wf = Workforce(fx.ledger)
    try:
        spec = fx.spec(dataset)
        if grade:
            r = wf.grade(dataset, annotator_id, tier, _policy(spec))
            colour = "green" if r["passed"] else "red"
            click.secho(f"{annotator_id}: {'PASSED' if r['passed'] else 'FAILED'} the {tier} test: "
                        f"{r['correct']}/{r['answers']} correct, Wilson 95% [{r['wilson'][0]:.2f}, "
                        f"{r['wilson'][1]:.2f}], threshold {r['threshold']:.0%}", fg=colour)
            return
        tasks = open_qualification(fx, dataset, annotator_id, tier, spec.workforce.test_size)
    except FactoryError as e:
        _fail(e)
    click.echo(f"opened a {tier} qualification test of {len(tasks)} items for {annotator_id}: "
               f"`factory tasks list --dataset {dataset} --batch qualification`; grade with --grade")


@annotators.command("evaluate")
@click.option("--dataset", required=True)
@click.option("--root", default=None, help=ROOT_HELP)
def annotators_evaluate(dataset, root) -> None:
    """Continuous evaluation: suspend below spec.workforce.suspend_below, propose promotions above promote_above."""
    from factory.workforce import Workforce

    fx = _fx(root)
    changes = Workforce(fx.ledger).evaluate(dataset, _policy(fx.spec(dataset)))
    for c in changes:
        click.echo(f"{c['annotator_id']}: {c['kind']} — {c['reason']}")
    if not changes:
        click.echo("no change")


@annotators.command("suspend")
@click.argument("annotator_id")
@click.option("--reason", required=True)
@click.option("--root", default=None, help=ROOT_HELP)
def annotators_suspend(annotator_id, reason, root) -> None:
    """Suspend ANNOTATOR_ID (recorded with the reason)."""
    from factory.workforce import Workforce

    try:
        Workforce(_fx(root).ledger).suspend(annotator_id, reason)
    except FactoryError as e:
        _fail(e)
    click.echo(f"{annotator_id}: suspended")


@annotators.command("reinstate")
@click.argument("annotator_id")
@click.option("--reason", required=True)
@click.option("--root", default=None, help=ROOT_HELP)
def annotators_reinstate(annotator_id, reason, root) -> None:
    """Reinstate a suspended ANNOTATOR_ID (recorded with the reason)."""
    from factory.workforce import Workforce

    try:
        Workforce(_fx(root).ledger).reinstate(annotator_id, reason)
    except FactoryError as e:
        _fail(e)
    click.echo(f"{annotator_id}: active")


@annotators.command("promote")
@click.argument("annotator_id")
@click.option("--tier", type=click.Choice(["L1", "L2", "L3", "expert"]), required=True)
@click.option("--reason", required=True)
@click.option("--root", default=None, help=ROOT_HELP)
def annotators_promote(annotator_id, tier, reason, root) -> None:
    """Set ANNOTATOR_ID's tier (e.g. accepting a promotion proposal), recorded with the reason."""
    from factory.workforce import Workforce

    try:
        Workforce(_fx(root).ledger).promote(annotator_id, tier, reason)
    except FactoryError as e:
        _fail(e)
    click.echo(f"{annotator_id}: tier {tier}")


@click.group("gold")
def gold() -> None:
    """Gold items: known answers for qualification tests and hidden honeypots."""


@gold.command("add")
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--dataset", required=True)
@click.option("--root", default=None, help=ROOT_HELP)
def gold_add(csv_path, dataset, root) -> None:
    """Declare gold items from a CSV with item_id (or your own id column, or the item's text) and label;
    all or nothing: an unknown item, a label outside the schema or one item given two labels refuses the file."""
    from factory.ingest import gold_label_conflicts, item_id_for
    from factory.workforce import Workforce

    fx = _fx(root)
    try:
        spec = fx.spec(dataset)
    except FactoryError as e:
        _fail(e)
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - pandas raises several types for unreadable files
        _fail(f"{csv_path}: not a readable CSV ({e}); nothing added")
    id_col = spec.task.id_column
    keys = [c for c in ("item_id", id_col, spec.task.input) if c and c in df.columns]
    if "label" not in df.columns or not keys:
        _fail(f"{csv_path}: needs columns label and item_id (or {id_col + ', ' if id_col else ''}"
              f"{spec.task.input}); found {list(df.columns)}")
    if keys[0] == "item_id":
        ids = df["item_id"].tolist()
    elif keys[0] == id_col:
        ext = fx.ledger.known_external_ids(dataset, df[id_col].str.strip().tolist())
        ids = [ext.get(v.strip(), (f"{id_col} '{v}'",))[0] for v in df[id_col]]
    else:
        ids = df[spec.task.input].map(item_id_for).tolist()
    known = fx.ledger.known_items(dataset, ids)
    bad = [f"row {i + 2}: item {iid} is not in dataset '{dataset}'" for i, iid in enumerate(ids) if iid not in known]
    bad += [f"row {i + 2}: label '{lab}' is not in the schema {spec.class_names}"
            for i, lab in enumerate(df["label"]) if lab not in spec.class_names]
    bad += gold_label_conflicts(ids, df["label"].tolist())
    if bad:
        _fail(f"{csv_path}: nothing added, {len(bad)} bad row(s):\n  " + "\n  ".join(bad[:30]))
    n = Workforce(fx.ledger).add_gold(dataset, dict(zip(ids, df["label"])), source="file")
    click.echo(f"added {n} gold items to '{dataset}'")


@click.group("guideline")
def guideline() -> None:
    """Guideline questions: gaps experts find, and the items they affect."""


@guideline.command("gap")
@click.argument("item_id")
@click.option("--dataset", required=True)
@click.option("--expert", required=True)
@click.option("--note", required=True, help="What the guideline does not say.")
@click.option("--root", default=None, help=ROOT_HELP)
def guideline_gap(item_id, dataset, expert, note, root) -> None:
    """Mark ITEM_ID a guideline gap: opens a question listing similar disputed items."""
    from factory.guidelines import open_question

    try:
        q = open_question(_fx(root), dataset, item_id, expert, note)
    except FactoryError as e:
        _fail(e)
    click.echo(f"question {q['question_id']} opened on guideline {q['guideline_version']}: "
               f"{len(q['similar_items'])} similar disputed item(s) listed; they are re-queued when the "
               f"guideline version in the spec changes")


@guideline.command("questions")
@click.option("--dataset", required=True)
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True)
def guideline_questions(dataset, root, as_json) -> None:
    """List guideline questions with their status and affected items."""
    from factory.guidelines import questions

    df = questions(_fx(root), dataset)
    click.echo(df.to_json(orient="records", indent=1) if as_json else (df.to_string(index=False) if len(df) else "(none)"))


def batch_work(fx, dataset: str, batch_id: str | None = None) -> list[dict]:
    """Per batch: how far it got (ingested, prepared, routed, final), its open and answered tasks, its deferred
    items, and the command that moves it on when people or a run are what it waits for."""
    from factory.pipeline import deferred_items

    batches = fx.ledger.batches(dataset)["batch_id"].tolist()
    tasks = fx.ledger.tasks(dataset)
    rows = []
    for b in [batch_id] if batch_id else batches:
        bt = tasks[tasks["batch_id"] == b] if not tasks.empty else tasks
        n_open = int((bt["status"] == "open").sum()) if len(bt) else 0
        n_answered = int((bt["status"] == "answered").sum()) if len(bt) else 0
        final = fx.paths.table("final_labels", dataset, b).exists()
        routed = fx.paths.table("routing", dataset, b).exists()
        stage = ("final" if final else "routed" if routed else
                 "prepared" if fx.paths.table("raw_items", dataset, b).exists() else "ingested")
        n_deferred = len(deferred_items(fx, dataset, b)) if routed else 0
        if n_open:
            nxt = (f"people answer {n_open} task(s): factory tasks list --dataset {dataset} --batch {b}; then "
                   f"factory run --dataset {dataset} --batch {b}")
        elif not final:
            nxt = f"factory run --dataset {dataset} --batch {b}"
        else:
            nxt = ""
        rows.append({"batch_id": b, "stage": stage, "open": n_open, "answered": n_answered,
                     "deferred": n_deferred, "next": nxt})
    return rows


@click.command("status")
@click.option("--dataset", required=True)
@click.option("--batch", "batch_id", default=None, help="One batch (default: every batch).")
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True)
def status(dataset, batch_id, root, as_json) -> None:
    """Per-batch report: the work of every batch (stage; open, answered and deferred; what to run next), then for
    finished batches items per path, answers, estimated human minutes, per-annotator figures, gold accuracy."""
    from factory.pipeline import batch_summary

    fx = _fx(root)
    work = batch_work(fx, dataset, batch_id)
    ids = [batch_id] if batch_id else [b for b in fx.ledger.batches(dataset)["batch_id"]
                                       if fx.paths.table("final_labels", dataset, b).exists()]
    out = {b: batch_summary(fx, dataset, b) for b in ids if fx.paths.table("final_labels", dataset, b).exists()}
    if as_json:
        click.echo(json.dumps({"work": work, "finished": out}, indent=2, default=str))
        return
    for w in work:  # what is open, answered, deferred and waiting, for every batch, finished or not
        line = (f"batch {w['batch_id']}: {w['stage']}; tasks open {w['open']}, answered {w['answered']}"
                + (f", deferred items {w['deferred']}" if w["deferred"] else ""))
        click.secho(line, fg="yellow" if w["next"] else None)
        if w["next"]:
            click.echo(f"  next: {w['next']}")
    if not out:
        click.echo(f"no finished batch of '{dataset}' yet")
    for b, s in out.items():
        click.echo(f"batch {b}: {s['items']} items")
        click.echo("  paths: " + ", ".join(f"{k} {v}" for k, v in s["paths"].items()))
        if s.get("deferred"):
            why = ", ".join(f"{k} {v}" for k, v in s["deferred_reasons"].items())
            click.secho(f"  deferred {s['deferred']} (flagged beyond review.budget, no label yet; {why}): "
                        f"factory tasks list --dataset {dataset} --status deferred", fg="yellow")
        click.echo(f"  human answers {s['human_answers']} (~{s['human_minutes']} min), audit sample {s['audit_sample']}, "
                   f"gold accuracy {s['gold_accuracy'] if s['gold_accuracy'] is not None else 'n/a'}")
        for who, f in s["per_annotator"].items():
            click.echo(f"    {who}: {f['answers']} answers, agreement with final {f['agreement_with_final']}")
        for v, f in s["labeler_accuracy_heldout"].items():
            click.echo(f"  labeler {v}: {f['accuracy']:.1%} on {f['n']} human-checked items it never trained on")
