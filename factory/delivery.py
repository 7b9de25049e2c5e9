"""Delivery to clients: a per-dataset feed of versions (JSON Feed and Atom) and a delivery ledger that
meters, per client, the items, bytes and text tokens delivered, so releases can be priced per item or
per token.  The web API (factory/web/) calls these; nothing here knows about HTTP.

Tokens are counted with the tokenizer the dataset's spec declares (``delivery.tokenizer``):

* ``whitespace-cjk`` (default): every CJK ideograph, kana or Hangul syllable is one token; any other
  run of non-space characters is one token ("Hello 世界!" -> Hello, 世, 界, ! = 4);
* ``whitespace``: runs of non-space characters;
* ``characters``: every non-space character.
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import escape

import pandas as pd
import sqlalchemy as sa

from factory.errors import FactoryError
from factory.storage.ledger import now
from factory.release import release_dirs, sha256_path, show
from factory.storage.tables import deliveries, delivery_metadata

TOKENIZERS = ("whitespace-cjk", "whitespace", "characters")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f"
_WS_CJK = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")
_WS = re.compile(r"\S+")

def count_tokens(text: str | None, tokenizer: str = "whitespace-cjk") -> int:
    """Number of text tokens in `text` under one of TOKENIZERS."""
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return 0
    if tokenizer == "whitespace-cjk":
        return len(_WS_CJK.findall(text))
    if tokenizer == "whitespace":
        return len(_WS.findall(text))
    if tokenizer == "characters":
        return sum(1 for ch in text if not ch.isspace())
    raise ValueError(f"unknown tokenizer '{tokenizer}'; choose from {list(TOKENIZERS)}")


def count_tokens_many(texts: Iterable[str | None], tokenizer: str = "whitespace-cjk") -> int:
    """Total tokens over many texts."""
    return sum(count_tokens(t, tokenizer) for t in texts)


def meter_release(release_path: str | Path, file: str = "labels.parquet", split: str | None = None,
                  tokenizer: str = "whitespace-cjk") -> dict:
    """What delivering one file of a release (optionally one split) amounts to: items, bytes, tokens.

    Bytes are the file's size when the whole file is delivered, else the size of the split's own file
    (data/<split>.parquet).  Tokens count the `text` and `label` of every delivered record.
    """
    path = Path(release_path)
    target = path / (f"data/{split}.parquet" if split and file == "labels.parquet" else file)
    if not target.is_file():
        raise FactoryError(f"{target}: no such file in release {path.name}; see its manifest-sha256.txt")
    if target.suffix == ".parquet":
        df = pd.read_parquet(target, columns=["item_id", "text", "label", "split"])
    elif target.suffix == ".jsonl":
        df = pd.read_json(target, lines=True, dtype=False)
    elif target.suffix == ".csv":
        df = pd.read_csv(target, dtype=str, keep_default_na=False)
    else:  # metadata files: bytes only
        return {"file": target.relative_to(path).as_posix(), "items": 0, "bytes": target.stat().st_size,
                "tokens": 0, "tokenizer": tokenizer}
    if split and "split" in df:
        df = df[df["split"] == split]
    tokens = count_tokens_many(df["text"], tokenizer) + count_tokens_many(df["label"].astype(str), tokenizer)
    return {"file": target.relative_to(path).as_posix(), "items": int(len(df)), "bytes": int(target.stat().st_size),
            "tokens": int(tokens), "tokenizer": tokenizer}


def _ensure(ledger) -> None:
    delivery_metadata.create_all(ledger.engine, checkfirst=True)


def record_delivery(fx, dataset: str, version: str, client: str, *, file: str = "labels.parquet",
                    split: str | None = None, delivery_id: str | None = None) -> dict:
    """Meter one delivery of a release to a client and write it to the delivery ledger.

    `delivery_id` makes the call idempotent (a retried download is metered once).  Returns the row.
    """
    if not client or not str(client).strip():
        raise FactoryError("a delivery needs a client id")
    path = fx.paths.releases / dataset / version
    if not (path / "manifest.json").exists():
        raise FactoryError(f"release {version} of '{dataset}' not found at {path}")
    spec = fx.spec(dataset)
    m = meter_release(path, file, split, spec.delivery.tokenizer)
    listing = path / "manifest-sha256.txt"
    row = {"delivery_id": delivery_id or uuid.uuid4().hex, "client": client, "dataset": dataset, "version": version,
           "content_id": sha256_path(listing) if listing.exists() else None, "file": m["file"], "split": split,
           "items": m["items"], "bytes": m["bytes"], "tokens": m["tokens"], "tokenizer": m["tokenizer"],
           "delivered_at": now()}
    _ensure(fx.ledger)
    with fx.ledger.engine.begin() as c:
        hit = c.execute(sa.select(deliveries).where(deliveries.c.delivery_id == row["delivery_id"])).mappings().first()
        if hit:
            return dict(hit) | {"duplicate": True}
        c.execute(deliveries.insert().values(**row))
    return row | {"duplicate": False}


def delivery_log(fx, client: str | None = None, dataset: str | None = None) -> pd.DataFrame:
    """Every metered delivery (optionally of one client / dataset), oldest first."""
    _ensure(fx.ledger)
    q = sa.select(deliveries).order_by(deliveries.c.id)
    if client:
        q = q.where(deliveries.c.client == client)
    if dataset:
        q = q.where(deliveries.c.dataset == dataset)
    with fx.ledger.reader.connect() as c:  # the reader engine never takes the write lock
        return pd.DataFrame(c.execute(q).mappings().all(), columns=[col.name for col in deliveries.c])


def usage(fx, client: str | None = None, dataset: str | None = None) -> pd.DataFrame:
    """Per client and dataset: deliveries, items, bytes and tokens delivered (the basis of a bill)."""
    log = delivery_log(fx, client, dataset)
    cols = ["client", "dataset", "deliveries", "items", "bytes", "tokens"]
    if log.empty:
        return pd.DataFrame(columns=cols)
    g = log.groupby(["client", "dataset"], as_index=False).agg(
        deliveries=("id", "count"), items=("items", "sum"), bytes=("bytes", "sum"), tokens=("tokens", "sum"))
    return g[cols]


# ----------------------------------------------------------------------------- feeds
def _versions(releases_root: str | Path, dataset: str) -> list[dict]:
    out = []
    for d in release_dirs(releases_root, dataset):
        m = show(d)
        out.append({"version": m["version"], "date": m.get("date") or "1970-01-01", "items": m["items"],
                    "bump": m.get("bump_reason"), "changes": m.get("changes"), "content_id": m["content_id"],
                    "quality": m.get("quality") or {}, "previous": m.get("previous_version")})
    return out[::-1]  # newest first


def json_feed(releases_root: str | Path, dataset: str, base_url: str = "") -> dict:
    """JSON Feed 1.1 of a dataset's versions, newest first (deterministic: dates come from the releases)."""
    items = []
    for v in _versions(releases_root, dataset):
        url = f"{base_url}/datasets/{dataset}/releases/{v['version']}"
        ch = v["changes"] or {}
        items.append({"id": f"urn:factory:{dataset}:{v['version']}:{v['content_id']}", "url": url,
                      "title": f"{dataset} {v['version']}", "date_published": f"{v['date']}T00:00:00Z",
                      "content_text": (f"{v['bump']}; {v['items']} items ({ch.get('added', 0)} added, "
                                       f"{ch.get('removed', 0)} removed, {ch.get('relabelled', 0)} relabelled); "
                                       f"audit accuracy {v['quality'].get('audit_accuracy')}"),
                      "_factory": {"version": v["version"], "content_id": v["content_id"], "items": v["items"],
                                   "previous_version": v["previous"], "changes": ch}})
    return {"version": "https://jsonfeed.org/version/1.1", "title": f"{dataset} releases",
            "home_page_url": f"{base_url}/datasets/{dataset}", "feed_url": f"{base_url}/datasets/{dataset}/feed.json",
            "items": items}


def atom_feed(releases_root: str | Path, dataset: str, base_url: str = "") -> str:
    """Atom 1.0 XML of a dataset's versions, newest first."""
    vs = _versions(releases_root, dataset)
    updated = f"{vs[0]['date']}T00:00:00Z" if vs else "1970-01-01T00:00:00Z"
    parts = ['<?xml version="1.0" encoding="utf-8"?>', '<feed xmlns="http://www.w3.org/2005/Atom">',
             f"  <id>urn:factory:{escape(dataset)}:feed</id>", f"  <title>{escape(dataset)} releases</title>",
             f"  <updated>{updated}</updated>",
             f'  <link rel="self" href="{escape(base_url)}/datasets/{escape(dataset)}/feed.atom"/>',
             "  <author><name>annotation factory</name></author>"]
    for v in vs:
        ch = v["changes"] or {}
        parts += ["  <entry>", f"    <id>urn:factory:{escape(dataset)}:{v['version']}:{v['content_id']}</id>",
                  f"    <title>{escape(dataset)} {v['version']}</title>",
                  f"    <updated>{v['date']}T00:00:00Z</updated>",
                  f'    <link href="{escape(base_url)}/datasets/{escape(dataset)}/releases/{v["version"]}"/>',
                  f"    <summary>{escape(str(v['bump']))}; {v['items']} items ({ch.get('added', 0)} added, "
                  f"{ch.get('removed', 0)} removed, {ch.get('relabelled', 0)} relabelled)</summary>", "  </entry>"]
    parts.append("</feed>")
    return "\n".join(parts) + "\n"


def feed_json_text(releases_root: str | Path, dataset: str, base_url: str = "") -> str:
    """json_feed as canonical text (for an HTTP body or a file)."""
    return json.dumps(json_feed(releases_root, dataset, base_url), indent=2, sort_keys=True) + "\n"
