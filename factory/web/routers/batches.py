"""Batches and operations: every batch with its counts, and the operator's summary."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from factory.web import data as D
from factory.web import models as M
from factory.web.auth import User, needs
from factory.web.context import WebContext, get_web

router = APIRouter()


@router.get("/api/batches", tags=["batches"])
def batches(user: User = needs("operator", "auditor", "expert"), web: WebContext = Depends(get_web)) -> list[M.BatchOut]:
    """Every batch with its items and task counts."""
    return D.batches_summary(web.fx)


@router.get("/api/operator/summary", tags=["batches"])
def summary(user: User = needs("operator", "auditor"), web: WebContext = Depends(get_web)) -> M.OperatorSummaryOut:
    """Queue sizes per tier, leases, throughput of human answers, disputed items."""
    return D.operator_summary(web.fx) | {"dagster_url": web.dagster_url}
