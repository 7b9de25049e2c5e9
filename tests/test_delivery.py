"""Delivery: token counting, metering a release file per client, the delivery ledger, version feeds."""
import json
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
import yaml

from conftest import news_spec
from factory.delivery import (atom_feed, count_tokens, delivery_log, json_feed, meter_release, record_delivery,
                              usage)
from factory.errors import FactoryError


def test_token_counters_by_hand():
    assert count_tokens("Hello 世界!") == 4  # Hello, 世, 界, !
    assert count_tokens("Hello 世界!", "whitespace") == 2
    assert count_tokens("a b\nc", "characters") == 3
    assert count_tokens("東京は晴れ today") == 6  # 東 京 は 晴 れ + today
    assert count_tokens("한국어 text") == 4
    assert count_tokens("") == 0 and count_tokens(None) == 0
    with pytest.raises(ValueError, match="unknown tokenizer"):
        count_tokens("x", "bpe")


def _release(root, version, items, date, prev=None, bump="first release"):
    d = root / "releases" / "news" / version
    (d / "data").mkdir(parents=True)
    df = pd.DataFrame({"item_id": [f"it_{i:020x}" for i in range(items)], "text": ["one two 三"] * items,
                       "label": ["tech"] * items, "split": ["train"] * (items - 1) + ["test"]})
    df.to_parquet(d / "labels.parquet", index=False)
    df[df.split == "test"].to_parquet(d / "data" / "test.parquet", index=False)
    m = {"dataset": "news", "version": version, "items": items, "date": date, "bump_reason": bump,
         "previous_version": prev, "changes": {"added": items, "removed": 0, "relabelled": 0},
         "quality": {"audit_accuracy": 0.97}}
    (d / "manifest.json").write_text(json.dumps(m))
    (d / "manifest-sha256.txt").write_text("0" * 64 + "  labels.parquet\n")
    return d


@pytest.fixture
def shop(root):
    from factory.pipeline import Factory

    _release(root, "1.0.0", 10, "2026-01-02")
    _release(root, "1.1.0", 15, "2026-02-03", prev="1.0.0", bump="minor: additions only")
    return Factory.at(root)


def test_meter_release_counts_items_bytes_tokens(shop, root):
    path = root / "releases" / "news" / "1.0.0"
    m = meter_release(path)
    assert m["items"] == 10 and m["tokens"] == 10 * (3 + 1)  # "one two 三" + label
    assert m["bytes"] == (path / "labels.parquet").stat().st_size
    t = meter_release(path, split="test")
    assert t["items"] == 1 and t["file"] == "data/test.parquet"
    assert meter_release(path, "manifest.json")["items"] == 0
    with pytest.raises(FactoryError, match="no such file"):
        meter_release(path, "nope.csv")


def test_delivery_ledger_meters_per_client_and_is_idempotent(shop, root):
    r1 = record_delivery(shop, "news", "1.0.0", "acme", delivery_id="req-1")
    again = record_delivery(shop, "news", "1.0.0", "acme", delivery_id="req-1")  # a retried download
    assert again["duplicate"] and again["items"] == r1["items"]
    record_delivery(shop, "news", "1.1.0", "acme", split="test")
    record_delivery(shop, "news", "1.1.0", "globex")
    u = usage(shop).set_index("client")
    assert u.loc["acme", "deliveries"] == 2 and u.loc["acme", "items"] == 10 + 1
    assert u.loc["acme", "tokens"] == 10 * 4 + 4 and u.loc["globex", "items"] == 15
    assert len(delivery_log(shop, client="globex")) == 1
    with pytest.raises(FactoryError, match="not found"):
        record_delivery(shop, "news", "9.0.0", "acme")
    with pytest.raises(FactoryError, match="client id"):
        record_delivery(shop, "news", "1.0.0", " ")


def test_tokenizer_comes_from_the_spec(shop, root):
    (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(news_spec(delivery={"tokenizer": "characters"})))
    r = record_delivery(shop, "news", "1.0.0", "acme")
    assert r["tokenizer"] == "characters" and r["tokens"] == 10 * (7 + 4)


def test_feeds_list_versions_newest_first(shop, root):
    f = json_feed(root / "releases", "news", "https://h/api")
    assert [i["_factory"]["version"] for i in f["items"]] == ["1.1.0", "1.0.0"]
    assert f["items"][0]["date_published"] == "2026-02-03T00:00:00Z" and f["items"][0]["url"].endswith("/1.1.0")
    xml = atom_feed(root / "releases", "news")
    tree = ET.fromstring(xml)
    ns = {"a": "http://www.w3.org/2005/Atom"}
    assert [e.find("a:title", ns).text for e in tree.findall("a:entry", ns)] == ["news 1.1.0", "news 1.0.0"]
    assert tree.find("a:updated", ns).text == "2026-02-03T00:00:00Z"
    assert atom_feed(root / "releases", "news") == xml  # deterministic
    assert json_feed(root / "releases", "other")["items"] == []
