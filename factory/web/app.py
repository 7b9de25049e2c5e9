"""The workbench web application: pages for annotators, experts, auditors, operators and clients, and the REST API.

`create_app(root)` builds it over a factory root; `factory serve` runs it on uvicorn.  All writes go
through the ledger's methods, so an answer given here is an ordinary human label event (what the
pipeline and its sensors read), an undo is a retraction event, an expert decision an arbitration
event plus corrections.

The routes live in `factory.web.routers`, one `APIRouter` per resource (people, tasks, items, disputes,
batches, releases, pages); `create_app` assembles them over the shared state (`factory.web.context`), the
middleware and the error handlers.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from factory.errors import FactoryError, TaskError, TaskRefused
from factory.storage.ledger import TaskConflict, TaskNotFound
from factory.root import Factory
from factory.users import UserStore
from factory.web import data as D
from factory.web.auth import Authenticator
from factory.web.context import WebContext
from factory.web.routers import ROUTERS

HERE = Path(__file__).parent
log = logging.getLogger("factory.web")
MAX_BODY_BYTES = 1 << 20  # 1 MiB: an answer is a few hundred bytes; a guideline gap note at most 4000 characters
MAX_ERRORS_SHOWN = 10  # a 422 lists at most this many problems, never the input itself


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


def create_app(root: str | Path | None = None, *, dagster_url: str = "http://127.0.0.1:3000",
               lease_seconds: float = 600, undo_grace_seconds: float = 120, secure_cookies: bool = False,
               threads: int = 5, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI application over the factory at `root` (default: $FACTORY_HOME or the current directory)."""
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
    web = app.state.web = WebContext(
        fx=fx, specs=app.state.specs, templates=Jinja2Templates(directory=str(HERE / "templates")),
        dagster_url=dagster_url, lease_seconds=lease_seconds, undo_grace_seconds=undo_grace_seconds,
        secure_cookies=secure_cookies,
        hidden=(str(fx.paths.root), str(Path(fx.paths.root).resolve()), str(Path.home()), os.getcwd()))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeaders)  # added last, so outermost: the 413s carry the headers too

    @app.exception_handler(TaskNotFound)
    async def _not_found(_req, exc):
        return JSONResponse({"detail": web.detail(exc)}, status_code=404)

    @app.exception_handler(TaskConflict)
    async def _conflict(_req, exc):
        return JSONResponse({"detail": web.detail(exc)}, status_code=409)

    @app.exception_handler(TaskRefused)
    def _refused(_req: Request, exc: TaskRefused) -> JSONResponse:
        return JSONResponse({"detail": web.detail(exc)}, status_code=403)

    @app.exception_handler(TaskError)
    async def _task_error(_req, exc):
        return JSONResponse({"detail": web.detail(exc)}, status_code=422)

    @app.exception_handler(FactoryError)
    async def _factory_error(_req, exc):
        return JSONResponse({"detail": web.detail(exc)}, status_code=400)

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

    for router in ROUTERS:
        app.include_router(router)
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
