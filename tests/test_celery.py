"""A real distributed run: two dagster-celery workers on the local RabbitMQ broker (Redis result backend),
the annotate and finalise steps of four batches executed by them on a PostgreSQL Dagster instance and a
PostgreSQL ledger, and the same labels as the in-process run.

Marker `celery`: without a broker on 127.0.0.1:5672 (or Redis on 6379) the test skips and says why;
with CI=true it fails.  `.ci/run` starts RabbitMQ and Redis when nothing answers.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.celery, pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BROKER = os.environ.get("FACTORY_TEST_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
BACKEND = os.environ.get("FACTORY_TEST_CELERY_BACKEND", "redis://127.0.0.1:6379/0")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def broker():
    missing = [f"{what} on 127.0.0.1:{port}" for what, port in (("RabbitMQ", 5672), ("Redis", 6379))
               if not _answers("127.0.0.1", port)]
    if missing:
        msg = f"no {', no '.join(missing)} answers; start them (`.ci/run` does) to run the Celery tests"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {msg}", pytrace=False)
        pytest.skip(msg)
    pytest.importorskip("dagster_celery", reason="dagster-celery is not installed: pip install -e '.[celery]'")
    return BROKER, BACKEND


def _run_job(job: str, batch: str, run_config: Path, env: dict) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "dagster"
    return subprocess.Popen([str(exe), "job", "execute", "-m", "assets.definitions", "-a", "defs", "-j", job,
                             "-c", str(run_config), "--tags", json.dumps({"dagster/partition": batch})],
                            cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_all(procs: dict, timeout: float = 600) -> None:
    outs = {b: p.communicate(timeout=timeout)[0].decode(errors="replace") for b, p in procs.items()}
    bad = {b: o[-3000:] for b, o in outs.items() if procs[b].returncode != 0}
    assert not bad, bad


def _reference_labels(tmp_path, texts_by_batch, seed_texts, truth, monkeypatch) -> dict[str, str]:
    """The same data and the same (perfect, simulated) people, run in-process on an embedded root."""
    from assets.runner import add_batch_partition, instance_for, run_stage
    from factory import pipeline as P
    from factory.ingest import ingest
    from factory.simulate import SimulatedPool
    from tests.conftest import news_spec, write_csv

    root = tmp_path / "reference"
    (root / "datasets").mkdir(parents=True)
    monkeypatch.delenv("FACTORY_DATABASE_URL")  # a SQLite ledger and a local instance under the root
    monkeypatch.setenv("DAGSTER_HOME", str(root / "dagster_home"))
    monkeypatch.setenv("FACTORY_EXECUTOR", "multiprocess")
    (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(news_spec(seed_size=20, review={"budget": 1.0})))
    fx = P.Factory.at(root)
    pool = SimulatedPool(truth, acc_low=1.0, acc_high=1.0, expert_accuracy=1.0)
    instance = instance_for(root)
    seed = ingest(write_csv(tmp_path / "ref-seed.csv", seed_texts), fx.spec("news"), fx.ledger).batch_id
    add_batch_partition(instance, "news", seed)
    assert run_stage(root, "news", "prepare", instance, seed).complete
    pool.answer_open_tasks(fx.ledger, fx.spec("news"))
    batches = []
    for i, texts in enumerate(texts_by_batch):  # in the order of the distributed run: all annotated first
        b = ingest(write_csv(tmp_path / f"ref-b{i}.csv", texts), fx.spec("news"), fx.ledger).batch_id
        add_batch_partition(instance, "news", b)
        P.raw_items(fx, "news", b)
        batches.append(b)
    for b in batches:
        assert run_stage(root, "news", "annotate", instance, b).complete
    for _ in range(4):
        for b in batches:
            pool.answer_open_tasks(fx.ledger, fx.spec("news"), batch_id=b)
        for b in [b for b in batches if not fx.paths.table("final_labels", "news", b).exists()]:
            r = run_stage(root, "news", "finalise", instance, b)
            assert r.success, r.failures
    out = {}
    for b in batches:
        f = P.read_table(fx, "final_labels", "news", b)
        out.update(zip(f["item_id"], f["label"]))
    return out


def test_four_batches_annotated_and_finalised_by_two_celery_workers(broker, pg_database, tmp_path, monkeypatch,
                                                                     bbc_small, truth):
    import dagster as dg

    from assets.runner import add_batch_partition, run_stage
    from factory import pipeline as P
    from factory.storage.db import upgrade
    from factory.ingest import ingest
    from factory.simulate import SimulatedPool
    from tests.conftest import news_spec, write_csv

    broker_url, backend_url = broker
    dagster_url, ledger_url = pg_database("dagster"), pg_database("ledger")
    upgrade(ledger_url)
    root, home = tmp_path / "factory", tmp_path / "dagster_home"
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(news_spec(seed_size=20, review={"budget": 1.0})))
    home.mkdir()
    shutil.copy(REPO / "deploy" / "celery" / "dagster.yaml", home / "dagster.yaml")
    queue = f"factory-test-{uuid.uuid4().hex[:8]}"  # this test's own queue: no stray worker takes its steps
    run_config = yaml.safe_load((REPO / "deploy" / "celery" / "run_config.yaml").read_text())
    run_config["execution"]["config"]["config_source"] |= {"task_default_queue": queue, "worker_concurrency": 1}
    cfg = tmp_path / "celery.yaml"
    cfg.write_text(yaml.safe_dump(run_config))
    env_vars = {"FACTORY_HOME": str(root), "FACTORY_DATABASE_URL": ledger_url, "DAGSTER_HOME": str(home),
                "DAGSTER_POSTGRES_URL": dagster_url, "FACTORY_EXECUTOR": "celery",
                "CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": backend_url}
    for k, v in env_vars.items():
        monkeypatch.setenv(k, v)
    env = dict(os.environ) | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                              "PYTHONPATH": str(REPO)}

    texts = bbc_small["text"].tolist()
    seed_texts = texts[:30]
    batch_texts = [texts[30 + 20 * i: 50 + 20 * i] for i in range(4)]
    fx = P.Factory.at(root)
    pool = SimulatedPool(truth, acc_low=1.0, acc_high=1.0, expert_accuracy=1.0)
    workers = []
    try:
        for i in range(2):
            log = open(tmp_path / f"worker{i}.log", "wb")
            workers.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                 "-y", str(cfg), "-q", queue, "-n", f"factory-test-{i}@%h", "-l", "INFO"],
                cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        with dg.DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            seed = ingest(write_csv(tmp_path / "seed.csv", seed_texts), fx.spec("news"), fx.ledger).batch_id
            add_batch_partition(instance, "news", seed)
            assert run_stage(root, "news", "prepare", instance, seed).complete
            pool.answer_open_tasks(fx.ledger, fx.spec("news"))
            batches = []
            for i, bt in enumerate(batch_texts):
                b = ingest(write_csv(tmp_path / f"b{i}.csv", bt), fx.spec("news"), fx.ledger).batch_id
                add_batch_partition(instance, "news", b)
                P.raw_items(fx, "news", b)
                batches.append(b)
            _wait_all({b: _run_job("news_annotate", b, cfg, env) for b in batches})
            for _ in range(4):  # people answer; finalise runs again while second opinions are opened
                for b in batches:
                    pool.answer_open_tasks(fx.ledger, fx.spec("news"), batch_id=b)
                todo = [b for b in batches if not fx.paths.table("final_labels", "news", b).exists()]
                if not todo:
                    break
                _wait_all({b: _run_job("news_finalise", b, cfg, env) for b in todo})
            runs = [r.dagster_run for r in instance.get_run_records()]
            assert {r.tags["dagster/partition"] for r in runs if r.job_name == "news_finalise"} == set(batches)
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs if r.job_name.startswith("news_"))
            # the steps ran on the Celery workers, not in the launching process
            celery_logs = [e for r in runs if r.job_name in ("news_annotate", "news_finalise")
                           for e in instance.all_logs(r.run_id) if "celery" in (e.message or "").lower()]
            assert celery_logs, "no step was submitted to Celery"
    finally:
        for w in workers:
            try:
                os.killpg(w.pid, 15)
            except ProcessLookupError:
                pass
        for w in workers:
            w.wait(timeout=30)
    worker_logs = "".join((tmp_path / f"worker{i}.log").read_text(errors="replace") for i in range(2))
    assert "succeeded" in worker_logs or "execute_plan" in worker_logs, worker_logs[-3000:]
    # both workers took steps
    assert sum("execute_plan" in (tmp_path / f"worker{i}.log").read_text(errors="replace") for i in range(2)) == 2

    # the ledger: every event once, the chain verifies, every batch finalised with the in-process labels
    events = fx.ledger.events("news")
    assert events["dedup_key"].dropna().is_unique
    assert fx.ledger.verify_chain("news")["ok"]
    got = {}
    for b in batches:
        f = P.read_table(fx, "final_labels", "news", b)
        assert len(f) == 20
        got.update(zip(f["item_id"], f["label"]))
    ref = _reference_labels(tmp_path, batch_texts, seed_texts, truth, monkeypatch)
    # (a budget for every flagged item: which deferred items a concurrent routing pass funds first depends on
    # which batch routes first, a race the in-process order does not have; deferral is tests/test_gate_routing.py's)
    assert got == ref and all(isinstance(v, str) for v in got.values())
