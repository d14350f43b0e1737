/**
 * The loss curve as a self-contained SVG (no scripts, no fonts to fetch): training loss per
 * optimizer step (light) with its moving average (dark), validation loss as points joined by a
 * line, epoch boundaries as dashed verticals.
 */

export interface CurvePoint { step: number; loss: number }

export interface PlotOptions {
  /** Default 720. */
  width?: number;
  /** Default 360. */
  height?: number;
  /** Steps per epoch, to draw epoch boundaries. Default none. */
  stepsPerEpoch?: number;
  /** Title. Default 'loss'. */
  title?: string;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** "Nice" tick values covering [lo, hi]. */
export function ticks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function smooth(points: CurvePoint[], window: number): CurvePoint[] {
  const out: CurvePoint[] = [];
  let sum = 0;
  for (let i = 0; i < points.length; i++) {
    sum += points[i].loss;
    if (i >= window) sum -= points[i - window].loss;
    out.push({ step: points[i].step, loss: sum / Math.min(i + 1, window) });
  }
  return out;
}

/** Renders the curves. Non-finite losses are left out (and said so in the legend). */
export function lossSvg(train: CurvePoint[], val: CurvePoint[], options: PlotOptions = {}): string {
  const W = options.width ?? 720, H = options.height ?? 360;
  const m = { l: 56, r: 16, t: 32, b: 40 };
  const finite = (p: CurvePoint) => Number.isFinite(p.loss) && Number.isFinite(p.step);
  const tr = train.filter(finite), va = val.filter(finite);
  const dropped = train.length + val.length - tr.length - va.length;
  const all = [...tr, ...va];
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`);
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="${W / 2}" y="18" text-anchor="middle" font-size="13">${esc(options.title ?? 'loss')}</text>`);
  if (all.length === 0) {
    parts.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle">no data yet</text></svg>`);
    return parts.join('\n') + '\n';
  }
  const x0 = Math.min(0, ...all.map((p) => p.step)), x1 = Math.max(1, ...all.map((p) => p.step));
  let y0 = Math.min(...all.map((p) => p.loss)), y1 = Math.max(...all.map((p) => p.loss));
  if (y1 - y0 < 1e-6) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.05; y0 = Math.max(0, y0 - pad); y1 += pad;
  const X = (s: number) => m.l + (s - x0) / (x1 - x0) * (W - m.l - m.r);
  const Y = (l: number) => H - m.b - (l - y0) / (y1 - y0) * (H - m.t - m.b);
  const f = (v: number) => v.toFixed(1);
  parts.push(`<g stroke="#ddd">`);
  for (const t of ticks(y0, y1)) parts.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${f(Y(t))}" y2="${f(Y(t))}"/>`);
  parts.push(`</g>`);
  if (options.stepsPerEpoch && options.stepsPerEpoch > 0) {
    parts.push(`<g stroke="#999" stroke-dasharray="4 3">`);
    for (let s = options.stepsPerEpoch; s < x1; s += options.stepsPerEpoch) parts.push(`<line x1="${f(X(s))}" x2="${f(X(s))}" y1="${m.t}" y2="${H - m.b}"/>`);
    parts.push(`</g>`);
  }
  parts.push(`<g fill="#333">`);
  for (const t of ticks(y0, y1)) parts.push(`<text x="${m.l - 6}" y="${f(Y(t) + 4)}" text-anchor="end">${t}</text>`);
  for (const t of ticks(x0, x1, 8)) if (Number.isInteger(t)) parts.push(`<text x="${f(X(t))}" y="${H - m.b + 16}" text-anchor="middle">${t}</text>`);
  parts.push(`<text x="${(m.l + W - m.r) / 2}" y="${H - 6}" text-anchor="middle">optimizer step</text>`);
  parts.push(`</g>`);
  parts.push(`<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="#333"/><line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" stroke="#333"/>`);
  const poly = (pts: CurvePoint[], attrs: string) =>
    `<polyline fill="none" ${attrs} points="${pts.map((p) => `${f(X(p.step))},${f(Y(p.loss))}`).join(' ')}"/>`;
  if (tr.length) {
    parts.push(poly(tr, 'stroke="#9ecae1" stroke-width="1"'));
    if (tr.length >= 10) parts.push(poly(smooth(tr, Math.max(2, Math.round(tr.length / 25))), 'stroke="#08519c" stroke-width="1.5"'));
  }
  if (va.length) {
    parts.push(poly(va, 'stroke="#e6550d" stroke-width="1.5"'));
    parts.push(`<g fill="#e6550d">${va.map((p) => `<circle cx="${f(X(p.step))}" cy="${f(Y(p.loss))}" r="3"/>`).join('')}</g>`);
  }
  const lx = W - m.r - 150;
  parts.push(`<g><rect x="${lx}" y="${m.t}" width="146" height="${va.length ? 36 : 20}" fill="white" stroke="#ccc"/>`);
  parts.push(`<line x1="${lx + 6}" x2="${lx + 26}" y1="${m.t + 11}" y2="${m.t + 11}" stroke="#08519c" stroke-width="1.5"/><text x="${lx + 32}" y="${m.t + 15}">train</text>`);
  if (va.length) parts.push(`<line x1="${lx + 6}" x2="${lx + 26}" y1="${m.t + 27}" y2="${m.t + 27}" stroke="#e6550d" stroke-width="1.5"/><text x="${lx + 32}" y="${m.t + 31}">validation</text>`);
  parts.push(`</g>`);
  if (dropped) parts.push(`<text x="${m.l + 4}" y="${m.t + 12}" fill="#b00">${dropped} non-finite value(s) not drawn</text>`);
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
