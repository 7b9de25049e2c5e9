"""What every router of the web app shares: the factory, the spec cache, the settings `create_app` was given,
the page templates, and the checks of path parameters (dataset names, ids) made before anything is read.

`create_app` builds one `WebContext` and keeps it on ``app.state.web``; a route asks for it with
``web: WebContext = Depends(get_web)``.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from fastapi import HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from factory.errors import FactoryError
from factory.root import Factory
from factory.spec import NAME_RE as DATASET_RE
from factory.web import data as D
from factory.web.auth import User

log = logging.getLogger("factory.web")
MAX_DETAIL_CHARS = 500
# ids that only reach the database (items, tasks) are bounded, printable, and never contain a path separator
ID_RE = re.compile(r"^[^\x00-\x1f\x7f/\\]{1,256}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
WORKERS = ("annotator", "expert")
READERS = ("expert", "auditor", "operator")
EXPERT_TASK_KINDS = ("arbitrate",)
_ABS_PATH = re.compile(r"(?<![\w.:/])(?:/[\w.@+~-]+){2,}/?")


def public_message(message: str, *secrets_: str) -> str:
    """An error message fit for a response: no server paths (the factory root, any absolute path), bounded length."""
    for s in sorted({str(x) for x in secrets_ if x and len(str(x)) > 1}, key=len, reverse=True):  # never "/"
        message = message.replace(s, "<factory>")
    message = _ABS_PATH.sub(lambda m: "<path>" if not m.group(0).startswith("/api/") else m.group(0), message)
    return message if len(message) <= MAX_DETAIL_CHARS else message[:MAX_DETAIL_CHARS] + " …"


@dataclass
class WebContext:
    """The factory behind the app and the settings of this app, with the checks routes share."""

    fx: Factory
    specs: D.SpecCache
    templates: Jinja2Templates
    dagster_url: str
    lease_seconds: float
    undo_grace_seconds: float
    secure_cookies: bool
    hidden: tuple[str, ...]  # strings no response may show (the factory root, the home folder, the cwd)

    def detail(self, exc: Exception) -> str:
        return public_message(str(exc), *self.hidden)

    @staticmethod
    def dataset_name(dataset: str) -> str:
        # checked before anything touches the file system: a name is a spec file stem, nothing else
        if not DATASET_RE.match(dataset):
            raise HTTPException(422, "dataset names are lowercase letters, digits, '-' or '_', starting with a "
                                     "letter (at most 63 characters)")
        return dataset

    @staticmethod
    def ident(kind: str, value: str, pattern: re.Pattern = ID_RE) -> str:
        if not pattern.match(value):
            raise HTTPException(422, f"malformed {kind}")
        return value

    def spec(self, dataset: str):
        self.dataset_name(dataset)
        if not self.fx.paths.spec_path(dataset).is_file():
            raise HTTPException(404, f"dataset '{dataset}': no such dataset in this factory")
        try:
            return self.specs.get(dataset)
        except FactoryError as e:  # a broken spec on the server: the operator reads why in the log, not the caller
            log.error("dataset %s: spec cannot be read: %s", dataset, e)
            raise HTTPException(503, f"dataset '{dataset}': its spec cannot be read; the operator must fix it")

    def dataset_of(self, item_id: str, dataset: str | None) -> str:
        self.ident("item id", item_id)
        if dataset is not None:
            self.dataset_name(dataset)
        found = D.datasets_of_item(self.fx, item_id)
        if dataset:
            if dataset not in found:
                raise HTTPException(404, f"item '{item_id}' is not in dataset '{dataset}'")
            return dataset
        if not found:
            raise HTTPException(404, f"item '{item_id}': no such item")
        if len(found) > 1:
            raise HTTPException(400, f"item '{item_id}' is in several datasets {found}; add ?dataset=NAME")
        return found[0]

    # ------------------------------------------------------------------------- pages
    def page_user(self, request: Request, roles: tuple[str, ...]) -> User | Response:
        user = request.app.state.auth.user(request)
        if user is None or user.via != "session":
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        if user.role not in roles:
            return self.templates.TemplateResponse(request, "error.html", {"user": user, "title": "Not allowed",
                                                   "message": f"Your role '{user.role}' cannot open this page."},
                                                   status_code=403)
        return user

    def render(self, request: Request, name: str, user: User, **ctx) -> HTMLResponse:
        return self.templates.TemplateResponse(request, name, {"user": user, "csrf": user.csrf,
                                                               "dagster_url": self.dagster_url, **ctx})


async def get_web(request: Request) -> WebContext:
    """FastAPI dependency: the app's `WebContext` (async: a sync dependency would cost a thread hop per request)."""
    return request.app.state.web
