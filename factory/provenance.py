"""Provenance: Merkle roots over a batch's label events, an item's whole story, and a release's lineage.

The ledger chains every event's hash to the previous one (factory/storage/ledger.py).  A batch's Merkle root
(RFC 6962 tree hash over its events' chain hashes, in ledger order) summarises every event of the
batch in 32 bytes: it is written into the release manifest, and an inclusion proof shows that one
event belongs to it without the others.  `item_story` is what `factory trace` prints; `lineage`
turns a release folder into a PROV-O JSON-LD document for auditors, from the folder alone.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from factory.errors import FactoryError
from factory.storage.ledger import event_hash

EMPTY_ROOT = hashlib.sha256(b"").hexdigest()
PEOPLE_KINDS = ("human", "correction", "arbitration")  # event kinds whose actor is a (pseudonymous) person


# ----------------------------------------------------------------------------- Merkle trees (RFC 6962)
def _leaf(h: str) -> bytes:
    return hashlib.sha256(b"\x00" + bytes.fromhex(h)).digest()


def _node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _mth(leaves: list[bytes]) -> bytes:
    # iterative level-by-level build equals RFC 6962's recursive split for these leaf-hash inputs
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node(_mth(leaves[:k]), _mth(leaves[k:]))


def merkle_root(hashes: Sequence[str]) -> str:
    """RFC 6962 Merkle tree hash over hex event hashes, in the given order (empty: sha256 of b'')."""
    return _mth([_leaf(h) for h in hashes]).hex()


def inclusion_proof(hashes: Sequence[str], index: int) -> list[str]:
    """Audit path (hex sibling hashes, leaf to root) proving hashes[index] is in merkle_root(hashes)."""
    if not 0 <= index < len(hashes):
        raise IndexError(f"inclusion_proof: index {index} outside 0..{len(hashes) - 1}")
    leaves = [_leaf(h) for h in hashes]
    path: list[str] = []

    def walk(lv: list[bytes], m: int) -> None:
        if len(lv) <= 1:
            return
        k = _split(len(lv))
        if m < k:
            walk(lv[:k], m)
            path.append(_mth(lv[k:]).hex())
        else:
            walk(lv[k:], m - k)
            path.append(_mth(lv[:k]).hex())
    walk(leaves, index)
    return path


def verify_inclusion(leaf_hash: str, index: int, size: int, proof: Sequence[str], root: str) -> bool:
    """Check an inclusion proof (RFC 9162 section 2.1.3.2) of leaf `index` in a tree of `size` leaves."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = _leaf(leaf_hash)
    for p in proof:
        pb = bytes.fromhex(p)
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(pb, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, pb)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r.hex() == root


def batch_roots(events: pd.DataFrame) -> dict[str, dict]:
    """Merkle root of each batch's events (ordered by ledger seq): {batch_id: {root, events, last_seq}}."""
    out = {}
    for b, g in events.sort_values("seq").groupby("batch_id", sort=True):
        out[str(b)] = {"merkle_root": merkle_root(g["hash"].tolist()), "events": int(len(g)),
                       "last_seq": int(g["seq"].max())}
    return out


def verify_event_hashes(events: pd.DataFrame) -> list[str]:
    """Recompute each event's chain hash from its content and prev_hash; name the events that differ."""
    bad = []
    for row in events.to_dict("records"):
        row = {k: (None if _missing(v) else v) for k, v in row.items()}
        if event_hash(row["prev_hash"], row) != row["hash"]:
            bad.append(f"event {row['event_id']} (seq {row['seq']}, item {row['item_id']}): content does not "
                       f"match its hash")
    return bad


def _missing(v: Any) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- an item's story
def item_story(fx, dataset: str, item_id: str) -> dict:
    """Everything the factory knows about one item, in order: what each model said (with versions and
    probabilities), why it was routed, who answered, corrections, the final label, the versions and
    Dagster runs involved, the releases that carry it, and a Merkle inclusion proof for its final event."""
    ev = fx.ledger.events(dataset, item_id=item_id)
    item = fx.ledger.items(dataset, item_ids=[item_id])
    if ev.empty and item.empty:
        raise FactoryError(f"item '{item_id}': no events in dataset '{dataset}'; check the id with "
                           f"`factory tasks list --dataset {dataset} --status all`")
    tasks = fx.ledger.table("tasks", item_id=item_id)
    # an item just ingested has no label event yet: its story is its source, and it starts there
    batch_id = str(ev["batch_id"].iloc[0]) if len(ev) else str(item["batch_id"].iloc[0])
    story: dict[str, Any] = {
        "item_id": item_id, "dataset": dataset, "batch_id": batch_id,
        "external_id": None if item.empty or _missing(item["external_id"].iloc[0]) else str(item["external_id"].iloc[0]),
        "text": None if item.empty else str(item["text"].iloc[0]),
        "source": None if item.empty else {"file": item["source_file"].iloc[0], "row": int(item["source_row"].iloc[0])},
    }
    steps = []
    for r in ev.to_dict("records"):
        r = {k: (None if _missing(v) else v) for k, v in r.items()}
        payload = json.loads(r["payload"]) if r["payload"] else {}
        step = {"seq": int(r["seq"]), "at": r["created_at"], "kind": r["kind"], "actor": r["actor"],
                "label": r["label"], "confidence": None if r["confidence"] is None else float(r["confidence"]),
                "event_id": r["event_id"], "hash": r["hash"], "run_id": r["run_id"],
                "spec_version": r["spec_version"], "guideline_version": r["guideline_version"]}
        if r["kind"] == "model":
            step["labeler_version"] = r["actor"]
            step["probabilities"] = payload.get("probs")
        elif r["kind"] in ("human", "correction"):
            step["annotator"] = r["actor"]
            step["task_id"] = r["task_id"]
            step["supersedes"] = r["supersedes"]
            step["via"] = payload.get("source")
            step["task_kind"] = payload.get("task_kind")
        elif r["kind"] == "arbitration":
            step["expert"] = r["actor"]
            step["rationale"] = payload.get("rationale")
            step["evidence"] = payload.get("evidence")
            step["settles_tasks"] = payload.get("tasks")
        elif r["kind"] == "final":
            step["final_source"] = payload.get("source")
            step["contributing_events"] = payload.get("events")
        else:
            step["details"] = payload
        steps.append(step)
    story["events"] = steps
    story["review_steps"] = [{"task_id": t["task_id"], "kind": t["kind"], "reasons": json.loads(t["reasons"]),
                              "suggestion": None if _missing(t["suggestion"]) else t["suggestion"],
                              "created_at": t["created_at"], "run_id": None if _missing(t["run_id"]) else t["run_id"]}
                             for t in tasks.sort_values("created_at").to_dict("records")]
    finals = [s for s in steps if s["kind"] == "final"]
    story["final"] = ({"label": finals[-1]["label"], "source": finals[-1]["final_source"],
                       "confidence": finals[-1]["confidence"]} if finals else None)
    story["labelers"] = sorted({s["actor"] for s in steps if s["kind"] == "model"})
    story["annotators"] = sorted({s["actor"] for s in steps if s["kind"] in PEOPLE_KINDS})
    story["spec_versions"] = sorted({s["spec_version"] for s in steps if s["spec_version"]})
    story["guideline_versions"] = sorted({s["guideline_version"] for s in steps if s["guideline_version"]})
    story["dagster_runs"] = sorted({s["run_id"] for s in steps if s["run_id"]})
    story["code_version"] = code_version()
    batch_events = fx.ledger.events(dataset, batch_id=batch_id)
    hashes = batch_events["hash"].tolist()
    if finals:
        idx = hashes.index(finals[-1]["hash"])
        story["merkle"] = {"batch_root_now": merkle_root(hashes), "batch_events": len(hashes), "index": idx,
                           "leaf": finals[-1]["hash"], "proof": inclusion_proof(hashes, idx)}
    story["releases"] = _releases_with(fx, dataset, item_id)
    return story


def _releases_with(fx, dataset: str, item_id: str) -> list[dict]:
    rel = fx.ledger.releases(dataset)
    out = []
    for r in rel.to_dict("records"):
        p = Path(r["path"]) / "labels.parquet"
        if not p.exists():
            continue
        t = pd.read_parquet(p, columns=["item_id", "label", "split"], filters=[("item_id", "==", item_id)])
        if len(t):
            out.append({"version": r["version"], "label": t["label"].iloc[0], "split": t["split"].iloc[0],
                        "path": r["path"]})
    return out


def code_version() -> str:
    """The factory package version (and the git commit when run from a checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("annotation-factory")
    except PackageNotFoundError:
        v = "unknown"
    head = Path(__file__).resolve().parents[1] / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref = (head.parent / ref[5:]).read_text().strip()
        return f"{v}+g{ref[:12]}"
    except OSError:
        return v


def format_story(story: dict) -> str:
    """A human-readable rendering of item_story()."""
    lines = [f"item {story['item_id']}  (dataset {story['dataset']}, batch {story['batch_id']})"]
    if story.get("external_id"):
        lines.append(f"  your id: {story['external_id']}")
    if story.get("source"):
        lines.append(f"  from {story['source']['file']} row {story['source']['row']}")
    if story.get("text"):
        lines.append(f"  text: {story['text'][:100].replace(chr(10), ' ')}")
    if story["final"]:
        f = story["final"]
        lines.append(f"  FINAL: {f['label']} (source {f['source']}, confidence {f['confidence']})")
    lines.append("  story:")
    for s in story["events"]:
        conf = "" if s["confidence"] is None else f" ({s['confidence']:.3f})"
        line = f"    #{s['seq']} {s['at'][:19]} {s['kind']:<10} {s['actor']:<40} -> {s['label']}{conf}"
        if s.get("probabilities"):
            top = sorted(s["probabilities"].items(), key=lambda kv: -kv[1])[:3]
            line += "  p=" + ", ".join(f"{k}:{v:.2f}" for k, v in top)
        if s.get("task_kind"):
            line += f"  [{s['task_kind']} task {s['task_id']}]"
        if s.get("supersedes"):
            line += f"  supersedes {s['supersedes']}"
        if s.get("rationale"):
            line += f"  rationale: {s['rationale']}"
        lines.append(line)
    for t in story["review_steps"]:
        lines.append(f"  routed: {t['kind']} task {t['task_id']}: {'; '.join(t['reasons'])}")
    lines.append(f"  labelers: {', '.join(story['labelers']) or '-'}")
    lines.append(f"  annotators: {', '.join(story['annotators']) or '-'}")
    lines.append(f"  spec versions: {', '.join(story['spec_versions'])}; guideline: "
                 f"{', '.join(story['guideline_versions'])}; code {story['code_version']}")
    lines.append(f"  Dagster runs: {', '.join(story['dagster_runs']) or '-'}")
    if story.get("merkle"):
        m = story["merkle"]
        lines.append(f"  Merkle: final event is leaf {m['index']} of {m['batch_events']} under batch root "
                     f"{m['batch_root_now'][:16]}… (proof of {len(m['proof'])} hashes in --json)")
    for r in story["releases"]:
        lines.append(f"  in release {r['version']}: {r['label']} ({r['split']})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- lineage of a release
def lineage(release_path: str | Path) -> dict:
    """PROV-O (JSON-LD) lineage of a release, built from the release folder alone.

    Entities: the release, its data files, each batch (with its Merkle root), the spec, guideline and
    quality standard; activities: the Dagster runs that produced label events and the release itself;
    agents: the labelers (software) and the pseudonymous annotators, with wasAssociatedWith /
    wasGeneratedBy / used / wasDerivedFrom / wasAttributedTo relations.
    """
    path = Path(release_path)
    m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    ds, ver = m["dataset"], m["version"]
    rid = f"urn:factory:{ds}:release:{ver}"
    graph: list[dict] = []
    graph.append({"@id": rid, "@type": "prov:Entity", "prov:label": f"{ds} {ver}",
                  "factory:bumpReason": m.get("bump_reason"),
                  "prov:wasGeneratedBy": {"@id": f"{rid}:activity"},
                  "prov:wasDerivedFrom": [{"@id": f"urn:factory:{ds}:batch:{b['batch_id']}"} for b in m["batches"]]
                  + ([{"@id": f"urn:factory:{ds}:release:{m['previous_version']}"}] if m.get("previous_version") else [])})
    for name, digest in sorted(m.get("files", {}).items()):
        graph.append({"@id": f"{rid}/{name}", "@type": "prov:Entity", "factory:sha256": digest,
                      "prov:wasGeneratedBy": {"@id": f"{rid}:activity"}, "dct:isPartOf": {"@id": rid}})
    graph.append({"@id": f"{rid}:activity", "@type": "prov:Activity", "prov:label": "release",
                  "prov:used": [{"@id": f"urn:factory:{ds}:batch:{b['batch_id']}"} for b in m["batches"]]
                  + [{"@id": f"urn:factory:standard:{m['quality_standard']['name']}"},
                     {"@id": f"urn:factory:{ds}:spec:{m['spec_version']}"}],
                  "prov:wasAssociatedWith": {"@id": "urn:factory:software:annotation-factory"}})
    graph.append({"@id": f"urn:factory:standard:{m['quality_standard']['name']}", "@type": "prov:Entity",
                  "factory:sha256": m["quality_standard"].get("sha256")})
    graph.append({"@id": f"urn:factory:{ds}:spec:{m['spec_version']}", "@type": "prov:Entity",
                  "factory:guidelineVersion": m.get("guideline_version")})
    graph.append({"@id": "urn:factory:software:annotation-factory", "@type": ["prov:Agent", "prov:SoftwareAgent"],
                  "factory:codeVersion": m.get("code_version")})
    roots_file = path / "provenance" / "merkle-roots.json"
    roots = json.loads(roots_file.read_text(encoding="utf-8")) if roots_file.exists() else m.get("merkle_roots", {})
    for b in m["batches"]:
        bid = b["batch_id"]
        graph.append({"@id": f"urn:factory:{ds}:batch:{bid}", "@type": "prov:Entity",
                      "factory:sourceSha256": b.get("source_sha256"), "factory:items": b.get("items"),
                      "factory:merkleRoot": roots.get(bid, {}).get("merkle_root"),
                      "factory:events": roots.get(bid, {}).get("events")})
    ev_path = path / "provenance" / "events.parquet"
    if ev_path.exists():
        ev = pd.read_parquet(ev_path, columns=["batch_id", "kind", "actor", "run_id"])
        for run, g in ev.dropna(subset=["run_id"]).groupby("run_id", sort=True):
            graph.append({"@id": f"urn:dagster:run:{run}", "@type": "prov:Activity",
                          "factory:eventKinds": sorted(g["kind"].unique().tolist()),
                          "prov:generated": [{"@id": f"urn:factory:{ds}:batch:{b}"} for b in sorted(g["batch_id"].unique())],
                          "prov:wasAssociatedWith": [{"@id": _agent_id(a, k)} for a, k in
                                                     sorted(set(zip(g["actor"], g["kind"])))
                                                     if k == "model" or k in PEOPLE_KINDS]})
        agents = ev[ev["kind"].isin(["model", *PEOPLE_KINDS])][["actor", "kind"]].drop_duplicates()
        for a, k in sorted(set(zip(agents["actor"], agents["kind"]))):
            graph.append({"@id": _agent_id(a, k), "@type": ["prov:Agent", "prov:SoftwareAgent" if k == "model"
                                                             else "prov:Person"], "prov:label": a})
    graph = list({g["@id"]: g for g in graph}.values())
    return {"@context": {"prov": "http://www.w3.org/ns/prov#", "dct": "http://purl.org/dc/terms/",
                         "factory": "urn:factory:vocab:"},
            "@graph": graph}


def _agent_id(actor: str, kind: str) -> str:
    return f"urn:factory:{'labeler' if kind == 'model' else 'annotator'}:{actor}"


# ----------------------------------------------------------------------------- labels bound to their events
MACHINE_KINDS = ("model", "fusion")
MAX_PROBLEMS_PER_FILE = 20


def _payload(text) -> dict:
    try:
        p = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return p if isinstance(p, dict) else {}


def final_labels_from_events(events: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Each item's final label re-derived from its events alone (the last `final` event by ledger seq), checked
    against the events it names: they must exist, be the item's own, and carry the label where the source says
    who decided (arbitrated: the expert's last arbitration; auto/verified: a model or the fusion; people: one of
    the contributing answers or models).  Returns (item_id, batch_id, label, source, confidence, n_events), problems."""
    cols = ["item_id", "batch_id", "label", "source", "confidence", "n_events", "seq"]
    if events.empty:
        return pd.DataFrame(columns=cols), []
    ev = events.sort_values("seq")
    finals = ev[ev["kind"] == "final"].groupby("item_id", sort=True).tail(1)
    payloads = [_payload(p) for p in finals["payload"]]
    named = [[str(e) for e in (p.get("events") or [])] for p in payloads]
    derived = pd.DataFrame({
        "item_id": finals["item_id"].astype(str).to_numpy(), "batch_id": finals["batch_id"].astype(str).to_numpy(),
        "label": [None if _missing(v) else str(v) for v in finals["label"]],
        "source": [p.get("source") or str(a).removeprefix("final:") for p, a in zip(payloads, finals["actor"])],
        "confidence": [None if _missing(v) else float(v) for v in finals["confidence"]],
        "n_events": [len(n) for n in named], "seq": finals["seq"].astype(int).to_numpy()}, columns=cols)
    final_ids = dict(zip(derived["item_id"], finals["event_id"]))
    # one row per (final event, event it names), joined with the named event: vectorised, a release has many items
    links = pd.DataFrame({"item_id": derived["item_id"].repeat(derived["n_events"]).to_numpy(),
                          "named": [e for n in named for e in n]})
    known = ev[["event_id", "item_id", "kind", "label", "seq"]].rename(
        columns={"item_id": "of_item", "label": "named_label", "seq": "named_seq"}).drop_duplicates("event_id")
    links = links.merge(known, left_on="named", right_on="event_id", how="left")
    problems: list[str] = []

    def where(item: str) -> str:
        return f"provenance/events.parquet: item {item}: final event {final_ids[item]}"

    gone = links[links["event_id"].isna()].groupby("item_id", sort=True)["named"].agg(list)
    problems += [f"{where(i)} names event(s) {g[:3]} that are not in the release's provenance" for i, g in gone.items()]
    strange = links[links["event_id"].notna() & (links["of_item"].astype(str) != links["item_id"])]
    problems += [f"{where(i)} names event(s) of other items {g[:3]}"
                 for i, g in strange.groupby("item_id", sort=True)["named"].agg(list).items()]
    own = links[links["of_item"].astype(str) == links["item_id"]].merge(
        derived[["item_id", "label", "source"]], on="item_id")
    machine = own["source"].isin(["auto", "verified"])
    plain = own[~own["source"].eq("arbitrated") & (~machine | own["kind"].isin(MACHINE_KINDS))]
    supported = set(plain.loc[plain["named_label"].astype(str) == plain["label"].astype(str), "item_id"])
    arb = own[own["source"].eq("arbitrated") & own["kind"].eq("arbitration")].sort_values("named_seq")
    last_arb = arb.groupby("item_id").tail(1)
    supported |= set(last_arb.loc[last_arb["named_label"].astype(str) == last_arb["label"].astype(str), "item_id"])
    for r in derived[(derived["n_events"] > 0) & ~derived["item_id"].isin(supported)].itertuples():
        mine = own[own["item_id"] == r.item_id]
        said = sorted(set(mine["named_label"].dropna().astype(str)))
        problems.append(f"{where(r.item_id)}: label '{r.label}' ({r.source}) is not what the events it rests on "
                        f"say ({said or 'nothing'})")
    return derived, problems


def compare_with_events(name: str, table: pd.DataFrame, derived: pd.DataFrame,
                        columns: Sequence[str] = ("label", "source", "n_events")) -> list[str]:
    """Problems where a released table (file `name`) disagrees with the labels re-derived from the events: an
    item without a final event, or a differing label, source or number of events.  Confidence is not compared by
    default: a re-run of finalisation may refine it (annotators' reliabilities moved) without a new final event,
    since the final event's dedup key covers label, source and events only."""
    problems: list[str] = []
    if "item_id" not in table or "label" not in table:
        return [f"{name}: no item_id/label columns"]
    t = table.assign(item_id=table["item_id"].astype(str))
    dup = t["item_id"][t["item_id"].duplicated()]
    problems += [f"{name}: item {i}: listed more than once" for i in dup.unique()[:MAX_PROBLEMS_PER_FILE]]
    t = t.drop_duplicates("item_id").set_index("item_id")
    d = derived.set_index("item_id")
    for i in sorted(set(t.index) - set(d.index))[:MAX_PROBLEMS_PER_FILE]:
        problems.append(f"{name}: item {i}: no final event in provenance/events.parquet backs this label")
    both = t.index.intersection(d.index)
    for col in columns:
        if col not in t:
            continue
        a, b = t.loc[both, col], d.loc[both, col]
        if col == "confidence":
            diff = ~((pd.to_numeric(a, errors="coerce") - pd.to_numeric(b, errors="coerce")).abs() <= 1e-6)
            diff &= ~(a.isna() & b.isna())
        elif col == "n_events":
            diff = pd.to_numeric(a, errors="coerce") != pd.to_numeric(b, errors="coerce")
        else:
            diff = a.astype(str) != b.astype(str)
        for i in list(both[diff.to_numpy()])[:MAX_PROBLEMS_PER_FILE]:
            problems.append(f"{name}: item {i}: {col} '{t.at[i, col]}' but its final event in "
                            f"provenance/events.parquet says '{d.at[i, col]}'")
    return problems
