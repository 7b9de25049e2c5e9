"""Sensors and the release schedule: evaluated with build_sensor_context, and once through the real daemon."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from assets.resources import FactoryResource
from assets.sensors import build_dataset_sensors, inbox_dir
from factory.ingest import sha256_file
from factory.pipeline import task_id_for, write_table
from tests.conftest import write_csv

REPO = Path(__file__).resolve().parents[1]


def _sensors(root):
    inbox, seeded, review, release = build_dataset_sensors("news")
    return inbox, seeded, review, release


def _ctx(instance, root, cursor=None):
    return dg.build_sensor_context(instance=instance, cursor=cursor,
                                   resources={"factory": FactoryResource(root=str(root))})


def _tick(sensor, instance, root, cursor=None):
    """One evaluation, its context closed afterwards (it holds resources and Dagster context state)."""
    with _ctx(instance, root, cursor) as ctx:
        return sensor(ctx)


def test_inbox_sensor_ingests_once_and_refuses_bad_entries(root, fx, bbc_small, tmp_path):
    inbox = inbox_dir(root, "news")
    inbox.mkdir(parents=True)
    good = write_csv(inbox / "part1.csv", bbc_small["text"][:30])
    (inbox / "bundle.zip").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    secret = tmp_path / "secret.csv"
    write_csv(secret, ["outside text"])
    (inbox / "link.csv").symlink_to(secret)
    (inbox / ".part2.csv.part").write_text("text\nnot yet complete")  # still being written: ignored
    sensor = _sensors(root)[0]
    with dg.instance_for_test() as instance:
        res = _tick(sensor, instance, root)
        assert isinstance(res, dg.SensorResult)
        sha = sha256_file(good)
        [req] = res.run_requests
        batch_id = fx.ledger.batches("news")["batch_id"].tolist()
        assert req.run_key == sha and [req.partition_key] == batch_id
        assert res.dynamic_partitions_requests[0].partition_keys == batch_id
        rejected = {p.name: json.loads(p.read_text())["reason"] for p in (inbox / ".rejected").glob("*.json")}
        assert "archives are not accepted" in rejected["bundle.zip.json"]
        assert "symlink pointing outside the inbox" in rejected["link.csv.json"]
        assert len(fx.ledger.items("news")) == 30  # the symlink's target was never read

        # the next tick with the cursor sees nothing new
        again = _tick(sensor, instance, root, res.cursor)
        assert not again.run_requests and "no new file" in again.skip_reason.skip_message
        # a tick that crashed before its cursor was stored repeats: same run key, nothing ingested twice
        repeat = _tick(sensor, instance, root)
        assert [r.run_key for r in repeat.run_requests] == [sha]
        assert len(fx.ledger.batches("news")) == 1


def _prepared_batch(fx, root, instance, texts) -> str:
    """A batch as the prepare stage leaves it (raw_items table written), registered as a partition."""
    from factory.ingest import ingest
    from factory.pipeline import raw_items

    rep = ingest(write_csv(root / f"b{len(texts)}.csv", texts), fx.spec("news"), fx.ledger)
    raw_items(fx, "news", rep.batch_id)
    instance.add_dynamic_partitions("news_batches", [rep.batch_id])
    return rep.batch_id


def test_seeded_and_review_complete_sensors(root, fx, bbc_small):
    _, seeded, review, _ = _sensors(root)
    with dg.instance_for_test() as instance:
        b = _prepared_batch(fx, root, instance, bbc_small["text"][:20])
        items = fx.ledger.items("news", batch_id=b)["item_id"].tolist()
        seed = task_id_for("news", b, items[0], "seed")
        fx.ledger.create_tasks([dict(task_id=seed, dataset="news", batch_id=b, item_id=items[0], kind="seed",
                                     reasons=["seed"])])
        assert "seed task(s) of 'news' are open" in _tick(seeded, instance, root).skip_message
        fx.ledger.answer_task(seed, "business", "ann-1", fx.spec("news").class_names)
        [req] = _tick(seeded, instance, root)
        assert req.partition_key == b and req.run_key == f"annotate:{b}:1"

        # a routing table alone (a run killed before it opened the tasks) is not a routed batch
        write_table(pd.DataFrame({"item_id": items, "route": "auto"}), fx.paths.table("routing", "news", b))
        assert "no routed batch" in _tick(review, instance, root).skip_message
        assert _tick(seeded, instance, root)[0].partition_key == b
        # routed (review_tasks materialised), one review task open: no finalise yet
        review_task = task_id_for("news", b, items[1], "review")
        fx.ledger.create_tasks([dict(task_id=review_task, dataset="news", batch_id=b, item_id=items[1],
                                     kind="review", reasons=["low_confidence"])])
        instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey(["news", "review_tasks"]),
                                                                    partition=b))
        assert "no routed batch" in _tick(review, instance, root).skip_message
        assert "no prepared batch" in _tick(seeded, instance, root).skip_message  # routed: not annotated again
        fx.ledger.answer_task(review_task, "tech", "ann-2", fx.spec("news").class_names)
        [req] = _tick(review, instance, root)
        assert req.partition_key == b and req.run_key == f"finalise:{b}:2"
        # a correction changes the answer count: the batch is finalised again
        fx.ledger.answer_task(review_task, "sports", "ann-2", fx.spec("news").class_names, correct=True)
        assert _tick(review, instance, root)[0].run_key == f"finalise:{b}:3"


def test_nightly_release_schedule(root, fx, bbc_small):
    from contextlib import ExitStack

    schedule = _sensors(root)[3]
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    with dg.instance_for_test() as instance, ExitStack() as stack:
        ctx = stack.enter_context(dg.build_schedule_context(instance=instance,
                                                            resources={"factory": FactoryResource(root=str(root))}))
        b = _prepared_batch(fx, root, instance, bbc_small["text"][:20])
        assert "no approved batch" in schedule.evaluate_tick(ctx).skip_message
        write_table(pd.DataFrame({"item_id": ["x"]}), fx.paths.table("final_labels", "news", b))
        for asset in ("raw_items", "final_labels"):
            fx.ledger.record_check("news", b, asset, "std", True, {"expectations": []})
        [req] = schedule.evaluate_tick(ctx).run_requests
        assert req.run_key.startswith("release:") and req.tags["factory/new_batches"] == b
        fx.ledger.record_release(dict(dataset="news", version="1.0.0", path="x", manifest_sha256="0", n_items=1,
                                      batches=json.dumps([b]), created_at="t"))
        assert "since release 1.0.0" in schedule.evaluate_tick(ctx).skip_message
        # a failed blocking check: the schedule skips and says why
        fx.ledger.record_check("news", b, "final_labels", "std", False, {"expectations": [
            {"name": "label_in_schema", "blocking": True, "success": False, "unexpected_count": 1}]})
        assert "label_in_schema failed" in schedule.evaluate_tick(ctx).skip_message


def test_everything_is_registered_and_starts_running(root):
    from assets.definitions import build_definitions

    defs = build_definitions(str(root))  # (workspace loading is covered by test_cli's `definitions validate`)
    assert {s.name for s in defs.sensors} == {"news_inbox", "news_seeded", "news_review_complete"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in defs.sensors)
    assert {s.name for s in defs.schedules} == {"news_nightly_release"}
    assert all(s.default_status == dg.DefaultScheduleStatus.RUNNING for s in defs.schedules)
    assert {j.name for j in defs.jobs} >= {f"news_{s}" for s in ("prepare", "annotate", "finalise", "release")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.postgres
@pytest.mark.slow
def test_inbox_file_becomes_a_run_through_the_real_daemon(root, bbc_small, pg_database, tmp_path, monkeypatch):
    """deploy/serve.sh (webserver + daemon on PostgreSQL): a dropped file becomes a successful prepare run."""
    dagster_url, ledger_url = pg_database("dagster"), pg_database("ledger")
    home = tmp_path / "serve_home"
    env = dict(os.environ, DAGSTER_POSTGRES_URL=dagster_url, FACTORY_DATABASE_URL=ledger_url,
               FACTORY_HOME=str(root), DAGSTER_HOME=str(home), DAGSTER_PORT=str(_free_port()),
               DAGSTER_HOST="127.0.0.1", FACTORY_SENSOR_INTERVAL="5", FACTORY_BIN=str(Path(sys.executable).parent))
    inbox = inbox_dir(root, "news")
    inbox.mkdir(parents=True)
    good = write_csv(inbox / "drop.csv", bbc_small["text"][:30])
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(["bash", str(REPO / "deploy" / "serve.sh")], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=str(root))
    run = None
    try:
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        monkeypatch.setenv("DAGSTER_POSTGRES_URL", dagster_url)
        deadline = time.time() + 150
        while time.time() < deadline and run is None:
            time.sleep(3)
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            if not (home / "dagster.yaml").exists():
                continue
            with dg.DagsterInstance.from_config(str(home)) as instance:
                done = [r for r in instance.get_runs() if r.status == dg.DagsterRunStatus.SUCCESS]
                failed = [r for r in instance.get_runs() if r.status == dg.DagsterRunStatus.FAILURE]
                assert not failed, (tmp_path / "serve.log").read_text()[-3000:]
                run = done[0] if done else None
        assert run is not None, "no successful run within 150 s:\n" + (tmp_path / "serve.log").read_text()[-3000:]
        assert run.job_name == "news_prepare"
        assert run.tags["dagster/run_key"] == sha256_file(good)
        assert run.tags["dagster/partition"].startswith("b_")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # serve.sh stops the webserver and the daemon
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1)
        try:  # and whatever they started in the group (code servers, run workers) goes too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
