"""The command line through click's test runner, on a real factory root."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from factory.cli import main
from factory.simulate import SimulatedPool
from tests.conftest import write_csv


@pytest.fixture
def cli(root):
    runner = CliRunner()

    def invoke(*args, ok=True):
        res = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        if ok:
            assert res.exit_code == 0, res.output
        return res
    return invoke


def test_help_explains_every_command(cli):
    out = cli("--help").output
    for cmd in ("init", "ingest", "run", "tasks", "demo", "bench", "verify", "verify-release", "trace"):
        assert cmd in out
        assert "Usage" in cli(*cmd.split(), "--help").output


def test_init_writes_a_valid_template_and_refuses_to_overwrite(cli, root):
    out = cli("init", "reviews").output
    assert "wrote" in out and (root / "datasets" / "reviews.yaml").exists()
    assert "valid, spec version" in cli("validate", "reviews").output
    res = cli("init", "reviews", ok=False)
    assert res.exit_code == 2 and "--force" in res.output
    assert cli("init", "Bad Name", ok=False).exit_code == 2


def test_ingest_errors_name_the_file(cli, tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("text,colour\nx,y\n")
    res = cli("ingest", p, "--dataset", "news", ok=False)
    assert res.exit_code == 2 and "bad.csv: unknown column(s) ['colour']" in res.output


def test_people_in_the_loop_through_the_cli(cli, fx, bbc_small, truth, tmp_path, root):
    p = write_csv(tmp_path / "b.csv", bbc_small["text"][:80])
    out = cli("ingest", p, "--dataset", "news").output
    batch = fx.ledger.batches("news").iloc[0]["batch_id"]
    assert f"batch {batch}" in out
    out = cli("run", "--dataset", "news", "--batch", batch).output
    assert "wait for people" in out  # seed tasks are open
    listing = json.loads(cli("tasks", "list", "--batch", batch, "--json").output)
    assert len(listing) == 40 and all(t["kind"] == "seed" for t in listing)

    # answer one by hand, with the errors a person can make
    t0 = listing[0]["task_id"]
    assert cli("tasks", "answer", t0, "nonsense", "--annotator", "ann-1", ok=False).exit_code == 2
    cli("tasks", "answer", t0, truth[listing[0]["item_id"]], "--annotator", "ann-1")
    res = cli("tasks", "answer", t0, "business", "--annotator", "ann-2", ok=False)
    assert "already answered" in res.output

    # import the rest from a CSV; a bad row stops the whole import
    rows = [{"task_id": t["task_id"], "annotator": "ann-2", "label": truth[t["item_id"]]} for t in listing[1:]]
    bad = pd.DataFrame(rows + [{"task_id": "t_missing", "annotator": "ann-2", "label": "tech"}])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    res = cli("tasks", "import", tmp_path / "bad.csv", ok=False)
    assert "nothing imported" in res.output and "bad.csv row 41: task 't_missing': no such task" in res.output
    assert len(fx.ledger.tasks("news", status="open")) == 39
    pd.DataFrame(rows).to_csv(tmp_path / "good.csv", index=False)
    assert "imported 39 answers" in cli("tasks", "import", tmp_path / "good.csv").output

    out = cli("run", "--dataset", "news", "--batch", batch).output
    assert "annotate: ok" in out
    pool = SimulatedPool(truth)
    for _ in range(5):  # second opinions and arbitrations may be opened by finalise
        pool.answer_open_tasks(fx.ledger, fx.spec("news"))
        out = cli("run", "--dataset", "news", "--batch", batch, ok=False).output
        if "finalise: ok" in out:
            break
    assert "finalise: ok" in out
    out = cli("run", "--dataset", "news", "--stage", "release").output
    assert "release: ok" in out
    rel = fx.ledger.releases("news").iloc[0]["path"]
    assert "every file matches" in cli("verify-release", rel).output
    assert "ok:" in cli("verify", "--dataset", "news").output
    trace = json.loads(cli("trace", listing[0]["item_id"], "--dataset", "news", "--json").output)["events"]
    kinds = [e["kind"] for e in trace]
    assert kinds[0] == "human" and "model" in kinds and kinds[-1] == "final"
    (Path(rel) / "labels.parquet").write_bytes(b"tampered")
    res = cli("verify-release", rel, ok=False)
    assert res.exit_code == 1 and "labels.parquet: sha256 differs" in res.output


def test_dagster_definitions_validate(root):
    exe = Path(sys.executable).parent / "dagster"
    res = subprocess.run([str(exe), "definitions", "validate", "-w", "workspace.yaml"], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
