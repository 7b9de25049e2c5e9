"""``classification``: exactly one of the spec's classes per item."""
from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from factory.engine.aggregate import aggregate
from factory.quality import krippendorff_alpha_nominal
from factory.tasks.base import AnswerError, TaskTypeBase


class Classification(TaskTypeBase):
    name: ClassVar[str] = "classification"
    pipeline_ready: ClassVar[bool] = True
    answer_shape: ClassVar[str] = "one"
    modes: ClassVar[tuple[str, ...]] = ("prelabel-human", "human-model", "prelabel-model")
    widget: ClassVar[str] = "choices"
    shortcuts: ClassVar[str] = "digit 1-9: choose that class and submit"

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
