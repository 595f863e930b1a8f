/**
 * A step plan: what every rank runs in one engine step, and its wire format. Rank 0 (the scheduler)
 * builds it and sends it to the other ranks over the job's transport; every rank then runs the same
 * forwardBatch on its shard (src/model/model.ts).
 *
 * Wire format (Float32Array; every value is an integer below 2^24, so float32 holds it exactly):
 *   [kind, nSeq, nTokens, nFreed, (slot, pos, n, allLogits) × nSeq, tokens × nTokens, freed slots × nFreed]
 * kind: 0 step, 1 heartbeat (nothing to run; keeps idle ranks within their collective timeout), 2 stop.
 */
import type { BatchSeq } from '../model/model.js';

export type PlanKind = 'step' | 'heartbeat' | 'stop';

export interface StepPlan {
  kind: PlanKind;
  seqs: BatchSeq[];
  /** Every sequence's new tokens, one sequence after another. */
  tokens: Int32Array;
  /** Cache slots released since the last plan (their sequences finished, were cancelled or failed). */
  freed: number[];
}

const KINDS: PlanKind[] = ['step', 'heartbeat', 'stop'];
const LIMIT = 1 << 24;

export const controlPlan = (kind: 'heartbeat' | 'stop'): StepPlan => ({ kind, seqs: [], tokens: new Int32Array(0), freed: [] });

export function encodePlan(p: StepPlan): Float32Array {
  const out = new Float32Array(4 + 4 * p.seqs.length + p.tokens.length + p.freed.length);
  out[0] = KINDS.indexOf(p.kind);
  out[1] = p.seqs.length;
  out[2] = p.tokens.length;
  out[3] = p.freed.length;
  let i = 4;
  for (const s of p.seqs) {
    out[i++] = s.slot;
    out[i++] = s.pos;
    out[i++] = s.n;
    out[i++] = s.allLogits ? 1 : 0;
  }
  for (const t of p.tokens) {
    if (!(t >= 0 && t < LIMIT)) throw new Error(`plan: token id ${t} cannot be sent`);
    out[i++] = t;
  }
  for (const f of p.freed) out[i++] = f;
  return out;
}

export function decodePlan(b: Float32Array): StepPlan {
  const kind = KINDS[b[0]!];
  const nSeq = b[1]!;
  const nTok = b[2]!;
  const nFreed = b[3]!;
  if (kind === undefined || b.length !== 4 + 4 * nSeq + nTok + nFreed) throw new Error(`plan: malformed message of ${b.length} values`);
  const seqs: BatchSeq[] = [];
  let i = 4;
  for (let k = 0; k < nSeq; k++) {
    seqs.push({ slot: b[i]!, pos: b[i + 1]!, n: b[i + 2]!, allLogits: b[i + 3] === 1 });
    i += 4;
  }
  const tokens = Int32Array.from(b.subarray(i, i + nTok));
  i += nTok;
  const freed = Array.from(b.subarray(i, i + nFreed));
  return { kind, seqs, tokens, freed };
}
