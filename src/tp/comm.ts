/**
 * The communicator: collectives over one explicit group of ranks (the tensor-parallel group).
 *
 * Semantics shared by every transport (virtual ranks, worker threads, and later sockets):
 * - Every rank of the group calls the same collectives in the same order with the same sizes.
 * - Calls are asynchronous; a rank's call resolves once its own output is ready.
 * - Reductions are computed in a FIXED order, rank 0 first: sum = ((x0 + x1) + x2) + …, rounded in the
 *   buffer's element type after every addition, so every rank receives the same bits and every
 *   transport produces the same bits for the same inputs.
 * - Buffers are Float32Array (all transports) or Float64Array (the virtual transport, for float64
 *   gradient checks). A region is `offset` and `length` in elements of `buf`.
 * - Every call counts the payload bytes it moves per rank (length · bytes per element; an all-gather
 *   counts its whole output, a reduce-scatter its whole input, i.e. size · n elements; a barrier 0; in a
 *   group of size 1 nothing moves and every call counts 0) under the caller's tag, e.g.
 *   "attn.fwd.shared", and the time the rank spent waiting for the collective to complete.
 * - If any rank fails (`abort`) the group is poisoned: every pending and future call on every rank
 *   rejects with a CommAbortedError naming the failed rank and its original message.
 */
import type { FloatArray } from '../backend/types.js';

export type ReduceOp = 'sum' | 'max';

export interface CommStats {
  /** Payload bytes by tag, since the last reset. */
  bytes: Map<string, number>;
  /** Number of calls by tag, since the last reset. */
  calls: Map<string, number>;
  /** Milliseconds spent inside collectives (waiting and moving data), since the last reset. */
  waitMs: number;
}

export interface Communicator {
  /** This rank's index in the group, 0 ≤ rank < size. */
  readonly rank: number;
  /** Number of ranks in the group (the logical TP degree N). */
  readonly size: number;
  /** Transport name for logs: "virtual", "threads", "tcp", … */
  readonly transport: string;

  /** In place: buf[offset, offset+length) = op over ranks of every rank's region. */
  allReduce(buf: FloatArray, op: ReduceOp, tag: string, offset?: number, length?: number): Promise<void>;

  /**
   * In place on bf16 bit patterns: buf[offset, offset+length) = bf16(Σ_r float32(x_r)), the sum taken in
   * float32 in rank order (rounded to float32 after every addition, as `allReduce` does) and rounded to
   * bf16 once at the end, so every rank and every transport gets the same bits. The payload is 2 bytes
   * per element (counted as length · 2 bytes under `tag`); it travels as an all-gather of the bf16
   * contributions, each rank summing them itself in the same order.
   */
  allReduceBf16(buf: Uint16Array, tag: string, offset?: number, length?: number): Promise<void>;

  /**
   * inp holds size·n elements (n = out.length unless given); rank r receives in out[0, n) the sum over
   * ranks of their inp[r·n, (r+1)·n).
   */
  reduceScatter(out: FloatArray, inp: FloatArray, tag: string, n?: number): Promise<void>;

  /** out[r·n, (r+1)·n) = rank r's inp[0, n) for every r (n = inp.length unless given). */
  allGather(out: FloatArray, inp: FloatArray, tag: string, n?: number): Promise<void>;

  /** In place: every rank's buf[offset, offset+length) becomes root's. */
  broadcast(buf: FloatArray, root: number, tag: string, offset?: number, length?: number): Promise<void>;

  /** Resolves once every rank has entered the barrier. */
  barrier(tag?: string): Promise<void>;

  /** Counters since the last reset. */
  stats(): CommStats;
  resetStats(): void;

  /** Poison the group: this rank failed with `error`. Safe to call more than once. */
  abort(error: unknown): void;
}

export class CommAbortedError extends Error {
  constructor(
    readonly failedRank: number,
    readonly original: string,
  ) {
    super(`rank ${failedRank} failed: ${original}`);
    this.name = 'CommAbortedError';
  }
}

/**
 * Run fn for every rank hosted here, concurrently (collectives need all of them to make progress). A
 * rank whose fn throws poisons the group (abort), so the others fail instead of waiting forever; once
 * every rank has settled, the first error is rethrown, else every rank's value is returned.
 */
export async function runOnRanks<T>(comms: readonly Communicator[], fn: (comm: Communicator, index: number) => Promise<T>): Promise<T[]> {
  const res = await Promise.allSettled(
    comms.map(async (c, i) => {
      try {
        return await fn(c, i);
      } catch (e) {
        c.abort(e);
        throw e;
      }
    }),
  );
  const bad = res.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (bad) throw bad.reason;
  return res.map((r) => (r as PromiseFulfilledResult<T>).value);
}
