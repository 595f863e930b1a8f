/**
 * Metrics and standard errors as lm-evaluation-harness computes them (`api/metrics.py`,
 * `evaluator_utils.py`):
 * - mean metrics (acc, acc_norm): stderr = sample std (n − 1) / √n;
 * - lambada perplexity = exp(−mean over documents of ll); stderr by bootstrap: 100 chunks i of 1000
 *   resamples, chunk i drawing with Python's `random.Random(i).choices(xs, k=len(xs))` (Mersenne
 *   Twister, reproduced here bit for bit), stderr = sample std of the 100 000 statistics;
 * - word/byte perplexity = exp(−Σll / Σwords|bytes), bits_per_byte = −Σll / Σbytes / ln 2, no stderr.
 * A stderr is null where lm-evaluation-harness prints "N/A" (one document, or no stderr function).
 */

/** Python's `random.Random(seed)` for a non-negative integer seed: MT19937 and `random()`. */
export class PyRandom {
  private readonly mt = new Uint32Array(624);
  private mti = 625;

  constructor(seed: number) {
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`PyRandom: seed must be a non-negative safe integer, got ${seed}`);
    const key: number[] = [];
    let n = seed;
    do {
      key.push(n % 2 ** 32 >>> 0);
      n = Math.floor(n / 2 ** 32);
    } while (n > 0);
    this.initByArray(key);
  }

  private initGenrand(s: number): void {
    const mt = this.mt;
    mt[0] = s >>> 0;
    for (let i = 1; i < 624; i++) {
      const p = mt[i - 1]! ^ (mt[i - 1]! >>> 30);
      mt[i] = (Math.imul(1812433253, p) + i) >>> 0;
    }
    this.mti = 624;
  }

  private initByArray(key: number[]): void {
    const mt = this.mt;
    this.initGenrand(19650218);
    let i = 1;
    let j = 0;
    for (let k = Math.max(624, key.length); k > 0; k--) {
      const p = mt[i - 1]! ^ (mt[i - 1]! >>> 30);
      mt[i] = ((mt[i]! ^ Math.imul(p, 1664525)) + key[j]! + j) >>> 0;
      i++;
      j++;
      if (i >= 624) {
        mt[0] = mt[623]!;
        i = 1;
      }
      if (j >= key.length) j = 0;
    }
    for (let k = 623; k > 0; k--) {
      const p = mt[i - 1]! ^ (mt[i - 1]! >>> 30);
      mt[i] = ((mt[i]! ^ Math.imul(p, 1566083941)) - i) >>> 0;
      i++;
      if (i >= 624) {
        mt[0] = mt[623]!;
        i = 1;
      }
    }
    mt[0] = 0x80000000;
  }

  private next32(): number {
    const mt = this.mt;
    if (this.mti >= 624) {
      for (let kk = 0; kk < 624; kk++) {
        const y = (mt[kk]! & 0x80000000) | (mt[(kk + 1) % 624]! & 0x7fffffff);
        mt[kk] = mt[(kk + 397) % 624]! ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      this.mti = 0;
    }
    let y = mt[this.mti++]!;
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** `random.random()`: 53-bit float in [0, 1). */
  random(): number {
    const a = this.next32() >>> 5;
    const b = this.next32() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }
}

export function mean(xs: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < xs.length; i++) s += xs[i]!;
  return s / xs.length;
}

/** Sample standard deviation (n − 1 denominator). */
export function sampleStddev(xs: ArrayLike<number>): number {
  const mu = mean(xs);
  let s = 0;
  for (let i = 0; i < xs.length; i++) s += (xs[i]! - mu) ** 2;
  return Math.sqrt(s / (xs.length - 1));
}

/** stderr of a mean metric; null with fewer than two documents. */
export function meanStderr(xs: ArrayLike<number>): number | null {
  return xs.length < 2 ? null : sampleStddev(xs) / Math.sqrt(xs.length);
}

/** lambada's perplexity aggregation: exp(−mean(ll)) over documents. */
export function perplexity(lls: ArrayLike<number>): number {
  return Math.exp(-mean(lls));
}

/** lm-evaluation-harness's bootstrap stderr of perplexity (iters resamples in chunks of 1000). */
export function perplexityBootstrapStderr(lls: ArrayLike<number>, iters = 100000): number | null {
  const n = lls.length;
  if (n < 2 || iters <= 0) return null;
  const chunk = Math.min(1000, iters);
  const nChunks = Math.floor(iters / chunk);
  const stats = new Float64Array(nChunks * chunk);
  let k = 0;
  for (let i = 0; i < nChunks; i++) {
    const rnd = new PyRandom(i);
    for (let r = 0; r < chunk; r++) {
      let s = 0;
      for (let j = 0; j < n; j++) s += lls[Math.floor(rnd.random() * n)]!;
      stats[k++] = Math.exp(-(s / n));
    }
  }
  return sampleStddev(stats);
}

/** One line of results: the unit of `--json` output and of metrics.jsonl's `tasks`. */
export interface MetricRecord {
  task: string;
  metric: string;
  value: number;
  stderr: number | null;
  n: number;
}
