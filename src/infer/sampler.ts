/**
 * Sampling on rank 0: penalties, temperature, top-k, top-p, one seeded generator per sequence, and
 * the log-probabilities clients ask for (of the model's own distribution: log-softmax of the raw
 * logits, before penalties and temperature, as vLLM reports them).
 */
import { mulberry32 } from '../util/random.js';

export interface SampleOptions {
  temperature: number;
  topK: number;
  topP: number;
}

/** Sample one token id from logits over the first `vocab` entries (padding ids are never chosen). */
export function sample(logits: ArrayLike<number>, vocab: number, o: SampleOptions, rand: () => number): number {
  if (o.temperature <= 0) {
    let best = 0;
    for (let i = 1; i < vocab; i++) if (logits[i]! > logits[best]!) best = i;
    return best;
  }
  let idx: number[];
  if (o.topK > 0 && o.topK < vocab) idx = topIndices(logits, vocab, o.topK);
  else {
    idx = Array.from({ length: vocab }, (_, i) => i);
    idx.sort((a, b) => logits[b]! - logits[a]! || a - b);
  }
  const max = logits[idx[0]!]!;
  let probs = idx.map((i) => Math.exp((logits[i]! - max) / o.temperature));
  let total = probs.reduce((a, b) => a + b, 0);
  if (o.topP < 1) {
    let acc = 0;
    let keep = 0;
    while (keep < probs.length) {
      acc += probs[keep]! / total;
      keep++;
      if (acc >= o.topP) break;
    }
    idx = idx.slice(0, keep);
    probs = probs.slice(0, keep);
    total = probs.reduce((a, b) => a + b, 0);
  }
  let u = rand() * total;
  for (let k = 0; k < idx.length; k++) {
    u -= probs[k]!;
    if (u <= 0) return idx[k]!;
  }
  return idx[idx.length - 1]!;
}

/** The k largest entries' indices, largest first (ties: lower index first), in O(V·k) for small k. */
export function topIndices(x: ArrayLike<number>, vocab: number, k: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < vocab; i++) {
    const v = x[i]!;
    if (out.length === k && !(v > x[out[k - 1]!]!)) continue;
    let j = out.length === k ? k - 1 : out.length;
    while (j > 0 && v > x[out[j - 1]!]!) j--;
    out.splice(j, 0, i);
    if (out.length > k) out.pop();
  }
  return out;
}

/** log-softmax of row `logits[0, vocab)` in float64. */
export function logSoftmax(logits: ArrayLike<number>, vocab: number): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < vocab; i++) if (logits[i]! > max) max = logits[i]!;
  let s = 0;
  for (let i = 0; i < vocab; i++) s += Math.exp(logits[i]! - max);
  const lse = max + Math.log(s);
  const out = new Float64Array(vocab);
  for (let i = 0; i < vocab; i++) out[i] = logits[i]! - lse;
  return out;
}

export interface SamplingParams extends SampleOptions {
  /** Seed of this sequence's generator (undefined: a random one). */
  seed?: number;
  presencePenalty: number;
  frequencyPenalty: number;
}

/** One sequence's sampler: its generator and the counts the penalties need. */
export class SequenceSampler {
  private readonly rand: () => number;
  private readonly counts = new Map<number, number>();
  private scratch: Float32Array | null = null;

  constructor(readonly p: SamplingParams) {
    this.rand = mulberry32(p.seed ?? Math.floor(Math.random() * 2 ** 31));
  }

  /** Note a generated token (penalties count generated tokens only, as OpenAI's do). */
  observe(id: number): void {
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
  }

  next(logits: Float32Array, vocab: number): number {
    let row: ArrayLike<number> = logits;
    if ((this.p.presencePenalty !== 0 || this.p.frequencyPenalty !== 0) && this.counts.size > 0) {
      if (!this.scratch || this.scratch.length < vocab) this.scratch = new Float32Array(vocab);
      this.scratch.set(logits.subarray(0, vocab));
      for (const [id, n] of this.counts) this.scratch[id]! -= this.p.presencePenalty + this.p.frequencyPenalty * n;
      row = this.scratch;
    }
    return sample(row, vocab, this.p, this.rand);
  }
}
