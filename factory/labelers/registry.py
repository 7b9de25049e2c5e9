"""The labeler suites by task type: which families `make_labelers` builds, and their version string."""
from __future__ import annotations

from factory.labelers.bag_of_words import CharNgramSGD, WordTfidfLogReg
from factory.labelers.base import Labeler
from factory.labelers.embedding import GloveSifLogReg
from factory.labelers.pairs import PairCharNgramLogReg, PairSimilarityBoosting, PairSimilarityLogReg


_FAMILIES: dict[str, tuple[type[Labeler], ...]] = {
    "classification": (WordTfidfLogReg, CharNgramSGD, GloveSifLogReg),
    "pair": (PairSimilarityLogReg, PairSimilarityBoosting, PairCharNgramLogReg),
}


def make_labelers(task_type: str = "classification", seed: int = 0) -> list[Labeler]:
    """Three unfitted labelers of different families for `task_type` ("classification" or "pair")."""
    if task_type not in _FAMILIES:
        raise ValueError(f"unknown task_type {task_type!r}; expected one of {list(_FAMILIES)}")
    return [cls(seed=seed) for cls in _FAMILIES[task_type]]


def labeler_suite_version(task_type: str = "classification") -> str:
    """'name@version+...' of the labelers `make_labelers(task_type)` builds: put it in model cache keys
    so a code change retrains instead of reusing (or failing to unpickle) models from older code."""
    if task_type not in _FAMILIES:
        raise ValueError(f"unknown task_type {task_type!r}; expected one of {list(_FAMILIES)}")
    return "+".join(f"{cls.name}@{cls.version}" for cls in _FAMILIES[task_type])
