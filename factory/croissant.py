"""Croissant 1.1 metadata (with the Responsible-AI annotation fields) for a release folder.

Written by hand as JSON-LD so the factory does not need mlcroissant at run time; the tests validate
the output with ``mlcroissant`` offline (the optional ``release`` extra).  Deterministic: the same
inputs give the same bytes; the only date is ``datePublished``, the ingest date of the newest batch.
"""
from __future__ import annotations

from typing import Any

CONTEXT = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "equivalentProperty": "cr:equivalentProperty",
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

FIELD_TYPES = {
    "item_id": ("sc:Text", "Content-hash id of the item (it_ + 20 hex digits)."),
    "text": ("sc:Text", "The item's text as ingested."),
    "left": ("sc:Text", "Pairs: the left side of the pair (a text, or a record as 'field: value' lines)."),
    "right": ("sc:Text", "Pairs: the right side of the pair (a text, or a record as 'field: value' lines)."),
    "label": ("sc:Text", "The final label, one of the dataset's classes."),
    "confidence": ("sc:Float", "Confidence of the final label in [0, 1] (fused model posterior, or people's agreement share)."),
    "source": ("sc:Text", "Where the label came from: auto (models), verified (models checked by a model), calibrated (people checked "
                         "the models), annotated (people labelled), arbitrated (an expert settled a dispute)."),
    "split": ("sc:Text", "Deterministic split from the item id's hash."),
    "batch_id": ("sc:Text", "The ingest batch the item came in."),
    "annotators": ("sc:Text", "JSON list of the pseudonymous people who answered for this item."),
    "n_events": ("sc:Integer", "Number of ledger events behind the label (see provenance/events.parquet)."),
    "guideline_version": ("sc:Text", "Guideline version the label followed."),
    "spec_version": ("sc:Text", "Content hash of the dataset spec in force."),
}


def croissant(manifest: dict, spec: Any, file_sha256: dict[str, str], columns: list[str],
              machine_tools: list[str], annotations_per_item: str, date_published: str) -> dict:
    """The croissant.json document of a release (a JSON-ready dict)."""
    ds, version = manifest["dataset"], manifest["version"]
    distribution = []
    formats = {"labels.parquet": "application/x-parquet", "labels.jsonl": "application/jsonlines",
               "labels.csv": "text/csv"}
    for name, fmt in formats.items():
        if name in file_sha256:
            distribution.append({"@type": "cr:FileObject", "@id": name, "name": name, "contentUrl": name,
                                 "encodingFormat": fmt, "sha256": file_sha256[name]})
    fields = []
    for c in columns:
        dtype, desc = FIELD_TYPES.get(c, ("sc:Text", c))
        fields.append({"@type": "cr:Field", "@id": f"labels/{c}", "name": c, "description": desc,
                       "dataType": dtype, "source": {"fileObject": {"@id": "labels.parquet"},
                                                      "extract": {"column": c}}})
        if c == "label":  # the task type's field: a reference to the classes record set (repeated for sets)
            fields[-1].update(spec.task_type.croissant_field(spec.class_names))
        extra = spec.task_type.croissant_extra_fields(spec.class_names)
        if c in extra:  # a type's own columns (spans: the tokens and the BIO tags, both repeated)
            fields[-1].update(extra[c])
    # the label schema as a categorical enumeration (Croissant's way to declare class labels)
    classes_rs = {"@type": "cr:RecordSet", "@id": "classes", "name": "classes", "dataType": "sc:Enumeration",
                  "description": "The dataset's classes: the values the label field may take.",
                  "key": {"@id": "classes/name"},
                  "field": [{"@type": "cr:Field", "@id": "classes/name", "name": "name", "dataType": "sc:Text",
                             "description": "Class name as it appears in the label field."},
                            {"@type": "cr:Field", "@id": "classes/definition", "name": "definition",
                             "dataType": "sc:Text", "description": "What the class means (from the spec)."}],
                  "data": [{"classes/name": c.name, "classes/definition": c.definition} for c in spec.classes]}
    q = manifest.get("quality", {})
    classes = ", ".join(f"{c.name} ({c.definition})" for c in spec.classes)
    sensitive = list(spec.compliance.personal_information)
    pii = q.get("pii_items_flagged")
    return {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": ["http://mlcommons.org/croissant/1.1", "http://mlcommons.org/croissant/RAI/1.0"],
        "name": ds,
        "description": spec.description,
        "version": version,
        "license": _license_url(spec.license),
        "url": f"releases/{ds}/{version}/",
        "datePublished": date_published,
        "citeAs": f"{ds}, version {version}, annotation factory release (content id in manifest-sha256.txt)",
        "creator": {"@type": "sc:Organization", "name": "annotation factory"},
        "keywords": ["annotation", "labels", spec.task.type],
        "distribution": distribution,
        "recordSet": [classes_rs, {"@type": "cr:RecordSet", "@id": "labels", "name": "labels",
                                   "description": f"One record per item; classes: {classes}.", "field": fields}],
        # Responsible-AI annotation fields (Croissant RAI 1.0)
        "rai:dataCollection": "Items ingested in batches by the factory (content-hash ids, duplicates and "
                              "malformed rows quarantined with their reason).",
        "rai:dataAnnotationProtocol": (
            f"Mode {spec.mode}: several models of different families pre-label every item and are fused; routing "
            f"flags the items the machines cannot vouch for (disagreement, confidence below "
            f"{spec.quality.confidence_threshold}, suspected bias) for people, who follow guideline version "
            f"{spec.guideline.version}, and draws a random audit sample of the labels accepted without a person. "
            + (q.get("routing_statement") or "") + f" Quality standard {manifest['quality_standard']['name']}."),
        "rai:dataAnnotationPlatform": ["annotation factory (Dagster asset graph, hash-chained ledger)"],
        "rai:dataAnnotationAnalysis": [
            f"Audit accuracy of auto-accepted labels: {_fmt(q.get('audit_accuracy'))}; see quality/certificate.json "
            "and quality/report.html for intervals, agreement (Cohen, Fleiss, Krippendorff) and per-class figures."],
        "rai:annotationsPerItem": annotations_per_item,
        "rai:annotatorDemographics": ["not collected; annotators are pseudonymous ids"],
        "rai:machineAnnotationTools": machine_tools,
        "rai:personalSensitiveInformation": (
            [f"declared categories: {', '.join(sensitive)}"] if sensitive else ["none declared in the spec"])
            + [f"residual PII screen (regex: email, phone, IBAN, card, CN id): {pii} item(s) flagged"],
        "rai:dataLimitations": ["Labels not seen by people are machine labels; their accuracy is estimated from "
                                "the random audit sample only."],
        "rai:dataReleaseMaintenancePlan": ["Immutable semantic versions; corrections arrive as new versions "
                                           "(see CHANGELOG.md)."],
    }


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _license_url(spdx: str) -> str:
    known = {"CC-BY-4.0": "https://creativecommons.org/licenses/by/4.0/",
             "CC-BY-SA-4.0": "https://creativecommons.org/licenses/by-sa/4.0/",
             "CC0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
             "MIT": "https://opensource.org/licenses/MIT",
             "Apache-2.0": "https://www.apache.org/licenses/LICENSE-2.0"}
    return known.get(spdx, f"https://spdx.org/licenses/{spdx}.html")


def validate_croissant(path: str) -> list[str]:
    """Validate a croissant.json with mlcroissant (offline); returns the problems (ImportError if absent)."""
    import mlcroissant as mlc

    try:
        ds = mlc.Dataset(jsonld=path)
    except mlc.ValidationError as e:
        return [str(e)]
    issues = getattr(ds.metadata, "issues", None) or getattr(ds.metadata.ctx, "issues", None)
    errors = list(getattr(issues, "errors", []) or [])
    return [str(e) for e in errors]
