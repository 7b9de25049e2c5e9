"""Label Studio round trip through the CLI: export routed tasks with predictions, import answers all-or-nothing."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from factory.cli import main
from tests.test_web_api import CLASSES, make_factory


@pytest.fixture
def ls(tmp_path, monkeypatch):
    fx, tasks, _tokens = make_factory(tmp_path, monkeypatch)
    batch = tasks[0]["batch_id"]
    events = []
    for i, t in enumerate(tasks):
        for m, conf in (("word_tfidf_logreg@1.2.0+abc", 0.7), ("lsa_knn@1.0.0+abc", 0.55)):
            events.append(dict(batch_id=batch, item_id=t["item_id"], kind="model", actor=m, label=CLASSES[i % 3],
                               confidence=conf, payload={}))
        events.append(dict(batch_id=batch, item_id=t["item_id"], kind="fusion", actor="fusion:auto",
                           label=CLASSES[i % 3], confidence=0.62, payload={}))
    fx.ledger.append_events("news", events)
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return fx, tasks, batch, cli, tmp_path


def annotate(exported: list[dict], labels: dict[int, str], user=None) -> list[dict]:
    """What Label Studio's JSON export looks like after people answered the imported tasks."""
    out = []
    for n, task in enumerate(exported):
        t = dict(task, id=100 + n, annotations=[])
        if n in labels:
            t["annotations"].append({"id": 1000 + n, "completed_by": user or {"id": 7, "email": "ann@example.org"},
                                     "was_cancelled": False, "lead_time": 3.2,
                                     "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                                 "value": {"choices": [labels[n]]}}]})
        out.append(t)
    return out


def test_export_writes_label_studio_tasks_with_predictions(ls):
    fx, tasks, batch, cli, tmp = ls
    res = cli("export", "label-studio", "--batch", batch, "--out", tmp / "ls.json")
    assert res.exit_code == 0, res.output
    data = json.loads((tmp / "ls.json").read_text())
    assert len(data) == 6 and data[0]["data"]["factory_task_id"] == "t0" and data[0]["data"]["text"]
    preds = data[0]["predictions"]
    assert [p["model_version"] for p in preds] == ["word_tfidf_logreg@1.2.0+abc", "lsa_knn@1.0.0+abc", "fusion:auto"]
    assert preds[0]["score"] == pytest.approx(0.7)
    assert preds[0]["result"] == [{"from_name": "label", "to_name": "text", "type": "choices",
                                   "value": {"choices": ["business"]}}]
    xml = (tmp / "ls.xml").read_text()
    assert '<Choices name="label" toName="text"' in xml and all(f'"{c}"' in xml for c in CLASSES)
    assert cli("export", "label-studio", "--batch", "b_nope").exit_code == 2


def test_import_refuses_unknown_tasks_and_labels_and_writes_nothing(ls):
    fx, tasks, batch, cli, tmp = ls
    cli("export", "label-studio", "--batch", batch, "--out", tmp / "ls.json")
    exported = json.loads((tmp / "ls.json").read_text())
    bad = annotate(exported, {0: "tech", 1: "cooking", 2: "sports"})
    bad.append({"id": 999, "data": {"text": "x", "factory_task_id": "t_missing"}, "annotations": []})
    bad.append({"id": 998, "data": {"text": "y"}, "annotations": []})
    (tmp / "bad.json").write_text(json.dumps(bad))
    res = cli("import", "label-studio", tmp / "bad.json")
    assert res.exit_code == 2
    assert "nothing imported, 3 problem(s)" in res.output
    assert "label 'cooking' is not in the schema" in res.output
    assert "unknown factory task 't_missing'" in res.output and "no data.factory_task_id" in res.output
    assert fx.ledger.events("news", kind="human").empty


def test_import_maps_annotators_and_is_idempotent(ls):
    fx, tasks, batch, cli, tmp = ls
    cli("export", "label-studio", "--batch", batch, "--out", tmp / "ls.json")
    exported = json.loads((tmp / "ls.json").read_text())
    good = annotate(exported, {0: "tech", 1: "sports", 3: "business"})
    good[4]["annotations"] = [{"id": 5, "completed_by": 7, "was_cancelled": True, "result": []}]
    (tmp / "good.json").write_text(json.dumps(good))
    (tmp / "map.json").write_text(json.dumps({"someone@else.org": "ann-9"}))
    res = cli("import", "label-studio", tmp / "good.json", "--annotator-map", tmp / "map.json")
    assert res.exit_code == 2 and "Label Studio user 'ann@example.org' is not in the annotator map" in res.output
    (tmp / "map.csv").write_text("ls_user,annotator\nann@example.org,ann-7\n")
    res = cli("import", "label-studio", tmp / "good.json", "--annotator-map", tmp / "map.csv")
    assert res.exit_code == 0, res.output
    assert "3 recorded" in res.output and "1 cancelled" in res.output
    ev = fx.ledger.events("news", kind="human")
    assert sorted(ev["task_id"]) == ["t0", "t1", "t3"] and set(ev["actor"]) == {"ann-7"}
    assert all(json.loads(p)["source"] == "label-studio" for p in ev["payload"])
    res = cli("import", "label-studio", tmp / "good.json", "--annotator-map", tmp / "map.csv")
    assert res.exit_code == 0 and "3 already recorded, 0 recorded" in res.output
    assert len(fx.ledger.events("news", kind="human")) == 3
    # a different answer to a task the factory already has is refused, with the task named
    clash = annotate(exported, {0: "business"})
    (tmp / "clash.json").write_text(json.dumps(clash))
    res = cli("import", "label-studio", tmp / "clash.json", "--annotator-map", tmp / "map.csv")
    assert res.exit_code == 2 and "task 't0'" in res.output and "already recorded with label 'tech'" in res.output


def test_import_refuses_disagreeing_annotations_on_one_task(ls):
    fx, tasks, batch, cli, tmp = ls
    cli("export", "label-studio", "--batch", batch, "--out", tmp / "ls.json")
    exported = json.loads((tmp / "ls.json").read_text())
    two = annotate(exported, {0: "tech"})
    two[0]["annotations"].append({"id": 2, "completed_by": 8, "was_cancelled": False,
                                  "result": [{"type": "choices", "value": {"choices": ["sports"]}}]})
    (tmp / "two.json").write_text(json.dumps(two))
    res = cli("import", "label-studio", tmp / "two.json")
    assert res.exit_code == 2 and "2 annotations disagree" in res.output
    assert fx.ledger.events("news", kind="human").empty
