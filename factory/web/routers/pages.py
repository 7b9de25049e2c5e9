"""The HTML pages (sign-in, queue, arbitration, audit, operations, releases); none is in the OpenAPI schema."""
from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from factory.anchoring import verify_ledger
from factory.users import UserStore
from factory.web import data as D
from factory.web.auth import HOME, LOGIN_CSRF_COOKIE, SESSION_COOKIE, SESSION_HOURS, check_csrf, client_address, login_blocked
from factory.web.context import READERS, WORKERS, WebContext, get_web

router = APIRouter(include_in_schema=False)


@router.get("/", include_in_schema=False)
def home(request: Request):
    user = request.app.state.auth.user(request)
    return RedirectResponse(HOME[user.role] if user else "/login", status_code=303)


@router.get("/login", include_in_schema=False)
def login_form(request: Request, next: str = "/", error: str | None = None, web: WebContext = Depends(get_web)):
    token = secrets.token_urlsafe(24)
    resp = web.templates.TemplateResponse(request, "login.html", {"user": None, "csrf": token, "next": next,
                                                                  "error": error, "title": "Sign in"})
    resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=web.secure_cookies,
                    max_age=3600)
    return resp


@router.post("/login", include_in_schema=False)
async def login(request: Request, web: WebContext = Depends(get_web)):
    templates = web.templates
    form = await request.form()
    name, token = str(form.get("name", "")).strip(), str(form.get("token", "")).strip()
    target = str(form.get("next", "/"))
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    sent, expected = str(form.get("csrf_token", "")), request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not secrets.compare_digest(sent, expected):
        return templates.TemplateResponse(request, "login.html", {
            "user": None, "csrf": expected or secrets.token_urlsafe(24), "next": target, "title": "Sign in",
            "error": "The form expired; please sign in again."}, status_code=403)
    store: UserStore = request.app.state.auth.store
    addr = client_address(request)
    if login_blocked(store, name, addr):
        return templates.TemplateResponse(request, "login.html", {
            "user": None, "csrf": expected, "next": target, "title": "Sign in",
            "error": "Too many failed sign-ins; wait five minutes and try again."},
            status_code=429, headers={"Retry-After": "300"})
    user = store.check_login(name, token)
    if user is None:
        store.record_failure(f"name:{name}", f"addr:{addr}")
        return templates.TemplateResponse(request, "login.html", {
            "user": None, "csrf": expected, "next": target, "title": "Sign in",
            "error": "Unknown name or token."}, status_code=401)
    store.clear_failures(f"name:{name}")
    sid, _csrf = store.new_session(user["name"], hours=SESSION_HOURS)
    resp = RedirectResponse(target if target != "/" else HOME[user["role"]], status_code=303)
    resp.set_cookie(SESSION_COOKIE, request.app.state.auth.cookie_value(sid), httponly=True, samesite="strict",
                    secure=web.secure_cookies, max_age=SESSION_HOURS * 3600)
    resp.delete_cookie(LOGIN_CSRF_COOKIE)
    return resp


@router.post("/logout", include_in_schema=False)
async def logout(request: Request):
    auth = request.app.state.auth
    user = auth.user(request)
    if user is not None:
        form = await request.form()
        check_csrf(user, str(form.get("csrf_token", "")))
        sid = auth.session_id(request)
        if sid:
            auth.store.end_session(sid)
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE)
    return resp


@router.get("/queue", include_in_schema=False)
def queue_page(request: Request, web: WebContext = Depends(get_web)):
    user = web.page_user(request, WORKERS)
    if isinstance(user, Response):
        return user
    return web.render(request, "queue.html", user, title="Queue", undo_grace_seconds=web.undo_grace_seconds)


@router.get("/arbitrate", include_in_schema=False)
def arbitrate_page(request: Request, web: WebContext = Depends(get_web)):
    user = web.page_user(request, ("expert",))
    if isinstance(user, Response):
        return user
    return web.render(request, "arbitrate.html", user, title="Arbitration")


@router.get("/audit", include_in_schema=False)
def audit_page(request: Request, item: str | None = None, dataset: str | None = None, verify: bool = False,
               web: WebContext = Depends(get_web)):
    user = web.page_user(request, READERS)
    if isinstance(user, Response):
        return user
    fx = web.fx
    story, error, chain = None, None, None
    if item:
        found = D.datasets_of_item(fx, item)
        ds = dataset or (found[0] if len(found) == 1 else None)
        if not found:
            error = f"No item '{item}' in this factory."
        elif ds is None:
            error = f"Item '{item}' is in several datasets ({', '.join(found)}); choose one."
        elif ds not in found:
            error = f"Item '{item}' is not in dataset '{ds}'."
        else:
            story = D.trace(fx, ds, item)
            if verify:  # the chain walk and every published anchor (releases, checkpoints)
                res = verify_ledger(fx, ds)
                chain = {"ok": res["ok"], "events": res["events"], "anchors": res["anchors"],
                         "problem": "; ".join(res["problems"][:3])}
    return web.render(request, "audit.html", user, title="Audit", story=story, error=error, chain=chain,
                      item=item or "", dataset=dataset or "")


@router.get("/operator", include_in_schema=False)
def operator_page(request: Request, web: WebContext = Depends(get_web)):
    user = web.page_user(request, ("operator",))
    if isinstance(user, Response):
        return user
    return web.render(request, "operator.html", user, title="Operations", summary=D.operator_summary(web.fx),
                      batches=D.batches_summary(web.fx))


@router.get("/releases", include_in_schema=False)
def releases_page(request: Request, web: WebContext = Depends(get_web)):
    user = web.page_user(request, ("client", "auditor", "operator", "expert"))
    if isinstance(user, Response):
        return user
    return web.render(request, "releases.html", user, title="Releases", releases=D.releases_list(web.fx),
                      can_download=user.role in ("client", "auditor", "operator"))
