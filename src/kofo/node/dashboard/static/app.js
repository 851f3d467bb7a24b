// The KOFO node dashboard: one page, six views, live from the node's event stream.

import { ApiError, EventStream, api, clearToken, getToken, items, setToken,
  takeTokenFromFragment } from "./api.js";
import { drawDepth } from "./chart.js";
import { ago, amount, badge, big, copyable, decimalsOf, duration, h, parseUnits,
  price, ratio, setAssets, symbolOf, table, units, when } from "./fmt.js";

const $ = (sel) => document.querySelector(sel);
const state = { info: null, balances: [], events: [], view: null, stream: null };

// -- shell ------------------------------------------------------------------------------

function showBanner(message) {
  const el = $("#banner");
  el.textContent = message || "";
  el.hidden = !message;
}

function errorBox(err) {
  const code = err instanceof ApiError && err.code ? ` (${err.code})` : "";
  return h("div", { class: "error", role: "alert" }, `${err.message}${code}`);
}

function section(title, subtitle, ...body) {
  return h("section", { class: "card" },
    h("div", { class: "card-head" }, h("h2", {}, title),
      subtitle ? h("span", { class: "muted small" }, subtitle) : null),
    ...body);
}

function setLive(status) {
  const el = $("#live");
  el.dataset.state = status;
  el.textContent = { live: "live", polling: "polling", off: "offline", auth: "token refused" }[status];
  el.title = {
    live: "Receiving the node's event stream over a WebSocket",
    polling: "The WebSocket is not available; asking the node for events every 1.5 s",
    off: "The node does not answer",
    auth: "The node refused the token",
  }[status];
}

const ALL_KINDS = new Set(["node", "offer", "trade", "swap", "order", "ledger"]);
let basicsTimer = null;

function retryBasics() {
  clearTimeout(basicsTimer);
  basicsTimer = setTimeout(async () => {
    if (!getToken()) return;
    try {
      await loadBasics();
    } catch (err) {
      showBanner(`${err.message}${err.code ? ` (${err.code})` : ""}`);
      retryBasics();
      return;
    }
    showBanner("");
    if (state.view && state.view.refresh) state.view.refresh(ALL_KINDS, []);
  }, 3000);
}

// Back from offline (the node restarted, the network returned): reload what the page shows,
// since events may have been missed by nobody but the views may show an error.
function onStatus(status) {
  const was = $("#live").dataset.state;
  setLive(status);
  if (was === "off" && (status === "live" || status === "polling")) {
    loadBasics().then(() => {
      showBanner("");
      if (state.view && state.view.refresh) state.view.refresh(ALL_KINDS, []);
    }, () => {});
  }
}

function needLogin(message) {
  if (state.stream) state.stream.stop();
  state.stream = null;
  $("#login").hidden = false;
  $("#view").replaceChildren();
  $("#logout").hidden = true;
  $("#tabs").classList.add("disabled");
  showBanner(message || "");
  setLive("off");
  $("#token-input").focus();
}

// Reads overlap (each event batch, each view): a read that lands after a later-started one did
// is not kept (it would show the balances from before a trade reserved them, with no event left
// to correct them); its caller finds the newer state in place.
let basicsStarted = 0;
const basicsKept = { info: 0, balances: 0 };

async function loadBasics() {
  const seq = ++basicsStarted;
  // Each on its own: a node that cannot say its chain heights can still say its balances.
  const [info, balances] = await Promise.allSettled([api("/info"), api("/balances")]);
  if (balances.status === "fulfilled" && seq > basicsKept.balances) {
    basicsKept.balances = seq;
    state.balances = items(balances.value);
    setAssets(state.balances);
  }
  if (info.status === "rejected") throw info.reason;
  if (balances.status === "rejected") throw balances.reason;
  if (seq < basicsKept.info) return;
  basicsKept.info = seq;
  state.info = info.value;
  const i = state.info;
  $("#node-name").textContent = i.name || "";
  document.title = `KOFO · ${i.name || "node"}`;
  $("#foot-info").textContent = `kofo ${i.version || ""} · node ${String(i.node_id || "").slice(0, 16)}…`;
}

async function start() {
  if (state.stream) state.stream.stop(); // a new token (login, a #token= link): one stream only
  state.stream = null;
  $("#login").hidden = true;
  $("#logout").hidden = false;
  $("#tabs").classList.remove("disabled");
  try {
    await loadBasics();
    showBanner("");
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      clearToken();
      needLogin(`The node refused this token: ${err.message}`);
      return;
    }
    // The node is up but failing (or down): say why, show what we can, and keep asking.
    showBanner(`${err.message}${err.code ? ` (${err.code})` : ""}`);
    retryBasics();
  }
  state.stream = new EventStream({ onEvents, onStatus });
  state.stream.start().catch((err) => showBanner(err.message));
  route();
}

// -- live updates -----------------------------------------------------------------------

let pendingKinds = new Set();
let pendingTimer = null;

function onEvents(events) {
  for (const e of events) {
    state.events.unshift(e);
    pendingKinds.add(e.kind);
  }
  state.events.length = Math.min(state.events.length, 50);
  clearTimeout(pendingTimer);
  pendingTimer = setTimeout(async () => {
    const kinds = pendingKinds;
    pendingKinds = new Set();
    if (kinds.has("node") || kinds.has("swap") || kinds.has("trade")) {
      try { await loadBasics(); } catch { /* shown by the view */ }
    }
    if (state.view && state.view.refresh) state.view.refresh(kinds, events);
  }, 120);
}

// Countdowns tick every second without asking the node.
setInterval(() => {
  const now = Date.now() / 1000;
  for (const el of document.querySelectorAll("[data-deadline]")) {
    const left = Number(el.dataset.deadline) - now;
    el.textContent = left > 0 ? `${el.dataset.prefix || ""}${duration(left)}` : el.dataset.expired;
    el.classList.toggle("expired", left <= 0);
  }
}, 1000);

// -- router -----------------------------------------------------------------------------

const VIEWS = { node: nodeView, book: bookView, trade: tradeView, swaps: swapsView,
  ledger: ledgerView, peers: peersView };

function route() {
  if (!getToken()) return needLogin();
  const [name, arg] = location.hash.replace(/^#\/?/, "").split("/");
  const key = VIEWS[name] ? name : "node";
  for (const a of document.querySelectorAll("#tabs a")) {
    a.classList.toggle("active", a.dataset.view === key);
    if (a.dataset.view === key) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (state.view && state.view.leave) state.view.leave();
  const root = h("div", { class: `view view-${key}`, id: `view-${key}` });
  $("#view").replaceChildren(root);
  state.view = VIEWS[key](root, arg ? decodeURIComponent(arg) : "");
}

// Run an async load into a slot, showing a spinner first and the problem's detail on failure.
// Loads into one slot overlap (an event arrives while a read is on its way; a slow read): only
// the last one started is shown. One that ends after a later one started is dropped, so a read
// begun before a change (a new trade, a swap step, another pair) never replaces one made after
// it, which no further event would correct. `load(latest)`: a load that keeps state of its own
// (a paging cursor, the chart) sets it only while latest() is true.
const fillSeq = new WeakMap();
async function fill(slot, load) {
  const seq = (fillSeq.get(slot) || 0) + 1;
  fillSeq.set(slot, seq);
  const latest = () => fillSeq.get(slot) === seq;
  if (!slot.childElementCount) slot.replaceChildren(h("p", { class: "loading" }, "Loading…"));
  try {
    const content = await load(latest);
    if (latest()) slot.replaceChildren(...[content].flat());
  } catch (err) {
    if (!latest()) return;
    if (err.status === 401) {
      clearToken();
      needLogin(`The node refused the token: ${err.message}`);
      return;
    }
    slot.replaceChildren(errorBox(err));
  }
}

// -- Node -------------------------------------------------------------------------------

function nodeView(root) {
  const infoSlot = h("div", { class: "grid two" });
  const balSlot = h("div");
  const feedSlot = h("div");
  root.append(infoSlot,
    section("Balances", "available to trade · reserved by open quotes and swaps", balSlot),
    section("Recent activity", "events from this node, newest first", feedSlot));
  const render = () => {
    fill(infoSlot, async () => {
      await loadBasics();
      const i = state.info;
      const chains = (i.chains || []).map((c) => [
        h("strong", {}, String(c.chain).toUpperCase()),
        c.height === null || c.height === undefined ? badge("unreachable") : `block ${c.height}`,
        c.error ? h("span", { class: "bad-text" }, c.error) : h("span", { class: "muted" }, "ok"),
        i.addresses && i.addresses[c.chain] ? copyable(i.addresses[c.chain], "address") : "–",
      ]);
      return [
        section("This node", `up since ${when(i.started_at)}`,
          h("dl", { class: "facts" },
            h("dt", {}, "Name"), h("dd", {}, i.name),
            h("dt", {}, "Node id"), h("dd", {}, copyable(i.node_id, "node id")),
            h("dt", {}, "Version"), h("dd", {}, i.version),
            h("dt", {}, "Listens for peers"), h("dd", {}, h("code", {}, i.p2p)),
            h("dt", {}, "Peers"), h("dd", {}, h("a", { href: "#/peers" }, `${i.peers} connected`)))),
        section("Ledger and chains", "",
          h("dl", { class: "facts" },
            h("dt", {}, "Ledger"), h("dd", {}, h("code", {}, i.ledger_url)),
            h("dt", {}, "Ledger height"), h("dd", {},
              i.ledger_height === null || i.ledger_height === undefined
                ? h("span", { class: "bad-text" }, i.ledger_error || "unreachable")
                : String(i.ledger_height))),
          table(["Chain", "Height", "Status", "Your address"], chains, "No chains configured.")),
      ];
    });
    fill(balSlot, async () => table(["Asset", "Available", "Reserved", "Total"],
      items(await api("/balances")).map((b) => [
        h("strong", {}, b.symbol),
        h("span", { class: "num", title: `${b.available} base units` }, units(b.available, b.decimals)),
        h("span", { class: "num muted", title: `${b.reserved} base units` }, units(b.reserved, b.decimals)),
        h("span", { class: "num" }, units(big(b.available) + big(b.reserved), b.decimals)),
      ]), "This node holds no assets yet."));
    fill(feedSlot, async () => feed());
  };
  render();
  return { refresh: render };
}

function feed() {
  if (!state.events.length) {
    return h("p", { class: "empty" }, "Nothing has happened since this page opened. Trades, swaps, "
      + "offers and ledger commits appear here as they happen.");
  }
  return h("ol", { class: "feed" }, state.events.slice(0, 20).map((e) => {
    const d = e.data || {};
    const what = d.state || d.phase || d.status || d.event || "";
    const id = d.swap_id || d.trade_id || d.order_id || d.offer_id || "";
    return h("li", {}, h("span", { class: "kind" }, e.kind), what ? badge(what) : null,
      id ? h("code", { class: "hex small" }, id) : null,
      h("span", { class: "muted small" }, ago(e.at)));
  }));
}

// -- Order book -------------------------------------------------------------------------

function assetOptions(selected) {
  const ids = state.balances.map((b) => b.asset);
  return ids.map((id) => h("option", { value: id, selected: id === selected }, symbolOf(id)));
}

function pairFromStorage() {
  const ids = state.balances.map((b) => b.asset);
  const saved = (sessionStorage.getItem("kofo.pair") || "").split("|");
  const base = ids.includes(saved[0]) ? saved[0] : ids[0] || "btc";
  const quote = ids.includes(saved[1]) && saved[1] !== base ? saved[1]
    : ids.find((x) => x !== base) || "eth";
  return [base, quote];
}

function bookView(root) {
  let [base, quote] = pairFromStorage();
  const baseSel = h("select", { id: "book-base", "aria-label": "Base asset" }, assetOptions(base));
  const quoteSel = h("select", { id: "book-quote", "aria-label": "Quote asset" }, assetOptions(quote));
  const flip = h("button", { type: "button", class: "ghost", title: "Swap base and quote" }, "⇄");
  const canvas = h("canvas", { class: "depth", id: "depth", role: "img",
    "aria-label": "Depth chart" });
  const summary = h("div", { class: "book-summary" });
  const tables = h("div");
  root.append(
    section("Order book", "standing offers this node knows, from every maker it hears",
      h("div", { class: "pair" }, h("label", {}, "Base", baseSel), flip,
        h("label", {}, "Quote", quoteSel)),
      summary, h("div", { class: "chart-box" }, canvas)),
    tables);
  let last = null;
  const onPair = () => {
    base = baseSel.value;
    quote = quoteSel.value;
    sessionStorage.setItem("kofo.pair", `${base}|${quote}`);
    render();
  };
  baseSel.addEventListener("change", onPair);
  quoteSel.addEventListener("change", onPair);
  flip.addEventListener("click", () => {
    [baseSel.value, quoteSel.value] = [quote, base];
    onPair();
  });

  let hover = null;
  const draw = () => last && drawDepth(canvas, last, hover);
  const onResize = () => draw();
  // A crosshair with the price and the depth there, following the pointer (or a tap).
  canvas.addEventListener("pointermove", (ev) => {
    hover = { x: ev.clientX - canvas.getBoundingClientRect().left };
    draw();
  });
  canvas.addEventListener("pointerleave", () => {
    hover = null;
    draw();
  });
  window.addEventListener("resize", onResize);

  async function render() {
    if (base === quote) {
      tables.replaceChildren(h("p", { class: "empty card" }, "Pick two different assets."));
      last = { bids: [], asks: [], base: symbolOf(base), quote: symbolOf(quote) };
      draw();
      return;
    }
    await fill(tables, async (latest) => {
      // bids: makers buying the base, paying the quote; asks: makers selling the base.
      const [bidBook, askBook] = await Promise.all([
        api(`/book?buy=${encodeURIComponent(base)}&sell=${encodeURIComponent(quote)}`),
        api(`/book?buy=${encodeURIComponent(quote)}&sell=${encodeURIComponent(base)}`),
      ]);
      // a book read for the pair shown before a switch must not be drawn under the new pair
      if (!latest()) return [];
      const scaleBQ = 10 ** (decimalsOf(base) - decimalsOf(quote));
      const bids = items(bidBook.offers ?? bidBook).map((o) => {
        const p = ratio(o.spec.price_num, o.spec.price_den) * scaleBQ; // quote per base
        return { o, price: p, amount: ratio(o.spec.max_in, 10n ** BigInt(decimalsOf(base))),
          min: o.spec.min_in, max: o.spec.max_in, asset: base };
      });
      const asks = items(askBook.offers ?? askBook).map((o) => {
        // the maker pays base for quote: quote per base is the inverse of its price
        const p = ratio(o.spec.price_den, o.spec.price_num) * scaleBQ;
        const maxBase = ratio(big(o.spec.max_in) * big(o.spec.price_num),
          big(o.spec.price_den) * 10n ** BigInt(decimalsOf(base)));
        return { o, price: p, amount: maxBase, min: o.spec.min_in, max: o.spec.max_in, asset: quote };
      });
      last = { bids, asks, base: symbolOf(base), quote: symbolOf(quote) };
      draw();
      const bestBid = bids.length ? Math.max(...bids.map((b) => b.price)) : null;
      const bestAsk = asks.length ? Math.min(...asks.map((a) => a.price)) : null;
      summary.replaceChildren(
        h("div", { class: "stat good" }, h("span", {}, "Best bid"),
          h("strong", {}, bestBid === null ? "–" : price(bestBid))),
        h("div", { class: "stat bad" }, h("span", {}, "Best ask"),
          h("strong", {}, bestAsk === null ? "–" : price(bestAsk))),
        h("div", { class: "stat" }, h("span", {}, "Spread"),
          h("strong", {}, bestBid !== null && bestAsk !== null ? price(bestAsk - bestBid) : "–")),
        h("div", { class: "stat" }, h("span", {}, "Unit"),
          h("strong", {}, `${symbolOf(quote)} per ${symbolOf(base)}`)));
      const rows = (list, desc) => [...list].sort((a, b) => (desc ? b.price - a.price : a.price - b.price))
        .map((x) => [
          h("span", { class: "num" }, price(x.price)),
          h("span", { class: "num" }, `${units(x.min, decimalsOf(x.asset))} – ${amount(x.max, x.asset)}`),
          h("span", {}, x.o.own ? badge("yours") : copyable(x.o.maker, "maker id")),
          h("span", { "data-deadline": x.o.expires_at, "data-expired": "expired" },
            duration(x.o.expires_at - Date.now() / 1000)),
        ]);
      return [
        section(`Bids · makers buying ${symbolOf(base)}`, `they pay ${symbolOf(quote)}`,
          table(["Price", "Takes", "Maker", "Expires in"], rows(bids, true),
            `No maker is buying ${symbolOf(base)} for ${symbolOf(quote)} right now.`)),
        section(`Asks · makers selling ${symbolOf(base)}`, `they take ${symbolOf(quote)}`,
          table(["Price", "Takes", "Maker", "Expires in"], rows(asks, false),
            `No maker is selling ${symbolOf(base)} for ${symbolOf(quote)} right now.`)),
      ];
    });
  }
  render();
  return {
    refresh: (kinds) => { if (kinds.has("offer")) render(); },
    leave: () => window.removeEventListener("resize", onResize),
  };
}

// -- Trade ------------------------------------------------------------------------------

function tradeView(root, tradeId) {
  const [base, quote] = pairFromStorage();
  const sell = h("select", { id: "trade-sell", name: "sell" }, assetOptions(base));
  const buy = h("select", { id: "trade-buy", name: "buy" }, assetOptions(quote));
  const amountIn = h("input", { id: "trade-amount", name: "amount", inputmode: "decimal",
    autocomplete: "off", placeholder: "0.0", required: true });
  const minRecv = h("input", { id: "trade-min", name: "min_receive", inputmode: "decimal",
    autocomplete: "off", placeholder: "best quote less 1 %" });
  const deadline = h("input", { id: "trade-deadline", name: "deadline_s", type: "number",
    min: 5, max: 3600, value: 60 });
  const availHint = h("span", { class: "hint", id: "trade-available" });
  const formError = h("div", { class: "form-error", role: "alert" });
  const quoteBtn = h("button", { type: "button", class: "ghost", id: "get-quotes" }, "Get quotes");
  const tradeBtn = h("button", { type: "submit", id: "place-trade", disabled: true }, "Place trade");
  const form = h("form", { class: "trade-form", id: "trade-form", novalidate: true },
    h("div", { class: "field" }, h("label", { for: "trade-sell" }, "You pay"),
      h("div", { class: "row keep" }, amountIn, sell), availHint),
    h("div", { class: "field" }, h("label", { for: "trade-buy" }, "You receive"), buy),
    h("div", { class: "row" },
      h("div", { class: "field" }, h("label", { for: "trade-min" }, "Receive at least"), minRecv),
      h("div", { class: "field narrow" }, h("label", { for: "trade-deadline" }, "Give up after (s)"),
        deadline)),
    formError,
    h("div", { class: "actions" }, quoteBtn, tradeBtn));
  const quotesSlot = h("div", { id: "quotes" },
    h("p", { class: "empty" }, "Enter an amount to ask the network for quotes."));
  const currentSlot = h("div", { id: "current-trade" });
  const listSlot = h("div", { id: "trades" });
  root.append(h("div", { class: "grid two" },
    section("New trade", "the network answers with quotes; the best one is taken", form),
    section("Live quotes", "refreshed every 10 s while this form is filled", quotesSlot)),
  currentSlot,
  section("Your trades", "newest first", listSlot));

  let request = null;
  let bestReceive = 0n; // the best live quote: an empty "Receive at least" takes it less 1 %
  let bestPartial = null; // the best quote fills less than asked: "n of m" (no floor from it)
  let quoteTimer = null;
  let quoteSeq = 0;
  let current = tradeId || "";

  const showAvailable = () => {
    const b = state.balances.find((x) => x.asset === sell.value);
    availHint.textContent = b ? `Available: ${units(b.available, b.decimals)} ${b.symbol}` : "";
  };
  showAvailable();

  function readForm() {
    if (sell.value === buy.value) throw new Error("You pay and You receive must be different assets");
    const amt = parseUnits(amountIn.value, decimalsOf(sell.value), "You pay");
    if (amt <= 0n) throw new Error("You pay: the amount must be more than zero");
    const have = state.balances.find((b) => b.asset === sell.value);
    if (have && amt > big(have.available)) {
      throw new Error(`You pay: more than the ${units(have.available, have.decimals)} `
        + `${have.symbol} available`);
    }
    const min = minRecv.value.trim() ? parseUnits(minRecv.value, decimalsOf(buy.value),
      "Receive at least") : 0n;
    const dl = Number(deadline.value);
    if (!Number.isInteger(dl) || dl < 5 || dl > 3600) {
      throw new Error("Give up after: a whole number of seconds from 5 to 3600");
    }
    return { sell: sell.value, amount: amt, buy: buy.value, min_receive: min, deadline_s: dl };
  }

  async function askQuotes() {
    clearTimeout(quoteTimer);
    formError.textContent = "";
    try {
      request = readForm();
    } catch (err) {
      request = null;
      tradeBtn.disabled = true;
      if (amountIn.value.trim()) formError.textContent = err.message;
      return;
    }
    const mine = ++quoteSeq;
    quoteBtn.disabled = true;
    quotesSlot.classList.add("busy");
    try {
      const quotes = items(await api("/quotes", { method: "POST", body: request }))
        .sort((a, b) => (big(b.receive) > big(a.receive) ? 1 : big(b.receive) < big(a.receive) ? -1 : 0));
      if (mine !== quoteSeq) return;
      bestReceive = quotes.length ? big(quotes[0].receive) : 0n;
      bestPartial = quotes.length && big(quotes[0].amount_in) < request.amount
        ? `${amount(quotes[0].amount_in, request.sell)} of the ${amount(request.amount, request.sell)}`
        : null;
      quotesSlot.replaceChildren(...[renderQuotes(quotes, request)].flat());
      tradeBtn.disabled = !quotes.length;
    } catch (err) {
      if (mine !== quoteSeq) return;
      quotesSlot.replaceChildren(errorBox(err));
      tradeBtn.disabled = true;
    } finally {
      quoteBtn.disabled = false;
      quotesSlot.classList.remove("busy");
    }
    quoteTimer = setTimeout(askQuotes, 10000);
  }

  function renderQuotes(quotes, req) {
    if (!quotes.length) {
      return h("p", { class: "empty" }, `No maker answered for ${amount(req.amount, req.sell)} → `
        + `${symbolOf(req.buy)}. Try a smaller amount or another pair.`);
    }
    const best = quotes[0];
    const hops = Number(best.hops);
    const scale = 10 ** (decimalsOf(req.sell) - decimalsOf(req.buy));
    // a quote may fill less than asked (the maker's liquidity): say so, price what it fills
    const filled = big(best.amount_in);
    const part = filled < req.amount;
    return [
      h("div", { class: "chosen", id: "chosen-quote" },
        h("div", { class: "big" }, amount(best.receive, req.buy)),
        h("div", { class: "muted" }, `for ${amount(filled, req.sell)}`
          + `${part ? ` (only part of the ${amount(req.amount, req.sell)} asked)` : ""} · `
          + `${price(ratio(best.receive, filled) * scale)} ${symbolOf(req.buy)} per ${symbolOf(req.sell)}`),
        h("div", { class: "route" }, h("span", { class: "route-label" }, "Chosen route"),
          h("span", { class: "hops", id: "chosen-hops" },
            hops <= 1 ? "direct · 1 hop" : `${hops} hops through relays`),
          h("span", { class: "muted small", "data-deadline": Number(best.valid_until_ms) / 1000,
            "data-prefix": "valid for ", "data-expired": "expired, refreshing…" }, ""))),
      table(["Receive", "For", "Hops", "Valid for"], quotes.map((q, i) => [
        h("span", { class: `num${i === 0 ? " best" : ""}` }, amount(q.receive, req.buy)),
        h("span", { class: "num" }, amount(q.amount_in, req.sell)),
        String(q.hops),
        h("span", { "data-deadline": Number(q.valid_until_ms) / 1000, "data-expired": "expired" }, ""),
      ]), ""),
    ];
  }

  let debounce = null;
  for (const el of [amountIn, minRecv, deadline, sell, buy]) {
    el.addEventListener("input", () => {
      showAvailable();
      tradeBtn.disabled = true;
      clearTimeout(debounce);
      debounce = setTimeout(askQuotes, 500);
    });
  }
  quoteBtn.addEventListener("click", askQuotes);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    formError.textContent = "";
    let req;
    try {
      req = readForm();
    } catch (err) {
      formError.textContent = err.message;
      return;
    }
    tradeBtn.disabled = true;
    tradeBtn.textContent = "Placing…";
    try {
      if (req.min_receive === 0n) {
        // The node refuses a trade without a price floor (a lone maker could quote 1 unit):
        // an empty "Receive at least" takes the best quote less 1 % (asked now if none is in).
        let best = bestReceive;
        if (best <= 0n) {
          const qs = items(await api("/quotes", { method: "POST", body: req }));
          for (const q of qs) if (big(q.receive) > best) best = big(q.receive);
        }
        if (best <= 0n) throw new Error("Receive at least: no maker answered; set it yourself");
        if (bestPartial) {
          // its 1 % less would floor the whole amount at the price of a part: refuse
          throw new Error(`Receive at least: the best quote fills only ${bestPartial}; `
            + "pay less, or set the least you accept for the whole amount yourself");
        }
        req.min_receive = (best * 99n) / 100n;
      }
      const trade = await api("/trades", { method: "POST", body: req });
      current = trade.trade_id;
      history.replaceState(null, "", `#/trade/${encodeURIComponent(current)}`);
      renderCurrent(trade);
      renderList();
    } catch (err) {
      formError.replaceChildren(errorBox(err));
    } finally {
      tradeBtn.textContent = "Place trade";
      tradeBtn.disabled = false;
    }
  });

  let shown = null; // the trade view on screen: a read that started earlier must not replace it
  function renderCurrent(t) {
    if (!t) {
      shown = null;
      currentSlot.replaceChildren();
      return;
    }
    const done = ["redeemed", "refunded", "failed", "cancelled"].includes(t.state);
    const at = Number(t.updated_at);
    if (shown && shown.id === t.trade_id && (at < shown.at || (shown.done && !done))) {
      return; // a stale answer (an event's read overtaken by the cancel's reply): keep the newer
    }
    shown = { id: t.trade_id, at, done };
    const cancel = !done && ["quoting", "ordering"].includes(t.state)
      ? h("button", { type: "button", class: "ghost danger", onclick: async () => {
        try {
          renderCurrent(await api(`/trades/${encodeURIComponent(t.trade_id)}/cancel`, { method: "POST" }));
        } catch (err) { currentSlot.append(errorBox(err)); }
      } }, "Cancel trade") : null;
    currentSlot.replaceChildren(section("Trade in progress", "",
      h("div", { class: "trade-head" }, badge(t.state),
        h("span", {}, `${amount(t.amount, t.sell)} → `,
          t.receive !== null && t.receive !== undefined ? amount(t.receive, t.buy) : symbolOf(t.buy)),
        t.hops ? h("span", { class: "muted" }, `${t.hops} hop${Number(t.hops) === 1 ? "" : "s"}`) : null,
        t.height ? h("span", { class: "muted" }, `committed at ledger height ${t.height}`) : null,
        cancel),
      h("div", { class: "kv" }, h("span", { class: "muted" }, "Trade id"), copyable(t.trade_id, "trade id")),
      t.order_id ? h("div", { class: "kv" }, h("span", { class: "muted" }, "Order id"),
        copyable(t.order_id, "order id")) : null,
      t.error ? h("div", { class: "error" }, t.error) : null,
      h("ol", { class: "phases", id: "trade-phases" }, (t.phases || []).map((p) =>
        h("li", { class: "done" }, h("strong", {}, p.phase.replace(/_/g, " ")),
          h("span", { class: "muted small" }, when(p.at))))),
      ["settling", "redeemed", "refunded"].includes(t.state)
        ? h("a", { href: "#/swaps", class: "button-link" }, "Follow the swap legs →") : null));
  }

  async function loadCurrent() {
    if (!current) return;
    try {
      renderCurrent(await api(`/trades/${encodeURIComponent(current)}`));
    } catch (err) {
      currentSlot.replaceChildren(errorBox(err));
    }
  }

  // The newest page re-read on each event; older pages the user asked for kept below it.
  let olderTrades = [];
  let nextTrades = null;
  const moreTrades = h("button", { type: "button", class: "ghost more", id: "older-trades" },
    "Show older trades");
  moreTrades.addEventListener("click", async () => {
    moreTrades.disabled = true;
    try {
      const page = await api(`/trades?limit=20&before=${encodeURIComponent(nextTrades)}`);
      olderTrades = olderTrades.concat(items(page));
      nextTrades = page && page.next !== undefined ? page.next : null;
    } catch (err) {
      listSlot.append(errorBox(err));
    } finally {
      moreTrades.disabled = false;
    }
    renderList();
  });

  function renderList() {
    return fill(listSlot, async (latest) => {
      const page = await api("/trades?limit=20");
      let trades = items(page);
      if (latest() && !olderTrades.length) nextTrades = page && page.next !== undefined ? page.next : null;
      const ids = new Set(trades.map((t) => t.trade_id));
      trades = trades.concat(olderTrades.filter((t) => !ids.has(t.trade_id)));
      const more = nextTrades !== null && nextTrades !== undefined ? moreTrades : null;
      return [table(["When", "State", "Pay", "Receive", "Hops", "Trade id"], trades.map((t) => [
        h("span", { class: "small" }, ago(t.created_at)),
        badge(t.state),
        amount(t.amount, t.sell),
        t.receive !== null && t.receive !== undefined ? amount(t.receive, t.buy) : symbolOf(t.buy),
        t.hops ?? "–",
        h("a", { href: `#/trade/${encodeURIComponent(t.trade_id)}`, class: "hex small" }, t.trade_id),
      ]), "No trades yet. Fill the form above to make your first one."), more].filter(Boolean);
    });
  }

  loadCurrent();
  renderList();
  return {
    refresh: (kinds) => {
      showAvailable(); // the balances were re-read: a trade reserves and frees funds
      if (kinds.has("trade") || kinds.has("swap") || kinds.has("order")) {
        loadCurrent();
        renderList();
      }
    },
    leave: () => {
      clearTimeout(quoteTimer);
      clearTimeout(debounce);
      quoteSeq += 1;
    },
  };
}

// -- Swaps ------------------------------------------------------------------------------

// The legs as the page shows them: the node's txids and states where it gives them; else
// read from the swap's own history (the engine journals each step with its txid). The own leg
// is the initiator's for the initiator, the participant's for the participant.
//   own leg:     lock_sent / locked (txid: the lock) -> locked; refund_* (txid) -> refunded
//   counter leg: counter_audited -> locked; redeem_* / redeemed (txid: our redeem) -> redeemed
// A participant that redeemed learned the secret from its own leg's redeem: that leg is
// redeemed too (by the initiator, whose txid the journal may not hold).
function deriveLegs(s) {
  const legs = (s.legs || []).map((l) => ({ ...l }));
  if (legs.length !== 2) return legs.map((l) => ({ ...l, state: simpleState(l, s) }));
  const events = s.events || [];
  const own = s.role === "participant" ? 1 : 0;
  const ctr = 1 - own;
  const last = (names) => [...events].reverse().find((e) => names.includes(e.state));
  const txOf = (names) =>
    ([...events].reverse().find((e) => names.includes(e.state) && e.txid) || {}).txid || "";
  const lockEv = last(["lock_sent", "locked"]);
  const refundEv = last(["refund_sent", "refunded"]);
  const auditEv = last(["counter_audited"]);
  const redeemEv = last(["redeem_sent", "redeemed"]);
  if (!legs[own].lock_txid && lockEv) legs[own].lock_txid = txOf(["lock_sent", "locked"]);
  if (!legs[own].spend_txid && refundEv) legs[own].spend_txid = txOf(["refund_sent", "refunded"]);
  if (!legs[ctr].spend_txid && redeemEv) legs[ctr].spend_txid = txOf(["redeem_sent", "redeemed"]);
  for (const [i, seenLock, spend] of [
    [own, Boolean(lockEv), refundEv ? "refunded" : s.role === "participant" && redeemEv ? "redeemed" : ""],
    [ctr, Boolean(auditEv), redeemEv ? "redeemed" : ""],
  ]) {
    const leg = legs[i];
    if (leg.state && leg.state !== "absent") continue;
    leg.state = spend || (leg.spend_txid ? simpleState(leg, s)
      : leg.lock_txid || seenLock ? "locked" : "pending");
  }
  return legs;
}

// One leg alone: a spend is a redeem or a refund as the history's event for that txid says.
function simpleState(leg, swap) {
  if (leg.state && leg.state !== "absent") return leg.state;
  if (leg.spend_txid) {
    const ev = (swap.events || []).find((e) => e.txid && e.txid === leg.spend_txid);
    if (ev && /refund/.test(ev.state)) return "refunded";
    if (ev && /redeem/.test(ev.state)) return "redeemed";
    return swap.state === "refunded" ? "refunded" : "redeemed";
  }
  if (leg.lock_txid) return "locked";
  return "pending";
}

function ownAddress(addr) {
  const mine = Object.values((state.info && state.info.addresses) || {});
  return mine.some((a) => a && String(a).toLowerCase() === String(addr).toLowerCase());
}

function chainHeight(chain) {
  const c = ((state.info && state.info.chains) || []).find((x) => x.chain === chain);
  return c ? c.height : null;
}

const ENDED = ["redeemed", "refunded", "aborted", "rejected", "lost"];

function deadlineOf(leg, ls, swapState) {
  const exp = leg.expiry || {};
  // a leg never locked in a swap that ended has no deadline to count down to
  if (ls === "pending" && ENDED.includes(swapState)) {
    return h("span", { class: "muted" }, "never locked");
  }
  const done = ls === "redeemed" || ls === "refunded";
  if (exp.unit === "unix") {
    if (done) return h("span", { class: "muted" }, `expiry was ${when(exp.value)}`);
    return h("span", {}, "refundable in ", h("strong", { "data-deadline": exp.value,
      "data-expired": "now (expired)" }, duration(Number(exp.value) - Date.now() / 1000)));
  }
  if (exp.unit === "height") {
    const now = chainHeight(leg.chain);
    const left = now === null || now === undefined ? null : Number(exp.value) - Number(now);
    if (done) return h("span", { class: "muted" }, `expiry was block ${exp.value}`);
    return h("span", {}, `refundable at block ${exp.value}`,
      left === null ? "" : h("strong", {}, left > 0 ? ` · ${left} blocks to go` : " · expired"));
  }
  return h("span", { class: "muted" }, "–");
}

function swapCard(s) {
  // which leg is ours follows from the role (the initiator pays the first leg); the addresses
  // only as a fallback (a Bitcoin leg names HTLC keys, not the wallet's address)
  const two = (s.legs || []).length === 2 && (s.role === "initiator" || s.role === "participant");
  const ownLeg = s.role === "participant" ? 1 : 0;
  const legs = deriveLegs(s).map((leg, i) => {
    const ls = leg.state;
    const receiving = two ? i !== ownLeg : ownAddress(leg.recipient);
    const paying = two ? i === ownLeg : ownAddress(leg.sender);
    const asset = leg.token ? `${leg.chain}:${leg.token}` : leg.chain;
    const step = (label, done, txid, extra) => h("li", { class: done ? "done" : "todo" },
      h("div", { class: "step-head" }, h("strong", {}, label), extra),
      txid ? copyable(txid, `${label} txid`) : done ? null
        : h("span", { class: "muted small" }, "waiting"));
    const spendLabel = ls === "refunded" ? "Refunded" : "Redeemed";
    return h("div", { class: "leg", "data-leg": i, "data-leg-state": ls },
      h("div", { class: "leg-head" },
        h("span", { class: "chain" }, String(leg.chain).toUpperCase()),
        h("strong", {}, amount(leg.amount, asset)),
        h("span", { class: "muted small" }, receiving ? "you receive" : paying ? "you pay" : `leg ${i + 1}`),
        h("span", { class: "leg-state" }, badge(ls))),
      h("ol", { class: "timeline" },
        step("Locked", ls !== "pending", leg.lock_txid,
          leg.lock_txid && leg.confirmations !== null && leg.confirmations !== undefined
            ? h("span", { class: "conf" }, `${leg.confirmations} confirmation${Number(leg.confirmations) === 1 ? "" : "s"}`)
            : null),
        step(ls === "redeemed" || ls === "refunded" ? spendLabel : "Redeem or refund",
          ls === "redeemed" || ls === "refunded", leg.spend_txid,
          ls === "redeemed" && !leg.spend_txid
            ? h("span", { class: "muted small" }, "by the counterparty") : null)),
      h("div", { class: "leg-foot small" }, deadlineOf(leg, ls, s.state)),
      h("details", { class: "addresses", "data-key": `${s.swap_id}/${i}` },
        h("summary", {}, "Addresses"),
        h("div", { class: "kv" }, h("span", { class: "muted" }, "From"), copyable(leg.sender, "sender")),
        h("div", { class: "kv" }, h("span", { class: "muted" }, "To"), copyable(leg.recipient, "recipient"))));
  });
  const events = [...(s.events || [])].reverse();
  return h("article", { class: "card swap", id: `swap-${s.swap_id}`, "data-swap-state": s.state },
    h("div", { class: "card-head" },
      h("h2", {}, `Swap · ${s.role}`), badge(s.state),
      h("span", { class: "muted small" }, `updated ${ago(s.updated_at)}`)),
    h("div", { class: "kv" }, h("span", { class: "muted" }, "Swap id"), copyable(s.swap_id, "swap id")),
    h("div", { class: "legs" }, legs),
    h("details", { class: "history", "data-key": s.swap_id },
      h("summary", {}, `History (${events.length} events)`),
      h("ol", { class: "feed" }, events.map((e) => h("li", {}, badge(e.state),
        h("span", {}, e.reason), e.txid ? h("code", { class: "hex small" }, e.txid) : null,
        h("span", { class: "muted small" }, when(e.at)))))));
}

function swapsView(root, swapId) {
  const slot = h("div", { class: "swaps" });
  root.append(h("div", { class: "view-head" }, h("h1", {}, "Swaps"),
    h("p", { class: "muted" }, "Each swap's legs on their chains: lock, confirmations, redeem or refund, "
      + "and the time left before a lock can be refunded. Updates live.")), slot);
  // Re-rendered on every event: keep the folds the user opened (addresses, history) open.
  // Tracked as the user toggles them ("toggle" does not bubble: listen while capturing), so a
  // render already on its way when the user clicked still honours the click.
  const open = new Set();
  slot.addEventListener("toggle", (ev) => {
    const key = ev.target.dataset && ev.target.dataset.key;
    if (key && ev.target.open) open.add(key);
    else if (key) open.delete(key);
  }, true);
  // A leg still locked may be spent by the counterparty with no event at this node (the
  // maker redeeming our leg after our swap ended): re-read every 5 s while one is on screen.
  let poll = null;
  const render = async () => {
    clearTimeout(poll);
    await load();
    for (const el of slot.querySelectorAll("details")) if (open.has(el.dataset.key)) el.open = true;
    if (slot.isConnected && slot.querySelector('.leg[data-leg-state="locked"]')) {
      poll = setTimeout(render, 5000);
    }
  };
  // The newest page re-read on each event; older pages the user asked for kept below it.
  let older = [];
  let next = null;
  const moreBtn = h("button", { type: "button", class: "ghost more", id: "older-swaps" },
    "Show older swaps");
  const load = () => fill(slot, async (latest) => {
    let swaps;
    if (swapId) {
      swaps = [await api(`/swaps/${encodeURIComponent(swapId)}`)];
    } else {
      const page = await api("/swaps?limit=50");
      swaps = items(page);
      if (latest() && !older.length) next = page && page.next !== undefined ? page.next : null;
      const ids = new Set(swaps.map((x) => x.swap_id));
      swaps = swaps.concat(older.filter((x) => !ids.has(x.swap_id)));
    }
    if (!swaps.length) {
      return h("p", { class: "empty card" }, "No swaps yet. A trade's swap legs appear here once its "
        + "order is committed on the ledger.");
    }
    return [...swaps.map(swapCard), next !== null && next !== undefined ? moreBtn : null]
      .filter(Boolean);
  });
  moreBtn.addEventListener("click", async () => {
    moreBtn.disabled = true;
    try {
      const page = await api(`/swaps?limit=50&before=${encodeURIComponent(next)}`);
      older = older.concat(items(page));
      next = page && page.next !== undefined ? page.next : null;
    } catch (err) {
      slot.append(errorBox(err));
    } finally {
      moreBtn.disabled = false;
    }
    render();
  });
  render();
  return {
    refresh: (kinds) => { if (kinds.has("swap") || kinds.has("trade")) render(); },
    leave: () => clearTimeout(poll),
  };
}

// -- Ledger -----------------------------------------------------------------------------

function legSummary(leg) {
  if (!leg || typeof leg !== "object") return String(leg);
  const asset = leg.asset || (leg.token ? `${leg.chain}:${leg.token}` : leg.chain);
  return leg.amount !== undefined && asset ? amount(leg.amount, asset) : JSON.stringify(leg);
}

function ledgerView(root) {
  const orders = h("div");
  const fees = h("div");
  const imp = h("div");
  const ev = h("div");
  root.append(
    section("Committed orders", "settlement orders this node is part of, as the ledger holds them", orders),
    section("Importance", "the ledger's ranking of nodes", imp),
    section("Your fee shares", "decrypted with this node's Paillier key", fees),
    section("Evidence", "misbehaviour the ledger recorded", ev));
  const render = () => {
    fill(orders, async () => table(["Order id", "Status", "Height", "Legs", "Outcomes"],
      items(await api("/ledger/orders?limit=50")).map((o) => [
        copyable(o.order_id, "order id"), badge(o.status), String(o.height),
        h("div", { class: "stack" }, (o.legs || []).map((l) => h("span", {}, legSummary(l)))),
        h("div", { class: "stack" }, Object.entries(o.outcomes || {}).map(([k, v]) =>
          h("span", {}, `leg ${Number(k) + 1} `, badge(v)))),
      ]), "No orders committed yet."));
    fill(fees, async () => table(["Order id", "Role", "Amount"],
      items(await api("/ledger/fees")).map((f) => [copyable(f.order_id, "order id"), f.role,
        h("span", { class: "num" }, amount(f.amount, f.asset))]),
      "No fee shares yet: they come from relaying and providing liquidity on routes."));
    fill(imp, async () => {
      const me = state.info && state.info.node_id;
      return table(["#", "Node", "Importance", "Points", "Penalties", "Bond"],
        items(await api("/ledger/importance?limit=50")).map((n, i) => [
          String(i + 1),
          n.node_id === me ? h("span", {}, badge("you"), " ", copyable(n.node_id, "node id"))
            : copyable(n.node_id, "node id"),
          h("span", { class: "num" }, String(n.importance)), h("span", { class: "num" }, String(n.points)),
          h("span", { class: "num" }, String(n.penalties)), h("span", { class: "num" }, String(n.bond)),
        ]), "The ledger has no registered nodes yet.");
    });
    fill(ev, async () => table(["Order id", "Kind", "Accused", "Height", "Detail"],
      items(await api("/ledger/evidence?limit=50")).map((e) => [copyable(e.order_id, "order id"),
        badge(e.kind), copyable(e.accused, "node id"), String(e.height),
        h("code", { class: "small wrap" }, JSON.stringify(e.detail || {}))]),
      "No evidence recorded: no node has been caught misbehaving."));
  };
  render();
  return { refresh: (kinds) => { if (kinds.has("order") || kinds.has("ledger")) render(); } };
}

// -- Peers ------------------------------------------------------------------------------

function peersView(root) {
  const slot = h("div");
  root.append(section("Peers", "nodes this node exchanges claims, quotes and orders with", slot));
  const render = () => fill(slot, async () => table(["Node id", "Address", "Direction", "Score"],
    items(await api("/peers")).map((p) => [copyable(p.node_id, "node id"), h("code", {}, p.address),
      p.inbound ? "inbound" : "outbound", h("span", { class: "num" }, String(p.score))]),
    "No peers connected. Add bootstrap peers under [p2p] in config.toml."));
  render();
  return { refresh: (kinds) => { if (kinds.has("node")) render(); } };
}

// -- boot -------------------------------------------------------------------------------

$("#login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("#token-input").value.trim();
  if (!token) return;
  setToken(token);
  $("#token-input").value = "";
  if (!/^#\/\w/.test(location.hash)) location.hash = "#/node";
  start();
});
$("#logout").addEventListener("click", () => {
  clearToken();
  needLogin("");
});
window.addEventListener("hashchange", () => {
  if (/token=/.test(location.hash)) {
    takeTokenFromFragment();
    start();
    return;
  }
  if (getToken()) route();
});

takeTokenFromFragment();
if (getToken()) start();
else needLogin();
