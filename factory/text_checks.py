"""Checks and normal forms of ingested text, shared by ingest and the task types that build an item's text.

Below ingest (a base-layer helper): a task type (``factory.tasks``) that assembles an item from several
columns or a records file (pairs) checks and normalises each part with the same rules ingest applies to a
one-column item, without importing ingest.
"""
from __future__ import annotations

import functools
import json
import re
import unicodedata
from pathlib import Path

from factory.errors import IngestError


def normalise_text(text: str) -> str:
    """The form of a payload that is hashed: NFC, unified newlines, outer whitespace stripped."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


@functools.cache
def _format_chars() -> re.Pattern:
    """Every format character (category Cf) of the BMP, plane 1 and the tag block, as one regex class of
    ranges (from this Python's Unicode tables): one C-level `sub` per text, ~15x faster than per-character tests."""
    runs: list[list[int]] = []
    for c in (c for r in (range(0x20000), range(0xE0000, 0xE0080)) for c in r if unicodedata.category(chr(c)) == "Cf"):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    ranges = "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in runs)
    return re.compile(f"[{ranges}]")


_SURROGATE = re.compile("[\ud800-\udfff]")


def text_key(text: str) -> str:
    """The duplicate key of a payload: NFKC, format characters (zero-width space/joiner, BOM, soft hyphen,
    bidi marks: Unicode category Cf) removed, whitespace runs collapsed.  The item keeps its original text;
    the key only decides which rows are the same item.  (The item id stays the NFC hash, so ids of items
    ingested before this key existed do not change.)"""
    t = unicodedata.normalize("NFKC", text)
    if not t.isascii():  # no ASCII character is a format character
        t = _format_chars().sub("", t)
    return " ".join(t.split())


def value_problem(value: object) -> str | None:
    """Why a text value cannot be stored as it is (a NUL byte, a lone surrogate), or None."""
    if isinstance(value, (dict, list)):  # nested JSON metadata is stored as JSON text: check that text
        value = json.dumps(value, ensure_ascii=False, default=str)
    if not isinstance(value, str):
        return None
    i = value.find("\x00")
    if i >= 0:
        return f"contains a NUL byte (\\x00) at character {i + 1}"
    m = _SURROGATE.search(value)
    if m:
        return (f"contains a lone surrogate U+{ord(m.group()):04X} at character {m.start() + 1} (half of a UTF-16 "
                f"pair, not valid Unicode)")
    return None


def encoding_problem(raw: bytes) -> str | None:
    """Why `raw` is not UTF-8 text, naming the encoding it looks like; None when it decodes as UTF-8 (BOM allowed).

    Hand-written rather than a charset guesser (charset-normalizer, chardet): we refuse, never transcode, so
    only the few encodings that UTF-8 decoding misreads or misnames need naming, and those have sure signs.
    """
    if raw.strip(b"\x00 \t\r\n") == b"" and b"\x00" in raw:
        return "the content is only NUL bytes (binary data, not text)"
    if raw.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        end = "LE" if raw[0] == 0xFF else "BE"
        return (f"UTF-32{end} (it starts with a UTF-32 byte-order mark); re-encode the file as UTF-8 "
                f"(e.g. `iconv -f UTF-32 -t UTF-8`)")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return ("UTF-16 (it starts with a UTF-16 byte-order mark); re-encode the file as UTF-8 "
                "(e.g. `iconv -f UTF-16 -t UTF-8`)")
    head = raw[:4096]
    n = len(head) - len(head) % 4
    if n >= 8 and head.count(b"\x00") >= n // 4:
        # NUL bytes at fixed positions are the code units' high bytes of ASCII text in UTF-16/UTF-32
        def nul_share(step: int, offsets: tuple[int, ...]) -> float:
            cells = [head[i + o] for i in range(0, n, step) for o in offsets]
            return sum(b == 0 for b in cells) / len(cells)

        for name, step, nul, text in (("UTF-32LE", 4, (1, 2, 3), (0,)), ("UTF-32BE", 4, (0, 1, 2), (3,)),
                                      ("UTF-16LE", 2, (1,), (0,)), ("UTF-16BE", 2, (0,), (1,))):
            if nul_share(step, nul) > 0.9 and nul_share(step, text) < 0.1:
                return (f"{name} without a byte-order mark (its bytes follow the {name} pattern of NULs); "
                        f"re-encode the file as UTF-8 (e.g. `iconv -f {name} -t UTF-8`)")
    try:
        raw.decode("utf-8")
        return None
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        return (f"not UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r}) on line {line}; re-encode the file as "
                f"UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8`)")


def decode_text(path: Path, raw: bytes) -> str:
    """A file's bytes as text; IngestError naming the file when it is empty or not UTF-8 (a BOM is removed)."""
    if not raw.strip():
        raise IngestError(f"{path}: the file is empty; nothing was ingested")
    problem = encoding_problem(raw)
    if problem:
        raise IngestError(f"{path}: {problem}; nothing was ingested")
    return raw.decode("utf-8-sig")  # a UTF-8 BOM is accepted and removed
