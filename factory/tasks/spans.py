"""``spans``: typed token spans per text (named entities, PII, arguments), the empty list included.

An item's text comes with a tokenisation recorded in the item (its ``tokens`` list), so offsets are stable.
An answer, a prediction or a gold label is a list of ``(start, end, type)`` over token indices, ``end``
exclusive, ``type`` one of the spec's classes; ``[]`` ("no entity") is a valid answer.  Spans may not
overlap (a BIO tagging cannot hold overlapping spans, and the fusion works on BIO tags).  Stored form:
the spans sorted by start as compact JSON, e.g. ``[[0,2,"PER"],[5,6,"LOC"]]``, so equal answers compare
equal.  Fusion is :func:`factory.engine.spans.aggregate_spans` (sequence-aware, with a posterior per span);
an item's confidence is its weakest decision: the smallest of its spans' posteriors and of its
non-entity tokens' ``O`` probabilities.

In the batch pipeline (mode ``prelabel-human``): ingest records the tokens (``item_fields``), the taggers of
:mod:`factory.span_labelers` pre-annotate, their spans are fused with each tagger an annotator and routed by
:func:`factory.engine.span_routing.route_sentences` (``pool_models``), people correct the shown fused spans,
and people's spans are fused with the models' pooled ones (``fuse_with_models``).  Releases add ``tokens`` and
a ``bio`` view (``release_columns``).
"""
from __future__ import annotations

import json
import math
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd

from factory.engine.span_metrics import span_quality
from factory.engine.span_routing import route_sentences
from factory.engine.spans import SpanAggregation, aggregate_spans, bio_spans
from factory.quality import krippendorff_alpha_nominal
from factory.span_labelers import cross_val_spans, make_span_labelers, span_suite_version, tokenize
from factory.tasks.base import AnswerError, TaskTypeBase


def span_f1(a: str, b: str) -> float:
    """Strict span F1 of two stored answers (1.0 when both are empty)."""
    x, y = set(map(tuple, json.loads(a or "[]"))), set(map(tuple, json.loads(b or "[]")))
    return 1.0 if not x and not y else 2 * len(x & y) / (len(x) + len(y))


def _w(where: str, msg: str) -> str:
    return f"{where}: {msg}" if where else msg


class Spans(TaskTypeBase):
    name: ClassVar[str] = "spans"
    pipeline_ready: ClassVar[bool] = True
    answer_shape: ClassVar[str] = "spans"
    modes: ClassVar[tuple[str, ...]] = ("prelabel-human",)  # models pre-annotate, people correct
    input_columns: ClassVar[tuple[str, ...]] = ("tokens",)  # an ingest file may carry its own tokenisation
    needs_item: ClassVar[bool] = True  # the answer door checks bounds against the item's n_tokens
    shows_prelabel: ClassVar[bool] = True  # a person corrects the fused spans rather than starting blank
    widget: ClassVar[str] = "tokens"
    shortcuts: ClassVar[str] = ("arrows move, shift+arrows extend the selection, digit 1-9 gives it that type, "
                                "Delete removes the span under the cursor, Enter submits")

    # -- items: the tokenisation recorded at ingest
    def item_fields(self, text: str, row: dict) -> dict:
        """What ingest records in an item's metadata: its ``tokens`` (the row's own ``tokens`` column, a JSON
        list or whitespace-separated text, else :func:`factory.span_labelers.tokenize` of the text).
        ValueError naming the cause for unusable tokens."""
        given = row.get("tokens")
        if given is None or (isinstance(given, float) and math.isnan(given)):
            toks = tokenize(text)
        elif isinstance(given, str):
            g = given.strip()
            if g.startswith("["):
                try:
                    toks = json.loads(g)
                except json.JSONDecodeError as e:
                    raise ValueError(f"tokens: not a JSON list of strings ({e.msg})") from None
            else:
                toks = g.split()
        else:
            toks = list(given)
        if not isinstance(toks, list) or not all(isinstance(t, str) and t.strip() for t in toks):
            raise ValueError("tokens: every token must be a non-empty string")
        if not toks:
            raise ValueError("tokens: the item has no tokens")
        return {"tokens": toks}

    def item_context(self, meta: dict | str | None) -> dict:
        """What answers are checked against: ``n_tokens`` of the recorded tokens."""
        meta = json.loads(meta) if isinstance(meta, str) else (meta or {})
        toks = meta.get("tokens")
        return {} if toks is None else {"n_tokens": len(toks)}

    def item_table(self, items: pd.DataFrame) -> pd.DataFrame:
        """``item_id, tokens, n_tokens`` of items with a ``meta`` column (the ledger's or raw_items')."""
        toks = [json.loads(m).get("tokens") if isinstance(m, str) else (m or {}).get("tokens") for m in items["meta"]]
        toks = [t if t is not None else tokenize(x) for t, x in zip(toks, items["text"])]
        return pd.DataFrame({"item_id": items["item_id"].to_numpy(), "tokens": toks,
                             "n_tokens": [len(t) for t in toks]})

    # -- batch pipeline hooks (see factory.tasks.base.BatchHooks)
    def labeler_input(self, items: pd.DataFrame) -> pd.DataFrame:
        """What the span labelers read: ``item_id, text, tokens``."""
        return items[["item_id", "text"]].reset_index(drop=True).assign(
            tokens=self.item_table(items)["tokens"].to_numpy())

    def make_labelers(self, seed: int = 0) -> list:
        return make_span_labelers(seed=seed)

    def labeler_suite(self) -> str:
        return span_suite_version()

    def predict_items(self, labeler, items: pd.DataFrame, classes: Sequence[str]) -> tuple:
        """A fitted span labeler on items: stored spans, confidence, per-type probabilities (items x types)."""
        return labeler.predict_spans(items)

    def decide(self, probs: Any, classes: Sequence[str]) -> tuple[Any, Any]:
        raise NotImplementedError("spans are decided per token by the labelers (predict_items), not per item")

    def bio_answers(self, answers: pd.DataFrame, items: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``item_id, worker_id, label`` answers as aggregate_spans' BIO rows, and its token table."""
        n_tok = items.set_index("item_id")["n_tokens"].astype(int).to_dict()
        rows = [(a.item_id, a.worker_id, i, tag) for a in answers.itertuples(index=False)
                for i, tag in enumerate(self.to_bio(a.label, n_tok[a.item_id]))]
        bio = pd.DataFrame(rows, columns=["sentence_id", "worker_id", "token_index", "tag"])
        answered = set(answers["item_id"])
        tk = items[items["item_id"].isin(answered)]
        if "tokens" in tk:
            toks = pd.DataFrame([(i, k, w) for i, t in zip(tk["item_id"], tk["tokens"]) for k, w in enumerate(t)],
                                columns=["sentence_id", "token_index", "token"])
        else:
            toks = pd.DataFrame([(i, k) for i, n in zip(tk["item_id"], tk["n_tokens"]) for k in range(int(n))],
                                columns=["sentence_id", "token_index"])
        return bio, toks

    def _fused_frame(self, res: SpanAggregation, classes: Sequence[str]) -> pd.DataFrame:
        out = {}
        spans_of = {s: g for s, g in res.spans.groupby("sentence_id")}
        for sid, g in res.tags.groupby("sentence_id"):
            g = g.sort_values("token_index")
            found = [(int(s), int(e) + 1, t) for s, e, t in bio_spans(g["tag"].tolist())]
            sp = spans_of.get(sid)
            probs = list(sp["probability"]) if sp is not None else []
            o_probs = g.loc[g["tag"] == "O", "probability"].tolist()
            conf = float(min(probs + o_probs)) if probs or o_probs else 1.0
            per_type = [float(sp.loc[sp["type"] == c, "probability"].max()) if sp is not None and (sp["type"] == c).any()
                        else 0.0 for c in classes]
            out[sid] = (json.dumps([list(x) for x in sorted(found)], separators=(",", ":")), conf, *per_type)
        df = pd.DataFrame.from_dict(out, orient="index", columns=["label", "confidence", *[f"prob_{c}" for c in classes]])
        df.index.name = "item_id"
        return df

    def pool_models(self, answers: pd.DataFrame, classes: Sequence[str], items: pd.DataFrame | None = None,
                    target: float = 0.95, budget: int | None = None) -> pd.DataFrame:
        """The labelers' spans (each labeler an annotator ``model:<name>``) fused by aggregate_spans, and each
        sentence routed by :func:`factory.engine.span_routing.route_sentences`: index item_id, ``label``,
        ``confidence`` (routing's probability that the sentence's span set is exactly right), ``raw_confidence``
        (the fusion's weakest decision), ``prob_<type>``, ``route_reason`` ("" = may be accepted), ``priority``."""
        if items is None:
            raise ValueError("spans fusion needs items with n_tokens (the recorded tokenisation)")
        a = answers.assign(worker_id=[w if str(w).startswith("model:") else f"model:{w}" for w in answers["worker_id"]])
        bio, toks = self.bio_answers(a[["item_id", "worker_id", "label"]], items)
        res = aggregate_spans(bio, tokens=toks, types=list(classes))
        fused = self._fused_frame(res, classes)
        r = route_sentences(res, answers=bio, target=target, budget=budget).set_index("sentence_id").reindex(fused.index)
        fused.insert(2, "raw_confidence", fused["confidence"].to_numpy())
        fused["confidence"] = r["confidence"].astype(float).to_numpy()
        fused["route_reason"] = r["reason"].fillna("").astype(str).to_numpy()
        fused["priority"] = r["priority"].astype(float).to_numpy()
        return fused

    def cross_val_answers(self, make, items: pd.DataFrame, labels: Sequence, classes: Sequence[str], folds: int,
                          seed: int) -> pd.DataFrame:
        """One tagger family's out-of-fold spans (:func:`factory.span_labelers.cross_val_spans` on the
        ``labeler_input`` items): a ``label`` column, one row per item in ``items``' order."""
        return pd.DataFrame({"label": cross_val_spans(make, items, list(labels), classes, folds=folds, seed=seed)})

    def fuse_with_models(self, people: pd.DataFrame, models: pd.DataFrame, classes: Sequence[str],
                         items: pd.DataFrame | None = None) -> pd.DataFrame:
        """People's spans and the models' pooled spans (one worker: taggers trained on the same seed err together,
        and as separate workers they outvote a person's correction) fused by aggregate_spans on the items people
        answered: index item_id, ``label``, ``confidence``, ``reason`` (span routing's reason why people and models
        have not settled the sentence, "" when they have; the models are the worker ``model:pooled``).

        The fused label is then the *given answer* closest to the fusion (strict span F1; people's answers first,
        the latest first, on ties): a token-wise fusion can splice a span set nobody gave, and a final label rests
        on answers in the ledger.  When it differs from the fusion, its confidence is scaled by that F1."""
        models = models.assign(worker_id=[w if str(w).startswith("model:") else f"model:{w}" for w in models["worker_id"]])
        both = pd.concat([people[["item_id", "worker_id", "label"]],
                          models.loc[models["item_id"].isin(people["item_id"]), ["item_id", "worker_id", "label"]]],
                         ignore_index=True)
        if items is None or "n_tokens" not in items:
            raise ValueError("spans fusion needs items with n_tokens (the recorded tokenisation)")
        bio, toks = self.bio_answers(both, items)
        res = aggregate_spans(bio, tokens=toks, types=list(classes))
        fused = self._fused_frame(res, classes)[["label", "confidence"]]
        # the one span routing policy decides here too whether people and models have settled the sentence
        r = route_sentences(res, answers=bio).set_index("sentence_id").reindex(fused.index)
        fused["confidence"] = np.minimum(fused["confidence"].to_numpy(float), r["confidence"].to_numpy(float))
        fused["reason"] = r["reason"].fillna("").astype(str).to_numpy()
        fused = fused.loc[fused.index.isin(people["item_id"])].copy()
        given = {i: list(dict.fromkeys(list(g["label"])[::-1])) for i, g in both.groupby("item_id", sort=False)}
        for item_id, r in fused.iterrows():
            cands = given.get(item_id, [])
            if not cands or r["label"] in cands:
                continue
            f1 = [span_f1(c, r["label"]) for c in cands]
            k = int(np.argmax(f1))
            fused.at[item_id, "label"] = cands[k]
            fused.at[item_id, "confidence"] = float(r["confidence"]) * f1[k]
        return fused

    def spec_template(self) -> dict[str, str]:
        """What `factory init NAME --type spans` writes instead of the classification lines."""
        return {
            "type_line": "  type: spans                # each item gets a list of typed token spans [start, end, type]\n"
                         "                             # (end exclusive, token indices; [] = no entity). Tokens come from\n"
                         "                             # the file's optional `tokens` column (JSON list or space-separated)\n"
                         "                             # or the factory's word tokeniser, and are recorded in the item",
            "classes": "classes:                     # the span types: name + what a span of the type is\n"
                       "  - name: PER\n"
                       "    definition: \"A person's name, first and last name together in one span.\"\n"
                       "  - name: ORG\n"
                       "    definition: \"A company, institution, team or other organisation.\"\n"
                       "  - name: LOC\n"
                       "    definition: \"A place: country, city, region, river, mountain.\"\n",
            "mode_line": "mode: prelabel-human         # spans run in prelabel-human: two taggers pre-annotate, people correct",
            "guideline_text": "  text: \"Mark every name of a person, organisation or place as one span of its type; "
                              "mark nothing if there is none.\"",
        }

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

    def encode(self, value: Any) -> str:
        """Released ``{start, end, type}`` structs back to ``[[start,end,"type"]]`` JSON (an empty list: ``[]``)."""
        if isinstance(value, str):
            return value
        return json.dumps([[int(d["start"]), int(d["end"]), str(d["type"])] for d in value], separators=(",", ":"))

    def to_bio(self, stored: str, n_tokens: int) -> list[str]:
        tags = ["O"] * n_tokens
        for s, e, t in json.loads(stored or "[]"):
            tags[s] = f"B-{t}"
            for i in range(s + 1, e):
                tags[i] = f"I-{t}"
        return tags

    def fuse(self, answers: pd.DataFrame, classes: Sequence[str], items: pd.DataFrame | None = None) -> pd.DataFrame:
        """`items` (``item_id, n_tokens``, optionally ``tokens``) is required: a sentence's length is not in its spans."""
        if items is None or "n_tokens" not in items:
            raise ValueError("spans fusion needs items with n_tokens (the recorded tokenisation)")
        bio, toks = self.bio_answers(answers[["item_id", "worker_id", "label"]], items)
        res = aggregate_spans(bio, tokens=toks, types=list(classes))
        return self._fused_frame(res, classes)[["label", "confidence"]]

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

    def audit_measures(self, final: pd.DataFrame, level: float = 0.95) -> dict:
        """Span-level quality of the machines' spans where a person checked them: the fused spans (``fused_label``)
        against people's final spans (``label``) on the audit sample (sentences the machines accepted, drawn at
        random) and on every sentence people reviewed; strict and relaxed P/R/F1 with bootstrap intervals."""
        out = {}
        for name, rows in (("audit", final[final["route"] == "audit"]),
                           ("human_checked", final[final["source"].isin(["calibrated", "arbitrated"])])):
            rows = rows[rows["label"].notna() & rows["fused_label"].notna()]
            out[name] = span_quality([json.loads(x) for x in rows["label"]], [json.loads(x) for x in rows["fused_label"]],
                                     level=level) if len(rows) else None
        return out

    # -- release: the tokens and a BIO view beside the spans column
    release_column_names: ClassVar[tuple[str, ...]] = ("tokens", "bio")

    def bio_names(self, classes: Sequence[str]) -> list[str]:
        return ["O"] + [f"{p}-{c}" for c in classes for p in ("B", "I")]

    def release_columns(self, raw: pd.DataFrame, labels: Sequence) -> pd.DataFrame:
        """``tokens`` and ``bio`` (JSON text lists) of raw_items rows, ``labels`` their stored spans (None: no label)."""
        it = self.item_table(raw)
        bio = [None if not isinstance(lab, str) else json.dumps(self.to_bio(lab, n), separators=(",", ":"))
               for lab, n in zip(labels, it["n_tokens"])]
        return pd.DataFrame({"tokens": [json.dumps(t, ensure_ascii=False, separators=(",", ":")) for t in it["tokens"]],
                             "bio": bio}, index=raw.index)

    def hf_extra_features(self, classes: Sequence[str]) -> dict:
        return {"tokens": {"sequence": "string"},
                "bio": {"sequence": {"class_label": {"names": dict(enumerate(self.bio_names(classes)))}}}}

    def croissant_extra_fields(self, classes: Sequence[str]) -> dict:
        return {"tokens": {"repeated": True, "description": "The item's tokens as recorded at ingest; span offsets "
                                                            "index this list."},
                "bio": {"repeated": True, "description": "The spans as one BIO tag per token (O, B-<type>, I-<type>)."}}

    def labelstudio_config(self, classes: Sequence[str], from_name: str, to_name: str) -> str:
        from xml.sax.saxutils import quoteattr

        labels = "\n".join(f"    <Label value={quoteattr(str(c))}/>" for c in classes)
        return f'  <Labels name="{from_name}" toName="{to_name}">\n{labels}\n  </Labels>\n'

    @staticmethod
    def char_offsets(text: str, tokens: Sequence[str]) -> list[tuple[int, int]] | None:
        """Each token's [start, end) characters in `text`, found left to right; None if a token is not in it."""
        out, at = [], 0
        for tok in tokens:
            k = text.find(tok, at)
            if k < 0:
                return None
            out.append((k, k + len(tok)))
            at = k + len(tok)
        return out

    def _offsets(self, item: dict | None) -> list[tuple[int, int]] | None:
        if not item or item.get("text") is None:
            return None
        toks = item.get("tokens")
        if toks is None:
            toks = self.item_table(pd.DataFrame([{"item_id": "", "text": item["text"], "meta": item.get("meta")}]))[
                "tokens"].iloc[0]
        return self.char_offsets(str(item["text"]), toks)

    def to_labelstudio(self, stored: str, from_name: str, to_name: str, item: dict | None = None) -> list[dict]:
        """Label Studio ``labels`` results; with the item (``text``, ``meta`` or ``tokens``) they carry Label Studio's
        own character offsets and text too, and the token offsets always travel in the result's ``meta``."""
        off = self._offsets(item)
        out = []
        for sp in self.decode(stored):
            value = {"labels": [sp["type"]]}
            if off is not None:
                a, b = off[sp["start"]][0], off[sp["end"] - 1][1]
                value |= {"start": a, "end": b, "text": str(item["text"])[a:b]}
            out.append({"from_name": from_name, "to_name": to_name, "type": "labels", "value": value,
                        "meta": {"tokens": [sp["start"], sp["end"]]}})
        return out

    def from_labelstudio(self, results: list[dict], classes: Sequence[str], where: str = "",
                         item: dict | None = None) -> str:
        """Spans from ``labels`` results: their token offsets (``meta.tokens``, set by our export), else Label
        Studio's character offsets mapped to the item's tokens they overlap (a span drawn in Label Studio)."""
        off = self._offsets(item)
        spans = []
        for k, r in enumerate(r for r in results if r.get("type") == "labels"):
            tok = (r.get("meta") or {}).get("tokens")
            value = r.get("value", {})
            labels = value.get("labels", [])
            if not tok and off is not None and isinstance(value.get("start"), int) and isinstance(value.get("end"), int):
                hit = [i for i, (a, b) in enumerate(off) if a < value["end"] and value["start"] < b]
                tok = [hit[0], hit[-1] + 1] if hit else None
            if not tok or len(labels) != 1:
                raise AnswerError(_w(where, f"labels result {k}: needs one label and its token offsets "
                                            f"(meta.tokens) or character offsets over the item's tokens"))
            spans.append([tok[0], tok[1], labels[0]])
        n = None if off is None else {"n_tokens": len(off)}
        return self.parse_answer(spans, classes, where, n)
