"use strict";
// The annotator queue: keyboard-first. Digits choose, Enter submits, S skips with a reason, U undoes the
// last answer within the grace period, G opens the guideline and class definitions.
// Multi-label tasks (widget "checkboxes"): digits tick or untick a class, Enter submits the ticked set
// (the classes in the spec's order joined by '|'; nothing ticked is the answer "none of these").
// Span tasks (widget "tokens"): the item's recorded tokens, the fused spans pre-annotated. Arrows move the
// cursor, Shift+arrows (or a mouse drag) select tokens, a digit gives the selection that type (replacing the
// spans it overlaps), Delete removes the span under the cursor, Enter submits [[start, end, type], ...].
const state = { task: null, selected: null, ticked: new Set(), last: null, busy: false,
                tokens: [], spans: [], cursor: 0, anchor: null, dragging: false };
const multi = () => state.task && state.task.widget === "checkboxes";
const spanned = () => state.task && state.task.widget === "tokens";
// Pairs (widget "pair"): the two sides of the pair side by side (a record's fields as a list); digits choose
// the class (same / different / the spec's), Enter submits.
const pair = () => state.task && state.task.widget === "pair";

function renderSide(title, side) {
  const box = el("div", { class: "pair-side" }, el("h3", {}, title));
  if (side && typeof side === "object") {
    const dl = el("dl", {});
    Object.entries(side).forEach(([k, v]) => { if (v !== null && String(v).trim() !== "") dl.append(el("dt", {}, k), el("dd", {}, String(v))); });
    box.append(dl);
  } else {
    box.append(el("p", {}, side == null ? "" : String(side)));
  }
  return box;
}

function renderPair(container, text) {
  container.textContent = "";
  let sides;
  try { sides = JSON.parse(text); } catch (e) { renderText(container, text, []); return; }
  container.append(el("div", { class: "pair" }, renderSide("Left", sides.left), renderSide("Right", sides.right)));
}
const $ = (id) => document.getElementById(id);

async function loadProgress() {
  try {
    const { data } = await api("GET", "/api/progress");
    $("done-today").textContent = data.answered_today;
    $("open-count").textContent = data.open_tasks;
    const total = data.answered_today + data.open_tasks;
    $("bar-fill").style.width = total ? (100 * data.answered_today / total) + "%" : "0";
    if (data.last_answer && !state.last) state.last = { task_id: data.last_answer.task_id, label: data.last_answer.label };
  } catch (e) { /* progress is a help, not a blocker */ }
}

async function loadNext() {
  state.task = null; state.selected = null; state.ticked = new Set();
  $("submit").disabled = true;
  try {
    const res = await api("GET", "/api/tasks/next");
    if (res.status === 204) { $("workbench").hidden = true; $("empty").hidden = false; loadProgress(); return; }
    $("workbench").hidden = false; $("empty").hidden = true;
    render(res.data);
  } catch (e) { toast(e.message, true); }
  loadProgress();
}

function selection() {
  const a = state.anchor === null ? state.cursor : state.anchor;
  return [Math.min(a, state.cursor), Math.max(a, state.cursor) + 1];
}

function renderTokens() {
  const box = $("item-text"); box.textContent = "";
  const typeAt = new Array(state.tokens.length).fill(null);
  state.spans.forEach(([s, e, t]) => { for (let i = s; i < e; i++) typeAt[i] = { t, first: i === s }; });
  const [s0, e0] = selection();
  const p = el("p", { class: "tokens" });
  state.tokens.forEach((w, i) => {
    const cls = ["tok"];
    if (typeAt[i]) cls.push("ent", "ent-" + state.task.classes.findIndex((c) => c.name === typeAt[i].t));
    if (i >= s0 && i < e0) cls.push("sel");
    if (i === state.cursor) cls.push("cursor");
    const attrs = { class: cls.join(" "), "data-i": String(i) };
    if (typeAt[i]) attrs["data-type"] = typeAt[i].t;
    const span = el("span", attrs, w);
    if (typeAt[i] && typeAt[i].first) span.append(el("sup", { class: "type" }, typeAt[i].t));
    span.addEventListener("mousedown", (ev) => { state.dragging = true; state.anchor = ev.shiftKey ? (state.anchor ?? state.cursor) : i; state.cursor = i; renderTokens(); ev.preventDefault(); });
    span.addEventListener("mouseenter", () => { if (state.dragging) { state.cursor = i; renderTokens(); } });
    p.append(span, document.createTextNode(" "));
  });
  box.append(p);
  $("submit").disabled = false;  // no span is an answer too ("no entity")
}

function moveCursor(delta, extend) {
  if (!state.tokens.length) return;
  if (extend && state.anchor === null) state.anchor = state.cursor;
  if (!extend) state.anchor = null;
  state.cursor = Math.max(0, Math.min(state.tokens.length - 1, state.cursor + delta));
  renderTokens();
}

function typeSelection(i) {
  const [s, e] = selection();
  state.spans = state.spans.filter(([a, b]) => b <= s || a >= e).concat([[s, e, state.task.classes[i].name]]);
  state.spans.sort((x, y) => x[0] - y[0]);
  state.anchor = null;
  renderTokens();
}

function removeSpanAtCursor() {
  const c = state.cursor;
  state.spans = state.spans.filter(([a, b]) => !(a <= c && c < b));
  renderTokens();
}

function render(task) {
  state.task = task;
  state.tokens = spanned() ? ((task.meta && task.meta.tokens) || []) : [];
  state.cursor = 0; state.anchor = null;
  try { state.spans = spanned() && task.suggestion ? JSON.parse(task.suggestion) : []; } catch (e) { state.spans = []; }
  $("task-kind").textContent = task.kind;
  $("task-id").textContent = task.task_id + " · " + task.dataset;
  $("task-reasons").textContent = (task.reasons || []).join(" · ");
  if (pair()) renderPair($("item-text"), task.text); else renderText($("item-text"), task.text, []);
  $("legend").hidden = true;
  const ol = $("classes"); ol.textContent = "";
  ol.classList.toggle("checkboxes", multi());
  const suggested = multi() ? (task.suggestion || "").split("|").filter(Boolean) : [task.suggestion];
  task.classes.forEach((c, i) => {
    const b = el("button", { type: "button", title: c.definition, "data-label": c.name },
      el("span", { class: "key" }, i < 9 ? String(i + 1) : ""), c.name);
    if (multi()) { b.setAttribute("role", "checkbox"); b.setAttribute("aria-checked", "false"); }
    if (suggested.includes(c.name)) b.append(el("span", { class: "hint" }, "suggested"));
    b.addEventListener("click", () => select(i));
    ol.append(el("li", {}, b));
  });
  $("suggestion").hidden = !task.suggestion;
  $("suggestion-label").textContent = spanned() ? state.spans.length + " span(s), marked in the text"
    : (task.suggestion || "");
  if (spanned()) {
    renderTokens();
  } else if (multi()) {
    task.classes.forEach((c, i) => { if (suggested.includes(c.name)) select(i); });
    $("submit").disabled = false;  // the empty set is an answer too
  } else {
    const idx = task.classes.findIndex((c) => c.name === task.suggestion);
    if (idx >= 0) select(idx);
  }
  $("guideline-version").textContent = "v" + task.guideline.version;
  $("guideline-text").textContent = task.guideline.text || "(no guideline text in the spec)";
  const dl = $("class-defs"); dl.textContent = "";
  task.classes.forEach((c, i) => { dl.append(el("dt", {}, (i + 1) + ". " + c.name), el("dd", {}, c.definition)); });
  if (spanned() || pair()) return;  // tokens carry the pre-annotation; a pair shows two texts: word highlights do not fit
  api("GET", "/api/items/" + encodeURIComponent(task.item_id) + "/highlights?dataset=" + encodeURIComponent(task.dataset))
    .then(({ data }) => {
      if (state.task && state.task.task_id === task.task_id && data.spans && data.spans.length) {
        renderText($("item-text"), task.text, data.spans); $("legend").hidden = false;
      }
    }).catch(() => {});
}

function select(i) {
  if (!state.task || i >= state.task.classes.length) return;
  if (spanned()) { typeSelection(i); return; }
  if (multi()) {  // tick or untick
    const name = state.task.classes[i].name;
    if (state.ticked.has(name)) state.ticked.delete(name); else state.ticked.add(name);
    document.querySelectorAll("#classes button").forEach((b) => {
      const on = state.ticked.has(b.dataset.label);
      b.classList.toggle("selected", on); b.setAttribute("aria-checked", on ? "true" : "false");
    });
    return;
  }
  state.selected = state.task.classes[i].name;
  document.querySelectorAll("#classes button").forEach((b, j) => b.classList.toggle("selected", j === i));
  $("submit").disabled = false;
}

async function submit() {
  if (!state.task || state.busy) return;
  if (multi()) state.selected = state.task.classes.map((c) => c.name).filter((n) => state.ticked.has(n)).join("|");
  if (spanned()) state.selected = JSON.stringify(state.spans);
  if (!multi() && !state.selected) { toast("Choose a class first (1–" + Math.min(9, state.task.classes.length) + ")", true); return; }
  state.busy = true;
  const t = state.task, label = state.selected;
  try {
    await api("POST", "/api/tasks/" + encodeURIComponent(t.task_id) + "/answer", { label, submission_id: newId() });
    state.last = { task_id: t.task_id, label };
    toast("Saved “" + (label === "" || label === "[]" ? "none of these" : label) + "” · press U to undo");
    await loadNext();
  } catch (e) {
    toast(e.message, true);
    if (e.status === 409) await loadNext();
  } finally { state.busy = false; }
}

async function undo() {
  if (!state.last || state.busy) { toast("Nothing to undo", true); return; }
  state.busy = true;
  try {
    const { data } = await api("POST", "/api/tasks/" + encodeURIComponent(state.last.task_id) + "/undo");
    toast("Undone: “" + data.label + "” — the task is back");
    state.last = null;
    await loadNext();
  } catch (e) { toast(e.message, true); } finally { state.busy = false; }
}

function openSkip() { if (!state.task) return; $("skip-dialog").hidden = false; $("skip-reason").value = ""; $("skip-reason").focus(); }
function closeSkip() { $("skip-dialog").hidden = true; }
async function doSkip(ev) {
  if (ev) ev.preventDefault();
  const reason = $("skip-reason").value.trim();
  if (!reason) { toast("A skip needs a reason", true); return; }
  try {
    await api("POST", "/api/tasks/" + encodeURIComponent(state.task.task_id) + "/skip", { reason });
    closeSkip(); toast("Skipped"); await loadNext();
  } catch (e) { toast(e.message, true); }
}

function toggleGuideline(force) { const g = $("guideline"); g.hidden = force === undefined ? !g.hidden : !force; }

document.addEventListener("keydown", (ev) => {
  if (!$("skip-dialog").hidden) {
    if (ev.key === "Escape") { closeSkip(); ev.preventDefault(); }
    else if (ev.key === "Enter" && !ev.shiftKey) { doSkip(ev); }
    else if (ev.altKey && ["1", "2", "3"].includes(ev.key)) {
      const chips = document.querySelectorAll("#skip-form .chips button");
      $("skip-reason").value = chips[Number(ev.key) - 1].dataset.reason; ev.preventDefault();
    }
    return;
  }
  if (typing(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const k = ev.key;
  if (k === "Escape") { toggleGuideline(false); return; }
  if (k === "g" || k === "G" || k === "?") { toggleGuideline(); ev.preventDefault(); return; }
  if (!$("guideline").hidden) return;
  if (spanned() && (k === "ArrowRight" || k === "ArrowLeft")) { moveCursor(k === "ArrowRight" ? 1 : -1, ev.shiftKey); ev.preventDefault(); return; }
  if (spanned() && (k === "Delete" || k === "Backspace")) { removeSpanAtCursor(); ev.preventDefault(); return; }
  if (/^[1-9]$/.test(k)) { select(Number(k) - 1); ev.preventDefault(); }
  else if (k === "Enter") { submit(); ev.preventDefault(); }
  else if (k === "s" || k === "S") { openSkip(); ev.preventDefault(); }
  else if (k === "u" || k === "U") { undo(); ev.preventDefault(); }
});
$("submit").addEventListener("click", submit);
document.addEventListener("mouseup", () => { state.dragging = false; });
$("skip-form").addEventListener("submit", doSkip);
$("skip-cancel").addEventListener("click", closeSkip);
document.querySelectorAll("#skip-form .chips button").forEach((b) => b.addEventListener("click", () => { $("skip-reason").value = b.dataset.reason; $("skip-reason").focus(); }));
$("reload").addEventListener("click", loadNext);
loadNext();
