// saeatlas explorer: a small vanilla front end over the JSON API.  Every view's state lives in the URL
// fragment (#view=...&c=...), so each view has a permalink and back / forward work.  The DOM is built with
// createElement and textContent only: token strings are user data and never parsed as markup.
"use strict";

const main = document.getElementById("main");
let study = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") node.textContent = String(v);
    else if (k === "cls") node.className = v;
    else node.setAttribute(k, String(v));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(x, digits = 3) {
  return x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);
}

function state() {
  return new URLSearchParams(location.hash.replace(/^#/, ""));
}

function link(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) p.set(k, v);
  return "#" + p.toString();
}

async function api(path, params) {
  const response = await fetch(path + "?" + new URLSearchParams(params).toString());
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

const KIND_NAMES = { random_init: "random-init SAE (control)", neurons: "neurons (control)", shifted: "shifted by one token (control)", skyline: "A SAE of another seed (skyline)" };

function comparisonName(c) {
  const kind = c.kind === "sae" ? "" : " · " + (KIND_NAMES[c.kind] || c.kind);
  return `${c.hook_a} × ${c.hook_b}${kind}`;
}

function showError(error) {
  main.replaceChildren(el("p", { cls: "error", role: "alert", text: String(error.message || error) }));
}

// ---------------------------------------------------------------- tokens and contexts
function visible(token) {
  return token.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/\r/g, "␍");
}

function contextItem(context) {
  const li = el("li", { cls: "context" }, el("span", { cls: "act", text: fmt(context.activation, 2) }));
  const acts = context.acts || [];
  const peak = Math.max(context.activation || 0, ...acts.map((a) => a || 0)) || 1;
  context.tokens.forEach((token, i) => {
    const span = el(i === context.focus ? "mark" : "span", { cls: "tok", text: visible(token) });
    const a = acts[i] || 0;
    if (a > 0 && i !== context.focus) span.style.backgroundColor = `rgba(255, 140, 0, ${(0.12 + 0.6 * a / peak).toFixed(3)})`;
    if (a > 0) span.title = "activation " + fmt(a, 3);
    li.append(span);
  });
  return li;
}

function contextList(contexts, empty) {
  if (!contexts.length) return el("p", { cls: "note", text: empty || "no activating context" });
  return el("ol", { cls: "contexts" }, ...contexts.map(contextItem));
}

function histogram(h) {
  const peak = Math.max(1, ...h.counts);
  const first = h.signed ? fmt(h.edges[0], 2) : "0";
  const bars = h.counts.map((n, i) => {
    const bar = el("span", { title: `${fmt(h.edges[i], 2)}–${fmt(h.edges[i + 1], 2)}: ${n}` });
    bar.style.height = `${(100 * n) / peak}%`;
    return bar;
  });
  return el("div", { cls: "histogram" }, el("div", { cls: "hist" }, ...bars),
    el("div", { cls: "hist-axis" }, el("span", { text: first }), el("span", { text: fmt(h.edges[h.edges.length - 1], 2) })));
}

function roleTags(roles) {
  return (roles || []).map((r) => el("span", { cls: "tag role", text: `${r.role} ${r.letter}` }));
}

// A latent's name: raw neurons (the neurons control) are "neuron i (control)", an SAE's latents "latent i".
function unitName(d) {
  return d.unit === "neuron" ? `neuron ${d.latent} (control)` : `latent ${d.latent}`;
}

function dashboard(side, label, hook, d, cid, roles) {
  const neuron = d.unit === "neuron";
  const box = el("section", { cls: `dashboard side-${side}`, "data-side": side, "data-kind": d.kind || "sae" },
    el("h3", { text: `${label} ${hook} · ${unitName(d)}` }, ...roleTags(roles)),
    el("div", { cls: "stats" },
      el("span", { text: `${neuron ? "positive" : "fires"} on ${d.n_fire} of ${d.n_usable} tokens` }),
      el("span", { text: `frequency${neuron ? " (value > 0)" : ""} ${(100 * d.frequency).toFixed(3)}%` }),
      neuron ? el("span", { text: `min ${fmt(d.min, 3)}` }) : null,
      el("span", { text: `max ${fmt(d.max, 3)}` })),
    el("h4", { text: neuron ? "value histogram (every token, signed)" : "activation histogram (nonzero)" }), histogram(d.histogram),
    el("h4", { text: "top activating contexts" }), el("div", { cls: "top" }, contextList(d.top)));
  for (const interval of d.intervals) {
    box.append(el("h4", { text: `interval ${fmt(interval.lo, 2)}–${fmt(interval.hi, 2)} (${interval.n} tokens)` }),
      el("div", { cls: "interval" }, contextList(interval.contexts, "none in this interval")));
  }
  const logits = el("div", { cls: "logits" }, el("p", { cls: "note", text: "loading the unembedding…" }));
  box.append(el("h4", { text: neuron ? "unit direction e_i through the unembedding (column i of W_U)" : "decoder direction through the unembedding" }), logits);
  api("/api/logits", { c: cid, side, i: d.latent }).then((r) => {
    const list = (items, cls) => el("ul", { cls }, ...items.map((t) => el("li", {}, el("span", { cls: "tok", text: visible(t.token) }), " " + fmt(t.value, 3))));
    logits.replaceChildren(el("div", {}, el("strong", { text: "promotes" }), list(r.positive, "pos")),
      el("div", {}, el("strong", { text: "suppresses" }), list(r.negative, "neg")));
  }).catch((e) => logits.replaceChildren(el("p", { cls: "note", text: "logit effects unavailable: " + e.message })));
  return box;
}

// ---------------------------------------------------------------- views
function refilter(control, name) {
  control.addEventListener("change", () => {
    const p = state();
    p.set(name, control.value);
    p.set("offset", "0");
    location.hash = p.toString();
  });
}

function bound(name, label, value) {
  const box = el("input", { name, id: `f-${name}`, type: "number", min: "-1", max: "1", step: "0.05", placeholder: "any" });
  box.value = value;
  refilter(box, name);
  return el("label", {}, label, box);
}

function select(name, label, options, value) {
  const s = el("select", { name, id: `f-${name}` }, ...options.map(([v, t]) => el("option", { value: v, text: t })));
  s.value = value;
  refilter(s, name);
  return el("label", {}, label, s);
}

async function pairsView(p) {
  const c = p.get("c") || "all", sort = p.get("sort") || "-corr";
  const params = { c, sort, concept: p.get("concept") || "", role: p.get("role") || "", letter: p.get("letter") || "", min_corr: p.get("min_corr") || "", max_corr: p.get("max_corr") || "", offset: p.get("offset") || "0", limit: "50" };
  const data = await api("/api/pairs", params);
  const comparisons = [["all", "every layer pair (SAEs)"], ...study.comparisons.map((x) => [String(x.id), comparisonName(x)])];
  const controls = el("div", { cls: "controls" },
    select("c", "layer pair", comparisons, c),
    select("sort", "sort", [["-corr", "correlation ↓"], ["corr", "correlation ↑"], ["a", "A latent"], ["b", "B latent"]], sort),
    select("concept", "concept", [["", "any"], ...study.concepts.map((x) => [x, x])], params.concept),
    select("role", "absorption role", [["", "any or none"], ["any", "any role"], ...study.roles.map((x) => [x, x])], params.role),
    select("letter", "letter", [["", "any"], ...study.letters.map((x) => [x, x])], params.letter),
    bound("min_corr", "corr ≥", params.min_corr), bound("max_corr", "corr ≤", params.max_corr));
  const byId = Object.fromEntries(study.comparisons.map((x) => [x.id, x]));
  const rows = data.pairs.map((q) => {
    const comp = byId[q.c];
    const target = comp.browsable ? link({ view: "pair", c: q.c, a: q.idx_a, b: q.idx_b }) : null;
    const cell = (text) => (target ? el("a", { href: target, text }) : text);
    return el("tr", { cls: "pair-row", "data-c": q.c, "data-a": q.idx_a, "data-b": q.idx_b, "data-corr": q.corr },
      el("td", { cls: "num", text: q.rank }), el("td", { text: comparisonName(comp) }),
      el("td", { cls: "num" }, cell(String(q.idx_a))), el("td", { cls: "num" }, cell(String(q.idx_b))),
      el("td", { cls: "num corr", text: fmt(q.corr) }),
      el("td", {}, ...q.concepts.map((x) => el("span", { cls: "tag", text: x }))),
      el("td", {}, ...roleTags(q.roles_a.map((r) => ({ ...r, role: "A " + r.role }))), ...roleTags(q.roles_b.map((r) => ({ ...r, role: "B " + r.role })))));
  });
  const [la, lb] = study.labels;
  const table = el("table", { id: "pairs-table" },
    el("thead", {}, el("tr", {}, ...["rank", "layer pair", `${la} latent`, `${lb} latent`, "corr", "concepts", "absorption"].map((h) => el("th", { text: h })))),
    el("tbody", {}, ...rows));
  const offset = Number(params.offset);
  const page = (o) => { const q = state(); q.set("view", "pairs"); q.set("offset", String(o)); return "#" + q.toString(); };
  const pager = el("div", { cls: "pager" },
    el("span", { id: "pair-count", text: `${data.total} pairs; showing ${data.total ? offset + 1 : 0}–${offset + data.pairs.length}` }),
    offset > 0 ? el("a", { href: page(Math.max(0, offset - 50)), text: "← previous" }) : null,
    offset + 50 < data.total ? el("a", { href: page(offset + 50), text: "next →" }) : null);
  main.replaceChildren(el("h2", { text: "Matched pairs" }), controls, pager, table);
}

async function pairView(p) {
  const cid = p.get("c"), a = p.get("a"), b = p.get("b");
  const d = await api("/api/pair", { c: cid, a, b });
  const comp = study.comparisons[Number(cid)];
  const short = (x) => (x.unit === "neuron" ? `neuron ${x.latent}` : `#${x.latent}`);
  const head = el("div", { cls: "pair-head" },
    el("h2", { text: `${d.labels[0]} ${short(d.a)} ⟷ ${d.labels[1]} ${short(d.b)}` }),
    comp.kind === "sae" ? null : el("span", { cls: "tag control", id: "pair-control", text: KIND_NAMES[comp.kind] || comp.kind }),
    el("span", { id: "pair-corr", text: `r = ${fmt(d.corr)}` }),
    el("span", { text: `rank ${d.rank} of ${comp.n_pairs} in ${comparisonName(comp)}` }),
    ...d.concepts.map((x) => el("span", { cls: "tag", text: x })),
    el("a", { href: link({ view: "pairs", c: cid }), text: "all pairs of this layer pair" }));
  const both = d.both;
  const cofire = el("section", { cls: "cofire" },
    el("h3", { text: "contexts where both fire" }),
    el("p", { cls: "note", text: `both fire on ${both.n_both} of ${both.n_aligned} aligned positions (A alone ${both.n_a}, B ${both.n_b})` +
      (comp.kind === "shifted" ? "; B's token is the one after A's (the shifted alignment)" : "") +
      (comp.kind === "neurons" ? "; a neuron fires where its value is positive" : "") }),
    both.contexts.length
      ? el("ol", { cls: "contexts" }, ...both.contexts.map((x) => el("li", {}, el("ol", { cls: "contexts" }, contextItem(x.a)), el("ol", { cls: "contexts" }, contextItem(x.b)))))
      : el("p", { cls: "note", text: "no aligned position where both fire" }));
  main.replaceChildren(head, el("div", { cls: "sides" },
    dashboard("a", d.labels[0], d.hooks[0], d.a, cid, d.roles_a),
    dashboard("b", d.labels[1], d.hooks[1], d.b, cid, d.roles_b)), cofire);
}

async function latentView(p) {
  const cid = p.get("c"), side = p.get("side") || "a";
  const d = await api("/api/latent", { c: cid, side, i: p.get("i") });
  const other = side === "a" ? "b" : "a";
  const partners = el("ul", { cls: "partners" }, ...d.partners.map((q) => el("li", {},
    el("a", { href: link({ view: "pair", c: cid, [side]: d.latent.latent, [other]: q.idx }), text: `partner ${q.idx}` }), ` r = ${fmt(q.corr)} (rank ${q.rank})`)));
  main.replaceChildren(el("h2", { text: `${d.label} ${d.hook} · ${unitName(d.latent)}` }),
    d.partners.length ? partners : el("p", { cls: "note", text: "no matched partner in this comparison" }),
    el("div", { cls: "sides" }, dashboard(side, d.label, d.hook, d.latent, cid, [])));
}

async function searchView(p) {
  const q = p.get("q") || "";
  const cid = p.get("c") || String((study.comparisons.find((x) => x.browsable) || { id: 0 }).id);
  document.getElementById("search-box").value = q;
  const d = await api("/api/search", { c: cid, q });
  const browsable = study.comparisons.filter((x) => x.browsable).map((x) => [String(x.id), comparisonName(x)]);
  const column = (side, label, n, rows) => el("section", { cls: `search-side side-${side}`, "data-side": side },
    el("h3", { text: `${label}: ${n} tokens “${q}”` }),
    rows.length ? el("table", {}, el("thead", {}, el("tr", {}, ...["latent", "mean", "max", "fires", "partners"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...rows.map((r) => el("tr", { cls: "search-row", "data-latent": r.latent },
        el("td", {}, el("a", { href: link({ view: "latent", c: cid, side, i: r.latent }), text: String(r.latent) })),
        el("td", { cls: "num", text: fmt(r.mean) }), el("td", { cls: "num", text: fmt(r.max) }), el("td", { cls: "num", text: r.n_fire }),
        el("td", {}, ...r.partners.slice(0, 5).map((x) => el("a", { cls: "tag", href: link({ view: "pair", c: cid, [side]: r.latent, [side === "a" ? "b" : "a"]: x.idx }), text: `${x.idx} (${fmt(x.corr, 2)})` }))))))) 
      : el("p", { cls: "note", text: "no latent fires on this token" }));
  const comp = study.comparisons[Number(cid)];
  const labels = comp.side_labels.map((x) => (comp.kind === "neurons" ? `${x} neurons (control)` : x));
  main.replaceChildren(el("h2", { text: `Search: “${q}”` }),
    el("div", { cls: "controls" }, select("c", "layer pair", browsable, cid)),
    el("div", { cls: "search-results" }, column("a", labels[0], d.n_a, d.a), column("b", labels[1], d.n_b, d.b)));
}

const VIEWS = { pairs: pairsView, pair: pairView, latent: latentView, search: searchView };

async function render() {
  const p = state();
  const view = VIEWS[p.get("view")] || pairsView;
  try {
    await view(p);
    document.body.dataset.view = p.get("view") || "pairs";
    document.body.dataset.ready = location.hash;
  } catch (e) {
    showError(e);
    document.body.dataset.ready = location.hash;
  }
}

async function start() {
  try {
    study = await api("/api/study", {});
  } catch (e) {
    showError(e);
    return;
  }
  document.getElementById("study-name").textContent = study.name;
  document.title = `saeatlas explorer: ${study.name}`;
  document.getElementById("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = document.getElementById("search-box").value.trim();
    if (q) location.hash = link({ view: "search", c: state().get("view") === "search" ? state().get("c") : null, q }).slice(1);
  });
  window.addEventListener("hashchange", render);
  render();
}

start();
