"""Releases for clients: the list, one file (metered when it carries labels), feeds, and metered deliveries."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import FileResponse

from factory import delivery
from factory.web import data as D
from factory.web import models as M
from factory.web.auth import User, needs
from factory.web.context import VERSION_RE, WebContext, get_web

router = APIRouter()
# a release's HTML (quality/report.html) is shown inline: its own <style> and data: images, no script, no fetch
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox; frame-ancestors 'none'"
METERED_FILES = ("labels.parquet", "labels.jsonl", "labels.csv")
METERED_FOLDERS = ("data/",)  # the per-split copies of the labels


@router.get("/api/releases", tags=["releases"])
def releases(user: User = needs("client", "auditor", "operator", "expert"),
             web: WebContext = Depends(get_web)) -> list[M.ReleaseOut]:
    """Every release with its files."""
    return D.releases_list(web.fx)


@router.get("/api/releases/{dataset}/{version}/files/{name:path}", tags=["releases"], response_class=FileResponse,
            responses={200: {"description": "The file's bytes (HTML reports open in the browser).",
                             "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                  "format": "binary"}}}}})
def release_file(dataset: str, version: str, name: str, request: Request,
                 user: User = needs("client", "auditor", "operator"), web: WebContext = Depends(get_web)) -> FileResponse:
    """Download one file of a release, also in its subfolders (`data/train.parquet`, `quality/report.html`);
    nothing outside the release folder."""
    web.dataset_name(dataset)
    web.ident("version", version, VERSION_RE)
    path = D.release_file(web.fx, dataset, version, name)
    if path is None:
        raise HTTPException(404, f"release {dataset} {version} has no file '{name}'")
    if user.role == "client" and (name in METERED_FILES or name.startswith(METERED_FOLDERS)):
        # the delivery ledger prices per item or token: every file that carries labels is metered
        key = request.headers.get("Idempotency-Key")
        delivery.record_delivery(web.fx, dataset, version, user.name, file=name,
                                 delivery_id=f"{user.name}:{key}" if key else None)
    if path.suffix == ".html":  # the quality report opens in the browser, with its inline styles and images only
        return FileResponse(path, media_type="text/html; charset=utf-8", filename=path.name,
                            content_disposition_type="inline", headers={"content-security-policy": REPORT_CSP})
    return FileResponse(path, filename=name.rsplit("/", 1)[-1])


@router.get("/api/feeds/{dataset}.json", tags=["releases"])
def feed_json(dataset: str, request: Request, user: User = needs("client", "auditor", "operator"),
              web: WebContext = Depends(get_web)) -> M.FeedOut:
    """The dataset's release versions as a JSON Feed, newest first (for subscribers)."""
    web.dataset_name(dataset)
    return delivery.json_feed(web.fx.paths.releases, dataset, base_url=str(request.base_url).rstrip("/"))


@router.get("/api/feeds/{dataset}.atom", tags=["releases"], response_class=Response,
            responses={200: {"description": "An Atom feed.", "content": {"application/atom+xml": {}}}})
def feed_atom(dataset: str, request: Request, user: User = needs("client", "auditor", "operator"),
              web: WebContext = Depends(get_web)) -> Response:
    """The same feed in Atom."""
    web.dataset_name(dataset)
    return Response(delivery.atom_feed(web.fx.paths.releases, dataset, base_url=str(request.base_url).rstrip("/")),
                    media_type="application/atom+xml")


@router.get("/api/deliveries", tags=["releases"])
def deliveries(client: str | None = None, dataset: str | None = None,
               user: User = needs("operator", "auditor"), web: WebContext = Depends(get_web)) -> list[M.UsageOut]:
    """Metered deliveries summed per client and dataset: items, bytes, text tokens."""
    return delivery.usage(web.fx, client=client, dataset=dataset).to_dict(orient="records")
