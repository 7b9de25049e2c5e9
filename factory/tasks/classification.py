"""``classification``: exactly one of the spec's classes per item."""
from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from factory.engine.aggregate import aggregate
from factory.engine.calibration import set_top_probability
from factory import labelers
from factory.engine import verify
from factory.quality import krippendorff_alpha_nominal
from factory.tasks.base import AnswerError, TaskTypeBase


def _prob_cols(classes: Sequence[str]) -> list[str]:
    return [f"prob_{c}" for c in classes]


def verifier_accepts(fused: pd.DataFrame, verifier: pd.DataFrame, classes: Sequence[str], accept: float) -> pd.Series:
    """True where the verifier agrees with the fused label and their joint probability of it is >= `accept`.

    The two are different families on different features (bag-of-words fused, pretrained
    embeddings verifying), so their probabilities combine as independent evidence:
    p(c) ∝ p_fused(c) * p_verifier(c) (uniform class prior). Asking each to be >= `accept`
    on its own threw away the agreement itself: on a seed of 100 it sent 3 in 4 agreed,
    99%-correct items to people (benchmarks/embeddings.py verifier). Whether the
    independence holds is what the audit sample measures.
    """
    cols = _prob_cols(classes)
    joint = fused[cols].to_numpy(float) * verifier[cols].to_numpy(float)
    joint = joint / np.clip(joint.sum(axis=1, keepdims=True), 1e-300, None)
    column = pd.Index(list(classes)).get_indexer(fused["label"].astype(str))
    p_label = np.where(column >= 0, joint[np.arange(len(joint)), np.clip(column, 0, None)], 0.0)
    agree = (fused["label"].astype(str) == verifier["label"].astype(str)).to_numpy()
    return pd.Series(agree & (p_label >= accept), index=fused.index)


class Classification(TaskTypeBase):
    name: ClassVar[str] = "classification"
    pipeline_ready: ClassVar[bool] = True
    answer_shape: ClassVar[str] = "one"
    modes: ClassVar[tuple[str, ...]] = ("prelabel-human", "human-model", "prelabel-model")
    widget: ClassVar[str] = "choices"
    shortcuts: ClassVar[str] = "digit 1-9: choose that class and submit"

    class_shares: ClassVar[bool] = True
    people_loop: ClassVar[bool] = True

    # -- batch pipeline hooks (see factory.tasks.base.BatchHooks)
    def make_labelers(self, seed: int = 0) -> list:
        from factory.labelers import make_labelers

        return make_labelers("classification", seed=seed)

    def labeler_suite(self) -> str:
        from factory.labelers import labeler_suite_version

        return labeler_suite_version("classification")

    def decide(self, probs: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """A probability vector per item -> its most probable class and that class's probability."""
        probs = np.asarray(probs, dtype=float)
        return np.asarray([str(c) for c in classes], dtype=object)[probs.argmax(axis=1)], probs.max(axis=1)

    def pool_models(self, answers: pd.DataFrame, classes: Sequence[str], items: pd.DataFrame | None = None,
                    target: float | None = None) -> pd.DataFrame:
        """The labelers' probability vectors fused per item by the linear pool (``aggregate(method="weighted")``,
        the mean of the vectors): index item_id, ``label``, ``confidence``, ``prob_<class>``.

        Dawid-Skene over three model "workers" learns a K x 4K confusion per model without truth; on weak models
        it relabels whole cells (models A, B, B -> fusion C at 0.99: 375 of 2,185 BBC items with a 40-label noisy
        seed, 18% of them right) and treats correlated models as independent evidence (median confidence 1.000
        at 77% accuracy).  The pool cannot invert: when the labelers agree it keeps their class, with the same
        accuracy (see docs/gate-routing.md); its confidence is then calibrated on people's labels."""
        return aggregate(answers, method="weighted", classes=list(classes))

    def cross_val_answers(self, make, items: pd.DataFrame, labels: Sequence, classes: Sequence[str], folds: int,
                          seed: int) -> pd.DataFrame:
        """One labeler family's out-of-fold answers (``make()`` a fresh labeler): ``label`` and ``prob_<class>``
        (:func:`factory.labelers.cross_val_proba`, then :meth:`decide`), one row per item in ``items``' order."""
        p = labelers.cross_val_proba(make, items[["item_id", "text"]], list(labels), classes, folds=folds, seed=seed)
        f = pd.DataFrame(p, columns=_prob_cols(classes))
        f.insert(0, "label", self.decide(p, classes)[0])
        return f

    def with_confidence(self, fused: pd.DataFrame, confidence: Any) -> pd.DataFrame:
        """The top class gets the calibrated confidence; the other classes share the rest in proportion."""
        return set_top_probability(fused, confidence)

    def fuse_people(self, answers: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
        """Mode human-model: people's ``item_id, worker_id, label`` answers fused (Dawid-Skene, ``auto``): index
        item_id, ``label``, ``confidence``, ``prob_<class>`` (what verification blends in)."""
        return aggregate(answers, method="auto", classes=list(classes))

    def suspect_answers(self, given: Sequence[str], oos: np.ndarray, classes: Sequence[str],
                        people: np.ndarray | None = None, index: Sequence | None = None) -> pd.DataFrame:
        """Mode human-model: which people's labels are probably wrong (the engine's confident-learning rule
        ``find_suspect_labels`` against the labelers' out-of-sample probabilities ``oos``, blended with people's
        posterior ``people``).  Columns ``flag``, ``reasons``; index ``index``."""
        return verify.find_suspect_labels(list(given), oos, classes, people, index=index)

    def fuse_primary(self, answers: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
        """Mode prelabel-model: the primary labelers' answers (the verifier left out) fused, Dawid-Skene over the
        labelers (``auto``): index item_id, ``label``, ``confidence``, ``prob_<class>``."""
        return aggregate(answers, method="auto", classes=list(classes))

    def verifier_accepts(self, fused: pd.DataFrame, verifier: pd.DataFrame, classes: Sequence[str],
                         accept: float) -> pd.Series:
        """Mode prelabel-model: :func:`verifier_accepts` (same class, joint probability >= ``accept``)."""
        return verifier_accepts(fused, verifier, classes, accept)

    def classes_of(self, stored: str) -> set[str]:
        return {stored}

    def spec_errors(self, classes: Sequence[str]) -> list[str]:
        return [] if len(classes) >= 2 else [f"classification needs at least 2 classes, got {len(classes)}"]

    def parse_answer(self, value: Any, classes: Sequence[str], where: str = "", item: dict | None = None) -> str:
        names = [str(c) for c in classes]
        if isinstance(value, (list, tuple, set, frozenset)):
            raise AnswerError(f"{where}: a classification answer is one class, got {len(value)} values "
                              f"{list(value)}; use one of {names}".lstrip(": "))
        if value is None or str(value) not in names:
            raise AnswerError(f"{where}: label '{value}' is not in the schema; use one of {names}".lstrip(": "))
        return str(value)

    def decode(self, stored: str) -> Any:
        return stored

    def fuse(self, answers: pd.DataFrame, classes: Sequence[str], items: pd.DataFrame | None = None) -> pd.DataFrame:
        out = aggregate(answers[["item_id", "worker_id", "label"]], method="ds", classes=list(classes))
        return out[["label", "confidence"]]

    def agreement(self, answers: pd.DataFrame, classes: Sequence[str], items: pd.DataFrame | None = None) -> dict:
        counts = answers.groupby("item_id")["worker_id"].nunique()
        multi = answers[answers["item_id"].isin(counts.index[counts >= 2])]
        alpha = krippendorff_alpha_nominal(multi) if len(multi) else math.nan
        return {"krippendorff_alpha": alpha, "items_with_two_or_more": int((counts >= 2).sum())}

    def expectations(self, classes: Sequence[str], column: str = "label") -> list[dict]:
        return [{"name": "label_present", "type": "expect_column_values_to_not_be_null", "kwargs": {"column": column},
                 "blocking": True, "description": "every item has a label"},
                {"name": "label_in_schema", "type": "expect_column_values_to_be_in_set",
                 "kwargs": {"column": column, "value_set": [str(c) for c in classes]}, "blocking": True,
                 "description": "every label is one of the spec's classes"}]

    def hf_feature(self, classes: Sequence[str]) -> dict:
        return {"class_label": {"names": {i: str(c) for i, c in enumerate(classes)}}}

    def croissant_field(self, classes: Sequence[str]) -> dict:
        return {"references": {"field": {"@id": "classes/name"}}}

    def labelstudio_config(self, classes: Sequence[str], from_name: str, to_name: str) -> str:
        choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in classes)
        return (f'  <Choices name="{from_name}" toName="{to_name}" choice="single" showInLine="false">\n'
                f"{choices}\n  </Choices>\n")

    def to_labelstudio(self, stored: str, from_name: str, to_name: str) -> list[dict]:
        return [{"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [stored]}}]

    def from_labelstudio(self, results: list[dict], classes: Sequence[str], where: str = "") -> str:
        picked = [c for r in results if r.get("type") == "choices" for c in r.get("value", {}).get("choices", [])]
        if len(picked) != 1:
            raise AnswerError(f"{where}: expected exactly one choice, found {picked or 'none'}".lstrip(": "))
        return self.parse_answer(picked[0], classes, where)
