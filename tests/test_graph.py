"""The whole asset graph materialised through Dagster on a small batch, people simulated."""
import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from assets.batch import build_dataset_assets
from assets.runner import add_batch_partition, instance_for, run_stage
from factory.ingest import ingest
from factory.errors import NotReadyError
from factory.pipeline import final_labels, read_table
from factory.release import verify_release_files
from factory.simulate import SimulatedPool
from tests.conftest import write_csv

pytestmark = pytest.mark.slow


def _finalise(fx, root, instance, pool, batch_id):
    """Run finalise; while it waits for people (second opinions, arbitration), people answer."""
    for _ in range(5):
        r = run_stage(root, "news", "finalise", instance, batch_id)
        if not r.waiting:
            return r
        assert pool.answer_open_tasks(fx.ledger, fx.spec("news")) > 0
    return r


def _run_batch(fx, root, instance, pool, path):
    spec = fx.spec("news")
    rep = ingest(path, spec, fx.ledger)
    add_batch_partition(instance, "news", rep.batch_id)
    assert run_stage(root, "news", "prepare", instance, rep.batch_id).success
    pool.answer_open_tasks(fx.ledger, spec)
    r = run_stage(root, "news", "annotate", instance, rep.batch_id)
    assert r.success, r.failures
    pool.answer_open_tasks(fx.ledger, spec, batch_id=rep.batch_id)
    return rep


def test_whole_graph_from_spec_to_release(root, fx, bbc_small, truth, tmp_path):
    # models trained on 40 seed labels auto-accept ~88% right here: half of those audited can certify 0.6 on the
    # Wilson lower bound, not 0.9 (min_accuracy blocks; tests/test_gates.py pins the refusals and audit sizing)
    spec_path = root / "datasets" / "news.yaml"
    # and a budget for every flagged item beside that audit: this test follows every item to a label (deferral
    # beyond the budget is pinned in tests/test_gate_routing.py)
    spec_path.write_text(spec_path.read_text().replace("audit_rate: 0.05", "audit_rate: 0.5\n  min_accuracy: 0.6")
                         .replace("budget: 0.6", "budget: 1.0"))
    assert fx.spec("news").quality.min_accuracy == 0.6
    instance = instance_for(root)
    pool = SimulatedPool(truth, acc_low=1.0, acc_high=1.0, expert_accuracy=1.0)  # perfect people
    rep = _run_batch(fx, root, instance, pool, write_csv(tmp_path / "b1.csv", bbc_small["text"][:100]))
    r = _finalise(fx, root, instance, pool, rep.batch_id)
    assert r.success and not r.failed_checks, r.failures

    routing = read_table(fx, "routing", "news", rep.batch_id)
    assert len(routing) == 100
    assert set(routing["route"]) <= {"auto", "review", "audit", "seed"}
    assert set(routing["mode"]) == {"prelabel-human"}
    assert (routing["route"] == "seed").sum() == 40
    assert routing["reasons"].map(json.loads).map(len).gt(0)[routing["route"] != "auto"].all()
    final = read_table(fx, "final_labels", "news", rep.batch_id)
    assert final["item_id"].is_unique and len(final) == 100
    assert set(final["source"]) <= {"auto", "calibrated", "annotated", "arbitrated"}
    human = final[final["source"] != "auto"]
    assert (human["label"] == human["item_id"].map(truth)).all()  # people were perfect
    assert (final["n_events"] >= 1).all()

    # the qa asset reports the calibration of the machine's confidence on what people verified
    md = instance.get_latest_materialization_event(dg.AssetKey(["news", "batch_quality"])).asset_materialization.metadata
    assert md["ece_verified_n"].value == int(final["source"].isin(["calibrated", "arbitrated"]).sum()) > 0
    assert 0 <= md["ece_verified"].value <= 1 and "confidence bin" in md["reliability_diagram"].value

    rr = run_stage(root, "news", "release", instance)
    assert rr.success, rr.failures
    rel = fx.ledger.releases("news").iloc[-1]
    assert rel["version"] == "1.0.0" and verify_release_files(rel["path"]) == []
    labels = pd.read_parquet(Path(rel["path"]) / "labels.parquet")
    assert len(labels) == 100 and set(labels["split"]) <= {"train", "validation", "test"}
    deid = json.loads((Path(rel["path"]) / "manifest.json").read_text())["deidentification"]
    assert deid["grade"] == "general" and deid["items_redacted"] == 0 and "no redaction" in deid["statement"]

    # a second batch adds items only: a MINOR release, and the first release is untouched
    rep2 = _run_batch(fx, root, instance, pool, write_csv(tmp_path / "b2.csv", bbc_small["text"][100:]))
    assert _finalise(fx, root, instance, pool, rep2.batch_id).success
    assert run_stage(root, "news", "release", instance).success
    assert list(fx.ledger.releases("news")["version"]) == ["1.0.0", "1.1.0"]
    # the auto-accept threshold of each batch is recorded with the guarantee (or why there is none yet)
    g = fx.ledger.table("check_results", dataset="news", asset="auto_accept_guarantee")
    assert set(g["batch_id"]) == {rep.batch_id, rep2.batch_id}
    first = json.loads(g[g["batch_id"] == rep.batch_id].iloc[-1]["details"])
    assert first["n_verified"] == 0 and first["threshold"] == 0.8 and "not yet" in first["guarantee"]
    second = json.loads(g[g["batch_id"] == rep2.batch_id].iloc[-1]["details"])
    assert second["n_verified"] == int((final["route"] == "audit").sum())
    # feedback loop: batch 1's calibrated labels retrained the labelers; batch 2 used the new versions
    v1 = set(read_table(fx, "model_predictions", "news", rep.batch_id)["labeler_version"])
    v2 = set(read_table(fx, "model_predictions", "news", rep2.batch_id)["labeler_version"])
    assert len(v1) == len(v2) == 3 and not v1 & v2
    assert verify_release_files(rel["path"]) == []

    # Dagster recorded the materialisations and the checks
    key = dg.AssetKey(["news", "final_labels"])
    assert instance.get_latest_materialization_event(key) is not None
    assert fx.ledger.verify_chain("news")["ok"]


def test_blocking_check_stops_the_release(root, fx, bbc_small, truth, tmp_path):
    instance = instance_for(root)
    pool = SimulatedPool(truth, acc_low=1.0, acc_high=1.0, expert_accuracy=1.0)
    rep = _run_batch(fx, root, instance, pool, write_csv(tmp_path / "b1.csv", bbc_small["text"][:100]))
    assert _finalise(fx, root, instance, pool, rep.batch_id).success
    # the team drops a class from the schema after people used it: final labels fall outside the schema
    spec_path = root / "datasets" / "news.yaml"
    data = yaml.safe_load(spec_path.read_text())
    data["classes"] = [c for c in data["classes"] if c["name"] != "tech"]
    spec_path.write_text(yaml.safe_dump(data))
    # one class fewer makes each answer weaker evidence (k - 1 wrong classes): an item people settled
    # near the target may get one more opinion first (the models' calibrated prior no longer drowns it)
    for _ in range(3):
        try:
            final_labels(fx, "news", rep.batch_id)
            break
        except NotReadyError:
            pool.answer_open_tasks(fx.ledger, fx.spec("news"))

    assets = build_dataset_assets("news")
    from assets.resources import FactoryResource
    res = dg.materialize(assets, selection=[dg.AssetKey(["news", "final_labels"]), dg.AssetKey(["news", "dataset_release"])],
                         instance=instance, partition_key=rep.batch_id, raise_on_error=False,
                         resources={"factory": FactoryResource(root=str(root))})
    evals = {e.check_name: e for e in res.get_asset_check_evaluations()}
    assert evals["label_in_schema"].passed is False
    failing = evals["label_in_schema"].metadata["unexpected_items"].value
    final = read_table(fx, "final_labels", "news", rep.batch_id)
    assert set(failing) == set(final.loc[final["label"] == "tech", "item_id"][:50])
    mats = [e.asset_key for e in res.get_asset_materialization_events() if e.asset_key]
    assert dg.AssetKey(["news", "dataset_release"]) not in mats  # blocked within the run
    # and across runs the release refuses, naming the expectation
    rr = run_stage(root, "news", "release", instance)
    assert not rr.success and "final_labels.label_in_schema failed" in " ".join(rr.failures)
    assert fx.ledger.releases("news").empty
