"""Releases: immutable, versioned folders releases/<dataset>/<semver>/ with a manifest of hashes.

A release takes every batch whose final labels exist and whose latest blocking checks passed; a
failed blocking check refuses the release and names the failing expectations.  Versions follow the
Croissant meaning: MAJOR for relabels, removals or split moves, MINOR for additions only, PATCH for
the same records re-serialised.  An existing version is never overwritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from checks.standards import DEFAULT_STANDARD
from factory.errors import ReleaseError
from factory.ledger import canonical, now

DATA_FILE = "labels.parquet"


def split_for(item_id: str, ratios: dict[str, float]) -> str:
    """Deterministic split of an item from its id's hash (the same item stays in the same split)."""
    u = int(hashlib.sha256(item_id.encode()).hexdigest()[:12], 16) / float(1 << 48)
    acc = 0.0
    for name, r in ratios.items():
        acc += r
        if u < acc:
            return name
    return list(ratios)[-1]


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _semver(v: str) -> tuple[int, int, int]:
    a, b, c = (int(x) for x in v.split("."))
    return a, b, c


def latest_release(fx, dataset: str) -> dict | None:
    rel = fx.ledger.releases(dataset)
    if rel.empty:
        return None
    rel = rel.assign(_k=rel["version"].map(_semver)).sort_values("_k")
    return rel.iloc[-1].drop("_k").to_dict()


def _ready_batches(fx, dataset: str) -> tuple[list[str], list[str]]:
    """Batches whose final labels passed their blocking checks; and those still pending."""
    batches = fx.ledger.batches(dataset)
    checks = fx.ledger.latest_checks(dataset)
    ready, pending, failures = [], [], []
    for b in batches["batch_id"]:
        if not fx.paths.table("final_labels", dataset, b).exists():
            pending.append(b)
            continue
        for asset in ("raw_items", "final_labels"):
            row = checks[(checks["batch_id"] == b) & (checks["asset"] == asset)] if not checks.empty else checks
            if row.empty:
                failures.append(f"batch {b}: the {asset} checks have not run")
                continue
            details = json.loads(row.iloc[-1]["details"])
            for e in details["expectations"]:
                if e["blocking"] and not e["success"]:
                    items = e.get("unexpected_items") or []
                    failures.append(f"batch {b}: {asset}.{e['name']} failed ({e['unexpected_count']} unexpected"
                                    + (f", e.g. {items[:5]}" if items else "") + ")")
        ready.append(b)
    if failures:
        raise ReleaseError(f"release of '{dataset}' refused: blocking quality checks failed:\n  - "
                           + "\n  - ".join(failures) + "\nFix the labels (or the spec) and rerun the checks.")
    return ready, pending


def build_release_table(fx, dataset: str, batch_ids: list[str]) -> pd.DataFrame:
    """The released records: one row per item, sorted by item id, with its split."""
    spec = fx.spec(dataset)
    frames = []
    for b in batch_ids:
        fl = pd.read_parquet(fx.paths.table("final_labels", dataset, b))
        raw = pd.read_parquet(fx.paths.table("raw_items", dataset, b))[["item_id", "text"]]
        frames.append(fl.merge(raw, on="item_id", how="left"))
    df = pd.concat(frames, ignore_index=True)
    df["split"] = [split_for(i, spec.splits) for i in df["item_id"]]
    cols = ["item_id", "text", "label", "confidence", "source", "split", "batch_id", "annotators", "n_events",
            "guideline_version", "spec_version"]
    return df[cols].sort_values("item_id").reset_index(drop=True)


def _changes(prev: pd.DataFrame | None, cur: pd.DataFrame) -> dict:
    if prev is None:
        return {"added": len(cur), "removed": 0, "relabelled": 0, "split_moves": 0}
    p = prev.set_index("item_id")
    c = cur.set_index("item_id")
    common = p.index.intersection(c.index)
    return {"added": int((~c.index.isin(p.index)).sum()), "removed": int((~p.index.isin(c.index)).sum()),
            "relabelled": int((p.loc[common, "label"] != c.loc[common, "label"]).sum()),
            "split_moves": int((p.loc[common, "split"] != c.loc[common, "split"]).sum())}


def next_version(prev_version: str | None, changes: dict, same_bytes: bool) -> tuple[str, str]:
    """The next semantic version and the reason for the bump."""
    if prev_version is None:
        return "1.0.0", "first release"
    a, b, c = _semver(prev_version)
    if changes["removed"] or changes["relabelled"] or changes["split_moves"]:
        return f"{a + 1}.0.0", "major: relabels, removals or split moves"
    if changes["added"]:
        return f"{a}.{b + 1}.0", "minor: additions only"
    if not same_bytes:
        return f"{a}.{b}.{c + 1}", "patch: same records, re-serialised or metadata changed"
    raise ReleaseError(f"nothing new since release {prev_version}: same records, same labels")


def release(fx, dataset: str, run_id: str | None = None) -> dict:
    """Write the next release of `dataset`; refuse on failed blocking checks, nothing new, or an existing version."""
    spec = fx.spec(dataset)
    ready, pending = _ready_batches(fx, dataset)
    if not ready:
        raise ReleaseError(f"nothing to release for '{dataset}': no batch has final labels yet "
                           f"({len(pending)} pending)")
    table = build_release_table(fx, dataset, ready)
    prev = latest_release(fx, dataset)
    prev_table = pd.read_parquet(Path(prev["path"]) / DATA_FILE) if prev else None
    changes = _changes(prev_table, table)
    out_root = fx.paths.releases / dataset
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        table.to_parquet(tmp / DATA_FILE, index=False)
        same = prev is not None and sha256_path(tmp / DATA_FILE) == sha256_path(Path(prev["path"]) / DATA_FILE)
        version, reason = next_version(prev["version"] if prev else None, changes, same)
        final = out_root / version
        if final.exists():
            raise ReleaseError(f"{final}: release {version} of '{dataset}' already exists; releases are immutable")
        batches = fx.ledger.batches(dataset).set_index("batch_id")
        manifest = {
            "dataset": dataset, "version": version, "bump_reason": reason,
            "previous_version": prev["version"] if prev else None, "changes": changes,
            "license": spec.license, "spec_version": spec.version, "guideline_version": spec.guideline.version,
            "quality_standard": DEFAULT_STANDARD, "items": len(table),
            "counts_per_class": table["label"].value_counts().sort_index().to_dict(),
            "counts_per_source": table["source"].value_counts().sort_index().to_dict(),
            "counts_per_split": table["split"].value_counts().sort_index().to_dict(),
            "batches": [{"batch_id": b, "source_sha256": batches.loc[b, "source_sha256"],
                         "items": int((table["batch_id"] == b).sum())} for b in ready],
            "pending_batches": pending,
            "files": {DATA_FILE: sha256_path(tmp / DATA_FILE)},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        lines = [f"{sha256_path(tmp / n)}  {n}" for n in sorted(os.listdir(tmp))]
        (tmp / "manifest-sha256.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        manifest_sha = sha256_path(tmp / "manifest.json")
        try:
            os.rename(tmp, final)  # atomic: the version folder appears complete or not at all
        except OSError:
            raise ReleaseError(f"{final}: release {version} of '{dataset}' already exists; releases are immutable") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fx.ledger.record_release(dict(dataset=dataset, version=version, path=str(final), manifest_sha256=manifest_sha,
                                  n_items=len(table), batches=canonical(ready), created_at=now()))
    return {"version": version, "path": str(final), "items": len(table), "bump": reason, "batches": ready,
            "manifest_sha256": manifest_sha, "changes": changes}


def verify_release_files(path: str | Path) -> list[str]:
    """Recompute every hash of manifest-sha256.txt; return the problems (empty when all holds)."""
    path = Path(path)
    listing = path / "manifest-sha256.txt"
    if not listing.exists():
        return [f"{listing}: missing"]
    problems, listed = [], set()
    for line in listing.read_text(encoding="utf-8").splitlines():
        digest, name = line.split("  ", 1)
        listed.add(name)
        f = path / name
        if not f.exists():
            problems.append(f"{name}: listed in the manifest but missing")
        elif sha256_path(f) != digest:
            problems.append(f"{name}: sha256 differs from the manifest (the file was changed)")
    for f in sorted(path.rglob("*")):
        rel = str(f.relative_to(path))
        if f.is_file() and rel != "manifest-sha256.txt" and rel not in listed:
            problems.append(f"{rel}: not listed in the manifest (an extra file)")
    return problems
