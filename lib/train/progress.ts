/**
 * A one-line progress bar on a TTY (step, epoch, loss, tokens/s, ETA), redrawn in place at most
 * every `intervalMs`. When the stream is not a TTY (a log file, CI) it draws nothing; lines
 * given to `log()` are printed either way.
 */

export interface ProgressState {
  step: number;
  totalSteps: number;
  /** Fractional epochs done. */
  epoch: number;
  epochs: number;
  loss?: number;
  valLoss?: number;
  tokensPerSec?: number;
  etaSeconds?: number;
}

export interface ProgressBarOptions {
  /** Where to draw. Default process.stderr. */
  stream?: NodeJS.WriteStream | { write(s: string): unknown; isTTY?: boolean; columns?: number };
  /** Draw the bar. Default: when the stream is a TTY. */
  enabled?: boolean;
  /** Least time between redraws. Default 100 ms. */
  intervalMs?: number;
}

/** 75 → "1:15", 3725 → "1:02:05". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  const two = (n: number) => String(n).padStart(2, '0');
  return h > 0 ? `${h}:${two(mm)}:${two(ss)}` : `${mm}:${two(ss)}`;
}

/** 1234 → "1.2k". */
export function formatRate(x: number): string {
  if (!Number.isFinite(x)) return '-';
  return x >= 1e6 ? `${(x / 1e6).toFixed(1)}M` : x >= 1e3 ? `${(x / 1e3).toFixed(1)}k` : x.toFixed(0);
}

/** The text of the bar for a given width. */
export function renderProgress(s: ProgressState, width = 80): string {
  const frac = s.totalSteps > 0 ? Math.min(1, s.step / s.totalSteps) : 0;
  const info = [
    `step ${s.step}/${s.totalSteps}`,
    `epoch ${Math.min(s.epoch, s.epochs).toFixed(2)}/${s.epochs}`,
    s.loss === undefined ? undefined : `loss ${s.loss.toFixed(4)}`,
    s.valLoss === undefined ? undefined : `val ${s.valLoss.toFixed(4)}`,
    s.tokensPerSec === undefined ? undefined : `${formatRate(s.tokensPerSec)} tok/s`,
    `ETA ${formatDuration(s.etaSeconds ?? NaN)}`,
  ].filter(Boolean).join('  ');
  const barWidth = Math.max(10, Math.min(30, width - info.length - 10));
  const full = Math.round(frac * barWidth);
  return `${(frac * 100).toFixed(0).padStart(3)}% [${'#'.repeat(full)}${'-'.repeat(barWidth - full)}] ${info}`;
}

export class ProgressBar {
  private readonly stream: NonNullable<ProgressBarOptions['stream']>;
  readonly enabled: boolean;
  private readonly interval: number;
  private last = 0;
  private shown = false;
  private state: ProgressState | undefined;

  constructor(options: ProgressBarOptions = {}) {
    this.stream = options.stream ?? process.stderr;
    this.enabled = options.enabled ?? !!this.stream.isTTY;
    this.interval = options.intervalMs ?? 100;
  }

  update(s: ProgressState, force = false): void {
    this.state = s;
    if (!this.enabled) return;
    const now = Date.now();
    if (!force && now - this.last < this.interval) return;
    this.last = now;
    const width = ('columns' in this.stream && this.stream.columns) || 80;
    this.stream.write(`\r\x1b[2K${renderProgress(s, width).slice(0, width - 1)}`);
    this.shown = true;
  }

  /** Prints a line above the bar. */
  log(line: string): void {
    if (this.enabled && this.shown) this.stream.write('\r\x1b[2K');
    this.stream.write(line + '\n');
    if (this.enabled && this.state) { this.shown = false; this.update(this.state, true); }
  }

  /** Leaves the bar's last state on its own line. */
  done(): void {
    if (this.enabled && this.shown) this.stream.write('\n');
    this.shown = false;
  }
}
