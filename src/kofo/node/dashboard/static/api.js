// The dashboard's client of the node's /v1 API: bearer token, problem+json errors, amounts
// as exact integers (wei do not fit a JS number), and the event stream with resume by seq.

const TOKEN_KEY = "kofo.token";
const SEQ_KEY = "kofo.lastSeq";
// Browsers cannot set headers on a WebSocket: the token goes as the subprotocol
// "kofo.bearer.<token>" (never in the URL, which lands in access logs); the node echoes it.
const TOKEN_PROTOCOL_PREFIX = "kofo.bearer.";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || "";
    this.problem = problem;
  }
}

// -- token -------------------------------------------------------------------------------

export function takeTokenFromFragment() {
  // "#token=<hex>" (optionally followed by "&view=..."): store it, then drop it from the
  // address bar and the history so it is not shown, bookmarked or shared by accident.
  const hash = location.hash.replace(/^#\/?/, "");
  const params = new URLSearchParams(hash.includes("=") ? hash : "");
  const token = params.get("token");
  if (token) {
    setToken(token);
    const view = params.get("view") || "node";
    history.replaceState(null, "", `${location.pathname}${location.search}#/${view}`);
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token.trim());
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// -- JSON with exact integers ------------------------------------------------------------

// Integers beyond 2^53 (wei, token units) become BigInt; the rest stay numbers. Uses the
// reviver's source text where the browser has it (Chrome 114+, Firefox 135+, Safari 18.4+),
// else quotes long digit runs outside strings before parsing.
const HAS_SOURCE = (() => {
  try {
    let seen = false;
    JSON.parse("1", (_k, v, ctx) => {
      seen = Boolean(ctx && ctx.source === "1");
      return v;
    });
    return seen;
  } catch {
    return false;
  }
})();

export function parseJson(text) {
  if (HAS_SOURCE) {
    return JSON.parse(text, (_k, v, ctx) =>
      typeof v === "number" && Number.isInteger(v) && !Number.isSafeInteger(v) && ctx
        && /^-?\d+$/.test(ctx.source) ? BigInt(ctx.source) : v);
  }
  return parseJsonQuoting(text);
}

// For browsers without the reviver's source: integer literals of 16+ digits outside strings
// become BigInt (a few safe ones among them too; amounts go through big() either way).
export function parseJsonQuoting(text) {
  // JSON cannot hold a raw NUL: the marker is written as the escape, and decodes to one.
  const marked = text.replace(/("(?:[^"\\]|\\.)*")|(?<![\d.])(-?\d{16,})(?![.\deE])/g,
    (m, str, num) => (str ? str : `"\\u0000big${num}"`));
  return JSON.parse(marked, (_k, v) =>
    typeof v === "string" && v.startsWith("\u0000big") ? BigInt(v.slice(4)) : v);
}

export function toJson(value) {
  // BigInt as bare digits (an exact JSON integer).
  const marks = [];
  const text = JSON.stringify(value, (_k, v) => {
    if (typeof v === "bigint") {
      marks.push(v.toString());
      return `\u0000${marks.length - 1}\u0000`;
    }
    return v;
  });
  return text.replace(/"\\u0000(\d+)\\u0000"/g, (_m, i) => marks[Number(i)]);
}

// -- requests ----------------------------------------------------------------------------

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json, application/problem+json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(`/v1${path}`, {
      method, headers, body: body === undefined ? undefined : toJson(body),
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, { title: "Node unreachable",
      detail: `Cannot reach the node (${err.message}). Is kofo node running?`, code: "unreachable" });
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = parseJson(text);
    } catch {
      data = { detail: text.slice(0, 300) };
    }
  }
  if (!res.ok) throw new ApiError(res.status, data && typeof data === "object" ? data : {});
  return data;
}

// Lists may come bare or in a page envelope ({items: [...], next: ...}).
export function items(data) {
  if (Array.isArray(data)) return data;
  if (data && typeof data === "object") {
    for (const key of ["items", "data", "results"]) if (Array.isArray(data[key])) return data[key];
  }
  return [];
}

// -- the event stream --------------------------------------------------------------------

// Streams events after the last seen seq over the WebSocket; when the socket cannot be opened
// (or the server refuses it), polls GET /v1/events instead, and retries the socket later.
// onStatus("live" | "polling" | "off"), onEvents([...events]).
export class EventStream {
  constructor({ onEvents, onStatus }) {
    this.onEvents = onEvents;
    this.onStatus = onStatus;
    this.lastSeq = Number(sessionStorage.getItem(SEQ_KEY) || 0);
    this.ws = null;
    this.stopped = false;
    this.failures = 0;
    this.pollTimer = null;
    this.retryTimer = null;
  }

  async start() {
    this.stopped = false;
    try {
      if (!this.lastSeq) await this.skipToTail();
    } catch {
      // the node is not answering yet: stream from where we are; polling retries until it does
    }
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.pollTimer);
    clearTimeout(this.retryTimer);
    if (this.ws) this.ws.close();
    this.ws = null;
  }

  async skipToTail() {
    // A fresh page shows the current state from REST; it only needs events from now on.
    try {
      const last = await api("/events/last");
      this.lastSeq = Math.max(this.lastSeq, Number(last.seq) || 0);
      return;
    } catch (err) {
      if (err.status !== 404) throw err;
    }
    for (let page = 0; page < 50; page += 1) { // a node without /events/last: page through
      const batch = items(await api(`/events?after=${this.lastSeq}&limit=1000`));
      if (!batch.length) return;
      this.accept(batch, false);
      if (batch.length < 1000) return;
    }
  }

  accept(batch, notify = true) {
    const fresh = batch.filter((e) => Number(e.seq) > this.lastSeq)
      .sort((a, b) => Number(a.seq) - Number(b.seq));
    if (!fresh.length) return;
    this.lastSeq = Number(fresh[fresh.length - 1].seq);
    sessionStorage.setItem(SEQ_KEY, String(this.lastSeq));
    if (notify) this.onEvents(fresh);
  }

  connect() {
    if (this.stopped) return;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${proto}//${location.host}/v1/events?after=${this.lastSeq}`;
    let opened = false;
    let ws;
    try {
      ws = new WebSocket(url, [TOKEN_PROTOCOL_PREFIX + getToken()]);
    } catch {
      this.fallBack();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      opened = true;
      this.failures = 0;
      clearTimeout(this.pollTimer);
      this.pollTimer = null;
      this.onStatus("live");
    };
    ws.onmessage = (msg) => {
      let data;
      try {
        data = parseJson(msg.data);
      } catch {
        return;
      }
      const batch = Array.isArray(data) ? data : items(data).length ? items(data) : [data];
      this.accept(batch.filter((e) => e && e.seq !== undefined));
    };
    ws.onclose = (ev) => {
      // 4401/4403: the node refused the token (4000 + the HTTP status); 4429: too many.
      if (ev.code === 4401 || ev.code === 4403) this.onStatus("auth");
      if (this.ws === ws) this.ws = null;
      if (this.stopped) return;
      if (!opened) this.failures += 1;
      this.fallBack();
    };
  }

  fallBack() {
    if (this.stopped) return;
    this.onStatus("polling");
    if (!this.pollTimer) this.poll();
    // Retry the socket: quickly after a drop, slowly if it never opens here.
    const wait = Math.min(30000, 1000 * 2 ** Math.min(this.failures, 5));
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), wait);
  }

  async poll() {
    if (this.stopped || this.ws?.readyState === WebSocket.OPEN) {
      this.pollTimer = null;
      return;
    }
    try {
      const batch = items(await api(`/events?after=${this.lastSeq}&limit=500`));
      if (this.stopped) return; // stopped while the request was out
      this.accept(batch);
      if (this.ws?.readyState !== WebSocket.OPEN) this.onStatus("polling");
    } catch (err) {
      if (this.stopped) return;
      this.onStatus(err.status === 401 || err.status === 403 ? "auth" : "off");
    }
    this.pollTimer = setTimeout(() => this.poll(), 1500);
  }
}
