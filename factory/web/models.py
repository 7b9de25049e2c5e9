"""Response models of the REST API: what generated clients get as types in /openapi.json.

Each model names the fields the workbench promises; `extra="allow"` lets a field added later by the core pass
through to clients instead of being dropped silently (the document then lags, never the data).
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class MeOut(Out):
    name: str
    role: str = Field(description="annotator, expert, operator, auditor or client")
    auth: str = Field(description="token (API) or session (pages)")


class LastAnswer(Out):
    event_id: str
    task_id: str | None = None
    label: str | None = None
    created_at: str
    dataset: str


class ProgressOut(Out):
    answered_today: int
    skipped_today: int
    open_tasks: int
    last_answer: LastAnswer | None = Field(None, description="Your last answer, while it can still be undone")
    undo_grace_seconds: float


class Span(Out):
    start: int
    end: int
    labelers: list[str]


class HighlightsOut(Out):
    available: bool
    spans: list[Span]
    tokens: dict[str, list[str]] = Field(description="The tokens each labeler relied on")
    why: str | None = Field(None, description="Why no highlights are available")


class SourceRow(Out):
    file: str
    row: int


class TraceTask(Out):
    task_id: str
    kind: str
    reasons: Any
    created_at: str


class TraceOut(Out):
    dataset: str
    item_id: str
    batch_id: str
    text: str
    source: SourceRow
    tasks: list[TraceTask]
    events: list[dict[str, Any]] = Field(description="Every ledger event of the item, in chain order")


class RawItemOut(Out):
    item_id: str
    dataset: str
    text: str = Field(description="The unredacted payload")


class BatchOut(Out):
    batch_id: str
    dataset: str
    items: int
    duplicates: int
    quarantined: int
    tasks: int
    open_tasks: int
    answered_tasks: int
    final_labels: bool
    created_at: str
    state: str


class TierQueue(Out):
    dataset: str
    tier: str = Field(description="The least tier offered these tasks: L1, L2, L3 or expert")
    open: int
    kinds: dict[str, int] = Field(description="Open tasks of this tier per task kind")


class OperatorSummaryOut(Out):
    queues: list[TierQueue] = Field(description="Open tasks per dataset and tier; the rows add up to open_tasks")
    open_tasks: int
    leased_now: int
    answers_last_hour: int
    answers_last_24h: int
    annotators_last_24h: int
    disputed_items: dict[str, int]
    dagster_url: str


class ReleaseOut(Out):
    dataset: str
    version: str
    items: int
    created_at: str
    manifest_sha256: str
    files: list[str] = Field(description="Paths inside the release folder (e.g. data/train.parquet)")


class FeedItem(Out):
    id: str
    url: str
    title: str
    date_published: str
    content_text: str


class FeedOut(Out):
    version: str
    title: str
    home_page_url: str
    feed_url: str
    items: list[FeedItem]


class UsageOut(Out):
    client: str
    dataset: str
    deliveries: int
    items: int
    bytes: int
    tokens: int


# ----------------------------------------------------------------------------- tasks
class ClassDef(Out):
    name: str
    definition: str | None = None


class GuidelineRef(Out):
    version: str
    text: str | None = None


class TaskOut(Out):
    task_id: str
    dataset: str
    batch_id: str
    item_id: str
    kind: str = Field(description="review, audit, second_opinion, arbitrate, … (a hidden gold task shows as audit)")
    reasons: list[str] = Field(description="Why the item was routed to people")
    lease_until: str | None = Field(None, description="Until when the caller holds the task (ISO 8601, UTC)")
    suggestion: str | None = Field(None, description="The models' label, if the spec lets people see it")
    suggestion_shown: bool
    classes: list[ClassDef]
    guideline: GuidelineRef
    text: str | None = None
    meta: dict[str, Any] | None = Field(None, description="The item's metadata columns")


class AnswerOut(Out):
    task_id: str
    label: str
    event_id: str
    duplicate: bool = Field(description="True when the same submission_id was already recorded")
    undo_seconds: float | None = Field(None, description="How long the answer can be undone (None on a retry)")


class UndoOut(Out):
    event_id: str = Field(description="The retraction event")
    retracted: str = Field(description="The answer event it withdraws")
    label: str | None = None


class EventOut(Out):
    event_id: str


# ----------------------------------------------------------------------------- arbitration
class DisputeOut(Out):
    dataset: str
    item_id: str
    batch_id: str
    why: list[str] = Field(description="Why the item needs an expert, in words")
    gap_flagged: bool = Field(description="An expert marked a guideline gap on this item")
    last_seq: int


class PersonReliability(Out):
    answers: int
    agrees_with_models: float | None = None
    agrees_with_experts: float | None = None
    n_expert_checked: int


class ModelReliability(Out):
    agreement: float
    n: int


class DisputeAnswer(Out):
    event_id: str
    kind: str = Field(description="human, correction or skip")
    actor: str
    label: str | None = None
    task_id: str | None = None
    created_at: str
    undone: bool
    reason: str | None = Field(None, description="A skip's reason")
    reliability: PersonReliability | None = None


class DisputeModel(Out):
    source: str
    label: str | None = None
    confidence: float | None = None
    probs: dict[str, float] | None = None
    reliability: ModelReliability | None = None


class FusionOut(Out):
    source: str
    label: str | None = None
    confidence: float | None = None


class GapNote(Out):
    actor: str
    note: str | None = None
    created_at: str


class DisputeDetailOut(Out):
    dataset: str
    item_id: str
    batch_id: str
    text: str
    classes: list[ClassDef]
    guideline: GuidelineRef
    answers: list[DisputeAnswer]
    models: list[DisputeModel]
    fusion: FusionOut | None = None
    gaps: list[GapNote]


class ArbitrateOut(Out):
    event_id: str = Field(description="The arbitration event")
    tasks: list[str] = Field(description="The item's tasks corrected to the expert's label")


class GapOut(Out):
    event_id: str | None = Field(None, description="The guideline-gap event (when the expert is not registered)")
    question_id: str | None = Field(None, description="The open guideline question (registered experts)")
    similar_items: list[str] | None = Field(None, description="Disputed items that look alike")
