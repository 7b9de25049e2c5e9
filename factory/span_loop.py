"""One round of the people-in-the-loop decision for span tasks, shared by the pipeline and the replay benchmark.

The span counterpart of :mod:`factory.loop` (same structure: settings from the dataset spec, one
``*_round`` function that fuses, calibrates and routes, a result that says what to ask and whether the
loop stops).  A round:

1. fuse every answer so far (people and ``model:`` labelers) with
   :func:`factory.engine.spans.aggregate_spans` (the token text enters as an emitter when ``tokens``
   are given);
2. calibrate the sentence confidence without truth (:func:`factory.engine.span_routing.fit_span_calibration`:
   verified answers when there are enough, else people's answers held out of a refit -- conservative);
3. route with :func:`factory.engine.span_routing.route_sentences`, the one span routing policy: sentences
   below the spec's ``quality.min_accuracy`` (as the probability that the sentence's span set is exactly
   right), with a fused span nobody gave, or where the fusion overrules a majority of people, are asked
   one more answer in priority order (expected error drop), within the budget and each sentence's cap.

The loop stops when nothing is asked: every sentence is accepted or at its cap.  Reads no truth.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from factory.engine.span_routing import SpanCalibration, fit_span_calibration, route_sentences
from factory.engine.spans import SpanAggregation, aggregate_spans
from factory.spec import DatasetSpec

__all__ = ["SpanLoopSettings", "SpanRoundResult", "span_round"]


@dataclass(frozen=True)
class SpanLoopSettings:
    """What one span round needs from a dataset spec (see :meth:`from_spec`)."""

    target: float  # probability a sentence's span set is exactly right before it is accepted
    types: tuple[str, ...]  # entity types (the spec's classes)
    max_answers: int  # human answers one sentence may get at most
    fusion: dict = field(default_factory=dict)  # aggregate_spans options (empty: its DEFAULTS)

    @classmethod
    def from_spec(cls, spec: DatasetSpec, *, max_answers: int = 5, fusion: dict | None = None) -> "SpanLoopSettings":
        if spec.task.type != "spans":
            raise ValueError(f"span loop: the spec's task.type is {spec.task.type!r}, not 'spans'")
        return cls(target=float(spec.quality.min_accuracy), types=tuple(c.name for c in spec.classes),
                   max_answers=int(max_answers), fusion=dict(fusion or {}))


@dataclass
class SpanRoundResult:
    """One round's outcome: the fusion, the calibration, every sentence's routing and whether the loop stops."""

    agg: SpanAggregation
    calibration: SpanCalibration
    routing: pd.DataFrame  # route_sentences()'s columns
    stopped: bool
    stop_reason: str
    extra: dict = field(default_factory=dict)


def span_round(answers: pd.DataFrame, settings: SpanLoopSettings, *, tokens: pd.DataFrame | None = None,
               budget_left: int | None = None, max_answers_per_sentence: pd.Series | None = None,
               seed: int = 0) -> SpanRoundResult:
    """Fuse ``answers`` (``sentence_id, worker_id, token_index, tag``), calibrate, and choose whom to ask."""

    def fit(a: pd.DataFrame) -> SpanAggregation:
        return aggregate_spans(a, tokens=tokens, types=settings.types, **settings.fusion)

    agg = fit(answers)
    cal = fit_span_calibration(answers, fit, seed=seed)
    cap: Any = settings.max_answers
    if max_answers_per_sentence is not None:
        cap = max_answers_per_sentence.clip(upper=settings.max_answers)
    routing = route_sentences(agg, answers=answers, target=settings.target, budget=budget_left,
                              calibration=cal, max_answers=cap)
    asked = int(routing["ask"].sum())
    routed = int((routing["reason"] != "").sum())
    if asked:
        reason = ""
    elif routed:
        reason = f"{routed} sentences still routed, none below its answer cap or within the budget"
    else:
        reason = "every sentence accepted"
    return SpanRoundResult(agg, cal, routing, stopped=asked == 0, stop_reason=reason,
                           extra={"routed": routed, "asked": asked,
                                  "reasons": routing["reason"].value_counts().to_dict()})
