// msgbatch dashboard: vanilla JS over the Message Batches JSON API. No build step.
// Every call carries the API key the user entered; without a valid key the API answers 401
// and the page shows nothing but the key form. Data is only ever written with textContent.
"use strict";

(() => {
  const KEY_NAME = "msgbatch.apiKey";
  const POLL_MS = 1000;
  const PAGE = 50;
  const RESULTS_PAGE = 100;
  const KINDS = ["succeeded", "errored", "canceled", "expired"];
  const COUNTS = ["processing", ...KINDS];
  const TOKENS = [
    ["input_tokens", "input"],
    ["output_tokens", "output"],
    ["cache_read_input_tokens", "cache read"],
    ["cache_creation_input_tokens", "cache write"],
  ];
  const PRIORITY_ORDER = { high: 0, normal: 1, low: 2 };

  const $ = (selector) => document.querySelector(selector);
  const state = {
    key: null,
    timer: null,
    route: null,
    older: [], // batches loaded with "Show older", below the live first page
    lastList: "",
    samples: [], // [ms, done] for the batch on the detail page: rate and ETA
    batch: null,
    resultsLoadedFor: null,
    sort: { key: "created", down: true }, // the list's order (click a column heading)
    listRows: [],
    pages: [0], // positions of the result pages seen so far; the last is the page shown
    resultsNext: null,
    metadata: "", // the list's metadata filter, as typed: "team=search, run=7"
  };

  // -- small helpers -------------------------------------------------------------------------

  function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else if (name === "text") el.textContent = value;
      else if (name === "dataset") Object.assign(el.dataset, value);
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  const fmt = (n) => Number(n).toLocaleString("en-US");

  function relative(iso) {
    if (!iso) return "";
    const seconds = (Date.parse(iso) - Date.now()) / 1000;
    const abs = Math.abs(seconds);
    const [value, unit] =
      abs < 60 ? [abs, "s"] : abs < 3600 ? [abs / 60, "min"] : abs < 86400 ? [abs / 3600, "h"] : [abs / 86400, "d"];
    const text = `${Math.round(value)} ${unit}`;
    return seconds >= 0 ? `in ${text}` : `${text} ago`;
  }

  function absolute(iso) {
    return iso ? new Date(iso).toLocaleString(undefined, { hour12: false }) : "";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    if (seconds < 1) return `${(seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1)} ms`;
    if (seconds < 120) return `${seconds.toFixed(2)} s`;
    if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  // An OpenAI batch (the OpenAI Batch API's, `batch_...`) is shown in the Message Batches' terms:
  // completed requests as succeeded, failed ones (errored, cancelled, expired) as errored.
  const isOpenAI = (id) => id.startsWith("batch_");
  const OPENAI_ENDED = ["completed", "failed", "cancelled", "expired"];

  function fromOpenAI(b) {
    const c = b.request_counts || { total: 0, completed: 0, failed: 0 };
    const iso = (seconds) => (seconds ? new Date(seconds * 1000).toISOString() : null);
    const ended = OPENAI_ENDED.includes(b.status);
    return {
      id: b.id,
      kind: `OpenAI ${b.endpoint}`,
      openai: b,
      processing_status: ended ? "ended" : b.status === "cancelling" ? "canceling" : "in_progress",
      request_counts: {
        processing: Math.max(0, c.total - c.completed - c.failed),
        succeeded: c.completed,
        errored: c.failed,
        canceled: 0,
        expired: 0,
      },
      created_at: iso(b.created_at),
      expires_at: iso(b.expires_at),
      cancel_initiated_at: iso(b.cancelling_at),
      ended_at: iso(b.completed_at || b.cancelled_at || b.expired_at || b.failed_at),
      archived_at: null,
      results_url: ended && (b.output_file_id || b.error_file_id) ? "files" : null,
    };
  }

  const batchPath = (id) =>
    isOpenAI(id) ? `/v1/batches/${encodeURIComponent(id)}` : `/v1/messages/batches/${encodeURIComponent(id)}`;

  const totals = (c) => {
    const total = c.processing + c.succeeded + c.errored + c.canceled + c.expired;
    return { total, done: total - c.processing };
  };

  const money = (x) => (x === null || x === undefined ? "–" : `$${x < 1 ? x.toFixed(4) : x.toFixed(2)}`);

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  function show(id) {
    for (const section of ["login", "list", "detail", "workspace"]) $(`#${section}`).hidden = section !== id;
    $("#signout").hidden = id === "login";
    $("#nav").hidden = id === "login";
    $("#nav-batches").classList.toggle("current", id === "list" || id === "detail");
    $("#nav-workspace").classList.toggle("current", id === "workspace");
  }

  function banner(message) {
    const el = $("#banner");
    el.textContent = message || "";
    el.hidden = !message;
  }

  function notice(message) {
    const el = $("#notice");
    el.textContent = message;
    el.hidden = false;
    clearTimeout(notice.timer);
    notice.timer = setTimeout(() => (el.hidden = true), 4000);
  }

  // -- the API -------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, type, message, requestId) {
      super(message);
      this.status = status;
      this.type = type;
      this.requestId = requestId;
    }
    describe() {
      return `${this.type}: ${this.message}` + (this.requestId ? ` (request-id ${this.requestId})` : "");
    }
  }

  async function api(path, { method = "GET", raw = false } = {}) {
    let res;
    try {
      res = await fetch(path, {
        method,
        cache: "no-store",
        headers: { "x-api-key": state.key, "anthropic-version": "2023-06-01" },
      });
    } catch (err) {
      throw new ApiError(0, "connection_error", `cannot reach the server (${err.message})`, null);
    }
    if (!res.ok) {
      let type = "api_error";
      let message = `HTTP ${res.status}`;
      let requestId = res.headers.get("request-id");
      try {
        const body = await res.json();
        type = body.error.type;
        message = body.error.message;
        requestId = body.request_id || requestId;
      } catch (_) {
        // not the API's error shape: keep the HTTP status
      }
      const error = new ApiError(res.status, type, message, requestId);
      if (res.status === 401) signOut(`The server refused this key: ${message}`);
      throw error;
    }
    return raw ? res : res.json();
  }

  function reportError(err) {
    if (err instanceof ApiError && err.status === 401) return; // already back at the key form
    banner(err instanceof ApiError ? err.describe() : String(err));
  }

  // -- key -----------------------------------------------------------------------------------

  function signOut(message) {
    sessionStorage.removeItem(KEY_NAME);
    localStorage.removeItem(KEY_NAME);
    state.key = null;
    stopPolling();
    banner("");
    $("#login-error").textContent = message || "";
    show("login");
    $("#key").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const key = $("#key").value.trim();
    if (!key) return;
    state.key = key;
    try {
      await api("/v1/messages/batches?limit=1");
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) $("#login-error").textContent = String(err.message);
      $("#key").select();
      return;
    }
    sessionStorage.setItem(KEY_NAME, key);
    if ($("#remember").checked) localStorage.setItem(KEY_NAME, key);
    $("#key").value = "";
    $("#login-error").textContent = "";
    route();
  }

  // -- polling -------------------------------------------------------------------------------

  function stopPolling() {
    clearTimeout(state.timer);
    state.timer = null;
  }

  function poll(fn) {
    stopPolling();
    const token = {};
    state.pollToken = token;
    const tick = async () => {
      if (state.pollToken !== token) return;
      if (!document.hidden) {
        let again = true;
        try {
          again = (await fn()) !== false;
          $("#updated").textContent = `updated ${new Date().toLocaleTimeString(undefined, { hour12: false })}`;
        } catch (err) {
          reportError(err);
        }
        if (!again || state.pollToken !== token || !state.key) return;
      }
      state.timer = setTimeout(tick, POLL_MS);
    };
    tick();
  }

  // -- shared pieces -------------------------------------------------------------------------

  function statusPill(status) {
    return h("span", { class: `pill status-${status}`, text: status.replace("_", " ") });
  }

  function progressBar(counts, status) {
    const { total, done } = totals(counts);
    const pct = total ? (100 * done) / total : 0;
    const bar = h("div", {
      class: `bar${status !== "ended" ? " live" : ""}`,
      role: "progressbar",
      "aria-valuemin": 0,
      "aria-valuemax": total,
      "aria-valuenow": done,
    });
    for (const kind of KINDS) {
      if (!counts[kind]) continue;
      const seg = h("span", { class: `seg ${kind}`, title: `${fmt(counts[kind])} ${kind}` });
      seg.style.width = `${(100 * counts[kind]) / total}%`;
      bar.append(seg);
    }
    const label = h("span", {
      class: "bar-label",
      text: `${fmt(done)} / ${fmt(total)} · ${pct >= 99.95 || pct === 0 ? pct.toFixed(0) : pct.toFixed(1)}%`,
    });
    return h("div", { class: "progress" }, bar, label);
  }

  async function cancelBatch(id, abortRunning = false) {
    const what = abortRunning
      ? `Cancel batch ${id} and stop its running requests? None of its requests will run any more.`
      : `Cancel batch ${id}? Requests not started yet will not run.`;
    if (!confirm(what)) return;
    try {
      const query = abortRunning ? "?abort_running=true" : "";
      const batch = await api(`${batchPath(id)}/cancel${query}`, { method: "POST" });
      notice(`Cancel requested for ${id}: now ${(batch.processing_status || batch.status).replace("_", " ")}.`);
      refreshNow();
    } catch (err) {
      reportError(err);
    }
  }

  async function deleteBatch(id) {
    if (!confirm(`Delete batch ${id} and its results? This cannot be undone.`)) return;
    try {
      await api(`/v1/messages/batches/${encodeURIComponent(id)}`, { method: "DELETE" });
      notice(`Deleted ${id}.`);
      state.older = state.older.filter((b) => b.id !== id);
      if (location.hash !== "#/") location.hash = "#/";
      else refreshNow();
    } catch (err) {
      reportError(err);
    }
  }

  async function retryBatch(id) {
    if (!confirm(`Run the errored and expired requests of ${id} again, as a new batch?`)) return;
    try {
      const child = await api(`/v1/messages/batches/${encodeURIComponent(id)}/retry`, { method: "POST" });
      notice(`Created ${child.id}, a retry of ${id}.`);
      location.hash = `#/batch/${child.id}`;
    } catch (err) {
      reportError(err);
    }
  }

  function metadataTags(b) {
    const pairs = b.openai ? [] : Object.entries(b.metadata || {});
    if (!pairs.length) return null;
    return h("span", { class: "tags" }, ...pairs.map(([k, v]) => h("span", { class: "tag", text: `${k}=${v}` })));
  }


  function refreshNow() {
    state.lastList = "";
    route();
  }

  // -- the list ------------------------------------------------------------------------------

  const SORT_KEYS = {
    id: (b) => b.id,
    status: (b) => b.processing_status,
    progress: (b) => {
      const { total, done } = totals(b.request_counts);
      return total ? done / total : 0;
    },
    succeeded: (b) => b.request_counts.succeeded,
    errored: (b) => b.request_counts.errored,
    canceled: (b) => b.request_counts.canceled,
    expired: (b) => b.request_counts.expired,
    priority: (b) => PRIORITY_ORDER[b.priority || "normal"],
    created: (b) => b.id, // ids sort by creation time
  };

  function sorted(batches) {
    const key = SORT_KEYS[state.sort.key] || SORT_KEYS.created;
    const sign = state.sort.down ? -1 : 1;
    return batches
      .map((b, i) => [b, i])
      .sort(([x, i], [y, j]) => {
        const a = key(x);
        const c = key(y);
        return a < c ? -sign : a > c ? sign : i - j;
      })
      .map(([b]) => b);
  }

  // "team=search, run=7" -> [["team", "search"], ["run", "7"]]
  function metadataPairs() {
    const pairs = [];
    for (const part of state.metadata.split(",")) {
      const [key, ...rest] = part.split("=");
      if (key.trim() && rest.length) pairs.push([key.trim(), rest.join("=").trim()]);
    }
    return pairs;
  }

  function listQuery() {
    const query = new URLSearchParams({ limit: String(PAGE) });
    const status = $("#filter-status").value;
    if (status) query.set("status", status);
    for (const [key, value] of metadataPairs()) query.set(`metadata[${key}]`, value);
    return query;
  }

  // The OpenAI Batch API's list has no such filters: its batches are filtered here.
  function matchesFilters(b) {
    const status = $("#filter-status").value;
    if (status && b.processing_status !== status) return false;
    const metadata = (b.openai && b.openai.metadata) || {};
    return metadataPairs().every(([key, value]) => metadata[key] === value);
  }

  function batchRow(b) {
    const c = b.request_counts;
    const action =
      b.processing_status === "ended"
        ? b.openai
          ? null // OpenAI batches are not deleted: their files are
          : h("button", { class: "small danger ghost", type: "button", text: "Delete", onclick: () => deleteBatch(b.id) })
        : h("button", { class: "small danger ghost", type: "button", text: "Cancel", onclick: () => cancelBatch(b.id) });
    if (action && b.processing_status === "canceling") action.disabled = true;
    return h(
      "tr",
      { dataset: { id: b.id, status: b.processing_status, kind: b.openai ? "openai" : "messages" } },
      h(
        "td",
        {},
        h("a", { href: `#/batch/${b.id}`, class: "mono", text: b.id }),
        " ",
        h("span", { class: "pill kind", text: b.kind || "Messages" }),
        metadataTags(b),
      ),
      h("td", { class: "status" }, statusPill(b.processing_status)),
      h("td", { class: "wide" }, progressBar(c, b.processing_status)),
      ...KINDS.map((k) =>
        h("td", { class: `num ${k}${c[k] ? "" : " zero"}${k === "canceled" || k === "expired" ? " opt" : ""}`, text: fmt(c[k]) }),
      ),
      h("td", { class: "opt" }, priorityPill(b.priority)),
      h("td", { class: "nowrap opt", title: absolute(b.created_at), text: relative(b.created_at) }),
      h("td", { class: "actions" }, action),
    );
  }

  function priorityPill(priority) {
    const p = priority || "normal";
    return h("span", { class: `pill priority-${p}`, text: p });
  }

  function renderSortHeadings() {
    for (const th of document.querySelectorAll("#batches th[data-sort]")) {
      const on = th.dataset.sort === state.sort.key;
      th.classList.toggle("sorted", on);
      th.setAttribute("aria-sort", on ? (state.sort.down ? "descending" : "ascending") : "none");
    }
  }

  async function refreshList() {
    const query = listQuery();
    const [page, openai] = await Promise.all([
      api(`/v1/messages/batches?${query}`),
      api(`/v1/batches?limit=${PAGE}`),
    ]);
    // The filters changed while this page was on its way: a newer refresh draws the list.
    if (listQuery().toString() !== query.toString()) return;
    const seen = new Set(page.data.map((b) => b.id));
    const older = state.older.filter((b) => !seen.has(b.id));
    const all = page.data
      .concat(openai.data.map(fromOpenAI).filter(matchesFilters))
      .sort((x, y) => Date.parse(y.created_at) - Date.parse(x.created_at))
      .concat(older);
    state.listRows = all;
    const fingerprint = JSON.stringify([all, state.sort, query.toString()]) + Math.floor(Date.now() / 30000);
    if (fingerprint !== state.lastList) {
      state.lastList = fingerprint;
      $("#batches tbody").replaceChildren(...sorted(all).map(batchRow));
      renderSortHeadings();
    }
    const filtered = query.has("status") || query.has("metadata");
    $("#empty").textContent = filtered
      ? "No batches match these filters."
      : "No batches in this workspace yet. Create one with the SDK, curl, or msgbatch submit requests.jsonl.";
    $("#empty").hidden = all.length > 0;
    $("#batches").hidden = all.length === 0;
    const running = all.filter((b) => b.processing_status !== "ended").length;
    $("#list-summary").textContent = all.length
      ? `${fmt(all.length)} shown · ${fmt(running)} in progress or canceling`
      : "";
    const last = older.length ? older[older.length - 1] : page.data[page.data.length - 1];
    const more = older.length ? state.olderHasMore : page.has_more;
    $("#older").hidden = !more;
    $("#older").dataset.after = last ? last.id : "";
  }

  async function loadOlder() {
    const after = $("#older").dataset.after;
    if (!after) return;
    try {
      const query = listQuery();
      query.set("after_id", after);
      const page = await api(`/v1/messages/batches?${query}`);
      state.older = state.older.concat(page.data);
      state.olderHasMore = page.has_more;
      state.lastList = "";
      await refreshList();
    } catch (err) {
      reportError(err);
    }
  }

  function listFiltersChanged() {
    state.metadata = $("#metadata-query").value;
    state.older = [];
    state.lastList = "";
    refreshList().catch(reportError);
  }

  function sortBy(key) {
    state.sort = state.sort.key === key ? { key, down: !state.sort.down } : { key, down: key !== "id" && key !== "status" };
    $("#batches tbody").replaceChildren(...sorted(state.listRows).map(batchRow));
    state.lastList = "";
    renderSortHeadings();
  }

  // -- one batch -----------------------------------------------------------------------------

  function renderTimeline(b) {
    const events = [
      ["Created", b.created_at],
      [b.cancel_reason === "fail_fast" ? "Canceled by its fail-fast policy" : "Cancel initiated", b.cancel_initiated_at],
      ["Ended", b.ended_at],
      [
        !b.ended_at ? "Expires" : Date.parse(b.ended_at) >= Date.parse(b.expires_at) ? "Expired" : "Expiry (ended before)",
        b.expires_at,
      ],
      ["Archived (results removed)", b.archived_at],
    ].filter(([, at]) => at);
    events.sort((x, y) => Date.parse(x[1]) - Date.parse(y[1]));
    const now = Date.now();
    $("#timeline").replaceChildren(
      ...events.map(([label, at]) =>
        h(
          "li",
          { class: Date.parse(at) > now ? "future" : "past", dataset: { event: label.split(" ")[0].toLowerCase() } },
          h("span", { class: "when", text: absolute(at) }),
          h("span", { class: "what", text: label }),
          h("span", { class: "muted", text: relative(at) }),
        ),
      ),
    );
  }

  function renderRate(b) {
    const { total, done } = totals(b.request_counts);
    const el = $("#rate");
    if (b.processing_status === "ended") {
      const seconds = (Date.parse(b.ended_at) - Date.parse(b.created_at)) / 1000;
      const c = b.request_counts;
      const ran = c.succeeded + c.errored;
      el.textContent = b.cancel_initiated_at
        ? `Canceled: ended ${duration(seconds)} after it was created; ${fmt(ran)} of ${fmt(total)} requests ran.`
        : `Ended ${duration(seconds)} after it was created` +
          (seconds > 0 ? ` (${fmt(Math.round(total / seconds))} requests/s overall).` : ".");
      return;
    }
    const now = Date.now();
    state.samples.push([now, done]);
    state.samples = state.samples.filter(([t]) => now - t <= 15000);
    const [t0, d0] = state.samples[0];
    const rate = now > t0 ? ((done - d0) * 1000) / (now - t0) : 0;
    if (rate > 0) {
      el.textContent = `${rate.toFixed(rate < 10 ? 1 : 0)} requests/s · about ${duration((total - done) / rate)} left`;
    } else {
      el.textContent = b.processing_status === "canceling" ? "Canceling: waiting for running requests." : "Waiting for progress…";
    }
  }

  function renderTiming(stats) {
    $("#timing tbody").replaceChildren(
      ...stats.backends.map((t) =>
        h(
          "tr",
          { dataset: { backend: t.backend } },
          h("td", { class: "mono", text: t.backend }),
          h("td", { class: "num", text: fmt(t.calls) }),
          h("td", { class: "num", text: fmt(t.errors) }),
          h("td", { class: "num", text: duration(t.mean_seconds) }),
          h("td", { class: "num", text: duration(t.max_seconds) }),
          h("td", { class: "num", text: duration(t.total_seconds) }),
        ),
      ),
    );
    $("#timing").hidden = stats.backends.length === 0;
    $("#timing-note").textContent =
      (stats.backends.length ? "" : "No backend calls recorded for this batch. ") +
      `Measured in memory by this server process since it started (${absolute(stats.since)}); ` +
      "requests run by another worker process or before a restart are not included.";
  }

  function renderTokens(stats) {
    $("#tokens").replaceChildren(
      ...TOKENS.flatMap(([key, label]) => [
        h("dt", { text: label }),
        h("dd", { dataset: { tokens: key }, text: fmt(stats.usage[key]) }),
      ]),
    );
    $("#cost").textContent =
      stats.cost === null ? "No price is configured for these models." : `Cost: ${money(stats.cost)}`;
    $("#cost").dataset.cost = stats.cost === null ? "" : String(stats.cost);
    $("#tokens-by-model tbody").replaceChildren(
      ...stats.tokens.map((t) =>
        h(
          "tr",
          { dataset: { model: t.model } },
          h("td", { class: "mono", text: t.model || "(none)" }),
          ...TOKENS.map(([key]) => h("td", { class: "num", text: fmt(t[key]) })),
          h("td", { class: "num", text: money(t.cost) }),
        ),
      ),
    );
    $("#tokens-by-model").hidden = stats.tokens.length === 0;
  }

  function renderByModel(stats) {
    const sums = Object.fromEntries(COUNTS.map((k) => [k, 0]));
    const rows = stats.requests.map((r) => {
      for (const k of COUNTS) sums[k] += r[k];
      const backend = r.backend || (r.processing && !KINDS.some((k) => r[k]) ? "not yet" : "no backend");
      return h(
        "tr",
        { dataset: { model: r.model, backend: r.backend || "" } },
        h("td", { class: "mono", text: r.model || "(none)" }),
        h("td", { class: r.backend ? "mono" : "muted", text: backend }),
        ...COUNTS.map((k) => h("td", { class: `num ${k}${r[k] ? "" : " zero"}`, dataset: { count: k }, text: fmt(r[k]) })),
      );
    });
    $("#by-model tbody").replaceChildren(...rows);
    $("#by-model tfoot").replaceChildren(
      h(
        "tr",
        {},
        h("th", { text: "All" }),
        h("th", {}),
        ...COUNTS.map((k) => h("th", { class: "num", dataset: { total: k }, text: fmt(sums[k]) })),
      ),
    );
    $("#errors tbody").replaceChildren(
      ...stats.errors.map((e) =>
        h("tr", { dataset: { errorType: e.type } }, h("td", { class: "mono", text: e.type }), h("td", { class: "num", text: fmt(e.count) })),
      ),
    );
    $("#errors").hidden = stats.errors.length === 0;
    $("#errors-empty").hidden = stats.errors.length > 0;
  }

  function drawThroughput(stats, b) {
    const canvas = $("#throughput");
    const { step_seconds: step, start, points } = stats.throughput;
    const width = canvas.clientWidth || canvas.width;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(width * ratio));
    canvas.height = Math.round(160 * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, 160);
    const end = b.ended_at ? Date.parse(b.ended_at) / 1000 : Date.now() / 1000;
    const slots = Math.max(1, Math.ceil((end - start + 1) / step));
    const perSecond = points.map(([, n]) => n / step);
    const top = Math.max(1, ...perSecond);
    const left = 44;
    const bottom = 140;
    const plot = width - left - 8;
    ctx.strokeStyle = "#e3e6ec";
    ctx.fillStyle = "#6b7280";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "right";
    for (const frac of [0, 0.5, 1]) {
      const y = bottom - frac * (bottom - 10);
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(width - 8, y);
      ctx.stroke();
      ctx.fillText(fmt(Math.round(top * frac)), left - 6, y + 4);
    }
    ctx.textAlign = "left";
    ctx.fillText("requests/s", left, 156);
    ctx.textAlign = "right";
    ctx.fillText(duration(slots * step), width - 8, 156);
    ctx.fillStyle = "#3b5bdb";
    const barWidth = Math.max(1, plot / slots - 1);
    points.forEach(([at, n]) => {
      const x = left + ((at - start) / step) * (plot / slots);
      const height = ((n / step) / top) * (bottom - 10);
      ctx.fillRect(x, bottom - height, barWidth, height);
    });
    canvas.dataset.points = String(points.length);
    canvas.dataset.total = String(points.reduce((sum, [, n]) => sum + n, 0));
    $("#throughput-note").textContent = points.length
      ? `Requests whose results were written, per ${duration(step)}; peak ${fmt(Math.round(top))}/s.`
      : "No request has run yet.";
  }

  function renderDetail(b) {
    state.batch = b;
    $("#batch-id").textContent = b.id;
    const pill = statusPill(b.processing_status);
    $("#batch-status").className = pill.className;
    $("#batch-status").textContent = pill.textContent;
    $("#batch-status").dataset.status = b.processing_status;
    const priority = priorityPill(b.priority);
    $("#batch-priority").className = priority.className;
    $("#batch-priority").textContent = `${priority.textContent} priority`;
    $("#detail-progress").replaceChildren(progressBar(b.request_counts, b.processing_status));
    const c = b.request_counts;
    $("#counts").replaceChildren(
      ...COUNTS.flatMap((k) => [h("dt", { class: k, text: k }), h("dd", { class: k, dataset: { count: k }, text: fmt(c[k]) })]),
    );
    $("#cancel").hidden = b.processing_status === "ended";
    $("#cancel").disabled = b.processing_status === "canceling";
    $("#abort").hidden = b.processing_status === "ended" || !!b.openai;
    $("#retry").hidden = b.processing_status !== "ended" || !(c.errored + c.expired) || !!b.archived_at || !!b.openai;
    renderOptions(b);
    $("#delete").hidden = b.processing_status !== "ended" || !!b.openai;
    $("#batch-kind").textContent = b.kind || "Messages";
    $("#download").hidden = !b.results_url || !!b.archived_at;
    renderTimeline(b);
    renderRate(b);
  }

  // What msgbatch's features add to a batch: metadata, fail-fast, links between retries, webhook.
  function renderOptions(b) {
    const link = (id) => h("a", { href: `#/batch/${id}`, class: "mono", text: id });
    const rows = [];
    if (metadataTags(b)) rows.push(["Metadata", metadataTags(b)]);
    if (b.fail_fast) {
      const f = b.fail_fast;
      rows.push(["Fail fast", `after ${fmt(f.min_results)} results, above ${(100 * f.max_error_rate).toFixed(0)}% errored`]);
    }
    if (b.cancel_reason) rows.push(["Cancel reason", b.cancel_reason]);
    if (b.retry_of) rows.push(["Retry of", link(b.retry_of)]);
    if (b.retried_by) rows.push(["Retried by", link(b.retried_by)]);
    if (b.webhook_url) rows.push(["Webhook", b.webhook_url]);
    $("#options").replaceChildren(
      ...rows.flatMap(([label, value]) => [h("dt", { text: label }), h("dd", { dataset: { option: label } }, value)]),
    );
    $("#options").hidden = rows.length === 0;
  }

  async function refreshDetail(id) {
    const [raw, stats] = await Promise.all([
      api(batchPath(id)),
      isOpenAI(id) ? null : api(`/v1/messages/batches/${encodeURIComponent(id)}/stats`).catch(() => null),
    ]);
    const b = isOpenAI(id) ? fromOpenAI(raw) : raw;
    renderDetail(b);
    $("#detail").classList.toggle("no-stats", !stats);
    if (stats) {
      renderTiming(stats);
      renderTokens(stats);
      renderByModel(stats);
      drawThroughput(stats, b);
    }
    if (b.processing_status === "ended") {
      if (state.resultsLoadedFor !== id) {
        state.resultsLoadedFor = id;
        await loadResults(0);
      }
      return false; // nothing changes any more: stop polling
    }
    if (b.openai) {
      $("#results-note").textContent = "Results are available once the batch has ended.";
      $("#results tbody").replaceChildren();
      $("#results-prev").disabled = $("#results-next").disabled = true;
      $("#results-page").textContent = "";
      return true;
    }
    const { done } = totals(b.request_counts);
    if (done !== state.partialDone) {
      state.partialDone = done; // reload the page shown (results written so far) only when more are in
      await loadResults(state.resultsPage || 0);
    }
    return true;
  }

  // An OpenAI output or error file's line, as a row of the results table.
  function fromOpenAILine(line) {
    const error = line.error || (line.response && line.response.status_code !== 200 ? line.response.body.error : null);
    let type = "succeeded";
    let summary = "";
    if (line.error && line.error.code === "batch_cancelled") type = "canceled";
    else if (line.error && line.error.code === "batch_expired") type = "expired";
    else if (error) type = "errored";
    if (type === "succeeded") {
      const body = line.response.body;
      const choice = (body.choices || [])[0];
      let text = `${(body.data || []).length} embedding(s)`;
      if (choice) text = choice.message ? choice.message.content || "[tool_calls]" : choice.text;
      summary = String(text).slice(0, 160) + (choice ? `  ·  ${choice.finish_reason}` : "");
    } else if (type === "errored") {
      summary = `${line.response ? line.response.status_code : ""} ${error.type || error.code}: ${error.message}`;
    }
    return { custom_id: line.custom_id, result: { type }, summary, line };
  }

  function resultDetails(r) {
    if (r.line) {
      const shown = r.summary || (r.result.type === "canceled" ? "not run: the batch was cancelled" : "not run before the batch expired");
      return h("details", {}, h("summary", { text: shown }), h("pre", { text: JSON.stringify(r.line, null, 2) }));
    }
    const result = r.result;
    let summary = "";
    if (result.type === "succeeded") {
      const m = result.message;
      const text = (m.content || [])
        .map((block) => block.text || (block.type === "tool_use" ? `[tool_use ${block.name}]` : `[${block.type}]`))
        .join(" ");
      summary = `${text.length > 160 ? text.slice(0, 160) + "…" : text}  ·  ${m.stop_reason}, ` +
        `${fmt(m.usage.input_tokens)} in / ${fmt(m.usage.output_tokens)} out`;
    } else if (result.type === "errored") {
      const e = result.error.error || result.error;
      summary = `${e.type}: ${e.message}`;
    } else {
      summary = result.type === "canceled" ? "not run: the batch was canceled" : "not run before the batch expired";
    }
    return h("details", {}, h("summary", { text: summary }), h("pre", { text: JSON.stringify(r, null, 2) }));
  }

  // One page of results from position `after` on; the pager keeps the positions of the pages seen.
  async function loadResults(pageIndex) {
    const b = state.batch;
    const note = $("#results-note");
    const tbody = $("#results tbody");
    if (!b) return;
    const running = b.processing_status !== "ended";
    if (running && b.openai) return;
    if (b.archived_at) {
      note.textContent = "This batch is archived: its results are no longer kept.";
      tbody.replaceChildren();
      return;
    }
    if (pageIndex === 0) state.pages = [0];
    const after = state.pages[pageIndex];
    const query = new URLSearchParams({ after: String(after), limit: String(RESULTS_PAGE) });
    const type = $("#filter-type").value;
    const customId = $("#filter-custom-id").value.trim();
    if (type) query.set("type", type);
    if (customId) query.set("custom_id", customId);
    if (!running) note.textContent = "Loading…";
    const token = {};
    state.resultsToken = token;
    let page;
    if (b.openai) {
      // Its output file, then its error file: read once, filtered and paged here.
      if (state.openaiRowsFor !== b.id) {
        state.openaiRows = (await openaiLines(b.openai)).map(fromOpenAILine);
        state.openaiRowsFor = b.id;
      }
      const matching = state.openaiRows.filter(
        (row) => (!type || row.result.type === type) && (!customId || row.custom_id === customId),
      );
      const end = after + RESULTS_PAGE;
      page = { data: matching.slice(after, end), next: end < matching.length ? end : null };
    } else {
      page = await api(`/v1/messages/batches/${encodeURIComponent(b.id)}/results/page?${query}`);
    }
    if (state.resultsToken !== token) return; // a newer filter or page was asked for meanwhile
    state.pages = state.pages.slice(0, pageIndex + 1);
    if (page.next !== null) state.pages.push(page.next);
    state.resultsPage = pageIndex;
    tbody.replaceChildren(
      ...page.data.map((r) =>
        h(
          "tr",
          { dataset: { customId: r.custom_id, type: r.result.type } },
          h("td", { class: "mono", text: r.custom_id }),
          h("td", {}, h("span", { class: `pill result-${r.result.type}`, text: r.result.type })),
          h("td", { class: "wide" }, resultDetails(r)),
        ),
      ),
    );
    const what = [type || "all results", customId ? `custom_id ${customId}` : "", running ? "so far: still running" : ""]
      .filter(Boolean)
      .join(", ");
    const first = pageIndex * RESULTS_PAGE + 1;
    note.textContent = page.data.length === 0 ? `No results match (${what}).` : `Showing ${what}.`;
    $("#results-page").textContent = page.data.length
      ? `${fmt(first)}–${fmt(first + page.data.length - 1)}${page.next === null && !running ? ` of ${fmt(first + page.data.length - 1)}` : ""}`
      : "";
    $("#results-prev").disabled = pageIndex === 0;
    $("#results-next").disabled = page.next === null;
  }

  async function openaiFile(fileId) {
    if (!fileId) return "";
    const res = await api(`/v1/files/${encodeURIComponent(fileId)}/content`, { raw: true });
    return res.text();
  }

  async function openaiLines(batch) {
    const text = (await openaiFile(batch.output_file_id)) + (await openaiFile(batch.error_file_id));
    return text.split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line));
  }

  async function download() {
    const b = state.batch;
    if (!b) return;
    try {
      const blob = b.openai
        ? new Blob([(await openaiFile(b.openai.output_file_id)) + (await openaiFile(b.openai.error_file_id))])
        : await (await api(`/v1/messages/batches/${encodeURIComponent(b.id)}/results`, { raw: true })).blob();
      const url = URL.createObjectURL(blob);
      const a = h("a", { href: url, download: `${b.id}_results.jsonl` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      reportError(err);
    }
  }

  // -- the workspace ---------------------------------------------------------------------------

  function quota(label, used, limit, name) {
    const children = [h("dt", { text: label })];
    if (limit === null || limit === undefined) {
      children.push(h("dd", { dataset: { quota: name }, text: used === null ? "no limit" : `${fmt(used)} · no limit` }));
      return children;
    }
    const dd = h("dd", { dataset: { quota: name } });
    if (used === null) {
      dd.textContent = fmt(limit);
    } else {
      const bar = h("div", { class: "bar small", role: "meter", "aria-valuemin": 0, "aria-valuemax": limit, "aria-valuenow": used });
      const seg = h("span", { class: `seg ${used >= limit ? "errored" : "succeeded"}` });
      seg.style.width = `${Math.min(100, (100 * used) / limit)}%`;
      bar.append(seg);
      dd.append(h("span", { text: `${fmt(used)} of ${fmt(limit)}` }), bar);
    }
    children.push(dd);
    return children;
  }

  async function refreshWorkspace() {
    const range = Number($("#usage-range").value);
    const now = Math.floor(Date.now() / 1000);
    const [ws, usage] = await Promise.all([
      api("/v1/workspace"),
      api(`/v1/usage?group_by=model&since=${now - range}&until=${now + 1}`),
    ]);
    $("#ws-name").textContent = ws.workspace;
    const l = ws.limits;
    $("#quotas").replaceChildren(
      ...quota("Requests not finished", ws.queued_requests, l.max_queued_requests, "max_queued_requests"),
      ...quota("Batches in progress", ws.batches_in_progress, l.max_batches_in_progress, "max_batches_in_progress"),
      ...quota("In flight per backend, per worker", null, l.max_in_flight_per_backend, "max_in_flight_per_backend"),
      h("dt", { text: "Weight (share of each backend)" }),
      h("dd", { dataset: { quota: "weight" }, text: String(l.weight) }),
    );
    $("#ws-work tbody").replaceChildren(
      ...ws.work.map((w) =>
        h(
          "tr",
          { dataset: { model: w.model } },
          h("td", { class: "mono", text: w.model || "(none)" }),
          h("td", { class: "mono", text: w.backend || "none" }),
          h("td", { class: "num", dataset: { running: "" }, text: fmt(w.running) }),
          h("td", { class: "num", dataset: { waiting: "" }, text: fmt(w.waiting) }),
        ),
      ),
    );
    $("#ws-work").hidden = ws.work.length === 0;
    $("#ws-work-empty").hidden = ws.work.length > 0;
    const cells = (row) => [
      h("td", { class: "num", text: fmt(row.succeeded) }),
      h("td", { class: "num", text: fmt(row.errored) }),
      ...TOKENS.map(([key]) => h("td", { class: "num", text: fmt(row[key]) })),
      h("td", { class: "num", text: money(row.cost) }),
    ];
    $("#usage tbody").replaceChildren(
      ...usage.data.map((row) => h("tr", { dataset: { model: row.model } }, h("td", { class: "mono", text: row.model || "(none)" }), ...cells(row))),
    );
    $("#usage tfoot").replaceChildren(h("tr", { dataset: { total: "" } }, h("th", { text: "All models" }), ...cells(usage.total)));
    $("#usage-note").textContent =
      `${absolute(usage.since)} to ${absolute(usage.until)}, in whole hours. ` +
      (usage.total.cost === null ? "No price is configured for these models." : "Cost from the configured price table.");
  }

  // -- routing -------------------------------------------------------------------------------

  function route() {
    banner("");
    if (!state.key) {
      signOut("");
      return;
    }
    const match = location.hash.match(/^#\/batch\/([A-Za-z0-9_-]+)$/);
    if (match) {
      const id = match[1];
      if (state.route !== id) {
        state.route = id;
        state.samples = [];
        state.resultsLoadedFor = null;
        state.partialDone = null;
        state.batch = null;
        $("#batch-id").textContent = id;
        $("#results tbody").replaceChildren();
        $("#timing tbody").replaceChildren();
        $("#filter-type").value = "";
        $("#filter-custom-id").value = "";
      }
      show("detail");
      poll(() => refreshDetail(id));
    } else if (location.hash === "#/workspace") {
      state.route = "workspace";
      show("workspace");
      poll(refreshWorkspace);
    } else {
      state.route = "list";
      show("list");
      poll(refreshList);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#login-form").addEventListener("submit", signIn);
    $("#signout").addEventListener("click", () => signOut("Key forgotten."));
    $("#older").addEventListener("click", loadOlder);
    $("#cancel").addEventListener("click", () => state.batch && cancelBatch(state.batch.id));
    $("#abort").addEventListener("click", () => state.batch && cancelBatch(state.batch.id, true));
    $("#retry").addEventListener("click", () => state.batch && retryBatch(state.batch.id));
    $("#delete").addEventListener("click", () => state.batch && deleteBatch(state.batch.id));
    $("#download").addEventListener("click", download);
    // Filters apply as they change: no button to press.
    const reloadResults = () => loadResults(0).catch(reportError);
    $("#filter").addEventListener("submit", (event) => {
      event.preventDefault();
      reloadResults();
    });
    $("#filter-type").addEventListener("change", reloadResults);
    $("#filter-custom-id").addEventListener("input", debounce(reloadResults, 250));
    $("#results-prev").addEventListener("click", () => loadResults(state.resultsPage - 1).catch(reportError));
    $("#results-next").addEventListener("click", () => loadResults(state.resultsPage + 1).catch(reportError));
    // The list's filters apply as they change (and on Enter or the button).
    $("#metadata-filter").addEventListener("submit", (event) => {
      event.preventDefault();
      listFiltersChanged();
    });
    $("#filter-status").addEventListener("change", listFiltersChanged);
    $("#metadata-query").addEventListener("input", debounce(listFiltersChanged, 300));
    for (const th of document.querySelectorAll("#batches th[data-sort]")) {
      th.tabIndex = 0;
      th.addEventListener("click", () => sortBy(th.dataset.sort));
      th.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          sortBy(th.dataset.sort);
        }
      });
    }
    $("#usage-range").addEventListener("change", () => refreshWorkspace().catch(reportError));
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && state.key) route();
    });
    window.addEventListener("hashchange", route);
    state.key = sessionStorage.getItem(KEY_NAME) || localStorage.getItem(KEY_NAME);
    route();
  });
})();
