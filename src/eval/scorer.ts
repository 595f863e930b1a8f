/**
 * The batched scorer: token requests (see requests.ts) sorted by length, longest first (as
 * lm-evaluation-harness orders them), packed into batches of B rows × T positions (T the longest input
 * of the batch rounded up to a multiple of 16, at most the context window; B = ⌊batchTokens / T⌋;
 * shorter rows padded on the right, which a causal model never reads), and one forward per batch on
 * every rank of a rank handle. Results are returned in the requests' order and do not depend on the
 * placement: every host (virtual ranks, a worker thread, a process) runs the same batches.
 */
import type { RankModel } from '../model/model.js';
import type { TokenRequest } from './requests.js';

/** Anything that runs a function on each rank it hosts: VirtualModel, ProcessModel, a worker's ranks. */
export interface RankHandle {
  readonly ranks: readonly RankModel[];
  all<T>(fn: (m: RankModel, r: number) => Promise<T>): Promise<T[]>;
}

export interface ScoreOptions {
  /** Rows × positions per forward (default 4096). */
  batchTokens?: number;
  /** Called after every batch with the requests done so far. */
  onProgress?: (done: number, total: number) => void;
}

export interface Scores {
  /** Summed natural-log probability of each request's scored tokens. */
  ll: Float64Array;
  /** 1 when every scored token is the argmax. */
  greedy: Uint8Array;
}

export const DEFAULT_BATCH_TOKENS = 4096;

/** The batches: request indices per batch, and the batch's row length T. */
export function planBatches(reqs: readonly TokenRequest[], L: number, batchTokens = DEFAULT_BATCH_TOKENS): { T: number; rows: number[] }[] {
  const order = reqs.map((_, i) => i);
  order.sort((a, b) => reqs[b]!.seq.length - reqs[a]!.seq.length || a - b);
  const out: { T: number; rows: number[] }[] = [];
  let k = 0;
  while (k < order.length) {
    const n = reqs[order[k]!]!.seq.length - 1;
    const T = Math.min(L, Math.ceil(n / 16) * 16);
    const B = Math.max(1, Math.floor(batchTokens / T));
    out.push({ T, rows: order.slice(k, k + B) });
    k += B;
  }
  return out;
}

export async function scoreRequests(h: RankHandle, reqs: readonly TokenRequest[], o: ScoreOptions = {}): Promise<Scores> {
  const L = h.ranks[0]!.cfg.model.seqLen;
  for (const [i, r] of reqs.entries()) {
    if (r.seq.length < 2 || r.seq.length > L + 1 || r.scored < 1 || r.scored > r.seq.length - 1) {
      throw new Error(`request ${i}: ${r.seq.length} tokens with ${r.scored} scored does not fit a context window of ${L}`);
    }
  }
  const ll = new Float64Array(reqs.length);
  const greedy = new Uint8Array(reqs.length);
  let done = 0;
  for (const batch of planBatches(reqs, L, o.batchTokens)) {
    const { T, rows } = batch;
    const B = rows.length;
    const inputs = new Int32Array(B * T);
    const targets = new Int32Array(B * T);
    rows.forEach((ri, b) => {
      const s = reqs[ri]!.seq;
      for (let t = 0; t + 1 < s.length; t++) {
        inputs[b * T + t] = s[t]!;
        targets[b * T + t] = s[t + 1]!;
      }
    });
    const res = await h.all(async (m) => {
      await m.forward(inputs, targets, B, T);
      return m.targetLogProbs(targets);
    });
    const { logp, greedy: g } = res[0]!;
    rows.forEach((ri, b) => {
      const r = reqs[ri]!;
      const n = r.seq.length - 1;
      let sum = 0;
      let all = 1;
      for (let t = n - r.scored; t < n; t++) {
        sum += logp[b * T + t]!;
        all &= g[b * T + t]!;
      }
      ll[ri] = sum;
      greedy[ri] = all;
    });
    done += B;
    o.onProgress?.(done, reqs.length);
  }
  return { ll, greedy };
}
