"""``spans``: typed token spans per text (named entities, PII, arguments), the empty list included.

An item's text comes with a tokenisation recorded in the item (its ``tokens`` list), so offsets are stable.
An answer, a prediction or a gold label is a list of ``(start, end, type)`` over token indices, ``end``
exclusive, ``type`` one of the spec's classes; ``[]`` ("no entity") is a valid answer.  Spans may not
overlap (a BIO tagging cannot hold overlapping spans, and the fusion works on BIO tags).  Stored form:
the spans sorted by start as compact JSON, e.g. ``[[0,2,"PER"],[5,6,"LOC"]]``, so equal answers compare
equal.  Fusion is :func:`factory.engine.spans.aggregate_spans` (sequence-aware, with a posterior per span);
an item's confidence is its weakest decision: the smallest of its spans' posteriors and of its
non-entity tokens' ``O`` probabilities.
"""
from __future__ import annotations

import json
import math
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd

from factory.engine.spans import aggregate_spans, bio_spans
from factory.quality import krippendorff_alpha_nominal
from factory.tasks.base import AnswerError


def _w(where: str, msg: str) -> str:
    return f"{where}: {msg}" if where else msg


class Spans:
    name: ClassVar[str] = "spans"
    pipeline_ready: ClassVar[bool] = False  # span labelers, routing and the token widget are not built yet
    widget: ClassVar[str] = "tokens"
    shortcuts: ClassVar[str] = ("arrows move, shift+arrows extend the selection, digit 1-9 gives it that type, "
                                "Delete removes the span under the cursor, Enter submits")

    def spec_errors(self, classes: Sequence[str]) -> list[str]:
        bad = [c for c in classes if not str(c) or str(c) in ("O",) or str(c).startswith(("B-", "I-"))]
        return [f"span type '{c}' is reserved for BIO tags; name it differently" for c in bad] + (
            [] if classes else ["spans need at least one span type"])

    def parse_answer(self, value: Any, classes: Sequence[str], where: str = "", item: dict | None = None) -> str:
        names = [str(c) for c in classes]
        n_tokens = None if item is None or item.get("n_tokens") is None else int(item["n_tokens"])
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else []
            except json.JSONDecodeError as e:
                raise AnswerError(_w(where, f"a spans answer is a JSON list of [start, end, type]: {e.msg}")) from None
        if value is None or not isinstance(value, (list, tuple)):
            raise AnswerError(_w(where, "a spans answer is a list of [start, end, type] ([] for no entity)"))
        spans = []
        for k, sp in enumerate(value):
            if isinstance(sp, dict):
                sp = (sp.get("start"), sp.get("end"), sp.get("type"))
            if not isinstance(sp, (list, tuple)) or len(sp) != 3:
                raise AnswerError(_w(where, f"span {k}: expected [start, end, type], got {sp!r}"))
            s, e, t = sp
            if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in (s, e)):
                raise AnswerError(_w(where, f"span {k}: start and end are token indices, got {s!r}, {e!r}"))
            if str(t) not in names:
                raise AnswerError(_w(where, f"span {k}: type '{t}' is not in the schema; use one of {names}"))
            if not 0 <= s < e or (n_tokens is not None and e > n_tokens):
                bound = f" (the item has {n_tokens} tokens)" if n_tokens is not None else ""
                raise AnswerError(_w(where, f"span {k}: [{s}, {e}) is not a span of tokens{bound}"))
            spans.append((int(s), int(e), str(t)))
        spans.sort()
        for (s1, e1, _), (s2, e2, _) in zip(spans, spans[1:]):
            if s2 < e1:
                raise AnswerError(_w(where, f"spans [{s1}, {e1}) and [{s2}, {e2}) overlap; spans may not overlap"))
        return json.dumps([list(sp) for sp in spans], separators=(",", ":"))

    def decode(self, stored: str) -> list[dict]:
        return [{"start": s, "end": e, "type": t} for s, e, t in json.loads(stored or "[]")]

    def to_bio(self, stored: str, n_tokens: int) -> list[str]:
        tags = ["O"] * n_tokens
        for s, e, t in json.loads(stored or "[]"):
            tags[s] = f"B-{t}"
            for i in range(s + 1, e):
                tags[i] = f"I-{t}"
        return tags

    def fuse(self, answers: pd.DataFrame, classes: Sequence[str], items: pd.DataFrame | None = None) -> pd.DataFrame:
        """`items` (``item_id, n_tokens``) is required: a sentence's length is not in its spans."""
        if items is None or "n_tokens" not in items:
            raise ValueError("spans fusion needs items with n_tokens (the recorded tokenisation)")
        n_tok = items.set_index("item_id")["n_tokens"].astype(int).to_dict()
        rows = [(a.item_id, a.worker_id, i, tag) for a in answers.itertuples(index=False)
                for i, tag in enumerate(self.to_bio(a.label, n_tok[a.item_id]))]
        bio = pd.DataFrame(rows, columns=["sentence_id", "worker_id", "token_index", "tag"])
        answered = set(answers["item_id"])
        toks = pd.DataFrame([(i, k) for i, n in n_tok.items() if i in answered for k in range(n)],
                            columns=["sentence_id", "token_index"])
        res = aggregate_spans(bio, tokens=toks, types=list(classes))
        out = {}
        spans_of = {s: g for s, g in res.spans.groupby("sentence_id")}
        for sid, g in res.tags.groupby("sentence_id"):
            g = g.sort_values("token_index")
            found = [(int(s), int(e) + 1, t) for s, e, t in bio_spans(g["tag"].tolist())]
            probs = list(spans_of[sid]["probability"]) if sid in spans_of else []
            o_probs = g.loc[g["tag"] == "O", "probability"].tolist()
            conf = float(min(probs + o_probs)) if probs or o_probs else 1.0
            out[sid] = (json.dumps([list(sp) for sp in sorted(found)], separators=(",", ":")), conf)
        df = pd.DataFrame.from_dict(out, orient="index", columns=["label", "confidence"])
        df.index.name = "item_id"
        return df

    def agreement(self, answers: pd.DataFrame, classes: Sequence[str], items: pd.DataFrame | None = None) -> dict:
        """Token-level Krippendorff alpha over BIO tags (needs `items` with n_tokens) and pairwise strict span F1."""
        per_item = {i: g for i, g in answers.groupby("item_id") if g["worker_id"].nunique() >= 2}
        f1s = []
        for g in per_item.values():
            sets = [set(map(tuple, json.loads(s))) for s in g["label"]]
            for i in range(len(sets)):
                for j in range(i + 1, len(sets)):
                    a, b = sets[i], sets[j]
                    f1s.append(1.0 if not a and not b else 2 * len(a & b) / (len(a) + len(b)))
        alpha = math.nan
        if items is not None and per_item:
            n_tok = items.set_index("item_id")["n_tokens"].astype(int).to_dict()
            long = [(f"{i}:{k}", w, tag) for i, g in per_item.items() for w, lab in zip(g["worker_id"], g["label"])
                    for k, tag in enumerate(self.to_bio(lab, n_tok[i]))]
            alpha = krippendorff_alpha_nominal(pd.DataFrame(long, columns=["item_id", "worker_id", "label"]))
        return {"token_krippendorff_alpha": alpha, "mean_pairwise_span_f1": float(np.mean(f1s)) if f1s else math.nan,
                "items_with_two_or_more": len(per_item)}

    def expectations(self, classes: Sequence[str], column: str = "label") -> list[dict]:
        import re

        one = "|".join(re.escape(json.dumps(str(c))) for c in classes)
        span = rf"\[\d+,\d+,(?:{one})\]"
        return [{"name": "label_present", "type": "expect_column_values_to_not_be_null", "kwargs": {"column": column},
                 "blocking": True, "description": "every item has its spans (an empty list is an answer)"},
                {"name": "spans_well_formed", "type": "expect_column_values_to_match_regex",
                 "kwargs": {"column": column, "regex": rf"^\[(?:{span}(?:,{span})*)?\]$"}, "blocking": True,
                 "description": "every label is a JSON list of [start, end, type] with types of the spec"}]

    def hf_feature(self, classes: Sequence[str]) -> dict:
        return {"sequence": {"struct": [{"name": "start", "dtype": "int64"}, {"name": "end", "dtype": "int64"},
                                        {"name": "type", "dtype": {"class_label": {
                                            "names": {i: str(c) for i, c in enumerate(classes)}}}}]}}

    def croissant_field(self, classes: Sequence[str]) -> dict:
        return {"repeated": True, "description": "Spans [start, end) over the item's tokens, each with a type "
                                                 "from the classes record set."}

    def labelstudio_config(self, classes: Sequence[str], from_name: str, to_name: str) -> str:
        from xml.sax.saxutils import quoteattr

        labels = "\n".join(f"    <Label value={quoteattr(str(c))}/>" for c in classes)
        return f'  <Labels name="{from_name}" toName="{to_name}">\n{labels}\n  </Labels>\n'

    def to_labelstudio(self, stored: str, from_name: str, to_name: str) -> list[dict]:
        # token offsets travel in the result's meta (Label Studio's own offsets are characters of the text)
        return [{"from_name": from_name, "to_name": to_name, "type": "labels",
                 "value": {"labels": [sp["type"]]}, "meta": {"tokens": [sp["start"], sp["end"]]}}
                for sp in self.decode(stored)]

    def from_labelstudio(self, results: list[dict], classes: Sequence[str], where: str = "") -> str:
        spans = []
        for k, r in enumerate(r for r in results if r.get("type") == "labels"):
            tok = (r.get("meta") or {}).get("tokens")
            labels = r.get("value", {}).get("labels", [])
            if not tok or len(labels) != 1:
                raise AnswerError(_w(where, f"labels result {k}: needs one label and its token offsets"))
            spans.append([tok[0], tok[1], labels[0]])
        return self.parse_answer(spans, classes, where)
