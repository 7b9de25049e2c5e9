"""What every `factory` command module shares: the --root help, the factory it names, and how errors end."""
from __future__ import annotations

import sys

import click

ROOT_HELP = "Factory root folder (datasets/, data/, releases/). Default: $FACTORY_HOME or the current directory."


def factory_at(root: str | None):
    """The factory under `root` (imported lazily: `factory --help` stays fast); its long steps draw progress
    bars on stderr when `factory --progress` or a terminal asks for them (factory.progress)."""
    from factory.pipeline import Factory
    from factory.progress import bars

    return Factory.at(root, bars())


def fail(e: object) -> None:
    """Print an error in red on stderr and exit 2 (bad input), the convention of every command."""
    click.secho(f"error: {e}", fg="red", err=True)
    sys.exit(2)


def did_you_mean(name: str, known) -> str:
    """'; did you mean 'x'?' for the closest known name (difflib), or '.' when none is close."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else "."


def _known_list(known) -> str:
    known = sorted(set(known))
    return ", ".join(known[:10]) + (f", … ({len(known)} in all)" if len(known) > 10 else "") if known else "none yet"


def check_names(params: dict, command: str) -> None:
    """Exit 2 naming the closest known name when a command is given a dataset, batch or annotator that
    does not exist: a typo must not read as 'nothing to do'."""
    dataset, batch_id = params.get("dataset"), params.get("batch_id")
    who = params.get("annotator_id") if command not in ("add",) else None
    answering = params.get("annotator")  # the person answering: checked only when a registry is kept
    if not (dataset or batch_id or who or answering):
        return
    fx = factory_at(params.get("root"))
    if dataset:
        # a spec file, or a dataset the ledger holds batches or events of (its spec may be gone)
        known = (set(fx.datasets()) | set(fx.ledger.batches()["dataset"])
                 | set(fx.ledger.table("chain_heads")["dataset"]))
        if dataset not in known:
            fail(f"no dataset '{dataset}' (no {fx.paths.spec_path(dataset)}){did_you_mean(dataset, known)} "
                 f"Known datasets: {_known_list(known)}. Create one with `factory init {dataset}`.")
    if batch_id:
        batches = fx.ledger.batches(dataset)
        tasks = fx.ledger.tasks(dataset)
        known = set(batches["batch_id"]) | set(tasks["batch_id"])  # 'qualification' tasks have no ingest batch
        if batch_id not in known:
            where = f" of dataset '{dataset}'" if dataset else ""
            other = fx.ledger.batch(batch_id)
            hint = (f"; it belongs to dataset '{other['dataset']}'." if other else did_you_mean(batch_id, known))
            fail(f"no batch '{batch_id}'{where}{hint} Known batches: {_known_list(known)} "
                 f"(`factory batches list{' --dataset ' + dataset if dataset else ''}`).")
    if who or answering:
        from factory.workforce import Workforce

        known = set(Workforce(fx.ledger).list()["annotator_id"])
        if answering and known and answering not in known:
            who = answering  # people are registered here, so an unknown name is a typo or an unregistered person
        if who and who not in known:
            fail(f"annotator '{who}' is not registered{did_you_mean(who, known)} Known: {_known_list(known)}. "
                 f"Register them with `factory annotators add {who} --tier L1` (or L2, L3, expert).")


def guard_names(cmd: click.Command) -> None:
    """Wrap every (sub)command taking --dataset, --batch or an ANNOTATOR_ID so unknown names fail first."""
    import functools

    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            guard_names(sub)
        return
    if not {p.name for p in cmd.params} & {"dataset", "batch_id", "annotator_id", "annotator"} or cmd.callback is None:
        return
    if getattr(cmd.callback, "__guarded__", False):
        return
    callback = cmd.callback

    @functools.wraps(callback)
    def guarded(*args, **kwargs):
        check_names(kwargs, cmd.name)
        return callback(*args, **kwargs)

    guarded.__guarded__ = True
    cmd.callback = guarded
