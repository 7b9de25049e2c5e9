"""Collection: read a CSV, JSONL, Parquet file or a folder of text files as one batch.

Item id = a stable hash of the item's content, so the same text is the same item in every batch.
Header-level problems (empty file, undecodable bytes, unknown or missing columns) refuse the whole
file; row-level problems send the row to quarantine with file, row, field and reason.  The batch,
its items, duplicates and quarantined rows are written in one transaction, or not at all.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from factory.errors import IngestError
from factory.ledger import Ledger, canonical, now
from factory.spec import DatasetSpec

SUPPORTED = (".csv", ".jsonl", ".ndjson", ".parquet", ".txt")
MAX_FIELD_CHARS = 1_000_000  # longer payloads are quarantined: nobody can label a 1 MB item
RESERVED = {"item_id", "id"}  # accepted and ignored: the factory derives ids from content


@dataclass
class IngestReport:
    """What one ingest did."""

    dataset: str
    batch_id: str
    source: str
    sha256: str
    rows: int
    items: int
    duplicates_within: int
    duplicates_across: int
    quarantined: list[dict] = field(default_factory=list)
    redacted: int = 0  # items whose personal information was redacted before anyone saw them

    def summary(self) -> str:
        lines = [f"batch {self.batch_id} of dataset '{self.dataset}': {self.items} new items from {self.rows} rows "
                 f"({self.source}, sha256 {self.sha256[:12]}…)",
                 f"  duplicates: {self.duplicates_within} within the batch, {self.duplicates_across} already in earlier batches",
                 f"  quarantined: {len(self.quarantined)} rows"]
        if self.redacted:
            lines.append(f"  personal information redacted in {self.redacted} items (raw text kept, access-controlled)")
        for q in self.quarantined[:10]:
            lines.append(f"    {q['source_file']} row {q['source_row']} field '{q['field']}': {q['reason']}")
        if len(self.quarantined) > 10:
            lines.append(f"    … and {len(self.quarantined) - 10} more (see `factory batches show {self.batch_id}`)")
        return "\n".join(lines)


def normalise_text(text: str) -> str:
    """The form of a payload that is hashed: NFC, unified newlines, outer whitespace stripped."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def item_id_for(text: str) -> str:
    """Stable content hash of an item: the same payload gives the same id in every batch and process."""
    return "it_" + hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()[:20]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    if not raw.strip():
        raise IngestError(f"{path}: the file is empty; nothing was ingested")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise IngestError(f"{path}: UTF-16 (it starts with a UTF-16 byte-order mark); re-encode the file as UTF-8 "
                          f"(e.g. `iconv -f UTF-16 -t UTF-8`); nothing was ingested")
    try:
        return raw.decode("utf-8-sig")  # a UTF-8 BOM is accepted and removed
    except UnicodeDecodeError as e:
        raise IngestError(f"{path}: not UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r}); "
                          f"re-encode the file as UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8`); nothing was ingested") from None


def _check_columns(path: Path, columns: list[str], spec: DatasetSpec) -> None:
    if spec.task.input not in columns:
        raise IngestError(f"{path}: missing column '{spec.task.input}' (the spec's task.input); "
                          f"columns found: {columns}; nothing was ingested")
    allowed = {spec.task.input, *spec.task.metadata, *RESERVED}
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        raise IngestError(f"{path}: unknown column(s) {unknown}; the spec of '{spec.name}' allows "
                          f"'{spec.task.input}' and metadata {list(spec.task.metadata)}. Declare them under "
                          f"task.metadata in the spec or drop them; nothing was ingested")
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise IngestError(f"{path}: duplicate column name(s) {dup}; nothing was ingested")


def _rows_csv(path: Path, spec: DatasetSpec):
    text = _decode(path)
    # read over-long fields whole (the file is in memory already) so they are quarantined with their length;
    # at the default 128 KB limit the reader would stop inside a quoted field and parse its rest as rows
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as e:
        raise IngestError(f"{path}: header is not valid CSV ({e}); nothing was ingested") from None
    header = [h.strip() for h in header]
    _check_columns(path, header, spec)
    n = 0
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            yield reader.line_num, None, "(row)", f"not valid CSV: {e}", ""
            continue
        n += 1
        row_no = reader.line_num
        if not any(x.strip() for x in rec):
            continue  # blank line
        if len(rec) != len(header):
            yield row_no, None, "(row)", f"has {len(rec)} fields, the header has {len(header)}", ",".join(rec)
            continue
        yield row_no, dict(zip(header, rec)), None, None, None
    if n == 0:
        raise IngestError(f"{path}: only a header, no data rows; nothing was ingested")


def _rows_jsonl(path: Path, spec: DatasetSpec):
    text = _decode(path)
    seen_cols: list[str] = []
    n = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        n += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield line_no, None, "(line)", f"broken JSON: {e.msg} at column {e.colno}", line
            continue
        if not isinstance(obj, dict):
            yield line_no, None, "(line)", f"expected a JSON object, got {type(obj).__name__}", line
            continue
        cols = list(obj)
        if cols != seen_cols:
            _check_columns(path, cols, spec)  # header-level rule applies to every object's keys
            seen_cols = cols
        yield line_no, obj, None, None, None
    if n == 0:
        raise IngestError(f"{path}: no JSON lines; nothing was ingested")


def _rows_parquet(path: Path, spec: DatasetSpec):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise IngestError(f"{path}: not a readable Parquet file ({e}); nothing was ingested") from None
    _check_columns(path, table.column_names, spec)
    if table.num_rows == 0:
        raise IngestError(f"{path}: the Parquet file has no rows; nothing was ingested")
    for i, rec in enumerate(table.to_pylist(), start=1):
        yield i, rec, None, None, None


def _rows_textdir(folder: Path, spec: DatasetSpec):
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise IngestError(f"{folder}: the folder holds no .txt files; nothing was ingested")
    for p in files:
        rel = str(p.relative_to(folder))
        if p.is_symlink() and not p.resolve().is_relative_to(folder.resolve()):
            yield rel, None, "(file)", "symlink pointing outside the ingested folder", ""
            continue
        try:
            text = p.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            yield rel, None, spec.task.input, f"not UTF-8 (byte {e.start}); re-encode as UTF-8", ""
            continue
        rec = {spec.task.input: text}
        if "source_file" in spec.task.metadata:
            rec["source_file"] = rel
        yield rel, rec, None, None, None


def _folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.txt")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


ARCHIVES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".jar")


def inbox_path(inbox: str | Path, name: str) -> Path:
    """The entry `name` of an inbox folder, refusing any name or symlink that leads outside the inbox."""
    inbox = Path(inbox)
    if not name or name in (".", "..") or "\0" in name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise IngestError(f"{inbox}/{name}: the name leaves the inbox ('..' or an absolute path); "
                          f"nothing was ingested, rename the file")
    path = inbox / name
    real_inbox = inbox.resolve()
    if not path.resolve().is_relative_to(real_inbox):
        raise IngestError(f"{path}: a symlink pointing outside the inbox ({path.resolve()}); nothing was "
                          f"ingested, copy the file into the inbox instead")
    if path.is_dir():
        for p in path.rglob("*"):
            if not p.resolve().is_relative_to(real_inbox):
                raise IngestError(f"{p}: a symlink pointing outside the inbox ({p.resolve()}); nothing was "
                                  f"ingested, copy the file into the inbox instead")
    return path


def read_source(path: Path, spec: DatasetSpec):
    """Yield (row, record | None, field, reason, raw) for each row of a supported source."""
    if path.is_dir():
        return _rows_textdir(path, spec)
    suffix = path.suffix.lower()
    if suffix in ARCHIVES:
        raise IngestError(f"{path}: archives are not accepted (no archive is ever unpacked, so no archive bomb "
                          f"can expand); unpack it yourself and ingest the CSV, JSONL, Parquet file or folder "
                          f"of .txt files inside; nothing was ingested")
    if suffix == ".csv":
        return _rows_csv(path, spec)
    if suffix in (".jsonl", ".ndjson"):
        return _rows_jsonl(path, spec)
    if suffix == ".parquet":
        return _rows_parquet(path, spec)
    raise IngestError(f"{path}: unsupported file type '{suffix}'; use one of {list(SUPPORTED[:-1])} "
                      f"or a folder of .txt files")


def ingest(path: str | Path, spec: DatasetSpec, ledger: Ledger) -> IngestReport:
    """Ingest one file or folder as a new batch of `spec`'s dataset; all or nothing."""
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: no such file or folder")
    sha = _folder_digest(path) if path.is_dir() else sha256_file(path)
    prior = ledger.batch_by_source(spec.name, sha)
    if prior:
        raise IngestError(f"{path}: this exact content (sha256 {sha[:12]}…) was already ingested as batch "
                          f"{prior['batch_id']} on {prior['created_at']}; nothing was ingested")
    batch_id = "b_" + sha[:16]
    source_name = path.name
    allowed_meta = list(spec.task.metadata)
    items: dict[str, dict] = {}
    within: list[dict] = []
    quarantined: list[dict] = []
    n_rows = 0
    for row_no, rec, fld, reason, raw in read_source(path, spec):
        n_rows += 1
        src_file = source_name if not path.is_dir() else f"{source_name}/{row_no}"
        src_row = row_no if isinstance(row_no, int) else n_rows
        if rec is None:
            quarantined.append(dict(source_file=src_file, source_row=src_row, field=fld, reason=reason,
                                    raw=str(raw)[:2000]))
            continue
        payload = rec.get(spec.task.input)
        problem = None
        if payload is None or (isinstance(payload, float) and payload != payload):
            problem = "missing value"
        elif not isinstance(payload, str):
            problem = f"expected text, got {type(payload).__name__}"
        elif not normalise_text(payload):
            problem = "empty after trimming whitespace"
        elif len(payload) > MAX_FIELD_CHARS:
            problem = f"{len(payload):,} characters, more than the {MAX_FIELD_CHARS:,} allowed for one item"
        if problem:
            quarantined.append(dict(source_file=src_file, source_row=src_row, field=spec.task.input,
                                    reason=problem, raw=str(payload)[:2000] if payload is not None else ""))
            continue
        text = normalise_text(payload)
        iid = item_id_for(text)
        if iid in items:
            within.append(dict(item_id=iid, source_file=src_file, source_row=src_row, scope="within"))
            continue
        meta = {k: rec.get(k) for k in allowed_meta if k in rec}
        items[iid] = dict(item_id=iid, text=text, meta=canonical(meta), source_file=src_file, source_row=src_row)
    if n_rows == 0:
        raise IngestError(f"{path}: no rows; nothing was ingested")
    if not items:
        reasons = "; ".join(f"row {q['source_row']} field '{q['field']}': {q['reason']}" for q in quarantined[:5])
        raise IngestError(f"{path}: every one of the {n_rows} rows is malformed ({reasons}); nothing was ingested")
    rate = len(quarantined) / n_rows
    if rate > spec.quality.max_quarantine_rate:
        reasons = "; ".join(f"row {q['source_row']} field '{q['field']}': {q['reason']}" for q in quarantined[:5])
        raise IngestError(f"{path}: {len(quarantined)} of {n_rows} rows ({rate:.0%}) are malformed, more than the "
                          f"spec's quality.max_quarantine_rate {spec.quality.max_quarantine_rate:.0%} ({reasons}); "
                          f"fix the file and ingest it again; nothing was ingested")
    known = ledger.known_items(spec.name, items)
    across = [dict(item_id=i, source_file=items[i]["source_file"], source_row=items[i]["source_row"],
                   scope="across", first_batch_id=b) for i, b in known.items()]
    for d in within:
        d["first_batch_id"] = known.get(d["item_id"], batch_id)
    new_items = [dict(r, dataset=spec.name, batch_id=batch_id) for i, r in items.items() if i not in known]
    if not new_items:
        raise IngestError(f"{path}: all {len(items)} items are already in earlier batches "
                          f"(e.g. {next(iter(known))} in {next(iter(known.values()))}); nothing was ingested")
    batch_row = dict(batch_id=batch_id, dataset=spec.name, source_path=str(path.resolve()), source_sha256=sha,
                     n_rows=n_rows, n_items=len(new_items), n_duplicates=len(within) + len(across),
                     n_quarantined=len(quarantined), spec_version=spec.version, created_at=now())
    # personal information is redacted before anyone sees the items; raw text and events in the same transaction
    from factory import compliance

    raws, redactions = compliance.redact_items(spec, {r["item_id"]: r for r in new_items}, batch_id)
    if raws:
        compliance.ensure(ledger)
    ledger.add_batch(batch_row,
                     new_items,
                     [dict(d, dataset=spec.name, batch_id=batch_id) for d in within + across],
                     [dict(q, dataset=spec.name, batch_id=batch_id) for q in quarantined],
                     events=redactions, extra=[(compliance.raw_payloads, raws)])
    report = IngestReport(spec.name, batch_id, str(path), sha, n_rows, len(new_items), len(within), len(across),
                          quarantined)
    report.redacted = len(raws)
    return report
