"""The caller: who the credentials belong to, and their progress today."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from factory.web import data as D
from factory.web import models as M
from factory.web.auth import ALL_ROLES, User, needs
from factory.web.context import WORKERS, WebContext, get_web

router = APIRouter()


@router.get("/api/me", tags=["auth"])
def me(user: User = needs(*ALL_ROLES)) -> M.MeOut:
    """Who the credentials belong to."""
    return {"name": user.name, "role": user.role, "auth": user.via}


@router.get("/api/progress", tags=["tasks"])
def my_progress(user: User = needs(*WORKERS), web: WebContext = Depends(get_web)) -> M.ProgressOut:
    """Your answers today, the open tasks left, and your last answer (undoable within the grace period)."""
    p = D.progress(web.fx, user.name)
    p["undo_grace_seconds"] = web.undo_grace_seconds
    return p
