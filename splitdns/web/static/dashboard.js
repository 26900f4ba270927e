// splitdns dashboard: reads /api/* (JSON) and /api/stream (server-sent events). Everything
// from the server is put in the page as text (textContent), never as markup.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_ROWS = 200;
const COLORS = { cached: "#8c959f", forwarded: "#0969da", rewritten: "#8250df", refused: "#bc4c00", servfail: "#cf222e", other: "#9a6700" };
const LINE_COLORS = ["#0969da", "#8250df", "#1a7f37", "#bc4c00", "#cf222e", "#9a6700"];
let paused = false;
let stream = null;
let plots = {};
let loggedIn = true;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function when(unix) {
  if (!unix) return "never";
  return new Date(unix * 1000).toLocaleString();
}

function ago(unix) {
  const s = Math.max(0, Date.now() / 1000 - unix);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 129600) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}

function problem(text) {
  const box = $("problem");
  box.hidden = !text;
  box.textContent = text || "";
}

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) {
    window.location.assign("/login");
    throw new Error("logged out");
  }
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function fill(tbody, rows, empty, columns) {
  tbody.replaceChildren();
  if (!rows.length) {
    const tr = el("tr");
    const td = el("td", empty, "hint");
    td.colSpan = columns;
    tr.append(td);
    tbody.append(tr);
    return;
  }
  for (const row of rows) tbody.append(row);
}

// ---------------------------------------------------------------- health

async function refreshStatus() {
  const s = await getJSON("/api/status");
  const q = s.queries || {};
  const total = Object.values(q).reduce((a, b) => a + b, 0);
  const down = s.upstreams.filter((u) => !u.up).length;
  $("summary").textContent = `${s.version} · ${s.build} · ${total} queries answered` +
    (s.cache.hit_ratio !== null ? ` · ${(s.cache.hit_ratio * 100).toFixed(1)}% from cache` : "") +
    (down ? ` · ${down} upstream${down > 1 ? "s" : ""} down` : "");
  $("logout").hidden = !s.login;
  $("since").textContent = `${when(s.serving_since)} (${ago(s.serving_since)})`;
  $("config-file").textContent = s.config_file;
  const reload = $("reload");
  reload.replaceChildren();
  if (!s.reload) {
    reload.textContent = "none since start";
  } else if (s.reload.ok) {
    reload.append(el("span", "applied", "badge ok"), ` ${ago(s.reload.at)} (${s.reload.why})`);
  } else {
    reload.append(el("span", "refused", "badge bad"), ` ${ago(s.reload.at)} (${s.reload.why}): still serving the previous mapping`);
    reload.append(el("span", s.reload.error, "error-line"));
  }
  const listeners = $("listeners");
  listeners.replaceChildren();
  for (const l of s.listeners) {
    const li = el("li");
    li.append(el("strong", l.kind + " "), el("span", l.address, "mono"));
    if (l.pin_sha256) li.append(el("div", "pin-sha256 " + l.pin_sha256, "mono hint pin"));
    listeners.append(li);
  }
  const rows = s.upstreams.map((u) => {
    const tr = el("tr");
    tr.dataset.upstream = u.name;
    const state = el("td");
    state.append(el("span", u.up ? "up" : "down", "badge " + (u.up ? "up" : "down")));
    const failures = Object.entries(u.errors).map(([k, n]) => `${k} ${n}`).join(", ") || "none";
    tr.append(el("td", u.name, "mono"), state, el("td", ms(u.p50_ms)), el("td", ms(u.p99_ms)),
      el("td", u.answers), el("td", failures));
    return tr;
  });
  fill($("upstreams"), rows, "no upstreams configured: every query gets SERVFAIL", 6);
  const view = $("filter-view");
  if (view.options.length - 1 !== s.views.length) {
    const chosen = view.value;
    view.replaceChildren(el("option", "any"));
    view.options[0].value = "";
    for (const name of s.views) view.append(el("option", name));
    view.value = chosen;
  }
}

function ms(value) {
  return value === null || value === undefined ? "–" : value.toFixed(1) + " ms";
}

// ---------------------------------------------------------------- the last hour

function plot(id, series, data, scales) {
  const target = $(id);
  const width = Math.max(300, target.clientWidth || 360);
  const opts = { width, height: 200, series: [{}, ...series], axes: [{}, { size: 50 }], legend: { live: false } };
  if (scales) opts.scales = scales;
  if (plots[id] && plots[id].series.length === series.length + 1) {
    plots[id].setData(data);
    return;
  }
  if (plots[id]) plots[id].destroy();
  target.replaceChildren();
  plots[id] = new uPlot(opts, data, target);
}

async function refreshSeries() {
  const s = await getJSON("/api/series");
  $("hour-note").textContent = s.time.length
    ? `${s.time.length} samples of ${s.interval} s (kept for an hour, in memory)`
    : `The first sample comes ${s.interval} s after start.`;
  if (typeof uPlot === "undefined") return;
  const names = Object.keys(s.qps);
  plot("plot-qps", names.map((n) => ({ label: n, stroke: COLORS[n], width: 2 })), [s.time, ...names.map((n) => s.qps[n])]);
  plot("plot-hits", [{ label: "hit ratio", stroke: COLORS.forwarded, width: 2 }], [s.time, s.hit_ratio],
    { y: { range: [0, 1] } });
  const ups = Object.keys(s.latency_ms);
  plot("plot-latency", ups.map((n, i) => ({ label: n, stroke: LINE_COLORS[i % LINE_COLORS.length], width: 2, spanGaps: true })),
    [s.time, ...ups.map((n) => s.latency_ms[n])]);
}

// ---------------------------------------------------------------- rules

async function refreshRules() {
  const rules = await getJSON("/api/rules");
  const rows = rules.map((r) => {
    const tr = el("tr");
    tr.dataset.rule = `${r.view}/${r.index}`;
    const recent = el("td", r.recent.map((x) => x.name).join(", ") || "–", "mono");
    let pub = "–";
    if (r.dynamic) {
      pub = r.dynamic.current
        ? `${r.dynamic.current} (${r.dynamic.kind} ${r.dynamic.source}${r.dynamic.changed_at ? ", changed " + ago(r.dynamic.changed_at) : ""})`
        : `not known yet (${r.dynamic.kind} ${r.dynamic.source})`;
    }
    const count = el("td", r.rewrites, "count");
    tr.append(el("td", r.view), el("td", `${r.from} → ${r.to}`, "mono"), el("td", r.names.join(", ") || "all names"),
      count, recent, el("td", pub, "mono"));
    return tr;
  });
  fill($("rules"), rows, "no rewrite rules: add some to a view's rewrite: list", 6);
}

// ---------------------------------------------------------------- top clients

async function refreshClients() {
  const c = await getJSON("/api/clients");
  $("clients-note").textContent = c.hidden
    ? "Client addresses are hidden (query_log.hide_clients)."
    : c.watching_since
      ? `Counted while a dashboard is open (since ${when(c.watching_since)}).`
      : "Counted while a dashboard is open.";
  const rows = c.clients.map((x) => {
    const tr = el("tr");
    tr.append(el("td", x.client, "mono"), el("td", x.view || "(none)"), el("td", x.answers), el("td", ago(x.last_seen)));
    return tr;
  });
  fill($("clients"), rows, c.hidden ? "hidden" : "none yet", 4);
}

// ---------------------------------------------------------------- local names

async function refreshNames() {
  const n = await getJSON("/api/names");
  $("names-note").textContent = n.enabled
    ? `The LAN's own names, from DHCP (RFC 2136 updates and lease files)${n.total > n.names.length ? `: the first ${n.names.length} of ${n.total}` : ""}.`
    : "No dynamic: section in the mapping: names from DHCP are not kept here.";
  const rows = n.names.map((x) => {
    const tr = el("tr");
    tr.append(el("td", x.name, "mono"), el("td", x.records.join(", "), "mono"), el("td", x.source), el("td", ago(x.since)));
    return tr;
  });
  fill($("names"), rows, n.enabled ? "none yet" : "off", 4);
}

// ---------------------------------------------------------------- live queries

function streamURL() {
  const params = new URLSearchParams();
  for (const [key, value] of new FormData($("filters"))) {
    if (String(value).trim()) params.set(key, String(value).trim());
  }
  const text = params.toString();
  return "/api/stream" + (text ? "?" + text : "");
}

function connect() {
  if (stream) stream.close();
  const state = $("stream-state");
  state.textContent = "Connecting…";
  const url = streamURL();
  stream = new EventSource(url);
  stream.onopen = () => { state.textContent = paused ? "Paused" : "Live"; };
  stream.onmessage = (event) => {
    if (paused) return;
    const batch = JSON.parse(event.data);
    addRows(batch.rows);
    state.textContent = batch.skipped ? `Live (${batch.skipped} more not shown: too many to list; filter to narrow)` : "Live";
  };
  stream.onerror = async () => {
    state.textContent = "Disconnected: retrying…";
    const response = await fetch(url, { method: "GET", headers: { accept: "application/json" } }).catch(() => null);
    if (response && response.status >= 400 && response.status < 500) {
      const body = await response.json().catch(() => ({}));
      stream.close();
      state.textContent = "Stopped: " + (body.error || response.statusText);
      if (response.status === 401) window.location.assign("/login");
    } else if (response && response.body) {
      response.body.cancel();
    }
  };
}

function addRows(rows) {
  const tbody = $("stream-rows");
  for (const r of rows) {
    const tr = el("tr", null, "fresh");
    const rewrite = r.rewritten.map((c) => `${c.name} ${c.from} → ${c.to === null ? "removed" : c.to}`).join("; ");
    const button = el("button", "explain");
    button.type = "button";
    button.setAttribute("aria-label", `explain ${r.name} ${r.type} for ${r.client}`);
    button.addEventListener("click", () => explainRow(r));
    const action = el("td");
    action.append(button);
    tr.append(el("td", new Date(r.time * 1000).toLocaleTimeString()), el("td", r.client, "mono"), el("td", r.name, "mono"),
      el("td", r.type), el("td", r.view || "–"), el("td", r.outcome, r.outcome), el("td", r.ms), el("td", rewrite, "mono rewritten"), action);
    tbody.prepend(tr);
  }
  while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);
}

function explainRow(r) {
  $("explain-name").value = r.name;
  $("explain-client").value = r.client === "hidden" ? "" : r.client;
  const type = $("explain-type");
  if ([...type.options].some((o) => o.value === r.type)) type.value = r.type;
  $("explain-form").requestSubmit();
  $("explain").scrollIntoView({ behavior: "smooth" });
  $("explain-out").focus({ preventScroll: true });
}

// ---------------------------------------------------------------- explain

async function explain(event) {
  event.preventDefault();
  const out = $("explain-out");
  const params = new URLSearchParams();
  for (const [key, value] of new FormData(event.target)) {
    if (String(value).trim()) params.set(key, String(value).trim());
  }
  out.textContent = "Asking…";
  try {
    const answer = await getJSON("/api/explain?" + params.toString());
    out.textContent = answer.lines.join("\n");
  } catch (error) {
    out.textContent = "Refused: " + error.message;
  }
}

// ---------------------------------------------------------------- start

function every(seconds, task) {
  const run = async () => {
    try {
      await task();
      problem("");
    } catch (error) {
      if (error.message !== "logged out") problem("The server did not answer the dashboard: " + error.message);
    }
  };
  run();
  return setInterval(run, seconds * 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("explain-form").addEventListener("submit", explain);
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); connect(); });
  let typing = null;
  $("filters").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(connect, 400); });
  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").setAttribute("aria-pressed", String(paused));
    $("pause").textContent = paused ? "Resume" : "Pause";
    $("stream-state").textContent = paused ? "Paused" : "Live";
  });
  every(3, refreshStatus);
  every(10, refreshSeries);
  every(3, refreshRules);
  every(5, refreshClients);
  every(5, refreshNames);
  connect();
});
