"""The label engine's aggregation core: fuse answers, estimate worker reliability, calibrate."""

from factory.engine.aggregate import (
    DEFAULTS,
    METHODS,
    AggregationResult,
    aggregate,
    aggregate_full,
)
from factory.engine.calibration import (
    Calibrator,
    expected_calibration_error,
    fit_calibrator,
)

__all__ = [
    "DEFAULTS",
    "METHODS",
    "AggregationResult",
    "Calibrator",
    "aggregate",
    "aggregate_full",
    "expected_calibration_error",
    "fit_calibrator",
]
