"""spans end to end through the CLI: init --type spans, ingest (tokenised, or a tokens column), run, answer spans
(people correct the shown pre-annotation), release with a spans column and a BIO view, verify, trace.

The sentences are built here from templates and name lists (persons, organisations, places), so every
sentence's true spans are known; they score the result, they never decide anything in the pipeline.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from factory.span_labelers import tokenize
from tests.conftest import add_crew, answer_until_final

PER = ["John Smith", "Mary Jones", "Ahmed Khan", "Li Wei", "Anna Berg", "Carlos Ruiz", "Tom Hardy", "Eva Novak",
       "Sara Lind", "Omar Haddad", "Kate Moss", "Ivan Petrov"]
ORG = ["Acme Corp", "the United Nations", "Reuters", "Siemens", "the World Bank", "Nokia", "Ford Motor",
       "Oxford University", "the Red Cross", "Unilever"]
LOC = ["Paris", "New York", "Berlin", "Lagos", "Tokyo", "Lima", "Cairo", "Oslo", "Madrid", "Cape Town", "Sydney"]
TEMPLATES = ["{PER} visited {LOC} on Monday .", "{PER} joined {ORG} last year .", "{ORG} opened an office in {LOC} .",
             "Officials in {LOC} said {PER} would resign .", "Shares of {ORG} fell sharply .",
             "The weather was mild all week .", "{PER} met {PER2} in {LOC} .", "Nothing happened here today .",
             "A spokesman for {ORG} declined to comment .", "{PER} spoke to reporters ."]


SYLLABLES = ["zor", "vak", "im", "bel", "ka", "tru", "os", "den", "mi", "rag", "lu", "fen"]


def _new_name(rng, words: int) -> str:
    """A name nobody has seen (the gazetteer cannot know it; word shape and context can)."""
    return " ".join("".join(rng.choice(SYLLABLES, size=2)).capitalize() for _ in range(words))


def make_sentences(n: int, seed: int = 0, new_names: float = 0.0) -> tuple[list[str], list[list]]:
    """Sentences and their true spans [start, end, type] over `tokenize`'s tokens (the factory's tokeniser);
    `new_names`: share of names made up on the spot instead of drawn from the lists."""
    rng = np.random.default_rng(seed)
    texts, truth = [], []

    def pick(names: list, words: int) -> str:
        return _new_name(rng, words) if rng.random() < new_names else str(rng.choice(names))

    for i in range(n):
        tpl = str(rng.choice(TEMPLATES))
        fill = {"PER": pick(PER, 2), "PER2": pick(PER, 2), "ORG": pick(ORG, 1), "LOC": pick(LOC, 1)}
        toks, spans = [], []
        for part in tpl.split():
            key = part.strip("{}") if part.startswith("{") else None
            words = tokenize(fill[key]) if key else [part]
            if key and not (key == "ORG" and words[0] == "the"):
                spans.append([len(toks), len(toks) + len(words), key.rstrip("2")])
            elif key:  # "the" is not part of an organisation's name
                spans.append([len(toks) + 1, len(toks) + len(words), "ORG"])
            toks += words
        texts.append(f"({i}) " + " ".join(toks))
        truth.append([[s + 3, e + 3, t] for s, e, t in spans])  # "(", "i", ")" come first
    return texts, truth


def _boundary_error(spans: list) -> list:
    """The first span one token short (or one token longer when it has one token): a reviewer's slip."""
    (s, e, t), rest = spans[0], spans[1:]
    return [[s, e - 1 if e - s > 1 else e + 1, t]] + rest


def _answer_open(cli, truth_by_text: dict, tmp_path: Path, dataset: str, name: str, seen: list | None = None,
                 wrong: set | None = None) -> int:
    """Answer every open task with the truth (CSV import); tasks in `wrong` get a boundary error."""
    open_tasks = [t for t in json.loads(cli("tasks", "list", "--dataset", dataset, "--json").output)
                  if t.get("status", "open") == "open"]
    if not open_tasks:
        return 0
    who = {"arbitrate": "expert-1", "second": "rev-2", "seed": "ann-1"}
    if seen is not None:
        seen += open_tasks
    rows = [{"task_id": t["task_id"], "annotator": who.get(t["kind"], "rev-1"),
             "label": json.dumps(_boundary_error(truth_by_text[t["text"]]) if t["task_id"] in (wrong or set())
                                 else truth_by_text[t["text"]]),
             "rationale": "names" if t["kind"] == "arbitrate" else ""}
            for t in open_tasks]
    pd.DataFrame(rows).to_csv(tmp_path / name, index=False)
    out = cli("tasks", "import", tmp_path / name).output
    assert f"imported {len(rows)} answers" in out, out
    return len(rows)


def test_spans_flow_from_init_to_trace(cli, root, fx, tmp_path):
    out = cli("init", "ents", "--type", "spans").output
    assert "wrote" in out
    spec_path = root / "datasets" / "ents.yaml"
    text = spec_path.read_text()
    assert "type: spans" in text and "tokens" in text  # the commented template of the type
    spec = yaml.safe_load(text)
    assert [c["name"] for c in spec["classes"]] == ["PER", "ORG", "LOC"]
    spec["seed"]["size"] = 40
    spec["quality"].update(audit_rate=0.2, min_accuracy=0.5)
    spec["review"]["budget"] = 1.0
    spec["review"]["show_model_suggestion"] = False  # spans show the pre-annotation to correct anyway
    spec_path.write_text(yaml.safe_dump(spec))
    assert "valid" in cli("validate", "--dataset", "ents").output

    add_crew(cli)
    texts, truth = make_sentences(120, new_names=0.4)
    truth_by_text = dict(zip(texts, truth))
    src = tmp_path / "ents.csv"
    pd.DataFrame({"text": texts}).to_csv(src, index=False)
    cli("ingest", src, "--dataset", "ents")
    items = fx.ledger.items("ents")
    # the tokenisation is recorded in the item: span offsets index these tokens
    first = items.iloc[0]
    assert json.loads(first["meta"])["tokens"] == tokenize(first["text"])
    batch = fx.ledger.batches("ents").iloc[0]["batch_id"]
    assert "wait for people" in cli("run", "--dataset", "ents", "--batch", batch).output
    listing = json.loads(cli("tasks", "list", "--batch", batch, "--json").output)
    assert len(listing) == 40 and all(t["kind"] == "seed" for t in listing)

    # one answer by hand; a span past the item's tokens or of an unknown type is refused with the cause
    t0 = listing[0]
    n0 = len(tokenize(t0["text"]))
    res = cli("tasks", "answer", t0["task_id"], json.dumps([[0, n0 + 1, "PER"]]), "--annotator", "ann-1", ok=False)
    assert res.exit_code == 2 and f"{n0} tokens" in res.output, res.output
    res = cli("tasks", "answer", t0["task_id"], '[[0,1,"DATE"]]', "--annotator", "ann-1", ok=False)
    assert res.exit_code == 2 and "DATE" in res.output
    cli("tasks", "answer", t0["task_id"], json.dumps(truth_by_text[t0["text"]]), "--annotator", "ann-1")
    assert _answer_open(cli, truth_by_text, tmp_path, "ents", "seed.csv") == 39

    out = cli("run", "--dataset", "ents", "--batch", batch, ok=False).output
    preds = pd.read_parquet(fx.paths.table("model_predictions", "ents", batch))
    assert set(preds["labeler"]) == {"crf_shape", "window_gazetteer"}  # two families of taggers
    fused = pd.read_parquet(fx.paths.table("fused_labels", "ents", batch))
    by_id = fx.ledger.items("ents").set_index("item_id")["text"]
    exact = (fused["label"] == fused["item_id"].map(by_id).map(lambda t: json.dumps(truth_by_text[t],
                                                                                   separators=(",", ":")))).mean()
    assert exact >= 0.6, exact  # the taggers learnt the names from 40 sentences
    routes = pd.read_parquet(fx.paths.table("routing", "ents", batch))
    assert {"audit", "auto"} <= set(routes["route"]), routes["route"].value_counts()
    reasons = set(routes["reasons"].map(json.loads).explode().dropna())
    assert "audit" in reasons
    # a person corrects the pre-annotation: review and audit tasks show the fused spans
    asked: list = []
    tasks_now = json.loads(cli("tasks", "list", "--batch", batch, "--json").output)
    shown = [t for t in tasks_now if t["kind"] in ("review", "audit") and t.get("status", "open") == "open"]
    assert shown and all(t.get("suggestion") == fused.set_index("item_id").at[t["item_id"], "label"] for t in shown)
    # Label Studio round trip: the export carries the fused spans with Label Studio's character offsets; answers
    # come back either in our token form (meta.tokens) or as spans drawn in Label Studio (characters only)
    from factory.tasks.spans import Spans

    cli("export", "label-studio", "--batch", batch, "--out", tmp_path / "ls.json")
    assert "<Labels" in (tmp_path / "ls.xml").read_text()
    exported = [t for t in json.loads((tmp_path / "ls.json").read_text())
                if t["data"]["factory_task_id"] in {x["task_id"] for x in shown}]
    results = [r for t in exported for p in t["predictions"] for r in p["result"]]
    assert results and all(t["data"]["text"][r["value"]["start"]:r["value"]["end"]] == r["value"]["text"]
                           for t in exported for p in t["predictions"] for r in p["result"])
    ls_answers = []
    for n, t in enumerate(exported[:2]):
        text = t["data"]["text"]
        off = Spans.char_offsets(text, tokenize(text))
        res = [{"from_name": "label", "to_name": "text", "type": "labels",
                "value": {"labels": [ty]} | ({} if n == 0 else {"start": off[s][0], "end": off[e - 1][1]}),
                **({"meta": {"tokens": [s, e]}} if n == 0 else {})} for s, e, ty in truth_by_text[text]]
        ls_answers.append(dict(t, id=500 + n, annotations=[{"id": 900 + n, "completed_by": 7, "was_cancelled": False,
                                                            "result": res}]))
    (tmp_path / "ls-done.json").write_text(json.dumps(ls_answers))
    (tmp_path / "map.csv").write_text("ls_user,annotator\n7,rev-1\n")
    res = cli("import", "label-studio", tmp_path / "ls-done.json", "--annotator-map", tmp_path / "map.csv")
    assert "2 recorded" in res.output, res.output
    got = fx.ledger.events("ents", kind="human").set_index("task_id")["label"]
    for t in exported[:2]:
        assert got[t["data"]["factory_task_id"]] == json.dumps(truth_by_text[t["data"]["text"]], separators=(",", ":"))

    # one reviewer gets a boundary wrong: people and models disagree there
    missed = next(t for t in shown[2:] if truth_by_text[t["text"]])
    answer_until_final(cli, "ents", batch, out,
                       lambda i: _answer_open(cli, truth_by_text, tmp_path, "ents", f"round{i}.csv", asked,
                                              wrong={missed["task_id"]}))
    final = pd.read_parquet(fx.paths.table("final_labels", "ents", batch))
    # people were asked: the audit, and the sentences routing flagged (span routing's reasons, or a confidence
    # calibrated on the seed's cross-fitted taggers below the threshold)
    assert {"audit", "review"} <= {t["kind"] for t in asked}
    # the disputed sentence got a second opinion (tier >= L2), and the final label is the truth again
    again = [t for t in asked if t["item_id"] == missed["item_id"] and t["kind"] in ("second", "arbitrate")]
    assert again, [(t["kind"], t["item_id"]) for t in asked]
    flagged = routes.loc[routes["route"] == "review", "reasons"].map(json.loads).explode()
    assert set(flagged) <= {"low_confidence", "disagreement", "boundary", "missed_entity", "no_support"}
    right = (final["label"] == final["item_id"].map(by_id).map(
        lambda t: json.dumps(truth_by_text[t], separators=(",", ":")))).mean()
    assert right >= 0.8, right
    assert final.set_index("item_id").at[missed["item_id"], "label"] == json.dumps(truth_by_text[missed["text"]],
                                                                                   separators=(",", ":"))
    assert "release: ok" in cli("run", "--dataset", "ents", "--stage", "release").output
    rel = Path(fx.ledger.releases("ents").iloc[0]["path"])
    # the certificate states span-level quality where people checked the machines: strict and relaxed, intervals
    spans_q = json.loads((rel / "quality" / "certificate.json").read_text())["measures"]["spans"]
    audit_f1 = spans_q["audit"]["strict"]
    assert audit_f1["n_sentences"] >= 10 and audit_f1["f1_interval"][0] <= audit_f1["f1"] <= audit_f1["f1_interval"][1]
    assert spans_q["human_checked"]["relaxed"]["f1"] >= spans_q["human_checked"]["strict"]["f1"]
    assert "every file matches" in cli("verify-release", rel).output

    # the release: tokens, spans as a list of structs, and the BIO view
    table = pd.read_parquet(rel / "labels.parquet")
    row = table.iloc[0]
    assert list(row["tokens"]) == tokenize(row["text"])
    spans = [[int(d["start"]), int(d["end"]), d["type"]] for d in row["label"]]
    bio = ["O"] * len(row["tokens"])
    for s, e, t in spans:
        bio[s:e] = [f"B-{t}"] + [f"I-{t}"] * (e - s - 1)
    assert list(row["bio"]) == bio

    import datasets

    ds = datasets.load_dataset(str(rel), cache_dir=str(tmp_path / "hf"))  # no stale copy from another run
    split = next(iter(ds.values()))
    tags = split.features["bio"].feature.names
    assert tags[:3] == ["O", "B-PER", "I-PER"]
    got = split[0]
    want = table.set_index("item_id").loc[got["item_id"]]
    assert [tags[j] for j in got["bio"]] == list(want["bio"])
    type_names = split.features["label"][0]["type"].names if isinstance(split.features["label"], list) else \
        split.features["label"].feature["type"].names
    assert type_names == ["PER", "ORG", "LOC"]

    import mlcroissant as mlc

    mlc.Dataset(jsonld=str(rel / "croissant.json"))  # raises on an invalid Croissant file
    cro = json.loads((rel / "croissant.json").read_text())
    fields = {f["name"]: f for rs in cro["recordSet"] for f in rs.get("field", [])}
    assert fields["bio"]["repeated"] and fields["tokens"]["repeated"] and fields["label"]["repeated"]

    # people's corrections retrain the taggers: the next training sees more human spans, under a new hash
    from factory.pipeline import train_labelers

    before = preds["labeler_version"].str.split("+").str[1].iloc[0]
    again_trained = train_labelers(fx, "ents")
    assert not again_trained.reused and again_trained.n_train > 40
    assert not again_trained.training_hash.startswith(before)

    trace = json.loads(cli("trace", t0["item_id"], "--dataset", "ents", "--json").output)["events"]
    kinds = [e["kind"] for e in trace]
    assert kinds[0] == "human" and "model" in kinds and kinds[-1] == "final"


def test_a_tokens_column_is_recorded_and_bad_tokens_are_quarantined(cli, root, fx, tmp_path):
    from factory.spec import template

    (root / "datasets" / "ents.yaml").write_text(template("ents", "spans"))
    rows = pd.DataFrame({"text": ["New York-based Acme", "Paris", "Oslo Oslo", "x"],
                         "tokens": ['["New", "York-based", "Acme"]', "Paris", "[1, 2]", "[]"]})
    rows.to_csv(tmp_path / "t.csv", index=False)
    spec = yaml.safe_load(template("ents", "spans"))
    spec["quality"]["max_quarantine_rate"] = 0.6
    (root / "datasets" / "ents.yaml").write_text(yaml.safe_dump(spec))
    out = cli("ingest", tmp_path / "t.csv", "--dataset", "ents").output
    items = fx.ledger.items("ents").set_index("text")
    assert json.loads(items.at["New York-based Acme", "meta"])["tokens"] == ["New", "York-based", "Acme"]
    assert json.loads(items.at["Paris", "meta"])["tokens"] == ["Paris"]
    assert len(items) == 2
    q = fx.ledger.table("quarantine", dataset="ents")
    assert sorted(q["source_row"].tolist()) == [4, 5] and set(q["field"]) == {"tokens"}, (out, q)


def test_span_labelers_learn_names_and_save(tmp_path):
    from factory import tasks
    from factory.labelers import Labeler

    texts, truth = make_sentences(150, seed=3)
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(150)], "text": texts})
    labels = [json.dumps(t, separators=(",", ":")) for t in truth]
    tt = tasks.get("spans")
    labelers = tt.make_labelers(seed=0)
    assert len({lb.family for lb in labelers}) == 2
    for lb in labelers:
        lb.fit(items[:80], labels[:80], ["PER", "ORG", "LOC"])
        got, conf, p = lb.predict_spans(items[80:])
        assert p.shape == (70, 3) and ((conf > 0) & (conf <= 1)).all()
        assert np.mean(np.array(got) == np.array(labels[80:])) >= 0.7, lb.name
        for g in got:  # every prediction is a valid stored answer
            assert tt.parse_answer(g, ["PER", "ORG", "LOC"]) == g
        lb.save(tmp_path / lb.name)
        assert Labeler.load(tmp_path / lb.name).predict(items[80:]) == got
    with pytest.raises(ValueError, match="DATE"):
        labelers[0].fit(items[:2], ['[[0,1,"DATE"]]', "[]"], ["PER", "ORG", "LOC"])
    # nothing but O in the seed: the smoothed rate, no spans
    lb = tt.make_labelers()[0].fit(items[:5], ["[]"] * 5, ["PER", "ORG", "LOC"])
    assert lb.predict(items[5:7]) == ["[]", "[]"]


def test_the_gazetteer_leaves_a_training_item_out_of_its_own_feature():
    from factory.span_labelers import WindowGazetteerTagger

    lb = WindowGazetteerTagger()
    lb.params = WindowGazetteerTagger.default_params()
    lb.gazetteer_ = {("acme",): {"ORG": 1}, ("new", "york"): {"LOC": 3}}
    assert lb._gaz_tags(["Acme", "in", "New", "York"]) == ["B-ORG", "", "B-LOC", "I-LOC"]
    # the item that alone taught "acme" does not see it in its own features
    assert lb._gaz_tags(["Acme", "in", "New", "York"], own={("acme",): {"ORG": 1}}) == ["", "", "B-LOC", "I-LOC"]


def test_people_and_models_fused_spans_are_an_answer_someone_gave():
    """A token-wise fusion can splice spans from three answers into a set nobody gave; the final label rests on
    answers in the ledger, so the fusion of people and models picks the given answer closest to it."""
    from factory import tasks

    tt = tasks.get("spans")
    p1, p2, p3 = '[[0,1,"PER"],[2,3,"LOC"],[4,5,"ORG"]]', '[[0,1,"PER"],[2,3,"ORG"],[4,5,"LOC"]]', \
        '[[0,1,"LOC"],[2,3,"LOC"],[4,5,"LOC"]]'
    ids = [f"s{i}" for i in range(6)]
    people = pd.DataFrame([(i, w, lab) for i in ids for w, lab in (("p1", p1), ("p2", p2), ("p3", p3))],
                          columns=["item_id", "worker_id", "label"])
    items = pd.DataFrame({"item_id": ids, "n_tokens": 6})
    models = pd.DataFrame(columns=["item_id", "worker_id", "label"])
    spliced = tt.fuse(people, ["PER", "LOC", "ORG"], items)
    assert set(spliced["label"]) - {p1, p2, p3}  # the plain fusion made a set nobody gave
    out = tt.fuse_with_models(people, models, ["PER", "LOC", "ORG"], items)
    assert set(out["label"]) <= {p1, p2, p3}
    assert (out["confidence"] <= spliced["confidence"].reindex(out.index)).all()


def test_a_redacted_item_records_the_tokens_of_its_redacted_text(root, fx, tmp_path):
    from factory.ingest import ingest
    from factory.pipeline import Factory
    from factory.spec import template

    spec = yaml.safe_load(template("ents", "spans"))
    spec["compliance"] = {"class": "important"}
    (root / "datasets" / "ents.yaml").write_text(yaml.safe_dump(spec))
    fx = Factory.at(root)
    pd.DataFrame({"text": ["Write to li.wei@example.com today .", "Paris is calm ."],
                  "tokens": ['["Write", "to", "li.wei@example.com", "today", "."]', "Paris is calm ."]}
                 ).to_csv(tmp_path / "p.csv", index=False)
    rep = ingest(tmp_path / "p.csv", fx.spec("ents"), fx.ledger)
    assert rep.redacted == 1
    items = fx.ledger.items("ents").set_index("source_row")
    toks = json.loads(items.at[2, "meta"])["tokens"]
    assert toks == tokenize(items.at[2, "text"]) and not any("example" in t for t in toks)
    assert json.loads(items.at[3, "meta"])["tokens"] == ["Paris", "is", "calm", "."]  # not redacted: the file's
