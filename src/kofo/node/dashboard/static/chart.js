// The depth chart: cumulative amount offered at each price, bids (makers buying the base
// asset) left of the mid in green, asks right in red. Drawn on a canvas, sized to its box.

import { price } from "./fmt.js";

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function cumulate(levels, descending) {
  const sorted = [...levels].sort((a, b) => (descending ? b.price - a.price : a.price - b.price));
  let total = 0;
  return sorted.map((l) => ({ price: l.price, total: (total += l.amount) }));
}

// The depth at a price: on the bid side, what makers pay at that price or better (higher);
// on the ask side, what they sell at that price or better (lower).
function depthAt(points, p, bid) {
  let total = 0;
  for (const pt of points) if (bid ? pt.price >= p : pt.price <= p) total = Math.max(total, pt.total);
  return total;
}

// bids/asks: [{price: number (quote per base), amount: number (base units, human)}];
// hover: {x} in CSS pixels to draw a crosshair with the price and depth there.
export function drawDepth(canvas, { bids, asks, base, quote }, hover = null) {
  const box = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(200, box.width);
  const hgt = Math.max(160, box.height);
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(hgt * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, hgt);
  const font = css("--font") || "system-ui, sans-serif";
  const muted = css("--muted");
  const line = css("--line");
  g.font = `12px ${font}`;

  const b = cumulate(bids, true);
  const a = cumulate(asks, false);
  if (!b.length && !a.length) {
    g.fillStyle = muted;
    g.textAlign = "center";
    g.fillText("No offers for this pair yet", w / 2, hgt / 2);
    return;
  }
  const prices = [...b, ...a].map((p) => p.price);
  let lo = Math.min(...prices);
  let hi = Math.max(...prices);
  const pad = (hi - lo) * 0.08 || hi * 0.05 || 1;
  lo = Math.max(0, lo - pad);
  hi += pad;
  const top = Math.max(...[...b, ...a].map((p) => p.total)) * 1.12;
  const L = 8;
  const R = w - 58;
  const T = 12;
  const B = hgt - 26;
  const x = (p) => L + ((p - lo) / (hi - lo)) * (R - L);
  const y = (v) => B - (v / top) * (B - T);

  // grid + axis labels
  g.strokeStyle = line;
  g.fillStyle = muted;
  g.lineWidth = 1;
  g.textAlign = "left";
  for (let i = 0; i <= 4; i += 1) {
    const v = (top / 4) * i;
    const yy = Math.round(y(v)) + 0.5;
    g.beginPath();
    g.moveTo(L, yy);
    g.lineTo(R, yy);
    g.stroke();
    if (i) g.fillText(price(v), R + 6, yy + 4);
  }
  g.textAlign = "center";
  const ticks = w < 520 ? 2 : 4; // labels about 60 px wide: fewer on a phone
  for (let i = 0; i <= ticks; i += 1) {
    const p = lo + ((hi - lo) / ticks) * i;
    g.fillText(price(p), Math.min(Math.max(x(p), 30), R - 30), hgt - 8);
  }

  const side = (pts, color, leftward) => {
    if (!pts.length) return;
    g.beginPath();
    g.moveTo(x(pts[0].price), B);
    let prevY = B;
    for (const p of pts) {
      g.lineTo(x(p.price), prevY);
      g.lineTo(x(p.price), y(p.total));
      prevY = y(p.total);
    }
    const edge = leftward ? L : R;
    g.lineTo(edge, prevY);
    g.lineTo(edge, B);
    g.closePath();
    g.globalAlpha = 0.22;
    g.fillStyle = color;
    g.fill();
    g.globalAlpha = 1;
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.stroke();
  };
  side(b, css("--good"), true);
  side(a, css("--bad"), false);

  if (hover && hover.x >= L && hover.x <= R) {
    const p = lo + ((hover.x - L) / (R - L)) * (hi - lo);
    const bestBid = b.length ? b[0].price : -Infinity;
    const bestAsk = a.length ? a[0].price : Infinity;
    const side = p <= bestBid ? "bid" : p >= bestAsk ? "ask" : "";
    const depth = side === "bid" ? depthAt(b, p, true) : side === "ask" ? depthAt(a, p, false) : 0;
    g.strokeStyle = muted;
    g.setLineDash([4, 4]);
    g.beginPath();
    g.moveTo(Math.round(hover.x) + 0.5, T);
    g.lineTo(Math.round(hover.x) + 0.5, B);
    g.stroke();
    g.setLineDash([]);
    const label = side
      ? `${price(p)} ${quote}/${base} · ${price(depth)} ${base} ${side === "bid" ? "wanted" : "offered"}`
      : `${price(p)} ${quote}/${base} · inside the spread`;
    g.font = `600 12px ${font}`;
    const tw = g.measureText(label).width + 12;
    const tx = Math.min(Math.max(hover.x - tw / 2, L), R - tw);
    g.fillStyle = css("--panel");
    g.strokeStyle = line;
    g.fillRect(tx, T + 14, tw, 20);
    g.strokeRect(tx + 0.5, T + 14.5, tw - 1, 19);
    g.fillStyle = css("--ink");
    g.textAlign = "left";
    g.fillText(label, tx + 6, T + 28);
    g.font = `12px ${font}`;
  }

  g.textAlign = "left";
  g.fillStyle = muted;
  g.fillText(`price, ${quote} per ${base}`, L + 4, T + 4);
  g.textAlign = "right";
  g.fillText(`depth, ${base}`, R - 4, T + 4);
}
