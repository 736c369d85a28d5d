// SmartProxy dashboard: reads the admin API (/api) with the admin JWT the user pastes, and draws
// everything itself (DOM + inline SVG). No framework, no build step, nothing from another origin.
// Data never goes through innerHTML: every text is set with textContent.
"use strict";

(() => {
  const TOKEN_KEY = "smartproxy.adminToken";
  const REFRESH_MS = 10000;
  const COLORS = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2",
                  "#65a30d", "#dc2626", "#475569", "#a16207"];
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    token: null, timer: null, busy: false, tz: "UTC", skew: 0,
    colors: new Map(), metric: "cost", data: null, model: null, fetchedAt: 0,
    sort: { "by-key": { col: "cost30", dir: -1 }, "by-model": { col: "cost30", dir: -1 } },
  };
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ numbers for people
  function trim(text) { return text.includes(".") ? text.replace(/\.?0+$/, "") : text; }

  function compact(n) {
    const a = Math.abs(n);
    if (a < 1000) return String(Math.round(n));
    for (const [v, unit] of [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "k"]]) {
      if (a >= v) {
        const x = n / v;
        return trim(x.toFixed(Math.abs(x) >= 100 ? 0 : 1)) + "\u202f" + unit;
      }
    }
    return String(n);
  }
  const fmtTokens = (n) => compact(n) + (Math.abs(n) === 1 ? " token" : " tokens");

  function fmtUSD(x) {
    const a = Math.abs(x);
    if (a === 0) return "$0.00";
    if (a >= 1000) return "$" + Math.round(x).toLocaleString("en-US");
    if (a >= 0.01) return "$" + x.toFixed(2);
    const decimals = Math.min(12, 1 - Math.floor(Math.log10(a)));
    return "$" + trim(x.toFixed(decimals));  // two significant digits: $0.000017
  }

  function fmtPrice(perToken) {
    if (!perToken) return "free";
    return fmtUSD(perToken * 1e6) + " / 1M tokens";
  }

  function fmtIn(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return "in less than a minute";
    const m = Math.floor(s / 60) % 60, h = Math.floor(s / 3600) % 24, d = Math.floor(s / 86400);
    const parts = [];
    if (d) parts.push(d + " d");
    if (h) parts.push(h + " h");
    if (m && !d) parts.push(m + " min");
    return "in " + parts.join(" ");
  }

  function formatter(options) {
    try {
      return new Intl.DateTimeFormat("en-GB", { timeZone: state.tz, hourCycle: "h23", ...options });
    } catch (e) {  // an unknown zone name: show UTC rather than nothing
      return new Intl.DateTimeFormat("en-GB", { timeZone: "UTC", hourCycle: "h23", ...options });
    }
  }
  const fmtClock = (ms) => formatter({ hour: "2-digit", minute: "2-digit" }).format(ms);
  const fmtClockSec = (ms) =>
    formatter({ hour: "2-digit", minute: "2-digit", second: "2-digit" }).format(ms);
  const fmtWhen = (ms) =>
    formatter({ day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" }).format(ms);
  const serverNow = () => Date.now() + state.skew;

  // ------------------------------------------------------------------ DOM helpers
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, String(v));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function fill(id, ...children) { $(id).replaceChildren(...children.filter(Boolean)); }

  // ------------------------------------------------------------------ the admin API
  class AuthError extends Error {}

  async function api(path, body) {
    const headers = { Authorization: "Bearer " + state.token, Accept: "application/json" };
    const init = { method: "GET", headers, credentials: "omit", cache: "no-store",
                   referrerPolicy: "no-referrer" };
    if (body !== undefined) {
      init.method = "POST";
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    const message = data && data.error && data.error.message;
    if (resp.status === 401) throw new AuthError(message || "the token was refused");
    if (!resp.ok) throw new Error(`${path} answered HTTP ${resp.status}${message ? ": " + message : ""}`);
    return data;
  }

  function tokenClaims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part.padEnd(part.length + (4 - part.length % 4) % 4, "=")));
    } catch (e) {
      return null;
    }
  }

  function refusal(token, serverMessage) {
    const claims = tokenClaims(token);
    if (token.split(".").length !== 3 || !claims) {
      return "That is not an admin token: a JWT has three parts separated by dots " +
        "(make one with: smartproxy token --sub your-name).";
    }
    if (typeof claims.exp === "number" && claims.exp * 1000 <= Date.now()) {
      return `This token expired at ${fmtWhen(claims.exp * 1000)} ${state.tz}. ` +
        "Make a fresh one with: smartproxy token --sub your-name";
    }
    const valid = typeof claims.exp === "number" ? ` It is valid until ${fmtWhen(claims.exp * 1000)} ${state.tz}, so` : " It";
    return `The gateway refused this token (${serverMessage}).${valid} was most likely made ` +
      "with another gateway's JWT secret. Make one for this gateway: " +
      "smartproxy token --sub your-name --config <its config>";
  }

  // ------------------------------------------------------------------ sign in / out
  function showSignIn(message) {
    $("signin").hidden = false;
    $("main").hidden = true;
    $("signout").hidden = true;
    $("updated").textContent = "";
    $("clock").textContent = "";
    const err = $("signin-error");
    err.hidden = !message;
    err.textContent = message || "";
    for (const id of ["channels", "legend", "chart-hour", "chart-day", "by-key", "by-model",
                      "route", "reload", "failures", "route-model"]) {
      $(id).replaceChildren();  // signed out: no data stays on the page
    }
    state.data = null;
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    clearTimeout(state.timer);
    state.timer = null;
    showSignIn(message);
    if (message) $("token").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) {
      showSignIn("Paste an admin token first.");
      return;
    }
    if (token.split(".").length !== 3 || !tokenClaims(token)) {
      showSignIn(refusal(token, ""));  // not even shaped like a JWT: not sent anywhere
      return;
    }
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    const ok = await refresh();
    if (ok) $("channels-title").focus();
  }

  // ------------------------------------------------------------------ refresh
  async function refresh() {
    if (state.busy || !state.token) return false;
    state.busy = true;
    clearTimeout(state.timer);
    const token = state.token;
    try {
      const status = await api("/api/status");  // first alone: a refused token costs one call
      const [usage, channels, hour, day, byKey, byModel] = await Promise.all([
        api("/api/usage"),
        api("/api/channels"),
        api("/api/usage/timeseries?bucket=hour&group_by=channel"),
        api("/api/usage/timeseries?bucket=day&group_by=channel"),
        api("/api/usage/timeseries?bucket=day&group_by=api_key"),
        api("/api/usage/timeseries?bucket=day&group_by=model"),
      ]);
      if (state.token !== token) return false;  // signed out meanwhile
      state.tz = status.timezone || "UTC";
      state.skew = Date.parse(status.now) - Date.now();
      state.fetchedAt = Date.now();
      state.data = { status, usage, channels, hour, day, byKey, byModel };
      $("signin").hidden = true;
      $("main").hidden = false;
      $("signout").hidden = false;
      $("banner").hidden = true;
      render();
      try {
        await refreshRoute();
      } catch (e) {  // the rest of the page is fine: say so where the order would be
        if (e instanceof AuthError) throw e;
        fill("route", el("p", { class: "error", text: "Routing dry run failed: " + e.message }));
      }
      $("updated").textContent = "Updated " + fmtClockSec(serverNow()) + " · every 10 s";
      $("main").dataset.refreshes = String(Number($("main").dataset.refreshes || 0) + 1);
      return true;
    } catch (e) {
      if (e instanceof AuthError) {
        signOut(refusal(token, e.message));
      } else if (state.data) {
        showBanner("Could not refresh (showing the last data): " + e.message);
      } else {
        showSignIn("Could not reach the admin API: " + e.message);
      }
      return false;
    } finally {
      state.busy = false;
      if (state.token) state.timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  function showBanner(message) {
    $("banner").hidden = false;
    $("banner").textContent = message;
  }

  function render() {
    // A refresh redraws the tables: keep keyboard focus on the sort button it was on.
    const focused = document.activeElement;
    const keep = focused && focused.matches("button.sort")
      ? `button.sort[data-table="${focused.dataset.table}"][data-col="${focused.dataset.col}"]` : null;
    const { status } = state.data;
    $("clock").textContent = `Server time ${fmtClock(serverNow())} · ${state.tz}`;
    assignColors();
    renderChannels();
    renderCharts();
    renderTable("by-key", "API key", state.data.byKey);
    renderTable("by-model", "Model", state.data.byModel);
    renderModelPicker();
    renderReload(status.config);
    renderFailures(status.recent_failures, status.failures_total);
    if (keep) { const again = document.querySelector(keep); if (again) again.focus(); }
  }

  function assignColors() {
    const { status, hour, day } = state.data;
    const names = [...status.channels.map((c) => c.name), ...hour.keys, ...day.keys];
    for (const name of names) {
      if (!state.colors.has(name)) state.colors.set(name, COLORS[state.colors.size % COLORS.length]);
    }
  }

  // ------------------------------------------------------------------ channels
  function badge(text, tone) { return el("span", { class: "badge " + tone, text }); }

  function renderChannels() {
    const { status, usage } = state.data;
    const used = new Map(usage.channels.map((u) => [u.channel, u]));
    const cards = status.channels.map((ch) => channelCard(ch, used.get(ch.name) || {}));
    if (!cards.length) cards.push(el("p", { class: "empty", text: "No channels configured." }));
    fill("channels", ...cards);
  }

  function channelCard(ch, u) {
    const badges = el("p", { class: "badges" },
      ch.status === "active" ? badge("active", "ok") : badge(ch.status, "off"),
      ch.status === "active" ? breakerBadge(ch.breaker) : null,
      ch.cooling_down_until
        ? badge("cooling down until " + fmtClock(Date.parse(ch.cooling_down_until)), "warn") : null);
    const facts = el("dl", { class: "facts" },
      fact("Requests today", (u.day_requests || 0).toLocaleString("en-US"), "day_requests",
           u.day_requests || 0),
      fact("Cost today", fmtUSD(u.day_cost_usd || 0), "day_cost_usd", u.day_cost_usd || 0),
      fact("Cost this month", fmtUSD(ch.month_cost_usd || 0), "month_cost_usd", ch.month_cost_usd || 0),
      fact("Price now", fmtPrice(ch.effective_price) + (ch.discount_active ? " (discount)" : ""),
           "effective_price", ch.effective_price));
    const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = state.colors.get(ch.name);
    return el("article", { class: "card", "data-channel": ch.name },
      el("header", { class: "card-head" },
        swatch,
        el("h3", { text: ch.name }),
        el("span", { class: "type", text: ch.type })),
      badges,
      quotaBar(ch.name, "day", "Today", u.day_tokens || 0, ch.daily_limit, u.reserved_tokens || 0),
      quotaBar(ch.name, "hour", "This hour", u.hour_tokens || 0, ch.hour_limit, 0),
      facts,
      el("p", { class: "discount", text: discountText(ch) }));
  }

  function breakerBadge(breaker) {
    if (breaker === "open") return badge("breaker open", "bad");
    if (breaker === "half_open") return badge("breaker half-open", "warn");
    return badge("breaker closed", "ok");
  }

  function fact(label, text, field, value) {
    return el("div", { class: "fact" },
      el("dt", { text: label }),
      el("dd", { text, "data-field": field, "data-value": value }));
  }

  function quotaBar(channel, window, label, used, limit, reserved) {
    const head = el("div", { class: "quota-head" }, el("span", { text: label }));
    if (!limit) {
      head.append(el("span", { class: "quota-num", text: `${fmtTokens(used)} · no limit` }));
      return el("div", { class: "quota", "data-window": window }, head);
    }
    const pct = Math.min(100, (used / limit) * 100);
    head.append(el("span", { class: "quota-num", text: `${compact(used)} of ${fmtTokens(limit)}` }));
    const fillBar = el("div", { class: "fill " + (pct >= 90 ? "bad" : pct >= 70 ? "warn" : "ok") });
    fillBar.style.width = pct.toFixed(2) + "%";
    const bar = el("div", {
      class: "bar", role: "progressbar", "aria-label": `${channel}: tokens ${label.toLowerCase()}`,
      "aria-valuemin": 0, "aria-valuemax": limit, "aria-valuenow": used,
      "aria-valuetext": `${fmtTokens(used)} of ${fmtTokens(limit)} (${Math.round(pct)}%)`,
      "data-channel": channel, "data-window": window,
    }, fillBar);
    const note = reserved ? el("span", { class: "quota-note", text: `${compact(reserved)} reserved in flight` }) : null;
    return el("div", { class: "quota", "data-window": window }, head, bar, note);
  }

  function discountText(ch) {
    const d = ch.discount;
    if (!d) return "No discount window";
    const window = d.window.replace("-", "\u2013");
    const left = d.in_seconds === null ? null : d.in_seconds - (Date.now() - state.fetchedAt) / 1000;
    if (d.active) {
      return left === null ? `Discount all day (${fmtPrice(d.price)})`
        : `Discount ${window} in effect (${fmtPrice(d.price)}), ends ${fmtIn(left)}`;
    }
    return `Discount ${window} (${fmtPrice(d.price)}) starts ${fmtIn(left)}`;
  }

  // ------------------------------------------------------------------ charts (inline SVG)
  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function bucketLabel(iso, bucket) {
    const month = MONTHS[Number(iso.slice(5, 7)) - 1], day = Number(iso.slice(8, 10));
    return bucket === "day" ? `${day} ${month}` : `${day} ${month} ${iso.slice(11, 16)}`;
  }

  function renderCharts() {
    const { status, hour, day } = state.data;
    const keys = [...new Set([...status.channels.map((c) => c.name), ...hour.keys, ...day.keys])];
    const seen = new Set([...hour.keys, ...day.keys]);
    fill("legend", ...keys.filter((k) => seen.has(k)).map((k) => {
      const sw = el("span", { class: "swatch", "aria-hidden": "true" });
      sw.style.background = state.colors.get(k);
      return el("span", { class: "legend-item" }, sw, k);
    }));
    drawChart($("chart-hour"), hour, "hour");
    drawChart($("chart-day"), day, "day");
  }

  function drawChart(box, doc, bucket) {
    const metric = state.metric;
    const value = (g) => (metric === "cost" ? g.cost : g.total_tokens);
    const fmt = metric === "cost" ? (v) => "$" + String(Number(v.toPrecision(3))) : compact;
    const width = Math.max(280, box.clientWidth || 600);
    const height = width < 500 ? 170 : 210;
    const n = doc.buckets.length;
    const sums = doc.buckets.map((b) => value(b));
    const total = sums.reduce((a, b) => a + b, 0);
    const top = niceMax(Math.max(...sums, 0));
    const ticks = [0, 1, 2, 3, 4].map((i) => (i === 0 ? "0" : fmt((top * i) / 4)));
    // The left margin fits the longest value ("$0.0000375" at 11px is ~60px wide).
    const widest = Math.max(...ticks.map((t) => t.length));
    const m = { left: Math.max(40, Math.ceil(widest * 6.4) + 10), right: 6, top: 10, bottom: 26 };
    const plotW = width - m.left - m.right, plotH = height - m.top - m.bottom;
    const label = `${metric === "cost" ? "Cost" : "Tokens"} per ${bucket}: ` +
      `${metric === "cost" ? fmtUSD(total) : fmtTokens(total)} in all`;
    const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                               "aria-label": label, class: "chart-svg" });
    for (let i = 0; i <= 4; i++) {  // grid lines and their values
      const y = m.top + plotH - (plotH * i) / 4;
      chart.append(svg("line", { x1: m.left, x2: width - m.right, y1: y, y2: y, class: "grid" }));
      chart.append(svg("text", { x: m.left - 6, y: y + 4, "text-anchor": "end", class: "axis",
                                 text: ticks[i] }));
    }
    const bw = plotW / Math.max(n, 1);
    const gap = Math.min(2, bw * 0.2);
    const every = Math.max(1, Math.ceil(64 / bw));
    doc.buckets.forEach((b, i) => {
      const x = m.left + i * bw;
      let y = m.top + plotH;
      for (const key of doc.keys) {
        const g = b.groups[key];
        if (!g || !value(g)) continue;
        const h = (value(g) / top) * plotH;
        y -= h;
        const rect = svg("rect", { x: x + gap / 2, y, width: Math.max(1, bw - gap),
                                   height: Math.max(0.5, h), fill: state.colors.get(key) });
        rect.append(svg("title", {
          text: `${bucketLabel(b.start, bucket)} · ${key}: ` +
            `${metric === "cost" ? fmtUSD(g.cost) : fmtTokens(g.total_tokens)}` }));
        chart.append(rect);
      }
      const hourOfDay = Number(b.start.slice(11, 13));
      const marks = bucket === "hour" ? hourOfDay % (bw * 6 >= 64 ? 6 : 12) === 0 : i % every === 0;
      if (marks && x + bw / 2 < width - 20) {
        const text = bucket === "hour" && hourOfDay !== 0 ? b.start.slice(11, 16)
          : bucketLabel(b.start, "day");
        chart.append(svg("text", { x: x + bw / 2, y: height - 8, "text-anchor": "middle",
                                   class: "axis", text }));
      }
    });
    chart.append(svg("line", { x1: m.left, x2: width - m.right, y1: m.top + plotH,
                               y2: m.top + plotH, class: "baseline" }));
    if (!total) {
      chart.append(svg("text", { x: m.left + plotW / 2, y: m.top + plotH / 2, class: "empty-note",
                                 "text-anchor": "middle", text: "No requests in this period" }));
    }
    box.replaceChildren(chart);
  }

  // ------------------------------------------------------------------ tables (sortable)
  function tableRows(doc) {
    const rows = new Map();
    const today = doc.buckets.length ? doc.buckets[doc.buckets.length - 1] : { groups: {} };
    for (const b of doc.buckets) {
      for (const [key, g] of Object.entries(b.groups)) {
        const r = rows.get(key) ||
          { name: key, requests30: 0, tokensToday: 0, tokens30: 0, costToday: 0, cost30: 0 };
        r.requests30 += g.requests;
        r.tokens30 += g.total_tokens;
        r.cost30 += g.cost;
        if (b === today) { r.tokensToday += g.total_tokens; r.costToday += g.cost; }
        rows.set(key, r);
      }
    }
    return [...rows.values()];
  }

  function renderTable(id, title, doc) {
    const cols = [
      ["name", title, (r) => r.name || "(none)"],
      ["tokensToday", "Tokens today", (r) => compact(r.tokensToday)],
      ["costToday", "Cost today", (r) => fmtUSD(r.costToday)],
      ["requests30", "Requests, 30 d", (r) => r.requests30.toLocaleString("en-US")],
      ["tokens30", "Tokens, 30 d", (r) => compact(r.tokens30)],
      ["cost30", "Cost, 30 d", (r) => fmtUSD(r.cost30)],
    ];
    const sort = state.sort[id];
    const rows = tableRows(doc).sort((a, b) => {
      const x = a[sort.col], y = b[sort.col];
      const c = typeof x === "string" ? x.localeCompare(y) : x - y;
      return (c || a.name.localeCompare(b.name)) * sort.dir;
    });
    const head = el("tr", {}, ...cols.map(([col, label]) => {
      const active = sort.col === col;
      const button = el("button", { type: "button", class: "sort", text: label,
                                    "data-col": col, "data-table": id });
      if (active) button.append(el("span", { "aria-hidden": "true", text: sort.dir > 0 ? " ▲" : " ▼" }));
      return el("th", { scope: "col", "aria-sort": active ? (sort.dir > 0 ? "ascending" : "descending") : "none",
                        class: col === "name" ? "" : "num" }, button);
    }));
    const body = rows.length
      ? rows.map((r) => el("tr", {}, ...cols.map(([col, , show]) =>
          el(col === "name" ? "th" : "td", col === "name" ? { scope: "row" } : { class: "num" }, show(r)))))
      : [el("tr", {}, el("td", { colspan: cols.length, class: "empty", text: "No requests in the last 30 days." }))];
    fill(id, el("table", {},
      el("caption", { text: `By ${title === "Model" ? "model" : title} (days in ${state.tz})` }),
      el("thead", {}, head), el("tbody", {}, ...body)));
  }

  function onSortClick(event) {
    const button = event.target.closest("button.sort");
    if (!button || !state.data) return;
    const id = button.dataset.table, col = button.dataset.col;
    const sort = state.sort[id];
    sort.dir = sort.col === col ? -sort.dir : (col === "name" ? 1 : -1);
    sort.col = col;
    const doc = id === "by-key" ? state.data.byKey : state.data.byModel;
    renderTable(id, id === "by-key" ? "API key" : "Model", doc);
    const again = document.querySelector(`button.sort[data-table="${id}"][data-col="${col}"]`);
    if (again) again.focus();
  }

  // ------------------------------------------------------------------ routing dry run
  function knownModels() {
    const models = new Set();
    for (const ch of state.data.channels.channels || []) {
      for (const m of ch.models || []) models.add(m);
      for (const m of Object.keys(ch.model_mapping || {})) models.add(m);
    }
    if (!models.size) for (const k of state.data.byModel.keys) if (k) models.add(k);
    if (!models.size) models.add("gpt-4o-mini");
    return [...models].sort();
  }

  function renderModelPicker() {
    const select = $("route-model");
    const models = knownModels();
    if (!state.model || !models.includes(state.model)) {
      // the model asked for most over 30 days, else the first one
      const counts = new Map(tableRows(state.data.byModel).map((r) => [r.name, r.requests30]));
      state.model = [...models].sort((a, b) => (counts.get(b) || 0) - (counts.get(a) || 0))[0];
    }
    const current = [...select.options].map((o) => o.value).join("\n");
    if (current !== models.join("\n")) {
      select.replaceChildren(...models.map((m) => el("option", { value: m, text: m })));
    }
    select.value = state.model;
  }

  async function refreshRoute() {
    if (!state.model) return;
    const decision = await api("/api/route", { model: state.model, messages: [{ role: "user", content: "Hello" }] });
    const items = decision.candidates.map((c, i) => el("li", { "data-channel": c.channel },
      el("strong", { text: c.channel }),
      ` · ${fmtPrice(c.effective_price)}${c.discount_active ? " (discount)" : ""}`,
      c.rule ? ` · rule “${c.rule}”` : "",
      i === 0 ? el("span", { class: "badge ok", text: "would be tried first" }) : null));
    const out = [
      el("p", { class: "route-rule", text: decision.matched_rule
        ? `Matched rule: ${decision.matched_rule}` : "No rule matched: free first, then cheapest now, then priority." }),
      items.length ? el("ol", { class: "route-list" }, ...items)
        : el("p", { class: "error", text: "No channel would take this model right now." }),
    ];
    if (decision.excluded.length) {
      out.push(el("p", { class: "muted", text: "Left out:" }),
        el("ul", { class: "excluded" }, ...decision.excluded.map((e) =>
          el("li", {}, el("strong", { text: e.channel }), ` · ${e.reason}`))));
    }
    fill("route", ...out);
  }

  // ------------------------------------------------------------------ reloads and failures
  function renderReload(cfg) {
    const lines = [el("p", {}, "Config ", el("code", { text: cfg.path }), ` loaded ${fmtWhen(Date.parse(cfg.loaded_at))}`)];
    if (cfg.last_reload_at === null) {
      lines.push(el("p", { class: "muted", text: "No reload since the gateway started." }));
    } else if (cfg.last_reload_ok) {
      lines.push(el("p", {}, badge("reload ok", "ok"), ` ${fmtWhen(Date.parse(cfg.last_reload_at))}`));
    } else {
      lines.push(el("p", {}, badge("reload refused", "bad"),
        ` ${fmtWhen(Date.parse(cfg.last_reload_at))}; the previous config keeps serving:`),
        el("pre", { class: "reload-error", text: cfg.last_reload_error || "" }));
    }
    fill("reload", ...lines);
  }

  function renderFailures(failures, total) {
    if (!failures.length) {
      fill("failures", el("p", { class: "muted", text: "No failed upstream attempts since the gateway started." }));
      return;
    }
    const rows = failures.slice(0, 10).map((f) => el("tr", {},
      el("td", { text: fmtWhen(Date.parse(f.at)) }),
      el("th", { scope: "row", text: f.channel }),
      el("td", { text: f.model }),
      el("td", { text: f.status !== null ? `HTTP ${f.status}` : `${f.kind}${f.error ? ": " + f.error : ""}` }),
      el("td", { class: "num", text: `${Math.round(f.latency_ms)} ms` }),
      el("td", {}, el("code", { text: f.request_id }))));
    fill("failures", el("table", {},
      el("caption", { text: `Latest failed upstream attempts (${total} since start)` }),
      el("thead", {}, el("tr", {}, ...["When", "Channel", "Model", "Outcome", "Took", "Request id"]
        .map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, ...rows)));
  }

  // ------------------------------------------------------------------ start
  function start() {
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", () => signOut(""));
    $("route-form").addEventListener("submit", (e) => e.preventDefault());
    $("route-model").addEventListener("change", (e) => {
      state.model = e.target.value;
      refreshRoute().catch((err) => showBanner("Routing dry run failed: " + err.message));
    });
    $("metric").addEventListener("change", (e) => {
      state.metric = e.target.value;
      if (state.data) renderCharts();
    });
    document.addEventListener("click", onSortClick);
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { if (state.data) renderCharts(); }, 150);
    });
    $("channels-title").tabIndex = -1;
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      state.token = saved;
      refresh();
    } else {
      showSignIn("");
      $("token").focus();
    }
  }

  // The number formats, for tests and for the curious in the console (no data, no token).
  window.SmartProxyDashboard = Object.freeze({ compact, fmtTokens, fmtUSD, fmtPrice, fmtIn });
  start();
})();
