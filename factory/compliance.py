"""Personal information before people and releases: redaction at ingest, guarded raw payloads,
the residual scan, and the de-identification statement a release carries.

When the spec's compliance grade is above general, or it declares personal-information categories,
every item is scanned by the offline detector (factory.pii) at ingest: the text that models, people
and releases see is the redacted one, each redaction is a provenance event (categories and counts,
never the values), and the raw text goes to `raw_payloads`, readable only by the roles the spec
allows (`compliance.raw_readers`).
"""
from __future__ import annotations

import sqlalchemy as sa

from factory.errors import FactoryError
from factory.storage.ledger import canonical, now
from factory.pii import categories_for, redact
from factory.storage.tables import compliance_metadata, raw_payloads

DETECTOR = "factory.pii@1"


class AccessDenied(FactoryError):
    """A role the spec does not allow asked for a raw payload."""


def ensure(ledger) -> None:
    compliance_metadata.create_all(ledger.engine)


def categories(spec) -> tuple[str, ...]:
    """What to scan for; empty when the spec says there is nothing to protect (grade general, none declared)."""
    if spec.compliance.grade == "general" and not spec.compliance.personal_information:
        return ()
    return categories_for(spec.compliance.grade, spec.compliance.personal_information)


def redact_items(spec, items: dict[str, dict], batch_id: str) -> tuple[list[dict], list[dict]]:
    """Redact the items in place (their `text`); return the raw rows to keep and the redaction events."""
    cats = categories(spec)
    raws, events = [], []
    if not cats:
        return raws, events
    ts = now()
    for iid, row in items.items():
        red, found = redact(row["text"], cats)
        if not found:
            continue
        counts: dict[str, int] = {}
        for f in found:
            counts[f["category"]] = counts.get(f["category"], 0) + 1
        raws.append(dict(dataset=spec.name, item_id=iid, text=row["text"], categories=canonical(counts), created_at=ts))
        row["text"] = red
        events.append(dict(batch_id=batch_id, item_id=iid, kind="redaction", actor=DETECTOR, label=None,
                           dedup_key=f"redaction:{spec.name}:{iid}",
                           payload={"categories": counts, "grade": spec.compliance.grade},
                           spec_version=spec.version, guideline_version=spec.guideline.version))
    return raws, events


def raw_payload(fx, dataset: str, item_id: str, role: str) -> str:
    """The raw (unredacted) text of an item, for the roles the spec allows only."""
    spec = fx.spec(dataset)
    if role not in spec.compliance.raw_readers:
        raise AccessDenied(f"role '{role}' may not read raw payloads of '{dataset}' "
                           f"(compliance.raw_readers: {list(spec.compliance.raw_readers)})")
    ensure(fx.ledger)
    with fx.ledger.reader.connect() as c:
        row = c.execute(sa.select(raw_payloads.c.text).where(raw_payloads.c.dataset == dataset,
                                                             raw_payloads.c.item_id == item_id)).first()
    if row is not None:
        return row.text
    items = fx.ledger.items(dataset, item_ids=[item_id])
    if items.empty:
        raise FactoryError(f"item '{item_id}' is not in dataset '{dataset}'")
    return items.iloc[0]["text"]  # nothing was redacted: the stored text is the raw text


def statement(spec, n_items: int, n_redacted: int, residual: dict | None) -> dict:
    """The de-identification statement of a release."""
    cats = categories(spec)
    if not cats:
        text = (f"Compliance grade '{spec.compliance.grade}' with no personal-information categories declared: "
                f"no redaction was required or applied.")
    else:
        text = (f"Before any person or model saw them, all {n_items} items were scanned offline ({DETECTOR}) for "
                f"{', '.join(cats)}; {n_redacted} item(s) had findings, replaced by [CATEGORY] placeholders "
                f"(each a provenance event). Raw payloads stay in the factory, readable by "
                f"{', '.join(spec.compliance.raw_readers)} only."
                + (f" Residual scan of the released text: {residual['unexpected_count']} item(s) with findings."
                   if residual is not None else ""))
    return {"grade": spec.compliance.grade, "categories_scanned": list(cats), "items_redacted": n_redacted,
            "residual_items": None if residual is None else residual["unexpected_count"], "statement": text}
