"""Personal information: an offline detector and redactor (regular expressions plus validators, no model).

Categories (the names a spec lists under `compliance.personal_information`):

| category | finds | validated by |
|---|---|---|
| `email` | addresses like a.b@example.org | a dotted domain with a 2+ letter TLD |
| `phone` | Chinese mobiles (1[3-9] + 9 digits, optional +86) and international numbers (+CC …) | digit count 8–15; mobile prefix |
| `cn_id` | Chinese resident ID numbers (18 characters) | region digit, a real birth date, the ISO 7064 MOD 11-2 check digit |
| `bank_card` | card numbers of 13–19 digits, grouped or not | the Luhn checksum, known leading digits |
| `ip_address` | IPv4 and IPv6 addresses | `ipaddress` parses them |
| `url` | http(s)://… and www.… | — |
| `date_of_birth` | a date next to "born", "DOB", "date of birth", 出生, 生日 | a real calendar date |

A bare date, a random 16-digit number failing Luhn, an 18-digit number with a wrong check digit are
not personal information here: validators keep false positives down, so redaction does not destroy text.
`redact()` replaces each finding with `[CATEGORY]`; findings never carry the raw value, only where it was
and a masked form (`138****5678`), so they can go into the ledger as a provenance event.

Grades (`compliance.class`, after GB/T 43697-2024): `general` data is scanned only for the categories the
spec lists; `important` and `core` data are scanned for every category and a residual scan after
redaction is a blocking check (`residual_scan` / `residual_expectation`).  presidio-analyzer is not used:
its recognisers need a spaCy model download unless run with a no-op NLP engine, and these validators
cover the required categories offline.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import date
from typing import Callable, Iterable

import pandas as pd

CATEGORIES = ("email", "phone", "cn_id", "bank_card", "ip_address", "url", "date_of_birth")
GRADES = ("general", "important", "core")
RESIDUAL_COLUMN = "pii_residual"


@dataclass(frozen=True)
class Finding:
    """One piece of personal information: its category and where it is (never the raw value)."""

    category: str
    start: int
    end: int
    masked: str

    def as_dict(self) -> dict:
        return {"category": self.category, "start": self.start, "end": self.end, "masked": self.masked}


# ----------------------------------------------------------------------------- validators
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def cn_id_check_char(first17: str) -> str:
    """The check character of a Chinese resident ID (GB 11643, ISO 7064 MOD 11-2) from its first 17 digits."""
    return _ID_CHECK[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS)) % 11]


def valid_cn_id(s: str) -> bool:
    """An 18-character Chinese resident ID: region digit 1-8, a real birth date, the right check character."""
    s = s.upper()
    if not re.fullmatch(r"\d{17}[\dX]", s) or s[0] not in "12345678":
        return False
    try:
        born = date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    if not (1900 <= born.year <= date.today().year):
        return False
    return cn_id_check_char(s[:17]) == s[17]


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum (ISO/IEC 7812) of a digit string."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def valid_bank_card(s: str) -> bool:
    """13-19 digits (spaces and dashes allowed), a known issuer digit (2-6, or 9 for China's domestic cards), Luhn."""
    digits = re.sub(r"[\s-]", "", s)
    return digits.isdigit() and 13 <= len(digits) <= 19 and digits[0] in "234569" and luhn_ok(digits) \
        and len(set(digits)) > 1


def valid_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False


def valid_phone(s: str) -> bool:
    digits = re.sub(r"\D", "", s)
    if re.fullmatch(r"(?:86)?1[3-9]\d{9}", digits):
        return True
    return s.strip().startswith("+") and 8 <= len(digits) <= 15


_MONTHS = {m: i + 1 for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                            "nov", "dec"])}


def _parse_date(s: str) -> date | None:
    s = s.strip()
    try:
        if m := re.fullmatch(r"(\d{4})[-/.年](\d{1,2})[-/.月](\d{1,2})日?", s):
            return date(int(m[1]), int(m[2]), int(m[3]))
        if m := re.fullmatch(r"(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})", s):
            a, b, y = int(m[1]), int(m[2]), int(m[3])
            return date(y, b, a) if a > 12 else date(y, a, b)  # day first when it must be, else month first
        if m := re.fullmatch(r"(\d{1,2})(?:st|nd|rd|th)?\s+([A-Za-z]{3})[a-z]*\.?,?\s+(\d{4})", s):
            return date(int(m[3]), _MONTHS[m[2].lower()], int(m[1]))
        if m := re.fullmatch(r"([A-Za-z]{3})[a-z]*\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})", s):
            return date(int(m[3]), _MONTHS[m[1].lower()], int(m[2]))
    except (ValueError, KeyError):
        return None
    return None


# ----------------------------------------------------------------------------- patterns
_DATE = (r"(?:\d{4}[-/.年]\d{1,2}[-/.月]\d{1,2}日?|\d{1,2}[-/.]\d{1,2}[-/.]\d{4}"
         r"|\d{1,2}(?:st|nd|rd|th)?\s+[A-Za-z]{3,9}\.?,?\s+\d{4}|[A-Za-z]{3,9}\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4})")

# (category, pattern, group holding the value, validator); earlier entries win overlaps of equal length
_DETECTORS: list[tuple[str, re.Pattern, int, Callable[[str], bool] | None]] = [
    ("email", re.compile(r"(?<![\w.+-])([A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})\b"),
     1, None),
    ("url", re.compile(r"((?:https?://|www\.)[^\s<>\"'，。、）)]+[^\s<>\"'，。、）).,;:!?])", re.I), 1, None),
    ("date_of_birth", re.compile(
        r"(?:date\s+of\s+birth|birth\s*date|d\.?o\.?b\.?|born(?:\s+on)?|出生日期|出生于|出生|生日)\s*[:：]?\s*(" + _DATE + ")",
        re.I), 1, lambda s: _parse_date(s) is not None),
    ("cn_id", re.compile(r"(?<![\dA-Za-z])(\d{17}[\dXx])(?![\dA-Za-z])"), 1, valid_cn_id),
    ("bank_card", re.compile(r"(?<![\d-])(\d{4}(?:[ -]?\d{4}){2}[ -]?\d{1,7})(?![\d-])"), 1, valid_bank_card),
    ("ip_address", re.compile(r"(?<![\w.:])((?:\d{1,3}\.){3}\d{1,3})(?![\w.])"), 1, valid_ip),
    ("ip_address", re.compile(r"(?<![\w:])((?:[0-9A-Fa-f]{1,4}:){2,7}:?[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{1,4})*"
                              r"|::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4})(?![\w:])"), 1, valid_ip),
    ("phone", re.compile(r"(?<![\d+])((?:\+?86[\s-]?)?1[3-9]\d(?:[\s-]?\d{4}){2})(?!\d)"), 1, valid_phone),
    ("phone", re.compile(r"(?<![\w+])(\+\d{1,3}[\s-]?(?:\(\d{1,4}\)[\s-]?)?\d{2,4}(?:[\s-]?\d{2,4}){1,3})(?!\d)"),
     1, valid_phone),
]


def categories_for(grade: str = "general", personal_information: Iterable[str] = ()) -> tuple[str, ...]:
    """The categories to scan for: those the spec lists; every category for grades above general."""
    listed = tuple(personal_information)
    unknown = [c for c in listed if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"compliance.personal_information: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                         f"{unknown}; use any of {list(CATEGORIES)}")
    if grade not in GRADES:
        raise ValueError(f"compliance.class: '{grade}' is not one of {list(GRADES)}")
    return CATEGORIES if grade != "general" else (listed or CATEGORIES)


def _mask(category: str, value: str) -> str:
    if category == "email":
        user, _, domain = value.partition("@")
        return f"{user[:1]}***@{domain}"
    if category in ("url", "ip_address", "date_of_birth"):
        return f"[{len(value)} chars]"
    keep = re.sub(r"[\s-]", "", value)
    return keep[:3] + "*" * max(0, len(keep) - 7) + keep[-4:] if len(keep) > 7 else "*" * len(keep)


def detect(text: str, categories: Iterable[str] = CATEGORIES) -> list[Finding]:
    """Every piece of personal information in `text` (non-overlapping, in order of position)."""
    wanted = set(categories)
    cands: list[tuple[int, int, int, str]] = []  # start, end, detector rank, category
    for rank, (cat, pattern, group, check) in enumerate(_DETECTORS):
        if cat not in wanted:
            continue
        for m in pattern.finditer(text):
            value = m.group(group)
            if check is None or check(value):
                cands.append((m.start(group), m.end(group), rank, cat))
    cands.sort(key=lambda c: (-(c[1] - c[0]), c[2], c[0]))  # longest first, then detector order
    taken: list[tuple[int, int]] = []
    out = []
    for start, end, _rank, cat in cands:
        if any(start < e and s < end for s, e in taken):
            continue
        taken.append((start, end))
        out.append(Finding(cat, start, end, _mask(cat, text[start:end])))
    return sorted(out, key=lambda f: f.start)


def redact(text: str, categories: Iterable[str] = CATEGORIES) -> tuple[str, list[dict]]:
    """Replace every finding with [CATEGORY]; returns (redacted text, findings as dicts without raw values)."""
    findings = detect(text, categories)
    parts, pos = [], 0
    for f in findings:
        parts.append(text[pos:f.start])
        parts.append(f"[{f.category.upper()}]")
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts), [f.as_dict() for f in findings]


def scan_items(df: pd.DataFrame, column: str = "text", categories: Iterable[str] = CATEGORIES,
               id_column: str = "item_id") -> pd.DataFrame:
    """One row per finding in `df[column]`: item id, category, start, end, masked (empty frame when clean)."""
    cats = tuple(categories)
    rows = [dict(item_id=iid, **f.as_dict())
            for iid, text in zip(df[id_column], df[column]) if isinstance(text, str)
            for f in detect(text, cats)]
    return pd.DataFrame(rows, columns=["item_id", "category", "start", "end", "masked"])


def redact_items(df: pd.DataFrame, column: str = "text", categories: Iterable[str] = CATEGORIES,
                 id_column: str = "item_id") -> tuple[pd.DataFrame, pd.DataFrame]:
    """A copy of `df` with `column` redacted, and the findings (as scan_items) that were redacted."""
    cats = tuple(categories)
    out = df.copy()
    texts, rows = [], []
    for iid, text in zip(df[id_column], df[column]):
        if not isinstance(text, str):
            texts.append(text)
            continue
        red, found = redact(text, cats)
        texts.append(red)
        rows.extend(dict(item_id=iid, **f) for f in found)
    out[column] = texts
    return out, pd.DataFrame(rows, columns=["item_id", "category", "start", "end", "masked"])


# ----------------------------------------------------------------------------- residual scan (blocking check)
def residual_scan(df: pd.DataFrame, column: str = "text", categories: Iterable[str] = CATEGORIES) -> pd.DataFrame:
    """`df` with a `pii_residual` column: the number of findings left in each row (0 when clean).

    The column is what a Great Expectations check validates: `residual_expectation()` expects it to be
    0 on every row, and the failing rows name their item ids like every other expectation.
    """
    cats = tuple(categories)
    counts = [len(detect(t, cats)) if isinstance(t, str) else 0 for t in df[column]]
    return df.assign(**{RESIDUAL_COLUMN: counts})


def residual_expectation(blocking_note: str = "no personal information left after redaction"):
    """The GX 1.x expectation over `residual_scan`'s column: every row has 0 findings (gx imported lazily)."""
    import great_expectations as gx

    return gx.expectations.ExpectColumnValuesToBeBetween(column=RESIDUAL_COLUMN, min_value=0, max_value=0,
                                                         meta={"description": blocking_note})


def residual_check(df: pd.DataFrame, column: str = "text", categories: Iterable[str] = CATEGORIES,
                   id_column: str = "item_id") -> dict:
    """The residual scan as a check outcome without GX: success, how many rows failed, which item ids."""
    scanned = residual_scan(df, column, categories)
    bad = scanned[scanned[RESIDUAL_COLUMN] > 0]
    return {"success": bad.empty, "unexpected_count": int(len(bad)),
            "unexpected_items": bad[id_column].astype(str).tolist()[:50] if id_column in bad else []}
