"""Items: what the models relied on, an item's whole story, and its raw payload (for the roles allowed)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException

from factory import compliance
from factory.errors import FactoryError
from factory.web import data as D
from factory.web import models as M
from factory.web.auth import ALL_ROLES, User, needs
from factory.web.context import READERS, WORKERS, WebContext, get_web

router = APIRouter()


@router.get("/api/items/{item_id}/highlights", tags=["items"])
def item_highlights(item_id: str, dataset: str | None = None,
                    user: User = needs(*WORKERS, *READERS), web: WebContext = Depends(get_web)) -> M.HighlightsOut:
    """Spans of the item's text the models relied on (from each labeler's `explain`)."""
    ds = web.dataset_of(item_id, dataset)
    if user.role == "annotator":
        held = web.fx.ledger.table("task_assignments", assignee=user.name)
        mine = web.fx.ledger.table("tasks", dataset=ds, item_id=item_id)
        if not set(mine["task_id"]) & set(held["task_id"]):
            raise HTTPException(404, f"item '{item_id}': not among your tasks")
    return D.highlights(web.fx, ds, item_id)


@router.get("/api/items/{item_id}/trace", tags=["items"])
def item_trace(item_id: str, dataset: str | None = None, user: User = needs(*READERS),
               web: WebContext = Depends(get_web)) -> M.TraceOut:
    """An item's whole story: every event (who/what, when, which spec, guideline and run), read-only."""
    ds = web.dataset_of(item_id, dataset)
    story = D.trace(web.fx, ds, item_id)
    if story is None:
        raise HTTPException(404, f"item '{item_id}' is not in dataset '{ds}'")
    return story


@router.get("/api/items/{item_id}/raw", tags=["items"])
def raw_item(item_id: str, dataset: str, user: User = needs(*ALL_ROLES),
             web: WebContext = Depends(get_web)) -> M.RawItemOut:
    """The raw (unredacted) payload, for the roles the spec's compliance.raw_readers allows only (else 403)."""
    web.ident("item id", item_id)
    spec = web.spec(dataset)  # a valid name of an existing spec, read through the cache, before anything else
    if user.role not in spec.compliance.raw_readers:  # the role is checked before the item is looked up
        raise HTTPException(403, f"role '{user.role}' may not read raw payloads of '{dataset}'")
    try:
        return {"item_id": item_id, "dataset": dataset,
                "text": compliance.raw_payload(web.fx, dataset, item_id, user.role)}
    except compliance.AccessDenied as e:
        raise HTTPException(403, web.detail(e)) from None
    except FactoryError:
        raise HTTPException(404, f"item '{item_id}' is not in dataset '{dataset}'") from None
