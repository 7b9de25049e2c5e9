"""quality/report.html of a release: the measured-quality figures as one self-contained HTML page.

Plots are matplotlib PNGs embedded as base64 (no external files, no scripts).  PNGs are written
without the Software/date metadata so the same certificate gives the same bytes.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np


DPI = 100  # with the figure sizes below every plot is at least ~600 px wide


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "factory", "font.size": 11})
    return plt


DARK_TEXT, LIGHT_TEXT = "#000000", "#ffffff"


def relative_luminance(rgb) -> float:
    """WCAG 2 relative luminance of an sRGB colour given as floats in [0, 1]."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast_ratio(a, b) -> float:
    """WCAG 2 contrast ratio of two sRGB colours (1 to 21; body text wants at least 4.5)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_colour_on(background) -> str:
    """The text colour, near-black or white, with the higher contrast on `background` (RGB(A) floats in [0, 1])."""
    from matplotlib.colors import to_rgb

    dark, light = contrast_ratio(background, to_rgb(DARK_TEXT)), contrast_ratio(background, to_rgb(LIGHT_TEXT))
    return LIGHT_TEXT if light > dark else DARK_TEXT


def _confusion_fig(conf: dict, title: str) -> str:
    plt = _plt()
    m = np.array(conf["matrix"], dtype=float)
    k = len(m)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + 0.9 * k), max(4.8, 1.2 + 0.8 * k)))
    image = ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1.0, m.max()))
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            # the colour the cell is painted decides the number's colour: the more legible of white and near-black
            ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=12,
                    color=text_colour_on(image.cmap(image.norm(m[i, j]))), fontweight="bold" if i == j else "normal")
    ax.set_xticks(range(len(conf["classes"])), conf["classes"], rotation=45, ha="right")
    ax.set_yticks(range(len(conf["classes"])), conf["classes"])
    ax.set_xlabel(conf["columns"])
    ax.set_ylabel(conf["rows"])
    ax.set_title(title)
    return _png(fig)


def _reliability_fig(curves: dict[str, dict], title: str) -> str:
    """Reliability diagram: accuracy against mean confidence per bin, point size ~ items in the bin."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    ax.plot([0, 1], [0, 1], ls="--", color="#888888", label="perfect calibration")
    for (name, c), colour in zip(curves.items(), ("#1f4e9c", "#c44e52", "#55a868")):
        xs = [b["mean_confidence"] for b in c["bins"]]
        ys = [b["accuracy"] for b in c["bins"]]
        sizes = [20 + 180 * b["n"] / max(1, c["n"]) for b in c["bins"]]
        ax.plot(xs, ys, color=colour, lw=1.5, label=f"{name}: ECE {c['ece']:.3f}, n = {c['n']}")
        ax.scatter(xs, ys, s=sizes, color=colour, zorder=3)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("machine confidence (mean per bin)")
    ax.set_ylabel("share right (people's or gold label)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=9)
    return _png(fig)


INTERVAL_NAMES = {"wilson": "Wilson", "clopper_pearson": "Clopper-Pearson"}


def _bars_with_ci(names: list[str], props: list[dict], title: str, interval: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(names) + 2), 4.0))
    est = np.array([p["estimate"] if p["estimate"] is not None else np.nan for p in props])
    lo = np.array([p[interval][0] if p[interval][0] is not None else np.nan for p in props])
    hi = np.array([p[interval][1] if p[interval][1] is not None else np.nan for p in props])
    ax.bar(range(len(names)), est, color="#4c72b0", width=0.6)
    ax.errorbar(range(len(names)), est, yerr=[np.nan_to_num(est - lo), np.nan_to_num(hi - est)], fmt="none",
                ecolor="black", capsize=3)
    # the sample size goes under each name (text on the bar would vanish on a short or missing bar)
    ax.set_xticks(range(len(names)), [f"{name}\nn = {p['n']}" for name, p in zip(names, props)],
                  rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"share right, {INTERVAL_NAMES.get(interval, interval)} interval")
    ax.set_title(title)
    return _png(fig)


def _share_fig(shares: dict, title: str, prior: dict | None = None) -> str:
    plt = _plt()
    names = sorted(set(shares) | set(prior or {}))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(names) + 2), 4.0))
    x = np.arange(len(names))
    vals = [shares.get(n, {}).get("share", 0) if isinstance(shares.get(n), dict) else shares.get(n, 0) for n in names]
    ax.bar(x - (0.2 if prior else 0), vals, width=0.4 if prior else 0.7, color="#55a868", label="observed")
    if prior:
        ax.bar(x + 0.2, [prior.get(n, 0) for n in names], width=0.4, color="#c44e52", label="spec prior")
        ax.legend(fontsize=9)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("share of items")
    ax.set_title(title)
    return _png(fig)


NOT_MEASURED = "not measured"


def _v(x: Any, nd: int = 4) -> str:
    """A measure as text; a missing one says so in words (never 'None')."""
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return NOT_MEASURED
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1a1a1a;max-width:64em;margin:2em auto;
padding:0 1em;line-height:1.5}
h1{font-size:1.6em;border-bottom:2px solid #1f4e9c;padding-bottom:.3em}h2{font-size:1.25em;margin-top:1.8em;color:#1f4e9c}
table{border-collapse:collapse;margin:.5em 0;width:100%}td,th{border:1px solid #d0d7e2;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#eef2f8}tr:nth-child(even) td{background:#fafbfd}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;font-weight:bold;color:#fff}
.pass{background:#2e7d32}.fail{background:#c62828}.na{color:#666;font-style:italic}
.claims li{margin:.3em 0}figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #e3e7ee}
figcaption{color:#555;font-size:.9em}
"""


def render(cert: dict) -> str:
    """The HTML report of a certificate (quality/certificate.json)."""
    m = cert["measures"]
    interval = cert["interval"].replace("-", "_")
    figs: list[tuple[str, str]] = []
    if m.get("audit") and m["audit"]["accuracy"]["n"]:
        figs.append(("Audit sample: people's answer vs the machine label", _confusion_fig(m["audit"]["confusion"], "audit")))
    if m.get("gold"):
        figs.append(("Gold items: gold vs final label", _confusion_fig(m["gold"]["confusion"], "gold")))
    cal = m.get("calibration") or {}
    curves = {name: c for name, c in (("verified items", cal.get("verified")), ("audit sample", cal.get("audit")),
                                      ("verified, before calibration", cal.get("verified_raw"))) if c and c.get("n")}
    if curves:
        figs.append(("Reliability diagram: is the machine's confidence a probability?",
                     _reliability_fig(curves, "reliability of the machine's confidence")))
    acc_names, acc_props = [], []
    if m.get("audit") and m["audit"]["accuracy"]["n"]:
        acc_names.append("auto (audit)")
        acc_props.append(m["audit"]["accuracy"])
    for src, p in sorted((cert.get("accuracy_by_source") or {}).items()):
        acc_names.append(f"{src} (gold)")
        acc_props.append(p)
    if acc_names:
        figs.append(("Accuracy by source, with intervals", _bars_with_ci(acc_names, acc_props, "accuracy by source", interval)))
    if m.get("per_annotator"):
        names = sorted(m["per_annotator"])
        figs.append(("Per annotator: agreement with the final label",
                     _bars_with_ci(names, [m["per_annotator"][n]["agree_with_final"] for n in names],
                                   "per annotator", interval)))
    if m.get("route_shares"):
        figs.append(("Routing shares", _share_fig(m["route_shares"], "routes")))
    ld = m["label_distribution"]
    n = max(1, ld["n"])
    figs.append(("Label distribution against the spec's prior" if ld.get("prior") else
                 "Label distribution (the spec declares no prior to compare with)",
                 _share_fig({k: v / n for k, v in ld["observed"].items()}, "labels", ld.get("prior"))))

    def row(cells: list[Any], tag: str = "td") -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(_v(c))}</{tag}>" for c in cells) + "</tr>"

    result = {True: "pass", False: "FAIL", None: "does not apply / no evidence"}
    gates = "".join(row([g["name"], g["value"], f"{g['rule']} {g['threshold']}" if g.get("threshold") is not None
                         else "no threshold set", result[g["passed"]],
                         "yes" if g["declared_blocking"] else "no", g.get("reason") or g.get("note", "")])
                    for g in cert["gates"])
    exp = "".join(row([e["name"], "pass" if e["success"] else "FAIL", "yes" if e["blocking"] else "no",
                       e["description"]]) for e in cert["standard_result"]["expectations"])

    def acc(p):
        if not p or p["n"] == 0:
            return NOT_MEASURED
        return (f"{p['estimate']:.4f} ({p['k']}/{p['n']}); Wilson [{p['wilson'][0]:.4f}, {p['wilson'][1]:.4f}]; "
                f"Clopper-Pearson [{p['clopper_pearson'][0]:.4f}, {p['clopper_pearson'][1]:.4f}]")

    def ece(c):
        return f"{c['ece']:.4f} on {c['n']} items" if c and c.get("n") else NOT_MEASURED
    ag = m.get("agreement", {})
    lab = ag.get("labelers", {})
    summary = [
        ("Audit accuracy (auto-accepted labels)", acc((m.get("audit") or {}).get("accuracy"))),
        ("Gold accuracy", acc((m.get("gold") or {}).get("accuracy"))),
        ("Completeness", acc(m["completeness"])),
        ("ECE of the machine's confidence, verified items", ece(cal.get("verified"))),
        ("ECE of the machine's confidence, audit sample", ece(cal.get("audit"))),
        ("Machine vs people, Cohen's kappa", (m.get("machine_vs_people") or {}).get("cohen_kappa")),
        ("Labelers, Fleiss' kappa", lab.get("fleiss_kappa")),
        ("Labelers, Krippendorff's alpha", lab.get("krippendorff_alpha")),
        ("People, Krippendorff's alpha", (ag.get("people") or {}).get("krippendorff_alpha")),
        ("People and labelers, Krippendorff's alpha", (ag.get("people_and_labelers") or {}).get("krippendorff_alpha")),
        ("Label distribution: TV distance to prior", ld.get("tv_distance") if ld.get("prior") else
         "not measured: the spec declares no prior"),
        ("Label distribution: chi-square p-value", ld.get("p_value") if ld.get("prior") else
         "not measured: the spec declares no prior"),
        ("Residual PII screen: items flagged", (m.get("pii") or {}).get("items_flagged")),
    ]
    cal_rows = "".join(row([name, c["n"], c["ece"], c["mean_confidence"], c["accuracy"]]) for name, c in curves.items())
    verdict = cert["passed"]
    claims = "".join(f"<li>{html.escape(x)}</li>" for x in cert.get("statements", []))
    body = [f"<h1>Quality report: {html.escape(cert['dataset'])} {html.escape(cert['version'])}</h1>",
            f"<p>Verdict: <span class=\"verdict {'pass' if verdict else 'fail'}\">{'PASS' if verdict else 'FAIL'}</span> "
            f"&nbsp; {cert['items']} items; standard <b>{html.escape(cert['standard']['name'])}</b> (sha256 "
            f"{cert['standard']['sha256'][:16]}…); intervals at level {cert['confidence_level']} "
            f"({html.escape(cert['interval'])} used for gates).</p>",
            "<h2>What this release claims</h2><ul class=\"claims\">" + claims + "</ul>",
            "<h2>Summary</h2><table>" + "".join(row([k, v]) for k, v in summary) + "</table>",
            "<h2>Gates (spec thresholds)</h2><table>" + row(["gate", "value", "threshold", "result", "blocking", "why"], "th")
            + gates + "</table>"]
    if cal_rows:
        body.append("<h2>Calibration (ECE, equal-width bins)</h2><table>"
                    + row(["items", "n", "ECE", "mean confidence", "share right"], "th") + cal_rows + "</table>")
    body.append("<h2>Standard expectations (Great Expectations)</h2><table>"
                + row(["expectation", "result", "blocking", "description"], "th") + exp + "</table>")
    for title, b64 in figs:
        body.append(f"<h2>{html.escape(title)}</h2><figure><img alt=\"{html.escape(title)}\" "
                    f"src=\"data:image/png;base64,{b64}\"></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
            "content=\"width=device-width, initial-scale=1\"><title>Quality report "
            f"{html.escape(cert['dataset'])} {html.escape(cert['version'])}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
