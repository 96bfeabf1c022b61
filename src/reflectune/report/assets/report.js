"use strict";
// The report's browser. Records arrive gzip + base64 in #payload; every string from the data is put
// in the page with textContent (never innerHTML), so data that holds markup stays text.
(function () {
  const PAGE = 20, DIFF_CELLS = 4e6;
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  };
  const fmt = (x) => (x === null || x === undefined) ? "—" : (typeof x === "number" ? x.toPrecision(3) : String(x));

  async function decode() {
    const text = document.getElementById("payload").textContent.trim();
    const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return await new Response(stream).json();
  }

  // word-level diff: LCS over words and the spaces between them
  function diff(a, b) {
    const x = a.split(/(\s+)/), y = b.split(/(\s+)/);
    const n = x.length, m = y.length;
    if (n * m > DIFF_CELLS) return null;
    const w = m + 1, table = new Uint32Array((n + 1) * w);
    for (let i = n - 1; i >= 0; i--)
      for (let j = m - 1; j >= 0; j--)
        table[i * w + j] = x[i] === y[j] ? table[(i + 1) * w + j + 1] + 1
          : Math.max(table[(i + 1) * w + j], table[i * w + j + 1]);
    const left = [], right = [];
    let i = 0, j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && x[i] === y[j]) { left.push([0, x[i]]); right.push([0, y[j]]); i++; j++; }
      else if (j < m && (i === n || table[i * w + j + 1] >= table[(i + 1) * w + j])) { right.push([1, y[j]]); j++; }
      else { left.push([1, x[i]]); i++; }
    }
    return [left, right];
  }

  function textBox(parts, mark) {
    const box = el("div", "text");
    for (const [changed, word] of parts) box.appendChild(changed ? el(mark, null, word) : document.createTextNode(word));
    return box;
  }

  function compare(title, before, after, labelBefore, labelAfter) {
    const wrap = el("div");
    wrap.appendChild(el("div", "label", title));
    const pair = el("div", "pair");
    const d = (after === null || after === undefined) ? null : diff(before, after);
    const l = el("div"), r = el("div");
    l.appendChild(el("div", "label", labelBefore));
    r.appendChild(el("div", "label", labelAfter));
    if (d) { l.appendChild(textBox(d[0], "del")); r.appendChild(textBox(d[1], "ins")); }
    else { l.appendChild(el("div", "text", before)); r.appendChild(el("div", "text", after === null || after === undefined ? "(not produced)" : after)); }
    pair.appendChild(l); pair.appendChild(r); wrap.appendChild(pair);
    return wrap;
  }

  function options(select, label, values) {
    select.appendChild(el("option", null, label)).value = "";
    for (const v of values) select.appendChild(el("option", null, v)).value = v;
  }

  function browser(prefix, records, filters, hay, card) {
    const list = document.getElementById(prefix + "-list"), search = document.getElementById(prefix + "-search");
    const count = document.getElementById(prefix + "-count"), pageLabel = document.getElementById(prefix + "-page");
    const state = { page: 0, shown: records };
    for (const [id, label, valuesOf] of filters) {
      const values = new Set();
      for (const r of records) for (const v of valuesOf(r)) if (v) values.add(v);
      options(document.getElementById(id), label, Array.from(values).sort());
    }
    const hays = new Array(records.length);
    function apply() {
      const q = search.value.trim().toLowerCase();
      const chosen = filters.map(([id, , valuesOf]) => [document.getElementById(id).value, valuesOf]);
      const out = [];
      for (let i = 0; i < records.length; i++) {
        const r = records[i];
        if (!chosen.every(([v, of]) => !v || of(r).includes(v))) continue;
        if (q) { if (hays[i] === undefined) hays[i] = hay(r).toLowerCase(); if (!hays[i].includes(q)) continue; }
        out.push(r);
      }
      state.shown = out; state.page = 0; draw();
    }
    function draw() {
      const pages = Math.max(1, Math.ceil(state.shown.length / PAGE));
      state.page = Math.min(state.page, pages - 1);
      count.textContent = state.shown.length.toLocaleString("en") + " of " + records.length.toLocaleString("en");
      count.dataset.matching = String(state.shown.length);
      pageLabel.textContent = "page " + (state.page + 1) + " / " + pages;
      list.replaceChildren(...state.shown.slice(state.page * PAGE, (state.page + 1) * PAGE).map(card));
    }
    let timer = 0;
    search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(apply, 150); });
    for (const [id] of filters) document.getElementById(id).addEventListener("change", apply);
    document.getElementById(prefix + "-prev").addEventListener("click", () => { if (state.page > 0) { state.page--; draw(); } });
    document.getElementById(prefix + "-next").addEventListener("click", () => { state.page++; draw(); });
    draw();
  }

  function sampleCard(s) {
    const c = el("div", "card"); c.dataset.id = s.id;
    const meta = el("div", "meta");
    meta.appendChild(el("span", null, "id " + s.id + (s.row === null || s.row === undefined ? "" : " · row " + s.row)));
    meta.appendChild(el("span", "tag", s.status || "—"));
    const ch = s.choice;
    if (ch) {
      meta.appendChild(el("span", "tag", "outcome: " + ch.outcome));
      meta.appendChild(el("span", "tag " + (ch.selected ? "kept" : "bad"), ch.selected ? "selected (" + ch.variant + ")" : "not selected: " + (ch.reason || "?")));
    }
    c.appendChild(meta);
    const v = s.variants, ori = v.ori || {};
    const instr = (e) => e && e.instruction !== null && e.instruction !== undefined ? e.instruction + (e.input ? "\n" + e.input : "") : null;
    const okText = (e, key) => e && e.status === "ok" ? (key === "instruction" ? instr(e) : e.output) : null;
    const resp = ch && (ch.variant === "A" || ch.variant === "QA") ? v[ch.variant] : (v.QA && v.QA.status === "ok" ? v.QA : v.A);
    c.appendChild(compare("instruction", instr(ori) || "", okText(v.Q, "instruction"), "original", "reflected (Q)"));
    c.appendChild(compare("response", ori.output || "", okText(resp, "output"), "original", "reflected (" + (resp === v.QA ? "QA" : "A") + ")"));
    const tags = el("div", "variants");
    for (const name of ["ori", "Q", "A", "QA"]) {
      const e = v[name]; if (!e) continue;
      let text = name + ": " + e.status + (e.gate ? " [" + e.gate + "]" : "");
      if (e.ifd !== null && e.ifd !== undefined) text += " · IFD " + fmt(e.ifd) + " · r-IFD " + fmt(e.rifd);
      const t = el("span", "tag " + (e.status === "ok" ? "ok" : "bad"), text);
      if (e.reason) t.title = e.reason;
      tags.appendChild(t);
      if (e.reason && e.status !== "ok") tags.appendChild(el("span", "muted", e.reason));
    }
    c.appendChild(tags);
    return c;
  }

  function judgmentCard(names) {
    return (j) => {
      const c = el("div", "card"); c.dataset.id = j.dataset + "/" + j.id;
      const meta = el("div", "meta");
      meta.appendChild(el("span", null, j.dataset + " · " + j.id + (j.category ? " · " + j.category : "")));
      meta.appendChild(el("span", "tag " + j.outcome, j.outcome === "win" ? names.a + " wins" : j.outcome === "lose" ? names.b + " wins" : j.outcome));
      if (j.error) meta.appendChild(el("span", "muted", j.error));
      c.appendChild(meta);
      c.appendChild(el("div", "label", "question"));
      c.appendChild(el("div", "text", j.instruction));
      const pair = el("div", "pair");
      for (const [name, answer] of [[names.a, j.answer_a], [names.b, j.answer_b]]) {
        const d = el("div"); d.appendChild(el("div", "label", name));
        d.appendChild(el("div", "text", answer === null || answer === undefined ? "(answer file not found)" : answer));
        pair.appendChild(d);
      }
      c.appendChild(pair);
      for (const o of j.orders) {
        const first = o.a_first ? names.a : names.b;
        c.appendChild(el("div", "label", "review, " + first + " shown first" + (o.scores ? " · scores " + o.scores.join(" / ") : "") + (o.error ? " · " + o.error : "")));
        c.appendChild(el("div", "text", o.review || ""));
      }
      return c;
    };
  }

  decode().then((data) => {
    if (document.getElementById("s-list")) {
      const gates = (s) => Object.values(s.variants).map((e) => e.gate).filter(Boolean);
      const outcome = (s) => s.choice ? [s.choice.outcome, s.choice.selected ? "selected" : "not selected"] : [];
      browser("s", data.samples, [["s-status", "any status", (s) => [s.status]], ["s-gate", "any gate", gates],
        ["s-outcome", "any outcome", outcome]],
        (s) => Object.values(s.variants).map((e) => [e.instruction, e.input, e.output, e.reason].join("\n")).join("\n") + "\n" + s.id,
        sampleCard);
    }
    if (document.getElementById("j-list")) {
      browser("j", data.judgments, [["j-dataset", "any test set", (j) => [j.dataset]], ["j-outcome", "any outcome", (j) => [j.outcome]]],
        (j) => [j.instruction, j.answer_a, j.answer_b, j.category].concat(j.orders.map((o) => o.review)).join("\n"),
        judgmentCard(data.names));
    }
    document.body.dataset.ready = "1";
  }).catch((err) => {
    for (const id of ["s-list", "j-list"]) { const l = document.getElementById(id); if (l) l.replaceChildren(el("p", "note", "could not read the records: " + err)); }
    throw err;
  });
})();
