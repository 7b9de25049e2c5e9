"""`factory release ...`: create, list, show, diff releases, export their lineage, publish the feed."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from factory.cli_common import ROOT_HELP, factory_at as _fx, fail as _fail
from factory.errors import FactoryError


def _path(fx, dataset: str, version: str) -> Path:
    p = Path(version)
    if (p / "manifest.json").exists():
        return p
    p = fx.paths.releases / dataset / version
    if not (p / "manifest.json").exists():
        from factory.release import release_dirs

        known = [d.name for d in release_dirs(fx.paths.releases, dataset)]
        _fail(f"release {version} of '{dataset}' not found under {fx.paths.releases / dataset}; known: {known}")
    return p


@click.group("release")
def release_group() -> None:
    """Releases: immutable, versioned, verifiable folders releases/DATASET/VERSION/.

    \b
      factory release create --dataset D [--format jsonl --format csv]
      factory release list --dataset D
      factory release show VERSION --dataset D
      factory release diff A B --dataset D
      factory release lineage VERSION --dataset D      PROV-O JSON-LD for auditors
      factory release feed --dataset D [--atom]        versions for subscribers
      factory verify-release releases/D/VERSION        hashes + standard, no database
    """


@release_group.command("create")
@click.option("--dataset", required=True)
@click.option("--format", "formats", multiple=True, type=click.Choice(["jsonl", "csv"]),
              help="Also write labels.jsonl / labels.csv (Parquet is always written).")
@click.option("--root", default=None, help=ROOT_HELP)
def create(dataset: str, formats: tuple[str, ...], root: str | None) -> None:
    """Write the next release now (the same step as `factory run --stage release`, without Dagster).

    Refused, naming what failed, when a blocking check or quality gate failed, when nothing changed
    since the last release, or when the version exists already.
    """
    from factory.errors import ReleaseRefused
    from factory.release import release

    try:
        r = release(_fx(root), dataset, formats=("parquet", *formats))
    except ReleaseRefused as e:
        refused_exit(str(e))
    except FactoryError as e:
        _fail(e)
    click.secho(f"released {dataset} {r['version']} ({r['bump']}): {r['items']} items at {r['path']}", fg="green")
    click.echo(f"content id {r['content_id']}  (sha256 of manifest-sha256.txt)")
    if not r["quality_passed"]:
        click.secho("note: some non-blocking quality gates failed; see quality/certificate.json", fg="yellow")


EXIT_REFUSED = 3  # a release refused by a blocking gate or expectation (2 is bad input, 1 a failed run)


def refused_exit(message: str) -> None:
    """Print a release refusal (version and every failing gate) in red on stderr and exit EXIT_REFUSED."""
    click.secho(message, fg="red", err=True)
    sys.exit(EXIT_REFUSED)


@release_group.command("list")
@click.option("--dataset", required=True)
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True)
def list_cmd(dataset: str, root: str | None, as_json: bool) -> None:
    """List the versions of a dataset with items, bump reason and quality verdict (PASS, FAIL on a
    non-blocking gate), and the refused attempts (REFUSED, with the failing gates; nothing was written)."""
    from factory.release import refused_attempts, release_dirs, show

    fx = _fx(root)
    rows = []
    for d in release_dirs(fx.paths.releases, dataset):
        m = show(d)
        passed = (m.get("quality") or {}).get("passed")
        status = "PASS" if passed else "FAIL" if passed is False else "UNKNOWN"
        if passed and (m.get("quality") or {}).get("accuracy_gate") == "estimate":
            status = "PASS (point estimate, not certified)"
        rows.append({"version": m["version"], "status": status,
                     "items": m["items"], "bump": m.get("bump_reason"),
                     "standard": (m.get("quality_standard") or {}).get("name") if isinstance(m.get("quality_standard"), dict)
                     else m.get("quality_standard"),
                     "quality_passed": passed, "content_id": m["content_id"], "path": str(d)})
    written = {r["version"] for r in rows}
    latest: dict[str, dict] = {}
    for a in refused_attempts(fx, dataset):  # the last refusal of each version never written
        if a["version"] not in written:
            latest[a["version"]] = a
    for v, a in latest.items():
        rows.append({"version": v, "status": "REFUSED", "items": None, "bump": None, "standard": None,
                     "quality_passed": False, "content_id": None, "path": None, "refused_at": a["created_at"],
                     "failures": a["failures"]})
    rows.sort(key=lambda r: tuple(int(x) for x in r["version"].split(".")))
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo(f"no releases of '{dataset}' yet")
    for r in rows:
        if r["status"] == "REFUSED":
            click.secho(f"{r['version']:>8}  REFUSED  nothing written ({r['refused_at'][:19]}); failing:", fg="red")
            for f in r["failures"]:
                click.echo(f"{'':>10}- {f}")
            continue
        click.secho(f"{r['version']:>8}  {r['status']:<7}  {r['items']:>7} items  {r['bump'] or '':<44}  "
                    f"{r['standard'] or '':<24} {(r['content_id'] or '')[:12]}",
                    fg=None if r["status"] == "PASS" else "yellow")


@release_group.command("show")
@click.argument("version")
@click.option("--dataset", required=True)
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True)
def show_cmd(version: str, dataset: str, root: str | None, as_json: bool) -> None:
    """Show a release's manifest (counts, versions, Merkle roots, quality summary)."""
    from factory.release import show

    m = show(_path(_fx(root), dataset, version))
    if as_json:
        click.echo(json.dumps(m, indent=2, sort_keys=True))
        return
    for k in ("dataset", "version", "bump_reason", "previous_version", "items", "license", "spec_version",
              "guideline_version", "code_version", "date", "content_id"):
        click.echo(f"{k:>18}: {m.get(k)}")
    for k in ("counts_per_split", "counts_per_source", "counts_per_class", "changes", "quality", "quality_standard"):
        click.echo(f"{k:>18}: {json.dumps(m.get(k), sort_keys=True)}")
    for b, r in (m.get("merkle_roots") or {}).items():
        click.echo(f"{'batch ' + b:>18}: Merkle root {r['merkle_root']} over {r['events']} events")


@release_group.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--dataset", required=True)
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True)
def diff_cmd(a: str, b: str, dataset: str, root: str | None, as_json: bool) -> None:
    """What changed from release A to release B: per split added/removed/relabelled/moved, with examples."""
    from factory.release import diff

    fx = _fx(root)
    d = diff(_path(fx, dataset, a), _path(fx, dataset, b))
    if as_json:
        click.echo(json.dumps(d, indent=2, sort_keys=True))
        return
    c = d["changes"]
    click.echo(f"{d['from']} -> {d['to']}: {c['added']} added, {c['removed']} removed, {c['relabelled']} relabelled, "
               f"{c['split_moves']} moved between splits")
    for s, r in sorted(d["changes_per_split"].items()):
        click.echo(f"  {s:<12} +{r['added']} -{r['removed']} ~{r['relabelled']} in {r['moved_in']} out {r['moved_out']} "
                   f"= {r['total']}")
    for e in d["examples"]["relabelled"]:
        click.echo(f"  relabelled {e['item_id']}: {e['from']} -> {e['to']}")


@release_group.command("lineage")
@click.argument("version")
@click.option("--dataset", required=True)
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False), help="Write to FILE instead of stdout.")
def lineage_cmd(version: str, dataset: str, root: str | None, out: str | None) -> None:
    """PROV-O JSON-LD lineage of a release (batches, Merkle roots, runs, labelers, annotators), from its folder."""
    from factory.provenance import lineage

    doc = json.dumps(lineage(_path(_fx(root), dataset, version)), indent=2, sort_keys=True)
    if out:
        Path(out).write_text(doc + "\n", encoding="utf-8")
        click.echo(f"wrote {out}")
    else:
        click.echo(doc)


@release_group.command("feed")
@click.option("--dataset", required=True)
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--atom", is_flag=True, help="Atom XML instead of JSON Feed.")
@click.option("--base-url", default="", help="Prefix of the links in the feed (e.g. https://host/api).")
def feed_cmd(dataset: str, root: str | None, atom: bool, base_url: str) -> None:
    """The dataset's versions as a feed for subscribers (JSON Feed 1.1 or Atom)."""
    from factory.delivery import atom_feed, json_feed

    fx = _fx(root)
    if atom:
        click.echo(atom_feed(fx.paths.releases, dataset, base_url), nl=False)
    else:
        click.echo(json.dumps(json_feed(fx.paths.releases, dataset, base_url), indent=2))
