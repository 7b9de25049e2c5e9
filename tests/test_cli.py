"""The command line through click's test runner, on a real factory root."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from factory.simulate import SimulatedPool
from tests.conftest import write_csv


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
    # 40 seed labels make weak models: half their auto-accepted labels audited certify 0.6 on the Wilson lower
    # bound, not the default 0.9 (the blocking accuracy gate; tests/test_gates.py pins the refusals)
    spec_path = root / "datasets" / "news.yaml"
    spec_path.write_text(spec_path.read_text().replace("audit_rate: 0.05", "audit_rate: 0.5\n  min_accuracy: 0.6"))
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


def test_a_newcomer_keeps_their_own_ids_from_ingest_to_trace(cli, root, tmp_path):
    """init, ingest a CSV with its own ids, list tasks as JSON, answer and trace by the user's id."""
    import yaml

    cli("init", "reviews")
    spec_path = root / "datasets" / "reviews.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["task"]["id_column"] = "review_id"
    spec["seed"]["size"] = 4
    spec_path.write_text(yaml.safe_dump(spec))
    assert "valid" in cli("validate", "--dataset", "reviews").output
    # every text is longer than the table view's 60-character cut
    texts = [f"Review {i}: {'great, would buy again and again, the best' if i % 2 else 'it broke after a week'} "
             f"{'really ' * 8}(item {i})" for i in range(12)]
    src = write_csv(tmp_path / "reviews.csv", texts, {"review_id": [f"rt-{i:05d}" for i in range(12)]})
    cli("ingest", src, "--dataset", "reviews", "--run")
    recs = json.loads(cli("tasks", "list", "--dataset", "reviews", "--json").output)
    assert recs and all(r["external_id"].startswith("rt-") for r in recs)
    by_ext = {r["external_id"]: r for r in recs}
    for ext, r in by_ext.items():
        assert r["text"] == texts[int(ext[3:])]  # the whole text, no cut
        assert isinstance(r["reasons"], list) and isinstance(r["meta"], dict)
    ext = sorted(by_ext)[0]
    out = cli("tasks", "answer", ext, "positive", "--annotator", "ann-1").output
    assert f"task {by_ext[ext]['task_id']}: recorded" in out
    story = cli("trace", ext, "--dataset", "reviews").output
    assert f"your id: {ext}" in story and by_ext[ext]["item_id"] in story and "ann-1" in story
    as_json = json.loads(cli("trace", by_ext[ext]["item_id"], "--dataset", "reviews", "--json").output)
    assert as_json["external_id"] == ext
    res = cli("trace", "rt-99999", "--dataset", "reviews", ok=False)
    assert res.exit_code == 2 and "no such item" in res.output


@pytest.mark.parametrize("args, suggestion", [
    (["run", "--dataset", "review"], "did you mean 'reviews'?"),
    (["tasks", "list", "--dataset", "reveiws"], "did you mean 'reviews'?"),
    (["status", "--dataset", "reviews", "--batch", "b_nosuchbatch"], "no batch 'b_nosuchbatch'"),
    (["validate", "--dataset", "reviewz"], "did you mean 'reviews'?"),
    (["annotators", "show", "ann-3"], "annotators add ann-3 --tier"),
])
def test_unknown_names_are_errors_with_the_closest_name(cli, args, suggestion):
    cli("init", "reviews")
    res = cli(*args, ok=False)
    assert res.exit_code == 2, res.output
    assert suggestion in res.output and "Traceback" not in res.output


def test_answers_name_items_by_the_users_id_and_unknown_people_are_caught(cli, root, tmp_path):
    import yaml

    from factory.ingest import ingest, item_id_for
    from factory.pipeline import Factory
    from tests.conftest import news_spec

    task = {"type": "classification", "input": "text", "metadata": [], "id_column": "review_id"}
    (root / "datasets" / "ids.yaml").write_text(yaml.safe_dump(news_spec("ids", task=task)))
    fx = Factory.at(root)
    texts = ["first text", "second text", "third text"]
    ingest(write_csv(tmp_path / "a.csv", texts, {"review_id": ["rt-1", "rt-2", "rt-3"]}), fx.spec("ids"), fx.ledger)
    fx.ledger.create_tasks([dict(task_id=f"t{i}", dataset="ids", batch_id="b", item_id=item_id_for(t), kind="review",
                                 reasons=["x"]) for i, t in enumerate(texts)])
    answers = tmp_path / "answers.csv"
    pd.DataFrame({"item_id": ["rt-1"], "annotator": ["ann-1"], "label": ["tech"]}).to_csv(answers, index=False)
    assert "imported 1 answers" in cli("tasks", "import", answers).output
    cli("annotators", "add", "ann-1")
    res = cli("tasks", "answer", "rt-2", "tech", "--annotator", "ann-l", ok=False)  # a typo of ann-1
    assert res.exit_code == 2 and "did you mean 'ann-1'?" in res.output
    assert "recorded 'tech' by ann-1" in cli("tasks", "answer", "rt-2", "tech", "--annotator", "ann-1").output
    answered = fx.ledger.tasks("ids", status="answered").set_index("task_id")["annotator"].to_dict()
    assert answered == {"t0": "ann-1", "t1": "ann-1"}
