"""The ledger on PostgreSQL through the same code, its migrations, and the Dagster instance on dagster-postgres."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from factory.cli import main
from factory.storage.db import SchemaError, head_revision, upgrade
from factory.storage.tables import schema_metadata
from factory.errors import TaskError
from factory.storage.ledger import Ledger, metadata

pytestmark = pytest.mark.postgres


def _schema_diff(url: str) -> list:
    """Differences between the migrated database and the code's tables (Alembic autogenerate)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            ctx = MigrationContext.configure(c, opts={"compare_type": True, "version_table": "factory_alembic_version"})
            return compare_metadata(ctx, schema_metadata())
    finally:
        eng.dispose()


def test_ledger_refuses_an_unmigrated_database_and_the_cli_migrates_it(pg_url):
    with pytest.raises(SchemaError, match=r"is empty; this code needs schema revision .*factory db upgrade"):
        Ledger(pg_url)
    res = CliRunner().invoke(main, ["db", "upgrade", "--url", pg_url])
    assert res.exit_code == 0, res.output
    assert f"(empty) -> {head_revision()}" in res.output
    st = CliRunner().invoke(main, ["db", "status", "--url", pg_url])
    assert st.exit_code == 0 and "up to date" in st.output
    Ledger(pg_url)  # opens now
    # a database migrated by newer code is refused, naming the unknown revision
    with sa.create_engine(pg_url).begin() as c:
        c.exec_driver_sql("UPDATE factory_alembic_version SET version_num='9999_future'")
    with pytest.raises(SchemaError, match="9999_future.*does not know"):
        Ledger(pg_url)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_build_exactly_the_code_schema(backend, pg_url, tmp_path):
    url = pg_url if backend == "postgresql" else f"sqlite:///{tmp_path / 'm.sqlite'}"
    upgrade(url)
    assert _schema_diff(url) == [], "a table or column changed in the code without a migration"


def test_sqlite_ledger_from_before_migrations_is_stamped_and_upgraded(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    eng = sa.create_engine(url)
    metadata.create_all(eng)  # what the factory did before it had migrations
    eng.dispose()
    Ledger(url)
    with sa.create_engine(url).connect() as c:
        assert c.exec_driver_sql("SELECT version_num FROM factory_alembic_version").scalar() == head_revision()


def test_chain_holds_under_concurrent_writers_on_postgresql(pg_url):
    upgrade(pg_url)
    ledgers = [Ledger(pg_url) for _ in range(8)]
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for j in range(25):
                # the same dedup keys from two writers: each event must land exactly once
                ledgers[w].append_events("d", [dict(batch_id="b", item_id=f"i{j}", kind="model", actor=f"m{w % 4}",
                                                    label="a", confidence=0.5, dedup_key=f"model:{w % 4}:{j}:{k}")
                                               for k in range(4)])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ev = ledgers[0].events("d")
    assert len(ev) == 4 * 25 * 4 and ev["dedup_key"].is_unique
    assert ledgers[0].verify_chain("d")["ok"]


def test_concurrent_answers_to_one_task_on_postgresql(pg_url):
    upgrade(pg_url)
    L = Ledger(pg_url)
    L.create_tasks([dict(task_id="t1", dataset="d", batch_id="b", item_id="i1", kind="review", reasons=["x"])])
    outcomes: list = []
    barrier = threading.Barrier(6)

    def answer(i: int) -> None:
        lg = Ledger(pg_url)
        barrier.wait()
        try:
            outcomes.append(lg.answer_task("t1", "a" if i % 2 else "b", f"ann-{i}", ["a", "b"]))
        except TaskError as e:
            outcomes.append(e)

    threads = [threading.Thread(target=answer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [o for o in outcomes if isinstance(o, dict) and not o["duplicate"]]
    assert len(accepted) == 1, outcomes  # one answer wins, the others are told it was answered
    assert len(L.events("d", kind="human")) == 1 and L.verify_chain("d")["ok"]


# ----------------------------------------------------------------------------- scale-out on a PostgreSQL instance
@pytest.mark.slow
def test_four_batches_at_once_on_a_postgresql_instance(pg_database, tmp_path, monkeypatch, bbc_small, truth):
    """deploy/dagster.yaml instance, ledger on PostgreSQL, multiprocess executor, four concurrent runs."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    import time

    import dagster as dg
    import yaml

    from assets.definitions import EXECUTOR
    from assets.runner import add_batch_partition, run_stage
    from factory import pipeline as P
    from factory.ingest import ingest
    from factory.simulate import SimulatedPool
    from tests.conftest import news_spec, write_csv

    dagster_url, ledger_url = pg_database("dagster"), pg_database("ledger")
    upgrade(ledger_url)
    root, home = tmp_path / "factory", tmp_path / "dagster_home"
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(news_spec(seed_size=20)))
    home.mkdir()
    shutil.copy(Path(__file__).parents[1] / "deploy" / "dagster.yaml", home / "dagster.yaml")
    for k, v in {"FACTORY_HOME": str(root), "FACTORY_DATABASE_URL": ledger_url, "DAGSTER_HOME": str(home),
                 "DAGSTER_POSTGRES_URL": dagster_url}.items():
        monkeypatch.setenv(k, v)

    fx = P.Factory.at(root)
    texts = bbc_small["text"].tolist()
    assert EXECUTOR.name == "multiprocess"
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        # a first batch brings the seed sample; people answer it; then four batches are prepared
        seed_batch = ingest(write_csv(tmp_path / "seed.csv", texts[:30]), fx.spec("news"), fx.ledger).batch_id
        add_batch_partition(instance, "news", seed_batch)
        assert run_stage(root, "news", "prepare", instance, seed_batch).success
        SimulatedPool(truth, acc_low=1.0, acc_high=1.0).answer_open_tasks(fx.ledger, fx.spec("news"))
        batches = []
        for i in range(4):
            b = ingest(write_csv(tmp_path / f"b{i}.csv", texts[30 + 20 * i: 50 + 20 * i]), fx.spec("news"),
                       fx.ledger).batch_id
            add_batch_partition(instance, "news", b)
            P.raw_items(fx, "news", b)  # what prepare writes once the seed sample is complete (no new tasks)
            batches.append(b)
        # four runs at once, each in its own process as a run launcher would start them (Dagster's
        # in-process execute_job is not thread-safe), each with the definitions' multiprocess executor
        exe = Path(sys.executable).parent / "dagster"
        t0 = time.time()
        procs = {b: subprocess.Popen([str(exe), "job", "execute", "-m", "assets.definitions", "-a", "defs",
                                      "-j", "news_annotate", "--tags", json.dumps({"dagster/partition": b})],
                                     cwd=str(Path(__file__).parents[1]), env=dict(os.environ),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for b in batches}
        outputs = {b: p.communicate(timeout=300)[0].decode(errors="replace") for b, p in procs.items()}
        elapsed = time.time() - t0
        assert all(p.returncode == 0 for p in procs.values()), {b: o[-2000:] for b, o in outputs.items()}
        runs = [r for r in instance.get_run_records() if r.dagster_run.job_name == "news_annotate"]
        assert len(runs) == 4 and all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert {r.dagster_run.tags["dagster/partition"] for r in runs} == set(batches)
        # the four runs overlapped in time: each started before any of them ended
        assert max(r.start_time for r in runs) < min(r.end_time for r in runs), elapsed
        logs = instance.all_logs(runs[0].dagster_run.run_id)
        assert any("multiprocess executor" in (e.message or "") for e in logs)

    for b in batches:
        assert fx.paths.table("routing", "news", b).exists()
        assert len(fx.ledger.events("news", batch_id=b, kind="model")) == 20 * 3
        assert len(fx.ledger.events("news", batch_id=b, kind="fusion")) == 20
    assert fx.ledger.events("news")["dedup_key"].dropna().is_unique
    assert fx.ledger.verify_chain("news")["ok"]
