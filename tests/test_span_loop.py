"""factory.span_loop.span_round: one round of the span people-in-the-loop on a synthetic crowd, and the
replay benchmark's folder dispatch (no shared data is read)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.span_replay import SpanCrowd, is_span_folder, strict_f1
from factory.span_loop import SpanLoopSettings, span_round
from factory.spec import parse_spec

TYPES = ("LOC", "PER")


def _crowd(seed: int = 0, n: int = 60, people: int = 3, flip: float = 0.15) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "O"] if i % 2 else ["O"] * 6
        for w in range(people):
            for t, tag in enumerate(tags):
                if rng.random() < flip:
                    tag = "B-LOC" if tag == "O" else "O"
                rows.append({"sentence_id": f"s{i:03d}", "worker_id": f"w{w}", "token_index": t, "tag": tag})
    return pd.DataFrame(rows)


def _settings(**kw) -> SpanLoopSettings:
    return SpanLoopSettings(target=0.95, types=TYPES, max_answers=kw.pop("max_answers", 5), **kw)


def test_from_spec_refuses_a_task_that_is_not_spans():
    spec = parse_spec({"name": "x", "description": "x", "license": "x", "guideline": {"version": "1"},
                       "classes": [{"name": "a", "definition": "a"}, {"name": "b", "definition": "b"}]})
    with pytest.raises(ValueError, match="not 'spans'"):
        SpanLoopSettings.from_spec(spec)


def test_a_round_asks_within_the_budget_in_priority_order():
    ans = _crowd()
    res = span_round(ans, _settings(), budget_left=7)
    r = res.routing
    assert len(r) == 60 and int(r["ask"].sum()) == 7
    routed = r[r["reason"] != ""]
    assert len(routed) > 7  # a noisy crowd: more sentences need a person than the budget buys
    assert r.loc[r["ask"], "priority"].min() >= routed.loc[~routed["ask"], "priority"].max()
    assert res.calibration.source == "held_out"
    assert not res.stopped


def test_the_loop_stops_when_every_routed_sentence_is_at_its_cap():
    ans = _crowd()
    res = span_round(ans, _settings(max_answers=3), budget_left=100)
    assert res.routing["ask"].sum() == 0 and res.stopped
    assert "cap" in res.stop_reason
    per = pd.Series(3, index=sorted(ans["sentence_id"].unique()))
    per.iloc[0] = 4
    res2 = span_round(ans, _settings(max_answers=5), budget_left=100, max_answers_per_sentence=per)
    assert set(res2.routing.loc[res2.routing["ask"], "sentence_id"]) <= {per.index[0]}


def test_replay_crowd_reveals_one_answer_at_a_time_up_to_the_file():
    ans = _crowd(n=4, people=2)
    crowd = SpanCrowd(ans, seed=0)
    assert crowd.total == 8 and crowd.used == 0
    assert crowd.reveal(["s000", "s001"]) == 2
    assert crowd.human_answers().groupby("sentence_id")["worker_id"].nunique().to_dict() == {"s000": 1, "s001": 1}
    crowd.reveal(["s000"])
    assert crowd.reveal(["s000"]) == 0  # the file holds two answers for it
    assert crowd.used == 3


def test_strict_f1_counts_exact_spans():
    spans = pd.DataFrame({"sentence_id": ["a", "a"], "start": [0, 3], "end": [1, 3], "type": ["PER", "LOC"]})
    truth = pd.Series({"a": frozenset({(0, 1, "PER"), (3, 4, "LOC")})})
    assert strict_f1(spans, truth, ["a"]) == {"strict_f1": 0.5, "precision": 0.5, "recall": 0.5}


def test_is_span_folder(tmp_path):
    (tmp_path / "ner").mkdir()
    (tmp_path / "ner" / "answers.csv").write_text("sentence_id,worker_id,token_index,tag\n")
    (tmp_path / "product").mkdir()
    (tmp_path / "product" / "answers.csv").write_text("item_id,worker_id,label\n")
    assert is_span_folder(tmp_path) and is_span_folder(tmp_path / "ner")
    assert not is_span_folder(tmp_path / "product")


def test_bench_replay_on_a_span_folder_runs_the_span_replay(cli, tmp_path, monkeypatch):
    import benchmarks.replay
    import benchmarks.span_replay

    called = {}

    def fake_run(out, data=None, **opts):
        called["data"] = data
        return {"share_reaching_target": {"route": {"all": [0.4], "part1_held_back": [0.45]}},
                "target_all_answers": {"all": {"strict_f1": 0.7}, "part1_held_back": {"strict_f1": 0.7}}}

    def must_not_run(*a, **k):
        raise AssertionError("the classification replay ran on a span folder")

    monkeypatch.setattr(benchmarks.span_replay, "run", fake_run)
    monkeypatch.setattr(benchmarks.replay, "run", must_not_run)
    ner = tmp_path / "crowd" / "ner"
    ner.mkdir(parents=True)
    (ner / "answers.csv").write_text("sentence_id,worker_id,token_index,tag\n")
    cli("bench", "replay", "--data", ner, "--out", tmp_path / "out")
    assert called["data"] == ner
