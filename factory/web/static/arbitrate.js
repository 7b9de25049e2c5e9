"use strict";
// Expert arbitration: pick a disputed item (J/K), choose a label (digits), write the rationale,
// Ctrl+Enter decides; Ctrl+G records a guideline gap with the rationale text as its note.
const st = { list: [], idx: -1, detail: null, selected: null };
const $ = (id) => document.getElementById(id);
const pct = (x) => (x === null || x === undefined) ? "–" : Math.round(100 * x) + "%";

async function loadList(keepItem) {
  try {
    const { data } = await api("GET", "/api/arbitration");
    st.list = data;
    $("dispute-count").textContent = data.length;
    const ul = $("disputes"); ul.textContent = "";
    data.forEach((d, i) => {
      const li = el("li", { "data-item": d.item_id }, el("div", { class: "mono" }, d.item_id.slice(0, 22)),
        el("div", { class: "why1" }, d.why[0] + (d.why.length > 1 ? " (+" + (d.why.length - 1) + ")" : "")),
        el("div", { class: "muted small" }, d.dataset + (d.gap_flagged ? " · guideline gap flagged" : "")));
      li.addEventListener("click", () => open(i));
      ul.append(li);
    });
    let i = keepItem ? data.findIndex((d) => d.item_id === keepItem) : 0;
    if (data.length === 0) { st.idx = -1; $("detail-empty").hidden = false; $("detail-empty").textContent = "No disputed items. Nothing needs an expert right now."; $("detail-body").hidden = true; $("evidence").hidden = true; $("decision").hidden = true; return; }
    open(Math.max(0, Math.min(i < 0 ? 0 : i, data.length - 1)));
  } catch (e) { toast(e.message, true); }
}

async function open(i) {
  st.idx = i; const d = st.list[i];
  document.querySelectorAll("#disputes li").forEach((li, j) => li.classList.toggle("active", j === i));
  try {
    const { data } = await api("GET", "/api/arbitration/" + encodeURIComponent(d.dataset) + "/" + encodeURIComponent(d.item_id));
    st.detail = data; st.selected = null;
    $("detail-empty").hidden = true; $("detail-body").hidden = false; $("evidence").hidden = false; $("decision").hidden = false;
    $("d-dataset").textContent = data.dataset; $("d-item").textContent = data.item_id;
    const why = $("d-why"); why.textContent = ""; d.why.forEach((w) => why.append(el("li", {}, w)));
    $("d-text").textContent = data.text;
    const tb = $("d-answers"); tb.textContent = "";
    data.answers.forEach((a) => {
      const r = a.reliability || {};
      tb.append(el("tr", {}, el("td", { class: "mono" }, a.actor),
        el("td", {}, a.kind === "skip" ? "skipped: " + (a.reason || "") : (a.label + (a.undone ? " (undone)" : "") + (a.kind === "correction" ? " (correction)" : ""))),
        el("td", {}, pct(r.agrees_with_models)), el("td", {}, pct(r.agrees_with_experts)), el("td", { class: "muted" }, (a.created_at || "").slice(0, 16))));
    });
    const mb = $("d-models"); mb.textContent = "";
    data.models.forEach((m) => mb.append(el("tr", {}, el("td", { class: "mono" }, m.source), el("td", {}, m.label),
      el("td", {}, m.confidence == null ? "–" : m.confidence.toFixed(2)), el("td", {}, m.reliability ? pct(m.reliability.agreement) + " of " + m.reliability.n : "–"))));
    if (!data.models.length) mb.append(el("tr", {}, el("td", { colSpan: 4, class: "muted" }, "No model outputs for this item.")));
    $("d-fusion").textContent = data.fusion ? "Fused: " + data.fusion.label + " (" + data.fusion.confidence.toFixed(2) + ", " + data.fusion.source + ")" : "";
    const ol = $("d-classes"); ol.textContent = "";
    data.classes.forEach((c, j) => {
      const b = el("button", { type: "button", title: c.definition }, el("span", { class: "key" }, j < 9 ? String(j + 1) : ""), c.name);
      b.addEventListener("click", () => choose(j)); ol.append(el("li", {}, b));
    });
    $("gap-state").textContent = data.gaps.length ? "guideline gap flagged by " + data.gaps.map((g) => g.actor).join(", ") : "";
    $("rationale").value = "";
  } catch (e) { toast(e.message, true); }
}

function choose(j) {
  if (!st.detail) return;
  st.selected = st.detail.classes[j].name;
  document.querySelectorAll("#d-classes button").forEach((b, k) => b.classList.toggle("selected", k === j));
}

async function decide(ev) {
  if (ev) ev.preventDefault();
  if (!st.detail) return;
  const rationale = $("rationale").value.trim();
  if (!st.selected) { toast("Choose the label first (digits)", true); return; }
  if (!rationale) { toast("A decision needs a rationale", true); $("rationale").focus(); return; }
  try {
    await api("POST", "/api/items/" + encodeURIComponent(st.detail.item_id) + "/arbitrate", { dataset: st.detail.dataset, label: st.selected, rationale });
    toast("Decided “" + st.selected + "”");
    await loadList();
  } catch (e) { toast(e.message, true); }
}

async function gap() {
  if (!st.detail) return;
  const note = $("rationale").value.trim();
  if (!note) { toast("Write what the guideline misses in the rationale box first", true); $("rationale").focus(); return; }
  try {
    await api("POST", "/api/items/" + encodeURIComponent(st.detail.item_id) + "/guideline-gap", { dataset: st.detail.dataset, note });
    toast("Guideline gap recorded"); await loadList(st.detail.item_id);
  } catch (e) { toast(e.message, true); }
}

document.addEventListener("keydown", (ev) => {
  if ((ev.ctrlKey || ev.metaKey) && ev.key === "Enter") { decide(ev); return; }
  if ((ev.ctrlKey || ev.metaKey) && (ev.key === "g" || ev.key === "G")) { ev.preventDefault(); gap(); return; }
  if (typing(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (/^[1-9]$/.test(ev.key)) { choose(Number(ev.key) - 1); ev.preventDefault(); }
  else if (ev.key === "j" && st.idx + 1 < st.list.length) open(st.idx + 1);
  else if (ev.key === "k" && st.idx > 0) open(st.idx - 1);
  else if (ev.key === "r") { $("rationale").focus(); ev.preventDefault(); }
});
$("decision").addEventListener("submit", decide);
$("gap").addEventListener("click", gap);
loadList();
