"""The labelling page of `rlfl label serve`: one self-contained HTML document (CSS and JS inline).

It lives in a Python string so that it installs with the package (no package-data to forget). The page
holds NO model text: it fetches each item as JSON and puts prompt and responses into the DOM with
``textContent`` only, so a response containing ``<script>`` is shown as those characters, never run.
The server fills in three things, all of them escaped here: the CSP nonce of this response (the inline
script and style run only with it), the session token (sent back in ``X-RLFL-Token`` on every POST),
and a small JSON config (the allowed annotator names, the store's name), placed in a non-executed
``<script type="application/json">`` block with ``<``, ``>`` and ``&`` written as ``\\u003c`` etc.

The page speaks only in screen sides ("left", "right", "tie", "skip"); the server alone knows which of
``response_a`` / ``response_b`` it put on the left, and records that as the label's ``shown_order``.

Keyboard: 1 = left better, 2 = right better, 3 = tie, space = skip, u or Backspace = undo the last label
(ignored while the comment box has focus; Escape leaves it). ``document.body.dataset`` carries ``view``
(login | item | done), ``itemId`` and ``busy`` so that tests (and curious users) can see the state.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

__all__ = ["PAGE_TEMPLATE", "json_for_html", "render_page"]

PAGE_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="rlfl-token" content="__TOKEN__">
<title>rlfl label</title>
<style nonce="__NONCE__">
:root { --fg: #1d1f23; --muted: #5f6670; --bg: #f5f6f8; --card: #fff; --line: #d6d9de; --accent: #2457c5;
        --ok: #1d7a3a; --bad: #b3261e; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6e8eb; --muted: #9aa3ad; --bg: #16181b; --card: #202327; --line: #3a3f46; --accent: #7aa2ff;
          --ok: #5fc27e; --bad: #ff8a80; }
}
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Liberation Sans", sans-serif;
       color: var(--fg); background: var(--bg); }
header { display: flex; gap: 1rem; align-items: baseline; padding: .6rem 1.2rem; border-bottom: 1px solid var(--line);
         background: var(--card); }
header h1 { font-size: 1.05rem; margin: 0; }
header .grow { flex: 1; }
#who { color: var(--muted); }
#progress { font-variant-numeric: tabular-nums; font-weight: 600; }
main { max-width: 1280px; margin: 0 auto; padding: 1rem 1.2rem 2rem; }
.hidden { display: none !important; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: .8rem 1rem; }
.label { font-size: .75rem; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); margin: 0 0 .3rem; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }
#prompt-card { margin-bottom: 1rem; }
#prompt { max-height: 30vh; overflow: auto; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
@media (max-width: 640px) { .pair { grid-template-columns: 1fr; } }
.response { max-height: 55vh; overflow: auto; }
.actions { display: flex; flex-wrap: wrap; gap: .6rem; margin-top: 1rem; align-items: center; }
button { font: inherit; padding: .45rem .9rem; border-radius: 6px; border: 1px solid var(--line);
         background: var(--card); color: var(--fg); cursor: pointer; }
button:hover { border-color: var(--accent); }
button.primary { border-color: var(--accent); }
button:disabled { opacity: .5; cursor: default; }
kbd { font: .8rem ui-monospace, monospace; border: 1px solid var(--line); border-bottom-width: 2px;
      border-radius: 4px; padding: 0 .3rem; margin-right: .3rem; }
input[type=text] { font: inherit; padding: .4rem .6rem; border: 1px solid var(--line); border-radius: 6px;
                   background: var(--card); color: var(--fg); }
#comment { flex: 1; min-width: 12rem; }
#status { min-height: 1.5rem; margin-top: .8rem; color: var(--muted); }
#status.error { color: var(--bad); }
#status.ok { color: var(--ok); }
#login { max-width: 28rem; margin: 3rem auto; }
#login form { display: flex; gap: .6rem; }
#login input { flex: 1; }
#done { text-align: center; margin: 3rem auto; max-width: 32rem; }
.help { color: var(--muted); font-size: .9rem; }
</style>
</head>
<body data-view="login" data-busy="0">
<script type="application/json" id="rlfl-config">__CONFIG__</script>
<header>
  <h1>rlfl label</h1>
  <span id="who"></span>
  <span class="grow"></span>
  <span id="progress"></span>
  <button id="switch" type="button" class="hidden">switch annotator</button>
</header>
<main>
  <section id="login" class="card">
    <p class="label">Annotator</p>
    <form id="login-form">
      <input id="name" type="text" list="names" maxlength="100" autocomplete="off" placeholder="your name" required>
      <datalist id="names"></datalist>
      <button id="start" type="submit" class="primary">Start</button>
    </form>
    <p class="help">Labels are saved under this name. Keys: <kbd>1</kbd>left better <kbd>2</kbd>right better
      <kbd>3</kbd>tie <kbd>space</kbd>skip <kbd>u</kbd>undo</p>
  </section>

  <section id="work" class="hidden">
    <div id="prompt-card" class="card">
      <p class="label">Prompt</p>
      <p id="prompt" class="text"></p>
    </div>
    <div class="pair">
      <div class="card response"><p class="label">Left</p><p id="left" class="text"></p></div>
      <div class="card response"><p class="label">Right</p><p id="right" class="text"></p></div>
    </div>
    <div class="actions">
      <button type="button" data-side="left"><kbd>1</kbd>Left is better</button>
      <button type="button" data-side="tie"><kbd>3</kbd>Tie</button>
      <button type="button" data-side="right"><kbd>2</kbd>Right is better</button>
      <button type="button" data-side="skip"><kbd>space</kbd>Skip</button>
      <button type="button" class="undo"><kbd>u</kbd>Undo</button>
      <input id="comment" type="text" maxlength="2000" placeholder="comment (optional; Esc to leave the box)">
    </div>
  </section>

  <section id="done" class="card hidden">
    <h2>All done</h2>
    <p id="done-text"></p>
    <button type="button" class="undo"><kbd>u</kbd>Undo the last label</button>
  </section>
  <p id="status" role="status" aria-live="polite"></p>
</main>
<script nonce="__NONCE__">
"use strict";
(() => {
  const TOKEN = document.querySelector('meta[name="rlfl-token"]').content;
  const CONFIG = JSON.parse(document.getElementById("rlfl-config").textContent);
  const $ = (id) => document.getElementById(id);
  const body = document.body;
  let annotator = null;
  let state = null;
  let busy = false;
  let shownAt = 0;

  function setStatus(text, kind) {
    const el = $("status");
    el.textContent = text;
    el.className = kind || "";
  }

  function setBusy(value) {
    busy = value;
    body.dataset.busy = value ? "1" : "0";
    for (const b of document.querySelectorAll("button")) b.disabled = value;
  }

  // Every call is a same-origin POST with a JSON body and the session token; the server refuses
  // anything else, which is what keeps other web sites from labelling on the annotator's behalf.
  async function api(path, payload) {
    const resp = await fetch(path, {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: {"Content-Type": "application/json", "X-RLFL-Token": TOKEN},
      body: JSON.stringify(payload),
    });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const err = new Error((data && data.error) || ("HTTP " + resp.status));
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  function show(view) {
    body.dataset.view = view;
    $("login").classList.toggle("hidden", view !== "login");
    $("work").classList.toggle("hidden", view !== "item");
    $("done").classList.toggle("hidden", view !== "done");
    $("switch").classList.toggle("hidden", view === "login");
  }

  function render(next) {
    state = next;
    $("who").textContent = annotator ? "annotator: " + annotator : "";
    $("progress").textContent = next.progress.done + " / " + next.progress.total;
    if (next.item) {
      // textContent only (no HTML parsing): model text is data, not markup
      $("prompt").textContent = next.item.prompt;
      $("left").textContent = next.item.left;
      $("right").textContent = next.item.right;
      $("comment").value = "";
      body.dataset.itemId = String(next.item.id);
      shownAt = performance.now();
      show("item");
    } else {
      delete body.dataset.itemId;
      $("done-text").textContent = "You labelled all " + next.progress.total + " items. Thank you!";
      show("done");
    }
  }

  async function call(path, payload, okText) {
    if (busy) return;
    setBusy(true);
    try {
      const data = await api(path, payload);
      render(data.state);
      setStatus(okText(data), "ok");
    } catch (err) {
      if (err.status === 409) {  // the item went stale (another tab, a server restart): fetch the current one
        setStatus(err.message, "error");
        try { render((await api("/api/next", {annotator})).state); } catch (e2) { setStatus(e2.message, "error"); }
      } else {
        setStatus(err.message, "error");
      }
    } finally {
      setBusy(false);
    }
  }

  function choose(side) {
    if (!state || !state.item) return;
    const comment = $("comment").value.trim();
    call("/api/label", {annotator, item_id: state.item.id, side,
                        seconds: (performance.now() - shownAt) / 1000, comment: comment || null},
         () => "saved: " + side);
  }

  function undo() {
    call("/api/undo", {annotator},
         (data) => data.undone ? "undid the label on item " + data.undone.item_id : "nothing to undo");
  }

  async function start(name) {
    annotator = name;
    try { localStorage.setItem("rlfl-annotator", name); } catch (e) { /* storage may be disabled */ }
    setStatus("", "");
    await call("/api/next", {annotator}, () => "");
    if (!state) { annotator = null; }
  }

  // ---- wiring
  const names = $("names");
  for (const n of CONFIG.annotators || []) {
    const opt = document.createElement("option");
    opt.value = n;
    names.appendChild(opt);
  }
  try { $("name").value = localStorage.getItem("rlfl-annotator") || ""; } catch (e) { /* ignore */ }
  $("name").focus();
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $("name").value.trim();
    if (name) start(name);
  });
  $("switch").addEventListener("click", () => {
    annotator = null; state = null;
    $("who").textContent = ""; $("progress").textContent = "";
    setStatus("", "");
    show("login");
    $("name").focus();
  });
  for (const b of document.querySelectorAll("button[data-side]")) {
    b.addEventListener("click", () => { b.blur(); choose(b.dataset.side); });
  }
  for (const b of document.querySelectorAll("button.undo")) {
    b.addEventListener("click", () => { b.blur(); undo(); });
  }

  const KEYS = {"1": "left", "2": "right", "3": "tie", " ": "skip"};
  document.addEventListener("keydown", (ev) => {
    const view = body.dataset.view;
    if (view === "login" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const tag = ev.target && ev.target.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA") {
      if (ev.key === "Escape") ev.target.blur();
      return;
    }
    if (ev.repeat) { ev.preventDefault(); return; }
    if (ev.key in KEYS) {
      ev.preventDefault();
      if (view === "item") choose(KEYS[ev.key]);
    } else if (ev.key === "u" || ev.key === "U" || ev.key === "Backspace") {
      ev.preventDefault();
      undo();
    }
  });
  document.title = "rlfl label \\u2014 " + (CONFIG.store || "");
  if (CONFIG.annotator) {  // a private link: this page labels as its annotator only
    $("name").value = CONFIG.annotator;
    $("switch").hidden = true;
    start(CONFIG.annotator);
  }
})();
</script>
</body>
</html>
"""


def json_for_html(value: Any) -> str:
    """JSON that is safe inside an HTML ``<script>`` block: ``<``, ``>``, ``&`` and line separators escaped.

    Example:
        >>> print(json_for_html({"name": "</script><b>"}))
        {"name": "\\u003c/script\\u003e\\u003cb\\u003e"}
    """
    text = json.dumps(value, ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def render_page(*, nonce: str, token: str, config: dict[str, Any]) -> str:
    """The page with this response's CSP nonce, the session token and the page config filled in (escaped)."""
    values = {"NONCE": html.escape(nonce, quote=True), "TOKEN": html.escape(token, quote=True),
              "CONFIG": json_for_html(config)}
    # one pass, so that a value containing a placeholder's name is never substituted again
    return re.sub(r"__(NONCE|TOKEN|CONFIG)__", lambda m: values[m.group(1)], PAGE_TEMPLATE)
