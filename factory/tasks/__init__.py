"""Task types: the registry of kinds of labelling work (``task.type`` in a spec).

``get(name)`` returns the registered :class:`~factory.tasks.base.TaskType`; ``register`` adds one.  The
contract each type meets is written in :mod:`factory.tasks.base`.  ``LabelSchema`` binds a type to a
dataset's classes: it is what the answer door and the ledger check every label with.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Sequence

from factory.tasks.base import AnswerError, TaskType
from factory.tasks.classification import Classification
from factory.tasks.multilabel import MultiLabel
from factory.tasks.pairs import Pairs
from factory.tasks.spans import Spans

__all__ = ["AnswerError", "LabelSchema", "TaskType", "get", "names", "register", "schema"]

_REGISTRY: dict[str, TaskType] = {}


def register(task_type: TaskType) -> TaskType:
    """Add a task type under its ``name`` (refuses a second type of the same name and an incomplete one)."""
    if not isinstance(task_type, TaskType):
        missing = [m for m in TaskType.__protocol_attrs__ if not hasattr(task_type, m)] \
            if hasattr(TaskType, "__protocol_attrs__") else []
        raise TypeError(f"{type(task_type).__name__} does not implement the task-type contract; missing {missing}")
    if task_type.name in _REGISTRY and type(_REGISTRY[task_type.name]) is not type(task_type):
        raise ValueError(f"task type '{task_type.name}' is already registered")
    _REGISTRY[task_type.name] = task_type
    return task_type


def names(pipeline_ready: bool | None = None) -> list[str]:
    """Registered type names (optionally only those the batch pipeline runs, or only those it does not)."""
    return [n for n, t in _REGISTRY.items() if pipeline_ready is None or t.pipeline_ready == pipeline_ready]


def get(name: str) -> TaskType:
    """The registered type called `name`; KeyError naming the closest registered name."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise KeyError(f"unknown task type '{name}'{hint} (registered: {names()})") from None


@dataclass(frozen=True)
class LabelSchema:
    """A task type bound to a dataset's classes: the check every stored label goes through."""

    type: str
    classes: tuple[str, ...]

    @property
    def task_type(self) -> TaskType:
        return get(self.type)

    def parse(self, value: Any, where: str = "", item: dict | None = None) -> str:
        """The canonical stored form of an answer; AnswerError naming `where` and the cause."""
        return self.task_type.parse_answer(value, self.classes, where, item)


def schema(task_type: str, classes: Sequence[str]) -> LabelSchema:
    return LabelSchema(task_type, tuple(str(c) for c in classes))


register(Classification())
register(MultiLabel())
register(Spans())
register(Pairs())
