"""The workbench web application: pages for annotators, experts, auditors, operators and clients, and the REST API.

`create_app(root)` builds it over a factory root; `factory serve` runs it on uvicorn.  All writes go
through the ledger's methods, so an answer given here is an ordinary human label event (what the
pipeline and its sensors read), an undo is a retraction event, an expert decision an arbitration
event plus corrections.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from factory.anchoring import verify_ledger
from factory.errors import FactoryError, TaskError, TaskRefused
from factory.gate import Answer, submit_answer
from factory.workforce import Workforce, next_task as dispatch_next_task
from factory.ledger import TaskConflict, TaskNotFound
from factory.spec import NAME_RE as DATASET_RE
from factory.users import UserStore
from factory.web import data as D
from factory.web import models as M
from factory.web.auth import (ALL_ROLES, HOME, LOGIN_CSRF_COOKIE, SESSION_COOKIE, SESSION_HOURS, Authenticator, User,
                              check_csrf, client_address, login_blocked, needs)

HERE = Path(__file__).parent
log = logging.getLogger("factory.web")
MAX_BODY_BYTES = 1 << 20  # 1 MiB: an answer is a few hundred bytes; a guideline gap note at most 4000 characters
MAX_ERRORS_SHOWN = 10  # a 422 lists at most this many problems, never the input itself
MAX_DETAIL_CHARS = 500
# ids that only reach the database (items, tasks) are bounded, printable, and never contain a path separator
ID_RE = re.compile(r"^[^\x00-\x1f\x7f/\\]{1,256}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
WORKERS = ("annotator", "expert")
READERS = ("expert", "auditor", "operator")
EXPERT_TASK_KINDS = ("arbitrate",)


class AnswerIn(BaseModel):
    label: str = Field(max_length=4096, description="One of the dataset's class names; multi-label: the ticked "
                                                     "classes joined by '|' (\"\" = none of them).")
    submission_id: str = Field(min_length=1, max_length=128,
                               description="Client-chosen id; resending the same submission is idempotent.")


class SkipIn(BaseModel):
    reason: str = Field(min_length=1, max_length=500, description="Why the task is skipped (unclear, not in schema, …).")


class ArbitrateIn(BaseModel):
    dataset: str
    label: str = Field(min_length=1, max_length=128)
    rationale: str = Field(min_length=1, max_length=4000, description="Mandatory: why this label.")


class GapIn(BaseModel):
    dataset: str
    note: str = Field(min_length=1, max_length=4000, description="What the guideline does not say.")


SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                 b"frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Pure ASGI middleware adding the security headers (BaseHTTPMiddleware costs a task and a stream per request)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in SECURITY_HEADERS if h[0] not in have]
            await send(message)

        return await self.app(scope, receive, send_with_headers)


class BodyTooLarge(HTTPException):
    """A request body over the limit (an HTTPException, so FastAPI's body parsing lets it through as a 413)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body too large: at most {limit} bytes")


class BodyLimit:
    """Pure ASGI middleware refusing request bodies over `max_bytes` with 413, by Content-Length or as it streams."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _send_json(send, 413, {"detail": f"request body too large: at most {self.max_bytes} bytes"})
        seen, started = 0, False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # chunked bodies carry no Content-Length: count what arrives
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as e:
            if started:
                raise
            await _send_json(send, 413, {"detail": e.detail})


async def _send_json(send, status: int, body: dict) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": raw})


_ABS_PATH = re.compile(r"(?<![\w.:/])(?:/[\w.@+~-]+){2,}/?")


def public_message(message: str, *secrets_: str) -> str:
    """An error message fit for a response: no server paths (the factory root, any absolute path), bounded length."""
    for s in sorted({str(x) for x in secrets_ if x and len(str(x)) > 1}, key=len, reverse=True):  # never "/"
        message = message.replace(s, "<factory>")
    message = _ABS_PATH.sub(lambda m: "<path>" if not m.group(0).startswith("/api/") else m.group(0), message)
    return message if len(message) <= MAX_DETAIL_CHARS else message[:MAX_DETAIL_CHARS] + " …"


def validation_errors(exc: RequestValidationError) -> list[dict]:
    """A 422's problems without the input they were about: where, what, and the type (at most MAX_ERRORS_SHOWN)."""
    out = [{"loc": [str(x)[:64] for x in e.get("loc", ())][:8], "msg": str(e.get("msg", ""))[:200],
            "type": str(e.get("type", ""))[:64]} for e in exc.errors()[:MAX_ERRORS_SHOWN]]
    if len(exc.errors()) > MAX_ERRORS_SHOWN:
        out.append({"loc": [], "msg": f"and {len(exc.errors()) - MAX_ERRORS_SHOWN} more problem(s)", "type": "more"})
    return out


def _secret(fx) -> str:
    env = os.environ.get("FACTORY_WEB_SECRET")
    if env:
        return env
    path = fx.paths.data / "web-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


# a release's HTML (quality/report.html) is shown inline: its own <style> and data: images, no script, no fetch
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox; frame-ancestors 'none'"
METERED_FILES = ("labels.parquet", "labels.jsonl", "labels.csv")
METERED_FOLDERS = ("data/",)  # the per-split copies of the labels


def create_app(root: str | Path | None = None, *, dagster_url: str = "http://127.0.0.1:3000",
               lease_seconds: float = 600, undo_grace_seconds: float = 120, secure_cookies: bool = False,
               threads: int = 5, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI application over the factory at `root` (default: $FACTORY_HOME or the current directory)."""
    from factory.pipeline import Factory

    fx = Factory.at(root)
    @asynccontextmanager
    async def lifespan(_app):
        # the ledger's connection pools hold 5 (+10 overflow) connections: more threads than that only queue
        # for a connection, and overflow connections are opened and closed per request (profiled: -3x throughput)
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        yield

    # no /docs or /redoc: FastAPI's pages load Swagger UI from a CDN, and nothing is fetched at run time
    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, version="1",
                  title="Annotation factory workbench API",
                  description="Tasks for people, answers, item traces, batches and releases. Authenticate with "
                              "`Authorization: Bearer <token>` (tokens from `factory users add NAME --role ROLE`).")
    store = UserStore.for_ledger(fx.ledger)
    app.state.fx = fx
    app.state.specs = D.SpecCache(fx)
    app.state.auth = Authenticator(store, _secret(fx))
    app.state.settings = {"dagster_url": dagster_url, "lease_seconds": lease_seconds,
                          "undo_grace_seconds": undo_grace_seconds}
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    specs: D.SpecCache = app.state.specs

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeaders)  # added last, so outermost: the 413s carry the headers too
    hidden = (str(fx.paths.root), str(Path(fx.paths.root).resolve()), str(Path.home()), os.getcwd())

    def _detail(exc: Exception) -> str:
        return public_message(str(exc), *hidden)

    @app.exception_handler(TaskNotFound)
    async def _not_found(_req, exc):
        return JSONResponse({"detail": _detail(exc)}, status_code=404)

    @app.exception_handler(TaskConflict)
    async def _conflict(_req, exc):
        return JSONResponse({"detail": _detail(exc)}, status_code=409)

    @app.exception_handler(TaskRefused)
    def _refused(_req: Request, exc: TaskRefused) -> JSONResponse:
        return JSONResponse({"detail": _detail(exc)}, status_code=403)

    @app.exception_handler(TaskError)
    async def _task_error(_req, exc):
        return JSONResponse({"detail": _detail(exc)}, status_code=422)

    @app.exception_handler(FactoryError)
    async def _factory_error(_req, exc):
        return JSONResponse({"detail": _detail(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_req, exc: RequestValidationError):
        # FastAPI's default echoes every input back (10 MB in, 10 MB out): say where and what, never the input
        return JSONResponse({"detail": validation_errors(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # the stack stays in the server's log, under an id the caller can quote; the response says nothing inside
        request_id = uuid.uuid4().hex[:16]
        log.error("request %s %s %s failed", request_id, request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error; quote request id {request_id} to the operator",
                             "request_id": request_id}, status_code=500, headers={"X-Request-ID": request_id})

    def _dataset_name(dataset: str) -> str:
        # checked before anything touches the file system: a name is a spec file stem, nothing else
        if not DATASET_RE.match(dataset):
            raise HTTPException(422, "dataset names are lowercase letters, digits, '-' or '_', starting with a "
                                     "letter (at most 63 characters)")
        return dataset

    def _ident(kind: str, value: str, pattern: re.Pattern = ID_RE) -> str:
        if not pattern.match(value):
            raise HTTPException(422, f"malformed {kind}")
        return value

    def _spec(dataset: str):
        _dataset_name(dataset)
        if not fx.paths.spec_path(dataset).is_file():
            raise HTTPException(404, f"dataset '{dataset}': no such dataset in this factory")
        try:
            return specs.get(dataset)
        except FactoryError as e:  # a broken spec on the server: the operator reads why in the log, not the caller
            log.error("dataset %s: spec cannot be read: %s", dataset, e)
            raise HTTPException(503, f"dataset '{dataset}': its spec cannot be read; the operator must fix it")

    def _dataset_of(item_id: str, dataset: str | None) -> str:
        _ident("item id", item_id)
        if dataset is not None:
            _dataset_name(dataset)
        found = D.datasets_of_item(fx, item_id)
        if dataset:
            if dataset not in found:
                raise HTTPException(404, f"item '{item_id}' is not in dataset '{dataset}'")
            return dataset
        if not found:
            raise HTTPException(404, f"item '{item_id}': no such item")
        if len(found) > 1:
            raise HTTPException(400, f"item '{item_id}' is in several datasets {found}; add ?dataset=NAME")
        return found[0]

    # ------------------------------------------------------------------------- API: me and tasks
    @app.get("/api/me", tags=["auth"])
    def me(user: User = needs(*ALL_ROLES)) -> M.MeOut:
        """Who the credentials belong to."""
        return {"name": user.name, "role": user.role, "auth": user.via}

    @app.get("/api/tasks/next", tags=["tasks"], response_model=M.TaskOut,
             responses={204: {"description": "Nothing left for you."}})
    def next_task(dataset: str | None = None, user: User = needs(*WORKERS, write=True)) -> Any:
        """Lease the next open task to the caller (or return the one they hold); 204 when the queue is empty."""
        # expert-tier tasks (arbitration) never reach annotators' queues
        # the dispatch policy the simulator uses too (workforce.can_take): tier, domain, registration, limits
        t = dispatch_next_task(fx, user.name, dataset=dataset, lease_seconds=lease_seconds,
                               exclude_kinds=EXPERT_TASK_KINDS if user.role != "expert" else None,
                               spec_of=specs.get)
        if t is None:
            return Response(status_code=204)
        return D.task_payload(fx, specs, t)

    @app.get("/api/tasks/{task_id}", tags=["tasks"])
    def get_task(task_id: str, user: User = needs(*WORKERS, *READERS)) -> M.TaskOut:
        """One task; annotators see only tasks assigned to them."""
        t = fx.ledger.task(task_id)
        if t is None:
            raise HTTPException(404, f"task '{task_id}': no such task")
        a = fx.ledger.assignment(task_id)
        if user.role == "annotator" and (a is None or a["assignee"] != user.name):
            raise HTTPException(404, f"task '{task_id}': no such task among yours")
        return D.task_payload(fx, specs, dict(t, lease_until=a["lease_until"] if a else None))

    @app.post("/api/tasks/{task_id}/answer", tags=["tasks"], status_code=201,
              responses={200: {"description": "The same submission was already recorded (idempotent retry)."},
                         404: {"description": "No such task."},
                         409: {"description": "Answered differently already, lease expired, or reassigned."},
                         422: {"description": "Label not in the dataset's schema."}})
    def answer(task_id: str, body: AnswerIn, response: Response,
               user: User = needs(*WORKERS, write=True)) -> M.AnswerOut:
        """Answer a task you hold; idempotent by `submission_id`."""
        # the gate: lease first (409 naming nobody), then the workforce rules (403), schema (422), idempotency
        res = submit_answer(fx, Answer(label=body.label, annotator=user.name, task_id=task_id,
                                       submission_id=body.submission_id, where=f"task {task_id}"),
                            source="web", require_lease=True, spec_of=specs.get)
        if res["duplicate"]:
            response.status_code = 200
        return {"task_id": task_id, "label": body.label, "event_id": res["event_id"], "duplicate": res["duplicate"],
                "undo_seconds": undo_grace_seconds if not res["duplicate"] else None}

    @app.post("/api/tasks/{task_id}/undo", tags=["tasks"])
    def undo(task_id: str, user: User = needs(*WORKERS, write=True)) -> M.UndoOut:
        """Withdraw your answer within the grace period (a retraction event); the task comes back to you."""
        return fx.ledger.retract_answer(task_id, user.name, grace_seconds=undo_grace_seconds,
                                        lease_seconds=lease_seconds)

    @app.post("/api/tasks/{task_id}/skip", tags=["tasks"])
    def skip(task_id: str, body: SkipIn, user: User = needs(*WORKERS, write=True)) -> M.EventOut:
        """Pass on a task you hold, with a reason; it returns to the pool (not to you)."""
        return fx.ledger.skip_task(task_id, user.name, body.reason)

    @app.get("/api/progress", tags=["tasks"])
    def my_progress(user: User = needs(*WORKERS)) -> M.ProgressOut:
        """Your answers today, the open tasks left, and your last answer (undoable within the grace period)."""
        p = D.progress(fx, user.name)
        p["undo_grace_seconds"] = undo_grace_seconds
        return p

    # ------------------------------------------------------------------------- API: items
    @app.get("/api/items/{item_id}/highlights", tags=["items"])
    def item_highlights(item_id: str, dataset: str | None = None,
                        user: User = needs(*WORKERS, *READERS)) -> M.HighlightsOut:
        """Spans of the item's text the models relied on (from each labeler's `explain`)."""
        ds = _dataset_of(item_id, dataset)
        if user.role == "annotator":
            held = fx.ledger.table("task_assignments", assignee=user.name)
            mine = fx.ledger.table("tasks", dataset=ds, item_id=item_id)
            if not set(mine["task_id"]) & set(held["task_id"]):
                raise HTTPException(404, f"item '{item_id}': not among your tasks")
        return D.highlights(fx, ds, item_id)

    @app.get("/api/items/{item_id}/trace", tags=["items"])
    def item_trace(item_id: str, dataset: str | None = None, user: User = needs(*READERS)) -> M.TraceOut:
        """An item's whole story: every event (who/what, when, which spec, guideline and run), read-only."""
        ds = _dataset_of(item_id, dataset)
        story = D.trace(fx, ds, item_id)
        if story is None:
            raise HTTPException(404, f"item '{item_id}' is not in dataset '{ds}'")
        return story

    # ------------------------------------------------------------------------- API: arbitration
    @app.get("/api/arbitration", tags=["arbitration"])
    def disputes(dataset: str | None = None, user: User = needs("expert")) -> list[M.DisputeOut]:
        """Items people did not resolve (disagreement, audit contradiction, open skip), oldest first."""
        names = [_dataset_name(dataset)] if dataset else sorted(set(fx.ledger.tasks()["dataset"]))
        return [d for n in names for d in D.disputed_items(fx, n)]

    @app.get("/api/arbitration/{dataset}/{item_id}", tags=["arbitration"])
    def dispute(dataset: str, item_id: str, user: User = needs("expert")) -> M.DisputeDetailOut:
        """The conflicting answers and model outputs, with their sources and reliabilities."""
        _spec(dataset)
        _ident("item id", item_id)
        d = D.arbitration_detail(fx, specs, dataset, item_id)
        if d is None:
            raise HTTPException(404, f"item '{item_id}' is not in dataset '{dataset}'")
        return d

    @app.get("/api/items/{item_id}/raw", tags=["items"])
    def raw_item(item_id: str, dataset: str, user: User = needs(*ALL_ROLES)) -> M.RawItemOut:
        """The raw (unredacted) payload, for the roles the spec's compliance.raw_readers allows only (else 403)."""
        from factory.compliance import AccessDenied, raw_payload

        _ident("item id", item_id)
        spec = _spec(dataset)  # a valid name of an existing spec, read through the cache, before anything else
        if user.role not in spec.compliance.raw_readers:  # the role is checked before the item is looked up
            raise HTTPException(403, f"role '{user.role}' may not read raw payloads of '{dataset}'")
        try:
            return {"item_id": item_id, "dataset": dataset, "text": raw_payload(fx, dataset, item_id, user.role)}
        except AccessDenied as e:
            raise HTTPException(403, _detail(e)) from None
        except FactoryError:
            raise HTTPException(404, f"item '{item_id}' is not in dataset '{dataset}'") from None

    @app.post("/api/items/{item_id}/arbitrate", tags=["arbitration"], status_code=201)
    def arbitrate(item_id: str, body: ArbitrateIn, user: User = needs("expert", write=True)) -> M.ArbitrateOut:
        """The expert's final decision with its rationale; corrections make every task of the item follow it."""
        _spec(body.dataset)
        detail = D.arbitration_detail(fx, specs, body.dataset, item_id)
        if detail is None:
            raise HTTPException(404, f"item '{item_id}' is not in dataset '{body.dataset}'")
        evidence = {"answers": [{k: a[k] for k in ("event_id", "actor", "label", "kind")} for a in detail["answers"]],
                    "models": [{k: m[k] for k in ("source", "label", "confidence")} for m in detail["models"]]}
        # the gate: a registered, active expert of the domain, a rationale, a disputed item, no task held by another
        res = submit_answer(fx, Answer(label=body.label, annotator=user.name, dataset=body.dataset, item_id=item_id,
                                       rationale=body.rationale, evidence=evidence, where=f"item {item_id}"),
                            source="web-arbitration", spec_of=specs.get)
        return {"event_id": res["event_id"], "tasks": res.get("tasks", [])}

    @app.post("/api/items/{item_id}/guideline-gap", tags=["arbitration"], status_code=201)
    def guideline_gap(item_id: str, body: GapIn, user: User = needs("expert", write=True)) -> M.GapOut:
        """Record that this item exposes a gap in the guideline (an event the guideline owners read)."""
        spec = _spec(body.dataset)
        from factory.guidelines import open_question

        if user.name in set(Workforce(fx.ledger).list()["annotator_id"]):  # registered experts open a question
            q = open_question(fx, body.dataset, item_id, user.name, body.note)
            return {"question_id": q["question_id"], "similar_items": q["similar_items"]}
        return fx.ledger.flag_guideline_gap(body.dataset, item_id, user.name, body.note,
                                            guideline_version=spec.guideline.version)

    # ------------------------------------------------------------------------- API: batches and releases
    @app.get("/api/batches", tags=["batches"])
    def batches(user: User = needs("operator", "auditor", "expert")) -> list[M.BatchOut]:
        """Every batch with its items and task counts."""
        return D.batches_summary(fx)

    @app.get("/api/operator/summary", tags=["batches"])
    def summary(user: User = needs("operator", "auditor")) -> M.OperatorSummaryOut:
        """Queue sizes per tier, leases, throughput of human answers, disputed items."""
        return D.operator_summary(fx) | {"dagster_url": dagster_url}

    @app.get("/api/releases", tags=["releases"])
    def releases(user: User = needs("client", "auditor", "operator", "expert")) -> list[M.ReleaseOut]:
        """Every release with its files."""
        return D.releases_list(fx)

    @app.get("/api/releases/{dataset}/{version}/files/{name:path}", tags=["releases"], response_class=FileResponse,
             responses={200: {"description": "The file's bytes (HTML reports open in the browser).",
                              "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                   "format": "binary"}}}}})
    def release_file(dataset: str, version: str, name: str, request: Request,
                     user: User = needs("client", "auditor", "operator")) -> FileResponse:
        """Download one file of a release, also in its subfolders (`data/train.parquet`, `quality/report.html`);
        nothing outside the release folder."""
        _dataset_name(dataset)
        _ident("version", version, VERSION_RE)
        path = D.release_file(fx, dataset, version, name)
        if path is None:
            raise HTTPException(404, f"release {dataset} {version} has no file '{name}'")
        if user.role == "client" and (name in METERED_FILES or name.startswith(METERED_FOLDERS)):
            # the delivery ledger prices per item or token: every file that carries labels is metered
            from factory.delivery import record_delivery

            key = request.headers.get("Idempotency-Key")
            record_delivery(fx, dataset, version, user.name, file=name,
                            delivery_id=f"{user.name}:{key}" if key else None)
        if path.suffix == ".html":  # the quality report opens in the browser, with its inline styles and images only
            return FileResponse(path, media_type="text/html; charset=utf-8", filename=path.name,
                                content_disposition_type="inline", headers={"content-security-policy": REPORT_CSP})
        return FileResponse(path, filename=name.rsplit("/", 1)[-1])

    @app.get("/api/feeds/{dataset}.json", tags=["releases"])
    def feed_json(dataset: str, request: Request, user: User = needs("client", "auditor", "operator")) -> M.FeedOut:
        """The dataset's release versions as a JSON Feed, newest first (for subscribers)."""
        from factory.delivery import json_feed

        _dataset_name(dataset)
        return json_feed(fx.paths.releases, dataset, base_url=str(request.base_url).rstrip("/"))

    @app.get("/api/feeds/{dataset}.atom", tags=["releases"], response_class=Response,
             responses={200: {"description": "An Atom feed.", "content": {"application/atom+xml": {}}}})
    def feed_atom(dataset: str, request: Request, user: User = needs("client", "auditor", "operator")) -> Response:
        """The same feed in Atom."""
        from factory.delivery import atom_feed

        _dataset_name(dataset)
        return Response(atom_feed(fx.paths.releases, dataset, base_url=str(request.base_url).rstrip("/")),
                        media_type="application/atom+xml")

    @app.get("/api/deliveries", tags=["releases"])
    def deliveries(client: str | None = None, dataset: str | None = None,
                   user: User = needs("operator", "auditor")) -> list[M.UsageOut]:
        """Metered deliveries summed per client and dataset: items, bytes, text tokens."""
        from factory.delivery import usage

        return usage(fx, client=client, dataset=dataset).to_dict(orient="records")

    # ------------------------------------------------------------------------- pages
    def _page_user(request: Request, roles: tuple[str, ...]) -> User | Response:
        user = app.state.auth.user(request)
        if user is None or user.via != "session":
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        if user.role not in roles:
            return templates.TemplateResponse(request, "error.html", {"user": user, "title": "Not allowed",
                                              "message": f"Your role '{user.role}' cannot open this page."},
                                              status_code=403)
        return user

    def _render(request: Request, name: str, user: User, **ctx) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"user": user, "csrf": user.csrf,
                                                          "dagster_url": dagster_url, **ctx})

    @app.get("/", include_in_schema=False)
    def home(request: Request):
        user = app.state.auth.user(request)
        return RedirectResponse(HOME[user.role] if user else "/login", status_code=303)

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request, next: str = "/", error: str | None = None):
        token = secrets.token_urlsafe(24)
        resp = templates.TemplateResponse(request, "login.html", {"user": None, "csrf": token, "next": next,
                                                                  "error": error, "title": "Sign in"})
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure_cookies,
                        max_age=3600)
        return resp

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
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
        store: UserStore = app.state.auth.store
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
        resp.set_cookie(SESSION_COOKIE, app.state.auth.cookie_value(sid), httponly=True, samesite="strict",
                        secure=secure_cookies, max_age=SESSION_HOURS * 3600)
        resp.delete_cookie(LOGIN_CSRF_COOKIE)
        return resp

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request):
        user = app.state.auth.user(request)
        if user is not None:
            form = await request.form()
            check_csrf(user, str(form.get("csrf_token", "")))
            sid = app.state.auth.session_id(request)
            if sid:
                app.state.auth.store.end_session(sid)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE)
        return resp

    @app.get("/queue", include_in_schema=False)
    def queue_page(request: Request):
        user = _page_user(request, WORKERS)
        if isinstance(user, Response):
            return user
        return _render(request, "queue.html", user, title="Queue",
                       undo_grace_seconds=undo_grace_seconds)

    @app.get("/arbitrate", include_in_schema=False)
    def arbitrate_page(request: Request):
        user = _page_user(request, ("expert",))
        if isinstance(user, Response):
            return user
        return _render(request, "arbitrate.html", user, title="Arbitration")

    @app.get("/audit", include_in_schema=False)
    def audit_page(request: Request, item: str | None = None, dataset: str | None = None, verify: bool = False):
        user = _page_user(request, READERS)
        if isinstance(user, Response):
            return user
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
        return _render(request, "audit.html", user, title="Audit", story=story, error=error, chain=chain,
                       item=item or "", dataset=dataset or "")

    @app.get("/operator", include_in_schema=False)
    def operator_page(request: Request):
        user = _page_user(request, ("operator",))
        if isinstance(user, Response):
            return user
        return _render(request, "operator.html", user, title="Operations", summary=D.operator_summary(fx),
                       batches=D.batches_summary(fx))

    @app.get("/releases", include_in_schema=False)
    def releases_page(request: Request):
        user = _page_user(request, ("client", "auditor", "operator", "expert"))
        if isinstance(user, Response):
            return user
        return _render(request, "releases.html", user, title="Releases", releases=D.releases_list(fx),
                       can_download=user.role in ("client", "auditor", "operator"))

    return app


def app_from_env() -> FastAPI:
    """The app configured from FACTORY_HOME and FACTORY_WEB_* variables (what `factory serve` starts)."""
    return create_app(os.environ.get("FACTORY_HOME"),
                      dagster_url=os.environ.get("FACTORY_WEB_DAGSTER_URL", "http://127.0.0.1:3000"),
                      lease_seconds=float(os.environ.get("FACTORY_WEB_LEASE_SECONDS", 600)),
                      undo_grace_seconds=float(os.environ.get("FACTORY_WEB_UNDO_SECONDS", 120)),
                      threads=int(os.environ.get("FACTORY_WEB_THREADS", 5)),
                      secure_cookies=os.environ.get("FACTORY_WEB_SECURE_COOKIES", "") in ("1", "true", "yes"),
                      max_body_bytes=int(os.environ.get("FACTORY_WEB_MAX_BODY_BYTES", MAX_BODY_BYTES)))
