"""Personal information: redacted at ingest (a provenance event), raw text guarded, residual scan, statement."""
import json

import pandas as pd
import pytest
import yaml

from assets.batch import _residual_outcome
from factory.compliance import AccessDenied, raw_payload, statement
from factory.ingest import ingest, item_id_for
from factory.spec import parse_spec
from tests.conftest import news_spec

RAW = ["Call me on 13812345678 or write to li.wei@example.com about the merger.",
       "The striker scored twice in the cup final."]


@pytest.fixture
def sensitive(root, fx):
    (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(news_spec(compliance={"class": "important"})))
    return type(fx).at(root)


def test_items_are_redacted_before_anyone_sees_them(sensitive, tmp_path):
    fx = sensitive
    p = tmp_path / "b.csv"
    pd.DataFrame({"text": RAW}).to_csv(p, index=False)
    rep = ingest(p, fx.spec("news"), fx.ledger)
    assert rep.redacted == 1
    items = fx.ledger.items("news", batch_id=rep.batch_id).set_index("item_id")
    pii_id = item_id_for(RAW[0])  # the id is the raw content's hash: stable whatever the redaction
    seen = items.loc[pii_id, "text"]
    assert "13812345678" not in seen and "li.wei@example.com" not in seen and "[EMAIL]" in seen
    assert items.loc[item_id_for(RAW[1]), "text"] == RAW[1]
    ev = fx.ledger.events("news", kind="redaction")
    assert list(ev["item_id"]) == [pii_id] and ev.iloc[0]["actor"].startswith("factory.pii")
    payload = ev.iloc[0]["payload"]
    assert "example.com" not in payload and "138123" not in payload  # categories and counts, never values
    assert json.loads(payload)["categories"]["email"] == 1
    assert raw_payload(fx, "news", pii_id, "operator") == RAW[0]
    with pytest.raises(AccessDenied, match="role 'annotator' may not read raw payloads"):
        raw_payload(fx, "news", pii_id, "annotator")
    assert fx.ledger.verify_chain("news")["ok"]


def test_residual_scan_is_blocking_above_general(sensitive, fx):
    spec = sensitive.spec("news")
    leaked = pd.DataFrame({"item_id": ["a", "b"], "text": ["mail bob@example.org now", "nothing here"]})
    o = _residual_outcome(spec, leaked)
    assert not o.success and o.blocking and o.unexpected_items == ["a"]
    assert _residual_outcome(spec, leaked.iloc[1:]).success
    general = parse_spec(news_spec())  # grade general with nothing declared
    assert _residual_outcome(general, leaked).success and not _residual_outcome(general, leaked).blocking


def test_statement_says_what_was_done(sensitive):
    s = statement(sensitive.spec("news"), 10, 3, {"unexpected_count": 0})
    assert s["items_redacted"] == 3 and "email" in s["categories_scanned"] and "operator only" in s["statement"]
