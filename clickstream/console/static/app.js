// The live events page of `clickstream local`. Plain JS, no build step, no dependencies.
// Everything shown comes from the page's own origin (/_clickstream/api/...). Event data is
// client-controlled, so it is only ever put into the page as text (textContent), never as HTML.
"use strict";

const API = "api/";
const POLL_MS = 400;          // live events: a short poll, so new events show within a second
const BUSY_POLL_MS = 1000;    // when more arrive than anyone can read: less browser work,
const BUSY_PAGE = 25;         // fewer rows per poll (the newest; the rest are counted as skipped)
const PAGE = 100;             // records asked for per poll (the newest)
const SIDE_POLL_MS = 3000;    // refused requests, and status while its tab is open
const KEEP = 150;             // events kept in the list

const state = {
  after: 0,             // newest sequence number seen
  events: [],           // newest first
  paused: false,
  busy: false,          // more events arrive than can be shown: poll less, ask for fewer
  selected: null,       // seq of the record shown in the detail pane
  sources: new Set(),
  tab: "events",
  refusedSeen: 0,
  refusedKey: "",       // what the refused table shows (length and newest), to skip redrawing it
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "title") node.title = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

async function getJSON(path) {
  const response = await fetch(API + path, { credentials: "same-origin", cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.message || response.statusText);
  return body;
}

function fmtTime(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString(undefined, { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function fmtAgo(ms) {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  return new Date(ms).toLocaleString();
}

// -- live events ---------------------------------------------------------------------------
// The server sends each record's stored bytes as text; summarizing here keeps that work out of
// the collector's process.
function summarize(item) {
  let record = null;
  try { record = JSON.parse(item.data); } catch (_) { /* not JSON: shown raw */ }
  const ev = { seq: item.seq, arrivalMs: item.arrivalMs, partitionKey: item.partitionKey, raw: item.data, record,
    source: null, type: null, name: null, userId: null, anonymousId: null };
  if (!record || typeof record !== "object") return ev;
  const msg = record.message && typeof record.message === "object" ? record.message : {};
  ev.source = record.source ?? null;
  ev.type = msg.type || record.routeType || null;
  ev.name = ev.type === "track" ? msg.event : ev.type === "group" ? msg.groupId
    : ev.type === "alias" ? msg.previousId : msg.name;
  ev.userId = msg.userId ?? null;
  ev.anonymousId = msg.anonymousId ?? null;
  return ev;
}

function filters() {
  return { source: $("f-source").value, type: $("f-type").value, q: $("f-text").value.trim() };
}

function matches(ev, f) {
  if (f.source && ev.source !== f.source) return false;
  if (f.type && ev.type !== f.type) return false;
  if (f.q) {
    const text = ev.raw.toLowerCase();
    if (!text.includes(f.q.toLowerCase())) return false;
  }
  return true;
}

function eventRow(ev, fresh) {
  const row = el("tr", { "data-seq": ev.seq, class: fresh ? "new" : "" },
    el("td", { class: "mono", title: `arrived ${new Date(ev.arrivalMs).toISOString()}` }, fmtTime(ev.arrivalMs)),
    el("td", {}, ev.source ?? "—"),
    el("td", {}, el("span", { class: "type" }, ev.type ?? "?")),
    el("td", { title: ev.name ?? "" }, ev.name ?? ""),
    el("td", { class: "mono", title: ev.userId ?? "" }, ev.userId ?? ""),
    el("td", { class: "mono", title: ev.anonymousId ?? "" }, ev.anonymousId ?? ""));
  if (ev.seq === state.selected) row.classList.add("selected");
  return row;
}

function setEmptyNote(shown) {
  const note = $("events-empty");
  note.hidden = shown > 0;
  note.textContent = state.events.length && !shown ? "No event matches the filters."
    : "Waiting for events… send one with the command the server printed at start.";
}

// The whole list, after a filter change.
function renderEvents() {
  const f = filters();
  const rows = state.events.filter((ev) => matches(ev, f));
  $("events").tBodies[0].replaceChildren(...rows.map((ev) => eventRow(ev, false)));
  setEmptyNote(rows.length);
}

// New events only: prepended, the oldest rows dropped (cheap however fast events arrive).
function prependEvents(fresh) {
  const f = filters();
  const body = $("events").tBodies[0];
  const rows = fresh.filter((ev) => matches(ev, f));
  const flash = rows.length <= 20;  // highlight arrivals only when they can be read
  body.prepend(...rows.map((ev) => eventRow(ev, flash)));
  while (body.rows.length > KEEP) body.deleteRow(-1);
  setEmptyNote(body.rows.length);
}

function addSources(events) {
  let added = false;
  for (const ev of events) {
    if (ev.source && !state.sources.has(ev.source)) {
      state.sources.add(ev.source);
      added = true;
    }
  }
  if (!added) return;
  const select = $("f-source");
  const current = select.value;
  select.replaceChildren(el("option", { value: "" }, "all"),
    ...[...state.sources].sort().map((s) => el("option", { value: s }, s)));
  select.value = current;
}

async function pollEvents() {
  let wait = POLL_MS;
  if (!state.paused) {
    try {
      const f = filters();
      const params = new URLSearchParams({ after: String(state.after), limit: String(state.busy ? BUSY_PAGE : PAGE) });
      for (const [k, v] of Object.entries(f)) if (v) params.set(k, v);
      const data = await getJSON("events?" + params);
      // Paused while this poll was in flight: drop its answer (state.after stays, so its events
      // arrive on resume) and leave the pill saying "paused".
      if (state.paused) {
        setTimeout(pollEvents, wait);
        return;
      }
      const fresh = data.events.map(summarize);
      if (fresh.length) {
        state.events = fresh.concat(state.events).slice(0, KEEP);
        addSources(fresh);
        prependEvents(fresh);
      }
      state.busy = data.skipped > 0 || data.events.length >= PAGE;
      if (state.busy) wait = BUSY_POLL_MS;
      state.after = Math.max(state.after, data.last);
      setText($("summary"), `${data.last.toLocaleString()} records in the stream`);
      setLive("live");
    } catch (err) {
      // a poll that fails after Pause leaves the pill saying "paused"; Resume polls again
      setLive(state.paused ? "paused" : "down", err.message);
    }
  }
  setTimeout(pollEvents, wait);
}

// DOM writes only when something changed: an unchanged poll then costs the browser no style or paint work.
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function setLive(kind, why) {
  const pill = $("live-state");
  if (pill.className !== "pill " + kind) pill.className = "pill " + kind;
  setText(pill, kind === "down" ? "disconnected" : kind);
  if (pill.title !== (why || "")) pill.title = why || "";
}

function showDetail(seq) {
  const ev = state.events.find((e) => e.seq === seq);
  if (!ev) return;
  state.selected = seq;
  for (const tr of $("events").tBodies[0].rows) tr.classList.toggle("selected", Number(tr.dataset.seq) === seq);
  $("detail").hidden = false;
  $("detail-title").textContent = `#${ev.seq} · ${ev.type ?? "record"} ${ev.name ?? ""}`;
  const stored = ev.record ?? ev.raw;
  $("detail-json").textContent = typeof stored === "string" ? stored : JSON.stringify(stored, null, 2);
}

// -- rejected ------------------------------------------------------------------------------
function resultTable(columns, rows, options = {}) {
  if (!rows.length) return el("p", { class: "empty" }, options.empty || "No rows.");
  const head = el("tr", {}, ...columns.map((c) => el("th", {}, c)));
  const body = rows.map((r) => el("tr", {}, ...r.map((v) => {
    const text = v === null ? "NULL" : typeof v === "object" ? JSON.stringify(v) : String(v);
    return el("td", { title: text, class: v === null ? "muted" : "" }, text);
  })));
  return el("table", { class: "grid" }, el("thead", {}, head), el("tbody", {}, ...body));
}

// The refused ring is cheap to read: polled all the time for the tab's badge. The warehouse's
// `rejected` table takes a query: read only while the tab is open.
async function pollRejected() {
  const open = state.tab === "rejected";
  try {
    const data = await getJSON(open ? "rejected" : "refused");
    setText($("ring-note"), `(newest ${data.ringSize} kept)`);
    const key = `${data.refused.length}:${data.refused.length ? data.refused[0].at_ms : 0}`;
    const body = $("refused").tBodies[0];
    if (key !== state.refusedKey) body.replaceChildren(...data.refused.map((r) => el("tr", {},
      el("td", { class: "mono", title: new Date(r.at_ms).toISOString() }, fmtTime(r.at_ms)),
      el("td", { class: `status-${String(r.status)[0]}` }, r.status),
      el("td", { class: "mono" }, r.code),
      el("td", { title: r.message }, r.message),
      el("td", {}, r.source ?? "unknown"),
      el("td", { class: "mono" }, `${r.method} ${r.path}`),
      el("td", { class: "mono", title: r.user_agent ?? "" }, r.ip))));
    state.refusedKey = key;
    $("refused-empty").hidden = data.refused.length > 0;
    const newest = data.refused.length ? data.refused[0].at_ms : 0;
    const badge = $("rejected-count");
    const unseen = data.refused.filter((r) => r.at_ms > state.refusedSeen).length;
    if (open) state.refusedSeen = newest;
    badge.hidden = open || unseen === 0;
    setText(badge, String(unseen));
    if (!data.warehouse) return;
    const wh = $("wh-rejected");
    if (data.warehouse.error) wh.replaceChildren(el("p", { class: "error" }, data.warehouse.error));
    else wh.replaceChildren(resultTable(data.warehouse.columns, data.warehouse.rows,
      { empty: "The warehouse has rejected nothing." }));
  } catch (err) {
    $("wh-rejected").replaceChildren(el("p", { class: "error" }, err.message));
  }
}

// -- query ---------------------------------------------------------------------------------
const EXAMPLES = [
  ["Latest tracks", "SELECT event, user_id, anonymous_id, timestamp FROM clickstream.tracks ORDER BY timestamp DESC LIMIT 20"],
  ["Events per type and source", "SELECT source, type, COUNT(*) AS events FROM clickstream.events GROUP BY 1, 2 ORDER BY 3 DESC"],
  ["Track events by name", "SELECT event, COUNT(*) AS n, COUNT(DISTINCT COALESCE(user_id, anonymous_id)) AS people FROM clickstream.tracks GROUP BY 1 ORDER BY 2 DESC"],
  ["One event's rows (like a Segment per-event table)", "SELECT timestamp, user_id, anonymous_id, properties FROM clickstream.tracks WHERE event = 'product_viewed' ORDER BY timestamp DESC LIMIT 20"],
  ["Pages viewed", "SELECT context_page_path AS path, COUNT(*) AS views FROM clickstream.pages GROUP BY 1 ORDER BY 2 DESC LIMIT 20"],
  ["Sessions by day (30 min inactivity)", `WITH t AS (
  SELECT COALESCE(user_id, anonymous_id) AS who, timestamp,
         CASE WHEN timestamp - LAG(timestamp) OVER (PARTITION BY COALESCE(user_id, anonymous_id) ORDER BY timestamp)
                   <= INTERVAL 30 MINUTE THEN 0 ELSE 1 END AS new_session
  FROM clickstream.events)
SELECT CAST(timestamp AS DATE) AS day, SUM(new_session) AS sessions, COUNT(DISTINCT who) AS people
FROM t GROUP BY 1 ORDER BY 1 DESC`],
  ["Users and their traits", "SELECT * FROM clickstream.users LIMIT 20"],
  ["Rejected records", "SELECT reason, source, received_at, raw_record FROM clickstream.rejected ORDER BY loaded_at DESC LIMIT 20"],
];

async function runQuery() {
  const sql = $("sql").value.trim();
  if (!sql) return;
  const out = $("query-result");
  $("query-state").textContent = "running…";
  $("run").disabled = true;
  const started = performance.now();
  try {
    const response = await fetch(API + "sql", {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ sql }),
    });
    const data = await response.json();
    if (!response.ok) {
      out.replaceChildren(el("p", { class: "error" }, data.message || response.statusText));
      $("query-state").textContent = "";
      return;
    }
    out.replaceChildren(resultTable(data.columns, data.rows));
    const ms = performance.now() - started;
    $("query-state").textContent = `${data.rows.length} row${data.rows.length === 1 ? "" : "s"} in ${ms.toFixed(0)} ms`;
  } catch (err) {
    out.replaceChildren(el("p", { class: "error" }, err.message));
    $("query-state").textContent = "";
  } finally {
    $("run").disabled = false;
  }
}

// -- status --------------------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text != null) node.textContent = String(text);
  return node;
}

function drawChart(points) {
  const W = 900, H = 180, left = 44, bottom = 20, top = 8;
  const max = Math.max(1, ...points.map((p) => p.events));
  const step = (W - left) / points.length;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
    "aria-label": "events per minute over the last hour", id: "chart-svg" });
  for (const frac of [0, 0.5, 1]) {
    const y = top + (H - bottom - top) * (1 - frac);
    root.append(svg("line", { x1: left, x2: W, y1: y, y2: y, class: "axis" }));
    root.append(svg("text", { x: left - 4, y: y + 3, "text-anchor": "end" }, Math.round(max * frac)));
  }
  points.forEach((p, i) => {
    const h = (H - bottom - top) * (p.events / max);
    const bar = svg("rect", { x: left + i * step + 1, y: H - bottom - h, width: Math.max(1, step - 2), height: h,
      class: "bar", "data-events": p.events });
    bar.append(svg("title", {}, `${new Date(p.minute).toLocaleTimeString(undefined, { hour12: false })}: ${p.events} events`));
    root.append(bar);
    if (i % 10 === 0 && i < points.length - 5 || i === points.length - 1) {
      const last = i === points.length - 1;
      root.append(svg("text", { x: last ? W : left + i * step + step / 2, y: H - 5, "text-anchor": last ? "end" : "middle" },
        new Date(p.minute).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", hour12: false })));
    }
  });
  $("chart").replaceChildren(root);
}

function fillDl(id, entries) {
  $(id).replaceChildren(...entries.flatMap(([k, v, cls]) => [el("dt", {}, k), el("dd", { class: cls || "" }, v)]));
}

function lagText(c) {
  if (!c.backlog) return "caught up";
  return `${c.backlog.toLocaleString()} records, oldest ${c.lagSeconds} s`;
}

async function pollStatus() {
  try {
    const s = await getJSON("status");
    drawChart(s.perMinute);
    const lastMin = s.perMinute[s.perMinute.length - 1].events;
    const hour = s.perMinute.reduce((a, p) => a + p.events, 0);
    $("chart-note").textContent = `${hour.toLocaleString()} in the last hour, ${lastMin.toLocaleString()} this minute`;
    fillDl("st-stream", [["records", s.stream.records.toLocaleString()], ["last sequence", s.stream.lastSeq],
      ["loader backlog", lagText(s.warehouse)], ["archiver backlog", lagText(s.archive)]]);
    fillDl("st-archive", [["objects", s.archive.objects.toLocaleString()],
      ["newest object", s.archive.newestObject ? fmtAgo(Date.parse(s.archive.newestObject)) : "none yet"],
      ["lag", lagText(s.archive)]]);
    fillDl("st-warehouse", [["lag", lagText(s.warehouse)],
      ["last merge", s.warehouse.lastMerge ? fmtAgo(Date.parse(s.warehouse.lastMerge + "Z")) : "none yet"],
      ["rejected rows", s.warehouse.rejected ?? "?"],
      ...(s.warehouse.error ? [["error", s.warehouse.error, "bad"]] : [])]);
    const procs = Object.entries(s.processes);
    fillDl("st-processes", procs.length ? procs.map(([name, p]) =>
      [name, p.alive ? `running (pid ${p.pid})` : `stopped (exit ${p.exitcode})`, p.alive ? "ok" : "bad"])
      : [["collector", "running", "ok"]]);
    $("totals").replaceChildren(resultTable(["source", "type", "events"],
      s.totals.map((t) => [t.source, t.type, t.events]), { empty: "No events in the warehouse yet." }));
  } catch (err) {
    $("chart-note").textContent = "status unavailable: " + err.message;
  }
}

// -- wiring --------------------------------------------------------------------------------
function selectTab(name) {
  state.tab = name;
  for (const b of document.querySelectorAll("nav [role=tab]")) b.setAttribute("aria-selected", String(b.dataset.tab === name));
  for (const s of document.querySelectorAll("section.tab")) s.hidden = s.id !== "tab-" + name;
  if (name === "rejected") { $("rejected-count").hidden = true; pollRejected(); }
  if (name === "status") pollStatus();
  history.replaceState(null, "", "#" + name);
}

function loop(fn, ms) {
  const tick = async () => { await fn(); setTimeout(tick, ms); };
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("nav [role=tab]")) b.addEventListener("click", () => selectTab(b.dataset.tab));
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  for (const id of ["f-source", "f-type", "f-text"]) $(id).addEventListener("input", renderEvents);
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").setAttribute("aria-pressed", String(state.paused));
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    setLive(state.paused ? "paused" : "live");
  });
  $("events").tBodies[0].addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (tr) showDetail(Number(tr.dataset.seq));
  });
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; state.selected = null; });
  const examples = $("examples");
  EXAMPLES.forEach(([label], i) => examples.append(el("option", { value: String(i) }, label)));
  examples.addEventListener("change", () => {
    if (examples.value !== "") $("sql").value = EXAMPLES[Number(examples.value)][1];
  });
  $("run").addEventListener("click", runQuery);
  $("sql").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runQuery(); });
  const initial = location.hash.slice(1);
  if (["events", "rejected", "query", "status"].includes(initial)) selectTab(initial);
  pollEvents();
  loop(pollRejected, SIDE_POLL_MS);
  loop(() => (state.tab === "status" ? pollStatus() : null), SIDE_POLL_MS);  // its queries only when seen
});
