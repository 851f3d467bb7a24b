// Formatting: amounts from integer base units (BigInt-exact), times, DOM building.

// The assets this node knows (from /v1/balances): id -> {symbol, decimals}.
export const assets = new Map();

export function setAssets(balances) {
  for (const b of balances) assets.set(b.asset, { symbol: b.symbol, decimals: Number(b.decimals) });
}

export function symbolOf(asset) {
  if (!asset) return "";
  const known = assets.get(asset);
  if (known) return known.symbol;
  const [chain, token] = String(asset).split(":");
  return token ? `${chain.toUpperCase()}:${token}` : chain.toUpperCase();
}

export function decimalsOf(asset) {
  const known = assets.get(asset);
  if (known) return known.decimals;
  return { btc: 8, ltc: 8, eth: 18 }[asset] ?? 0;
}

export function big(v) {
  if (typeof v === "bigint") return v;
  if (v === null || v === undefined || v === "") return 0n;
  return BigInt(typeof v === "number" ? Math.trunc(v) : String(v));
}

// 123456789n, 8 -> "1.23456789"; trailing zeros trimmed, digits grouped.
export function units(v, decimals) {
  const n = big(v);
  const neg = n < 0n;
  const s = (neg ? -n : n).toString().padStart(decimals + 1, "0");
  const whole = s.slice(0, s.length - decimals).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const frac = decimals ? s.slice(s.length - decimals).replace(/0+$/, "") : "";
  return `${neg ? "-" : ""}${whole}${frac ? `.${frac}` : ""}`;
}

export function amount(v, asset) {
  return `${units(v, decimalsOf(asset))} ${symbolOf(asset)}`;
}

// "0.01" with 8 decimals -> 1000000n; throws a message naming the problem.
export function parseUnits(text, decimals, field) {
  const s = String(text).trim().replace(/[,_ ]/g, "");
  if (!s) throw new Error(`${field}: enter an amount`);
  const m = /^(\d*)(?:\.(\d*))?$/.exec(s);
  if (!m || (m[1] === "" && !m[2])) throw new Error(`${field}: "${text}" is not a number`);
  const frac = m[2] || "";
  if (frac.length > decimals) {
    throw new Error(`${field}: at most ${decimals} decimal places (${frac.length} given)`);
  }
  return BigInt((m[1] || "0") + frac.padEnd(decimals, "0"));
}

// Ratio of two integers as a JS number (display only): each side rounds to the nearest
// double first, so the ratio keeps ~16 significant digits whatever the magnitudes.
export function ratio(num, den) {
  const d = Number(big(den));
  return d === 0 ? NaN : Number(big(num)) / d;
}

export function price(p) {
  if (!Number.isFinite(p)) return "–";
  if (p === 0) return "0";
  const digits = p >= 1000 ? 2 : p >= 1 ? 6 : 8;
  return p.toLocaleString("en-US", { maximumSignificantDigits: 10, maximumFractionDigits: digits });
}

export function when(seconds) {
  if (!seconds) return "–";
  const d = new Date(Number(seconds) * 1000);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

export function ago(seconds) {
  const s = Math.round(Date.now() / 1000 - Number(seconds));
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function duration(seconds) {
  let s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (d) return `${d}d ${h}h ${m}m`;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m ${String(s).padStart(2, "0")}s`;
  return `${m}m ${String(s).padStart(2, "0")}s`;
}

// -- DOM --------------------------------------------------------------------------------

// h("div", {class: "x", onclick: f}, "text", child, [children]): text is always text, never
// HTML, so nothing a peer sends can inject markup.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// A value people copy (id, txid, address): shown whole, wrapping, with a copy button.
export function copyable(value, label = "value") {
  if (!value) return h("span", { class: "muted" }, "–");
  const btn = h("button", { type: "button", class: "copy", title: `Copy ${label}`,
    "aria-label": `Copy ${label}` }, "Copy");
  btn.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(value);
      btn.textContent = "Copied";
    } catch {
      const range = document.createRange();
      range.selectNodeContents(btn.previousSibling);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      btn.textContent = "Selected";
    }
    setTimeout(() => { btn.textContent = "Copy"; }, 1500);
  });
  return h("span", { class: "copyable" }, h("code", { class: "hex" }, value), btn);
}

export function badge(state) {
  const s = String(state || "unknown");
  return h("span", { class: `badge s-${s.replace(/[^a-z_]/g, "")}` }, s.replace(/_/g, " "));
}

export function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) =>
        h("td", { "data-label": headers[i] }, c)))))));
}
