"""Disputes: the items people did not resolve, an expert's decision on one, and guideline gaps it exposes."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from factory import guidelines
from factory.gate import Answer, submit_answer
from factory.web import data as D
from factory.web import models as M
from factory.web.auth import User, needs
from factory.web.context import WebContext, get_web
from factory.workforce import Workforce

router = APIRouter()


class ArbitrateIn(BaseModel):
    dataset: str
    label: str = Field(min_length=1, max_length=128)
    rationale: str = Field(min_length=1, max_length=4000, description="Mandatory: why this label.")


class GapIn(BaseModel):
    dataset: str
    note: str = Field(min_length=1, max_length=4000, description="What the guideline does not say.")


@router.get("/api/arbitration", tags=["arbitration"])
def disputes(dataset: str | None = None, user: User = needs("expert"),
             web: WebContext = Depends(get_web)) -> list[M.DisputeOut]:
    """Items people did not resolve (disagreement, audit contradiction, open skip), oldest first."""
    names = [web.dataset_name(dataset)] if dataset else sorted(set(web.fx.ledger.tasks()["dataset"]))
    return [d for n in names for d in D.disputed_items(web.fx, n)]


@router.get("/api/arbitration/{dataset}/{item_id}", tags=["arbitration"])
def dispute(dataset: str, item_id: str, user: User = needs("expert"),
            web: WebContext = Depends(get_web)) -> M.DisputeDetailOut:
    """The conflicting answers and model outputs, with their sources and reliabilities."""
    web.spec(dataset)
    web.ident("item id", item_id)
    d = D.arbitration_detail(web.fx, web.specs, dataset, item_id)
    if d is None:
        raise HTTPException(404, f"item '{item_id}' is not in dataset '{dataset}'")
    return d


@router.post("/api/items/{item_id}/arbitrate", tags=["arbitration"], status_code=201)
def arbitrate(item_id: str, body: ArbitrateIn, user: User = needs("expert", write=True),
              web: WebContext = Depends(get_web)) -> M.ArbitrateOut:
    """The expert's final decision with its rationale; corrections make every task of the item follow it."""
    web.spec(body.dataset)
    detail = D.arbitration_detail(web.fx, web.specs, body.dataset, item_id)
    if detail is None:
        raise HTTPException(404, f"item '{item_id}' is not in dataset '{body.dataset}'")
    evidence = {"answers": [{k: a[k] for k in ("event_id", "actor", "label", "kind")} for a in detail["answers"]],
                "models": [{k: m[k] for k in ("source", "label", "confidence")} for m in detail["models"]]}
    # the gate: a registered, active expert of the domain, a rationale, a disputed item, no task held by another
    res = submit_answer(web.fx, Answer(label=body.label, annotator=user.name, dataset=body.dataset, item_id=item_id,
                                       rationale=body.rationale, evidence=evidence, where=f"item {item_id}"),
                        source="web-arbitration", spec_of=web.specs.get)
    return {"event_id": res["event_id"], "tasks": res.get("tasks", [])}


@router.post("/api/items/{item_id}/guideline-gap", tags=["arbitration"], status_code=201)
def guideline_gap(item_id: str, body: GapIn, user: User = needs("expert", write=True),
                  web: WebContext = Depends(get_web)) -> M.GapOut:
    """Record that this item exposes a gap in the guideline (an event the guideline owners read)."""
    spec = web.spec(body.dataset)
    if user.name in set(Workforce(web.fx.ledger).list()["annotator_id"]):  # registered experts open a question
        q = guidelines.open_question(web.fx, body.dataset, item_id, user.name, body.note)
        return {"question_id": q["question_id"], "similar_items": q["similar_items"]}
    return web.fx.ledger.flag_guideline_gap(body.dataset, item_id, user.name, body.note,
                                            guideline_version=spec.guideline.version)
