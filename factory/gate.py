"""The one door every answer enters the ledger through: workforce rules, leases, blindness, idempotency, audit.

Every way a person's answer reaches the ledger calls `submit_answers`: `factory tasks answer`,
`factory tasks import`, `factory import label-studio`, the workbench's answer and arbitration
endpoints.  For each answer, in this order:

1. the target exists (a task, or for an item arbitration a disputed item), else 404;
2. the submitter's own replay of a `submission_id` returns their first event (idempotency is scoped
   to the submitter: someone else's submission id matches nothing);
3. the lease comes first: a task leased to someone else (or, with `require_lease`, not leased to the
   submitter) is refused with 409 *before anything about the task's answers is looked at*, and the
   refusal names nobody and shows no label;
4. the workforce rules (`workforce.answer_refusal`): suspended, under-tier, own label, arbitration
   by a registered expert with a rationale, registered-only above L1 (an unregistered person may
   answer L1 tasks only, and only where `workforce.registered_only` is false); a correction comes
   from the person who gave the answer or a registered expert;
5. the label is in the schema; the task is not answered by someone else (blind: 409 without
   their label or name);
6. the audit record: accepted answers become label events whose payload names the door
   (`source`) and the submission id; refusals of registered people become `refused_answer` events
   in their history.

A batch of answers (an import) is all-or-nothing: every answer is checked, every refusal is listed in
one report (where, cause), and only when none is refused are they all written, in one transaction.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from factory.disputes import disputed_items
from factory.errors import TaskError, TaskRefused
from factory.storage.ledger import TaskConflict, TaskNotFound, now
from factory.workforce import Workforce, answer_refusal, ensure_registry_tables, registry_rows

STATUS = {TaskNotFound: 404, TaskConflict: 409, TaskRefused: 403}
# what the ledger needs of a task's earlier answers to write the next one (Ledger._task_history's fields)
HISTORY_FIELDS = ("event_id", "kind", "actor", "label", "payload", "supersedes", "created_at")


@dataclass(frozen=True)
class Answer:
    """One answer at the door: a task's answer, or (task_id None, dataset + item_id) an item arbitration."""

    label: str
    annotator: str
    task_id: str | None = None
    dataset: str | None = None
    item_id: str | None = None
    rationale: str | None = None
    submission_id: str | None = None
    correct: bool = False
    where: str = ""                  # for the report: "answers.csv row 3", "task #2 (Label Studio id 7)"
    payload: dict | None = None      # extra provenance kept in the event (Label Studio ids)
    evidence: dict | None = None     # what an arbitrating expert saw


@dataclass(frozen=True)
class Refusal:
    """One refused answer: where it came from, why, and the error (its HTTP status for the API)."""

    where: str
    cause: str
    error: TaskError
    index: int | None = None         # position of the answer in the submitted sequence

    @property
    def status(self) -> int:
        return next((code for cls, code in STATUS.items() if isinstance(self.error, cls)), 422)


@dataclass
class GateReport:
    """What the gate did with a set of answers: each accepted one's event, or every refusal."""

    source: str
    checked: int = 0
    results: list[dict] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.refused

    @property
    def recorded(self) -> int:
        return sum(not r["duplicate"] for r in self.results)

    @property
    def duplicates(self) -> int:
        return sum(bool(r["duplicate"]) for r in self.results)

    def summary(self, what: str = "") -> str:
        """One report: counts, or 'nothing imported' and every refused answer with its place and cause."""
        head = f"{what}: " if what else ""
        if self.refused:
            return (f"{head}nothing imported, {len(self.refused)} refused answer(s) of {self.checked}:\n  "
                    + "\n  ".join(f"{r.where}: {r.cause}" if r.where else r.cause for r in self.refused))
        verb = "would be recorded" if self.dry_run else "recorded"
        return f"{head}{self.checked} answer(s) checked, {self.recorded} {verb}, {self.duplicates} already recorded"

    def raise_first(self) -> None:
        """Raise the first refusal's error (for doors that take one answer)."""
        if self.refused:
            raise self.refused[0].error


class _Context:
    """What the checks of one call read once: specs, the registry, tasks, leases.

    Everything is read on `conn`, the connection whose transaction then writes the answers: the checks
    and the write see one state of the ledger, and a submission costs one round trip per read."""

    def __init__(self, fx, answers: Sequence[Answer], spec_of=None, conn=None):
        self.fx, self.ledger, self.conn = fx, fx.ledger, conn
        self.spec_of = spec_of or fx.spec
        self.specs: dict = {}
        self.people = registry_rows(fx.ledger, [a.annotator for a in answers if a.annotator], conn=conn)
        self.disputed: dict[str, set[str]] = {}
        self.item_events: dict[tuple, object] = {}

    def spec(self, dataset: str):
        if dataset not in self.specs:
            self.specs[dataset] = self.spec_of(dataset)
        return self.specs[dataset]

    def events_of(self, dataset: str, item_id: str) -> list[dict]:
        """The item's human, correction and retraction events in chain order, as plain rows (a handful per item:
        pandas would cost more CPU than the whole answer)."""
        key = (dataset, item_id)
        if key not in self.item_events:
            self.item_events[key] = self.ledger.item_answers(self.conn, dataset, item_id)
        return self.item_events[key]

    def is_disputed(self, dataset: str, item_id: str) -> bool:
        if dataset not in self.disputed:
            self.disputed[dataset] = {d["item_id"] for d in disputed_items(self.fx, dataset)}
        return item_id in self.disputed[dataset]


def _live(ev: list[dict]) -> list[dict]:
    """Live answers among human/correction/retraction events (retracted ones removed)."""
    gone = {e["supersedes"] for e in ev if e["kind"] == "retraction" and e["supersedes"]}
    return [e for e in ev if e["kind"] != "retraction" and e["event_id"] not in gone]


def _lease_refusal(ctx: _Context, task_id: str, annotator: str, require_lease: bool, ts: str,
                   lease: dict | None | bool = False) -> TaskError | None:
    """The lease rule: nobody answers a task someone else holds; with `require_lease`, only its holder does.
    `lease` is the task's lease when the caller read it already (None: never leased)."""
    a = ctx.ledger.assignment(task_id) if lease is False else lease
    held = a is not None and a["lease_until"] >= ts
    if require_lease:
        if a is None or a["assignee"] != annotator:
            return TaskConflict(f"task '{task_id}' is not assigned to {annotator}; your answer was not recorded, "
                                f"take your next task with GET /api/tasks/next")
        if not held:
            return TaskConflict(f"your lease on task '{task_id}' expired at {a['lease_until']}; your answer was not "
                                f"recorded, take a fresh task with GET /api/tasks/next")
        return None
    if held and a["assignee"] != annotator:
        return TaskConflict(f"task '{task_id}' is held by another person right now; your answer was not recorded")
    return None


def _own_replay(ctx: _Context, t: dict, a: Answer) -> dict | None:
    """The submitter's own earlier event with this submission id (same label), or None; another label is a 409."""
    if not a.submission_id:
        return None
    for r in ctx.events_of(t["dataset"], t["item_id"]):
        if r["task_id"] != t["task_id"] or r["actor"] != a.annotator or r["kind"] == "retraction":
            continue
        if json.loads(r["payload"]).get("submission_id") == a.submission_id:
            if r["label"] != str(a.label):
                raise TaskConflict(f"task '{t['task_id']}': submission '{a.submission_id}' was already recorded "
                                   f"with label '{r['label']}'; a retry must carry the same answer")
            return {"task_id": t["task_id"], "event_id": r["event_id"], "duplicate": True}
    return None


def _check(ctx: _Context, a: Answer, *, source: str, require_lease: bool) -> tuple[dict | None, dict | None]:
    """Check one answer; returns (entry to write, None) or (None, result of an own replay); raises the refusal."""
    ts = now()
    if not a.annotator or not str(a.annotator).strip():
        raise TaskError("an answer needs an annotator id")
    if a.task_id is None:  # an item arbitration (the workbench's arbitration endpoint)
        if not a.dataset or not a.item_id:
            raise TaskError("an arbitration names the dataset and the item")
        if not ctx.ledger.items(a.dataset, item_ids=[a.item_id]).shape[0]:
            raise TaskNotFound(f"item '{a.item_id}' is not in dataset '{a.dataset}'")
        t = {"task_id": f"item {a.item_id}", "dataset": a.dataset, "item_id": a.item_id, "kind": "arbitrate",
             "required_tier": "expert", "batch_id": None}
    else:
        t = ctx.ledger.task_with_lease(ctx.conn, a.task_id)
        if t is None:
            raise TaskNotFound(f"task '{a.task_id}': no such task; list open tasks with `factory tasks list`")
        replay = _own_replay(ctx, t, a)
        if replay is not None:
            return None, replay
        own = [e for e in _live(ctx.events_of(t["dataset"], t["item_id"])) if e["task_id"] == t["task_id"]]
        if own and own[0]["actor"] == a.annotator and not a.correct:  # one's own answer: nothing hidden
            if own[0]["label"] == str(a.label):
                return None, {"task_id": t["task_id"], "event_id": own[0]["event_id"], "duplicate": True}
            raise TaskConflict(f"task '{t['task_id']}' was already answered '{own[0]['label']}' by "
                               f"{a.annotator}; to correct it, answer again with --correct (the first answer is "
                               f"kept and superseded; on the workbench: undo with U within the grace period)")
    spec = ctx.spec(t["dataset"])
    # the lease first: nothing about a task someone else holds is looked at, let alone shown
    if t["kind"] == "arbitrate":  # an arbitration writes onto every task of the item: none may be held by another
        all_tasks = ctx.ledger.tasks(t["dataset"])
        open_tasks = all_tasks[(all_tasks["item_id"] == t["item_id"]) & (all_tasks["status"] == "open")]
        for tid in open_tasks["task_id"]:
            err = _lease_refusal(ctx, tid, a.annotator, require_lease and tid == a.task_id, ts)
            if err is not None:
                raise TaskConflict(f"item '{t['item_id']}' has a task held by another person right now; the "
                                   f"arbitration was not recorded, try again when the lease ends")
    else:
        err = _lease_refusal(ctx, t["task_id"], a.annotator, require_lease, ts, lease=t["lease"])
        if err is not None:
            raise err
    ev = ctx.events_of(t["dataset"], t["item_id"])
    live = _live(ev)
    others = {e["actor"] for e in live if e["task_id"] != t["task_id"]}
    person = ctx.people.get(a.annotator)
    err = answer_refusal(spec, person, t, a.annotator, item_answered_by=others, rationale=a.rationale)
    if err is not None:
        raise err
    label = spec.label_schema.parse(a.label)  # the task type checks and canonicalises (where: the caller's row)
    meta = {"spec_version": spec.version, "guideline_version": spec.guideline.version, "source": source,
            "submission_id": a.submission_id}
    if t["kind"] == "arbitrate":
        if a.task_id is None and not ctx.is_disputed(t["dataset"], t["item_id"]):
            raise TaskConflict(f"item '{t['item_id']}' is not disputed (people agree and no expert task is open); "
                               f"there is nothing to arbitrate")
        return dict(meta, arbitration=True, dataset=t["dataset"], item_id=t["item_id"], label=label,
                    annotator=a.annotator, rationale=str(a.rationale).strip(), evidence=a.evidence,
                    task_id=a.task_id), None
    mine = [e for e in live if e["task_id"] == t["task_id"]]
    if mine:
        first = mine[0]
        if a.correct:
            is_expert = person is not None and person["tier"] == "expert"
            if mine[-1]["actor"] != a.annotator and not is_expert:
                raise TaskRefused(f"task '{t['task_id']}': only the person who answered it or a registered expert "
                                  f"may correct it")
        elif first["actor"] != a.annotator:  # blind: neither the other person's label nor their name
            raise TaskConflict(f"task '{t['task_id']}' was already answered by another person; your answer was not "
                               f"recorded")
        elif first["label"] != label:
            raise TaskConflict(f"task '{t['task_id']}' is already answered '{first['label']}' by {a.annotator}; "
                               f"to correct it, answer again with --correct")
        else:
            return None, {"task_id": t["task_id"], "event_id": first["event_id"], "duplicate": True}
    elif a.correct:
        raise TaskError(f"task '{t['task_id']}': nothing to correct, the task has no answer yet")
    task = {k: v for k, v in t.items() if k != "lease"}
    history = [{k: e[k] for k in HISTORY_FIELDS} for e in ev if e["task_id"] == t["task_id"]]
    return dict(meta, task_id=t["task_id"], label=label, annotator=a.annotator, correct=a.correct,
                require_lease=require_lease, payload=a.payload, task=task, history=history), None


def submit_answers(fx, answers: Sequence[Answer], *, source: str, require_lease: bool = False,
                   dry_run: bool = False, spec_of=None) -> GateReport:
    """Check every answer against every rule; write all of them in one transaction, or none and report why.

    `source` names the door (cli, import, label-studio, web, web-arbitration) in each event's
    payload; `require_lease` (the workbench) accepts a task's answer only from its lease holder;
    `spec_of(dataset)` loads a spec (default `fx.spec`; the workbench passes its cache).  The checks
    read in the transaction that writes (one connection, one commit per call).
    """
    rep = GateReport(source=source, checked=len(answers), dry_run=dry_run)
    ensure_registry_tables(fx.ledger)
    with fx.ledger.engine.connect() as c:
        tx = c.begin()
        try:
            ctx = _Context(fx, answers, spec_of, conn=c)
            _check_and_write(ctx, answers, rep, source=source, require_lease=require_lease, dry_run=dry_run)
        except BaseException:
            tx.rollback()
            raise
        if rep.refused or dry_run or not rep.recorded:
            tx.rollback()  # nothing written (a refusal, a dry run, or only replays of recorded answers)
        else:
            tx.commit()
    if rep.refused:
        _log_refusals(ctx, answers, rep, dry_run)
    return rep


def _check_and_write(ctx: _Context, answers: Sequence[Answer], rep: GateReport, *, source: str,
                     require_lease: bool, dry_run: bool) -> None:
    plan: list[tuple[int, dict]] = []
    seen: dict[str, str] = {}
    replays: list[tuple[int, dict]] = []
    for n, a in enumerate(answers):
        try:
            if a.task_id is not None and a.task_id in seen:
                raise TaskError(f"task '{a.task_id}' appears twice (first at {seen[a.task_id]})")
            if a.task_id is not None:
                seen[a.task_id] = a.where or f"answer {n}"
            entry, replay = _check(ctx, a, source=source, require_lease=require_lease)
        except TaskError as e:
            rep.refused.append(Refusal(a.where, str(e), e, n))
            continue
        if replay is not None:
            replays.append((n, replay))
        else:
            plan.append((n, entry))
    if rep.refused:
        return
    results: dict[int, dict] = dict(replays)
    if any(e.get("arbitration") for _, e in plan):  # an arbitration writes onto tasks: let each answer re-read
        for _, e in plan:
            e.pop("task", None), e.pop("history", None)
    if plan and not dry_run:
        classes = {d: s.label_schema for d, s in ctx.specs.items()}
        try:
            written = ctx.ledger.answer_tasks([e for _, e in plan], classes, conn=ctx.conn)
        except TaskError as e:  # a race with another writer: nothing is written (the transaction rolls back)
            rep.refused.append(Refusal("", str(e), e))
            return
        for (n, e), w in zip(plan, written):
            results[n] = {"task_id": e.get("task_id"), "item_id": e.get("item_id"), **w,
                          "arbitration": bool(e.get("arbitration"))}
    elif plan:
        results.update({n: {"task_id": e.get("task_id"), "event_id": None, "duplicate": False,
                            "arbitration": bool(e.get("arbitration"))} for n, e in plan})
    rep.results = [results[n] for n in sorted(results)]


def _log_refusals(ctx: _Context, answers: Sequence[Answer], rep: GateReport, dry_run: bool) -> None:
    """The audit trail of refusals: a `refused_answer` event in each registered person's history."""
    if dry_run:
        return
    rows = [(answers[r.index] if r.index is not None else None, r) for r in rep.refused]
    rows = [(a, r) for a, r in rows if a is not None and a.annotator in ctx.people]
    if not rows:
        return
    wf = Workforce(ctx.ledger)
    with ctx.ledger.engine.begin() as c:
        for a, r in rows:
            wf._event(c, a.annotator, "refused_answer", r.cause,
                          {"task_id": a.task_id, "item_id": a.item_id, "source": rep.source})


def submit_answer(fx, answer: Answer, *, source: str, require_lease: bool = False, spec_of=None) -> dict:
    """One answer through `submit_answers`; returns its result (event_id, duplicate) or raises the refusal."""
    rep = submit_answers(fx, [answer], source=source, require_lease=require_lease, spec_of=spec_of)
    rep.raise_first()
    return rep.results[0]


def submit(fx, task_id: str, label: str, annotator: str, *, rationale: str | None = None, correct: bool = False,
           source: str = "cli") -> dict:
    """The command line's door: answer TASK_ID as ANNOTATOR (an arbitration task records the expert's decision)."""
    return submit_answer(fx, Answer(label=label, annotator=annotator, task_id=task_id, rationale=rationale,
                                    correct=correct, where=f"task {task_id}"), source=source)
