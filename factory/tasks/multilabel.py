"""``multi-label``: any subset of the spec's classes per item (tags), the empty set included.

Stored form: the chosen classes in the spec's order joined by ``|`` (``""`` is the empty set, a valid
answer: "none of these"), so one answer has exactly one text and equal sets compare equal.  Class names
may therefore not contain ``|``.  Fusion is the label-set Dawid-Skene of
:func:`factory.engine.multilabel.aggregate_multilabel`; agreement is Krippendorff's alpha per class
(each class a binary question: ticked or not) and its mean, and the mean Jaccard similarity of the pairs
of answers on an item.
"""
from __future__ import annotations

import math
from itertools import combinations
from typing import Any, ClassVar, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from factory.engine.multilabel import aggregate_multilabel
from factory.engine.verify import find_suspect_labels
from factory import labelers
from factory.quality import krippendorff_alpha_nominal
from factory.tasks.base import AnswerError, TaskTypeBase

SEP = "|"



def given_set(fused: pd.DataFrame, answers: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Each item's fused set, or, when nobody gave that set for the item, the given set the fusion finds likeliest.

    The label-set Dawid-Skene picks among candidate sets pooled over *all* items (the empty set, every single
    class, every set some answer gave), so an item can come out with a set no person and no model gave for
    it -- and a final label must rest on answers in the ledger (the release refuses one that does not).  The
    given sets (``answers``: ``item_id, label`` canonical) are scored by the fusion's per-class marginals
    (``prob_<class>``, classes independent); the chosen one's confidence is that score, capped by the mass
    the fusion left off its own set (never more sure than the fusion was of being wrong).  ``fused``: index
    item_id, ``label``, ``confidence``, ``prob_<class>``; returns it with ``label``/``confidence`` replaced."""
    out = fused.copy()
    cols = [f"prob_{c}" for c in classes]
    given = {i: list(dict.fromkeys(list(g["label"].astype(str))[::-1]))  # latest first on ties
             for i, g in answers.groupby("item_id", sort=False)}
    for item_id, r in fused.iterrows():
        cands = given.get(item_id, [])
        if not cands or str(r["label"]) in cands:
            continue
        p = np.clip(r[cols].to_numpy(float), 1e-12, 1 - 1e-12)
        ticks = np.array([[c in set(str(g).split(SEP)) - {""} for c in classes] for g in cands], dtype=bool)
        score = np.where(ticks, p, 1 - p).prod(axis=1)
        k = int(np.argmax(score))
        out.at[item_id, "label"] = cands[k]
        out.at[item_id, "confidence"] = float(min(score[k], 1.0 - float(r["confidence"])))
    return out

class MultiLabel(TaskTypeBase):
    name: ClassVar[str] = "multi-label"
    pipeline_ready: ClassVar[bool] = True
    answer_shape: ClassVar[str] = "set"
    modes: ClassVar[tuple[str, ...]] = ("prelabel-human", "human-model", "prelabel-model")
    widget: ClassVar[str] = "checkboxes"
    shortcuts: ClassVar[str] = "digit 1-9: tick or untick that class; Enter: submit the ticked set"

    # -- batch pipeline hooks (see factory.tasks.base.BatchHooks)
    def make_labelers(self, seed: int = 0) -> list:
        from factory.set_labelers import make_set_labelers

        return make_set_labelers(seed=seed)

    def labeler_suite(self) -> str:
        from factory.set_labelers import set_suite_version

        return set_suite_version()

    def decide(self, probs: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per-class marginals -> the set of classes at >= 0.5 and the probability of exactly that set
        (classes independent given the item): prod_j max(p_j, 1 - p_j)."""
        probs = np.asarray(probs, dtype=float)
        names = [str(c) for c in classes]
        on = probs >= 0.5
        labels = np.array([SEP.join(c for c, t in zip(names, row) if t) for row in on], dtype=object)
        conf = np.where(on, probs, 1.0 - probs).prod(axis=1) if probs.size else np.zeros(len(probs))
        return labels, conf

    def uncertain_classes(self, probs: np.ndarray, classes: Sequence[str], band: float = 0.25,
                          top: int = 3) -> list[list[str]]:
        """Per item, the classes whose probability is within ``band`` of 0.5, most uncertain first (at most
        ``top``): what routing names so a reviewer looks there first."""
        out = []
        for row in np.asarray(probs, dtype=float).reshape(len(probs), -1):
            dist = np.abs(row - 0.5)
            out.append([str(classes[j]) for j in np.argsort(dist, kind="stable") if dist[j] <= band][:top])
        return out

    def pool_models(self, answers: pd.DataFrame, classes: Sequence[str], items: pd.DataFrame | None = None,
                    target: float | None = None) -> pd.DataFrame:
        """The labelers' per-class marginals averaged (linear pool), per item; the set and its probability."""
        cols = [f"prob_{c}" for c in classes]
        mean = answers.groupby("item_id", sort=True)[cols].mean()
        labels, conf = self.decide(mean.to_numpy(), classes)
        out = mean.copy()
        out.insert(0, "label", labels)
        out.insert(1, "confidence", conf)
        return out

    def cross_val_answers(self, make, items: pd.DataFrame, labels: Sequence, classes: Sequence[str], folds: int,
                          seed: int) -> pd.DataFrame:
        """One labeler family's out-of-fold per-class marginals (``prob_<class>``) and the set they decide."""
        p = labelers.cross_val_proba(make, items[["item_id", "text"]], list(labels), classes, folds=folds, seed=seed)
        f = pd.DataFrame(p, columns=[f"prob_{c}" for c in classes])
        f.insert(0, "label", self.decide(p, classes)[0])
        return f

    def fuse_primary(self, answers: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
        """Mode prelabel-model: the primary labelers' per-class marginals pooled (``pool_models``)."""
        return self.pool_models(answers, classes)

    def fuse_people(self, answers: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
        """Mode human-model: people's sets fused by the label-set Dawid-Skene, with per-class marginals."""
        return self.fuse_with_marginals(answers, classes)

    def suspect_answers(self, given: Sequence[str], oos: np.ndarray, classes: Sequence[str],
                        people: np.ndarray | None = None, index: Sequence | None = None) -> pd.DataFrame:
        """Mode human-model: :meth:`suspect_sets` (each class a yes/no question)."""
        return self.suspect_sets(given, oos, classes, people, index=index)

    def verifier_accepts(self, fused: pd.DataFrame, verifier: pd.DataFrame, classes: Sequence[str],
                         accept: float) -> pd.Series:
        """Mode prelabel-model: True where the verifier predicts the same set as the fused labelers and the
        set's joint probability is >= ``accept``.

        Per class the two are independent evidence (different families on different features), as for
        one label: q = p_f p_v / (p_f p_v + (1 - p_f)(1 - p_v)); the set's probability is the product over
        classes of q (ticked) or 1 - q (not ticked), classes independent given the item like ``decide``."""
        cols = [f"prob_{c}" for c in classes]
        pf = fused[cols].to_numpy(float)
        pv = verifier[cols].to_numpy(float)
        on, off = pf * pv, (1.0 - pf) * (1.0 - pv)
        q = on / np.clip(on + off, 1e-300, None)
        ticked = np.array([[c in set(self.decode(str(lab))) for c in classes] for lab in fused["label"]], dtype=bool)
        p_set = np.where(ticked, q, 1.0 - q).prod(axis=1) if len(cols) else np.ones(len(fused))
        agree = (fused["label"].astype(str) == verifier["label"].astype(str)).to_numpy()
        return pd.Series(agree & (p_set >= accept), index=fused.index)

    def fuse_with_models(self, people: pd.DataFrame, models: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
        """People's answers and the labelers' predicted sets (each labeler a worker) fused by the label-set
        Dawid-Skene: one row per item people answered (index item_id): ``label``, ``confidence`` (the fused
        set's posterior).  ``people`` and ``models``: ``item_id, worker_id, label`` (canonical)."""
        both = pd.concat([people[["item_id", "worker_id", "label"]],
                          models.loc[models["item_id"].isin(people["item_id"]), ["item_id", "worker_id", "label"]]],
                         ignore_index=True)
        fused = self.fuse_with_marginals(both, classes)
        fused = fused.loc[fused.index.isin(people["item_id"])]
        return given_set(fused, both, classes)[["label", "confidence"]]

    def spec_template(self) -> dict[str, str]:
        """What `factory init NAME --type multi-label` writes instead of the classification lines."""
        return {
            "type_line": "  type: multi-label          # each item gets a SET of the classes (tags), possibly none; answers\n"
                         "                             # are the ticked classes joined by '|' (\"sport|politics\"), \"\" = none",
            "classes": "classes:                     # the tags: name + when to tick it (names may not contain '|')\n"
                       "  - name: sport\n"
                       "    definition: \"Tick when the text is about a sport, a match or an athlete.\"\n"
                       "  - name: politics\n"
                       "    definition: \"Tick when the text is about government, elections or a policy.\"\n"
                       "  - name: economy\n"
                       "    definition: \"Tick when the text is about money, markets, prices or jobs.\"\n",
            "mode_line": "mode: prelabel-human         # prelabel-human (models first, people check), human-model (people\n"
                         "                             # first, models verify each class) or prelabel-model (a model verifies)",
            "guideline_text": "  text: \"Tick every class the text is about; tick none if none applies.\"",
        }

    def spec_errors(self, classes: Sequence[str]) -> list[str]:
        errs = [f"class '{c}': a multi-label class name may not contain '{SEP}'" for c in classes if SEP in str(c)]
        if len(classes) < 1 or len(classes) > 62:
            errs.append(f"multi-label needs 1 to 62 classes, got {len(classes)}")
        return errs

    def parse_answer(self, value: Any, classes: Sequence[str], where: str = "", item: dict | None = None) -> str:
        names = [str(c) for c in classes]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise AnswerError(f"{where}: no answer; the empty set is an answer too: give '' or []".lstrip(": "))
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(SEP)] if value.strip() else []
        elif isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
            parts = [str(p).strip() for p in value]
        else:
            raise AnswerError(f"{where}: a multi-label answer is a list of classes or a '{SEP}'-joined text, "
                              f"got {type(value).__name__}".lstrip(": "))
        unknown = [p for p in parts if p not in names]
        if unknown:
            raise AnswerError(f"{where}: {unknown} not in the schema; use any of {names}".lstrip(": "))
        if len(set(parts)) != len(parts):
            dup = sorted({p for p in parts if parts.count(p) > 1})
            raise AnswerError(f"{where}: {dup} given twice; a set names each class once".lstrip(": "))
        chosen = set(parts)
        return SEP.join(c for c in names if c in chosen)

    def decode(self, stored: str) -> list[str]:
        return stored.split(SEP) if stored else []

    def encode(self, value: Any) -> str:
        """A released list of classes (a list, or a NumPy array read from Parquet) to ``a|b``; text passes."""
        return value if isinstance(value, str) else SEP.join(map(str, value))

    def fuse(self, answers: pd.DataFrame, classes: Sequence[str], items: pd.DataFrame | None = None) -> pd.DataFrame:
        return self.fuse_with_marginals(answers, classes)[["label", "confidence"]]

    def fuse_with_marginals(self, answers: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
        """``fuse`` plus each class's posterior of applying (``prob_<class>``): what verification blends in."""
        out = aggregate_multilabel(answers.rename(columns={"label": "labels"})[["item_id", "worker_id", "labels"]],
                                   list(classes))
        order = {c: i for i, c in enumerate(classes)}
        label = out["labels"].map(lambda s: SEP.join(sorted(s, key=order.__getitem__)))
        cols = [f"prob_{c}" for c in classes]
        return pd.concat([pd.DataFrame({"label": label, "confidence": out["confidence"]}, index=out.index),
                          out[cols]], axis=1)

    def suspect_sets(self, given: Sequence[str], oos: np.ndarray, classes: Sequence[str],
                     people: np.ndarray | None = None, index: Sequence | None = None) -> pd.DataFrame:
        """Mode human-model: which people's sets are probably wrong, per class.

        Each class is a yes/no question: the engine's ``find_suspect_labels`` (confident learning's noise
        posterior, the same rule as for one label) judges "ticked" or "not ticked" against the labelers'
        out-of-sample probability of the class (``oos``, n x k), blended with people's posterior of it
        (``people``).  An item is flagged when any class is; its reasons name the class and the direction.
        Columns: ``flag``, ``reasons`` (list), index ``index``."""
        oos = np.asarray(oos, dtype=float)
        idx = pd.Index(index if index is not None else range(len(oos)))
        ticked = np.array([[c in set(self.decode(str(g))) for c in classes] for g in given], dtype=bool)
        flag = np.zeros(len(idx), dtype=bool)
        reasons: list[list[str]] = [[] for _ in range(len(idx))]
        for j, c in enumerate(classes):
            if len(np.unique(ticked[:, j])) < 2:  # nobody ticked it, or everybody did: nothing to contrast
                continue
            binary = np.column_stack([1.0 - oos[:, j], oos[:, j]])
            post = None if people is None else np.column_stack([1.0 - people[:, j], people[:, j]])
            sus = find_suspect_labels(np.where(ticked[:, j], "yes", "no").tolist(), binary, ["no", "yes"],
                                      fused_posterior=post, index=idx)
            hit = sus.reindex(idx)["flag"].fillna(False).to_numpy(bool)
            flag |= hit
            for i in np.flatnonzero(hit):
                reasons[i].append(f"class '{c}': {'ticked' if ticked[i, j] else 'not ticked'}, the models say "
                                  f"{'no' if ticked[i, j] else 'yes'} (p={oos[i, j]:.2f})")
        return pd.DataFrame({"flag": flag, "reasons": reasons}, index=idx)

    def agreement(self, answers: pd.DataFrame, classes: Sequence[str], items: pd.DataFrame | None = None) -> dict:
        counts = answers.groupby("item_id")["worker_id"].nunique()
        multi = answers[answers["item_id"].isin(counts.index[counts >= 2])]
        per_class = {}
        for c in classes:
            ticked = multi.assign(label=multi["label"].map(lambda s, c=str(c): c in self.decode(s)).astype(str))
            per_class[str(c)] = krippendorff_alpha_nominal(ticked) if len(ticked) else math.nan
        finite = [v for v in per_class.values() if not math.isnan(v)]
        jac = []
        for _, g in multi.groupby("item_id"):
            for a, b in combinations([set(self.decode(s)) for s in g["label"]], 2):
                jac.append(1.0 if not (a | b) else len(a & b) / len(a | b))
        return {"krippendorff_alpha_mean": float(np.mean(finite)) if finite else math.nan,
                "krippendorff_alpha_per_class": per_class,
                "mean_pairwise_jaccard": float(np.mean(jac)) if jac else math.nan,
                "items_with_two_or_more": int((counts >= 2).sum())}

    def expectations(self, classes: Sequence[str], column: str = "label") -> list[dict]:
        import re

        one = "|".join(re.escape(str(c)) for c in classes)
        return [{"name": "label_present", "type": "expect_column_values_to_not_be_null", "kwargs": {"column": column},
                 "blocking": True, "description": "every item has a label (the empty set is one)"},
                {"name": "label_set_in_schema", "type": "expect_column_values_to_match_regex",
                 "kwargs": {"column": column, "regex": rf"^(?:(?:{one})(?:\{SEP}(?:{one}))*)?$"}, "blocking": True,
                 "description": f"every label is a '{SEP}'-joined set of the spec's classes"}]

    def hf_feature(self, classes: Sequence[str]) -> dict:
        return {"sequence": {"class_label": {"names": {i: str(c) for i, c in enumerate(classes)}}}}

    def croissant_field(self, classes: Sequence[str]) -> dict:
        return {"references": {"field": {"@id": "classes/name"}}, "repeated": True}

    def labelstudio_config(self, classes: Sequence[str], from_name: str, to_name: str) -> str:
        choices = "\n".join(f"    <Choice value={quoteattr(str(c))} hotkey=\"{i + 1}\"/>"
                            if i < 9 else f"    <Choice value={quoteattr(str(c))}/>" for i, c in enumerate(classes))
        return (f'  <Choices name="{from_name}" toName="{to_name}" choice="multiple" showInLine="false">\n'
                f"{choices}\n  </Choices>\n")

    def to_labelstudio(self, stored: str, from_name: str, to_name: str) -> list[dict]:
        return [{"from_name": from_name, "to_name": to_name, "type": "choices",
                 "value": {"choices": self.decode(stored)}}]

    def from_labelstudio(self, results: list[dict], classes: Sequence[str], where: str = "") -> str:
        choice = [r for r in results if r.get("type") == "choices"]
        if len(choice) > 1:
            raise AnswerError(f"{where}: {len(choice)} choice results in one annotation; expected one".lstrip(": "))
        picked = choice[0].get("value", {}).get("choices", []) if choice else []  # none ticked: the empty set
        return self.parse_answer(list(picked), classes, where)
