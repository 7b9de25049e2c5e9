"""Shared fixtures: a small BBC News sample, a factory root with a spec, a Dagster instance per test."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from factory.datasets import load_bbc_news
from factory.ingest import item_id_for

CLASSES = ["business", "entertainment", "politics", "sports", "tech"]


def news_spec(name: str = "news", seed_size: int = 40, **overrides) -> dict:
    spec = {
        "name": name, "description": "BBC News topics (test)", "license": "CC-BY-4.0",
        "task": {"type": "classification", "input": "text", "metadata": ["source_file"]},
        "classes": [{"name": c, "definition": f"articles about {c}"} for c in CLASSES],
        "guideline": {"version": "1.0"},
        "seed": {"size": seed_size},
        "quality": {"confidence_threshold": 0.8, "audit_rate": 0.05, "max_quarantine_rate": 0.5},
        "review": {"budget": 0.6},
    }
    spec.update(overrides)
    return spec


@pytest.fixture(scope="session")
def bbc_small() -> pd.DataFrame:
    """30 articles per topic (150), deterministic."""
    df = load_bbc_news(limit_per_class=30, seed=1)
    return df.reset_index(drop=True)


@pytest.fixture(scope="session")
def truth(bbc_small) -> dict[str, str]:
    return {item_id_for(t): lab for t, lab in zip(bbc_small["text"], bbc_small["label"])}


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A factory root with datasets/news.yaml, its own ledger and DAGSTER_HOME."""
    r = tmp_path / "factory"
    (r / "datasets").mkdir(parents=True)
    (r / "datasets" / "news.yaml").write_text(yaml.safe_dump(news_spec()))
    monkeypatch.setenv("FACTORY_HOME", str(r))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.delenv("FACTORY_DATABASE_URL", raising=False)
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return r


@pytest.fixture
def cli(root):
    """`cli(*args, ok=True)`: run the factory CLI in-process on `root`; with ok, exit code 0 is asserted."""
    from click.testing import CliRunner

    from factory.cli import main

    runner = CliRunner()

    def invoke(*args, ok=True):
        res = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        if ok:
            assert res.exit_code == 0, res.output
        return res
    return invoke


@pytest.fixture
def fx(root):
    from factory.pipeline import Factory

    return Factory.at(root)


def write_csv(path: Path, texts, extra: dict | None = None) -> Path:
    df = pd.DataFrame({"text": list(texts), **(extra or {})})
    df.to_csv(path, index=False)
    return path


MAX_WORKERS = 4  # each worker imports Dagster and sklearn and holds PostgreSQL connections: bounded memory


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject addopts): one worker per core up to MAX_WORKERS; none (the run stays in this
    process, as without xdist) for one core or when the command names a single test file."""
    files = {str(a).split("::")[0] for a in config.args}
    if len(files) == 1 and next(iter(files)).endswith(".py"):
        return 0
    n = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), MAX_WORKERS)
    return n if n > 1 else 0


def pytest_configure(config):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    # Libraries that install a logging handler on first import bind it to the sys.stderr of that
    # moment; inside click's CliRunner that stream is closed afterwards and a later log line kills
    # the run ("I/O operation on closed file").  Import them here, before any test runs.
    try:
        import mlcroissant  # noqa: F401  (absl logging)
    except ImportError:
        pass


# ----------------------------------------------------------------------------- PostgreSQL (marker `postgres`)
PG_DEFAULT_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def pg_server():
    """An admin engine on $FACTORY_TEST_PG_URL; skips when no server answers, fails instead under CI=true."""
    import sqlalchemy as sa

    url = os.environ.get("FACTORY_TEST_PG_URL", PG_DEFAULT_URL)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as c:
            c.exec_driver_sql("SELECT 1")
    except Exception as e:  # noqa: BLE001 - any connection failure means "no server"
        engine.dispose()
        msg = (f"no PostgreSQL server answers at {url} ({type(e).__name__}: {str(e).strip().splitlines()[0]}); "
               f"start one or set FACTORY_TEST_PG_URL")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {msg}", pytrace=False)
        pytest.skip(msg)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_database(pg_server):
    """Make a fresh database on the test server (`pg_database('tag') -> url`); all are dropped at the end."""
    import uuid

    created: list[str] = []

    def make(tag: str = "db") -> str:
        name = f"factory_t_{tag}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with pg_server.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(name)
        return pg_server.url.set(database=name).render_as_string(hide_password=False)

    yield make
    with pg_server.connect() as c:
        for name in created:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database) -> str:
    """A fresh, empty PostgreSQL database for one test (URL with postgresql+psycopg2)."""
    return pg_database("ledger")


# the people a typed flow test registers: an L1 annotator, two L2 reviewers, an expert
CREW = (("ann-1", "L1"), ("rev-1", "L2"), ("rev-2", "L2"), ("expert-1", "expert"))


def add_crew(cli) -> None:
    """Register CREW through the CLI."""
    for who, tier in CREW:
        cli("annotators", "add", who, "--tier", tier)


def answer_until_final(cli, dataset: str, batch: str, out: str, answer_round, rounds: int = 6) -> str:
    """Answer what is open (``answer_round(i)``) and rerun the batch until finalise succeeds (review and audit
    tasks first, then the second opinions or arbitrations finalise may open); fails if it never does."""
    for i in range(rounds):
        if "finalise: ok" in out:
            break
        answer_round(i)
        out = cli("run", "--dataset", dataset, "--batch", batch, ok=False).output
    assert "finalise: ok" in out, out
    return out
