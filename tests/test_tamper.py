"""Tamper evidence that does not stop at the manifest: an insider edits a release and recomputes every listing,
and `verify-release` still names the file and the item, because every hash the folder records is rechecked
and every released label is re-derived from the release's own events."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from conftest import news_spec
from factory.datasets import load_bbc_news
from factory.ingest import item_id_for, sha256_file
from factory.pipeline import Factory
from factory.provenance import batch_roots, final_labels_from_events
from factory.release import release, verify_release, verify_release_files, write_listings
from test_release import run_batch


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A factory with one finished batch and release 1.0.0 written with every format."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FACTORY_DATABASE_URL", raising=False)
        base = tmp_path_factory.mktemp("tamper")
        root = base / "factory"
        (root / "datasets").mkdir(parents=True)
        (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(news_spec(
            seed_size=20, quality={"confidence_threshold": 0.8, "audit_rate": 0.5, "max_quarantine_rate": 0.5,
                     "min_accuracy": 0.5})))
        df = load_bbc_news(limit_per_class=12, seed=3).reset_index(drop=True)
        truth = {item_id_for(t): lab for t, lab in zip(df["text"], df["label"])}
        fx = Factory.at(root)
        run_batch(fx, df["text"][:48], truth, base / "b1.csv")
        rel = release(fx, "news", formats=("parquet", "jsonl", "csv"))
        yield {"fx": fx, "path": Path(rel["path"]), "base": base}


def copy_of(released, tmp_path) -> Path:
    d = tmp_path / "copy"
    shutil.copytree(released["path"], d)
    return d


def recompute_everything(d: Path) -> None:
    """What a careful insider does after an edit: manifest.json's file hashes, then both listings."""
    m = json.loads((d / "manifest.json").read_text())
    m["files"] = {n: sha256_file(d / n) for n in m["files"]}
    (d / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True))
    write_listings(d)
    assert verify_release_files(d) == []  # the listings alone see nothing


def problems(d: Path) -> list[str]:
    res = verify_release(d, run_standard=False)
    assert not res["ok"]
    return res["problems"]


def test_the_untouched_release_verifies_and_rederives_every_label(released):
    res = verify_release(released["path"])
    assert res["ok"], res["problems"]
    assert res["summary"]["labels_rederived"] is True and res["summary"]["hashes_checked"] >= 10
    from factory.cli import main

    out = CliRunner().invoke(main, ["verify-release", str(released["path"])])
    assert out.exit_code == 0 and "every released label re-derived" in out.output, out.output
    assert "cut from ledger event" in out.output and "unsigned" in out.output


def test_two_labels_swapped_in_labels_parquet(released, tmp_path):
    d = copy_of(released, tmp_path)
    t = pd.read_parquet(d / "labels.parquet")
    i, j = (t["label"] != t["label"].iloc[0]).idxmax(), 0  # two items with different labels, counts unchanged
    t.loc[[i, j], "label"] = t.loc[[j, i], "label"].to_numpy()
    t.to_parquet(d / "labels.parquet", index=False)
    recompute_everything(d)
    found = problems(d)
    for k in (i, j):
        assert any(p.startswith(f"labels.parquet: item {t.at[k, 'item_id']}: label") for p in found), found
    # croissant.json records labels.parquet's sha256 too: the old hash no longer matches
    assert any(p.startswith("croissant.json: the sha256 it records for labels.parquet") for p in found), found


def test_a_split_file_edited(released, tmp_path):
    d = copy_of(released, tmp_path)
    f = sorted((d / "data").glob("*.parquet"))[0]
    part = pd.read_parquet(f)
    item = part.at[0, "item_id"]
    part.loc[0, "label"] = "tech" if part.at[0, "label"] != "tech" else "sports"
    part.to_parquet(f, index=False)
    recompute_everything(d)
    found = problems(d)
    assert any(p.startswith(f"data/{f.name}: item {item}: label") for p in found), found


def test_a_split_file_loses_a_row(released, tmp_path):
    d = copy_of(released, tmp_path)
    f = sorted((d / "data").glob("*.parquet"))[0]
    part = pd.read_parquet(f)
    item = part.at[0, "item_id"]
    part.iloc[1:].to_parquet(f, index=False)
    recompute_everything(d)
    assert any(p.startswith(f"data/: item {item}: in labels.parquet but in no split file") for p in problems(d))


def test_jsonl_and_csv_copies_are_bound_too(released, tmp_path):
    d = copy_of(released, tmp_path)
    jl = pd.read_json(d / "labels.jsonl", lines=True, dtype=False)
    item = jl.at[2, "item_id"]
    jl.loc[2, "label"] = "tech" if jl.at[2, "label"] != "tech" else "sports"
    (d / "labels.jsonl").write_text(jl.to_json(orient="records", lines=True, force_ascii=False))
    recompute_everything(d)
    assert any(p.startswith(f"labels.jsonl: item {item}: label") for p in problems(d))


def test_croissant_edited(released, tmp_path):
    d = copy_of(released, tmp_path)
    doc = json.loads((d / "croissant.json").read_text())
    fo = next(x for x in doc["distribution"] if x["name"] == "labels.csv")
    fo["sha256"] = "0" * 64  # the hash croissant records for a file no longer matches it
    (d / "croissant.json").write_text(json.dumps(doc))
    recompute_everything(d)
    assert any(p.startswith("croissant.json: the sha256 it records for labels.csv differs") for p in problems(d))


def test_croissant_pointing_outside_the_release(released, tmp_path):
    d = copy_of(released, tmp_path)
    doc = json.loads((d / "croissant.json").read_text())
    doc["distribution"][0]["contentUrl"] = "../../secret.parquet"
    (d / "croissant.json").write_text(json.dumps(doc))
    recompute_everything(d)
    assert any("croissant.json: records a sha256 for ../../secret.parquet" in p for p in problems(d))


def test_an_event_edited_with_its_hash_and_merkle_root_recomputed(released, tmp_path):
    """The insider edits a final event, rehashes the events chain and the Merkle roots: the labels no longer
    follow from their events (the release's labels disagree), and the ledger anchor catches the rest."""
    from factory.storage.ledger import event_hash

    d = copy_of(released, tmp_path)
    ev = pd.read_parquet(d / "provenance" / "events.parquet")
    k = ev.index[ev["kind"] == "final"][0]
    item = ev.at[k, "item_id"]
    ev.loc[k, "label"] = "tech" if ev.at[k, "label"] != "tech" else "sports"
    prev = ev.at[0, "prev_hash"]
    for r in ev.index:  # a consistent forgery: every hash after the edit recomputed
        row = {c: (None if pd.isna(v) else v) if not isinstance(v, (list, dict)) else v for c, v in ev.loc[r].items()}
        ev.at[r, "prev_hash"] = prev
        row["prev_hash"] = prev
        ev.at[r, "hash"] = prev = event_hash(prev, row)
    ev.to_parquet(d / "provenance" / "events.parquet", index=False)
    roots = {b: dict(v) for b, v in batch_roots(ev).items()}
    (d / "provenance" / "merkle-roots.json").write_text(json.dumps(roots))
    recompute_everything(d)
    found = problems(d)
    assert not any("content does not match its hash" in p for p in found)  # the forgery is self-consistent
    assert any(p.startswith(f"labels.parquet: item {item}: label") for p in found), found
    assert any(p.startswith(f"provenance/events.parquet: item {item}: final event") for p in found), found


def test_a_final_event_not_backed_by_the_events_it_names(released):
    ev = pd.read_parquet(released["path"] / "provenance" / "events.parquet")
    derived, found = final_labels_from_events(ev)
    assert found == [] and len(derived) == 48
    k = ev.index[(ev["kind"] == "final") & (ev["actor"] == "final:auto")][0]
    ev.loc[k, "label"] = "nonsense"
    derived, found = final_labels_from_events(ev)
    assert derived.set_index("item_id").at[ev.at[k, "item_id"], "label"] == "nonsense"
    assert any("label 'nonsense' (auto) is not what the events it rests on say" in p for p in found), found


def test_certificate_sample_hash_is_rechecked(released, tmp_path):
    d = copy_of(released, tmp_path)
    ev = pd.read_parquet(d / "quality" / "evidence.parquet")
    k = ev.index[ev["route"] == "audit"][0]
    ev.loc[k, "fused_confidence"] = 0.999
    ev.to_parquet(d / "quality" / "evidence.parquet", index=False)
    recompute_everything(d)
    assert any(p.startswith("quality/certificate.json: auto_accept_guarantee.sample_sha256") for p in problems(d))


def test_the_cli_names_file_and_item(released, tmp_path):
    from factory.cli import main

    d = copy_of(released, tmp_path)
    t = pd.read_parquet(d / "labels.parquet")
    t.loc[5, "label"] = "tech" if t.at[5, "label"] != "tech" else "sports"
    t.to_parquet(d / "labels.parquet", index=False)
    recompute_everything(d)
    out = CliRunner().invoke(main, ["verify-release", str(d), "--no-standard"])
    assert out.exit_code == 1 and f"labels.parquet: item {t.at[5, 'item_id']}: label" in out.output


def test_final_events_are_checked_against_what_they_name():
    rows, seq = [], [0]

    def add(item, kind, label, eid, payload=None):
        seq[0] += 1
        rows.append(dict(seq=seq[0], event_id=eid, item_id=item, batch_id="b", kind=kind, actor=f"x:{kind}",
                         label=label, confidence=0.9, payload=json.dumps(payload or {})))

    final = lambda item, label, source, named: add(item, "final", label, f"f-{item}",  # noqa: E731
                                                   {"source": source, "events": named})
    add("A", "model", "x", "a1"), add("A", "arbitration", "y", "a2"), add("A", "arbitration", "z", "a3")
    final("A", "z", "arbitrated", ["a1", "a2", "a3"])  # the expert's last word: holds
    add("B", "arbitration", "y", "b1"), add("B", "arbitration", "z", "b2")
    final("B", "y", "arbitrated", ["b1", "b2"])  # an overruled arbitration's label: does not hold
    add("C", "model", "x", "c1")
    final("C", "x", "auto", ["c1", "nowhere"])
    add("D", "model", "x", "d1")
    final("D", "x", "auto", ["d1", "a1"])  # names an event of item A
    add("E", "model", "x", "e1"), add("E", "human", "w", "e2")
    final("E", "w", "calibrated", ["e1", "e2"])  # a person's answer: holds
    add("F", "human", "w", "f1")
    final("F", "w", "auto", ["f1"])  # 'auto' but only a person said it: does not hold
    derived, found = final_labels_from_events(pd.DataFrame(rows))
    assert dict(zip(derived["item_id"], derived["label"])) == {"A": "z", "B": "y", "C": "x", "D": "x", "E": "w",
                                                               "F": "w"}
    text = "\n".join(found)
    assert "item A:" not in text and "item E:" not in text
    assert "item B: final event f-B: label 'y' (arbitrated)" in text
    assert "item C: final event f-C names event(s) ['nowhere']" in text
    assert "item D: final event f-D names event(s) of other items ['a1']" in text
    assert "item F: final event f-F: label 'w' (auto)" in text


def test_a_release_whose_labels_its_events_do_not_back_is_refused(tmp_path, monkeypatch):
    """Final labels written without their final events (finalisation interrupted between the two): no release."""
    monkeypatch.delenv("FACTORY_DATABASE_URL", raising=False)
    root = tmp_path / "factory"
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(news_spec(
        seed_size=8, quality={"confidence_threshold": 0.8, "audit_rate": 0.5, "max_quarantine_rate": 0.5,
                     "min_accuracy": 0.5})))
    df = load_bbc_news(limit_per_class=4, seed=5).reset_index(drop=True)
    truth = {item_id_for(t): lab for t, lab in zip(df["text"], df["label"])}
    fx = Factory.at(root)
    b = run_batch(fx, df["text"][:20], truth, tmp_path / "b1.csv")
    path = fx.paths.table("final_labels", "news", b)
    t = pd.read_parquet(path)
    t.loc[0, "label"] = "tech" if t.at[0, "label"] != "tech" else "sports"  # the table moved, no new final event
    t.to_parquet(path, index=False)
    from factory.errors import ReleaseError

    with pytest.raises(ReleaseError, match=f"labels.parquet: item {t.at[0, 'item_id']}: label"):
        release(fx, "news")
    assert not (fx.paths.releases / "news" / "1.0.0").exists()
