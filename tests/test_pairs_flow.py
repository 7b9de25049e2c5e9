"""pairs (entity matching) end to end: init --type pairs, ingest two record ids into a records file, run,
answer, release, verify, trace; the spec's and the answers' clear errors; the pair labelers beat chance;
Label Studio round trip; the wiring (registry, widget, release columns).

The product records are built here: a brand, a product line and a model number per product; two shops
describe it differently (word order, extra words, price a few per cent apart).  A "same" pair joins the two
shops' records of one product; a "different" pair joins products of the same brand and line whose model
numbers differ (hard negatives) or of different brands.
"""
import json
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest
import yaml

from factory import tasks
from factory.errors import SpecError
from factory.spec import parse_spec
from factory.tasks import AnswerError
from factory.tasks import pair_codec
from tests.conftest import add_crew, answer_until_final

BRANDS = ["sony", "bose", "canon", "nikon", "philips", "samsung", "panasonic", "yamaha"]
LINES = ["headphones", "speaker", "camera", "lens", "turntable", "television", "receiver", "soundbar"]
EXTRAS = ["black", "wireless", "new", "with remote", "home theater", "digital", "portable", "silver"]


def make_records(n_products: int, seed: int = 0) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """Records of two shops and (left record id, right record id, truth) pairs, about a third 'same'."""
    rng = np.random.default_rng(seed)
    rows, pairs = [], []
    products = []
    for p in range(n_products):
        brand, line = str(rng.choice(BRANDS)), str(rng.choice(LINES))
        model = f"{brand[:2]}-{rng.integers(100, 999)}{rng.choice(list('abcxz'))}"
        products.append((brand, line, model, float(rng.uniform(30, 900))))
    for p, (brand, line, model, price) in enumerate(products):
        a = {"record_id": f"a{p}", "name": f"{brand.title()} {line.title()} - {model.upper()}",
             "description": f"{brand} {line} {model} {rng.choice(EXTRAS)}", "price": f"${price:.2f}"}
        b = {"record_id": f"b{p}", "name": f"{model} {brand} {rng.choice(EXTRAS)} {line}",
             "description": "", "price": f"{price * rng.uniform(0.93, 1.07):.2f}" if rng.random() < 0.8 else ""}
        rows += [a, b]
    for p in range(n_products):
        if rng.random() < 0.35:
            pairs.append((f"a{p}", f"b{p}", "same"))
        else:
            same_brand = [q for q in range(n_products) if q != p and products[q][0] == products[p][0]]
            q = int(rng.choice(same_brand)) if same_brand and rng.random() < 0.6 else int((p + 1 + rng.integers(n_products - 1)) % n_products)
            pairs.append((f"a{p}", f"b{q}", "different"))
    return pd.DataFrame(rows), pairs


# ----------------------------------------------------------------------------- the type's contract


def test_pairs_is_registered_pipeline_ready_with_its_widget_and_labelers():
    t = tasks.get("pairs")
    assert t.pipeline_ready and t.answer_shape == "one" and t.widget == "pair"
    assert "Enter" in t.shortcuts and "digit" in t.shortcuts
    assert [type(lb).__name__ for lb in t.make_labelers()] == ["PairsSimLogReg", "PairsSimBoosting"]
    assert {lb.family for lb in t.make_labelers()} == {"pair-sim-logreg", "pair-sim-gbdt"}
    assert t.labeler_suite().startswith("pair_sim_logreg@")


def test_pairs_answers_are_one_class_with_clear_errors():
    t = tasks.get("pairs")
    classes = ["same", "different"]
    assert t.parse_answer("same", classes) == "same"
    for bad, why in [("maybe", "not in the schema"), (["same", "different"], "one class")]:
        with pytest.raises(AnswerError, match=why) as e:
            t.parse_answer(bad, classes, "answers.csv row 4")
        assert str(e.value).startswith("answers.csv row 4: ")
    assert t.spec_errors(["same"]) and "at least 2" in t.spec_errors(["same"])[0]


def _spec(task: dict, classes=("same", "different")) -> dict:
    return {"name": "match", "description": "d", "license": "CC-BY-4.0", "task": task,
            "classes": [{"name": c, "definition": c} for c in classes], "guideline": {"version": "1"}}


@pytest.mark.parametrize("task, why", [
    ({"type": "pairs"}, "needs task.left and task.right"),
    ({"type": "pairs", "left": "a", "right": "a"}, "both 'a'"),
    ({"type": "pairs", "left": "a", "right": "b", "metadata": ["b"]}, "not metadata"),
    ({"type": "pairs", "left": "a", "right": "b", "record_fields": ["name"]}, "task.records, which is not set"),
    ({"type": "classification", "left": "a"}, "only for task.type pairs"),
])
def test_a_pairs_spec_names_its_two_columns(task, why):
    with pytest.raises(SpecError, match=why):
        parse_spec(_spec(task))
    spec = parse_spec(_spec({"type": "pairs", "left": "a", "right": "b"}))
    assert spec.task.input_columns == ("a", "b")
    # the new fields stay out of a classification spec's dump: its version did not change
    assert "left" not in parse_spec(_spec({"type": "classification"}, ("x", "y"))).model_dump()["task"]


def test_label_studio_config_shows_two_texts_and_the_choice_round_trips():
    from factory.labelstudio import label_config

    t = tasks.get("pairs")
    spec = parse_spec(_spec({"type": "pairs", "left": "a", "right": "b"}))
    xml = ElementTree.fromstring(label_config(spec))
    texts = {x.get("name"): x.get("value") for x in xml.iter("Text")}
    assert texts == {"left": "$left", "right": "$right"}
    choices = xml.find("Choices")
    assert choices.get("toName") == "left" and choices.get("choice") == "single"
    assert [c.get("value") for c in choices.findall("Choice")] == ["same", "different"]
    for stored in ("same", "different"):
        assert t.from_labelstudio(t.to_labelstudio(stored, "label", "text"), ["same", "different"]) == stored
    with pytest.raises(AnswerError, match="task 3"):
        t.from_labelstudio([{"type": "choices", "value": {"choices": ["same", "different"]}}],
                           ["same", "different"], "task 3")


def test_the_codec_keeps_both_sides_and_reads_record_prices():
    rec = {"record_id": "7", "name": "Sony WH-1000", "description": "", "price": "$1,299.00"}
    text = pair_codec.encode(rec, "sony wh1000 headphones")
    left, right = pair_codec.sides(text)
    assert left == rec and right == "sony wh1000 headphones"
    assert pair_codec.side_price(left) == 1299.0 and np.isnan(pair_codec.side_price(right))
    assert pair_codec.side_text(left) == "Sony WH-1000"
    assert pair_codec.item_columns(text) == {"left": "record_id: 7\nname: Sony WH-1000\nprice: $1,299.00",
                                             "right": "sony wh1000 headphones"}
    frame = pair_codec.labeler_inputs(pd.DataFrame({"item_id": ["i"], "text": [text]}))
    assert list(frame.columns) == ["item_id", "left_text", "right_text", "left_price", "right_price"]
    with pytest.raises(ValueError, match="not a stored pair"):
        pair_codec.sides("just a sentence")


def test_pair_labelers_learn_matching_from_a_small_seed():
    """Each family, trained on 120 synthetic pairs, beats the majority class on 200 pairs it never saw."""
    recs, pairs = make_records(320, seed=3)
    by_id = recs.set_index("record_id").to_dict("index")
    texts = [pair_codec.encode({"record_id": a, **by_id[a]}, {"record_id": b, **by_id[b]}) for a, b, _ in pairs]
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(len(texts))], "text": texts})
    truth = np.array([y for _, _, y in pairs], dtype=object)
    train, test = items.iloc[:120], items.iloc[120:]
    chance = max((truth[120:] == c).mean() for c in ("same", "different"))
    for lb in tasks.get("pairs").make_labelers(seed=0):
        lb.fit(train, truth[:120].tolist(), ["same", "different"])
        acc = (np.asarray(lb.predict(test), dtype=object) == truth[120:]).mean()
        assert acc >= chance + 0.15, (lb.name, acc, chance)
        assert lb.info.training_hash  # traced to the seed it learnt from


# ----------------------------------------------------------------------------- the whole flow


def _answer_open(cli, truth_of, tmp_path: Path, name: str) -> int:
    open_tasks = [t for t in json.loads(cli("tasks", "list", "--dataset", "match", "--json").output)
                  if t.get("status", "open") == "open"]
    if not open_tasks:
        return 0
    who = {"arbitrate": "expert-1", "second": "rev-2", "seed": "ann-1"}
    rows = [{"task_id": t["task_id"], "annotator": who.get(t["kind"], "rev-1"), "label": truth_of(t["text"]),
             "rationale": "model numbers" if t["kind"] == "arbitrate" else ""} for t in open_tasks]
    pd.DataFrame(rows).to_csv(tmp_path / name, index=False)
    assert f"imported {len(rows)} answers" in cli("tasks", "import", tmp_path / name).output
    return len(rows)


def test_pairs_flow_from_init_to_trace(cli, root, fx, tmp_path):
    out = cli("init", "match", "--type", "pairs").output
    assert "wrote" in out
    spec_path = root / "datasets" / "match.yaml"
    text = spec_path.read_text()
    assert "type: pairs" in text and "# records:" in text  # the commented template of the type
    spec = yaml.safe_load(text)
    assert [c["name"] for c in spec["classes"]] == ["same", "different"]
    assert (spec["task"]["left"], spec["task"]["right"]) == ("left", "right")
    spec["task"]["records"] = "records.csv"
    spec["seed"]["size"] = 40
    spec["quality"].update(audit_rate=0.5, min_accuracy=0.5, confidence_threshold=0.8)
    spec["review"]["budget"] = 1.0
    spec_path.write_text(yaml.safe_dump(spec))
    assert "valid" in cli("validate", "--dataset", "match").output
    add_crew(cli)

    recs, pairs = make_records(120, seed=1)
    recs.to_csv(tmp_path / "records.csv", index=False)
    truth = {(a, b): y for a, b, y in pairs}

    def truth_of(stored: str) -> str:
        left, right = pair_codec.sides(stored)
        return truth[(left["record_id"], right["record_id"])]

    # a record id the records file lacks is quarantined with file, row, field and cause
    bad = pd.DataFrame({"left": ["a0", "zz9"], "right": ["b0", "b1"]})
    bad.to_csv(tmp_path / "bad.csv", index=False)
    res = cli("ingest", tmp_path / "bad.csv", "--dataset", "match", ok=False)
    assert res.exit_code != 0 and "row 3 field 'left'" in res.output and "'zz9' is not in the records file" in res.output

    pd.DataFrame(pairs, columns=["left", "right", "truth"])[["left", "right"]].to_csv(tmp_path / "pairs.csv", index=False)
    cli("ingest", tmp_path / "pairs.csv", "--dataset", "match")
    batch = fx.ledger.batches("match").iloc[0]["batch_id"]
    items = fx.ledger.items("match")
    assert len(items) == 120 and all(pair_codec.sides(t)[0]["record_id"].startswith("a") for t in items["text"])
    assert "wait for people" in cli("run", "--dataset", "match", "--batch", batch).output
    listing = json.loads(cli("tasks", "list", "--batch", batch, "--json").output)
    assert len(listing) == 40 and all(t["kind"] == "seed" for t in listing)

    t0 = listing[0]
    res = cli("tasks", "answer", t0["task_id"], "maybe", "--annotator", "ann-1", ok=False)
    assert res.exit_code == 2 and "maybe" in res.output and "same" in res.output
    cli("tasks", "answer", t0["task_id"], truth_of(t0["text"]), "--annotator", "ann-1")
    # five seed answers come back from Label Studio: the export shows both sides, the import reads the choice
    assert cli("export", "label-studio", "--batch", batch, "--out", tmp_path / "ls.json").exit_code == 0
    exported = json.loads((tmp_path / "ls.json").read_text())
    assert len(exported) == 39 and all(t["data"]["left"].startswith("record_id: a") and
                                       t["data"]["right"].startswith("record_id: b") for t in exported)
    xml = ElementTree.fromstring((tmp_path / "ls.xml").read_text())
    assert {x.get("name") for x in xml.iter("Text")} == {"left", "right"}
    for t in exported[:5]:
        t["annotations"] = [{"id": 1, "completed_by": "ann-1", "was_cancelled": False,
                             "result": [{"from_name": "label", "to_name": "left", "type": "choices",
                                         "value": {"choices": [truth_of(t["data"]["text"])]}}]}]
    (tmp_path / "ls-done.json").write_text(json.dumps(exported[:5]))
    res = cli("import", "label-studio", tmp_path / "ls-done.json")
    assert res.exit_code == 0 and "5 recorded" in res.output, res.output
    assert _answer_open(cli, truth_of, tmp_path, "seed.csv") == 34

    out = cli("run", "--dataset", "match", "--batch", batch, ok=False).output
    preds = pd.read_parquet(fx.paths.table("model_predictions", "match", batch))
    assert set(preds["labeler"]) == {"pair_sim_logreg", "pair_sim_gbdt"}
    assert {"prob_same", "prob_different"} <= set(preds.columns)
    fused = pd.read_parquet(fx.paths.table("fused_labels", "match", batch))
    text_of = items.set_index("item_id")["text"]
    acc = (fused["label"] == fused["item_id"].map(text_of).map(truth_of)).mean()
    assert acc >= 0.8, acc  # the models learnt matching from 40 answered pairs
    answer_until_final(cli, "match", batch, out,
                       lambda i: _answer_open(cli, truth_of, tmp_path, f"round{i}.csv"))
    assert "release: ok" in cli("run", "--dataset", "match", "--stage", "release").output
    rel = Path(fx.ledger.releases("match").iloc[0]["path"])
    assert "every file matches" in cli("verify-release", rel).output

    table = pd.read_parquet(rel / "labels.parquet")
    assert list(table.columns[:4]) == ["item_id", "text", "left", "right"]  # the two sides as columns
    assert table["left"].str.startswith("record_id: a").all() and table["right"].str.startswith("record_id: b").all()
    right = (table["label"] == table["text"].map(truth_of)).mean()
    assert right >= 0.9, right

    import datasets

    split = next(iter(datasets.load_dataset(str(rel)).values()))
    assert split.features["label"].names == ["same", "different"]
    assert {"left", "right"} <= set(split.features)
    import mlcroissant as mlc

    doc = json.loads((rel / "croissant.json").read_text())
    fields = {f["name"] for rs in doc["recordSet"] for f in rs["field"]}
    assert {"left", "right", "label"} <= fields
    mlc.Dataset(jsonld=str(rel / "croissant.json"))  # raises on an invalid Croissant file

    trace = json.loads(cli("trace", t0["item_id"], "--dataset", "match", "--json").output)["events"]
    kinds = [e["kind"] for e in trace]
    assert kinds[0] == "human" and "model" in kinds and kinds[-1] == "final"
    assert trace[0]["label"] == truth_of(t0["text"])


def test_the_replay_benchmark_uses_the_pairs_types_labelers():
    """One implementation: `factory bench replay` on a pair folder trains factory/pair_labelers.py's classes."""
    from benchmarks.replay import DEFAULTS, _labelers
    from factory.pair_labelers import FAMILIES

    labs = _labelers("pair", dict(DEFAULTS), seed=0)
    assert [type(lb) for lb in labs] == list(FAMILIES)
    # and they read the benchmark's own frames (left_text, right_text, prices) unchanged
    frame = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "left_text": ["x 1", "y 2", "x 1", "z 9"],
                          "right_text": ["x 1", "q 3", "x 1", "w 8"], "left_price": [1.0, 2, 1, 9],
                          "right_price": [1.0, 5, 1, 3]})
    probs = labs[0].fit(frame, ["1", "0", "1", "0"], ["0", "1"]).predict_proba(frame)
    assert probs.shape == (4, 2)


def test_bench_pairs_replays_recorded_answers_through_the_pipeline(tmp_path, monkeypatch):
    """`factory bench pairs` on a small synthetic crowd folder: the pipeline runs to a release, people are the
    recorded answers (revealed only for the tasks it opens, never more than recorded), scored on every item."""
    pytest.importorskip("crowdkit")
    from benchmarks import pairs as bench

    recs, pairs = make_records(160, seed=5)
    folder = tmp_path / "product"
    folder.mkdir()
    recs.to_csv(folder / "records.csv", index=False)
    items = pd.DataFrame({"item_id": [f"p{k:03d}" for k in range(len(pairs))],
                          "left_record_id": [a for a, _, _ in pairs], "right_record_id": [b for _, b, _ in pairs]})
    items.to_csv(folder / "items.csv", index=False)
    code = {"same": "1", "different": "0"}
    pd.DataFrame({"item_id": items["item_id"], "label": [code[y] for _, _, y in pairs]}).to_csv(
        folder / "truth.csv", index=False)
    rng = np.random.default_rng(0)
    rows = [(i, f"w{rng.integers(12)}{j}", code[y] if rng.random() < 0.85 else code[{"same": "different",
                                                                                    "different": "same"}[y]])
            for j in range(3) for i, (_, _, y) in zip(items["item_id"], pairs)]
    pd.DataFrame(rows, columns=["item_id", "worker_id", "label"]).to_csv(folder / "answers.csv", index=False)
    monkeypatch.setitem(bench.SETTINGS, "seed_size", 40)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))  # the bench sets it: restored after the test
    res = bench.run(tmp_path / "out", data=tmp_path, review_budget=0.3, batches=2)
    assert res["items"] == 160 and res["answers_total"] == 480 and res["items_in_factory"] == 160
    assert res["items_not_found"] == 0  # the bench finds each product item's factory item
    assert 40 <= res["answers_used"] < 480  # the seed at least; never every recorded answer
    assert res["released"] and res["items_without_answers_left"] == 0
    assert res["accuracy"] >= 0.8, res
    assert json.loads((tmp_path / "out" / "pairs.json").read_text())["answers_used"] == res["answers_used"]
