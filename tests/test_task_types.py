"""The task-type contract (factory/tasks/): the registry, classification and multi-label, and the doors that
ask the type (spec validation, the answer gate and the ledger, release features, Croissant, Label Studio)."""
from __future__ import annotations

import json
import math
import os
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest
import yaml

from factory import tasks
from factory.engine.spans import bio_spans
from factory.errors import SpecError
from factory.tasks import AnswerError, TaskType
from factory.tasks.multilabel import MultiLabel
from tests.conftest import news_spec

CLASSES = ["sport", "politics", "tech"]


def test_the_registry_holds_complete_types_and_names_the_closest_one():
    assert {"classification", "multi-label", "spans"} <= set(tasks.names())
    for name in tasks.names():
        assert isinstance(tasks.get(name), TaskType), name
    assert tasks.names(pipeline_ready=True) == ["classification", "multi-label", "spans", "pairs"]
    with pytest.raises(KeyError, match="did you mean 'multi-label'"):
        tasks.get("multilabel")

    class Half:  # a type that forgot most of the contract
        name = "half"

        def parse_answer(self, value, classes, where=""):
            return str(value)
    with pytest.raises(TypeError, match="does not implement the task-type contract"):
        tasks.register(Half())
    assert "half" not in tasks.names()


@pytest.mark.parametrize("value, why", [("cooking", "not in the schema"), (["sport", "tech"], "one class"),
                                        (None, "not in the schema")])
def test_classification_answers_are_one_class_of_the_schema(value, why):
    c = tasks.get("classification")
    assert c.parse_answer("tech", CLASSES) == "tech"
    with pytest.raises(AnswerError, match=why) as e:
        c.parse_answer(value, CLASSES, where="answers.csv row 3")
    assert str(e.value).startswith("answers.csv row 3: ")


def test_multi_label_answers_have_one_canonical_text():
    m = tasks.get("multi-label")
    assert m.parse_answer(["tech", "sport"], CLASSES) == "sport|tech"  # the spec's order, whatever was ticked first
    assert m.parse_answer("tech|sport", CLASSES) == m.parse_answer({"sport", "tech"}, CLASSES) == "sport|tech"
    assert m.parse_answer([], CLASSES) == m.parse_answer("", CLASSES) == ""  # "none of these" is an answer
    assert m.decode("sport|tech") == ["sport", "tech"] and m.decode("") == []
    for bad, why in [(["sport", "cooking"], r"\['cooking'\] not in the schema"), (["tech", "tech"], "given twice"),
                     (None, "the empty set is an answer too"), (3, "a list of classes")]:
        with pytest.raises(AnswerError, match=why):
            m.parse_answer(bad, CLASSES, "row 7")
    assert m.spec_errors(["a|b", "c"]) == ["class 'a|b': a multi-label class name may not contain '|'"]


def _crowd_sets(seed: int, n_items: int = 300, n_workers: int = 12, per_item: int = 5):
    """A simulated crowd ticking tag sets: each worker ticks a true tag with prob s_w, a false one with f_w."""
    rng = np.random.default_rng(seed)
    truth = {}
    rows = []
    s = rng.uniform(0.6, 0.95, n_workers)
    f = rng.uniform(0.02, 0.2, n_workers)
    for i in range(n_items):
        true = {c for c in CLASSES if rng.random() < 0.35}
        truth[f"i{i}"] = "|".join(c for c in CLASSES if c in true)
        for w in rng.choice(n_workers, per_item, replace=False):
            ticked = [c for c in CLASSES if rng.random() < (s[w] if c in true else f[w])]
            rows.append((f"i{i}", f"w{w}", "|".join(ticked)))
    return pd.DataFrame(rows, columns=["item_id", "worker_id", "label"]), truth


def test_multi_label_fusion_beats_per_tag_majority_on_a_simulated_crowd():
    m = tasks.get("multi-label")
    answers, truth = _crowd_sets(1)
    fused = m.fuse(answers, CLASSES)
    assert set(fused.columns) == {"label", "confidence"} and fused["confidence"].between(0, 1).all()
    for lab in fused["label"]:
        assert m.parse_answer(lab, CLASSES) == lab  # canonical
    exact = np.mean([fused.at[i, "label"] == t for i, t in truth.items()])
    ticks = answers.assign(sets=answers["label"].map(m.decode))
    majority = {i: "|".join(c for c in CLASSES if np.mean([c in s for s in g["sets"]]) > 0.5)
                for i, g in ticks.groupby("item_id")}
    mv = np.mean([majority[i] == t for i, t in truth.items()])
    assert exact >= mv and exact > 0.8, (exact, mv)


def test_agreement_means_what_it_says_for_each_type():
    m, c = tasks.get("multi-label"), tasks.get("classification")
    same = pd.DataFrame({"item_id": ["a", "a", "b", "b", "c", "c"], "worker_id": ["x", "y"] * 3,
                         "label": ["sport|tech", "sport|tech", "", "", "politics", "politics"]})
    ag = m.agreement(same, CLASSES)
    assert ag["mean_pairwise_jaccard"] == 1.0 and ag["krippendorff_alpha_mean"] == pytest.approx(1.0)
    half = same.assign(label=["sport|tech", "sport", "", "", "politics", "tech"])
    ag2 = m.agreement(half, CLASSES)
    assert ag2["mean_pairwise_jaccard"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert ag2["krippendorff_alpha_mean"] < ag["krippendorff_alpha_mean"]
    one = pd.DataFrame({"item_id": ["a", "a", "b", "b"], "worker_id": ["x", "y"] * 2,
                        "label": ["sport", "sport", "tech", "politics"]})
    assert c.agreement(one, CLASSES)["krippendorff_alpha"] < 1
    assert math.isnan(c.agreement(one.iloc[[0, 2]], CLASSES)["krippendorff_alpha"])  # nobody answered twice


@pytest.mark.parametrize("name, good, bad", [("classification", ["sport", "tech"], ["cooking", "sport"]),
                                             ("multi-label", ["sport|tech", ""], ["sport|cooking", "tech"]),
                                             ("spans", ['[[0,2,"sport"],[3,4,"tech"]]', "[]"],
                                              ['[[0,2,"cooking"]]', '[[1,2,"tech"]]'])])
def test_each_types_expectations_run_in_great_expectations_and_fail_on_a_bad_label(name, good, bad):
    from checks.standards import validate

    decl = tasks.get(name).expectations(CLASSES)
    ok = validate(pd.DataFrame({"item_id": ["i1", "i2"], "label": good}), "final_labels", declared=decl)
    assert all(o.success for o in ok.outcomes), ok
    res = validate(pd.DataFrame({"item_id": ["i1", "i2"], "label": bad}), "final_labels", declared=decl)
    failed = [o for o in res.outcomes if not o.success]
    assert failed and failed[0].unexpected_items == ["i1"]


def test_a_multi_label_column_loads_with_hugging_face_datasets_as_a_sequence_of_classes(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets") if os.environ.get("CI") != "true" else __import__("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    m = tasks.get("multi-label")
    stored = ["sport|tech", "", "politics"]
    (tmp_path / "data").mkdir()
    pd.DataFrame({"item_id": ["a", "b", "c"], "label": [m.decode(s) for s in stored]}).to_parquet(
        tmp_path / "data" / "train.parquet")
    card = {"dataset_info": {"features": [{"name": "item_id", "dtype": "string"},
                                          {"name": "label", **m.hf_feature(CLASSES)}]},
            "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train.parquet"}]}]}
    (tmp_path / "README.md").write_text("---\n" + yaml.safe_dump(card) + "---\n")
    ds = datasets.load_dataset(str(tmp_path), cache_dir=str(tmp_path / "hf"))["train"]
    feat = ds.features["label"]
    inner = getattr(feat, "feature", None) or feat[0]
    assert inner.names == CLASSES
    assert [[inner.int2str(x) for x in row] for row in ds["label"]] == [["sport", "tech"], [], ["politics"]]


def test_a_spans_column_loads_with_hugging_face_datasets_as_typed_structs(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets") if os.environ.get("CI") != "true" else __import__("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    t = tasks.get("spans")
    stored = ['[[0,2,"sport"],[3,4,"tech"]]', "[]"]
    (tmp_path / "data").mkdir()
    ids = {c: i for i, c in enumerate(CLASSES)}
    pd.DataFrame({"item_id": ["a", "b"], "label": [[dict(sp, type=ids[sp["type"]]) for sp in t.decode(s)]
                                                    for s in stored]}).to_parquet(tmp_path / "data" / "train.parquet")
    card = {"dataset_info": {"features": [{"name": "item_id", "dtype": "string"},
                                          {"name": "label", **t.hf_feature(CLASSES)}]},
            "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train.parquet"}]}]}
    (tmp_path / "README.md").write_text("---\n" + yaml.safe_dump(card) + "---\n")
    ds = datasets.load_dataset(str(tmp_path), cache_dir=str(tmp_path / "hf"))["train"]
    first = ds[0]["label"]
    spans = [dict(zip(first, v)) for v in zip(*first.values())] if isinstance(first, dict) else first
    assert [(s["start"], s["end"], s["type"]) for s in spans] == [(0, 2, 0), (3, 4, 2)]


STORED = {"classification": ["tech"], "multi-label": ["sport|tech", "", "politics"],
          "spans": ['[[0,2,"sport"],[3,4,"tech"]]', "[]"]}


@pytest.mark.parametrize("name", ["classification", "multi-label", "spans"])
def test_label_studio_config_and_results_round_trip(name):
    t = tasks.get(name)
    xml = ElementTree.fromstring(f"<View>{t.labelstudio_config(CLASSES, 'label', 'text')}</View>")
    ctl = xml.find("Labels" if name == "spans" else "Choices")
    assert [ch.get("value") for ch in ctl.findall("Label" if name == "spans" else "Choice")] == CLASSES
    if name != "spans":
        assert ctl.get("choice") == ("multiple" if name == "multi-label" else "single")
    for stored in STORED[name]:
        assert t.from_labelstudio(t.to_labelstudio(stored, "label", "text"), CLASSES, "task 1") == stored
    bad = ({"type": "labels", "value": {"labels": ["cooking"]}, "meta": {"tokens": [0, 1]}} if name == "spans"
           else {"type": "choices", "value": {"choices": ["cooking"]}})
    with pytest.raises(AnswerError, match="task 9"):
        t.from_labelstudio([bad], CLASSES, "task 9")


def test_span_answers_are_checked_against_the_items_tokens_and_stored_sorted():
    t = tasks.get("spans")
    item = {"n_tokens": 6}
    assert t.parse_answer([[4, 6, "tech"], {"start": 0, "end": 2, "type": "sport"}], CLASSES, "", item) == \
        '[[0,2,"sport"],[4,6,"tech"]]'
    assert t.parse_answer([], CLASSES) == t.parse_answer("", CLASSES) == "[]"
    for bad, why in [([[0, 3, "sport"], [2, 4, "tech"]], "overlap"), ([[4, 7, "tech"]], "the item has 6 tokens"),
                     ([[2, 2, "tech"]], "not a span"), ([[0, 1, "cooking"]], "not in the schema"),
                     ("[[0,1", "JSON list"), ([[0, 1]], r"expected \[start, end, type\]"), ([[0.5, 1, "tech"]], "token indices")]:
        with pytest.raises(AnswerError, match=why) as e:
            t.parse_answer(bad, CLASSES, "spans.jsonl row 5", item)
        assert str(e.value).startswith("spans.jsonl row 5: ")
    assert t.spec_errors(["PER", "B-LOC"]) == ["span type 'B-LOC' is reserved for BIO tags; name it differently"]


def test_span_fusion_recovers_the_entities_of_a_simulated_crowd():
    """**Simulated** annotators: each finds a true span with prob 0.8 (else misses it), gets a boundary one token
    short with prob 0.15, and adds a spurious one-token span with prob 0.1.  On so easy a crowd token majority is
    near the best possible (the sequence model's gain shows on real crowds: `factory bench spans`), so the
    fusion must be within 3 points of it, not above it."""
    t = tasks.get("spans")
    rng = np.random.default_rng(4)
    rows, truth, n_tok = [], {}, {}
    for i in range(200):
        n = int(rng.integers(6, 14))
        start = int(rng.integers(0, n - 3))
        true = [(start, start + int(rng.integers(1, 3)), str(rng.choice(CLASSES)))]
        truth[f"s{i}"], n_tok[f"s{i}"] = t.parse_answer([list(x) for x in true], CLASSES), n
        for w in rng.choice(10, 4, replace=False):
            ans = []
            for s0, e0, ty in true:
                if rng.random() < 0.8:
                    ans.append([s0, e0 - 1 if e0 - s0 > 1 and rng.random() < 0.15 else e0, ty])
            if rng.random() < 0.1:
                k = int(rng.integers(0, n))
                if all(not (s0 <= k < e0) for s0, e0, _ in ans):
                    ans.append([k, k + 1, str(rng.choice(CLASSES))])
            rows.append((f"s{i}", f"w{w}", t.parse_answer(ans, CLASSES, "", {"n_tokens": n})))
    answers = pd.DataFrame(rows, columns=["item_id", "worker_id", "label"])
    items = pd.DataFrame({"item_id": list(n_tok), "n_tokens": list(n_tok.values())})
    fused = t.fuse(answers, CLASSES, items)
    exact = np.mean([fused.at[i, "label"] == truth[i] for i in truth])
    majority = {}
    for i, g in answers.groupby("item_id"):
        tags = np.array([t.to_bio(lab, n_tok[i]) for lab in g["label"]])
        voted = [pd.Series(col).mode().iloc[0] for col in tags.T]
        majority[i] = t.parse_answer([[s0, e0 + 1, ty] for s0, e0, ty in bio_spans(voted)], CLASSES)
    mv = np.mean([majority[i] == truth[i] for i in truth])
    assert exact >= mv - 0.03 and exact > 0.85, (exact, mv)
    assert fused["confidence"].between(0, 1).all()
    ag = t.agreement(answers, CLASSES, items)
    assert 0 < ag["token_krippendorff_alpha"] < 1 and 0 < ag["mean_pairwise_span_f1"] < 1


# ----------------------------------------------------------------------------- the doors ask the type
@pytest.fixture
def multilabel_ready(monkeypatch):
    """Let a spec name multi-label, as it will once the batch pipeline runs it (the doors below do not depend
    on the pipeline)."""
    monkeypatch.setattr(MultiLabel, "pipeline_ready", True)


def _tags_spec(root, name="tags"):
    from factory.spec import load_spec

    doc = news_spec(name)
    doc["task"]["type"] = "multi-label"
    doc["classes"] = [{"name": c, "definition": f"about {c}"} for c in CLASSES]
    path = root / "datasets" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_spec(path)


def test_a_spec_names_only_types_the_pipeline_runs_and_the_type_checks_its_classes(root, monkeypatch):
    monkeypatch.setattr(MultiLabel, "pipeline_ready", False)
    with pytest.raises(SpecError, match="batch pipeline does not run it yet"):
        _tags_spec(root)
    monkeypatch.setattr(MultiLabel, "pipeline_ready", True)
    assert _tags_spec(root).task_type.name == "multi-label"
    doc = yaml.safe_load((root / "datasets" / "tags.yaml").read_text())
    doc["classes"][0]["name"] = "sport|news"
    (root / "datasets" / "tags.yaml").write_text(yaml.safe_dump(doc))
    from factory.spec import load_spec

    with pytest.raises(SpecError, match=r"may not contain '\|'"):
        load_spec(root / "datasets" / "tags.yaml")


def test_the_answer_door_and_the_ledger_store_the_types_canonical_label(root, multilabel_ready):
    from factory.gate import Answer, submit_answers
    from factory.pipeline import Factory

    _tags_spec(root)
    fx = Factory.at(root)
    fx.ledger.create_tasks([dict(task_id=f"t{i}", dataset="tags", batch_id="b", item_id=f"it_{i:020x}",
                                 kind="review", reasons=["x"]) for i in range(3)])
    rep = submit_answers(fx, [Answer(label=["tech", "sport"], annotator="ann-1", task_id="t0"),
                              Answer(label="", annotator="ann-1", task_id="t1")], source="import")
    assert not rep.refused, rep.refused
    got = fx.ledger.tasks("tags", status="answered").set_index("task_id")["answer"].to_dict()
    assert got == {"t0": "sport|tech", "t1": ""}
    rep = submit_answers(fx, [Answer(label=["tech", "cooking"], annotator="ann-1", task_id="t2", where="row 4")],
                         source="import")
    assert rep.refused and "['cooking'] not in the schema" in rep.refused[0].cause
    # the ledger checks too (a writer that skips the gate cannot store a non-canonical set)
    with pytest.raises(AnswerError, match="not in the schema"):
        fx.ledger.answer_tasks([{"task_id": "t2", "label": "tech|cooking", "annotator": "ann-2"}],
                               {"tags": fx.spec("tags").label_schema})
    # and its single-answer door canonicalises through the same schema
    fx.ledger.answer_task("t2", ["tech", "sport"], "ann-2", fx.spec("tags").label_schema, source="test")
    assert fx.ledger.tasks("tags", status="answered").set_index("task_id").at["t2", "answer"] == "sport|tech"


def test_release_card_croissant_and_label_studio_take_the_label_column_from_the_type(root, multilabel_ready):
    from factory.croissant import croissant
    from factory.labelstudio import label_config
    from factory.release import hf_features

    spec = _tags_spec(root)
    feats = hf_features({"item_id": "string", "label": "object"}, spec)
    assert feats[1] == {"name": "label", **{"dtype": spec.task_type.hf_feature(CLASSES)}}
    assert "sequence" in feats[1]["dtype"]
    manifest = {"dataset": "tags", "version": "1.0.0", "quality_standard": {"name": "factory-default-1.2.0"}}
    doc = croissant(manifest, spec, {"labels.parquet": "0" * 64}, ["item_id", "label"], [], "1", "2026-12-02")
    label = next(f for r in doc["recordSet"] for f in r.get("field", []) if f["@id"] == "labels/label")
    assert label["repeated"] is True and label["references"]["field"]["@id"] == "classes/name"
    assert 'choice="multiple"' in label_config(spec)
    json.dumps(doc)  # JSON-ready
