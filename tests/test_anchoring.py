"""The ledger anchored outside itself: releases publish the chain head they were cut from, checkpoints publish it on
demand (Ed25519-signed when a key is configured), and `factory verify` compares the ledger with all of them.
Each tamper below passes the plain chain walk, because the attacker rewrote the chain consistently."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from conftest import news_spec
from factory.anchoring import verify_ledger, write_checkpoint
from factory.cli import main
from factory.datasets import load_bbc_news
from factory.ingest import item_id_for
from factory.storage.ledger import GENESIS, chain_heads, event_hash, label_events
from factory.pipeline import Factory
from factory.release import release, verify_release, write_listings
from factory.signing import generate_key
from test_release import run_batch


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A factory root with one finished batch and release 1.0.0 (copied afresh for every test)."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("FACTORY_DATABASE_URL", "FACTORY_SIGNING_KEY", "FACTORY_SIGNING_KEY_FILE", "FACTORY_VERIFY_KEY",
                    "FACTORY_VERIFY_KEY_FILE"):
            mp.delenv(var, raising=False)
        base = tmp_path_factory.mktemp("anchor")
        root = base / "factory"
        (root / "datasets").mkdir(parents=True)
        (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(news_spec(
            seed_size=12, quality={"confidence_threshold": 0.8, "audit_rate": 0.5, "max_quarantine_rate": 0.5,
                     "min_accuracy": 0.5})))
        df = load_bbc_news(limit_per_class=8, seed=4).reset_index(drop=True)
        truth = {item_id_for(t): lab for t, lab in zip(df["text"], df["label"])}
        run_batch(Factory.at(root), df["text"][:32], truth, base / "b1.csv")
        release(Factory.at(root), "news")
        yield root


@pytest.fixture
def fx(pristine, tmp_path, monkeypatch):
    for var in ("FACTORY_DATABASE_URL", "FACTORY_SIGNING_KEY", "FACTORY_SIGNING_KEY_FILE", "FACTORY_VERIFY_KEY",
                "FACTORY_VERIFY_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "factory"
    shutil.copytree(pristine, root)
    f = Factory.at(root)
    with f.ledger.engine.begin() as c:  # the copy's release rows point at the copy's folders
        c.exec_driver_sql("UPDATE releases SET path = replace(path, ?, ?)", (str(pristine), str(root)))
    return f


def rewrite_chain(fx, dataset: str, edit=None, drop_last: bool = False) -> None:
    """What an attacker with write access to the database does: change events, then recompute every hash
    and link after the change in each chain and fix the chain heads, so that the plain chain walk passes.
    `drop_last` deletes the last event of the root chain (the pipeline's final labels)."""
    with fx.ledger.engine.begin() as c:
        rows = [dict(r) for r in c.execute(sa.select(label_events).where(label_events.c.dataset == dataset)
                                           .order_by(label_events.c.seq)).mappings()]
        if drop_last:
            last = [r for r in rows if r["chain"] == ""][-1]
            c.execute(label_events.delete().where(label_events.c.seq == last["seq"]))
            rows = [r for r in rows if r["seq"] != last["seq"]]
        prev: dict[str, str] = {}
        for r in rows:
            if edit:
                edit(r)
            r["prev_hash"] = prev.get(r["chain"], GENESIS)
            r["hash"] = prev[r["chain"]] = event_hash(r["prev_hash"], r)
            c.execute(label_events.update().where(label_events.c.seq == r["seq"]).values(
                label=r["label"], prev_hash=r["prev_hash"], hash=r["hash"]))
        for chain, h in prev.items():
            seq = max(r["seq"] for r in rows if r["chain"] == chain)
            c.execute(chain_heads.update().where(chain_heads.c.dataset == dataset, chain_heads.c.chain == chain)
                      .values(seq=seq, hash=h))
    assert fx.ledger.verify_chain(dataset)["ok"]  # the walk alone sees nothing


def root_events(fx, dataset: str = "news") -> int:
    """How many events the root chain holds (the position a release's anchor publishes for it)."""
    return fx.ledger.chain_anchor(dataset)["chains"][""]["events"]


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_release_publishes_the_head_it_was_cut_from(fx):
    path = Path(fx.ledger.releases("news").iloc[0]["path"])
    anchor = json.loads((path / "provenance" / "anchor.json").read_text())
    now = fx.ledger.chain_anchor("news")
    assert (anchor["events"], anchor["head"]) == (now["events"], now["head"]) and anchor["release"] == "1.0.0"
    assert "signature" not in anchor  # no key configured
    res = verify_ledger(fx, "news")
    assert res["ok"] and res["anchors"] == 1, res["problems"]
    out = cli("verify", "--dataset", "news", "--root", fx.paths.root)
    assert out.exit_code == 0 and "1 published anchor(s) hold" in out.output


def test_a_rewritten_chain_is_caught_by_the_release_anchor(fx):
    first = fx.ledger.events("news").iloc[0]

    def edit(r):
        if r["event_id"] == first["event_id"]:
            r["label"] = "tech" if r["label"] != "tech" else "sports"

    rewrite_chain(fx, "news", edit)
    res = verify_ledger(fx, "news")
    assert not res["ok"]
    n = root_events(fx)
    assert any(p.startswith(f"event {n} ") and "rewritten" in p for p in res["problems"]), res["problems"]
    assert any(f"event {first['event_id']}" in p and "another hash in the ledger" in p for p in res["problems"])
    out = cli("verify", "--dataset", "news", "--root", fx.paths.root)
    assert out.exit_code == 1 and "rewritten" in out.output and "Traceback" not in out.output


def test_the_last_event_deleted_and_the_head_fixed(fx):
    n = root_events(fx)
    rewrite_chain(fx, "news", drop_last=True)
    res = verify_ledger(fx, "news")
    assert not res["ok"]
    assert any(f"published for event {n}, but the ledger has only {n - 1} events" in p for p in res["problems"])
    assert any("is no longer in the ledger" in p for p in res["problems"])


def test_events_after_the_last_release_are_anchored_by_a_checkpoint(fx):
    fx.ledger.append_events("news", [dict(batch_id="b-late", item_id=f"late{i}", kind="model", actor="m@1",
                                          label="tech", confidence=0.9) for i in range(3)])
    rec = write_checkpoint(fx, "news")
    assert rec["events"] == fx.ledger.chain_anchor("news")["events"] and "signature" not in rec
    assert verify_ledger(fx, "news")["ok"]

    def edit(r):
        if r["item_id"] == "late2":
            r["label"] = "sports"

    rewrite_chain(fx, "news", edit)  # after the release's cut: only the checkpoint knows the old head
    res = verify_ledger(fx, "news")
    assert not res["ok"] and any(p.startswith(f"event {rec['chains'][''][0]} ") for p in res["problems"]), res["problems"]


def test_signed_checkpoints_verify_with_the_public_key_and_catch_forgery(fx, tmp_path, monkeypatch):
    key = tmp_path / "keys" / "factory.pem"
    key.parent.mkdir()
    public = generate_key(key)
    assert oct(key.stat().st_mode & 0o777) == "0o600" and "PUBLIC KEY" in public
    with pytest.raises(Exception, match="never overwritten"):
        generate_key(key)
    monkeypatch.setenv("FACTORY_SIGNING_KEY_FILE", str(key))
    out = cli("checkpoint", "--dataset", "news", "--root", fx.paths.root)
    assert out.exit_code == 0 and "signed with key" in out.output, out.output
    # the verifier holds only the public key
    monkeypatch.delenv("FACTORY_SIGNING_KEY_FILE")
    (tmp_path / "pub.pem").write_text(public)
    monkeypatch.setenv("FACTORY_VERIFY_KEY_FILE", str(tmp_path / "pub.pem"))
    res = verify_ledger(fx, "news")
    assert res["ok"] and res["anchors_signed"] == 1, res["problems"]
    # a forged checkpoint (the attacker re-points it at the rewritten chain) fails its signature
    rewrite_chain(fx, "news", lambda r: r.update(label="tech") if r["kind"] == "final" else None)
    cp = fx.paths.root / "checkpoints" / "news.jsonl"
    rec = json.loads(cp.read_text().splitlines()[0])
    rec["head"] = fx.ledger.chain_anchor("news")["head"]
    cp.write_text(json.dumps(rec) + "\n")
    res = verify_ledger(fx, "news")
    assert any("news.jsonl line 1: signature does not match" in p for p in res["problems"]), res["problems"]
    # an unsigned checkpoint is not accepted once a key is configured
    rec.pop("signature")
    cp.write_text(json.dumps(rec) + "\n")
    assert any("not signed while a key is configured" in p for p in verify_ledger(fx, "news")["problems"])
    # another key's signature is named as such
    other = tmp_path / "other.pem"
    generate_key(other)
    monkeypatch.setenv("FACTORY_SIGNING_KEY_FILE", str(other))
    monkeypatch.delenv("FACTORY_VERIFY_KEY_FILE")
    cp.unlink()
    write_checkpoint(fx, "news")
    monkeypatch.setenv("FACTORY_VERIFY_KEY_FILE", str(tmp_path / "pub.pem"))
    assert any("not the configured key" in p for p in verify_ledger(fx, "news")["problems"])


def test_a_checkpoint_kept_elsewhere_is_checked_too(fx, tmp_path):
    away = tmp_path / "offsite" / "news.jsonl"
    out = cli("checkpoint", "--dataset", "news", "--out", away, "--root", fx.paths.root)
    assert out.exit_code == 0 and "UNSIGNED" in out.output
    rewrite_chain(fx, "news", drop_last=True)
    (fx.paths.root / "releases" / "news").rename(tmp_path / "hidden")  # the attacker also hides the release
    assert verify_ledger(fx, "news")["ok"]  # nothing left here to compare with ...
    out = cli("verify", "--dataset", "news", "--checkpoints", away, "--root", fx.paths.root)
    assert out.exit_code == 1 and "events at the end were deleted" in out.output  # ... but the copy remembers


def test_a_release_folder_rewritten_behind_recomputed_listings_differs_from_the_ledger(fx):
    path = Path(fx.ledger.releases("news").iloc[0]["path"])
    m = json.loads((path / "manifest.json").read_text())
    m["license"] = "proprietary"
    (path / "manifest.json").write_text(json.dumps(m))
    write_listings(path)
    assert verify_release(path, run_standard=False)["ok"]  # the folder alone is consistent
    res = verify_ledger(fx, "news")
    assert any("release 1.0.0: manifest.json differs from the one the ledger recorded" in p for p in res["problems"])


def test_a_signed_release_anchor_is_checked_by_verify_release(pristine, tmp_path, monkeypatch):
    root = tmp_path / "factory"
    shutil.copytree(pristine, root)
    shutil.rmtree(root / "releases")
    f = Factory.at(root)
    with f.ledger.engine.begin() as c:
        c.exec_driver_sql("DELETE FROM releases")
    key = tmp_path / "k.pem"
    generate_key(key)
    monkeypatch.setenv("FACTORY_SIGNING_KEY_FILE", str(key))
    path = Path(release(f, "news")["path"])
    anchor = json.loads((path / "provenance" / "anchor.json").read_text())
    assert anchor["signature"] and anchor["key_id"]
    res = verify_release(path, run_standard=False)
    assert res["ok"] and res["summary"]["anchor"]["signature"] == "valid", res["problems"]
    anchor["events"] += 1
    (path / "provenance" / "anchor.json").write_text(json.dumps(anchor))
    write_listings(path)
    assert any(p.startswith("provenance/anchor.json: signature does not match")
               for p in verify_release(path, run_standard=False)["problems"])


def test_a_bad_key_is_a_clear_error(fx, monkeypatch, tmp_path):
    monkeypatch.setenv("FACTORY_SIGNING_KEY", "not a key")
    out = cli("checkpoint", "--dataset", "news", "--root", fx.paths.root)
    assert out.exit_code == 2 and "FACTORY_SIGNING_KEY: not an Ed25519 private key" in out.output
    monkeypatch.delenv("FACTORY_SIGNING_KEY")
    monkeypatch.setenv("FACTORY_SIGNING_KEY_FILE", str(tmp_path / "nowhere.pem"))
    out = cli("checkpoint", "--dataset", "news", "--root", fx.paths.root)
    assert out.exit_code == 2 and "cannot read the key file" in out.output and "Traceback" not in out.output
    assert cli("checkpoint", "--dataset", "empty", "--root", fx.paths.root).exit_code == 2


def test_the_audit_page_checks_the_published_anchors_too(fx):
    from fastapi.testclient import TestClient

    from factory.users import UserStore
    from factory.web import create_app

    token = UserStore.for_ledger(fx.ledger).add("aud-1", "auditor")
    c = TestClient(create_app(fx.paths.root))
    csrf = c.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    c.post("/login", data={"name": "aud-1", "token": token, "csrf_token": csrf})
    item = fx.ledger.events("news").iloc[0]["item_id"]
    page = c.get("/audit", params={"item": item, "dataset": "news", "verify": "true"}).text
    assert "intact" in page and "1 published anchor(s) hold" in page
    rewrite_chain(fx, "news", drop_last=True)
    page = c.get("/audit", params={"item": item, "dataset": "news", "verify": "true"}).text
    assert "BROKEN" in page and "events at the end were deleted" in page
