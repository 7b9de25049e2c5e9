"""quality/report.html (issue 16): a legible confusion matrix (text colour by the cell's luminance), plots a
screen wide, and plain words instead of 'None' for what was not measured.  The browser view of the same
report is in tests/test_web_browser.py."""
from __future__ import annotations

import copy
import html
import json
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from factory import release_report as R


def test_text_colour_follows_the_cell_luminance():
    blues = matplotlib.colormaps["Blues"]
    assert R.text_colour_on(blues(1.0)) == R.LIGHT_TEXT  # white on navy
    assert R.text_colour_on(blues(0.0)) == R.DARK_TEXT
    assert R.text_colour_on((1.0, 1.0, 0.0)) == R.DARK_TEXT and R.text_colour_on((0.0, 0.0, 0.5)) == R.LIGHT_TEXT
    # every shade of the matrix's colour map carries its number at the WCAG body-text contrast
    worst = min(R.contrast_ratio(blues(v), to_rgb(R.text_colour_on(blues(v)))) for v in np.linspace(0, 1, 201))
    assert worst >= 4.5, worst
    assert R.contrast_ratio((0, 0, 0), (1, 1, 1)) == pytest.approx(21.0)


def test_every_number_of_the_confusion_matrix_is_legible_on_its_cell(monkeypatch):
    figures = []
    monkeypatch.setattr(R, "_png", lambda fig: figures.append(fig) or "")
    classes = ["business", "sports", "tech"]
    R._confusion_fig({"matrix": [[40, 1, 0], [3, 25, 2], [0, 12, 6]], "classes": classes, "rows": "people",
                      "columns": "machine"}, "audit")
    (fig,) = figures
    ax = fig.axes[0]
    image = ax.images[0]
    texts = [t for t in ax.texts]
    assert len(texts) == 9
    navy = 0
    for t in texts:
        j, i = (int(round(v)) for v in t.get_position())
        cell = image.cmap(image.norm(image.get_array()[i, j]))
        navy += R.relative_luminance(cell) < 0.1
        assert R.contrast_ratio(cell, to_rgb(t.get_color())) >= 4.5, (t.get_text(), t.get_color(), cell)
    assert navy >= 1  # the matrix has dark cells: the colour choice was put to the test
    assert fig.get_size_inches()[0] * R.DPI >= 600  # a plot a screen wide, not ~130 px


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    from factory.datasets import load_bbc_news
    from factory.ingest import item_id_for
    from factory.pipeline import Factory
    from factory.release import release
    from test_gates import make_batch, make_root, plan

    tmp = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    mp.delenv("FACTORY_DATABASE_URL", raising=False)
    try:
        df = load_bbc_news(limit_per_class=12, seed=3).reset_index(drop=True)
        truth = {item_id_for(t): lab for t, lab in zip(df["text"], df["label"])}
        fx = Factory.at(make_root(tmp, min_accuracy=0.6))
        make_batch(fx, df["text"][:30], truth, tmp / "b1.csv", plan(12, 1, 12, 4, 2))
        path = Path(release(fx, "news")["path"])
    finally:
        mp.undo()
    return json.loads((path / "quality" / "certificate.json").read_text())


def visible_text(page: str) -> str:
    """What a reader sees: no tags, no attribute values (the images' base64 may hold any letters)."""
    page = re.sub(r"<style>.*?</style>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def test_a_report_with_nothing_measured_says_so_in_words(cert):
    bare = copy.deepcopy(cert)
    m = bare["measures"]
    m["machine_vs_people"] = {"cohen_kappa": None}
    m["agreement"] = {"labelers": {"fleiss_kappa": None, "krippendorff_alpha": float("nan")}, "people": None}
    m["pii"] = None
    m["calibration"] = {}
    for g in bare["gates"]:
        g.update(value=None, threshold=None, passed=None, reason=None, note=None)
    bare["auto_accept_guarantee"] = {k: None for k in bare["auto_accept_guarantee"]}
    text = visible_text(R.render(bare))
    assert not re.search(r"\bNone\b|\bnan\b", text), [ln for ln in text.split("\n") if "None" in ln or "nan" in ln]
    assert "no threshold set" in text and "not measured" in text


def test_the_report_is_styled_and_its_plots_are_wide(cert):
    page = R.render(cert)
    assert "<style>" in page and "max-width" in page and "figure img" in page
    text = visible_text(page)
    assert not re.search(r"\bNone\b", text)
    from PIL import Image
    import base64
    import io

    widths = [Image.open(io.BytesIO(base64.b64decode(b))).size[0]
              for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    assert len(widths) >= 4 and min(widths) >= 500, widths
