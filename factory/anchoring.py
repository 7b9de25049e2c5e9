"""Anchors: the ledger compared with what was already published outside it.

A hash chain proves that nothing changed only to someone who knows a hash from before the change.  Every
release publishes the chain head and event count it was cut from (`provenance/anchor.json`); a checkpoint
(`factory checkpoint --dataset D`) publishes the same pair on demand, signed with Ed25519 when a key is
configured.  `verify_ledger` walks the chain and checks it against every published release and checkpoint:
a rewritten chain, or one cut at the end with its head fixed, no longer carries the published hashes.

Keys come from the environment (factory/signing.py), never from the repository or the database.
See docs/tamper-evidence.md for what an attacker with write access to the database can and cannot hide.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from factory.errors import FactoryError
from factory.ingest import sha256_file
from factory.storage.ledger import ROOT_CHAIN, chain_root, now
from factory.progress import counted
from factory.release import release_dirs
from factory.signing import ANCHOR_FILE, check_signature, published_chains, sign, verify_key


def checkpoints_file(fx, dataset: str) -> Path:
    """Where `factory checkpoint` appends by default: checkpoints/<dataset>.jsonl under the factory root."""
    return fx.paths.root / "checkpoints" / f"{dataset}.jsonl"


def write_checkpoint(fx, dataset: str, out: str | Path | None = None) -> dict:
    """Append a (signed, when a key is configured) checkpoint of the dataset's chain head to
    checkpoints/<dataset>.jsonl (or `out`); copy that file somewhere the database's writers cannot reach."""
    a = fx.ledger.chain_anchor(dataset)
    if a["events"] == 0:
        raise FactoryError(f"dataset '{dataset}': no events in the ledger; nothing to checkpoint")
    rec = sign({"kind": "checkpoint", "dataset": dataset, "release": None, "events": a["events"],
                "head": a["head"], "created_at": now(), **published_chains(a)})
    path = Path(out) if out else checkpoints_file(fx, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
    return rec | {"file": str(path)}


def read_checkpoints(path: str | Path) -> tuple[list[dict], list[str]]:
    """The records of a checkpoints file, and a problem for each line that is not one."""
    path = Path(path)
    records, problems = [], []
    if not path.exists():
        return records, problems
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            int(rec["events"]), str(rec["head"])
        except (ValueError, KeyError, TypeError):
            problems.append(f"{path.name} line {n}: not a checkpoint record")
            continue
        records.append(rec | {"where": f"{path.name} line {n}"})
    return records, problems


# ----------------------------------------------------------------------------- verification
def _release_folders(fx, dataset: str) -> list[Path]:
    folders = {p.resolve() for p in release_dirs(fx.paths.releases, dataset)}
    rel = fx.ledger.releases(dataset)
    folders |= {Path(p).resolve() for p in (rel["path"] if not rel.empty else []) if Path(p).is_dir()}
    return sorted(folders)


def _release_against_ledger(fx, dataset: str, folder: Path, ledger_events) -> tuple[dict | None, list[str]]:
    """One release folder against the ledger: its anchor, its manifest as recorded at release time, and every
    provenance event present in the ledger with the same hash."""
    problems: list[str] = []
    name = f"release {folder.name}"
    rel = fx.ledger.releases(dataset)
    row = rel[rel["version"] == folder.name] if not rel.empty else rel
    if row.empty:
        problems.append(f"{name}: published in {folder.parent.name}/ but the ledger has no record of it")
    elif (folder / "manifest.json").exists() and sha256_file(folder / "manifest.json") != row.iloc[0]["manifest_sha256"]:
        problems.append(f"{name}: manifest.json differs from the one the ledger recorded at release time")
    anchor = None
    anchor_path = folder / ANCHOR_FILE
    if anchor_path.exists():
        try:
            anchor = json.loads(anchor_path.read_text(encoding="utf-8"))
            anchor["where"] = f"{name} {ANCHOR_FILE}"
            int(anchor["events"]), str(anchor["head"])
        except (ValueError, KeyError, TypeError):
            problems.append(f"{name}: {ANCHOR_FILE} is not an anchor record")
            anchor = None
    ev_path = folder / "provenance" / "events.parquet"
    if ev_path.exists():
        try:
            released = pd.read_parquet(ev_path, columns=["event_id", "hash", "seq"])
        except Exception as e:  # a damaged file is reported, not raised
            return anchor, problems + [f"{name}: provenance/events.parquet unreadable ({type(e).__name__})"]
        known = dict(zip(ledger_events["event_id"], ledger_events["hash"]))
        gone = released[~released["event_id"].isin(known)]
        changed = released[released["event_id"].isin(known)
                           & (released["event_id"].map(known) != released["hash"])]
        for r in gone.head(10).itertuples():
            problems.append(f"{name}: event {r.event_id} (seq {r.seq}) it released is no longer in the ledger")
        for r in changed.head(10).itertuples():
            problems.append(f"{name}: event {r.event_id} (seq {r.seq}) has another hash in the ledger than "
                            f"the one released (the ledger's copy was rewritten)")
    return anchor, problems


def _positions(anchor: dict) -> dict[tuple[str, int], str] | None:
    """The (chain, event count) -> hash positions an anchor publishes; None when its head is not the root of the
    chains it lists.  An anchor without `chains` (a single-chain dataset, or from before person chains) names the
    root chain's position."""
    if "chains" not in anchor:
        return {(ROOT_CHAIN, int(anchor["events"])): str(anchor["head"])}
    try:
        chains = {str(k): {"events": int(v[0]), "head": str(v[1])} for k, v in anchor["chains"].items()}
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        return None
    if chain_root(chains) != anchor["head"] or sum(v["events"] for v in chains.values()) != int(anchor["events"]):
        return None
    return {(k, v["events"]): v["head"] for k, v in chains.items() if v["events"]}


@counted("verify ledger", "events", count=lambda r: r["events"])
def verify_ledger(fx, dataset: str, checkpoint_files: list[str | Path] | None = None) -> dict:
    """The chain walk plus every published anchor: each release folder of the dataset (its anchor, its manifest
    as the ledger recorded it, its events as the ledger holds them) and every checkpoint record (signature
    checked when a verify key is configured).  {ok, events, head, anchors, problems, warnings}."""
    public = verify_key()
    problems, warnings, anchors = [], [], []
    ledger_events = fx.ledger.events(dataset)[["event_id", "hash"]]
    for folder in _release_folders(fx, dataset):
        anchor, found = _release_against_ledger(fx, dataset, folder, ledger_events)
        problems += found
        if anchor is not None:
            anchors.append(anchor)
    files = [checkpoints_file(fx, dataset), *(Path(p) for p in checkpoint_files or [])]
    for f in dict.fromkeys(files):
        recs, bad = read_checkpoints(f)
        problems += bad
        anchors += [r for r in recs if r.get("dataset") == dataset]
    by_count: dict[tuple[str, int], str] = {}
    distinct: set[frozenset] = set()  # anchors publishing the same positions count once
    for a in anchors:
        why = check_signature(a, public)
        if why is None:
            a["signed"] = True
        elif a.get("signature") and public is not None:
            problems.append(f"{a['where']}: {why}")
            continue  # a forged anchor is not evidence of anything
        elif public is not None and a.get("kind") == "checkpoint":
            problems.append(f"{a['where']}: {why} while a key is configured")
            continue
        elif a.get("signature"):
            warnings.append(f"{a['where']}: {why}")
        positions = _positions(a)
        if positions is None:
            problems.append(f"{a['where']}: its head is not the root of the chains it publishes (the record was "
                            f"edited)")
            continue
        for key, h in positions.items():
            if by_count.get(key, h) != h:
                problems.append(f"{a['where']}: publishes another hash for event {key[1]}"
                                f"{'' if key[0] == ROOT_CHAIN else f' of chain {key[0]!r}'} than an earlier anchor")
            by_count.setdefault(key, h)
        distinct.add(frozenset(positions.items()))
    chain = fx.ledger.verify_chain(dataset, anchors=by_count)
    if not chain["ok"]:
        problems += chain.get("anchor_problems") or [
            f"seq {chain['seq']} event {chain['event_id']}: {chain['problem']}"]
    return {"ok": not problems, "events": chain["events"], "head": chain.get("head"), "anchors": len(distinct),
            "anchors_signed": sum(1 for a in anchors if a.get("signed")), "problems": problems,
            "warnings": warnings}
