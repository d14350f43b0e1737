/**
 * Stop strings over a token stream. Text arrives in arbitrary pieces (one token's text at a time)
 * and a stop string may span several pieces, so the matcher holds back the longest tail of what
 * it has seen that could still be the start of a stop string, and releases it as soon as it
 * proves not to be one. What it emits is therefore always final: a stop string can never turn
 * up later inside text already handed to the caller.
 */
export interface StopPush {
  /** Text that is final: it is not, and cannot become, part of a stop string. */
  emit: string;
  /** True when a stop string was found; `emit` then holds the text before it, and the rest is dropped. */
  stopped: boolean;
  /** The stop string that matched (the earliest in the text; the longest when two start at the same place). */
  stop?: string;
}

export class StopMatcher {
  private readonly stops: string[];
  private held = '';
  private done = false;

  /** @param stops stop strings; empty strings are ignored. */
  constructor(stops: readonly string[]) {
    this.stops = [...new Set(stops.filter((s) => typeof s === 'string' && s.length > 0))];
  }

  /** Text currently held back as a possible start of a stop string. */
  get pending(): string { return this.held; }

  push(text: string): StopPush {
    if (this.done) return { emit: '', stopped: true };
    const buf = this.held + text;
    let at = -1;
    let which: string | undefined;
    for (const s of this.stops) {
      const i = buf.indexOf(s);
      if (i >= 0 && (at < 0 || i < at || (i === at && s.length > (which as string).length))) { at = i; which = s; }
    }
    if (at >= 0) {
      this.held = '';
      this.done = true;
      return { emit: buf.slice(0, at), stopped: true, stop: which };
    }
    const hold = this.partialTail(buf);
    this.held = buf.slice(buf.length - hold);
    return { emit: buf.slice(0, buf.length - hold), stopped: false };
  }

  /** The end of the stream: whatever was held back is ordinary text after all. */
  flush(): string {
    const out = this.done ? '' : this.held;
    this.held = '';
    return out;
  }

  /** Length of the longest suffix of `buf` that is a proper prefix of some stop string. */
  private partialTail(buf: string): number {
    let best = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, buf.length); k > best; k--) {
        if (buf.endsWith(s.slice(0, k))) { best = k; break; }
      }
    }
    return best;
  }
}
