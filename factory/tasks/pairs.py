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

from typing import ClassVar, Sequence
from xml.sax.saxutils import quoteattr

from factory.tasks.classification import Classification
from factory.tasks.pair_codec import item_columns as _item_columns


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
