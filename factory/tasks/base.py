"""The task-type contract: what one kind of labelling work (a class per item, a set of tags, ...) defines.

A task type is one module of ``factory.tasks`` registered by name (``task.type`` in a spec).  It owns, in
one place, everything that differs between kinds of work; the ledger, the answer door, releases and the
Label Studio bridge ask the type instead of assuming one class per item.  Stored labels are *strings*
(the ledger's ``label`` column): each type has one canonical text form of an answer, made by
:meth:`TaskType.parse_answer`, and :meth:`TaskType.decode` turns it back into the Python value releases
carry.

Adding a type is a local change: a new module defining a class that satisfies :class:`TaskType`, its
``register`` call in ``factory/tasks/__init__.py``, and its tests.  ``pipeline_ready`` says whether the
batch pipeline (labelers, routing, final labels) runs the type yet; a spec naming a registered type that
is not pipeline-ready is refused with that reason, so nothing half-works silently.
"""
from __future__ import annotations

from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import pandas as pd

from factory.errors import TaskError


class AnswerError(TaskError):
    """An answer, prediction or gold label that does not fit the dataset's task type and classes."""


@runtime_checkable
class TaskType(Protocol):
    """One kind of labelling work.  Every method is a pure function of its arguments (no database)."""

    name: ClassVar[str]
    """The spec's ``task.type`` value."""
    pipeline_ready: ClassVar[bool]
    """True when the batch pipeline (labelers, fusion, routing, final labels, release) runs this type."""
    widget: ClassVar[str]
    """The workbench widget that shows the answer form (``choices``, ``checkboxes``, ...)."""
    shortcuts: ClassVar[str]
    """The widget's keyboard shortcuts, as the workbench's help shows them."""

    def spec_errors(self, classes: Sequence[str]) -> list[str]:
        """What is wrong with a spec's classes for this type (empty when fine)."""

    def parse_answer(self, value: Any, classes: Sequence[str], where: str = "", item: dict | None = None) -> str:
        """A person's answer, a model's prediction or a gold label in its canonical stored text form.

        ``item`` is what the type may need to know of the item (spans: ``n_tokens`` for the bounds).
        Raises :class:`AnswerError` naming ``where`` (file and row, task id) and the cause."""

    def decode(self, stored: str) -> Any:
        """The canonical text form back into the value a release carries (a class name, a list, ...)."""

    def encode(self, value: Any) -> Any:
        """The inverse of :meth:`decode`: a released value back to the canonical stored text (what a release
        read back is compared with the ledger's events in)."""

    def fuse(self, answers: pd.DataFrame, classes: Sequence[str], items: pd.DataFrame | None = None) -> pd.DataFrame:
        """Fuse ``item_id, worker_id, label`` answers (canonical labels) into one row per item (index
        ``item_id``): ``label`` (canonical), ``confidence`` (the fused label's posterior probability).
        ``items`` (``item_id`` plus what the type needs, e.g. ``n_tokens``) is the items' recorded context."""

    def agreement(self, answers: pd.DataFrame, classes: Sequence[str], items: pd.DataFrame | None = None) -> dict:
        """Inter-annotator agreement of ``item_id, worker_id, label`` answers: what kappa / alpha mean for
        this type, as ``{"measure": value, ...}`` (nan where undefined)."""

    def expectations(self, classes: Sequence[str], column: str = "label") -> list[dict]:
        """Great Expectations configurations (``{"type", "kwargs"}``) every final label of this type meets."""

    def hf_feature(self, classes: Sequence[str]) -> dict:
        """The Hugging Face ``datasets`` feature of the label column, in the card's YAML form (the value of
        ``dtype`` in ``dataset_info.features``)."""

    def croissant_field(self, classes: Sequence[str]) -> dict:
        """Extra keys of the Croissant ``labels/label`` field (the reference to the ``classes`` record set,
        whether it repeats)."""

    def labelstudio_config(self, classes: Sequence[str], from_name: str, to_name: str) -> str:
        """The Label Studio control tag for this type (inside the project's ``<View>``)."""

    def to_labelstudio(self, stored: str, from_name: str, to_name: str) -> list[dict]:
        """A stored label as Label Studio ``result`` entries (predictions and exported answers)."""

    def from_labelstudio(self, results: list[dict], classes: Sequence[str], where: str = "") -> str:
        """Label Studio ``result`` entries of one annotation to the canonical stored label; AnswerError if
        they do not make one answer of this type."""


class TaskTypeBase:
    """Defaults of the optional hooks below, for a type whose item is one text column (``task.input``).

    A type overrides what differs (``pairs``: two columns and an optional records file; ``spans``: a recorded
    tokenisation).  The core (spec, ingest, pipeline, release) calls these and never a type's name."""

    #: The optional ``task.*`` spec fields this type reads besides ``input`` (pairs: ``left``, ``right``,
    #: ``records``, ``record_fields``).  A spec that sets one the type does not read is refused, naming it.
    spec_fields: ClassVar[tuple[str, ...]] = ()

    def input_fields(self, task: Any) -> tuple[tuple[str, str], ...]:
        """``(spec field, column)`` of each column of an ingested file that holds what people and models read:
        ``(("input", task.input),)`` by default; pairs ``(("left", task.left), ("right", task.right))``.  A file
        missing one is refused naming the spec field; a folder of ``.txt`` files (one text each) is refused for a
        type that reads more than one column."""
        return (("input", task.input),)

    def task_errors(self, task: Any) -> list[str]:
        """What is wrong with the spec's ``task`` section for this type beyond its fields' own checks (empty
        when fine); pairs: ``left`` and ``right`` both given and different."""
        return []

    def load_context(self, path: Any, task: Any) -> Any:
        """What ingest loads once per file before reading rows (pairs: the records file ``task.records``,
        relative to the ingested file's folder), passed to :meth:`item_payload`; None by default.  Raises
        :class:`factory.errors.IngestError` naming the file and the cause."""
        return None

    # -- batch pipeline defaults (see BatchHooks)
    #: One class per item whose classes have shares: the spec's priors and the seed's class shares feed routing's
    #: bias check (a set or a span list has no class share).
    class_shares: ClassVar[bool] = False
    #: Escalation and final labels of people's answers go through :mod:`factory.loop` (per-class probability
    #: vectors, worker reliabilities: one class per item); otherwise the type's ``fuse_with_models`` fuses
    #: people's answers with the models' pooled one.
    people_loop: ClassVar[bool] = False

    def with_confidence(self, fused: pd.DataFrame, confidence: Any) -> pd.DataFrame:
        """``fused`` with its ``confidence`` replaced by the calibrated one; the ``prob_<class>`` columns stay
        (a set's per-class marginals are not the set's probability).  Classification rescales them."""
        return fused.assign(confidence=confidence)

    def classes_of(self, stored: str) -> set[str]:
        """The classes a stored answer uses (what a spec rule's ``forbids`` is checked against)."""
        return {str(c) for c in self.decode(stored)}

    def item_payload(self, row: dict, task: Any, context: Any) -> tuple[Any, str, str | None]:
        """One ingested row's stored item text: ``(payload, field at fault, problem)``.  ``problem`` None lets
        ingest check ``payload`` as any text (missing, not a string, too long, empty); a type that builds its
        text itself (pairs: the two sides as canonical JSON) returns the problem it found with the row."""
        return row.get(task.input), task.input, None

    def encode(self, value: Any) -> Any:
        """A released label value (what :meth:`decode` gives: a class name, a list of classes, a list of span
        dicts) back to the canonical stored text, so a release read back compares with the ledger's events.
        Text passes unchanged; one class per item: the class name is its own canonical form."""
        return value

    # -- optional hooks: a type whose item or answer needs more than one text overrides them (``spans`` does);
    # the core reads these attributes and never a type's name.  A hook that is ``None`` is not used.

    #: ``spec_template() -> dict``: the parts of the commented spec ``factory init --type NAME`` writes that differ
    #: from the classification template (``type_line``, ``classes``, ``task``...); None: that template, this name.
    spec_template: ClassVar[Any] = None
    #: Extra optional columns an ingested file may carry for this type (spans: ``tokens``).
    input_columns: ClassVar[tuple[str, ...]] = ()
    #: ``item_fields(text, row) -> dict``: what ingest records in an item's metadata (spans: its tokens); None: nothing.
    item_fields: ClassVar[Any] = None
    #: True when the answer door checks an answer against the item (``item_context(meta)``: spans' ``n_tokens``).
    needs_item: ClassVar[bool] = False

    def item_context(self, meta: Any) -> dict | None:
        """What an answer is checked against on its item (spans: ``{"n_tokens": ...}``), from the item's stored
        metadata; read only when :attr:`needs_item`."""
        return None

    def labeler_input(self, items: pd.DataFrame) -> pd.DataFrame:
        """What the labelers read of each item: ``item_id, text`` (spans add the tokens)."""
        return items[["item_id", "text"]].reset_index(drop=True)

    #: ``item_table(items) -> DataFrame``: the items' recorded context the type's fusion needs (spans: ``item_id,
    #: tokens, n_tokens``); None: the fusion reads no item, and the pipeline does not load the batch's items for it.
    item_table: ClassVar[Any] = None
    #: ``predict_items(labeler, items, classes) -> (labels, confidences, probs)``: a labeler's answers when
    #: :meth:`decide` cannot make them from an items x classes matrix (spans: tagged per token); None: ``decide``.
    predict_items: ClassVar[Any] = None
    #: People correct the shown pre-annotation (spans): the workbench shows the models' answer whatever the spec says.
    shows_prelabel: ClassVar[bool] = False
    #: ``uncertain_classes(probs, classes) -> list of class lists``: the classes a flagged item's reasons name (sets).
    uncertain_classes: ClassVar[Any] = None
    #: ``audit_measures(final, level) -> dict``: the certificate's type-specific quality (spans: span P/R/F1).
    audit_measures: ClassVar[Any] = None

    # release and Label Studio: the type's own columns beside ``item_id, text, label``
    #: Names of extra release columns (JSON text inside the factory, lists in the files; spans: ``tokens, bio``).
    release_column_names: ClassVar[tuple[str, ...]] = ()
    #: ``release_columns(raw_items, labels) -> DataFrame`` of :attr:`release_column_names`; None: no extra columns.
    release_columns: ClassVar[Any] = None
    #: ``item_columns(text) -> dict``: columns made from the item's stored text (pairs: ``left``, ``right``).
    item_columns: ClassVar[Any] = None
    #: ``labelstudio_objects() -> str``: the Label Studio object tags shown (pairs: two texts); None: one ``Text``.
    labelstudio_objects: ClassVar[Any] = None

    def hf_extra_features(self, classes: Sequence[str]) -> dict:
        """Hugging Face features of :attr:`release_column_names` (spans: tokens, the BIO tags)."""
        return {}

    def croissant_extra_fields(self, classes: Sequence[str]) -> dict:
        """Croissant field keys of :attr:`release_column_names`, by column."""
        return {}


class BatchHooks(Protocol):
    """What a *pipeline-ready* type adds to :class:`TaskType` for the batch pipeline (``factory.pipeline``).

    Predictions and fused answers carry one ``prob_<class>`` column per class: a distribution over the
    classes (``answer_shape == "one"``) or per-class marginals (``"set"``: may this class be ticked?).
    """

    answer_shape: ClassVar[str]
    """``"one"`` (one class per item), ``"set"`` (a subset of the classes per item) or ``"spans"`` (typed token
    spans per item).

    The optional hooks a type overrides when its items or answers need more than one text (``input_columns``,
    ``item_fields``, ``needs_item`` + ``item_context``, ``labeler_input``, ``item_table``, ``predict_items``,
    ``shows_prelabel``, ``uncertain_classes``, ``audit_measures``, the release and Label Studio columns) are
    declared with their defaults and documented on :class:`TaskTypeBase`; the core reads them as attributes."""

    def make_labelers(self, seed: int = 0) -> list:
        """Unfitted labelers of differentiated families (``factory.labelers.Labeler`` subclasses) that fit on
        canonical stored labels and whose ``predict_proba`` gives the ``prob_<class>`` columns."""

    def labeler_suite(self) -> str:
        """Names and versions of those labelers (a model cache key: changed labeler code retrains)."""

    def decide(self, probs: Any, classes: Sequence[str]) -> tuple[Any, Any]:
        """A (items x classes) probability matrix -> the canonical labels and each label's probability."""

    # -- fusion and calibration: the pipeline calls these for every pipeline-ready type, never a type's name
    def pool_models(self, answers: pd.DataFrame, classes: Sequence[str], items: pd.DataFrame | None = None,
                    target: float | None = None) -> pd.DataFrame:
        """The labelers' answers (``item_id, worker_id, label, prob_<class>``; each labeler a worker) fused per
        item: index item_id, ``label``, ``confidence``, ``prob_<class>``.  ``items`` is ``item_table`` of the
        items (None for a type without one), ``target`` the spec's confidence threshold.  A type whose fusion
        routes each item itself adds ``route_reason`` ("" = may be accepted) and ``priority``; routing then
        follows them (spans: span routing) instead of the confidence threshold."""

    def cross_val_answers(self, make: Any, items: pd.DataFrame, labels: Sequence, classes: Sequence[str],
                          folds: int, seed: int) -> pd.DataFrame:
        """One labeler family's out-of-fold answers on the human-labelled ``items`` (``labeler_input``; ``make()``
        a fresh labeler): ``label`` and, where the type has them, ``prob_<class>``, one row per item in order.
        The pipeline fuses them with :meth:`pool_models` to calibrate the fused confidence."""

    def with_confidence(self, fused: pd.DataFrame, confidence: Any) -> pd.DataFrame:
        """``fused`` with the calibrated ``confidence`` (default: only that column; one class: the top class's
        probability, the others rescaled)."""

    # -- routing and people: which of the pipeline's rules apply to the type's answers
    class_shares: ClassVar[bool]
    """True for one class per item: the spec's priors and the seed's class shares feed routing's bias check."""
    people_loop: ClassVar[bool]
    """True: people's answers go through :mod:`factory.loop` (per-class vectors, reliabilities; one class per item).
    False: the type's ``fuse_with_models(people, models, classes[, items])`` fuses them with the models' pooled
    answer (one worker) and decides second opinions and final labels (sets, spans)."""

    def fuse_people(self, answers: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
        """Mode human-model: people's ``item_id, worker_id, label`` fused, index item_id, ``label``,
        ``confidence``, ``prob_<class>`` (a type not run in human-model need not define it)."""

    def suspect_answers(self, given: Sequence[str], oos: Any, classes: Sequence[str], people: Any = None,
                        index: Sequence | None = None) -> pd.DataFrame:
        """Mode human-model: which people's answers are probably wrong, from the labelers' out-of-sample
        ``prob_<class>`` matrix ``oos`` and people's posterior ``people``: ``flag``, ``reasons``; index ``index``."""

    def fuse_primary(self, answers: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
        """Mode prelabel-model: the primary labelers' answers (the verifier left out) fused per item, as
        :meth:`pool_models` returns them."""

    def verifier_accepts(self, fused: pd.DataFrame, verifier: pd.DataFrame, classes: Sequence[str],
                         accept: float) -> pd.Series:
        """Mode prelabel-model: True where the verifier labeler confirms the fused answer at ``accept``."""

    def classes_of(self, stored: str) -> set[str]:
        """The classes a stored answer uses (spec rules forbid classes for metadata values)."""
