// The Campaigns tab's judging screen (app/annotation/tabs/campaign.py), run as the `#campaign-screen` HTML's
// js_on_load. The server hands one payload per answer (a JSON data attribute: the item, blinded, the annotator's
// judgement so far, their items in order, progress, a message); this script draws it full screen, keeps what the
// annotator gives in the browser (a draft per item in localStorage, kept until it is saved), measures the seconds
// spent on the item, and sends one action back through the screen's "act" event (campaign_collect.js takes it).
// Keyboard first: every key is on screen and listed under `?`. Offsets are UTF-16 here, code points on the wire.
(() => {
  const A = window.mt5Campaign || (window.mt5Campaign = {});
  A.el = element;
  A.send = (action) => { A.pending = action; trigger("act"); };
  A.take = () => { const p = A.pending || {}; A.pending = null; return p; };
  if (!A.ready) setup(A);
  watch("value", () => A.render(true));
  A.render(true);

  function setup(A) {
    A.ready = true;
    A.mode = "normal";
    A.spent = 0;
    A.since = null;
    const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;",
      '"': "&quot;", "'": "&#39;"}[c]));
    const kbd = (k) => `<kbd>${esc(k)}</kbd>`;
    const cpToU = (text, n) => { let i = 0; for (let k = 0; k < n && i < text.length; k++) i += text.codePointAt(i) > 0xffff ? 2 : 1; return i; };
    const uToCp = (text, i) => Array.from(text.slice(0, i)).length;
    const SCORED = {da: 1, esa: 1};
    const KEYS = [   // [keys, what they do]
      [["1–9", "0"], "score: one digit is tens (7 = 70), two digits the number (73); rating 1–5; choice or label by number"],
      [["+", "−"], "score up / down by 5"],
      [["a", "b"], "which output the keys act on (when there are several)"],
      [["m"], "mark an error on the text (or select it with the mouse)"],
      [["←", "→", "Shift+←", "Shift+→", "Tab"], "while marking: move by a word, extend or shrink, the other text"],
      [["1", "2", "3"], "while marking: severity minor, major, critical; then the category by number (0 none)"],
      [["u", "Delete"], "remove the last span / the span clicked"],
      [["e", "="], "post-edit: type the correction / keep the output as it is"],
      [["n"], "a note (comment) on this item"],
      [["Ctrl+Enter"], "submit and go to the next item"],
      [[",", "."], "back / forward through your items"],
      [["x"], "skip this item, with a reason"],
      [["g"], "guidelines"], [["?"], "this list"],
      [["q", "Esc"], "close the full screen (Esc: cancel marking first)"],
    ];

    A.payload = () => {
      const node = A.el && A.el.querySelector(".cj-payload");
      try { return node ? JSON.parse(node.dataset.payload) : {}; } catch (e) { return {}; }
    };
    A.app = () => A.el && A.el.querySelector(".cj-app");
    A.visible = () => { const a = A.app(); return !!(a && a.isConnected && a.getClientRects().length); };
    A.draftKey = (item) => `mt5c|${A.p.campaign_id}|${A.p.annotator}|${item}`;
    A.texts = () => { const t = {src: A.p.item.source}; A.p.item.outputs.forEach((o) => { t[o.slot] = o.text; }); return t; };
    A.slots = () => A.p.item.outputs.map((o) => o.slot);

    // ---- the item's state: what the annotator gave, with a baseline to tell unsaved changes
    A.empty = () => {
      const outs = {};
      A.slots().forEach((s) => { outs[s] = {score: null, rating: null, label: null, corrected: "", spans: [], entities: []}; });
      return {outs, pref: null, spans: [], comment: ""};
    };
    A.fromStored = (j, comment) => {
      const st = A.empty(), texts = A.texts();
      st.comment = comment || "";
      if (!j) return st;
      const u = (s, text) => ({...s, start: cpToU(text, s.start), end: cpToU(text, s.end)});
      const sideText = (side, slot) => side === "input" ? texts.src : side === "output" ? texts[slot] : texts[side];
      if (A.p.compares) {
        st.pref = j.preference || null;
        st.spans = (j.spans || []).map((s) => u(s, sideText(s.side)));
        return st;
      }
      Object.entries(j.outputs || {}).forEach(([slot, part]) => {
        const o = st.outs[slot];
        if (!o) return;
        ["score", "rating", "label"].forEach((k) => { if (part[k] != null) o[k] = part[k]; });
        if (part.corrected != null) o.corrected = part.corrected;
        o.spans = (part.spans || []).map((s) => u(s, sideText(s.side, slot)));
        o.entities = (part.entities || []).map((e) => u(e, texts.src));
      });
      return st;
    };
    A.judgement = () => {
      const texts = A.texts(), cp = (s, text) => ({...s, start: uToCp(text, s.start), end: uToCp(text, s.end)});
      const sideText = (side, slot) => side === "input" ? texts.src : side === "output" ? texts[slot] : texts[side];
      const out = {};
      if (A.st.comment.trim()) out.comment = A.st.comment.trim();
      if (A.p.compares) return {...out, preference: A.st.pref, spans: A.st.spans.map((s) => cp(s, sideText(s.side)))};
      A.slots().forEach((slot) => {
        const o = A.st.outs[slot], pr = A.p.protocol;
        out[slot] = pr === "likert" ? {rating: o.rating} : pr === "da" ? {score: o.score}
          : pr === "esa" ? {score: o.score, spans: o.spans.map((s) => cp(s, sideText(s.side, slot)))}
          : pr === "mqm" ? {spans: o.spans.map((s) => cp(s, sideText(s.side, slot)))}
          : pr === "label" ? {label: o.label} : pr === "postedit" ? {corrected: o.corrected}
          : {entities: o.entities.map((e) => cp(e, texts.src))};
      });
      return out;
    };
    A.missing = () => {
      const pr = A.p.protocol, many = A.slots().length > 1;
      if (A.p.compares) return A.st.pref ? "" : "Choose: 1 A better, 2 B better, 3 tie, 4 both bad.";
      for (const slot of A.slots()) {
        const o = A.st.outs[slot], where = many ? `Output ${slot}: ` : "";
        if ((pr === "da" || pr === "esa") && o.score == null) return `${where}give a score (type it, e.g. 7 or 73).`;
        if (pr === "likert" && o.rating == null) return `${where}give a rating, 1–5.`;
        if (pr === "label" && o.label == null) return `${where}pick a label by its number.`;
        if (pr === "postedit" && !o.corrected.trim())
          return `${where}type the corrected text (e), or press = when it needs no correction.`;
      }
      return "";
    };
    A.changed = () => {
      A.st.outs && A.p.item && (JSON.stringify(A.st) === A.base
        ? localStorage.removeItem(A.draftKey(A.p.item.item_id))
        : localStorage.setItem(A.draftKey(A.p.item.item_id), JSON.stringify(A.st)));
    };
    A.dirty = () => !!(A.p && A.p.item && A.st && JSON.stringify(A.st) !== A.base);

    // ---- time on the item: counted while the page is visible
    A.clock = (run) => {
      if (A.since != null) A.spent += performance.now() - A.since;
      A.since = run ? performance.now() : null;
    };
    A.seconds = () => { A.clock(!document.hidden); return Math.round(A.spent / 100) / 10; };
    document.addEventListener("visibilitychange", () => A.clock(!document.hidden && A.p && A.p.item));

    // ---- a new payload from the server
    A.render = (fresh) => {
      if (!A.app()) return;
      if (fresh) {
        const p = A.payload();
        if (p.nonce && A.p && p.nonce === A.p.nonce) { A.draw(); return; }
        const opened = p.campaign_id && (!A.p || A.p.campaign_id !== p.campaign_id || A.p.annotator !== p.annotator);
        const sameItem = A.p && A.p.item && p.item && A.p.item.item_id === p.item.item_id && A.p.campaign_id === p.campaign_id;
        A.p = p;
        if (p.forget) localStorage.removeItem(A.draftKey(p.forget));
        A.mode = "normal"; A.mark = null; A.picked = null; A.digits = null;
        if (p.item) {
          A.base = JSON.stringify(A.fromStored(p.judgement, p.comment));
          const draft = localStorage.getItem(A.draftKey(p.item.item_id));
          A.st = draft ? JSON.parse(draft) : JSON.parse(A.base);
          A.restored = !!draft && !sameItem;
          A.active = A.slots()[0];
          if (!sameItem) { A.spent = 0; A.since = null; }
          A.clock(!document.hidden);
        } else { A.st = null; A.clock(false); }
        if (opened && p.state !== "error") { A.closed = false; A.guide(!!p.has_guidelines); }
        A.draw();
        if (!sameItem) A.toTop();
        return;
      }
      A.draw();
    };
    A.toTop = () => {
      const app = A.app(), full = app && app.querySelector(".cj-full");
      if (full) full.scrollTop = 0; else if (app) app.scrollIntoView({block: "start"});
      if (app) app.focus({preventScroll: true});
    };
    A.guide = (on) => {
      document.documentElement.classList.toggle("cj-guide-on", on);
      if (!on && A.app()) A.app().focus({preventScroll: true});
    };

    // ---- drawing
    A.draw = () => {
      const app = A.app(), p = A.p || {};
      const full = p.item && !A.closed;
      document.documentElement.classList.toggle("cj-judging", !!full);
      if (!p.item) {
        app.innerHTML = `<div class="cj-idle">${A.status()}${p.state === "done" ? `<p>${A.progressLine()}</p>` : ""}</div>`;
        return;
      }
      if (A.closed) {
        app.innerHTML = `<div class="cj-idle"><button class="cj-btn cj-primary" data-k="resume">${kbd("Enter")} Judge: item ${esc(p.item.item_id)}</button> ${A.progressLine()}</div>`;
        return;
      }
      const many = !p.compares && A.slots().length > 1;
      const panels = [A.panel("src", "Source"), ...p.item.outputs.map((o) => A.panel(o.slot, `Output ${o.slot}`,
        many ? o.slot.toLowerCase() : "", o.system))].join("");
      app.innerHTML = `<div class="cj-full" role="region" aria-label="Judging">
        <div class="cj-top"><div class="cj-title"><b>${esc(p.campaign)}</b> · ${esc(p.protocol_label)} · item ${esc(p.item.item_id)}${A.where()}</div>
          <div class="cj-progress" role="status">${A.progressLine()}</div>
          <div class="cj-tools"><button class="cj-btn" data-k="g">${kbd("g")} Guidelines</button><button class="cj-btn" data-k="?">${kbd("?")} Keys</button><button class="cj-btn" data-k="q">${kbd("q")} Close</button></div></div>
        <div class="cj-texts" style="--cj-cols:${1 + A.slots().length}">${panels}</div>
        ${p.compares ? A.choices() : ""}
        <div class="cj-bar" aria-live="polite">${A.barText()}</div>
        ${A.mode === "note" || A.st.comment ? `<label class="cj-note">Note ${kbd("n")} <textarea class="cj-comment" rows="1" placeholder="a comment on this item (optional)">${esc(A.st.comment)}</textarea></label>` : ""}
        <div class="cj-bottom">
          <button class="cj-btn" data-k=","${p.position > 0 ? "" : " disabled"}>${kbd(",")} Back</button>
          <button class="cj-btn" data-k="."${p.position < (p.mine || []).length - 1 ? "" : " disabled"}>${kbd(".")} Forward</button>
          <button class="cj-btn" data-k="x">${kbd("x")} Skip…</button><button class="cj-btn" data-k="n">${kbd("n")} Note</button>
          <div class="cj-msg">${A.status()}</div>
          <button class="cj-btn cj-primary cj-submit" data-k="submit">Submit and next ${kbd("Ctrl")}+${kbd("Enter")}</button></div>
        <div class="cj-keys">${A.keyLine()}</div>
        ${A.mode === "help" ? A.helpBox() : ""}</div>`;
      const note = app.querySelector(".cj-comment");
      if (note) note.addEventListener("input", () => { A.st.comment = note.value; A.changed(); });
      app.querySelectorAll("textarea[data-slot]").forEach((t) => t.addEventListener("input", () => {
        A.st.outs[t.dataset.slot].corrected = t.value; A.changed();
      }));
      app.querySelectorAll("input[type=range]").forEach((r) => r.addEventListener("input", () => {
        A.setScore(r.dataset.slot, Number(r.value), true);
      }));
      if (A.mode === "note" && note) note.focus();
      if (A.mode === "skip") { const r = app.querySelector(".cj-reason"); if (r) r.focus(); }
      if (A.focusSlot) { const t = app.querySelector(`textarea[data-slot="${A.focusSlot}"]`); A.focusSlot = null; if (t) t.focus(); }
    };
    A.where = () => {
      const n = (A.p.mine || []).length, i = A.p.position;
      return n && i < n ? ` <span class="cj-sub">(your item ${i + 1} of ${n} so far)</span>` : "";
    };
    A.progressLine = () => {
      const g = A.p.progress;
      return g ? `<b>${g.done}</b> of <b>${g.total}</b> yours done` : "";
    };
    A.status = () => {
      const p = A.p || {};
      const lines = [];
      if (p.message) lines.push(`<div class="status status-${esc(p.kind || "info")}" role="status">${esc(p.message)}</div>`);
      if (A.note) lines.push(`<div class="status status-warn" role="status">${esc(A.note)}</div>`);
      else if (A.restored) lines.push(`<div class="status status-info" role="status">Your unsaved draft of this item is back.</div>`);
      return lines.join("");
    };
    A.keyLine = () => {
      const pr = A.p.protocol;
      const main = pr === "likert" ? `${kbd("1")}–${kbd("5")} rating` : SCORED[pr] ? `${kbd("0")}–${kbd("9")} score (${kbd("7")}${kbd("3")} = 73) ${kbd("+")}${kbd("−")}`
        : pr === "pairwise" ? `${kbd("1")}–${kbd("4")} choice` : pr === "label" ? `${kbd("1")}–${kbd("9")} label`
        : pr === "postedit" ? `${kbd("e")} edit ${kbd("=")} keep as it is` : "";
      const marking = A.p.has_spans || pr === "relabel" ? ` · ${kbd("m")} mark ${kbd("u")} undo span` : "";
      const outs = !A.p.compares && A.slots().length > 1 ? ` · ${A.slots().map((s) => kbd(s.toLowerCase())).join(" ")} output` : "";
      return `${main}${marking}${outs} · ${kbd("Ctrl")}+${kbd("Enter")} submit and next · ${kbd(",")} ${kbd(".")} back, forward · ${kbd("x")} skip · ${kbd("n")} note · ${kbd("g")} guidelines · ${kbd("?")} all keys`;
    };
    A.helpBox = () => `<div class="cj-help" role="dialog" aria-label="Keys"><h3>Keys ${kbd("?")} / ${kbd("Esc")} to close</h3><table>${
      KEYS.map(([ks, what]) => `<tr><th>${ks.map(kbd).join(" ")}</th><td>${esc(what)}</td></tr>`).join("")}</table></div>`;

    // the text of a panel, with its spans (and the selection being marked) drawn on it
    A.marks = (panel) => {
      const out = [];
      if (A.p.protocol === "relabel") {
        if (panel === "src") (A.st.outs[A.active].entities || []).forEach((e, i) => out.push({...e, cls: "cj-ent", tag: e.label, ref: `${A.active}:${i}`}));
        return out;
      }
      const label = (id) => (A.p.categories.find((c) => c.id === id) || {label: id}).label;
      const add = (s, slot, i) => out.push({...s, cls: `cj-sev-${s.severity}`, tag: s.severity + (s.category ? ` · ${label(s.category)}` : ""), ref: `${slot}:${i}`});
      if (A.p.compares) A.st.spans.forEach((s, i) => { if ((s.side === "input" ? "src" : s.side) === panel) add(s, "*", i); });
      else A.slots().forEach((slot) => A.st.outs[slot].spans.forEach((s, i) => {
        if ((s.side === "input" ? "src" : slot) === panel) add(s, slot, i);
      }));
      return out;
    };
    A.textHtml = (panel, text) => {
      const marks = A.marks(panel).sort((a, b) => a.start - b.start);
      const sel = A.mark && A.mark.panel === panel ? A.mark : null;
      const cuts = new Set([0, text.length]);
      marks.forEach((m) => { cuts.add(m.start); cuts.add(m.end); });
      if (sel) { cuts.add(sel.start); cuts.add(sel.end); }
      const at = [...cuts].filter((c) => c >= 0 && c <= text.length).sort((a, b) => a - b);
      let html = "";
      for (let k = 0; k + 1 < at.length; k++) {
        const a = at[k], b = at[k + 1], piece = esc(text.slice(a, b));
        const m = marks.find((x) => x.start <= a && b <= x.end);
        const inSel = sel && sel.start <= a && b <= sel.end;
        let seg = piece;
        if (m) seg = `<mark class="cj-span ${m.cls}${A.picked === m.ref ? " cj-picked" : ""}" data-ref="${m.ref}" title="${esc(m.tag)}">${seg}</mark>`;
        if (inSel) seg = `<mark class="cj-sel">${seg}</mark>`;
        html += seg;
      }
      return html;
    };
    A.panel = (panel, title, key, system) => {
      const text = A.texts()[panel], slot = panel === "src" ? "" : panel;
      const active = slot && !A.p.compares && A.slots().length > 1 && A.active === slot;
      const head = `${key ? kbd(key) + " " : ""}${esc(title)}${system ? ` <span class="cj-sub">${esc(system)}</span>` : ""}`;
      let extra = "";
      if (panel === "src" && A.p.item.reference) extra = `<details class="cj-ref"><summary>Reference</summary>${esc(A.p.item.reference)}</details>`;
      if (panel === "src" && A.p.protocol === "relabel") extra += A.spanChips("src");
      if (slot && !A.p.compares) extra += A.control(slot);
      if (slot && (A.p.has_spans)) extra += A.spanChips(slot);
      if (panel === "src" && A.p.has_spans) extra += A.spanChips("src");
      return `<section class="cj-panel${active ? " cj-active" : ""}" data-panel="${panel}"><h3>${head}</h3>
        <div class="cj-text" dir="auto" data-panel="${panel}">${A.textHtml(panel, text)}</div>${extra}</section>`;
    };
    A.spanChips = (panel) => {
      const marks = A.marks(panel);
      if (!marks.length) return "";
      const text = A.texts()[panel];
      return `<div class="cj-chips">${marks.map((m) => `<button class="cj-chip ${m.cls}${A.picked === m.ref ? " cj-picked" : ""}" data-ref="${m.ref}" title="select; Delete removes it">${esc(m.tag)}: “${esc(text.slice(m.start, m.end).slice(0, 30))}”</button>`).join("")}</div>`;
    };
    A.control = (slot) => {
      const o = A.st.outs[slot], pr = A.p.protocol;
      if (SCORED[pr]) {
        const v = o.score;
        return `<div class="cj-ctl cj-score${v == null ? " cj-unset" : ""}"><span>Score</span><input type="range" min="0" max="100" step="1" value="${v == null ? 50 : v}" data-slot="${slot}" aria-label="Score for output ${slot}"><output>${v == null ? "—" : v}</output><span class="cj-sub">0 nonsense · 100 perfect</span></div>`;
      }
      if (pr === "likert") return `<div class="cj-ctl">${[1, 2, 3, 4, 5].map((n) => `<button class="cj-opt${o.rating === n ? " cj-on" : ""}" data-slot="${slot}" data-rate="${n}">${kbd(n)}</button>`).join("")}<span class="cj-sub">1 useless · 5 perfect</span></div>`;
      if (pr === "label") return `<div class="cj-ctl">${A.p.labels.map((l, i) => `<button class="cj-opt${o.label === l ? " cj-on" : ""}" data-slot="${slot}" data-label="${i}">${i < 9 ? kbd(i + 1) + " " : ""}${esc(l)}</button>`).join("")}</div>`;
      if (pr === "postedit") return `<div class="cj-ctl cj-pe"><textarea data-slot="${slot}" rows="3" dir="auto" placeholder="Type the corrected output here (e). Empty = not looked at; = keeps the output as it is.">${esc(o.corrected)}</textarea></div>`;
      if (pr === "mqm") return `<div class="cj-ctl cj-sub">${o.spans.length} error(s) marked${o.spans.length ? "" : ": none found, if you submit"}</div>`;
      if (pr === "relabel") return `<div class="cj-ctl cj-sub">${o.entities.length} entit${o.entities.length === 1 ? "y" : "ies"} on the source</div>`;
      return "";
    };
    A.choices = () => {
      const opts = [["A", "A is better"], ["B", "B is better"], ["tie", "Tie: equally good"], ["both_bad", "Both bad"]];
      return `<div class="cj-ctl cj-choices" role="radiogroup" aria-label="Preference">${opts.map(([id, label], i) =>
        `<button class="cj-opt${A.st.pref === id ? " cj-on" : ""}" data-pref="${id}" role="radio" aria-checked="${A.st.pref === id}">${kbd(i + 1)} ${label}</button>`).join("")}</div>`;
    };
    A.barText = () => {
      const m = A.mark;
      if (A.mode === "skip") return `Skip this item because… <input class="cj-reason" type="text" placeholder="e.g. not my language" aria-label="Reason for skipping"> ${kbd("Enter")} skip ${kbd("Esc")} cancel`;
      if (!m) return A.p.has_spans || A.p.protocol === "relabel"
        ? `${A.p.protocol_help ? esc(A.p.protocol_help) + " " : ""}Mark: select text with the mouse, or ${kbd("m")}.` : esc(A.p.protocol_help || "");
      const quote = `“${esc(A.texts()[m.panel].slice(m.start, m.end))}”`;
      const where = m.panel === "src" ? "the source" : `output ${m.panel}`;
      if (A.mode === "category") {
        const cats = A.p.categories.map((c, i) => i < 9 ? `${kbd(i + 1)} ${esc(c.label)}` : "").join(" ");
        return `Category of ${quote} (${esc(m.severity)}): ${cats}${A.p.category_required ? "" : ` ${kbd("0")} none`} · ${kbd("Esc")} cancel`;
      }
      if (A.p.protocol === "relabel") return `Label ${quote}: ${A.p.labels.map((l, i) => i < 9 ? `${kbd(i + 1)} ${esc(l)}` : "").join(" ")} · ${kbd("←")}${kbd("→")} move ${kbd("Shift")}+${kbd("←")}${kbd("→")} extend · ${kbd("Esc")} cancel`;
      return `Marking ${quote} on ${where}: ${A.p.severities.map((s, i) => `${kbd(i + 1)} ${esc(s.label)}`).join(" ")} · ${kbd("←")}${kbd("→")} move ${kbd("Shift")}+${kbd("←")}${kbd("→")} extend ${kbd("Tab")} other text · ${kbd("Esc")} cancel`;
    };

    // ---- changing the state
    A.set = (fn) => { fn(); A.note = ""; A.restored = false; A.changed(); A.draw(); };
    A.setScore = (slot, v, fromSlider) => {
      v = Math.max(0, Math.min(100, Math.round(v)));
      if (fromSlider) {
        A.st.outs[slot].score = v; A.changed();
        const ctl = A.app().querySelector(`input[data-slot="${slot}"]`).parentElement;
        ctl.classList.remove("cj-unset"); ctl.querySelector("output").textContent = v;
        return;
      }
      A.set(() => { A.st.outs[slot].score = v; A.active = slot; });
    };
    A.digit = (d) => {
      const pr = A.p.protocol, slot = A.active, now = performance.now();
      if (SCORED[pr]) {
        const buf = A.digits && now - A.digits.at < 900 && A.digits.slot === slot ? A.digits.buf + d : String(d);
        A.digits = {buf, at: now, slot};
        A.setScore(slot, buf.length === 1 ? d * 10 : Number(buf));
      } else if (pr === "likert" && d >= 1 && d <= 5) A.set(() => { A.st.outs[slot].rating = d; });
      else if (pr === "label" && d >= 1 && d <= A.p.labels.length) A.set(() => { A.st.outs[slot].label = A.p.labels[d - 1]; });
      else if (pr === "pairwise" && d >= 1 && d <= 4) A.set(() => { A.st.pref = ["A", "B", "tie", "both_bad"][d - 1]; });
    };
    A.words = (text) => { const w = []; const re = /\S+/g; let m; while ((m = re.exec(text))) w.push([m.index, m.index + m[0].length]); return w; };
    A.startMark = (panel) => {
      const panels = A.markPanels();
      panel = panels.includes(panel) ? panel : panels[0];
      const w = A.words(A.texts()[panel]);
      if (!w.length) return;
      A.mark = {panel, start: w[0][0], end: w[0][1]}; A.mode = "mark"; A.draw();
    };
    A.markPanels = () => A.p.protocol === "relabel" ? ["src"] : [...A.slots(), "src"];
    A.moveMark = (dir, extend) => {
      const m = A.mark, w = A.words(A.texts()[m.panel]);
      if (extend) {
        const ends = w.map((x) => x[1]).filter((e) => dir > 0 ? e > m.end : e < m.end && e > m.start);
        if (ends.length) m.end = dir > 0 ? ends[0] : ends[ends.length - 1];
      } else {
        const i = w.findIndex((x) => x[0] >= m.start);
        const j = Math.max(0, Math.min(w.length - 1, (i < 0 ? w.length - 1 : i) + dir));
        [m.start, m.end] = w[j];
      }
      A.draw();
    };
    A.addSpan = (sev, cat) => {
      const m = A.mark;
      A.set(() => {
        if (A.p.compares) A.st.spans.push({start: m.start, end: m.end, side: m.panel === "src" ? "input" : m.panel, category: cat || "", severity: sev});
        else {
          const slot = m.panel === "src" ? A.active : m.panel;
          A.st.outs[slot].spans.push({start: m.start, end: m.end, side: m.panel === "src" ? "input" : "output", category: cat || "", severity: sev});
          A.active = slot;
        }
        A.mark = null; A.mode = "normal";
      });
    };
    A.removeSpan = (ref) => {
      if (!ref) return;
      const [slot, i] = ref.split(":");
      A.set(() => {
        const list = slot === "*" ? A.st.spans : A.p.protocol === "relabel" ? A.st.outs[slot].entities : A.st.outs[slot].spans;
        list.splice(Number(i), 1); A.picked = null;
      });
    };
    A.lastRef = () => {
      if (A.p.compares) return A.st.spans.length ? `*:${A.st.spans.length - 1}` : "";
      const list = A.p.protocol === "relabel" ? A.st.outs[A.active].entities : A.st.outs[A.active].spans;
      return list.length ? `${A.active}:${list.length - 1}` : "";
    };

    // ---- actions that talk to the server
    A.leave = (action) => {
      if (A.dirty() && !window.confirm("This item has changes you have not submitted. Leave it? Your draft stays in this browser and comes back when you return.")) return;
      A.clock(false);
      A.send(action);
    };
    A.submit = () => {
      const missing = A.missing();
      if (missing) { A.note = missing; A.draw(); return; }
      A.note = "";
      A.send({do: "submit", item_id: A.p.item.item_id, judgement: A.judgement(), seconds: A.seconds()});
    };
    A.go = (step) => {
      const mine = A.p.mine || [], i = A.p.position + step;
      if (i < 0 || i >= mine.length) return;
      A.leave({do: "item", item_id: mine[i]});
    };

    // ---- keys
    const typing = (t) => t && (t.isContentEditable || t.tagName === "TEXTAREA" || t.tagName === "SELECT" ||
      (t.tagName === "INPUT" && t.type !== "range"));
    A.key = (e) => {
      if (document.documentElement.classList.contains("cj-guide-on")) {
        if (["g", "Enter", "Escape"].includes(e.key) && !typing(e.target)) { e.preventDefault(); A.guide(false); }
        return;
      }
      if (!A.visible() || !A.p || !A.p.item) return;
      if (A.closed) { if (e.key === "Enter" && !typing(e.target)) { e.preventDefault(); A.closed = false; A.draw(); A.toTop(); } return; }
      if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { e.preventDefault(); A.mode = "normal"; A.submit(); return; }
      if (typing(e.target)) {
        if (e.key === "Escape") { e.preventDefault(); e.target.blur(); if (A.mode !== "skip") A.mode = "normal"; }
        if (A.mode === "skip" && e.target.classList.contains("cj-reason")) {
          if (e.key === "Enter" && e.target.value.trim()) { e.preventDefault(); A.send({do: "skip", item_id: A.p.item.item_id, reason: e.target.value.trim()}); }
          if (e.key === "Escape") { A.mode = "normal"; A.draw(); }
        }
        return;
      }
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      const k = e.key, handled = A.mode === "help" ? A.helpKey(k) : A.mode === "mark" || A.mode === "category" ? A.markKey(k, e.shiftKey) : A.normalKey(k);
      if (handled) e.preventDefault();
    };
    A.helpKey = (k) => { if (k === "?" || k === "Escape") { A.mode = "normal"; A.draw(); } return true; };
    A.markKey = (k, shift) => {
      const m = A.mark, d = /^[0-9]$/.test(k) ? Number(k) : null;
      if (k === "Escape") { A.mark = null; A.mode = "normal"; A.draw(); return true; }
      if (k === "ArrowRight" || k === "ArrowLeft") { if (A.mode === "mark") A.moveMark(k === "ArrowRight" ? 1 : -1, shift); return true; }
      if (k === "Tab" && A.mode === "mark") {
        const ps = A.markPanels(); A.startMark(ps[(ps.indexOf(m.panel) + 1) % ps.length]); return true;
      }
      if (d == null) return false;
      if (A.p.protocol === "relabel") {
        if (d >= 1 && d <= A.p.labels.length) A.set(() => {
          A.st.outs[A.active].entities.push({start: m.start, end: m.end, label: A.p.labels[d - 1]});
          A.st.outs[A.active].entities.sort((a, b) => a.start - b.start); A.mark = null; A.mode = "normal";
        });
        return true;
      }
      if (A.mode === "mark") {
        if (d >= 1 && d <= A.p.severities.length) {
          m.severity = A.p.severities[d - 1].id;
          if (A.p.categories.length) { A.mode = "category"; A.draw(); } else A.addSpan(m.severity, "");
        }
        return true;
      }
      if (d === 0 && !A.p.category_required) A.addSpan(m.severity, "");
      else if (d >= 1 && d <= A.p.categories.length) A.addSpan(m.severity, A.p.categories[d - 1].id);
      return true;
    };
    A.normalKey = (k) => {
      if (/^[0-9]$/.test(k)) { A.digit(Number(k)); return true; }
      const slot = A.slots().find((s) => s.toLowerCase() === k);
      if (slot && !A.p.compares && A.slots().length > 1) { A.active = slot; A.digits = null; A.draw(); return true; }
      const pr = A.p.protocol;
      switch (k) {
        case "+": case "=":
          if (k === "=" && pr === "postedit") { A.set(() => { A.st.outs[A.active].corrected = A.texts()[A.active]; }); return true; }
          if (SCORED[pr]) A.setScore(A.active, (A.st.outs[A.active].score ?? 50) + 5); return true;
        case "-": case "−": if (SCORED[pr]) A.setScore(A.active, (A.st.outs[A.active].score ?? 50) - 5); return true;
        case "m": if (A.p.has_spans || pr === "relabel") A.startMark(A.active); return true;
        case "u": A.removeSpan(A.lastRef()); return true;
        case "Delete": case "Backspace": A.removeSpan(A.picked); return true;
        case "e": if (pr === "postedit") { A.focusSlot = A.active; A.draw(); } return true;
        case "n": A.mode = "note"; A.draw(); return true;
        case "x": A.mode = "skip"; A.draw(); return true;
        case "g": if (A.p.has_guidelines) A.guide(true); return true;
        case "?": A.mode = "help"; A.draw(); return true;
        case ",": A.go(-1); return true;
        case ".": A.go(1); return true;
        case "q": case "Escape": A.closed = true; A.draw(); return true;
        default: return false;
      }
    };
    document.addEventListener("keydown", (e) => A.key(e));
    window.addEventListener("beforeunload", (e) => { if (A.dirty()) { e.preventDefault(); e.returnValue = ""; } });

    // ---- the mouse: the same actions
    document.addEventListener("click", (e) => {
      const app = A.app();
      if (!app || !app.contains(e.target) || !A.p) return;
      const b = e.target.closest("button, mark.cj-span");
      if (!b) return;
      const d = b.dataset;
      if (d.k === "submit") A.submit();
      else if (d.k === "resume") { A.closed = false; A.draw(); A.toTop(); }
      else if (d.k) A.normalKey(d.k);
      else if (d.rate) { A.active = d.slot; A.set(() => { A.st.outs[d.slot].rating = Number(d.rate); }); }
      else if (d.label) { A.active = d.slot; A.set(() => { A.st.outs[d.slot].label = A.p.labels[Number(d.label)]; }); }
      else if (d.pref) A.set(() => { A.st.pref = d.pref; });
      else if (d.ref) { A.picked = A.picked === d.ref ? null : d.ref; A.draw(); }
    });
    document.addEventListener("mouseup", () => {
      const app = A.app(), sel = window.getSelection();
      if (!app || !A.p || !A.p.item || !sel || sel.isCollapsed || !sel.rangeCount) return;
      const range = sel.getRangeAt(0), node = range.startContainer;
      const root = (node.nodeType === 1 ? node : node.parentElement).closest(".cj-text");
      if (!root || !app.contains(root) || !root.contains(range.endContainer)) return;
      const panel = root.dataset.panel;
      if (!A.markPanels().includes(panel)) return;
      const before = document.createRange();
      before.selectNodeContents(root); before.setEnd(range.startContainer, range.startOffset);
      let start = before.toString().length, end = start + range.toString().length;
      const text = A.texts()[panel];
      while (start < end && /\s/.test(text[start])) start++;
      while (end > start && /\s/.test(text[end - 1])) end--;
      if (end <= start) return;
      sel.removeAllRanges();
      A.mark = {panel, start, end}; A.mode = "mark"; A.draw();
    });
  }
})();
