"use strict";
// ricardo's status page. Polls GET /admin/status with the admin token the operator typed once (kept in this
// tab's sessionStorage, sent only as an Authorization header to this origin), keeps the last minutes of polls in
// memory and draws them as inline SVG; prices are edited through PUT /admin/pools/{pool}/price. Server strings are
// only ever written as text (textContent), never parsed as HTML.
(() => {
  const TOKEN_KEY = "ricardo-admin-token";
  const POLL_MS = 1000;
  const KEEP_S = 300; // charts show the last 5 minutes
  const RATE_S = 10; // spend and request rates over the last 10 s
  const SLO_S = 60; // SLO attainment over the last minute
  const SVG = "http://www.w3.org/2000/svg";
  const history = []; // {t, pools: {name: pool document}, derived: {...}}, oldest first
  const rows = new Map(); // pool name -> {row, cells}
  let timer = null;
  let editing = null; // the pool whose price is being edited: its cell is left alone until done

  const $ = (id) => document.getElementById(id);
  const token = () => sessionStorage.getItem(TOKEN_KEY);

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${token()}` };
    const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      logout("The gateway refused this token.");
      throw new Error("unauthorized");
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((data.error && data.error.message) || `HTTP ${response.status}`);
    return data;
  }

  // -- logging in and out: the token lives in sessionStorage only ---------------------------------------------------
  async function login(event) {
    event.preventDefault(); // never submitted: the token must not reach a URL (the CSP forbids it too)
    const value = $("token").value.trim();
    $("token").value = "";
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("login-error").textContent = "";
    try {
      await poll();
      show(true);
      start();
    } catch (error) {
      if (error.message !== "unauthorized") {
        sessionStorage.removeItem(TOKEN_KEY);
        $("login-error").textContent = `Cannot reach the admin API: ${error.message}`;
      }
    }
  }

  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (timer !== null) clearInterval(timer);
    timer = null;
    history.length = 0;
    show(false);
    $("login-error").textContent = message || "";
  }

  function show(board) {
    $("board").hidden = !board;
    $("login").hidden = board;
    $("logout").hidden = !board;
    if (!board) $("token").focus();
  }

  function start() {
    if (timer !== null) clearInterval(timer);
    timer = setInterval(() => poll().catch((e) => e.message === "unauthorized" || ($("meta").textContent = `status unavailable: ${e.message}`)), POLL_MS);
  }

  // -- polls and the rates derived from them ------------------------------------------------------------------------
  async function poll() {
    const status = await api("GET", "/admin/status");
    const entry = { t: status.time, status, pools: Object.fromEntries(status.pools.map((p) => [p.name, p])) };
    entry.derived = derive(entry);
    history.push(entry);
    while (history.length > 2 && history[0].t < entry.t - KEEP_S) history.shift();
    render(status);
  }

  function since(seconds, entry) {
    // the oldest poll no older than `seconds` before `entry` (or the oldest kept), of the replica that answered
    // `entry`: totals are each replica's, and behind a load balancer polls alternate between replicas
    const same = history.filter((e) => e.status.replica === entry.status.replica);
    return same.find((e) => e.t >= entry.t - seconds) || same[0];
  }

  function delta(entry, before, pool, field) {
    const now = entry.pools[pool], then = before && before.pools[pool];
    if (!now) return null;
    const d = now[field] - (then ? then[field] : now[field]);
    return d >= 0 ? d : null; // a replica restarted: its counters began again
  }

  function derive(entry) {
    const out = { pools: {} };
    const rateFrom = since(RATE_S, entry), sloFrom = since(SLO_S, entry);
    const dt = rateFrom ? entry.t - rateFrom.t : 0;
    let spend = 0, requests = 0, met = 0, judged = 0;
    for (const name of Object.keys(entry.pools)) {
      const cost = delta(entry, rateFrom, name, "cost_usd"), reqs = delta(entry, rateFrom, name, "requests");
      const m = delta(entry, sloFrom, name, "slo_met"), j = delta(entry, sloFrom, name, "slo_judged");
      out.pools[name] = {
        spend: dt > 0 && cost !== null ? (cost / dt) * 3600 : null,
        slo: j ? m / j : null,
        load: entry.pools[name].utilization,
      };
      spend += cost || 0;
      requests += reqs || 0;
      met += m || 0;
      judged += j || 0;
    }
    out.spend = dt > 0 ? (spend / dt) * 3600 : null;
    out.rps = dt > 0 ? requests / dt : null;
    out.slo = judged ? met / judged : null;
    return out;
  }

  // -- drawing --------------------------------------------------------------------------------------------------------
  const money = (v) => (v === null || v === undefined ? "–" : `$${v.toFixed(Math.abs(v) < 1 ? 4 : 2)}`);
  const percent = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(0)}%`);
  const number = (v, digits = 0) => (v === null || v === undefined ? "–" : v.toFixed(digits));

  function chart(svg, series, fixedMax) {
    // series: [t, value|null]; drawn from the oldest poll kept (at least 30 s, at most KEEP_S back) to now
    const now = history.length ? history[history.length - 1].t : 0;
    const span = Math.min(KEEP_S, Math.max(30, history.length ? now - history[0].t : 0));
    const points = series.filter(([, v]) => v !== null && v !== undefined && Number.isFinite(v));
    const max = fixedMax || Math.max(1e-9, ...points.map(([, v]) => v)) * 1.1;
    const base = document.createElementNS(SVG, "line");
    for (const [k, v] of Object.entries({ x1: 0, x2: 200, y1: 39, y2: 39 })) base.setAttribute(k, v);
    const line = document.createElementNS(SVG, "polyline");
    const xy = points.map(([t, v]) => `${(200 * (1 - (now - t) / span)).toFixed(1)},${(38 - (36 * v) / max).toFixed(1)}`);
    line.setAttribute("points", xy.join(" "));
    svg.replaceChildren(base, line);
  }

  function series(pick) {
    return history.map((e) => [e.t, pick(e)]);
  }

  function render(status) {
    const slo = status.slo;
    $("meta").textContent =
      `policy ${status.policy} · config v${status.version} · replica ${status.replica} · ` +
      `SLO: TTFT ≤ ${slo.ttft_ms} ms, TPOT ≤ ${slo.tpot_ms} ms`;
    const latest = history[history.length - 1].derived;
    $("t-spend").textContent = money(latest.spend);
    chart($("c-spend"), series((e) => e.derived.spend));
    $("t-rps").textContent = number(latest.rps, 1);
    chart($("c-rps"), series((e) => e.derived.rps));
    $("t-slo").textContent = percent(latest.slo);
    chart($("c-slo"), series((e) => e.derived.slo), 1);
    const fleet = status.pools.reduce((sum, p) => sum + p.fleet_usd_per_hour, 0);
    const hinted = status.scaling.desired_cost_per_hour;
    $("t-fleet").textContent = `${money(fleet)} → ${money(hinted)}`;
    $("t-fleet-note").textContent = status.scaling.note || "price × backends now; the scaling hints' fleet";
    const p = status.predictor;
    $("t-mae").textContent = number(p.mae_p50, 1);
    $("t-mae-note").textContent = p.n ? `over the last ${p.n} answers; p90 covers ${percent(p.p90_coverage)}` : "no answers yet";
    renderPools(status.pools);
  }

  const COLUMNS = ["name", "hardware", "price", "replicas", "hinted", "in_flight", "load", "load_chart", "slo",
    "spend", "spend_chart", "cost", "requests", "ttft", "lpt"];

  function rowFor(pool) {
    let entry = rows.get(pool.name);
    if (!entry) {
      const row = document.createElement("tr");
      row.dataset.pool = pool.name;
      const cells = {};
      for (const column of COLUMNS) {
        const cell = document.createElement("td");
        cell.dataset.col = column;
        if (column.endsWith("_chart")) {
          const svg = document.createElementNS(SVG, "svg");
          svg.setAttribute("class", "chart");
          svg.setAttribute("viewBox", "0 0 200 40");
          svg.setAttribute("preserveAspectRatio", "none");
          cell.append(svg);
        }
        cells[column] = cell;
        row.append(cell);
      }
      entry = { row, cells };
      rows.set(pool.name, entry);
    }
    return entry;
  }

  function renderPools(pools) {
    const body = document.querySelector("#pools tbody");
    const names = new Set(pools.map((p) => p.name));
    for (const [name, { row }] of rows) if (!names.has(name)) { row.remove(); rows.delete(name); }
    const derived = history[history.length - 1].derived.pools;
    for (const pool of pools) {
      const { row, cells } = rowFor(pool);
      body.append(row); // keeps the gateway's order
      const d = derived[pool.name] || {};
      cells.name.textContent = pool.name;
      cells.hardware.textContent = pool.hardware;
      if (editing !== pool.name) priceButton(cells.price, pool);
      cells.replicas.textContent = `${pool.replicas}/${pool.backends}`;
      cells.hinted.textContent = pool.desired_replicas ?? "–";
      cells.in_flight.textContent = pool.in_flight;
      cells.load.textContent = percent(pool.utilization);
      chart(cells.load_chart.firstChild, series((e) => (e.pools[pool.name] || {}).utilization ?? null));
      cells.slo.textContent = percent(d.slo);
      cells.slo.className = d.slo === null || d.slo === undefined ? "" : d.slo >= 0.9 ? "good" : "bad";
      cells.spend.textContent = money(d.spend);
      chart(cells.spend_chart.firstChild, series((e) => (e.derived.pools[pool.name] || {}).spend ?? null));
      cells.cost.textContent = money(pool.cost_usd);
      cells.requests.textContent = number(pool.requests);
      cells.ttft.textContent = number(pool.ttft_ms);
      cells.lpt.textContent = number(pool.latency_per_token_ms, 1);
    }
  }

  // -- editing a price in place ---------------------------------------------------------------------------------------
  function priceButton(cell, pool) {
    if (pool.pair) { // one figure for two sides: which one to change is not the page's to guess
      cell.textContent = pool.price_per_hour.toFixed(2);
      cell.title = `${pool.price_source}; a pair's unit (one prefill and one decode replica): ` +
        "change a side's price with PUT /admin/pools/{pool}/price and its role";
      return;
    }
    const button = document.createElement("button");
    button.type = "button";
    button.className = "price";
    button.textContent = pool.price_per_hour.toFixed(2);
    button.title = `${pool.price_source}; click to change`;
    button.setAttribute("aria-label", `price of ${pool.name}, $/h: click to change`);
    button.addEventListener("click", () => editPrice(cell, pool));
    cell.replaceChildren(button);
  }

  function editPrice(cell, pool) {
    editing = pool.name;
    const input = document.createElement("input");
    Object.assign(input, { type: "number", min: "0", max: "10000", step: "any", className: "price" });
    input.value = String(pool.price_per_hour);
    input.setAttribute("aria-label", `new price of ${pool.name}, $/h`);
    cell.replaceChildren(input);
    input.focus();
    input.select();
    const cancel = () => {
      if (editing !== pool.name) return;
      editing = null;
      priceButton(cell, pool);
    };
    input.addEventListener("blur", cancel);
    input.addEventListener("keydown", async (event) => {
      if (event.key === "Escape") cancel();
      if (event.key !== "Enter") return;
      event.preventDefault();
      const price = Number(input.value);
      if (input.value.trim() === "" || !Number.isFinite(price) || price < 0) {
        $("edit-error").textContent = "A price is a number of dollars per hour, 0 or more.";
        return;
      }
      try {
        await api("PUT", `/admin/pools/${encodeURIComponent(pool.name)}/price`, { price_per_hour: price });
        $("edit-error").textContent = "";
        editing = null;
        await poll();
      } catch (error) {
        $("edit-error").textContent = `Price of ${pool.name} not changed: ${error.message}`;
      }
    });
  }

  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout(""));
  if (token()) {
    show(true);
    poll().then(start).catch((e) => e.message === "unauthorized" || logout(`Cannot reach the admin API: ${e.message}`));
  } else {
    show(false);
  }
})();
