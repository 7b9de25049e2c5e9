"""Merkle roots and inclusion proofs, event-hash verification, an item's story and a release's lineage."""
import hashlib
import json

import pandas as pd
import pytest

from factory.storage.ledger import Ledger
from factory.provenance import (EMPTY_ROOT, batch_roots, inclusion_proof, item_story, merkle_root,
                                verify_event_hashes, verify_inclusion)


def _h(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_merkle_root_hand_cases():
    a, b, c = _h(1), _h(2), _h(3)
    leaf = lambda h: hashlib.sha256(b"\x00" + bytes.fromhex(h)).digest()
    node = lambda x, y: hashlib.sha256(b"\x01" + x + y).digest()
    assert merkle_root([]) == EMPTY_ROOT
    assert merkle_root([a]) == leaf(a).hex()
    assert merkle_root([a, b]) == node(leaf(a), leaf(b)).hex()
    # RFC 6962: three leaves split 2 + 1
    assert merkle_root([a, b, c]) == node(node(leaf(a), leaf(b)), leaf(c)).hex()
    assert merkle_root([b, a]) != merkle_root([a, b])  # order matters


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_inclusion_proofs_verify_and_fail_when_tampered(n):
    hs = [_h(i) for i in range(n)]
    root = merkle_root(hs)
    for i in range(n):
        proof = inclusion_proof(hs, i)
        assert verify_inclusion(hs[i], i, n, proof, root)
        assert not verify_inclusion(_h(999), i, n, proof, root)
        if proof:
            bad = [proof[0][:-1] + ("0" if proof[0][-1] != "0" else "1")] + proof[1:]
            assert not verify_inclusion(hs[i], i, n, bad, root)


def _ledger(tmp_path):
    led = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    evs = [dict(batch_id="b1" if i < 4 else "b2", item_id=f"it{i % 3}", kind="model", actor="m@1",
                label="x", confidence=0.5 + i / 20, payload={"probs": {"x": 0.9}}, run_id="r1") for i in range(6)]
    led.append_events("d", evs)
    return led


def test_batch_roots_and_event_hashes_from_the_ledger(tmp_path):
    led = _ledger(tmp_path)
    ev = led.events("d")
    roots = batch_roots(ev)
    assert roots["b1"]["events"] == 4 and roots["b2"]["events"] == 2
    assert roots["b1"]["merkle_root"] == merkle_root(ev[ev.batch_id == "b1"]["hash"].tolist())
    assert verify_event_hashes(ev) == []
    # round trip through Parquet (what a release stores) keeps the hashes checkable
    p = tmp_path / "e.parquet"
    ev.to_parquet(p)
    back = pd.read_parquet(p)
    assert verify_event_hashes(back) == []
    back.loc[2, "label"] = "y"
    problems = verify_event_hashes(back)
    assert len(problems) == 1 and ev.loc[2, "event_id"] in problems[0]


def test_item_story_names_models_people_and_versions(tmp_path):
    led = _ledger(tmp_path)
    led.create_tasks([dict(task_id="t1", dataset="d", batch_id="b1", item_id="it0", kind="review",
                           reasons=["low_confidence: 0.55 < 0.8"], suggestion="x")])
    led.answer_task("t1", "y", "ann-1", ["x", "y"], spec_version="s1", guideline_version="g1")
    led.answer_task("t1", "x", "ann-2", ["x", "y"], spec_version="s1", guideline_version="g1", correct=True)
    led.append_events("d", [dict(batch_id="b1", item_id="it0", kind="arbitration", actor="exp-1", label="x",
                                 payload={"rationale": "the brand names match", "tasks": ["t1"]}, run_id="r2")])
    led.append_events("d", [dict(batch_id="b1", item_id="it0", kind="final", actor="final:calibrated", label="x",
                                 confidence=1.0, payload={"source": "calibrated", "events": []}, run_id="r2",
                                 spec_version="s1", guideline_version="g1")])

    class FX:
        ledger = led
    s = item_story(FX(), "d", "it0")
    assert s["final"] == {"label": "x", "source": "calibrated", "confidence": 1.0}
    assert s["annotators"] == ["ann-1", "ann-2", "exp-1"] and s["labelers"] == ["m@1"]
    kinds = [e["kind"] for e in s["events"]]
    assert kinds[:2] == ["model", "model"] and kinds[-4:] == ["human", "correction", "arbitration", "final"]
    arb = [e for e in s["events"] if e["kind"] == "arbitration"][0]
    assert arb["rationale"] == "the brand names match" and arb["settles_tasks"] == ["t1"]
    corr = [e for e in s["events"] if e["kind"] == "correction"][0]
    assert corr["supersedes"] == [e for e in s["events"] if e["kind"] == "human"][0]["event_id"]
    assert s["events"][0]["probabilities"] == {"x": 0.9}
    assert s["review_steps"][0]["reasons"] == ["low_confidence: 0.55 < 0.8"]
    assert s["dagster_runs"] == ["r1", "r2"] and s["guideline_versions"] == ["g1"]
    m = s["merkle"]
    assert verify_inclusion(m["leaf"], m["index"], m["batch_events"], m["proof"], m["batch_root_now"])
    json.dumps(s)  # JSON-ready


def test_factory_verify_names_the_first_broken_link(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from factory.cli import main
    from factory.pipeline import Factory

    monkeypatch.delenv("FACTORY_DATABASE_URL", raising=False)
    fx = Factory.at(tmp_path)
    fx.ledger.append_events("d", [dict(batch_id="b1", item_id=f"it{i}", kind="model", actor="m@1", label="x",
                                       confidence=0.9) for i in range(4)])
    ok = CliRunner().invoke(main, ["verify", "--dataset", "d", "--root", str(tmp_path)])
    assert ok.exit_code == 0 and "ok: 4 events" in ok.output
    before = batch_roots(fx.ledger.events("d"))["b1"]["merkle_root"]
    with fx.ledger.engine.begin() as c:
        c.exec_driver_sql("UPDATE label_events SET label='y' WHERE seq=2")
    bad = CliRunner().invoke(main, ["verify", "--dataset", "d", "--root", str(tmp_path)])
    assert bad.exit_code == 1 and "seq 2" in bad.output and "edited" in bad.output
    # the stored hashes did not change, so the batch root only exposes the edit through the recomputed hashes
    ev = fx.ledger.events("d")
    assert batch_roots(ev)["b1"]["merkle_root"] == before and len(verify_event_hashes(ev)) == 1
