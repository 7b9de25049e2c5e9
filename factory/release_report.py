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


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None}, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "factory", "font.size": 9})
    return plt


def _confusion_fig(conf: dict, title: str) -> str:
    plt = _plt()
    m = np.array(conf["matrix"], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(m), 1.0 + 0.5 * len(m)))
    ax.imshow(m, cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, int(m[i, j]), ha="center", va="center", color="black")
    ax.set_xticks(range(len(conf["classes"])), conf["classes"], rotation=45, ha="right")
    ax.set_yticks(range(len(conf["classes"])), conf["classes"])
    ax.set_xlabel(conf["columns"])
    ax.set_ylabel(conf["rows"])
    ax.set_title(title)
    return _png(fig)


def _bars_with_ci(names: list[str], props: list[dict], title: str, interval: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(3.0, 0.7 * len(names) + 1.5), 2.6))
    est = np.array([p["estimate"] if p["estimate"] is not None else np.nan for p in props])
    lo = np.array([p[interval][0] if p[interval][0] is not None else np.nan for p in props])
    hi = np.array([p[interval][1] if p[interval][1] is not None else np.nan for p in props])
    ax.bar(range(len(names)), est, color="#4c72b0")
    ax.errorbar(range(len(names)), est, yerr=[np.nan_to_num(est - lo), np.nan_to_num(hi - est)], fmt="none",
                ecolor="black", capsize=3)
    for i, p in enumerate(props):
        ax.text(i, 0.02, f"n={p['n']}", ha="center", va="bottom", color="white", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    return _png(fig)


def _share_fig(shares: dict, title: str, prior: dict | None = None) -> str:
    plt = _plt()
    names = sorted(set(shares) | set(prior or {}))
    fig, ax = plt.subplots(figsize=(max(3.0, 0.7 * len(names) + 1.5), 2.6))
    x = np.arange(len(names))
    vals = [shares.get(n, {}).get("share", 0) if isinstance(shares.get(n), dict) else shares.get(n, 0) for n in names]
    ax.bar(x - (0.2 if prior else 0), vals, width=0.4 if prior else 0.7, color="#55a868", label="observed")
    if prior:
        ax.bar(x + 0.2, [prior.get(n, 0) for n in names], width=0.4, color="#c44e52", label="spec prior")
        ax.legend(fontsize=7)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_title(title)
    return _png(fig)


def render(cert: dict) -> str:
    """The HTML report of a certificate (quality/certificate.json)."""
    m = cert["measures"]
    interval = cert["interval"].replace("-", "_")
    figs: list[tuple[str, str]] = []
    if m.get("audit") and m["audit"]["accuracy"]["n"]:
        figs.append(("Audit sample: people's answer vs the machine label", _confusion_fig(m["audit"]["confusion"], "audit")))
    if m.get("gold"):
        figs.append(("Gold items: gold vs final label", _confusion_fig(m["gold"]["confusion"], "gold")))
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
    figs.append(("Label distribution against the spec's prior",
                 _share_fig({k: v / n for k, v in ld["observed"].items()}, "labels", ld.get("prior"))))

    def row(cells: list[Any], tag: str = "td") -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"

    gates = "".join(row([g["name"], g["value"], f"{g['rule']} {g['threshold']}",
                         {True: "pass", False: "FAIL", None: "no evidence"}[g["passed"]],
                         "yes" if g["declared_blocking"] else "no", g.get("note", "")]) for g in cert["gates"])
    exp = "".join(row([e["name"], "pass" if e["success"] else "FAIL", "yes" if e["blocking"] else "no",
                       e["description"]]) for e in cert["standard_result"]["expectations"])

    def acc(p):
        if not p or p["n"] == 0:
            return "n/a"
        return (f"{p['estimate']:.4f} ({p['k']}/{p['n']}); Wilson [{p['wilson'][0]:.4f}, {p['wilson'][1]:.4f}]; "
                f"Clopper-Pearson [{p['clopper_pearson'][0]:.4f}, {p['clopper_pearson'][1]:.4f}]")
    ag = m.get("agreement", {})
    lab = ag.get("labelers", {})
    g = cert.get("auto_accept_guarantee") or {}
    summary = [
        ("Audit accuracy (auto-accepted labels)", acc((m.get("audit") or {}).get("accuracy"))),
        ("Gold accuracy", acc((m.get("gold") or {}).get("accuracy"))),
        ("Completeness", acc(m["completeness"])),
        ("Machine vs people, Cohen's kappa", (m.get("machine_vs_people") or {}).get("cohen_kappa")),
        ("Labelers, Fleiss' kappa", lab.get("fleiss_kappa")),
        ("Labelers, Krippendorff's alpha", lab.get("krippendorff_alpha")),
        ("People, Krippendorff's alpha", (ag.get("people") or {}).get("krippendorff_alpha")),
        ("People and labelers, Krippendorff's alpha", (ag.get("people_and_labelers") or {}).get("krippendorff_alpha")),
        ("Label distribution: TV distance to prior", ld.get("tv_distance")),
        ("Label distribution: chi-square p-value", ld.get("p_value")),
        ("Residual PII screen: items flagged", (m.get("pii") or {}).get("items_flagged")),
        ("Auto-accept guarantee", f"threshold {g.get('threshold')}, error <= {g.get('epsilon')} with prob >= "
                                  f"{1 - g['delta'] if g.get('delta') else None}; bound {g.get('upper_bound')} on "
                                  f"{g.get('n_accepted')} of {g.get('n_sample')} audited items"),
    ]
    body = [f"<h1>Quality report: {html.escape(cert['dataset'])} {html.escape(cert['version'])}</h1>",
            f"<p>Standard <b>{html.escape(cert['standard']['name'])}</b> (sha256 {cert['standard']['sha256'][:16]}…); "
            f"{cert['items']} items; intervals at level {cert['confidence_level']} ({html.escape(cert['interval'])} "
            f"used for gates). Verdict: <b>{'PASS' if cert['passed'] else 'FAIL'}</b>.</p>",
            "<h2>Summary</h2><table>" + "".join(row([k, v]) for k, v in summary) + "</table>",
            "<h2>Gates (spec thresholds)</h2><table>" + row(["gate", "value", "threshold", "result", "blocking", "note"], "th")
            + gates + "</table>",
            "<h2>Standard expectations (Great Expectations)</h2><table>" + row(["expectation", "result", "blocking",
                                                                                "description"], "th") + exp + "</table>"]
    for title, b64 in figs:
        body.append(f"<h2>{html.escape(title)}</h2><img alt=\"{html.escape(title)}\" src=\"data:image/png;base64,{b64}\">")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Quality report "
            f"{html.escape(cert['dataset'])} {html.escape(cert['version'])}</title><style>{style}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
