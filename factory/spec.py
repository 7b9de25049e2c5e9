"""Dataset specs: the YAML a team writes to declare a dataset, validated with errors that name the field."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from factory import tasks
from factory.errors import SpecError

#: Task types named in the schema before they are built: refused with "not implemented yet" (a registered type
#: of factory.tasks is accepted by its name; see factory.tasks.register).
RESERVED_TYPES = ("boxes",)
MODES = ("prelabel-human", "human-model", "prelabel-model")
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSpec(_Strict):
    # a registered task type (factory.tasks) or a reserved name; DatasetSpec refuses anything else, naming them
    type: str = Field(default="classification", min_length=1, max_length=64)
    input: str = "text"
    metadata: tuple[str, ...] = ()
    # the column holding the user's own item ids (e.g. review_id): kept through the ledger, task list, trace,
    # exports and releases.  Left out of the dump when unset, so existing specs keep their version.
    id_column: str | None = Field(default=None, min_length=1, max_length=128, exclude_if=lambda v: v is None)
    # type pairs: the two columns holding the sides of a pair (texts, or record ids into `records`, a CSV
    # with a record_id column, relative to the ingested file's folder or absolute); `record_fields` the
    # record columns shown (default: all but record_id).  Left out of the dump when unset.
    left: str | None = Field(default=None, min_length=1, max_length=128, exclude_if=lambda v: v is None)
    right: str | None = Field(default=None, min_length=1, max_length=128, exclude_if=lambda v: v is None)
    records: str | None = Field(default=None, min_length=1, exclude_if=lambda v: v is None)
    record_fields: tuple[str, ...] = Field(default=(), exclude_if=lambda v: not v)

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The columns of an ingested file that hold what people and models read (the type says which)."""
        return tuple(col for _, col in self.input_fields)

    @property
    def input_fields(self) -> tuple[tuple[str, str], ...]:
        """``(spec field, column)`` per input column: the type's ``input_fields`` (``task.input`` by default)."""
        if self.type not in tasks.names():  # unknown: DatasetSpec refuses it with the registered names
            return (("input", self.input),)
        return tuple(tasks.get(self.type).input_fields(self))

    @model_validator(mode="after")
    def _type_fields(self) -> "TaskSpec":
        """The optional fields a type reads (its ``spec_fields``; pairs: left, right, records, record_fields) are
        refused for a type that does not read them; the type then checks its section (``task_errors``)."""
        if self.type not in tasks.names():
            return self
        tt = tasks.get(self.type)
        optional = sorted({f for n in tasks.names() for f in tasks.get(n).spec_fields}, key=list(TaskSpec.model_fields).index)
        given = [f for f in optional if getattr(self, f) and f not in tt.spec_fields]
        if given:
            owners = [n for n in tasks.names() if set(given) & set(tasks.get(n).spec_fields)]
            raise ValueError(f"task.{', task.'.join(given)}: only for task.type {' or '.join(owners)} (this spec is "
                             f"{self.type}; its items are read from task.input '{self.input}')")
        errors = tt.task_errors(self)
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @model_validator(mode="after")
    def _id_column(self) -> "TaskSpec":
        if self.id_column is not None and (self.id_column == self.input or self.id_column in self.metadata):
            raise ValueError(f"id_column '{self.id_column}' must be its own column, not task.input or a "
                             f"task.metadata field")
        if self.id_column in ("item_id",):
            raise ValueError("id_column 'item_id' is the factory's own id; name your id column differently")
        return self


class ClassSpec(_Strict):
    name: str = Field(min_length=1)
    definition: str = Field(min_length=1)
    prior: float | None = Field(default=None, gt=0, le=1)


class GuidelineSpec(_Strict):
    version: str = Field(min_length=1)
    text: str = ""


class SeedSpec(_Strict):
    size: int = Field(default=100, ge=2)


def _is_none(v) -> bool:
    return v is None


QUALITY_GATES = ("audit_accuracy", "gold_accuracy", "completeness", "prior_tv_distance", "machine_people_kappa",
                 "people_alpha", "pii_items")


class AutoAcceptSpec(_Strict):
    """Auto-accept with a guarantee: error among auto-accepted items <= epsilon with probability >= 1 - delta."""

    epsilon: float = Field(default=0.05, gt=0, lt=1)
    delta: float = Field(default=0.1, gt=0, lt=1)


class QualitySpec(_Strict):
    confidence_threshold: float = Field(default=0.9, ge=0, le=1)
    audit_rate: float = Field(default=0.02, ge=0, le=1)
    bias_ratio: float = Field(default=2.0, gt=1)
    min_accuracy: float = Field(default=0.9, ge=0, le=1)
    max_quarantine_rate: float = Field(default=0.1, ge=0, le=1)
    # the quality standard (checks/standards/<id>-<version>.json) this dataset is checked against.
    # Issue-6 fields are left out of the dump (and so of the spec version) at their defaults: adding them
    # changed no existing spec's version.
    standard: str = Field(default="factory-default-1.1.0", exclude_if=lambda v: v == "factory-default-1.1.0")
    # measured quality (factory/quality.py): interval kind, level, thresholds, and which gates block a release
    interval: Literal["wilson", "clopper-pearson"] = Field(default="wilson", exclude_if=lambda v: v == "wilson")
    confidence_level: float = Field(default=0.95, gt=0.5, lt=1, exclude_if=lambda v: v == 0.95)
    # min_accuracy always blocks a release; by default on the interval's lower bound (a certificate), or on the
    # point estimate when a spec says `accuracy_gate: estimate` (the certificate then says it is not certified).
    # The default moved from estimate to lower_bound; defaults stay out of the dump, so a spec that does not
    # write the field keeps its version (the certificate records the rule applied), and one that wrote
    # `estimate` now shows it in its dump: its version changed, and so it should.
    accuracy_gate: Literal["lower_bound", "estimate"] = Field(default="lower_bound",
                                                              exclude_if=lambda v: v == "lower_bound")
    min_gold_accuracy: float | None = Field(default=None, ge=0, le=1, exclude_if=_is_none)
    min_completeness: float | None = Field(default=1.0, ge=0, le=1, exclude_if=lambda v: v == 1.0)
    max_prior_distance: float | None = Field(default=None, ge=0, le=1, exclude_if=_is_none)
    min_kappa: float | None = Field(default=None, ge=-1, le=1, exclude_if=_is_none)
    min_alpha: float | None = Field(default=None, ge=-1, le=1, exclude_if=_is_none)
    max_pii_items: int | None = Field(default=None, ge=0, exclude_if=_is_none)
    blocking: tuple[str, ...] = Field(default=(), exclude_if=lambda v: not v)
    gold: str | None = Field(default=None, exclude_if=_is_none)  # CSV (item_id or text, label) of known-correct labels, relative to the factory root
    auto_accept: AutoAcceptSpec = Field(default=AutoAcceptSpec(), exclude_if=lambda v: v == AutoAcceptSpec())

    @field_validator("standard")
    @classmethod
    def _standard_exists(cls, v: str) -> str:
        from checks.standards import STANDARDS_DIR

        if not (STANDARDS_DIR / f"{v}.json").is_file():
            known = sorted(p.stem for p in STANDARDS_DIR.glob("*.json"))
            raise ValueError(f"unknown quality standard '{v}'; known: {known}")
        return v

    @field_validator("blocking")
    @classmethod
    def _known_gates(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [g for g in v if g not in QUALITY_GATES]
        if bad:
            raise ValueError(f"unknown quality gate(s) {bad}; known: {list(QUALITY_GATES)}")
        return v


class ReviewSpec(_Strict):
    budget: float | int = Field(default=0.5, ge=0)
    # whether the workbench shows people the models' fused label; False keeps human answers blind.
    # Left out of the dump (and so of the spec version) at its default, so adding it changed no spec's version.
    show_model_suggestion: bool = Field(default=True, exclude_if=lambda v: v is True)

    def items_allowed(self, n_items: int) -> int:
        """How many of a batch's n_items may go to people."""
        if isinstance(self.budget, float) and self.budget <= 1:
            return int(round(self.budget * n_items))
        return int(self.budget)


class ComplianceSpec(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    grade: Literal["general", "important", "core"] = Field(default="general", alias="class")
    personal_information: tuple[str, ...] = ()
    # roles that may read an item's raw (unredacted) payload; left out of the dump at its default
    raw_readers: tuple[str, ...] = Field(default=("operator",), exclude_if=lambda v: tuple(v) == ("operator",))


class DeliverySpec(_Strict):
    """How deliveries to clients are metered: the tokenizer that counts text tokens."""

    tokenizer: Literal["whitespace-cjk", "whitespace", "characters"] = "whitespace-cjk"


Tier = Literal["L1", "L2", "L3", "expert"]
Mode = Literal["prelabel-human", "human-model", "prelabel-model"]


class HumanModelSpec(_Strict):
    """Mode human-model: people label every item first (overlap k), models verify afterwards."""

    overlap: int = Field(default=2, ge=1, le=10)
    flag_tier: Tier = "L3"          # who re-checks a flagged item
    verify_with: int = Field(default=3, ge=2, le=10)  # cross-validation folds for out-of-sample probabilities


class PrelabelModelSpec(_Strict):
    """Mode prelabel-model: labelers pre-label, an independent verifier model re-checks."""

    # the joint probability (fused labelers x verifier, independent evidence) an agreed label needs
    accept_confidence: float = Field(default=0.9, ge=0, le=1)
    on_disagreement: Literal["to-human", "exclude"] = "to-human"
    audit_rate: float = Field(default=0.01, ge=0, le=1)


class SliceRule(_Strict):
    """Items whose metadata `field` equals one of `equals` are handled in `mode`."""

    field: str
    equals: tuple[str | int | float | bool, ...]
    mode: Mode


class LogicRule(_Strict):
    """A logic rule on labels: when metadata `field` equals `equals`, the classes in `forbids` are anomalies."""

    name: str = Field(min_length=1)
    field: str
    equals: tuple[str | int | float | bool, ...]
    forbids: tuple[str, ...] = Field(min_length=1)


class ValueRule(_Strict):
    """Value at stake: items whose metadata `field` is above `above` need at least `tier`."""

    field: str
    above: float
    tier: Tier


class WorkforceSpec(_Strict):
    """The tiered expert network: certification, honeypots, scores, risk-based dispatch."""

    gold_rate: float = Field(default=0.0, ge=0, le=0.5)   # hidden gold items mixed into each batch's queue
    test_size: int = Field(default=10, ge=1)               # qualification test length (gold items)
    pass_threshold: dict[str, float] = Field(default_factory=lambda: {"L1": 0.7, "L2": 0.8, "L3": 0.9, "expert": 0.95})
    suspend_below: float = Field(default=0.7, ge=0, le=1)
    promote_above: float = Field(default=0.95, ge=0, le=1)
    min_gold_answers: int = Field(default=10, ge=1)
    seconds_per_answer: dict[str, float] = Field(default_factory=lambda: {"L1": 20, "L2": 30, "L3": 45, "expert": 90})
    disagreement_tier: Tier = "L2"     # models disagree -> at least this tier
    uncertain_tier: Tier = "L1"        # low fused confidence -> at least this tier
    class_tiers: dict[str, Tier] = Field(default_factory=dict)  # a predicted class that needs a higher tier
    sensitive_tier: Tier = "L2"        # compliance grade important/core -> at least this tier
    value_rules: tuple[ValueRule, ...] = ()  # value at stake (a metadata field above a bound) -> at least a tier
    domain: str | None = None          # the experts' domain that arbitrates this dataset
    registered_only: bool = False      # refuse answers from people not in the registry
    default_reliability: float = Field(default=0.9, gt=0.5, lt=1)  # assumed accuracy of a person without gold record

    @model_validator(mode="after")
    def _tiers(self) -> "WorkforceSpec":
        for name, d in (("pass_threshold", self.pass_threshold), ("seconds_per_answer", self.seconds_per_answer)):
            bad = [k for k in d if k not in ("L1", "L2", "L3", "expert")]
            if bad:
                raise ValueError(f"workforce.{name}: unknown tier(s) {bad}; use L1, L2, L3, expert")
        return self


class DatasetSpec(_Strict):
    name: str
    description: str = Field(min_length=1)
    license: str = Field(min_length=1)
    task: TaskSpec = TaskSpec()
    classes: tuple[ClassSpec, ...] = Field(min_length=2)
    guideline: GuidelineSpec
    mode: Literal["prelabel-human", "human-model", "prelabel-model"] = "prelabel-human"
    seed: SeedSpec = SeedSpec()
    quality: QualitySpec = QualitySpec()
    review: ReviewSpec = ReviewSpec()
    splits: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1})
    compliance: ComplianceSpec = ComplianceSpec()
    delivery: DeliverySpec = Field(default=DeliverySpec(), exclude_if=lambda v: v == DeliverySpec())
    human_model: HumanModelSpec = HumanModelSpec()
    prelabel_model: PrelabelModelSpec = PrelabelModelSpec()
    slices: tuple[SliceRule, ...] = ()
    rules: tuple[LogicRule, ...] = ()
    workforce: WorkforceSpec = WorkforceSpec()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must be lowercase letters, digits, '-' or '_', starting with a letter")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "DatasetSpec":
        names = [c.name for c in self.classes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"classes: duplicate class names {dupes}")
        if self.task.type not in tasks.names():
            if self.task.type in RESERVED_TYPES:
                raise ValueError(f"task.type '{self.task.type}' is reserved in the schema but not implemented yet; "
                                 f"use one of {tasks.names(pipeline_ready=True)}")
            try:
                tasks.get(self.task.type)
            except KeyError as e:  # names the closest registered type
                raise ValueError(f"task.type: {e.args[0]}") from None
        if not tasks.get(self.task.type).pipeline_ready:
            raise ValueError(f"task.type '{self.task.type}' is registered (answers, fusion, agreement, release "
                             f"features, Label Studio: factory/tasks/) but the batch pipeline does not run it yet; "
                             f"use one of {tasks.names(pipeline_ready=True)}")
        modes = getattr(tasks.get(self.task.type), "modes", None)  # collaboration modes the type runs in
        used = sorted({self.mode, *(r.mode for r in self.slices)} - set(modes or ()))
        if modes is not None and used:
            raise ValueError(f"mode: task.type '{self.task.type}' runs in {list(modes)} only, not {used}")
        type_errors = tasks.get(self.task.type).spec_errors(names)
        if type_errors:
            raise ValueError("classes: " + "; ".join(type_errors))
        priors = [c.prior for c in self.classes if c.prior is not None]
        if priors and len(priors) != len(self.classes):
            raise ValueError("classes: give a prior for every class or for none")
        if priors and abs(sum(priors) - 1) > 0.01:
            raise ValueError(f"classes: priors sum to {sum(priors):.3f}, they must sum to 1")
        if not self.splits or any(v < 0 for v in self.splits.values()) or abs(sum(self.splits.values()) - 1) > 1e-6:
            raise ValueError(f"splits: ratios {self.splits} must be non-negative and sum to 1")
        unknown = sorted({c for r in self.rules for c in r.forbids} - set(names)
                         | set(self.workforce.class_tiers) - set(names))
        if unknown:
            raise ValueError(f"rules/workforce.class_tiers name classes not in the schema: {unknown}")
        meta = set(self.task.metadata)
        bad_fields = sorted({r.field for r in (*self.rules, *self.slices, *self.workforce.value_rules)} - meta)
        if bad_fields:
            raise ValueError(f"rules/slices/workforce.value_rules use field(s) {bad_fields} not declared in task.metadata")
        if self.task.input in self.task.metadata:
            raise ValueError("task.metadata must not repeat task.input")
        return self

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def task_type(self) -> "tasks.TaskType":
        """The registered task type (factory/tasks/) that owns this dataset's answers and label columns."""
        return tasks.get(self.task.type)

    @property
    def label_schema(self) -> tasks.LabelSchema:
        """The task type bound to the classes: every stored label is checked by it."""
        return tasks.schema(self.task.type, self.class_names)

    @property
    def prior(self) -> dict[str, float] | None:
        if self.classes[0].prior is None:
            return None
        return {c.name: float(c.prior) for c in self.classes}

    @property
    def version(self) -> str:
        """Content hash of the validated spec: editing any field yields a new version."""
        canon = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _format_errors(path: str, err: ValidationError) -> str:
    lines = [f"{path}: the dataset spec is invalid ({err.error_count()} problem(s)):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling (see `factory init` for the template)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  - field '{loc}': {msg}")
    return "\n".join(lines)


def parse_spec(data: dict, source: str = "<spec>") -> DatasetSpec:
    """Validate a spec given as a dict; SpecError names every field at fault."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a YAML mapping, got {type(data).__name__}")
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(_format_errors(source, e)) from None


def load_spec(path: str | Path) -> DatasetSpec:
    """Read and validate a dataset spec YAML file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found; create one with `factory init NAME`")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    return parse_spec(data, str(path))


def template(name: str, task_type: str = "classification") -> str:
    """The commented spec template `factory init NAME [--type TYPE]` writes.

    The type's ``spec_template()`` (if it has one) gives its ``task.type`` line, classes block and mode
    line, replacing the classification ones of templates/dataset.yaml."""
    if not NAME_RE.match(name):
        raise SpecError(f"dataset name '{name}' must be lowercase letters, digits, '-' or '_', starting with a letter")
    try:
        tt = tasks.get(task_type)
    except KeyError as e:
        raise SpecError(str(e).strip("'\"")) from None
    if not tt.pipeline_ready:
        raise SpecError(f"task type '{task_type}' is not run by the batch pipeline yet; "
                        f"use one of {tasks.names(pipeline_ready=True)}")
    text = (Path(__file__).parent / "templates" / "dataset.yaml").read_text(encoding="utf-8").format(name=name)
    if tt.spec_template is None and task_type == "classification":
        return text
    # a type without its own template gets the classification one with its name on the type line
    parts = tt.spec_template() if tt.spec_template is not None else \
        {"type_line": f"  type: {task_type:<20} # registered task types: {', '.join(tasks.names(pipeline_ready=True))}"}
    lines = text.split("\n")
    if "classes" in parts:
        start = next(i for i, ln in enumerate(lines) if ln.startswith("classes:"))
        end = next(i for i, ln in enumerate(lines) if ln.startswith("guideline:"))
        lines[start:end] = parts["classes"].rstrip("\n").split("\n") + [""]
    out = []
    for ln in lines:
        if ln.lstrip().startswith("type: classification"):
            ln = parts["type_line"]
        elif ln.lstrip().startswith("input: ") and "input_line" in parts:
            ln = parts["input_line"]
        elif ln.startswith("mode: ") and "mode_line" in parts:
            ln = parts["mode_line"]
        elif ln.lstrip().startswith("text: ") and "guideline_text" in parts:
            ln = parts["guideline_text"]
        out.append(ln)
    return "\n".join(out)
