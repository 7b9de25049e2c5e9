"use strict";
// Shared helpers of the workbench pages: JSON calls with the session's CSRF token, toasts, ids.
const CSRF = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

async function api(method, path, body) {
  const opts = { method, headers: { "X-CSRF-Token": CSRF, "Accept": "application/json" }, credentials: "same-origin" };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const res = await fetch(path, opts);
  if (res.status === 401) { window.location = "/login?next=" + encodeURIComponent(window.location.pathname); throw new Error("signed out"); }
  let data = null;
  if (res.status !== 204) { try { data = await res.json(); } catch (e) { data = null; } }
  if (!res.ok) { const err = new Error((data && data.detail) ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : res.statusText); err.status = res.status; throw err; }
  return { status: res.status, data };
}

let toastTimer = null;
function toast(msg, isError) {
  const t = document.getElementById("toast");
  t.textContent = msg; t.hidden = false; t.classList.toggle("error", !!isError);
  clearTimeout(toastTimer); toastTimer = setTimeout(() => { t.hidden = true; }, isError ? 6000 : 2600);
}

function newId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + Math.random().toString(36).slice(2);
}

function el(tag, attrs, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) { if (k === "class") n.className = v; else if (k.startsWith("data-")) n.setAttribute(k, v); else n[k] = v; }
  for (const c of children) n.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return n;
}

function typing(ev) { const t = ev.target; return t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.isContentEditable); }

// Render text with highlighted spans [{start, end, labelers}] safely (text nodes only, no HTML).
function renderText(container, text, spans) {
  container.textContent = "";
  let pos = 0;
  for (const s of spans || []) {
    if (s.start < pos) continue;
    container.append(document.createTextNode(text.slice(pos, s.start)));
    container.append(el("mark", { title: "relied on by " + s.labelers.join(", ") }, text.slice(s.start, s.end)));
    pos = s.end;
  }
  container.append(document.createTextNode(text.slice(pos)));
}
