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
from dataclasses import dataclass, field
from pathlib import Path

from factory.errors import IngestError
from factory.storage.ledger import Ledger, canonical, now
from factory.progress import NULL, Progress
from factory.spec import DatasetSpec
# the text rules live below ingest so task types (pairs) can apply them too; re-exported here for callers
from factory.text_checks import decode_text as _decode, encoding_problem, normalise_text, text_key, value_problem  # noqa: F401

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
    unit: str = "row"  # how a quarantined row is named: 'row' (CSV, Parquet), 'line' (JSONL), 'file' (folder)

    def summary(self) -> str:
        lines = [f"batch {self.batch_id} of dataset '{self.dataset}': {self.items} new items from {self.rows} rows "
                 f"({self.source}, sha256 {self.sha256[:12]}…)",
                 f"  duplicates: {self.duplicates_within} within the batch, {self.duplicates_across} already in earlier batches",
                 f"  quarantined: {len(self.quarantined)} rows"]
        if self.redacted:
            lines.append(f"  personal information redacted in {self.redacted} items (raw text kept, access-controlled)")
        for q in self.quarantined[:10]:
            where = q["source_file"] if self.unit == "file" else f"{q['source_file']} {self.unit} {q['source_row']}"
            lines.append(f"    {where} field '{q['field']}': {q['reason']}")
        if len(self.quarantined) > 10:
            lines.append(f"    … and {len(self.quarantined) - 10} more (see `factory batches show {self.batch_id}`)")
        return "\n".join(lines)


def item_id_for(text: str) -> str:
    """Stable content hash of an item: the same payload gives the same id in every batch and process."""
    return "it_" + hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()[:20]


def text_key_hash(text: str) -> str:
    """What the ledger stores of the duplicate key (items.text_key): its sha256."""
    return hashlib.sha256(text_key(text).encode("utf-8")).hexdigest()[:32]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_columns(path: Path, columns: list[str], spec: DatasetSpec, where: str = "") -> None:
    at = f"{path}{where}"
    for spec_field, col in spec.task.input_fields:  # the type says which columns hold the item
        if col not in columns:
            raise IngestError(f"{at}: missing column '{col}' (the spec's task.{spec_field}); "
                              f"columns found: {columns}; nothing was ingested")
    id_col = spec.task.id_column
    if id_col and id_col not in columns:
        raise IngestError(f"{at}: missing column '{id_col}' (the spec's task.id_column, your own item ids); "
                          f"columns found: {columns}; nothing was ingested")
    allowed = {*spec.task.input_columns, *spec.task.metadata, *RESERVED, *([id_col] if id_col else []),
               *spec.task_type.input_columns}  # e.g. spans: an optional `tokens` column
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        raise IngestError(f"{at}: unknown column(s) {unknown}; the spec of '{spec.name}' allows "
                          f"{list(spec.task.input_columns)} and metadata {list(spec.task.metadata)}. Declare them under "
                          f"task.metadata in the spec or drop them; nothing was ingested")
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise IngestError(f"{at}: duplicate column name(s) {dup}; nothing was ingested")


def _swallowed_rows(field: str, n_columns: int) -> int:
    """How many lines inside a multi-line quoted field look like whole rows of the file (0 if it looks like text).

    A quote that is never closed where it should be makes the reader take the following rows as the text
    of one field; each of those lines then parses, alone, to exactly the header's number of fields.
    """
    segments = field.split("\n")
    lines = segments[1:-1]
    if n_columns < 2 or len(lines) < 2:
        return 0
    # the opening line too: its own other fields were swallowed with it (a paragraph of prose rarely has
    # exactly the header's number of commas on every one of its lines)
    for line in segments[:-1]:
        try:
            rec = next(csv.reader([line], strict=True))
        except (csv.Error, StopIteration):
            return 0
        if len(rec) != n_columns:
            return 0
    return len(lines)


def _rows_csv(path: Path, raw: bytes, spec: DatasetSpec):
    text = _decode(path, raw)
    # read over-long fields whole (the file is in memory already) so they are quarantined with their length;
    # at the default 128 KB limit the reader would stop inside a quoted field and parse its rest as rows
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    # strict: text after a closing quote ('"a" b') is an error for that row, not silently glued on
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except csv.Error as e:
        raise IngestError(f"{path}: header is not valid CSV ({e}); nothing was ingested") from None
    header = [h.strip() for h in header]
    _check_columns(path, header, spec)
    n_lines = text.count("\n") + (not text.endswith("\n"))
    n = 0
    last = reader.line_num
    while True:
        first = last + 1
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            last = reader.line_num
            if "unexpected end of data" in str(e):
                raise IngestError(f"{path}: line {first}: a quote opened on this line is never closed, so lines "
                                  f"{first}–{n_lines} (the rest of the file) would become one field; close the "
                                  f"quote (or double a literal quote as \"\"); nothing was ingested") from None
            n += 1
            yield first, None, "(row)", f"not valid CSV: {e}", ""
            continue
        last = reader.line_num
        n += 1
        row_no = first
        if not any(x.strip() for x in rec):
            continue  # blank line
        if len(rec) != len(header):
            yield row_no, None, "(row)", f"has {len(rec)} fields, the header has {len(header)}", ",".join(rec)
            continue
        if last > first:
            swallowed = max(_swallowed_rows(x, len(header)) for x in rec)
            if swallowed:
                raise IngestError(f"{path}: line {first}: a quoted field opened on this line is only closed on "
                                  f"line {last}, and the {swallowed} lines inside it each look like a row of "
                                  f"{len(header)} fields: probably an unterminated quote on line {first}; close "
                                  f"it (or double a literal quote as \"\"); nothing was ingested")
        yield row_no, dict(zip(header, rec)), None, None, None
    if n == 0:
        raise IngestError(f"{path}: only a header, no data rows; nothing was ingested")


def _json_object_pairs(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise _DuplicateKey(dup)
    return dict(pairs)


class _DuplicateKey(ValueError):
    def __init__(self, keys: list[str]):
        super().__init__(keys)
        self.keys = keys


def _rows_jsonl(path: Path, raw: bytes, spec: DatasetSpec):
    text = _decode(path, raw)
    id_col = spec.task.id_column
    allowed = {*spec.task.input_columns, *spec.task.metadata, *RESERVED, *([id_col] if id_col else []),
               *spec.task_type.input_columns}  # e.g. spans: an optional `tokens` column
    n = 0
    # split on \n only: str.splitlines would also break at U+2028, U+0085 ... which JSON strings may hold
    for line_no, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        n += 1
        try:
            obj = json.loads(line, object_pairs_hook=_json_object_pairs)
        except _DuplicateKey as e:
            yield line_no, None, e.keys[0], (f"duplicate key(s) {e.keys} in one JSON object (which value is "
                                             f"meant is unclear)"), line
            continue
        except json.JSONDecodeError as e:
            yield line_no, None, "(line)", f"broken JSON: {e.msg} at column {e.colno}", line
            continue
        if not isinstance(obj, dict):
            yield line_no, None, "(line)", f"expected a JSON object, got {type(obj).__name__}", line
            continue
        unknown = [k for k in obj if k not in allowed]
        if unknown:
            yield line_no, None, unknown[0], (f"unknown key(s) {unknown}; the spec of '{spec.name}' allows "
                                              f"{sorted(allowed - RESERVED)} (declare them under task.metadata)"), line
            continue
        missing = [k for k in spec.task.input_columns if k not in obj]  # a missing id refuses the file (see ingest)
        if missing:
            yield line_no, None, missing[0], f"missing key '{missing[0]}'", line
            continue
        yield line_no, obj, None, None, None
    if n == 0:
        raise IngestError(f"{path}: no JSON lines; nothing was ingested")


def _rows_parquet(path: Path, raw: bytes, spec: DatasetSpec):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(raw))  # the bytes that were hashed, not a second read of the file
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise IngestError(f"{path}: not a readable Parquet file ({e}); nothing was ingested") from None
    _check_columns(path, table.column_names, spec)
    if table.num_rows == 0:
        raise IngestError(f"{path}: the Parquet file has no rows; nothing was ingested")
    for i, rec in enumerate(table.to_pylist(), start=1):
        yield i, rec, None, None, None


def _rows_textdir(folder: Path, spec: DatasetSpec, digest):
    """Rows of a folder of .txt files; each file is read once and its bytes feed `digest` as they are read."""
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise IngestError(f"{folder}: the folder holds no .txt files; nothing was ingested")
    if len(spec.task.input_fields) > 1:
        n = len(spec.task.input_fields)
        raise IngestError(f"{folder}: a {spec.task.type} dataset reads {'two' if n == 2 else n} columns "
                          f"({', '.join(f'task.{f}' for f, _ in spec.task.input_fields)}); a folder of .txt "
                          f"files has one text per file; ingest a CSV, JSONL or Parquet file; nothing was ingested")
    if spec.task.id_column:
        raise IngestError(f"{folder}: the spec declares task.id_column '{spec.task.id_column}', but a folder of "
                          f".txt files has no id column; ingest a CSV, JSONL or Parquet file; nothing was ingested")
    for p in files:
        rel = str(p.relative_to(folder))
        if p.is_symlink() and not p.resolve().is_relative_to(folder.resolve()):
            yield rel, None, "(file)", "symlink pointing outside the ingested folder", ""
            continue
        raw = p.read_bytes()
        digest.update(rel.encode() + b"\0" + hashlib.sha256(raw).hexdigest().encode() + b"\n")
        problem = encoding_problem(raw)
        if problem:
            yield rel, None, spec.task.input, problem, ""
            continue
        rec = {spec.task.input: raw.decode("utf-8-sig")}
        if "source_file" in spec.task.metadata:
            rec["source_file"] = rel
        yield rel, rec, None, None, None


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


def read_source(path: Path, spec: DatasetSpec, raw: bytes | None = None, digest=None):
    """Yield (row, record | None, field, reason, raw) for each row of a supported source.

    `raw` is the file's bytes as already read (and hashed) by the caller; a folder's files are read here,
    once each, feeding `digest` (a hashlib object) with what was read.
    """
    if path.is_dir():
        return _rows_textdir(path, spec, digest if digest is not None else hashlib.sha256())
    suffix = path.suffix.lower()
    if suffix in ARCHIVES:
        raise IngestError(f"{path}: archives are not accepted (no archive is ever unpacked, so no archive bomb "
                          f"can expand); unpack it yourself and ingest the CSV, JSONL, Parquet file or folder "
                          f"of .txt files inside; nothing was ingested")
    readers = {".csv": _rows_csv, ".jsonl": _rows_jsonl, ".ndjson": _rows_jsonl, ".parquet": _rows_parquet}
    if suffix not in readers:
        raise IngestError(f"{path}: unsupported file type '{suffix}'; use one of {list(SUPPORTED[:-1])} "
                          f"or a folder of .txt files")
    return readers[suffix](path, path.read_bytes() if raw is None else raw, spec)


def _excerpt(value: object) -> str:
    """A bounded, storable excerpt of a quarantined value: NULs and lone surrogates written as escapes."""
    text = str(value)[:2000].replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def gold_label_conflicts(item_ids: list[str | None], labels: list[str], first_row: int = 2) -> list[str]:
    """Rows of a gold file that give one item two different labels, naming both rows (row numbers as in the file)."""
    first: dict[str, tuple[int, str]] = {}
    out = []
    for i, (iid, lab) in enumerate(zip(item_ids, labels), start=first_row):
        if iid is None:
            continue
        if iid in first and first[iid][1] != lab:
            out.append(f"rows {first[iid][0]} and {i} give item {iid} two labels ('{first[iid][1]}' and '{lab}')")
        first.setdefault(iid, (i, lab))
    return out


def _where(q: dict, unit: str) -> str:
    """How a refusal names a quarantined row: the file for a folder, else the row or line number."""
    return f"file {q['source_file']}" if unit == "file" else f"{unit} {q['source_row']}"


def _external_id(value: object) -> str | None:
    """The user's id as text: strings stripped, integers written plainly; None when empty."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(type(value).__name__)
    text = str(value).strip()
    return text or None


def load_records(path: Path, spec: DatasetSpec) -> dict[str, dict] | None:
    """The records file a pairs spec names (the type's ``load_context``); None when the spec names none."""
    return spec.task_type.load_context(path, spec.task)


def ingest(path: str | Path, spec: DatasetSpec, ledger: Ledger, progress: Progress = NULL) -> IngestReport:
    """Ingest one file or folder as a new batch of `spec`'s dataset; all or nothing.  `progress` reports
    the rows read, validated and written (silent by default)."""
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: no such file or folder")
    # hash exactly the bytes that are parsed: one read of each file, so a file changing meanwhile cannot
    # leave a recorded sha256 that describes other bytes than the items
    if path.is_dir():
        digest = hashlib.sha256()
        rows = list(progress.track(read_source(path, spec, digest=digest), "ingest: read", unit="files"))
        sha = digest.hexdigest()
        unit = "file"
    else:
        raw = path.read_bytes()
        sha = hashlib.sha256(raw).hexdigest()
        rows = list(progress.track(read_source(path, spec, raw=raw), "ingest: read", unit="rows"))
        unit = "line" if path.suffix.lower() in (".jsonl", ".ndjson") else "row"
    prior = ledger.batch_by_source(spec.name, sha)
    if prior:
        raise IngestError(f"{path}: this exact content (sha256 {sha[:12]}…) was already ingested as batch "
                          f"{prior['batch_id']} on {prior['created_at']}; nothing was ingested")
    batch_id = "b_" + sha[:16]
    source_name = path.name
    allowed_meta = list(spec.task.metadata)
    item_fields = spec.task_type.item_fields
    id_col = spec.task.id_column
    context = spec.task_type.load_context(path, spec.task)  # pairs: the records file, if the spec names one
    items: dict[str, dict] = {}
    by_key: dict[str, str] = {}          # duplicate key hash -> the item id that first had it
    ext_rows: dict[str, int] = {}        # external id -> the row that first had it
    ext_item: dict[str, str] = {}        # external id -> the item (of this file) its row became or repeats
    id_problems: list[str] = []
    within: list[dict] = []
    quarantined: list[dict] = []
    n_rows = 0
    for row_no, rec, fld, reason, raw_row in progress.track(rows, "ingest: validate", unit=f"{unit}s"):
        n_rows += 1
        src_file = source_name if not path.is_dir() else f"{source_name}/{row_no}"
        src_row = row_no if isinstance(row_no, int) else n_rows
        if rec is None:
            quarantined.append(dict(source_file=src_file, source_row=src_row, field=_excerpt(fld)[:128], reason=reason,
                                    raw=_excerpt(raw_row)))
            continue
        # the type builds the item's text (pairs: two sides, texts or record ids, -> one stored pair text)
        payload, bad_field, problem = spec.task_type.item_payload(rec, spec.task, context)
        if problem:
            pass
        elif payload is None or (isinstance(payload, float) and payload != payload):
            problem = "missing value"
        elif not isinstance(payload, str):
            problem = f"expected text, got {type(payload).__name__}"
        elif len(payload) > MAX_FIELD_CHARS:
            problem = f"{len(payload):,} characters, more than the {MAX_FIELD_CHARS:,} allowed for one item"
        else:
            for k in (*spec.task.input_columns, *([id_col] if id_col else []), *allowed_meta):
                problem = value_problem(rec.get(k)) or value_problem(k if k in rec else None)
                if problem:
                    bad_field = k
                    break
            if not problem and not text_key(payload):
                problem = ("empty after trimming whitespace" if not normalise_text(payload)
                           else "no visible characters (only whitespace and zero-width or other format characters)")
        if problem:
            quarantined.append(dict(source_file=src_file, source_row=src_row, field=bad_field,
                                    reason=problem, raw=_excerpt(payload) if payload is not None else
                                    _excerpt(rec.get(bad_field)) if rec.get(bad_field) is not None else ""))
            continue
        ext = None
        if id_col:
            try:
                ext = _external_id(rec.get(id_col))
            except TypeError as e:
                id_problems.append(f"{unit} {src_row}: {id_col} is a {e}, expected text or an integer")
                continue
            if ext is None:
                id_problems.append(f"{unit} {src_row}: {id_col} is empty or missing")
                continue
            if ext in ext_rows:
                id_problems.append(f"{unit}s {ext_rows[ext]} and {src_row} share {id_col} '{ext}'")
                continue
            ext_rows[ext] = src_row
        text = normalise_text(payload)
        iid = item_id_for(text)
        key = text_key_hash(text)
        if iid in items or key in by_key:
            first = iid if iid in items else by_key[key]
            within.append(dict(item_id=first, source_file=src_file, source_row=src_row, scope="within",
                               external_id=ext))
            if ext:
                ext_item[ext] = first
            continue
        meta = {k: rec.get(k) for k in allowed_meta if k in rec}
        if item_fields is not None:  # what the task type records in the item (spans: its tokens)
            try:
                meta |= item_fields(text, rec)
            except ValueError as e:
                quarantined.append(dict(source_file=src_file, source_row=src_row, field="tokens", reason=str(e),
                                        raw=_excerpt(rec.get("tokens", payload))))
                continue
        by_key[key] = iid
        if ext:
            ext_item[ext] = iid
        items[iid] = dict(item_id=iid, text=text, meta=canonical(meta), source_file=src_file, source_row=src_row,
                          text_key=key, external_id=ext)
    if n_rows == 0:
        raise IngestError(f"{path}: no rows; nothing was ingested")
    if id_problems:
        raise IngestError(f"{path}: the spec's task.id_column '{id_col}' must give every row its own non-empty "
                          f"id; {len(id_problems)} problem(s): " + "; ".join(id_problems[:10])
                          + ("; …" if len(id_problems) > 10 else "") + "; nothing was ingested")
    if not items:
        reasons = "; ".join(f"{_where(q, unit)} field '{q['field']}': {q['reason']}" for q in quarantined[:5])
        raise IngestError(f"{path}: every one of the {n_rows} rows is malformed ({reasons}); nothing was ingested")
    rate = len(quarantined) / n_rows
    if rate > spec.quality.max_quarantine_rate:
        reasons = "; ".join(f"{_where(q, unit)} field '{q['field']}': {q['reason']}" for q in quarantined[:5])
        raise IngestError(f"{path}: {len(quarantined)} of {n_rows} rows ({rate:.0%}) are malformed, more than the "
                          f"spec's quality.max_quarantine_rate {spec.quality.max_quarantine_rate:.0%} ({reasons}); "
                          f"fix the file and ingest it again; nothing was ingested")
    known = ledger.known_items(spec.name, items)
    # the same text up to NFKC, zero-width characters and whitespace, already in an earlier batch
    for key, (first_id, first_batch) in ledger.known_text_keys(spec.name, list(by_key)).items():
        iid = by_key[key]
        if iid not in known and first_id != iid:
            known[iid] = first_batch
            items[iid]["duplicate_of"] = first_id
    if id_col:
        clash = []
        for ext, (other, other_batch) in ledger.known_external_ids(spec.name, list(ext_item)).items():
            mine = items[ext_item[ext]].get("duplicate_of", ext_item[ext])
            if other != mine:
                clash.append(f"{unit} {ext_rows[ext]}: {id_col} '{ext}' already names item {other} of batch "
                             f"{other_batch}, whose text differs")
        if clash:
            raise IngestError(f"{path}: {len(clash)} id(s) already used for other items: " + "; ".join(clash[:10])
                              + "; nothing was ingested")
    across = [dict(item_id=items[i].get("duplicate_of", i), source_file=items[i]["source_file"],
                   source_row=items[i]["source_row"], scope="across", first_batch_id=b,
                   external_id=items[i]["external_id"]) for i, b in known.items()]
    for d in within:
        d["first_batch_id"] = known.get(d["item_id"], batch_id)
    new_items = [dict({k: v for k, v in r.items() if k != "duplicate_of"}, dataset=spec.name, batch_id=batch_id)
                 for i, r in items.items() if i not in known]
    if not new_items:
        raise IngestError(f"{path}: all {len(items)} items are already in earlier batches "
                          f"(e.g. {next(iter(known))} in {next(iter(known.values()))}); nothing was ingested")
    batch_row = dict(batch_id=batch_id, dataset=spec.name, source_path=str(path.resolve()), source_sha256=sha,
                     n_rows=n_rows, n_items=len(new_items), n_duplicates=len(within) + len(across),
                     n_quarantined=len(quarantined), spec_version=spec.version, created_at=now())
    # personal information is redacted before anyone sees the items; raw text and events in the same transaction
    from factory import compliance

    raws, redactions = compliance.redact_items(spec, {r["item_id"]: r for r in new_items}, batch_id)
    if raws and item_fields is not None:  # the recorded tokens follow the redacted text: no raw words in metadata
        redacted = {r["item_id"] for r in raws}
        for r in new_items:
            if r["item_id"] in redacted:
                r["meta"] = canonical(json.loads(r["meta"]) | item_fields(r["text"], {}))
    if raws:
        compliance.ensure(ledger)
    with progress.work("ingest: write", len(new_items)):
        ledger.add_batch(batch_row,
                         new_items,
                         [dict(d, dataset=spec.name, batch_id=batch_id) for d in within + across],
                         [dict(q, dataset=spec.name, batch_id=batch_id) for q in quarantined],
                         events=redactions, extra=[(compliance.raw_payloads, raws)])
    report = IngestReport(spec.name, batch_id, str(path), sha, n_rows, len(new_items), len(within), len(across),
                          quarantined)
    report.redacted = len(raws)
    report.unit = unit
    return report
