"""Adding a task type is a local change: a type defined in THIS module runs the whole flow, core untouched.

``Rating`` is a toy ordinal type (a star rating ``1``..``k`` per text) written only against the public
contract (:class:`factory.tasks.base.TaskType` + the batch hooks, with :class:`factory.tasks.classification.
Classification`'s fusion and labelers reused) and registered through :func:`factory.tasks.register`.  It has
its own spec check (classes are the consecutive ratings), answer parsing (``4``, ``4.0`` and ``"4"`` are the
same answer), agreement (mean absolute distance of two answers, besides nominal alpha), Label Studio control
(``<Rating>``) and widget.  Nothing in spec, ingest, pipeline, routing, release or the ledger names it: the flow
init -> ingest -> Dagster run -> tasks -> release -> verify-release -> trace below goes through them as they are.
"""
from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd
import pytest
import yaml

from factory import tasks
from factory.errors import SpecError
from factory.spec import parse_spec
from factory.tasks.base import AnswerError
from factory.tasks.classification import Classification
from tests.conftest import add_crew, answer_until_final, write_csv


class Rating(Classification):
    """A star rating per text: one of the spec's classes ``"1"``..``"k"`` (k >= 2), an ordinal scale."""

    name: ClassVar[str] = "rating"
    pipeline_ready: ClassVar[bool] = True
    answer_shape: ClassVar[str] = "one"
    modes: ClassVar[tuple[str, ...]] = ("prelabel-human",)
    widget: ClassVar[str] = "choices"
    shortcuts: ClassVar[str] = "digit 1-9: give that many stars and submit"

    def spec_errors(self, classes: Sequence[str]) -> list[str]:
        want = [str(i) for i in range(1, len(classes) + 1)]
        if len(classes) < 2 or [str(c) for c in classes] != want:
            return [f"rating classes are the ratings 1..k in order (k >= 2), e.g. {want or ['1', '2']}; "
                    f"got {list(classes)}"]
        return []

    def parse_answer(self, value: Any, classes: Sequence[str], where: str = "", item: dict | None = None) -> str:
        try:
            number = float(str(value).strip())
        except (TypeError, ValueError):
            number = math.nan
        if not number.is_integer() or str(int(number)) not in [str(c) for c in classes]:
            raise AnswerError(f"{where}: rating '{value}' is not one of {list(classes)}".lstrip(": "))
        return str(int(number))

    def agreement(self, answers: pd.DataFrame, classes: Sequence[str], items: pd.DataFrame | None = None) -> dict:
        out = super().agreement(answers, classes, items)
        dist = [abs(int(a) - int(b)) for _, g in answers.groupby("item_id")
                for a, b in combinations(g["label"].tolist(), 2)]
        return out | {"mean_absolute_distance": float(np.mean(dist)) if dist else math.nan}

    def labelstudio_config(self, classes: Sequence[str], from_name: str, to_name: str) -> str:
        return f'  <Rating name="{from_name}" toName="{to_name}" maxRating="{len(classes)}"/>\n'

    def to_labelstudio(self, stored: str, from_name: str, to_name: str) -> list[dict]:
        return [{"from_name": from_name, "to_name": to_name, "type": "rating", "value": {"rating": int(stored)}}]

    def from_labelstudio(self, results: list[dict], classes: Sequence[str], where: str = "") -> str:
        given = [r.get("value", {}).get("rating") for r in results if r.get("type") == "rating"]
        if len(given) != 1:
            raise AnswerError(f"{where}: expected one rating, found {given or 'none'}".lstrip(": "))
        return self.parse_answer(given[0], classes, where)


@pytest.fixture
def rating():
    """The toy type, registered through the public registry for one test (and taken out again after)."""
    t = tasks.register(Rating())
    yield t
    tasks._REGISTRY.pop("rating", None)  # the registry has no public unregister: a test must not leak its type


WORDS = {"1": ["awful", "a waste of money", "broke on day one", "terrible"],
         "2": ["disappointing", "poor quality", "not worth it", "mostly bad"],
         "3": ["average", "okay I guess", "nothing special", "mixed feelings"],
         "4": ["good value", "works well", "pleased with it", "solid product"],
         "5": ["excellent", "outstanding", "love it", "best purchase ever"]}
FILLER = ["the delivery came on monday", "bought it for my sister", "used it for a week", "the box was blue"]


def make_reviews(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, truth = [], []
    for i in range(n):
        stars = str(i % 5 + 1)
        words = rng.choice(WORDS[stars], size=2, replace=False)
        texts.append(f"Review {i}: {words[0]}, {rng.choice(FILLER)}, {words[1]}.")
        truth.append(stars)
    return texts, truth


def _spec(task_type: str, classes=("1", "2", "3", "4", "5")) -> dict:
    return {"name": "stars", "description": "product reviews rated 1-5", "license": "CC-BY-4.0",
            "task": {"type": task_type, "input": "text"},
            "classes": [{"name": c, "definition": f"{c} star(s)"} for c in classes], "guideline": {"version": "1"}}


def test_a_spec_names_a_type_once_it_is_registered_and_the_type_checks_its_classes(rating):
    tasks._REGISTRY.pop("rating")
    with pytest.raises(SpecError, match="unknown task type 'rating'"):
        parse_spec(_spec("rating"))
    tasks.register(rating)
    assert parse_spec(_spec("rating")).task_type is rating
    with pytest.raises(SpecError, match="ratings 1..k in order"):
        parse_spec(_spec("rating", ("1", "3")))
    # the spec fields another type reads are refused for this one, naming their owner
    with pytest.raises(SpecError, match="only for task.type pairs"):
        parse_spec(_spec("rating") | {"task": {"type": "rating", "input": "text", "left": "a"}})


def test_the_type_parses_answers_and_label_studio_results_itself(rating):
    classes = [str(i) for i in range(1, 6)]
    assert [rating.parse_answer(v, classes) for v in (4, 4.0, " 4", "4")] == ["4"] * 4
    for bad in (0, 6, 4.5, "four", None):
        with pytest.raises(AnswerError, match="not one of"):
            rating.parse_answer(bad, classes)
    assert rating.from_labelstudio(rating.to_labelstudio("3", "label", "text"), classes) == "3"
    answers = pd.DataFrame({"item_id": ["a", "a", "b", "b"], "worker_id": ["w1", "w2", "w1", "w2"],
                            "label": ["4", "5", "2", "2"]})
    assert rating.agreement(answers, classes)["mean_absolute_distance"] == 0.5


def _answer_open(cli, truth_by_text: dict, tmp_path: Path, name: str) -> int:
    open_tasks = [t for t in json.loads(cli("tasks", "list", "--dataset", "stars", "--json").output)
                  if t.get("status", "open") == "open"]
    if not open_tasks:
        return 0
    who = {"arbitrate": "expert-1", "second": "rev-2", "seed": "ann-1"}
    rows = [{"task_id": t["task_id"], "annotator": who.get(t["kind"], "rev-1"),
             "label": int(truth_by_text[t["text"]]),  # a number in the CSV: the type makes it its stored text
             "rationale": "the words" if t["kind"] == "arbitrate" else ""} for t in open_tasks]
    pd.DataFrame(rows).to_csv(tmp_path / name, index=False)
    assert f"imported {len(rows)} answers" in cli("tasks", "import", tmp_path / name).output
    return len(rows)


def test_a_type_defined_in_a_test_runs_the_whole_flow_with_the_core_untouched(rating, cli, root, fx, tmp_path):
    assert "wrote" in cli("init", "stars", "--type", "rating").output  # the commented template, its type named
    spec_path = root / "datasets" / "stars.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    assert spec["task"]["type"] == "rating"
    spec["classes"] = _spec("rating")["classes"]
    spec["seed"]["size"] = 40
    spec["quality"].update(audit_rate=0.5, min_accuracy=0.5, confidence_threshold=0.8)
    spec["review"]["budget"] = 1.0
    spec_path.write_text(yaml.safe_dump(spec))
    assert "valid" in cli("validate", "--dataset", "stars").output
    add_crew(cli)
    texts, truth = make_reviews(100)
    truth_by_text = dict(zip(texts, truth))
    cli("ingest", write_csv(tmp_path / "stars.csv", texts), "--dataset", "stars")
    batch = fx.ledger.batches("stars").iloc[0]["batch_id"]
    assert "wait for people" in cli("run", "--dataset", "stars", "--batch", batch).output
    listing = json.loads(cli("tasks", "list", "--batch", batch, "--json").output)
    assert len(listing) == 40 and all(t["kind"] == "seed" for t in listing)

    # the answer door refuses what the type refuses, with the type's words
    t0 = listing[0]
    res = cli("tasks", "answer", t0["task_id"], "six", "--annotator", "ann-1", ok=False)
    assert res.exit_code == 2 and "rating 'six' is not one of" in res.output
    cli("tasks", "answer", t0["task_id"], truth_by_text[t0["text"]], "--annotator", "ann-1")
    # Label Studio: the type's <Rating> control is exported, a rating result imported
    assert cli("export", "label-studio", "--batch", batch, "--out", tmp_path / "ls.json").exit_code == 0
    assert '<Rating name="label"' in (tmp_path / "ls.xml").read_text()
    exported = json.loads((tmp_path / "ls.json").read_text())
    for t in exported[:3]:
        t["annotations"] = [{"id": 1, "completed_by": "ann-1", "was_cancelled": False,
                             "result": rating.to_labelstudio(truth_by_text[t["data"]["text"]], "label", "text")}]
    (tmp_path / "ls-done.json").write_text(json.dumps(exported[:3]))
    res = cli("import", "label-studio", tmp_path / "ls-done.json")
    assert res.exit_code == 0 and "3 recorded" in res.output, res.output
    assert _answer_open(cli, truth_by_text, tmp_path, "seed.csv") == 36

    out = cli("run", "--dataset", "stars", "--batch", batch, ok=False).output
    preds = pd.read_parquet(fx.paths.table("model_predictions", "stars", batch))
    assert {f"prob_{c}" for c in "12345"} <= set(preds.columns)
    # review/audit tasks, then second opinions or arbitrations finalise may open
    answer_until_final(cli, "stars", batch, out,
                       lambda i: _answer_open(cli, truth_by_text, tmp_path, f"round{i}.csv"))
    assert "release: ok" in cli("run", "--dataset", "stars", "--stage", "release").output
    rel = Path(fx.ledger.releases("stars").iloc[0]["path"])
    assert "every file matches" in cli("verify-release", rel).output
    assert json.loads((rel / "manifest.json").read_text())["task_type"] == "rating"

    table = pd.read_parquet(rel / "labels.parquet")
    right = (table["label"] == table["text"].map(truth_by_text)).mean()
    assert len(table) == 100 and right >= 0.9, right

    import datasets

    split = next(iter(datasets.load_dataset(str(rel)).values()))
    assert split.features["label"].names == ["1", "2", "3", "4", "5"]
    import mlcroissant as mlc

    mlc.Dataset(jsonld=str(rel / "croissant.json"))  # raises on an invalid Croissant file

    trace = json.loads(cli("trace", t0["item_id"], "--dataset", "stars", "--json").output)["events"]
    assert trace[0]["kind"] == "human" and trace[0]["label"] == truth_by_text[t0["text"]] and trace[-1]["kind"] == "final"

    (rel / "labels.parquet").write_bytes(b"tampered")
    assert cli("verify-release", rel, ok=False).exit_code == 1


class Titled(Classification):
    """A toy type whose item is two columns, the spec's ``task.input`` and a ``title`` column: ingest asks the
    type which columns to read (``input_fields``) and how they become the item's text (``item_payload``)."""

    name: ClassVar[str] = "titled"

    def input_fields(self, task: Any) -> tuple[tuple[str, str], ...]:
        return (("input", task.input), ("input", "title"))

    def item_payload(self, row: dict, task: Any, context: Any) -> tuple[Any, str, str | None]:
        title = row.get("title")
        if not isinstance(title, str) or not title.strip():
            return None, "title", "a titled item needs its title"
        return f"{title.strip()}: {row.get(task.input)}", task.input, None


@pytest.fixture
def titled():
    t = tasks.register(Titled())
    yield t
    tasks._REGISTRY.pop("titled", None)


def test_ingest_asks_the_type_which_columns_make_an_item_and_how(titled, fx, tmp_path):
    from factory.errors import IngestError
    from factory.ingest import ingest

    spec = parse_spec(_spec("titled", ("neg", "pos")) | {"name": "titled", "quality": {"max_quarantine_rate": 0.5}})
    src = tmp_path / "t.csv"
    pd.DataFrame({"text": ["great phone", "broke at once", "fine"], "title": ["Phone", "Kettle", " "]}).to_csv(src, index=False)
    rep = ingest(src, spec, fx.ledger)
    assert sorted(fx.ledger.items("titled")["text"]) == ["Kettle: broke at once", "Phone: great phone"]
    assert [(q["field"], q["reason"]) for q in rep.quarantined] == [("title", "a titled item needs its title")]
    pd.DataFrame({"text": ["no title here"]}).to_csv(tmp_path / "u.csv", index=False)
    with pytest.raises(IngestError, match="missing column 'title'"):
        ingest(tmp_path / "u.csv", spec, fx.ledger)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("one text")
    with pytest.raises(IngestError, match="a titled dataset reads two columns"):
        ingest(tmp_path / "folder", spec, fx.ledger)


class Tagged(Classification):
    """A toy type released as a list of ``{start, end, type}`` structs (the shape spans use) whose stored text is
    only the class: reading a release back must ask the type, not guess from the values' shape."""

    name: ClassVar[str] = "tagged"

    def decode(self, stored: str) -> Any:
        return [{"start": 0, "end": 1, "type": stored}]

    def encode(self, value: Any) -> Any:
        return value if isinstance(value, str) else str(value[0]["type"])


def test_a_release_is_read_back_by_its_own_type_not_by_the_shape_of_its_values(tmp_path):
    from factory.release import canonical_labels, read_labels

    stored = pd.DataFrame({"item_id": ["a", "b"], "label": ["pos", "neg"]})
    released = stored.assign(label=stored["label"].map(Tagged().decode))
    released.to_parquet(tmp_path / "labels.parquet")  # structs in Parquet come back as NumPy arrays of dicts
    for table in (released, pd.read_parquet(tmp_path / "labels.parquet")):
        assert canonical_labels(table, Tagged())["label"].tolist() == ["pos", "neg"]
    assert read_labels(tmp_path / "labels.parquet", Tagged())["label"].tolist() == ["pos", "neg"]
    # the same values read as a spans release are spans' JSON: the type decides
    assert read_labels(tmp_path / "labels.parquet", tasks.get("spans"))["label"].tolist() == ['[[0,1,"pos"]]',
                                                                                            '[[0,1,"neg"]]']
