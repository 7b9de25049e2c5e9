"""Releases: immutable, content-addressed, versioned folders releases/<dataset>/<semver>/.

A release takes every batch whose final labels exist and whose latest blocking checks passed; a
failed blocking check, a failed blocking quality gate of the spec, or a blocking expectation of the
dataset's quality standard re-run on the release table refuses the release and names what failed.
Versions follow the Croissant meaning: MAJOR for relabels, removals or split moves, MINOR for
additions only, PATCH for the same records re-serialised or metadata only.  An existing version is
never overwritten.

Layout of a release folder (every file listed in manifest-sha256.txt, BagIt style)::

    labels.parquet            the data, one row per item, sorted by item id (labels.jsonl/.csv on request)
    data/<split>.parquet      the same rows per split (the Hugging Face configs point here)
    croissant.json            Croissant 1.1 metadata with the RAI annotation fields
    README.md                 dataset card with a Hugging Face YAML header
    CHANGELOG.md              per-split counts added/removed/relabelled, reason of each bump
    manifest.json             counts, versions, quality summary, sha256 of each data/metadata file
    standard/<id-version>.json  the quality standard the release was checked against (re-run by verify)
    quality/certificate.json  every measure with its intervals, the gates, the auto-accept guarantee
    quality/report.html       the same as figures
    quality/evidence.parquet  per item: route, machine label and confidence (what the certificate rests on)
    manifest-sha256.txt       "<sha256>  <path>" for every file above (BagIt payload manifest)
    provenance/events.parquet every ledger event of the released batches (recheckable chain hashes)
    provenance/merkle-roots.json  the Merkle root of each batch over its events' chain hashes
    provenance/anchor.json    the ledger's chain head and event count the release was cut from (signed with
                              Ed25519 when FACTORY_SIGNING_KEY is set); `factory verify` checks the ledger against it
    tagmanifest-sha256.txt    "<sha256>  <path>" for manifest-sha256.txt and provenance/* (BagIt tag manifest)

Determinism: the same labels give the same bytes, and the content id (sha256 of manifest-sha256.txt)
names the content.  The only dates are ``datePublished`` in croissant.json and ``date`` in
manifest.json/README.md/CHANGELOG.md: the ingest date of the newest released batch (from the ledger,
not the clock).  The one place with run-specific facts is ``provenance/`` (event ids, event
timestamps, Dagster run ids, hence the Merkle roots) and the tag manifest that covers it: two
independent runs that produce the same labels (e.g. a crashed-and-resumed run and an uninterrupted
one) give identical files everywhere else.  The wall-clock time of the release is kept in the
ledger's releases table only.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from checks.standards import DEFAULT_STANDARD, STANDARDS_DIR
from factory import tasks
from factory.errors import ReleaseError, ReleaseRefused
from factory.ingest import sha256_file
from factory.storage.ledger import canonical, now, within_cut
from factory.progress import counted
from factory.quality import MACHINE_SOURCES, proportional_audit
from factory.signing import ANCHOR_FILE, check_signature, release_anchor, verify_key

DATA_FILE = "labels.parquet"
LISTING = "manifest-sha256.txt"
TAG_LISTING = "tagmanifest-sha256.txt"
RUN_SPECIFIC = ("provenance/",)  # files whose bytes depend on the run (ids, timestamps), not on the labels
FORMATS = ("parquet", "jsonl", "csv")
EVENT_COLUMNS = ["seq", "event_id", "dataset", "batch_id", "item_id", "task_id", "kind", "actor", "label",
                 "confidence", "payload", "supersedes", "spec_version", "guideline_version", "run_id",
                 "created_at", "prev_hash", "hash"]


def split_for(item_id: str, ratios: dict[str, float]) -> str:
    """Deterministic split of an item from its id's hash (the same item stays in the same split)."""
    u = int(hashlib.sha256(item_id.encode()).hexdigest()[:12], 16) / float(1 << 48)
    acc = 0.0
    for name, r in ratios.items():
        acc += r
        if u < acc:
            return name
    return list(ratios)[-1]


sha256_path = sha256_file  # one implementation of a file's sha256 (factory.ingest)


def _semver(v: str) -> tuple[int, int, int]:
    a, b, c = (int(x) for x in v.split("."))
    return a, b, c


def latest_release(fx, dataset: str) -> dict | None:
    """The ledger row of the dataset's highest version, or None."""
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
        fl = fl[fl["source"] != "deferred"]  # no accepted label yet: never released (counted in the certificate)
        raw = pd.read_parquet(fx.paths.table("raw_items", dataset, b))
        extra = spec.task_type.release_columns  # spans: the tokens and the BIO view
        frames.append(fl.merge(raw[["item_id", "text"]] if extra is None else
                               raw[["item_id", "text"]].join(extra(raw, fl.set_index("item_id")["label"].reindex(
                                   raw["item_id"]).to_numpy())), on="item_id", how="left"))
    df = pd.concat(frames, ignore_index=True)
    df["split"] = [split_for(i, spec.splits) for i in df["item_id"]]
    cols = ["item_id", "text", *spec.task_type.release_column_names, "label", "confidence", "source",
            "split", "batch_id", "annotators", "n_events", "guideline_version", "spec_version"]
    item_columns = spec.task_type.item_columns  # e.g. pairs: the two sides, left and right
    if item_columns is not None and len(df):
        extra = pd.DataFrame([item_columns(t) for t in df["text"]], index=df.index)
        for c in extra.columns:
            df[c] = extra[c]
        cols[2:2] = list(extra.columns)
    if spec.task.id_column:  # the user's own ids, as a last column only for datasets that declare them
        ext = fx.ledger.items(dataset, item_ids=df["item_id"].tolist()).set_index("item_id")["external_id"]
        df["external_id"] = df["item_id"].map(ext)
        cols.append("external_id")
    return df[cols].sort_values("item_id").reset_index(drop=True)


# audited by people but left out of the certificate's sample (see factory.quality.proportional_audit)
AUDIT_SURPLUS = "audit_surplus"


def _evidence(fx, dataset: str, batch_ids: list[str]) -> pd.DataFrame:
    """Per item: route, routing reasons, machine (fused) label and confidence, final label and source: what
    the certificate rests on."""
    frames = []
    for b in batch_ids:
        f = pd.read_parquet(fx.paths.table("final_labels", dataset, b))
        rp = fx.paths.table("routing", dataset, b)
        r = pd.read_parquet(rp) if rp.exists() else pd.DataFrame(columns=["item_id"])
        if "reasons" in r:
            f = f.merge(r[["item_id", "reasons"]], on="item_id", how="left")
        frames.append(f.assign(_batch=b))
    df = pd.concat(frames, ignore_index=True)
    df = df[df["source"] != "deferred"]
    if "route" in df:  # batches audit at different rates: the certificate counts a proportional subsample
        keep = proportional_audit(df["_batch"], df["route"], df["source"].isin(MACHINE_SOURCES), df["item_id"])
        df.loc[df["route"].eq("audit") & ~keep, "route"] = AUDIT_SURPLUS
    for c in ("route", "fused_label", "fused_confidence", "reasons"):
        if c not in df:
            df[c] = None
    extra = ["raw_confidence"] if "raw_confidence" in df else []
    return (df[["item_id", "route", "reasons", "fused_label", "fused_confidence", *extra, "label", "source"]]
            .sort_values("item_id").reset_index(drop=True))


# routing reasons that flag an item as one the machines cannot vouch for (audit and budget are not flags)
FLAG_REASONS = ("disagreement", "low_confidence", "bias", "no_support", "verifier_disagrees",
                "below_accept_confidence", "probable_mislabel", "annotators_disagree", "missing_label")


def routing_facts(evidence: pd.DataFrame) -> dict:
    """What happened to the items routing flagged, counted from the released labels' routes and sources."""
    from factory.quality import MACHINE_SOURCES

    if evidence["reasons"].isna().all():
        return {"reasons_recorded": False}
    reasons = evidence["reasons"].map(_as_list)
    flagged = reasons.map(lambda rs: any(x in FLAG_REASONS or str(x).startswith("rule:") for x in rs))
    machine = evidence["source"].isin(MACHINE_SOURCES)
    why = pd.Series([x for rs in reasons[flagged & machine] for x in rs], dtype=object)
    return {"reasons_recorded": True, "items": int(len(evidence)), "flagged": int(flagged.sum()),
            "flagged_decided_by_people": int((flagged & ~machine).sum()),
            "flagged_accepted_without_a_person": int((flagged & machine).sum()),
            "reasons_of_those_accepted_without_a_person": {str(k): int(v) for k, v in
                                                           why.value_counts().sort_index().items()},
            "accepted_without_a_person": int(machine.sum())}


def _as_list(r: Any) -> list:
    if isinstance(r, str):
        return json.loads(r)
    return list(r) if isinstance(r, (list, tuple)) else []


def _routing_sentence(f: dict) -> str:
    if not f.get("reasons_recorded"):
        return ("The routing reasons of these items were not recorded, so this release cannot say whether the "
                "items the machines could not vouch for were seen by people.")
    if f["flagged"] == 0:
        return (f"Routing flagged none of the {f['items']} items; {f['accepted_without_a_person']} labels were "
                f"accepted without a person.")
    if f["flagged_accepted_without_a_person"] == 0:
        return (f"Every one of the {f['flagged']} items routing flagged (models disagreeing, low confidence, "
                f"suspected bias, ...) was decided by a person; {f['accepted_without_a_person']} unflagged labels "
                f"were accepted without a person.")
    why = ", ".join(f"{k} {v}" for k, v in f["reasons_of_those_accepted_without_a_person"].items())
    return (f"Of the {f['flagged']} items routing flagged, {f['flagged_accepted_without_a_person']} were accepted "
            f"WITHOUT a person (their routing reasons: {why}) and {f['flagged_decided_by_people']} were decided "
            f"by people; the ones accepted without a person carry source `auto` in labels.parquet.")


def deferred_summary(fx, dataset: str, batch_ids: list[str]) -> dict:
    """Flagged items left out of the release because no person answered them within the review budget."""
    from collections import Counter

    n, reasons = 0, Counter()
    for b in batch_ids:
        fl = pd.read_parquet(fx.paths.table("final_labels", dataset, b), columns=["item_id", "source"])
        ids = set(fl.loc[fl["source"] == "deferred", "item_id"])
        if ids:
            r = pd.read_parquet(fx.paths.table("routing", dataset, b), columns=["item_id", "reasons"])
            n += len(ids)
            reasons.update(x for rs in r.loc[r["item_id"].isin(ids), "reasons"].map(json.loads) for x in rs)
    return {"items": n, "reasons": dict(sorted(reasons.items())),
            "note": "flagged by routing (reasons above) beyond review.budget: no person has answered them, so they "
                    "have no accepted label and are not in this release; the next routing pass funds them first"}


def _changes(prev: pd.DataFrame | None, cur: pd.DataFrame) -> dict:
    if prev is None:
        return {"added": len(cur), "removed": 0, "relabelled": 0, "split_moves": 0}
    p = prev.set_index("item_id")
    c = cur.set_index("item_id")
    common = p.index.intersection(c.index)
    return {"added": int((~c.index.isin(p.index)).sum()), "removed": int((~p.index.isin(c.index)).sum()),
            "relabelled": int((p.loc[common, "label"] != c.loc[common, "label"]).sum()),
            "split_moves": int((p.loc[common, "split"] != c.loc[common, "split"]).sum())}


def changes_per_split(prev: pd.DataFrame | None, cur: pd.DataFrame) -> dict[str, dict]:
    """Per split of the new release: items added, removed, relabelled, moved in/out, and the total."""
    splits = sorted(set(cur["split"]) | (set(prev["split"]) if prev is not None else set()))
    out = {}
    p = prev.set_index("item_id") if prev is not None else None
    c = cur.set_index("item_id")
    for s in splits:
        cs = c[c["split"] == s]
        if p is None:
            out[s] = {"added": len(cs), "removed": 0, "relabelled": 0, "moved_in": 0, "moved_out": 0, "total": len(cs)}
            continue
        ps = p[p["split"] == s]
        common = cs.index.intersection(ps.index)
        moved_in = cs.index.isin(p.index) & ~cs.index.isin(ps.index)
        moved_out = ps.index.isin(c.index) & ~ps.index.isin(cs.index)
        out[s] = {"added": int((~cs.index.isin(p.index)).sum()), "removed": int((~ps.index.isin(c.index)).sum()),
                  "relabelled": int((ps.loc[common, "label"] != cs.loc[common, "label"]).sum()),
                  "moved_in": int(moved_in.sum()), "moved_out": int(moved_out.sum()), "total": len(cs)}
    return out


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


# ----------------------------------------------------------------------------- quality of a release
def _human_answers(fx, dataset: str, item_ids: set[str]) -> pd.DataFrame:
    dec = fx.ledger.human_decisions(dataset)
    if dec.empty:
        return pd.DataFrame(columns=["item_id", "annotator", "label", "task_id"])
    dec = dec[dec["item_id"].isin(item_ids)]
    return dec.rename(columns={"actor": "annotator"})[["item_id", "annotator", "label", "task_id"]].reset_index(drop=True)


def _model_labels(fx, dataset: str, batch_ids: list[str]) -> pd.DataFrame:
    frames = []
    for b in batch_ids:
        p = fx.paths.table("model_predictions", dataset, b)
        if p.exists():
            frames.append(pd.read_parquet(p, columns=["item_id", "labeler", "label", "labeler_version"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["item_id", "labeler", "label"])


def load_gold(fx, spec) -> pd.DataFrame | None:
    """The spec's gold file (quality.gold: CSV with item_id or text, and label), relative to the factory root."""
    if not spec.quality.gold:
        return None
    from factory.ingest import item_id_for

    path = Path(spec.quality.gold)
    path = path if path.is_absolute() else fx.paths.root / path
    if not path.is_file():
        raise ReleaseError(f"{path}: the gold file named in the spec (quality.gold) does not exist")
    g = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "label" not in g or not ({"item_id", "text"} & set(g.columns)):
        raise ReleaseError(f"{path}: a gold file needs columns label and item_id (or text); found {list(g.columns)}")
    if "item_id" not in g:
        g["item_id"] = [item_id_for(t) for t in g["text"]]
    from factory.ingest import gold_label_conflicts

    conflicts = gold_label_conflicts(g["item_id"].tolist(), g["label"].tolist())
    if conflicts:
        raise ReleaseError(f"{path}: the gold file gives items two labels: " + "; ".join(conflicts[:10]))
    return g[["item_id", "label"]]


def certify(fx, spec, dataset: str, table: pd.DataFrame, evidence: pd.DataFrame, batch_ids: list[str],
            n_items_expected: int) -> dict:
    """Re-run the standard on the release table, measure quality, evaluate the gates, choose the
    guaranteed auto-accept threshold: the certificate (deterministic, JSON-ready)."""
    from checks.standards import validate
    from factory import quality as Q
    from factory.guarantee import choose_threshold

    from checks.standards import load_standard

    standard = spec.quality.standard
    suite = "release" if "release" in load_standard(standard)["suites"] else "final_labels"
    # the standard pins the factory's columns; a dataset's own ids (task.id_column) ride along after them
    outcome = validate(table.drop(columns=["external_id"], errors="ignore"), suite,
                       {"classes": spec.class_names, "n_items": n_items_expected, "splits": list(spec.splits)},
                       standard=standard, task_type=spec.task_type)
    human = _human_answers(fx, dataset, set(table["item_id"]))
    models = _model_labels(fx, dataset, batch_ids)
    gold = load_gold(fx, spec)
    machine_cols = ["item_id", "route", "fused_label", "fused_confidence"] + \
        (["raw_confidence"] if "raw_confidence" in evidence else [])
    final = table[["item_id", "label", "source"]].merge(evidence[machine_cols], on="item_id", how="left")
    level = spec.quality.confidence_level
    measures = Q.measure(final, spec.class_names, human=human, models=models[["item_id", "labeler", "label"]],
                         gold=gold, prior=spec.prior, n_items=n_items_expected, texts=table["text"], level=level)
    span_measures = spec.task_type.audit_measures  # spans: span-level P/R/F1 where people checked
    if span_measures is not None:
        measures["spans"] = span_measures(final, level)
    gates = Q.evaluate_gates(measures, spec.quality)
    by_source = {}
    if gold is not None:
        g = gold.rename(columns={"label": "gold"}).merge(table[["item_id", "label", "source"]], on="item_id")
        by_source = {s: Q.accuracy(grp["gold"], grp["label"], level) for s, grp in g.groupby("source", sort=True)}
    audit = evidence[evidence["route"] == "audit"]
    aa = spec.quality.auto_accept
    choice = choose_threshold(audit["fused_confidence"].astype(float).to_numpy(),
                              (audit["fused_label"].astype(str) == audit["label"].astype(str)).to_numpy(),
                              aa.epsilon, aa.delta)
    guarantee = choice.to_dict() | {
        "sample": "the random audit sample of auto-accepted items (machine label vs people's answer)",
        "routing_threshold_in_force": spec.quality.confidence_threshold,
        "note": "the audit sample only covers items the router auto-accepted, so thresholds below the one in "
                "force are not supported by it"}
    std_path = STANDARDS_DIR / f"{standard}.json"
    facts = routing_facts(evidence)
    statements = _statements(measures, gates, guarantee, facts, spec)
    return {
        "dataset": dataset, "standard": {"name": standard, "sha256": sha256_path(std_path),
                                         "file": f"standard/{standard}.json"},
        "standard_result": outcome.to_dict(), "interval": spec.quality.interval, "confidence_level": level,
        "items": int(len(table)), "measures": measures, "gates": gates, "accuracy_by_source": by_source,
        "auto_accept_guarantee": guarantee, "routing": facts, "statements": statements,
        "passed": bool(outcome.success and not any(g["passed"] is False for g in gates)),
        "blocking_failures": [f"standard {standard}: {o.message()}" for o in outcome.blocking_failures]
        + [f"gate {g['name']}: {'no value' if g['value'] is None else g['value']} not {g['rule']} {g['threshold']} "
           f"({g['reason']})" for g in gates if g["blocking"]],
    }


def _statements(measures: dict, gates: list[dict], guarantee: dict, facts: dict, spec) -> list[str]:
    """The certificate's claims as plain sentences, each derived from what was measured (never a bare None)."""
    out = []
    acc = next((g for g in gates if g["name"] == "audit_accuracy"), None)
    if acc is not None:
        verdict = {True: "passed", False: "FAILED", None: "does not apply"}[acc["passed"]]
        out.append(f"Accuracy gate (min_accuracy {acc['threshold']}, {acc['note']}) {verdict}: {acc['reason']}.")
    out.append(_routing_sentence(facts))
    if guarantee.get("threshold") is None:
        out.append(f"No auto-accept threshold is certified by this release's audit sample "
                   f"({guarantee.get('n_sample', 0)} audited items): the error of the auto-accepted labels is not "
                   f"guaranteed to be <= {guarantee['epsilon']} at probability {1 - guarantee['delta']:.2f}.")
    else:
        # the audit only holds items routing accepted (at or above the threshold in force): no claim below it
        floor = guarantee.get("routing_threshold_in_force") or 0.0
        which = ("The labels accepted without a person" if guarantee["threshold"] <= floor else
                 f"Of the labels accepted without a person, those with confidence >= {guarantee['threshold']}")
        out.append(f"{which} have an error <= {guarantee['epsilon']} with probability >= "
                   f"{1 - guarantee['delta']:.2f} (Clopper-Pearson bound {guarantee['upper_bound']} on "
                   f"{guarantee['n_accepted']} of {guarantee['n_sample']} audited items)"
                   + ("." if guarantee["threshold"] <= floor else "; the others are not covered by this guarantee."))
    cal = ((measures.get("calibration") or {}).get("verified")) or {}
    aud = ((measures.get("calibration") or {}).get("audit")) or {}
    if cal.get("n"):
        out.append(f"Calibration of the machine's confidence on {cal['n']} items people verified (flagged ones "
                   f"included): ECE {cal['ece']:.4f} (mean confidence {cal['mean_confidence']:.4f}, share right "
                   f"{cal['accuracy']:.4f})" + (f"; on the {aud['n']} randomly audited auto-accepted items: ECE "
                                               f"{aud['ece']:.4f}." if aud.get("n") else "."))
    else:
        out.append("The calibration of the machine's confidence was not measured: no verified item carries one.")
    if measures.get("gold") is None:
        out.append("No gold items were given (quality.gold), so accuracy against known-correct labels was not measured.")
    return out


def measure_batch(fx, dataset: str, batch_id: str) -> dict:
    """Measured quality of one batch (factory/quality.py) with the spec's gates and the batch's Merkle root.

    For the batch_quality asset: {"measures", "gates", "passed", "merkle_root", "events", "standard"}; the
    measures carry "calibration": ECE and reliability-diagram bins of the machine's confidence on the items
    people verified (and gold items).
    """
    from factory import quality as Q
    from factory.provenance import merkle_root

    spec = fx.spec(dataset)
    final = pd.read_parquet(fx.paths.table("final_labels", dataset, batch_id))
    final = final[final["source"] != "deferred"]  # flagged, nobody answered yet: no label to measure
    for c in ("route", "fused_label", "fused_confidence"):
        if c not in final:
            final[c] = None
    n_raw = len(pd.read_parquet(fx.paths.table("raw_items", dataset, batch_id), columns=["item_id"]))
    human = _human_answers(fx, dataset, set(final["item_id"]))
    models = _model_labels(fx, dataset, [batch_id])
    cols = ["item_id", "label", "source", "route", "fused_label", "fused_confidence"] + \
        (["raw_confidence"] if "raw_confidence" in final else [])  # before calibration, where recorded
    measures = Q.measure(final[cols], spec.class_names, gold=load_gold(fx, spec),
                         human=human, models=models[["item_id", "labeler", "label"]] if len(models) else None,
                         prior=spec.prior, n_items=n_raw, level=spec.quality.confidence_level)
    gates = Q.evaluate_gates(measures, spec.quality)
    events = fx.ledger.events(dataset, batch_id=batch_id)
    return {"standard": spec.quality.standard, "measures": measures, "gates": gates,
            "passed": not any(g["passed"] is False for g in gates),
            "merkle_root": merkle_root(events["hash"].tolist()), "events": int(len(events))}


# ----------------------------------------------------------------------------- writing
def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


_HF_DTYPES = {"string": "string", "object": "string", "str": "string", "float64": "float64", "float32": "float32",
              "int64": "int64", "int32": "int32", "bool": "bool"}


def hf_features(columns: dict[str, str], spec) -> list[dict]:
    """The card's `dataset_info.features`: one entry per Parquet column (Hugging Face `datasets` casts the
    files to exactly these), `label` as the task type's feature (classification: a ClassLabel over the
    spec's classes)."""
    out = []
    for name, dtype in columns.items():
        extra = spec.task_type.hf_extra_features(spec.class_names)
        if name == "label":
            out.append({"name": "label", "dtype": spec.task_type.hf_feature(spec.class_names)})
        elif name in extra:  # a type's own columns (spans: tokens, the BIO tags as a ClassLabel sequence)
            out.append({"name": name, "dtype": extra[name]})
        else:
            out.append({"name": name, "dtype": _HF_DTYPES.get(str(dtype), "string")})
    return out


def dataset_card(manifest: dict, spec, cert: dict, splits: list[str], date: str) -> str:
    """README.md: a dataset card with a Hugging Face YAML header."""
    import yaml

    creators = []
    sources = manifest["counts_per_source"]
    if any(sources.get(s) for s in ("auto", "verified")):
        creators.append("machine-generated")
    if any(n for s, n in sources.items() if s not in ("auto", "verified")):
        creators.append("crowdsourced")
    header = {
        "license": spec.license.lower(), "pretty_name": spec.name, "task_categories": ["text-classification"],
        "annotations_creators": creators or ["machine-generated"], "size_categories": [_size_category(manifest["items"])],
        "configs": [{"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}.parquet"} for s in splits]}],
        "dataset_info": {"features": hf_features(manifest.get("columns") or {"label": "string"}, spec)},
    }
    q = manifest["quality"]
    families = sorted({str(v).split("@")[0] for v in manifest.get("labelers") or []})
    lines = ["---", yaml.safe_dump(header, sort_keys=True).rstrip(), "---", "",
             f"# {spec.name} {manifest['version']}", "", spec.description, "",
             f"- date: {date} (ingest date of the newest batch; the release contains no other clock time)",
             f"- license: {spec.license}", f"- items: {manifest['items']} "
             f"({', '.join(f'{k}: {v}' for k, v in manifest['counts_per_split'].items())})",
             f"- classes: {', '.join(f'`{c.name}` ({c.definition})' for c in spec.classes)}",
             f"- guideline version {spec.guideline.version}; spec version {manifest['spec_version']}",
             f"- quality standard `{manifest['quality_standard']['name']}` (copy in `standard/`)", "",
             "## How the labels were made", "",
             f"Mode `{spec.mode}`: {len(families)} model(s) ({', '.join(families) or 'none recorded'}) pre-label "
             f"every item and their outputs are fused. Routing flags the items the machines cannot vouch for (disagreement, "
             f"confidence below {spec.quality.confidence_threshold}, suspected bias, a label no model gave) for people, "
             f"defers the flagged items beyond the review budget (never auto-accepted), and draws a random "
             f"audit sample of the labels it would accept without a person. Label sources: "
             + ", ".join(f"{k} {v}" for k, v in manifest["counts_per_source"].items()) + "."
             + _deferred_line(cert.get("deferred")), "",
             "## Personal information", "", manifest["deidentification"]["statement"], "",
             "## Measured quality", "",
             *[f"- {line}" for line in cert.get("statements", [])],
             f"- completeness: {_pct(q.get('completeness'))}",
             f"- verdict: {_verdict(cert)}", "",
             "Everything with intervals: `quality/certificate.json`, figures: `quality/report.html`.", "",
             "## Verify", "", "```bash", f"factory verify-release releases/{spec.name}/{manifest['version']}", "```", "",
             "recomputes every hash of `manifest-sha256.txt`, re-runs the quality standard on `labels.parquet`, "
             "rechecks every event hash in `provenance/events.parquet` and each batch's Merkle root. "
             "No database is needed.", ""]
    return "\n".join(lines)


def _deferred_line(deferred: dict | None) -> str:
    """The card's sentence on deferred items (empty when there are none)."""
    if not deferred or not deferred.get("items"):
        return ""
    why = ", ".join(f"{k} {v}" for k, v in deferred["reasons"].items())
    return (f" Not in this release: {deferred['items']} deferred item(s), flagged ({why}) beyond the review "
            f"budget and not yet answered by a person.")


def _deidentification(fx, spec, dataset: str, table: pd.DataFrame) -> dict:
    """The release's de-identification statement: what was scanned, how many items were redacted, residue."""
    from factory.compliance import categories, statement
    from factory.pii import residual_check

    red = fx.ledger.events(dataset, kind="redaction")
    n_red = int(red["item_id"].isin(set(table["item_id"])).sum()) if len(red) else 0
    cats = categories(spec)
    residual = residual_check(table, "text", cats) if cats else None
    return statement(spec, len(table), n_red, residual)


def _verdict(cert: dict) -> str:
    failed = [g["name"] for g in cert["gates"] if g["passed"] is False]
    if not failed and cert["standard_result"].get("success", True):
        return "PASS: every gate with evidence passed"
    return ("FAIL on non-blocking gate(s) " + ", ".join(failed) if failed else
            "FAIL on non-blocking expectation(s) of the standard") + " (see quality/certificate.json)"


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.2%}"


def changelog_entry(manifest: dict, per_split: dict, date: str) -> str:
    """This version's CHANGELOG.md entry."""
    lines = [f"## {manifest['version']} ({date})", "", f"Reason: {manifest['bump_reason']}.",
             f"Previous version: {manifest['previous_version'] or 'none'}. Quality standard: "
             f"{manifest['quality_standard']['name']}.", "",
             "| split | added | removed | relabelled | moved in | moved out | total |", "|---|---|---|---|---|---|---|"]
    for s, c in sorted(per_split.items()):
        lines.append(f"| {s} | {c['added']} | {c['removed']} | {c['relabelled']} | {c['moved_in']} | "
                     f"{c['moved_out']} | {c['total']} |")
    ch = manifest["changes"]
    lines += ["", f"Overall: {ch['added']} added, {ch['removed']} removed, {ch['relabelled']} relabelled, "
                  f"{ch['split_moves']} moved between splits.", ""]
    return "\n".join(lines)


REFUSED_ASSET = "dataset_release"  # refused attempts: check_results rows (batch_id "release", success false)


def refuse(fx, dataset: str, version: str, cert: dict, batches: list[str], run_id: str | None) -> None:
    """Record a refused release attempt in the ledger and raise ReleaseRefused naming the version and each
    failing gate; no release folder is written."""
    failures = cert["blocking_failures"]
    fx.ledger.record_check(dataset, "release", REFUSED_ASSET, cert["standard"]["name"], False,
                           {"version": version, "refused": True, "failures": failures, "batches": batches,
                            "gates": [g for g in cert["gates"] if g["passed"] is False]}, run_id)
    hint = ("Have people audit more of the auto-accepted items (or fix the labels), then release again"
            if any(g["name"] == "audit_accuracy" and g["passed"] is False for g in cert["gates"]) else
            "Fix the labels (or the data) that fail, then release again")
    raise ReleaseRefused(f"release {version} of '{dataset}' REFUSED (nothing was written): blocking quality "
                         f"gate(s) failed:\n  - " + "\n  - ".join(failures)
                         + f"\n{hint}; the spec's thresholds are the promise a release makes, not a knob to pass "
                           "it.", version, failures)


def refused_attempts(fx, dataset: str) -> list[dict]:
    """Refused release attempts of a dataset from the ledger, oldest first: version, failures, when."""
    df = fx.ledger.table("check_results", dataset=dataset)
    if df.empty:
        return []
    df = df[(df["asset"] == REFUSED_ASSET) & ~df["success"].astype(bool)].sort_values("id")
    out = []
    for r in df.itertuples(index=False):
        d = json.loads(r.details)
        out.append({"version": d.get("version"), "failures": d.get("failures", []), "batches": d.get("batches", []),
                    "created_at": r.created_at, "run_id": r.run_id})
    return out


def published(table: pd.DataFrame, spec) -> pd.DataFrame:
    """The release table as files carry it: the label column as the task type's value (a class name, or the list
    of a set's class names in the spec's order); the ledger's canonical text stays inside the factory."""
    out = table.assign(label=table["label"].map(spec.task_type.decode))  # the type's value (classification: as is)
    for c in spec.task_type.release_column_names:  # JSON text inside the factory, lists in files
        out[c] = out[c].map(lambda v: json.loads(v) if isinstance(v, str) else v)
    return out


def release_type(manifest: dict):
    """The task type a release was written for (its manifest's ``task_type``; releases before types: classification)."""
    return tasks.get(str(manifest.get("task_type") or "classification"))


def _listed(v) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def canonical_labels(table: pd.DataFrame, task_type) -> pd.DataFrame:
    """A released table read back in the ledger's canonical text: the label column through the type's ``encode``
    (the inverse of the ``decode`` a release was written with: a set's list '|'-joined, spans' structs to their
    JSON), the type's own list columns (``release_column_names``; spans: tokens, bio) to the JSON text the factory
    keeps.  The type, not the values' shape, says how: a list of dicts is spans only for a spans release."""
    if "label" not in table or not len(table):
        return table
    for c in task_type.release_column_names:
        if c in table and table[c].map(_listed).any():
            table = table.assign(**{c: table[c].map(lambda v: json.dumps([str(x) for x in v], ensure_ascii=False,
                                                                           separators=(",", ":")) if _listed(v) else v)})
    return table.assign(label=table["label"].map(task_type.encode))


def read_labels(path: str | Path, task_type) -> pd.DataFrame:
    """One Parquet file of a release of ``task_type`` (see :func:`release_type`), labels in canonical text."""
    return canonical_labels(pd.read_parquet(path), task_type)


@counted("release", count=lambda r: r["items"])
def release(fx, dataset: str, run_id: str | None = None, formats: tuple[str, ...] = ("parquet",)) -> dict:
    """Write the next release of `dataset`; refuse on failed blocking checks or gates, nothing new, or an existing version."""
    from factory import croissant as C
    from factory.provenance import batch_roots, code_version
    from factory.release_report import render

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ReleaseError(f"unknown release format(s) {bad}; choose from {list(FORMATS)}")
    spec = fx.spec(dataset)
    fx.progress.note("collect final labels")
    ready, pending = _ready_batches(fx, dataset)
    if not ready:
        raise ReleaseError(f"nothing to release for '{dataset}': no batch has final labels yet "
                           f"({len(pending)} pending)")
    table = build_release_table(fx, dataset, ready)
    evidence = _evidence(fx, dataset, ready)
    batches = fx.ledger.batches(dataset).set_index("batch_id")
    deferred = deferred_summary(fx, dataset, ready)
    n_expected = sum(len(pd.read_parquet(fx.paths.table("raw_items", dataset, b), columns=["item_id"])) for b in ready)
    n_expected -= deferred["items"]
    fx.progress.note(f"certify {len(table):,} labels")
    cert = certify(fx, spec, dataset, table, evidence, ready, n_expected)
    cert["deferred"] = deferred
    prev = latest_release(fx, dataset)
    if prev and not (Path(prev["path"]) / DATA_FILE).exists():
        raise ReleaseError(f"{Path(prev['path']) / DATA_FILE}: release {prev['version']} of '{dataset}' is in the "
                           f"ledger but its files are missing; restore the folder (releases are immutable)")
    prev_table = read_labels(Path(prev["path"]) / DATA_FILE, spec.task_type) if prev else None
    changes = _changes(prev_table, table)
    if cert["blocking_failures"]:
        refuse(fx, dataset, next_version(prev["version"] if prev else None, changes, same_bytes=False)[0],
               cert, ready, run_id)
    cut = fx.ledger.chain_anchor(dataset)  # the chain head the release is cut from, published in provenance/
    events = fx.ledger.events(dataset)
    events = events[events["batch_id"].isin(ready) & within_cut(events, cut)][EVENT_COLUMNS].reset_index(drop=True)
    roots = batch_roots(events)
    per_split = changes_per_split(prev_table, table)
    date = max(str(batches.loc[b, "created_at"]) for b in ready)[:10]
    fx.progress.note("write files")
    out_root = fx.paths.releases / dataset
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        files_table = published(table, spec)
        files_table.to_parquet(tmp / DATA_FILE, index=False)
        same = prev is not None and sha256_path(tmp / DATA_FILE) == sha256_path(Path(prev["path"]) / DATA_FILE)
        version, reason = next_version(prev["version"] if prev else None, changes, same)
        final = out_root / version
        if final.exists():
            raise ReleaseError(f"{final}: release {version} of '{dataset}' already exists; releases are immutable")
        if "jsonl" in formats:
            (tmp / "labels.jsonl").write_text(files_table.to_json(orient="records", lines=True, force_ascii=False),
                                              encoding="utf-8")
        if "csv" in formats:
            table.to_csv(tmp / "labels.csv", index=False, lineterminator="\n")
        splits = sorted(table["split"].unique())
        (tmp / "data").mkdir()
        for s in splits:
            files_table[table["split"] == s].reset_index(drop=True).to_parquet(tmp / "data" / f"{s}.parquet",
                                                                               index=False)
        (tmp / "standard").mkdir()
        shutil.copyfile(STANDARDS_DIR / f"{spec.quality.standard}.json", tmp / "standard" / f"{spec.quality.standard}.json")
        (tmp / "provenance").mkdir()
        events.to_parquet(tmp / "provenance" / "events.parquet", index=False)
        (tmp / "quality").mkdir()
        evidence.to_parquet(tmp / "quality" / "evidence.parquet", index=False)
        cert = cert | {"version": version}
        (tmp / "quality" / "certificate.json").write_text(_json(cert), encoding="utf-8")
        (tmp / "quality" / "report.html").write_text(render(cert), encoding="utf-8")
        m = cert["measures"]
        audit = (m.get("audit") or {}).get("accuracy") or {}
        model_versions = sorted(set(_model_labels(fx, dataset, ready).get("labeler_version", pd.Series(dtype=str))))
        manifest = {
            "dataset": dataset, "version": version, "bump_reason": reason,
            "previous_version": prev["version"] if prev else None, "changes": changes, "changes_per_split": per_split,
            "license": spec.license, "spec_version": spec.version, "guideline_version": spec.guideline.version,
            "classes": spec.class_names, "splits": dict(spec.splits), "date": date, "code_version": code_version(),
            **({"task_type": spec.task.type} if spec.task.type != "classification" else {}),
            "quality_standard": {"name": spec.quality.standard, "file": f"standard/{spec.quality.standard}.json",
                                 "sha256": cert["standard"]["sha256"]},
            "items": len(table),
            "columns": {c: str(t) for c, t in table.dtypes.items()},
            "counts_per_class": table["label"].value_counts().sort_index().to_dict(),
            "counts_per_source": table["source"].value_counts().sort_index().to_dict(),
            "counts_per_split": table["split"].value_counts().sort_index().to_dict(),
            "batches": [{"batch_id": b, "source_sha256": batches.loc[b, "source_sha256"],
                         "items": int((table["batch_id"] == b).sum())} for b in ready],
            "merkle_roots_file": "provenance/merkle-roots.json",
            "labelers": model_versions,
            "pending_batches": pending,
            "formats": sorted(set(formats) | {"parquet"}),
            "deidentification": _deidentification(fx, spec, dataset, table),
            "quality": {"passed": cert["passed"], "audit_accuracy": audit.get("estimate"), "audit_n": audit.get("n"),
                        "audit_wilson": audit.get("wilson"), "completeness": m["completeness"]["estimate"],
                        "pii_items_flagged": (m.get("pii") or {}).get("items_flagged"),
                        "auto_accept_threshold": cert["auto_accept_guarantee"]["threshold"],
                        "routing_statement": _routing_sentence(cert.get("routing") or {}),
                        "accuracy_gate": spec.quality.accuracy_gate},
        }
        annotations = table["annotators"].map(lambda a: len(json.loads(a)) if isinstance(a, str) else 0)
        answered = annotations[annotations > 0]
        n_models = len({v.split("@")[0] for v in model_versions})
        per_item = (f"{len(answered) / max(1, len(table)):.1%} of items answered by people "
                    f"({answered.mean() if len(answered) else 0:.2f} answers each on average); every item "
                    f"pre-labelled by {n_models} models")
        manifest["files"] = {}
        cro = C.croissant(manifest, spec, {n: sha256_path(tmp / n) for n in ("labels.parquet", "labels.jsonl",
                                                                               "labels.csv") if (tmp / n).exists()},
                          list(table.columns), model_versions or ["none"], per_item, date)
        (tmp / "croissant.json").write_text(_json(cro), encoding="utf-8")
        (tmp / "README.md").write_text(dataset_card(manifest, spec, cert, splits, date), encoding="utf-8")
        old_log = ""
        if prev and (Path(prev["path"]) / "CHANGELOG.md").exists():
            old_log = (Path(prev["path"]) / "CHANGELOG.md").read_text(encoding="utf-8").split("\n", 2)[2]
        (tmp / "CHANGELOG.md").write_text(f"# Changelog of {dataset}\n\n" + changelog_entry(manifest, per_split, date)
                                          + ("\n" + old_log if old_log else ""), encoding="utf-8")
        manifest["files"] = {n: sha256_path(tmp / n) for n in _files(tmp)
                             if n != "manifest.json" and not n.startswith(RUN_SPECIFIC)}
        (tmp / "manifest.json").write_text(_json(manifest), encoding="utf-8")
        (tmp / "provenance" / "merkle-roots.json").write_text(_json(roots), encoding="utf-8")
        (tmp / ANCHOR_FILE).write_text(_json(release_anchor(cut, dataset, version)), encoding="utf-8")
        fx.progress.note("check labels against the ledger")
        unbacked = verify_labels_bound(tmp, manifest, table, events)
        if unbacked:  # never publish labels its own provenance cannot re-derive (e.g. finalisation still running)
            raise ReleaseError(f"release of '{dataset}' refused: {len(unbacked)} label(s) are not backed by the "
                               f"ledger's final events:\n  - " + "\n  - ".join(unbacked[:10])
                               + "\nRun the batch's finalisation again (`factory run`), then release.")
        write_listings(tmp)
        manifest_sha = sha256_path(tmp / "manifest.json")
        content_id = sha256_path(tmp / LISTING)
        try:
            os.rename(tmp, final)  # atomic: the version folder appears complete or not at all
        except OSError:
            raise ReleaseError(f"{final}: release {version} of '{dataset}' already exists; releases are immutable") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fx.ledger.record_release(dict(dataset=dataset, version=version, path=str(final), manifest_sha256=manifest_sha,
                                  n_items=len(table), batches=canonical(ready), created_at=now()))
    return {"version": version, "path": str(final), "items": len(table), "bump": reason, "batches": ready,
            "manifest_sha256": manifest_sha, "content_id": content_id, "changes": changes,
            "standard": spec.quality.standard, "quality_passed": cert["passed"],
            "merkle_roots": {b: r["merkle_root"] for b, r in roots.items()}}


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def write_listings(folder: str | Path) -> None:
    """(Re)write manifest-sha256.txt (every file but the run-specific ones) and tagmanifest-sha256.txt
    (manifest-sha256.txt and provenance/*), BagIt style."""
    folder = Path(folder)
    names = [n for n in _files(folder) if n not in (LISTING, TAG_LISTING)]
    payload = [n for n in names if not n.startswith(RUN_SPECIFIC)]
    (folder / LISTING).write_text("".join(f"{sha256_path(folder / n)}  {n}\n" for n in payload), encoding="utf-8")
    tags = [LISTING] + [n for n in names if n.startswith(RUN_SPECIFIC)]
    (folder / TAG_LISTING).write_text("".join(f"{sha256_path(folder / n)}  {n}\n" for n in sorted(tags)),
                                      encoding="utf-8")


def content_digests(path: str | Path) -> dict[str, str]:
    """sha256 of every file of a release except the run-specific ones (provenance/ and the tag manifest).

    Two runs that produce the same labels (e.g. a crashed-and-resumed run and an uninterrupted one) give
    equal content_digests; their provenance differs by design (event ids, timestamps, run ids).
    """
    path = Path(path)
    return {n: sha256_path(path / n) for n in _files(path) if n != TAG_LISTING and not n.startswith(RUN_SPECIFIC)}


# ----------------------------------------------------------------------------- verification (no database)
def verify_release_files(path: str | Path) -> list[str]:
    """Recompute every hash of manifest-sha256.txt and tagmanifest-sha256.txt; return the problems (empty
    when all holds): a changed file, a listed file that is missing, a file no listing names."""
    path = Path(path)
    if not (path / LISTING).exists():
        return [f"{LISTING}: missing"]
    problems, listed = [], {LISTING}
    for listing in (LISTING, TAG_LISTING):
        if not (path / listing).exists():
            if listing == TAG_LISTING and not (path / "provenance").exists():
                continue  # releases written before provenance was added have no tag manifest
            problems.append(f"{listing}: missing")
            continue
        listed.add(listing)
        for n, line in enumerate((path / listing).read_text(encoding="utf-8").splitlines(), start=1):
            if "  " not in line:
                problems.append(f"{listing}: line {n} is not '<sha256>  <path>'")
                continue
            digest, name = line.split("  ", 1)
            listed.add(name)
            f = path / name
            if not f.exists():
                problems.append(f"{name}: listed in the manifest but missing")
            elif sha256_path(f) != digest:
                problems.append(f"{name}: sha256 differs from the manifest (the file was changed)")
    for rel in _files(path):
        if rel not in listed:
            problems.append(f"{rel}: not listed in the manifest (an extra file)")
    return problems


def verify_release(path: str | Path, run_standard: bool = True) -> dict:
    """Verify a release folder with no database: hashes, the quality standard re-run on its data, event
    hashes and Merkle roots, counts against the manifest and the certificate's audit figures.

    Returns {"ok": bool, "problems": [...], "summary": {...}}; each problem names the file at fault.
    """
    from factory import quality as Q
    from factory.provenance import batch_roots, verify_event_hashes

    path = Path(path)
    problems = verify_release_files(path)
    summary: dict[str, Any] = {"path": str(path)}
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return {"ok": False, "problems": problems + [f"manifest.json: unreadable ({e})"], "summary": summary}
    summary |= {"dataset": manifest.get("dataset"), "version": manifest.get("version"), "items": manifest.get("items")}
    try:
        table = read_labels(path / DATA_FILE, release_type(manifest))
    except Exception as e:  # a tampered or truncated Parquet file is reported, not raised
        return {"ok": False, "problems": problems + [f"{DATA_FILE}: unreadable ({type(e).__name__}: {e})"],
                "summary": summary}
    if len(table) != manifest.get("items"):
        problems.append(f"{DATA_FILE}: {len(table)} rows but manifest.json says {manifest.get('items')} items")
    counts = table["label"].value_counts().sort_index().to_dict()
    if counts != manifest.get("counts_per_class"):
        problems.append(f"{DATA_FILE}: counts per class {counts} differ from manifest.json")
    std = manifest.get("quality_standard") or {"name": DEFAULT_STANDARD}
    std_name = std["name"] if isinstance(std, dict) else str(std)
    summary["standard"] = std_name
    if run_standard and "classes" in manifest:
        std_file = path / "standard" / f"{std_name}.json"
        if not std_file.exists():
            problems.append(f"standard/{std_name}.json: missing; the release's quality standard cannot be re-run")
        else:
            stated = std.get("sha256") if isinstance(std, dict) else None
            if stated and sha256_path(std_file) != stated:
                problems.append(f"standard/{std_name}.json: sha256 differs from the standard named in manifest.json")
            outcome = _validate_with_file(table, std_file, {"classes": manifest["classes"], "n_items": manifest["items"],
                                                            "splits": list(manifest.get("splits") or {})},
                                          task_type=manifest.get("task_type", "classification"))
            summary["expectations"] = {"passed": sum(o.success for o in outcome.outcomes), "total": len(outcome.outcomes)}
            problems += [f"{DATA_FILE}: standard {std_name}: {o.message()}" for o in outcome.outcomes if not o.success]
    hash_problems, summary["hashes_checked"] = verify_recorded_hashes(path)
    problems += hash_problems
    ev_path = path / "provenance" / "events.parquet"
    roots_path = path / "provenance" / "merkle-roots.json"
    stated_roots = json.loads(roots_path.read_text(encoding="utf-8")) if roots_path.exists() else None
    events = None
    if ev_path.exists() and stated_roots is not None:
        try:
            events = pd.read_parquet(ev_path)
        except Exception as e:
            events = None
            problems.append(f"provenance/events.parquet: unreadable ({type(e).__name__})")
        if events is not None:
            problems += [f"provenance/events.parquet: {p}" for p in verify_event_hashes(events)[:20]]
            roots = batch_roots(events)
            for b, r in stated_roots.items():
                if roots.get(b, {}).get("merkle_root") != r["merkle_root"]:
                    problems.append(f"provenance/events.parquet: batch {b}: Merkle root differs from "
                                    f"provenance/merkle-roots.json")
            missing = sorted({x["batch_id"] for x in manifest.get("batches", [])} - set(stated_roots))
            problems += [f"provenance/merkle-roots.json: batch {b} of manifest.json has no Merkle root" for b in missing]
            summary["events"] = int(len(events))
            summary["merkle_roots"] = len(stated_roots)
    elif (path / "provenance").exists():
        problems.append("provenance/: events.parquet or merkle-roots.json missing; the labels cannot be re-derived")
    problems += _check_anchor(path, events, summary)
    bound = verify_labels_bound(path, manifest, table, events)
    problems += bound
    if events is not None:
        summary["labels_rederived"] = not bound
    cert_path, ev2 = path / "quality" / "certificate.json", path / "quality" / "evidence.parquet"
    if cert_path.exists() and ev2.exists():
        try:
            cert = json.loads(cert_path.read_text(encoding="utf-8"))
            evidence = pd.read_parquet(ev2)
            audit = evidence[evidence["route"] == "audit"]
            recomputed = Q.accuracy(audit["label"].astype(str), audit["fused_label"].astype(str),
                                    cert["confidence_level"])
            stated = (cert["measures"].get("audit") or {}).get("accuracy")
            if stated is not None and (stated["k"], stated["n"]) != (recomputed["k"], recomputed["n"]):
                problems.append(f"quality/certificate.json: audit accuracy {stated['k']}/{stated['n']} does not match "
                                f"quality/evidence.parquet ({recomputed['k']}/{recomputed['n']})")
            # the accuracy gate's verdict, recomputed from the evidence: a certificate must never claim more
            gate = next((g for g in cert.get("gates", []) if g.get("name") == "audit_accuracy"), None)
            if gate and gate.get("passed") and "lower bound" in str(gate.get("note")):
                lo = Q.lower_bound(recomputed["k"], recomputed["n"], cert["confidence_level"], cert["interval"])
                if not lo >= gate["threshold"]:
                    problems.append(f"quality/certificate.json: the accuracy gate says passed, but the lower bound "
                                    f"recomputed from quality/evidence.parquet is {lo:.4f} < {gate['threshold']}")
            summary["quality_passed"] = cert.get("passed")
            summary["audit_accuracy"] = recomputed["estimate"]
        except Exception as e:
            problems.append(f"quality/certificate.json: cannot be rechecked ({type(e).__name__}: {e})")
    summary["files"] = len(_files(path))
    return {"ok": not problems, "problems": problems, "summary": summary}


def _check_anchor(path: Path, events: pd.DataFrame | None, summary: dict) -> list[str]:
    """provenance/anchor.json: well formed, covering at least the released events, and signed by the configured
    key when one is configured and the anchor carries a signature (the ledger side is `factory verify`)."""
    f = path / ANCHOR_FILE
    if not f.exists():
        return []  # releases written before anchors
    try:
        anchor = json.loads(f.read_text(encoding="utf-8"))
        count, _head = int(anchor["events"]), str(anchor["head"])
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{ANCHOR_FILE}: not an anchor record"]
    problems = []
    if events is not None and count < len(events):
        problems.append(f"{ANCHOR_FILE}: cut at {count} events, fewer than the {len(events)} released in "
                        f"provenance/events.parquet")
    summary["anchor"] = {"events": count, "head": anchor["head"], "signed": bool(anchor.get("signature"))}
    if anchor.get("signature"):
        why = check_signature(anchor, verify_key())
        if why is not None and "no verify key" not in why:
            problems.append(f"{ANCHOR_FILE}: {why}")
        summary["anchor"]["signature"] = why or "valid"
    return problems


def recorded_hashes(path: str | Path) -> list[tuple[str, str, str]]:
    """Every sha256 a release records about its own files, wherever it is written: manifest.json's `files` and
    standard, croissant.json's FileObjects, the certificate's standard.  [(where, file, sha256)]."""
    path = Path(path)
    out: list[tuple[str, str, str]] = []

    def load(name: str):
        try:
            return json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def walk(where: str, node: Any) -> None:
        # any object carrying a sha256 and naming a file of the release (file / contentUrl / path)
        if isinstance(node, dict):
            ref = next((node[k] for k in ("file", "contentUrl", "path") if isinstance(node.get(k), str)), None)
            if isinstance(node.get("sha256"), str) and ref is not None:
                out.append((where, ref, node["sha256"]))
            for v in node.values():
                walk(where, v)
        elif isinstance(node, list):
            for v in node:
                walk(where, v)

    m = load("manifest.json")
    if isinstance(m, dict):
        out += [("manifest.json", n, d) for n, d in sorted((m.get("files") or {}).items())]
        walk("manifest.json", {k: v for k, v in m.items() if k != "files"})
    for name in ("croissant.json", "quality/certificate.json"):
        doc = load(name)
        if doc is not None:
            walk(name, doc)
    return out


def verify_recorded_hashes(path: str | Path) -> tuple[list[str], int]:
    """Recompute every hash of `recorded_hashes`, and the certificate's audit-sample hash from
    quality/evidence.parquet; return (problems naming the file that records the hash, hashes checked)."""
    from factory.guarantee import sample_hash

    path = Path(path)
    root = path.resolve()
    problems, n = [], 0
    for where, ref, digest in recorded_hashes(path):
        n += 1
        f = (path / ref).resolve()
        if not f.is_relative_to(root) or not f.is_file():
            problems.append(f"{where}: records a sha256 for {ref}, which is not a file of this release")
        elif sha256_path(f) != digest:
            problems.append(f"{where}: the sha256 it records for {ref} differs from the file (one of them was changed)")
    cert_path, ev_path = path / "quality" / "certificate.json", path / "quality" / "evidence.parquet"
    try:
        stated = json.loads(cert_path.read_text(encoding="utf-8"))["auto_accept_guarantee"]["sample_sha256"]
        evidence = pd.read_parquet(ev_path)
    except (OSError, ValueError, KeyError, TypeError):
        stated = None
    except Exception:  # an unreadable evidence file is reported by the certificate check below
        stated = None
    if stated:
        n += 1
        audit = evidence[evidence["route"] == "audit"]
        got = sample_hash(audit["fused_confidence"].astype(float).to_numpy(),
                          (audit["fused_label"].astype(str) == audit["label"].astype(str)).to_numpy())
        if got != stated:
            problems.append("quality/certificate.json: auto_accept_guarantee.sample_sha256 differs from the audit "
                            "sample in quality/evidence.parquet")
    return problems, n


def verify_labels_bound(path: str | Path, manifest: dict, table: pd.DataFrame,
                        events: pd.DataFrame | None) -> list[str]:
    """Every released label re-derived from provenance/events.parquet and compared with labels.parquet, every
    split file (rows equal to labels.parquet's, each item in its own split's file), labels.jsonl/.csv and
    quality/evidence.parquet.  Each problem names the file and the item."""
    from factory.provenance import MAX_PROBLEMS_PER_FILE, compare_with_events, final_labels_from_events

    path = Path(path)
    if events is None:
        return []  # releases written before provenance: nothing to bind to (the listings still hold)
    derived, problems = final_labels_from_events(events)
    tt = release_type(manifest)
    released_batches = {str(b["batch_id"]) for b in manifest.get("batches", [])}
    derived = derived[derived["batch_id"].isin(released_batches)] if released_batches else derived
    problems += compare_with_events(DATA_FILE, table, derived)
    missing = sorted(set(derived["item_id"]) - set(table["item_id"].astype(str)))
    problems += [f"{DATA_FILE}: item {i}: has a final event in provenance/events.parquet but is not released"
                 for i in missing[:MAX_PROBLEMS_PER_FILE]]
    by_item = table.assign(item_id=table["item_id"].astype(str)).drop_duplicates("item_id").set_index("item_id")
    seen: set[str] = set()
    for f in sorted((path / "data").glob("*.parquet")) if (path / "data").is_dir() else []:
        name = f"data/{f.name}"
        try:
            part = read_labels(f, tt)
        except Exception as e:
            problems.append(f"{name}: unreadable ({type(e).__name__})")
            continue
        part = part.assign(item_id=part["item_id"].astype(str))
        wrong = part.loc[part.get("split", pd.Series(f.stem, index=part.index)).astype(str) != f.stem, "item_id"]
        problems += [f"{name}: item {i}: belongs to another split" for i in wrong[:MAX_PROBLEMS_PER_FILE]]
        seen |= set(part["item_id"])
        common = [c for c in by_item.columns if c in part.columns]
        mine = part.drop_duplicates("item_id").set_index("item_id")
        both = mine.index.intersection(by_item.index)
        for c in common:
            a, b = mine.loc[both, c], by_item.loc[both, c]
            diff = ~((a == b) | (a.isna() & b.isna()))
            problems += [f"{name}: item {i}: {c} differs from {DATA_FILE}" for i in both[diff.to_numpy()][:5]]
    if seen and "split" in table:
        unsplit = sorted(set(by_item.index) - seen)
        problems += [f"data/: item {i}: in {DATA_FILE} but in no split file" for i in unsplit[:MAX_PROBLEMS_PER_FILE]]
    for name, read in (("labels.jsonl", lambda p: _read_jsonl(p, tt)),
                       ("labels.csv", lambda p: pd.read_csv(p, dtype={"item_id": str, "label": str}))):
        if (path / name).exists():
            try:
                problems += compare_with_events(name, read(path / name), derived, columns=("label",))
            except Exception as e:
                problems.append(f"{name}: unreadable ({type(e).__name__})")
    ev_file = path / "quality" / "evidence.parquet"
    if ev_file.exists():
        try:
            problems += compare_with_events("quality/evidence.parquet", pd.read_parquet(ev_file), derived,
                                            columns=("label", "source"))
        except Exception as e:
            problems.append(f"quality/evidence.parquet: unreadable ({type(e).__name__})")
    return problems


def _read_jsonl(p: Path, task_type) -> pd.DataFrame:
    """labels.jsonl as written (JSON values kept: a class name stays text, a set stays a list), labels canonical."""
    rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    t = pd.DataFrame(rows)
    return canonical_labels(t.assign(item_id=t["item_id"].astype(str)) if "item_id" in t else t, task_type)


_verify_lock = threading.Lock()


def _validate_with_file(df: pd.DataFrame, std_file: Path, params: dict, task_type: str = "classification"):
    """Run a standard given as a file (the release's own copy), not the factory's checks/standards folder."""
    from checks import standards as S
    from factory import tasks

    doc = json.loads(std_file.read_text(encoding="utf-8"))
    name = f"{doc['id']}-{doc['version']}"
    suite = "release" if "release" in doc["suites"] else "final_labels"
    decl = doc["suites"][suite]
    with _verify_lock:  # one patched lookup at a time; other suites and standards pass through untouched
        original = S.expectations

        def from_file(s: str, standard: str = name) -> list[dict]:
            return decl if (s, standard) == (suite, name) else original(s, standard)
        S.expectations = from_file  # the copy in the release is authoritative, even if the repo's file changed
        try:
            # the user's own ids (task.id_column) are not among the factory's columns the standard pins
            return S.validate(df.drop(columns=["external_id"], errors="ignore"), suite, params, standard=name,
                              task_type=tasks.get(task_type))
        finally:
            S.expectations = original


# ----------------------------------------------------------------------------- listing and comparing
def release_dirs(releases_root: str | Path, dataset: str) -> list[Path]:
    """The version folders of a dataset, oldest version first."""
    d = Path(releases_root) / dataset
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        try:
            out.append((_semver(p.name), p))
        except ValueError:
            continue
    return [p for _, p in sorted(out)]


def show(path: str | Path) -> dict:
    """A release's manifest, content id (sha256 of manifest-sha256.txt) and certificate verdict."""
    path = Path(path)
    m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    m["content_id"] = sha256_path(path / LISTING) if (path / LISTING).exists() else None
    roots = path / "provenance" / "merkle-roots.json"
    if roots.exists():
        m["merkle_roots"] = json.loads(roots.read_text(encoding="utf-8"))
    return m


def diff(path_a: str | Path, path_b: str | Path) -> dict:
    """What changed from release A to release B: counts overall and per split, plus example item ids."""
    a, b = (read_labels(Path(p) / DATA_FILE, release_type(json.loads((Path(p) / "manifest.json").read_text(
        encoding="utf-8")))) for p in (path_a, path_b))
    ai, bi = a.set_index("item_id"), b.set_index("item_id")
    common = ai.index.intersection(bi.index)
    relab = common[(ai.loc[common, "label"] != bi.loc[common, "label"]).to_numpy()]
    moved = common[(ai.loc[common, "split"] != bi.loc[common, "split"]).to_numpy()]
    return {"from": show(path_a)["version"], "to": show(path_b)["version"], "changes": _changes(a, b),
            "changes_per_split": changes_per_split(a, b),
            "examples": {"added": sorted(set(bi.index) - set(ai.index))[:10],
                         "removed": sorted(set(ai.index) - set(bi.index))[:10],
                         "relabelled": [{"item_id": i, "from": ai.at[i, "label"], "to": bi.at[i, "label"]}
                                        for i in sorted(relab)[:10]],
                         "moved": sorted(moved)[:10]}}
