"""The workbench's pair widget, in a real browser (Playwright + Debian's Chromium): the two sides of a pair
side by side, digits choose the class, Enter submits."""
from __future__ import annotations

import pandas as pd
import yaml

from tests.test_web_browser import annotator_queue


def _factory(root):
    from factory.ingest import ingest
    from factory.pipeline import Factory
    from factory.spec import template

    (root / "datasets").mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load(template("match", "pairs"))  # classes: same, different; columns left, right
    (root / "datasets" / "match.yaml").write_text(yaml.safe_dump(spec))
    fx = Factory.at(root)
    pd.DataFrame({"left": ["Sony WH-1000XM4 headphones", "Canon EOS 90D body"],
                  "right": ["sony wh1000xm4 wireless", "Nikon D7500 body"]}).to_csv(root / "b.csv", index=False)
    batch = ingest(root / "b.csv", fx.spec("match"), fx.ledger).batch_id
    items = fx.ledger.items("match", batch_id=batch).sort_values("source_row")
    tasks = [dict(task_id=f"t{i}", dataset="match", batch_id=batch, item_id=r.item_id, kind="review",
                  reasons=["low_confidence"], suggestion=None, created_at=f"2026-01-01T00:00:0{i}")
             for i, r in enumerate(items.itertuples())]
    fx.ledger.create_tasks(tasks)
    return fx, tasks


def test_pair_widget_shows_both_sides_and_digits_choose(tmp_path, monkeypatch):
    monkeypatch.delenv("FACTORY_DATABASE_URL", raising=False)
    fx, tasks = _factory(tmp_path / "factory")
    with annotator_queue(fx) as (page, shown):
        shown("t0")
        sides = page.locator("#item-text .pair-side")
        assert sides.count() == 2
        assert "Sony WH-1000XM4 headphones" in sides.nth(0).inner_text()
        assert "sony wh1000xm4 wireless" in sides.nth(1).inner_text()
        assert "{" not in page.inner_text("#item-text")  # the stored JSON is not shown raw
        page.keyboard.press("1")  # same
        page.keyboard.press("Enter")
        shown("t1")
        assert "Nikon D7500 body" in page.locator("#item-text .pair-side").nth(1).inner_text()
        page.keyboard.press("2")  # different
        page.keyboard.press("Enter")
        page.wait_for_selector("#empty:not([hidden])", timeout=10_000)
    ev = fx.ledger.events("match", kind="human").set_index("task_id")
    assert ev.loc["t0", "label"] == "same"
    assert ev.loc["t1", "label"] == "different"


def test_the_task_payload_names_the_pair_widget(tmp_path):
    from factory.web.data import SpecCache, task_payload

    fx, tasks = _factory(tmp_path / "factory")
    out = task_payload(fx, SpecCache(fx), dict(tasks[0], lease_until=None))
    assert out["widget"] == "pair" and "Enter" in out["shortcuts"]
