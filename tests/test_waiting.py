"""Waiting for people is the normal state of a labelling factory: runs that stop for people are green,
the graph shows what waits, and the sensors never redo settled work.  Red means broken."""
from __future__ import annotations

import dagster as dg
import pytest
from click.testing import CliRunner

from assets.batch import ANSWERS_SEEN, WAITING, dagster_name
from assets.resources import FactoryResource
from assets.runner import add_batch_partition, instance_for, run_stage
from assets.sensors import build_dataset_sensors
from factory.cli import main
from factory.ingest import ingest
from factory.simulate import SimulatedPool
from tests.conftest import write_csv

pytestmark = pytest.mark.slow


def _step_events(instance, run_id, kind):
    return [e for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.event_type_value == kind]


def _review_tick(instance, root):
    review = build_dataset_sensors("news")[2]
    with dg.build_sensor_context(instance=instance, resources={"factory": FactoryResource(root=str(root))}) as ctx:
        res = review(ctx)
    return res if isinstance(res, list) else []


def test_a_run_that_waits_for_people_is_green_and_says_what_waits(root, fx, bbc_small, truth, tmp_path):
    instance = instance_for(root)
    rep = ingest(write_csv(tmp_path / "b1.csv", bbc_small["text"][:80]), fx.spec("news"), fx.ledger)
    add_batch_partition(instance, "news", rep.batch_id)
    assert run_stage(root, "news", "prepare", instance, rep.batch_id).complete

    # seed tasks are open: the labelers step waits; the run is a success, not a failure
    r = run_stage(root, "news", "annotate", instance, rep.batch_id)
    assert r.success and r.waiting and not r.failures, (r.failures, r.waiting_for)
    assert "waiting for people" in r.waiting_for[0]
    assert instance.get_run_by_id(r.run_id).status == dg.DagsterRunStatus.SUCCESS
    assert not _step_events(instance, r.run_id, "STEP_FAILURE")
    skipped = {e.step_key for e in _step_events(instance, r.run_id, "STEP_SKIPPED")}
    assert any("model_predictions" in s for s in skipped)  # downstream of what waits does not run
    obs = instance.fetch_observations(dg.AssetKey([dagster_name("news"), "labelers"]), limit=5).records
    assert obs and WAITING in obs[0].asset_observation.metadata  # the graph shows what waits

    pool = SimulatedPool(truth, acc_low=1.0, acc_high=1.0, expert_accuracy=1.0)
    pool.answer_open_tasks(fx.ledger, fx.spec("news"))
    r = run_stage(root, "news", "annotate", instance, rep.batch_id)
    assert r.complete, (r.failures, r.waiting_for)
    if len(fx.ledger.tasks("news", batch_id=rep.batch_id, status="open")):
        # routed tasks are open: finalise waits, green, final_labels not materialised
        r = run_stage(root, "news", "finalise", instance, rep.batch_id)
        assert r.success and r.waiting and not r.failures
        assert instance.get_run_by_id(r.run_id).status == dg.DagsterRunStatus.SUCCESS
        key = dg.AssetKey([dagster_name("news"), "final_labels"])
        assert rep.batch_id not in instance.get_materialized_partitions(key)
    # `factory run` says what waits in one line plus the command to run next, and exits 0
    out = CliRunner().invoke(main, ["run", "--dataset", "news", "--batch", rep.batch_id, "--root", str(root)])
    if len(fx.ledger.tasks("news", batch_id=rep.batch_id, status="open")):
        assert out.exit_code == 0, out.output
        assert "Traceback" not in out.output and "FAILED" not in out.output
        assert f"factory run --dataset news --batch {rep.batch_id}" in out.output


def test_sensor_does_not_finalise_settled_batches_again(root, fx, bbc_small, truth, tmp_path):
    instance = instance_for(root)
    pool = SimulatedPool(truth, acc_low=1.0, acc_high=1.0, expert_accuracy=1.0)
    rep = ingest(write_csv(tmp_path / "b1.csv", bbc_small["text"][:80]), fx.spec("news"), fx.ledger)
    add_batch_partition(instance, "news", rep.batch_id)
    assert run_stage(root, "news", "prepare", instance, rep.batch_id).complete
    pool.answer_open_tasks(fx.ledger, fx.spec("news"))
    assert run_stage(root, "news", "annotate", instance, rep.batch_id).complete
    for _ in range(5):
        pool.answer_open_tasks(fx.ledger, fx.spec("news"), batch_id=rep.batch_id)
        r = run_stage(root, "news", "finalise", instance, rep.batch_id)
        if not r.waiting:
            break
    assert r.complete, (r.failures, r.waiting_for)
    recs = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey([dagster_name("news"), "final_labels"]),
                              asset_partitions=[rep.batch_id]), limit=1).records
    assert ANSWERS_SEEN in recs[0].asset_materialization.metadata
    # finalised by `factory run` (not by the sensor): a sensor starting on this instance leaves it alone
    assert _review_tick(instance, root) == []
    # a late correction makes the final labels stale: now the sensor asks for a finalise run
    final = fx.ledger.events("news", batch_id=rep.batch_id, kind="human")
    ev = final.iloc[0]
    fx.ledger.append_events("news", [dict(batch_id=rep.batch_id, item_id=ev["item_id"], kind="correction",
                                          actor="exp-1", label=ev["label"], dedup_key=f"test-correction:{ev['item_id']}",
                                          payload={"supersedes": str(ev["event_id"])})])
    reqs = _review_tick(instance, root)
    assert [q.partition_key for q in reqs] == [rep.batch_id]
