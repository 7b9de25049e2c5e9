"""``pairs``: entity matching.  Each item is two things (two texts, or two records), the answer one class:
by default ``same`` or ``different`` (or the spec's own classes, e.g. ``duplicate``/``related``/``unrelated``).

A pair is one class per item, so answers, fusion (Dawid-Skene), agreement (Krippendorff's alpha, nominal),
the Great Expectations of the final labels and the label feature of a release are those of
``classification``; what differs is the item (two sides, see :mod:`factory.tasks.pair_codec`), the
labelers (pair-similarity families, :mod:`factory.pair_labelers`), the release's ``left``/``right``
columns, the Label Studio view (two texts side by side) and the workbench widget (``pair``: the two sides
side by side; digits choose, Enter submits).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, ClassVar, Sequence
from xml.sax.saxutils import quoteattr

from factory.errors import IngestError
from factory.tasks import pair_codec
from factory.tasks.classification import Classification
from factory.tasks.pair_codec import item_columns as _item_columns
from factory.text_checks import decode_text, normalise_text, text_key, value_problem


class Pairs(Classification):
    name: ClassVar[str] = "pairs"
    pipeline_ready: ClassVar[bool] = True
    answer_shape: ClassVar[str] = "one"
    modes: ClassVar[tuple[str, ...]] = ("prelabel-human",)  # human-model / prelabel-model: not run on pairs yet
    widget: ClassVar[str] = "pair"
    shortcuts: ClassVar[str] = "digit 1-9: choose that class; Enter: submit"
    #: Label Studio object tags of the two sides; the choice refers to the left one
    ls_objects: ClassVar[tuple[str, str]] = ("left", "right")

    # -- batch pipeline hooks (see factory.tasks.base.BatchHooks)
    def make_labelers(self, seed: int = 0) -> list:
        from factory.pair_labelers import make_pair_labelers

        return make_pair_labelers(seed=seed)

    def labeler_suite(self) -> str:
        from factory.pair_labelers import pair_suite_version

        return pair_suite_version()

    def spec_errors(self, classes: Sequence[str]) -> list[str]:
        return [] if len(classes) >= 2 else [f"pairs needs at least 2 classes (e.g. same, different), got {len(classes)}"]

    # -- the spec's task section and ingest (see factory.tasks.base.TaskTypeBase)
    spec_fields: ClassVar[tuple[str, ...]] = ("left", "right", "records", "record_fields")

    def input_fields(self, task: Any) -> tuple[tuple[str, str], ...]:
        """The two columns holding the sides: ``task.left`` and ``task.right``."""
        return (("left", task.left), ("right", task.right))

    def task_errors(self, task: Any) -> list[str]:
        missing = [f for f in ("left", "right") if not getattr(task, f)]
        if missing:
            return [f"task.type pairs needs task.left and task.right (the columns holding the two sides "
                    f"of a pair); missing: {missing}"]
        if task.left == task.right:
            return [f"task.left and task.right are both '{task.left}'; name two different columns"]
        clash = [c for c in (task.left, task.right) if c in task.metadata or c == task.id_column]
        if clash:
            return [f"task.left/task.right {clash} must be their own columns, not metadata or the id column"]
        if task.record_fields and not task.records:
            return ["task.record_fields names fields of task.records, which is not set"]
        return []

    def load_context(self, path: Any, task: Any) -> dict[str, dict] | None:
        """The records file the spec names (``task.records``, relative to the ingested file's folder): record id
        -> the record's shown fields, ``record_id`` first.  None when the spec names none.  IngestError naming the
        file and the cause (missing, no record_id column, an unknown field, a repeated id)."""
        if not task.records:
            return None
        path = Path(path)
        rp = Path(task.records)
        rp = rp if rp.is_absolute() else (path if path.is_dir() else path.parent) / rp
        if not rp.is_file():
            raise IngestError(f"{rp}: the records file the spec names (task.records '{task.records}', relative to "
                              f"the ingested file's folder) does not exist; nothing was ingested")
        reader = csv.DictReader(io.StringIO(decode_text(rp, rp.read_bytes()), newline=""))
        header = [h.strip() for h in reader.fieldnames or []]
        if pair_codec.ID_FIELD not in header:
            raise IngestError(f"{rp}: a records file needs a '{pair_codec.ID_FIELD}' column; columns found: {header}; "
                              f"nothing was ingested")
        fields = list(task.record_fields) or [h for h in header if h != pair_codec.ID_FIELD]
        unknown = [f for f in fields if f not in header]
        if unknown:
            raise IngestError(f"{rp}: task.record_fields {unknown} are not columns of the records file; columns "
                              f"found: {header}; nothing was ingested")
        out: dict[str, dict] = {}
        for n, row in enumerate(reader, start=2):
            row = {(k or "").strip(): v for k, v in row.items()}
            rid = (row.get(pair_codec.ID_FIELD) or "").strip()
            if not rid:
                raise IngestError(f"{rp}: row {n}: empty {pair_codec.ID_FIELD}; nothing was ingested")
            if rid in out:
                raise IngestError(f"{rp}: row {n}: {pair_codec.ID_FIELD} '{rid}' appears twice; nothing was ingested")
            out[rid] = {pair_codec.ID_FIELD: rid, **{f: normalise_text(row.get(f) or "") for f in fields}}
        return out

    def item_payload(self, row: dict, task: Any, context: dict[str, dict] | None) -> tuple[str | None, str, str | None]:
        """(stored pair text or None, the field at fault, why) for one row: two texts, or two record ids into
        the records file (``context``), as :func:`factory.tasks.pair_codec.encode` of the two sides."""
        sides = []
        columns = [c for _, c in self.input_fields(task)]
        for col in columns:
            value = row.get(col)
            if value is None or (isinstance(value, float) and value != value):
                return None, col, "missing value"
            if context is not None:
                rid = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value).strip()
                if rid not in context:
                    return None, col, f"record id '{rid}' is not in the records file ({task.records})"
                sides.append(context[rid])
                continue
            if not isinstance(value, str):
                return None, col, f"expected text, got {type(value).__name__}"
            problem = value_problem(value)
            if not problem and not text_key(value):
                problem = "empty after trimming whitespace" if not normalise_text(value) else "no visible characters"
            if problem:
                return None, col, problem
            sides.append(normalise_text(value))
        return pair_codec.encode(*sides), columns[0], None

    # -- the item: two sides
    def item_columns(self, text: str) -> dict[str, str]:
        """The columns a release and a Label Studio task carry besides ``text``: ``left`` and ``right``."""
        return _item_columns(text)

    def spec_template(self) -> dict[str, str]:
        """What `factory init NAME --type pairs` writes instead of the classification lines."""
        return {
            "type_line": "  type: pairs                # each item is a PAIR (left, right): are they the same entity?\n"
                         "  left: left                 # the column holding the left side (a text, or a record id)\n"
                         "  right: right               # the column holding the right side\n"
                         "  # records: records.csv     # optional: left/right hold record ids into this CSV (a\n"
                         "                             # record_id column + fields, e.g. name, description, price);\n"
                         "                             # relative to the ingested file's folder, or absolute\n"
                         "  # record_fields: [name, description, price]  # optional: the record fields shown\n"
                         "                             # (default: every column but record_id)",
            "input_line": "  input: text                # (not read for pairs: the sides come from left and right)",
            "classes": "classes:                     # one class per pair\n"
                       "  - name: same\n"
                       "    definition: \"Both sides describe the same entity (the same product, person, place).\"\n"
                       "  - name: different\n"
                       "    definition: \"The sides describe different entities, even if similar.\"\n",
            "mode_line": "mode: prelabel-human         # pairs runs in prelabel-human (models first, people check)",
            "guideline_text": "  text: \"Same only if a buyer would accept either side for the other; a different "
                              "model, size or edition is different.\"",
        }

    # -- Label Studio: the two sides as two texts, one choice
    def labelstudio_objects(self) -> str:
        left, right = self.ls_objects
        return (f'  <View style="display: flex; gap: 1em">\n'
                f'    <View style="flex: 50%"><Header value="Left"/><Text name="{left}" value="${left}"/></View>\n'
                f'    <View style="flex: 50%"><Header value="Right"/><Text name="{right}" value="${right}"/></View>\n'
                f'  </View>\n')

    def labelstudio_config(self, classes: Sequence[str], from_name: str, to_name: str) -> str:
        choices = "\n".join(f"    <Choice value={quoteattr(str(c))} hotkey=\"{i + 1}\"/>" if i < 9
                            else f"    <Choice value={quoteattr(str(c))}/>" for i, c in enumerate(classes))
        return (f'  <Choices name="{from_name}" toName="{self.ls_objects[0]}" choice="single" showInLine="true">\n'
                f"{choices}\n  </Choices>\n")

    def to_labelstudio(self, stored: str, from_name: str, to_name: str) -> list[dict]:
        return super().to_labelstudio(stored, from_name, self.ls_objects[0])
