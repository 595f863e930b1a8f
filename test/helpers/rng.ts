/**
 * Small seeded pseudo-random generator for tests (mulberry32), so every failure is reproducible.
 *
 * Seeds: `rngFor(name)` hashes a test's name together with the base seed (CAAT_TEST_SEED, default
 * 0x5eed) so each test draws the same numbers no matter which other tests ran before it. Failure
 * messages print the seed; rerun with CAAT_TEST_SEED=<base> to reproduce or to explore other seeds.
 */

export const BASE_SEED: number = (() => {
  const s = process.env['CAAT_TEST_SEED'];
  if (s === undefined || s === '') return 0x5eed;
  const v = Number(s);
  if (!Number.isFinite(v)) throw new Error(`CAAT_TEST_SEED must be a number, got "${s}"`);
  return v >>> 0;
})();

/** FNV-1a 32-bit hash of a string. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

export class Rng {
  private state: number;
  private spare: number | undefined;

  constructor(readonly seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform 32-bit unsigned integer (mulberry32). */
  nextU32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.nextU32() / 4294967296;
  }

  /** Uniform in [lo, hi). */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  /** Uniform integer in [lo, hi) (hi exclusive). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo));
  }

  /** One element of `items`, uniformly. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(0, items.length)]!;
  }

  /** Standard normal (Box–Muller). */
  normal(): number {
    if (this.spare !== undefined) {
      const s = this.spare;
      this.spare = undefined;
      return s;
    }
    let u = 0;
    while (u === 0) u = this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }

  /** Fill `out[0..n)` (default: all of it) with normal(0, std) values. */
  fillNormal<A extends { length: number; [i: number]: number }>(out: A, std = 1, n = out.length): A {
    for (let i = 0; i < n; i++) out[i] = std * this.normal();
    return out;
  }

  /** Fill `out[0..n)` with uniform values in [lo, hi). */
  fillUniform<A extends { length: number; [i: number]: number }>(out: A, lo: number, hi: number, n = out.length): A {
    for (let i = 0; i < n; i++) out[i] = this.uniform(lo, hi);
    return out;
  }

  /** A new Float32Array of n normal(0, std) values. */
  normalF32(n: number, std = 1): Float32Array {
    return this.fillNormal(new Float32Array(n), std);
  }

  /** A new Float64Array of n normal(0, std) values. */
  normalF64(n: number, std = 1): Float64Array {
    return this.fillNormal(new Float64Array(n), std);
  }

  /** A new Int32Array of n integers uniform in [lo, hi). */
  ints(n: number, lo: number, hi: number): Int32Array {
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.int(lo, hi);
    return out;
  }
}

/** The generator for one named test: seeded from the base seed and the name. */
export function rngFor(name: string): Rng {
  return new Rng((hashString(name) ^ BASE_SEED) >>> 0);
}
