"""How a ``pairs`` item is stored: the two sides of a pair in one text (the ledger's ``text`` column).

An item of the ``pairs`` task type asks "are these two the same entity?".  Ingest writes its two sides as
one canonical JSON text ``{"left": SIDE, "right": SIDE}`` (compact, keys in that order, non-ASCII kept),
so the item id is a content hash of both sides like any other item's.  A SIDE is a text (two text columns
in the ingested file) or a record, an object of the record file's fields (two record ids into a records
file the spec names: ``task.records``), ``record_id`` first.

This module is free of models and of the ledger: the task type, the pair labelers, releases, Label Studio
and the workbench read pairs through it.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd

SIDES = ("left", "right")
#: Fields of a record side that are not part of its text: its id, and its price (a feature of its own).
ID_FIELD, PRICE_FIELD = "record_id", "price"
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def encode(left: Any, right: Any) -> str:
    """The stored text of a pair: canonical JSON of its two sides."""
    return json.dumps({"left": left, "right": right}, ensure_ascii=False, separators=(",", ":"))


def sides(text: str) -> tuple[Any, Any]:
    """The two sides of a stored pair; ValueError when ``text`` is not one (a classification item, say)."""
    try:
        obj = json.loads(text)
    except (TypeError, ValueError):
        obj = None
    if not isinstance(obj, dict) or set(obj) != set(SIDES):
        raise ValueError(f"not a stored pair (JSON with exactly 'left' and 'right'): {str(text)[:80]!r}")
    return obj["left"], obj["right"]


def side_text(side: Any) -> str:
    """What a model reads of one side: the text, or a record's fields (but its id and price) joined by spaces."""
    if isinstance(side, dict):
        return " ".join(str(v) for k, v in side.items()
                        if k not in (ID_FIELD, PRICE_FIELD) and v is not None and str(v).strip())
    return "" if side is None else str(side)


def side_price(side: Any) -> float:
    """A record side's price as a number (``$1,299.00`` -> 1299.0); NaN for a text side or no price."""
    if not isinstance(side, dict) or side.get(PRICE_FIELD) in (None, ""):
        return math.nan
    m = _NUMBER.search(str(side[PRICE_FIELD]))
    return float(m.group().replace(",", "")) if m else math.nan


def side_display(side: Any) -> str:
    """One side as a person (or a release's ``left``/``right`` column) reads it: a record as ``field: value``
    lines, a text as itself."""
    if isinstance(side, dict):
        return "\n".join(f"{k}: {v}" for k, v in side.items() if v is not None and str(v).strip())
    return "" if side is None else str(side)


def item_columns(text: str) -> dict[str, str]:
    """The pair's sides as release / Label Studio columns: ``{"left": ..., "right": ...}``."""
    left, right = sides(text)
    return {"left": side_display(left), "right": side_display(right)}


def labeler_inputs(items: pd.DataFrame) -> pd.DataFrame:
    """``item_id, text`` of stored pairs -> the pair labelers' columns (``left_text, right_text,
    left_price, right_price``); a frame that has them already passes unchanged."""
    if "left_text" in items.columns or "text" not in items.columns:
        return items
    both = [sides(t) for t in items["text"].tolist()]
    out = pd.DataFrame({
        "left_text": [side_text(a) for a, _ in both], "right_text": [side_text(b) for _, b in both],
        "left_price": np.array([side_price(a) for a, _ in both], dtype=float),
        "right_price": np.array([side_price(b) for _, b in both], dtype=float)}, index=items.index)
    if "item_id" in items.columns:
        out.insert(0, "item_id", items["item_id"].to_numpy())
    return out
