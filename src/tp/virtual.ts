/**
 * The virtual transport: N ranks hosted in one thread, the test backbone.
 *
 * Each rank's model code runs as its own async task:
 *
 *     const comms = createVirtualGroup(4);
 *     await Promise.all(comms.map((c) => rankStep(c)));
 *
 * A collective call registers the rank's buffers and returns a promise. Call k of every rank forms
 * collective k; when the last rank arrives, the arguments are checked to agree (kind, op, tag, element
 * type, size, root; otherwise every rank's call rejects with CommMismatchError naming the two ranks and
 * both calls, and the group is poisoned), the result is computed in fixed rank order into a scratch
 * buffer and copied to every rank's output, and every rank's promise resolves. Outputs are written only
 * after all inputs are read, so outputs may alias inputs (in-place all-gather and reduce-scatter).
 *
 * Float32Array and Float64Array are both supported. A group of size 1 short-circuits: allReduce,
 * broadcast and barrier copy nothing, reduceScatter and allGather copy their input to their output,
 * and every call counts 0 bytes (nothing moves) but is counted in `calls`.
 *
 * `abort(err)` on any rank rejects every pending and future call of every rank with
 * CommAbortedError(failedRank, message).
 */
import type { FloatArray } from '../backend/types.js';
import type { Communicator } from './comm.js';
import { type CollectiveCall, type Executor, LocalRankGroup, reduceRanks } from '../transport/transport-common.js';

class VirtualExecutor implements Executor {
  private scratch32 = new Float32Array(0);
  private scratch64 = new Float64Array(0);

  constructor(private readonly size: number) {}

  private scratch(dtype: CollectiveCall['dtype'], n: number): FloatArray {
    if (dtype === 'float64') {
      if (this.scratch64.length < n) this.scratch64 = new Float64Array(n);
      return this.scratch64;
    }
    if (this.scratch32.length < n) this.scratch32 = new Float32Array(n);
    return this.scratch32;
  }

  execute(_seq: number, calls: readonly CollectiveCall[]): void {
    const c0 = calls[0]!;
    const N = this.size;
    const n = c0.n;
    switch (c0.kind) {
      case 'barrier':
        return;
      case 'allReduce': {
        if (n === 0) return;
        const acc = this.scratch(c0.dtype, n);
        reduceRanks(
          acc,
          0,
          calls.map((c) => c.buf!),
          calls.map((c) => c.offset),
          n,
          c0.op === '' ? 'sum' : c0.op,
        );
        const res = acc.subarray(0, n);
        for (const c of calls) c.buf!.set(res, c.offset);
        return;
      }
      case 'broadcast': {
        if (n === 0) return;
        const src = calls[c0.root]!;
        const tmp = this.scratch(c0.dtype, n);
        tmp.set(src.buf!.subarray(src.offset, src.offset + n), 0);
        const res = tmp.subarray(0, n);
        for (let r = 0; r < N; r++) if (r !== c0.root) calls[r]!.buf!.set(res, calls[r]!.offset);
        return;
      }
      case 'reduceScatter': {
        if (n === 0) return;
        // acc[r·n + i] = Σ_k inp_k[r·n + i], all segments first, then the outputs.
        const acc = this.scratch(c0.dtype, N * n);
        reduceRanks(
          acc,
          0,
          calls.map((c) => c.inp!),
          calls.map(() => 0),
          N * n,
          'sum',
        );
        for (let r = 0; r < N; r++) calls[r]!.buf!.set(acc.subarray(r * n, (r + 1) * n), 0);
        return;
      }
      case 'allGather': {
        if (n === 0) return;
        const all = this.scratch(c0.dtype, N * n);
        for (let r = 0; r < N; r++) all.set(calls[r]!.inp!.subarray(0, n), r * n);
        const res = all.subarray(0, N * n);
        for (const c of calls) c.buf!.set(res, 0);
        return;
      }
    }
  }

  onLocalFailure(): void {}

  remoteFailure(): null {
    return null;
  }
}

/** N communicators, ranks 0 … n−1, hosted in this thread. */
export function createVirtualGroup(n: number): Communicator[] {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`createVirtualGroup: group size must be a positive integer, got ${n}`);
  const ranks = Array.from({ length: n }, (_, i) => i);
  return new LocalRankGroup('virtual', ranks, n, new VirtualExecutor(n)).comms;
}
