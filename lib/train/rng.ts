/**
 * A small seeded PRNG (SplitMix32-seeded xoshiro128**) for data order: the same seed gives the
 * same shuffle on every platform, so a run is reproducible and a resumed run sees the same order.
 */
export class Rng {
  private s = new Uint32Array(4);

  constructor(seed: number) {
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      // splitmix32
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }

  /** The generator's state (4 × u32), to save and restore. */
  getState(): Uint32Array { return this.s.slice(); }

  setState(state: ArrayLike<number>): void {
    if (state.length < 4) throw new Error('mimic: an Rng state has 4 words');
    for (let i = 0; i < 4; i++) this.s[i] = state[i] >>> 0;
  }

  /** A uniform 32-bit unsigned integer. */
  nextU32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** A uniform float in [0, 1). */
  next(): number { return this.nextU32() / 4294967296; }

  /** A uniform integer in [0, n) without modulo bias. */
  below(n: number): number {
    const limit = Math.floor(4294967296 / n) * n;
    let x: number;
    do x = this.nextU32(); while (x >= limit);
    return x % n;
  }

  /** Fisher–Yates, in place. */
  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.below(i + 1);
      const t = a[i]; a[i] = a[j]; a[j] = t;
    }
    return a;
  }
}

function rotl(x: number, k: number): number { return ((x << k) | (x >>> (32 - k))) >>> 0; }
