"""Tasks and answers: lease the next task, read one, answer, undo, skip (every answer through the gate)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel, Field

from factory.gate import Answer, submit_answer
from factory.web import data as D
from factory.web import models as M
from factory.web.auth import User, needs
from factory.web.context import EXPERT_TASK_KINDS, READERS, WORKERS, WebContext, get_web
from factory.workforce import next_task as dispatch_next_task

router = APIRouter()


class AnswerIn(BaseModel):
    label: str = Field(max_length=4096, description="One of the dataset's class names; multi-label: the ticked "
                                                     "classes joined by '|' (\"\" = none of them).")
    submission_id: str = Field(min_length=1, max_length=128,
                               description="Client-chosen id; resending the same submission is idempotent.")


class SkipIn(BaseModel):
    reason: str = Field(min_length=1, max_length=500, description="Why the task is skipped (unclear, not in schema, …).")


@router.get("/api/tasks/next", tags=["tasks"], response_model=M.TaskOut,
            responses={204: {"description": "Nothing left for you."}})
def next_task(dataset: str | None = None, user: User = needs(*WORKERS, write=True),
              web: WebContext = Depends(get_web)) -> Any:
    """Lease the next open task to the caller (or return the one they hold); 204 when the queue is empty."""
    # expert-tier tasks (arbitration) never reach annotators' queues
    # the dispatch policy the simulator uses too (workforce.can_take): tier, domain, registration, limits
    t = dispatch_next_task(web.fx, user.name, dataset=dataset, lease_seconds=web.lease_seconds,
                           exclude_kinds=EXPERT_TASK_KINDS if user.role != "expert" else None,
                           spec_of=web.specs.get, with_item=True)
    if t is None:
        return Response(status_code=204)
    return D.task_payload(web.fx, web.specs, t)


@router.get("/api/tasks/{task_id}", tags=["tasks"])
def get_task(task_id: str, user: User = needs(*WORKERS, *READERS), web: WebContext = Depends(get_web)) -> M.TaskOut:
    """One task; annotators see only tasks assigned to them."""
    t = web.fx.ledger.task(task_id)
    if t is None:
        raise HTTPException(404, f"task '{task_id}': no such task")
    a = web.fx.ledger.assignment(task_id)
    if user.role == "annotator" and (a is None or a["assignee"] != user.name):
        raise HTTPException(404, f"task '{task_id}': no such task among yours")
    return D.task_payload(web.fx, web.specs, dict(t, lease_until=a["lease_until"] if a else None))


@router.post("/api/tasks/{task_id}/answer", tags=["tasks"], status_code=201,
             responses={200: {"description": "The same submission was already recorded (idempotent retry)."},
                        404: {"description": "No such task."},
                        409: {"description": "Answered differently already, lease expired, or reassigned."},
                        422: {"description": "Label not in the dataset's schema."}})
def answer(task_id: str, body: AnswerIn, response: Response,
           user: User = needs(*WORKERS, write=True), web: WebContext = Depends(get_web)) -> M.AnswerOut:
    """Answer a task you hold; idempotent by `submission_id`."""
    # the gate: lease first (409 naming nobody), then the workforce rules (403), schema (422), idempotency
    res = submit_answer(web.fx, Answer(label=body.label, annotator=user.name, task_id=task_id,
                                       submission_id=body.submission_id, where=f"task {task_id}"),
                        source="web", require_lease=True, spec_of=web.specs.get)
    if res["duplicate"]:
        response.status_code = 200
    return {"task_id": task_id, "label": body.label, "event_id": res["event_id"], "duplicate": res["duplicate"],
            "undo_seconds": web.undo_grace_seconds if not res["duplicate"] else None}


@router.post("/api/tasks/{task_id}/undo", tags=["tasks"])
def undo(task_id: str, user: User = needs(*WORKERS, write=True), web: WebContext = Depends(get_web)) -> M.UndoOut:
    """Withdraw your answer within the grace period (a retraction event); the task comes back to you."""
    return web.fx.ledger.retract_answer(task_id, user.name, grace_seconds=web.undo_grace_seconds,
                                        lease_seconds=web.lease_seconds)


@router.post("/api/tasks/{task_id}/skip", tags=["tasks"])
def skip(task_id: str, body: SkipIn, user: User = needs(*WORKERS, write=True),
         web: WebContext = Depends(get_web)) -> M.EventOut:
    """Pass on a task you hold, with a reason; it returns to the pool (not to you)."""
    return web.fx.ledger.skip_task(task_id, user.name, body.reason)
