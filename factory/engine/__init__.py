"""The label engine's aggregation core: fuse answers, estimate worker reliability, calibrate."""

from factory.engine.aggregate import (
    DEFAULTS,
    METHODS,
    AggregationResult,
    aggregate,
    aggregate_full,
)

__all__ = [
    "DEFAULTS",
    "METHODS",
    "AggregationResult",
    "aggregate",
    "aggregate_full",
]
