"""Crash safety: SIGKILL a real `factory run` process in the middle of a batch, rerun, compare with a run
that was never interrupted: no duplicated or lost label events, the chain verifies, the release is the same."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner

from assets.runner import add_batch_partition, run_stage
from factory import release as R
from factory.ingest import ingest
from factory.pipeline import Factory
from factory.simulate import SimulatedPool
from tests.conftest import news_spec, write_csv

pytestmark = pytest.mark.slow
FACTORY = Path(sys.executable).parent / "factory"


def _root(base: Path, texts) -> tuple[Path, Factory, str]:
    root = base / "factory"
    (root / "datasets").mkdir(parents=True)
    # 25 seed labels make weak models: half their auto-accepted labels audited certify 0.6, not the default 0.9
    (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(news_spec(
        seed_size=25, quality={"confidence_threshold": 0.8, "audit_rate": 0.5, "min_accuracy": 0.6,
                               "max_quarantine_rate": 0.5})))
    fx = Factory.at(root)
    rep = ingest(write_csv(base / "batch.csv", texts), fx.spec("news"), fx.ledger)
    return root, fx, rep.batch_id


def _seeded(base: Path, texts, truth, instance) -> tuple[Path, Factory, str, SimulatedPool]:
    """A root whose first batch is prepared and whose seed tasks are answered (perfect simulated people)."""
    root, fx, b = _root(base, texts)
    add_batch_partition(instance, "news", b)
    assert run_stage(root, "news", "prepare", instance, b).success
    perfect = {"expert_accuracy": 1.0} if "expert_accuracy" in SimulatedPool.__dataclass_fields__ else {}
    pool = SimulatedPool(truth, acc_low=1.0, acc_high=1.0, **perfect)
    pool.answer_open_tasks(fx.ledger, fx.spec("news"))
    return root, fx, b, pool


def _finish(root: Path, fx: Factory, b: str, pool: SimulatedPool, instance) -> Path:
    for _ in range(5):  # people answer until finalise stops waiting (reviews, second opinions, arbitration)
        pool.answer_open_tasks(fx.ledger, fx.spec("news"), batch_id=b)
        r = run_stage(root, "news", "finalise", instance, b)
        if not r.waiting:
            break
    assert r.success, r.failures
    r = run_stage(root, "news", "release", instance)
    assert r.success, r.failures
    return Path(fx.ledger.releases("news").iloc[-1]["path"])


# provenance/ holds the ledger's own events (random event ids, timestamps, run ids, chain hashes) and the
# tag manifest hashes it: those bytes differ between any two ledgers, so they are compared by content above
RUN_SPECIFIC = (*getattr(R, "RUN_SPECIFIC", ("provenance/",)), "tagmanifest-sha256.txt")


def _digests(folder: Path) -> dict[str, str]:
    return {rel: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and not (rel := str(p.relative_to(folder))).startswith(RUN_SPECIFIC)}


def _event_keys(fx: Factory) -> list[tuple]:
    ev = fx.ledger.events("news")
    return sorted(zip(ev["kind"], ev["item_id"], ev["actor"], ev["label"], ev["confidence"].round(6).fillna(-1)), key=str)


def test_sigkill_mid_batch_then_rerun_matches_an_uninterrupted_run(tmp_path, bbc_small, truth, monkeypatch):
    monkeypatch.delenv("FACTORY_DATABASE_URL", raising=False)
    import factory.provenance

    if hasattr(factory.provenance, "code_version"):  # a commit landing in a shared checkout mid-test is no crash
        code = factory.provenance.code_version()
        monkeypatch.setattr(factory.provenance, "code_version", lambda: code)
    texts = bbc_small["text"][:90]

    # the reference: the same batch, never interrupted
    with dg.instance_for_test() as instance:
        ref_root, ref_fx, ref_b, pool = _seeded(tmp_path / "ref", texts, truth, instance)
        assert run_stage(ref_root, "news", "annotate", instance, ref_b).success
        ref_release = _finish(ref_root, ref_fx, ref_b, pool, instance)

    # the crash: `factory run` annotating the batch in its own process, SIGKILLed once model events are written
    home = tmp_path / "crash" / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        root, fx, b, pool = _seeded(tmp_path / "crash", texts, truth, instance)
        env = dict(os.environ, FACTORY_HOME=str(root), DAGSTER_HOME=str(home))
        proc = subprocess.Popen([str(FACTORY), "run", "--dataset", "news", "--batch", b, "--stage", "annotate",
                                 "--root", str(root)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline, killed_at = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            if len(fx.ledger.events("news", kind="model")):
                proc.send_signal(signal.SIGKILL)
                killed_at = {k: len(fx.ledger.events("news", kind=k)) for k in ("model", "fusion")}
                break
            time.sleep(0.02)
        proc.wait(timeout=30)
        assert killed_at is not None and proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-2000:]
        assert killed_at["model"] > 0  # the kill came in the middle of the batch, after model events
        assert fx.ledger.verify_chain("news")["ok"]

        # the rerun: the same command a person would type, resuming wherever the kill left the batch
        from factory.cli import main

        res = CliRunner().invoke(main, ["run", "--dataset", "news", "--batch", b, "--root", str(root)])
        assert fx.paths.table("routing", "news", b).exists(), res.output
        release = _finish(root, fx, b, pool, instance)

    # nothing duplicated, nothing lost: the same machine and human events as the uninterrupted run
    ev = fx.ledger.events("news")
    assert ev["dedup_key"].dropna().is_unique
    assert _event_keys(fx) == _event_keys(ref_fx)
    assert fx.ledger.verify_chain("news")["ok"] and ref_fx.ledger.verify_chain("news")["ok"]
    # and the release is the same, byte for byte (every file outside the run-specific provenance folder)
    assert release.name == ref_release.name
    ours, theirs = _digests(release), _digests(ref_release)
    assert "labels.parquet" in ours and "manifest.json" in ours
    assert ours == theirs, {k: ((release / k).read_text()[:3000] if k.endswith((".json", ".txt", ".md")) else v)
                            for k, v in ours.items() if theirs.get(k) != v}
