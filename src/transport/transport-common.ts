/**
 * Machinery shared by the in-process transports (virtual ranks, and the virtual ranks hosted inside
 * each worker of the threads transport):
 *
 * - argument validation turning a Communicator call into a `CollectiveCall` record;
 * - `LocalRankGroup`: the ranks hosted by one thread. Each rank's calls are numbered in order; call k
 *   of every local rank forms collective k. The arrivals are checked against each other (kind, op, tag,
 *   element type, size, root) and, once every local rank has arrived, handed to an `Executor` that
 *   computes the collective synchronously (in memory, or across workers over shared memory);
 * - poisoning: once any rank fails, every pending and future call rejects with CommAbortedError;
 * - statistics (bytes and calls by tag, time inside collectives);
 * - the fixed-order reduction kernels: out = x0; out += x1; out += x2; … rounded in the element type
 *   after every addition (max: element-wise Math.max in the same order).
 */
import { performance } from 'node:perf_hooks';
import type { FloatArray } from '../backend/types.js';
import { CommAbortedError, type CommStats, type Communicator, type ReduceOp } from '../tp/comm.js';

export type CollectiveKind = 'allReduce' | 'reduceScatter' | 'allGather' | 'broadcast' | 'barrier';
export type DType = 'float32' | 'float64' | 'none';

/** One rank's view of one collective call, validated. */
export interface CollectiveCall {
  kind: CollectiveKind;
  /** allReduce only; '' otherwise. */
  op: ReduceOp | '';
  tag: string;
  dtype: DType;
  /**
   * Per-rank element count: the region length (allReduce, broadcast), n (reduceScatter: output
   * elements, allGather: input elements); 0 for a barrier.
   */
  n: number;
  /** broadcast root; -1 otherwise. */
  root: number;
  /** allReduce, broadcast: the region's buffer; reduceScatter, allGather: the output. */
  buf: FloatArray | null;
  /** Element offset of the region in `buf` (0 for reduceScatter and allGather outputs). */
  offset: number;
  /** reduceScatter, allGather: the input. */
  inp: FloatArray | null;
  /** Payload bytes to count instead of payloadBytes' rule (an allReduceBf16 carried by an all-gather). */
  counted?: number;
}

/**
 * Ranks that called different collectives at the same position of their call sequence. `ranks` is
 * [reference rank, differing rank]; the group is poisoned as if the differing rank had failed, and
 * every rank reaching that collective rejects with this error.
 */
export class CommMismatchError extends Error {
  constructor(
    readonly seq: number,
    readonly ranks: readonly number[],
    message: string,
  ) {
    super(message);
    this.name = 'CommMismatchError';
  }
}

/** Thrown by an Executor when another part of the group (another worker) poisoned it. */
export class RemoteAbort extends Error {
  constructor(
    readonly failedRank: number,
    readonly original: string,
  ) {
    super(`rank ${failedRank} failed: ${original}`);
    this.name = 'RemoteAbort';
  }
}

export function errorMessage(e: unknown): string {
  if (e instanceof CommAbortedError) return e.original;
  if (e instanceof Error) return e.message;
  return String(e);
}

function dtypeOf(a: unknown, what: string): DType {
  if (a instanceof Float32Array) return 'float32';
  if (a instanceof Float64Array) return 'float64';
  throw new TypeError(`${what} must be a Float32Array or Float64Array`);
}

function checkCount(v: number, what: string): void {
  if (!Number.isInteger(v) || v < 0) throw new RangeError(`${what} must be a non-negative integer, got ${v}`);
}

/** FNV-1a hash of a collective's tag (unsigned 32-bit), sent with every call to check the ranks agree. */
export function tagHash(tag: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < tag.length; i++) {
    h ^= tag.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

export function describeCall(c: CollectiveCall): string {
  const parts: string[] = [];
  if (c.op !== '') parts.push(c.op);
  parts.push(`tag "${c.tag}"`);
  if (c.kind !== 'barrier') parts.push(`n=${c.n}`, c.dtype);
  if (c.kind === 'broadcast') parts.push(`root=${c.root}`);
  return `${c.kind}(${parts.join(', ')})`;
}

export function sameCall(a: CollectiveCall, b: CollectiveCall): boolean {
  return a.kind === b.kind && a.op === b.op && a.tag === b.tag && a.dtype === b.dtype && a.n === b.n && a.root === b.root;
}

/**
 * Payload bytes one rank moves for a call: region length · bytes per element for allReduce and
 * broadcast; the whole tensor (size · n elements) for reduceScatter (its input) and allGather (its
 * output); 0 for a barrier, and 0 for every call in a group of size 1 (nothing moves).
 */
export function payloadBytes(c: CollectiveCall, size: number): number {
  if (size === 1 || c.kind === 'barrier') return 0;
  if (c.counted !== undefined) return c.counted;
  const bpe = c.dtype === 'float64' ? 8 : 4;
  if (c.kind === 'reduceScatter' || c.kind === 'allGather') return size * c.n * bpe;
  return c.n * bpe;
}

export function makeAllReduce(buf: FloatArray, op: ReduceOp, tag: string, offset?: number, length?: number): CollectiveCall {
  const dtype = dtypeOf(buf, 'allReduce buf');
  if (op !== 'sum' && op !== 'max') throw new RangeError(`allReduce: unknown op "${String(op)}" (expected sum or max)`);
  const off = offset ?? 0;
  checkCount(off, 'allReduce offset');
  const len = length ?? buf.length - off;
  checkCount(len, 'allReduce length');
  if (off + len > buf.length) throw new RangeError(`allReduce: region [${off}, ${off + len}) exceeds buffer length ${buf.length}`);
  return { kind: 'allReduce', op, tag, dtype, n: len, root: -1, buf, offset: off, inp: null };
}

export function makeReduceScatter(out: FloatArray, inp: FloatArray, tag: string, size: number, n?: number): CollectiveCall {
  const dtype = dtypeOf(out, 'reduceScatter out');
  if (dtypeOf(inp, 'reduceScatter inp') !== dtype) throw new TypeError('reduceScatter: out and inp must have the same element type');
  const cnt = n ?? out.length;
  checkCount(cnt, 'reduceScatter n');
  if (cnt > out.length) throw new RangeError(`reduceScatter: out has ${out.length} elements, n = ${cnt}`);
  if (size * cnt > inp.length) throw new RangeError(`reduceScatter: inp has ${inp.length} elements, needs size·n = ${size * cnt}`);
  return { kind: 'reduceScatter', op: '', tag, dtype, n: cnt, root: -1, buf: out, offset: 0, inp };
}

export function makeAllGather(out: FloatArray, inp: FloatArray, tag: string, size: number, n?: number): CollectiveCall {
  const dtype = dtypeOf(out, 'allGather out');
  if (dtypeOf(inp, 'allGather inp') !== dtype) throw new TypeError('allGather: out and inp must have the same element type');
  const cnt = n ?? inp.length;
  checkCount(cnt, 'allGather n');
  if (cnt > inp.length) throw new RangeError(`allGather: inp has ${inp.length} elements, n = ${cnt}`);
  if (size * cnt > out.length) throw new RangeError(`allGather: out has ${out.length} elements, needs size·n = ${size * cnt}`);
  return { kind: 'allGather', op: '', tag, dtype, n: cnt, root: -1, buf: out, offset: 0, inp };
}

export function makeBroadcast(buf: FloatArray, root: number, tag: string, size: number, offset?: number, length?: number): CollectiveCall {
  const dtype = dtypeOf(buf, 'broadcast buf');
  if (!Number.isInteger(root) || root < 0 || root >= size) throw new RangeError(`broadcast: root ${root} is not a rank of a group of size ${size}`);
  const off = offset ?? 0;
  checkCount(off, 'broadcast offset');
  const len = length ?? buf.length - off;
  checkCount(len, 'broadcast length');
  if (off + len > buf.length) throw new RangeError(`broadcast: region [${off}, ${off + len}) exceeds buffer length ${buf.length}`);
  return { kind: 'broadcast', op: '', tag, dtype, n: len, root, buf, offset: off, inp: null };
}

export function makeBarrier(tag: string): CollectiveCall {
  return { kind: 'barrier', op: '', tag, dtype: 'none', n: 0, root: -1, buf: null, offset: 0, inp: null };
}

/** What allReduceBf16Via hands to a transport's all-gather: n float32 slots, `counted` payload bytes. */
export interface Bf16Gather {
  out: Float32Array;
  inp: Float32Array;
  n: number;
  counted: number;
}

/**
 * `Communicator.allReduceBf16` on top of a transport's all-gather: the region's bf16 patterns are packed
 * two per float32 slot (bytes copied, never read as numbers), all-gathered, and every rank sums the
 * size contributions in float32 in rank order, then rounds once to bf16. `run(make)` issues the
 * all-gather that `make` describes; `make` validates the arguments and may throw (inside the
 * transport's call, so a bad call fails the whole group instead of leaving the others waiting).
 */
export async function allReduceBf16Via(
  size: number,
  run: (make: () => Bf16Gather) => Promise<void>,
  buf: Uint16Array,
  offset: number | undefined,
  length: number | undefined,
): Promise<void> {
  let g: Bf16Gather | undefined;
  let off = 0;
  let len = 0;
  await run(() => {
    if (!(buf instanceof Uint16Array)) throw new TypeError('allReduceBf16: buf must be a Uint16Array of bf16 bit patterns');
    off = offset ?? 0;
    checkCount(off, 'allReduceBf16 offset');
    len = length ?? buf.length - off;
    checkCount(len, 'allReduceBf16 length');
    if (off + len > buf.length) throw new RangeError(`allReduceBf16: region [${off}, ${off + len}) exceeds buffer length ${buf.length}`);
    const slots = Math.ceil(len / 2);
    const inp = new Float32Array(slots);
    new Uint16Array(inp.buffer, 0, len).set(buf.subarray(off, off + len));
    g = { out: new Float32Array(size * slots), inp, n: slots, counted: size === 1 ? 0 : len * 2 };
    return g;
  });
  if (size === 1 || len === 0 || !g) return;
  const all = new Uint16Array(g.out.buffer);
  const stride = 2 * g.n;
  const acc = new Float32Array(len);
  const accBits = new Uint32Array(acc.buffer);
  for (let i = 0; i < len; i++) accBits[i] = all[i]! << 16;
  const wide = new Float32Array(len);
  const wideBits = new Uint32Array(wide.buffer);
  for (let r = 1; r < size; r++) {
    const base = r * stride;
    for (let i = 0; i < len; i++) wideBits[i] = all[base + i]! << 16;
    for (let i = 0; i < len; i++) acc[i] = acc[i]! + wide[i]!;
  }
  for (let i = 0; i < len; i++) {
    const b = accBits[i]!;
    buf[off + i] = (b & 0x7f800000) === 0x7f800000 && (b & 0x007fffff) !== 0 ? (b >>> 16) | 0x0040 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
}

// ---------------------------------------------------------------------------------------------------
// Fixed-order reduction kernels
// ---------------------------------------------------------------------------------------------------

/**
 * dst[dOff + i] = op over r = 0, 1, …, srcs.length−1 (in that order) of srcs[r][sOffs[r] + i], for
 * i in [0, len). Sum: ((x0 + x1) + x2) + …, each partial sum rounded to float32 by the store (the sum of
 * two float32 values computed in double and rounded once is the correctly rounded float32 sum).
 * dst may alias srcs[0] at the same offset; it must not alias the other sources.
 */
export function reduceF32(dst: Float32Array, dOff: number, srcs: readonly Float32Array[], sOffs: readonly number[], len: number, op: ReduceOp): void {
  const nr = srcs.length;
  if (len <= 0) return;
  const a = srcs[0]!;
  const ao = sOffs[0]!;
  if (nr === 1) {
    if (a !== dst || ao !== dOff) dst.set(a.subarray(ao, ao + len), dOff);
    return;
  }
  const b = srcs[1]!;
  const bo = sOffs[1]!;
  if (op === 'sum') {
    for (let i = 0; i < len; i++) dst[dOff + i] = a[ao + i]! + b[bo + i]!;
    for (let r = 2; r < nr; r++) {
      const s = srcs[r]!;
      const so = sOffs[r]!;
      for (let i = 0; i < len; i++) dst[dOff + i] = dst[dOff + i]! + s[so + i]!;
    }
  } else {
    for (let i = 0; i < len; i++) dst[dOff + i] = Math.max(a[ao + i]!, b[bo + i]!);
    for (let r = 2; r < nr; r++) {
      const s = srcs[r]!;
      const so = sOffs[r]!;
      for (let i = 0; i < len; i++) dst[dOff + i] = Math.max(dst[dOff + i]!, s[so + i]!);
    }
  }
}

/** Float64 twin of reduceF32 (kept separate so each loop sees one array type). */
export function reduceF64(dst: Float64Array, dOff: number, srcs: readonly Float64Array[], sOffs: readonly number[], len: number, op: ReduceOp): void {
  const nr = srcs.length;
  if (len <= 0) return;
  const a = srcs[0]!;
  const ao = sOffs[0]!;
  if (nr === 1) {
    if (a !== dst || ao !== dOff) dst.set(a.subarray(ao, ao + len), dOff);
    return;
  }
  const b = srcs[1]!;
  const bo = sOffs[1]!;
  if (op === 'sum') {
    for (let i = 0; i < len; i++) dst[dOff + i] = a[ao + i]! + b[bo + i]!;
    for (let r = 2; r < nr; r++) {
      const s = srcs[r]!;
      const so = sOffs[r]!;
      for (let i = 0; i < len; i++) dst[dOff + i] = dst[dOff + i]! + s[so + i]!;
    }
  } else {
    for (let i = 0; i < len; i++) dst[dOff + i] = Math.max(a[ao + i]!, b[bo + i]!);
    for (let r = 2; r < nr; r++) {
      const s = srcs[r]!;
      const so = sOffs[r]!;
      for (let i = 0; i < len; i++) dst[dOff + i] = Math.max(dst[dOff + i]!, s[so + i]!);
    }
  }
}

/** Dispatch on the element type (all arrays must share it). */
export function reduceRanks(dst: FloatArray, dOff: number, srcs: readonly FloatArray[], sOffs: readonly number[], len: number, op: ReduceOp): void {
  if (dst instanceof Float32Array) reduceF32(dst, dOff, srcs as readonly Float32Array[], sOffs, len, op);
  else reduceF64(dst, dOff, srcs as readonly Float64Array[], sOffs, len, op);
}

// ---------------------------------------------------------------------------------------------------
// Local rank group
// ---------------------------------------------------------------------------------------------------

/**
 * Computes one collective once every local rank has arrived. `calls[i]` is local rank i's call; they
 * have already been checked to agree (sameCall). Synchronous: returns when every local rank's output
 * is written. Throws RemoteAbort when the group was poisoned elsewhere, CommMismatchError when other
 * parts of the group called a different collective.
 */
export interface Executor {
  execute(seq: number, calls: readonly CollectiveCall[]): void;
  /** A local rank failed: propagate to the other parts of the group (no-op in one thread). */
  onLocalFailure(rank: number, message: string): void;
  /** A failure recorded elsewhere in the group, if any (checked on every call). */
  remoteFailure(): { rank: number; message: string } | null;
}

interface Arrival {
  call: CollectiveCall;
  t0: number;
  resolve: () => void;
  reject: (e: unknown) => void;
}

interface Pending {
  arrivals: (Arrival | undefined)[];
  count: number;
  /** Local index of the first arrival (its call is the reference for mismatch checks). */
  first: number;
}

/** Per-tag byte and call counters and the time spent in collectives (CommStats, mutable). */
export class Stats {
  bytes = new Map<string, number>();
  calls = new Map<string, number>();
  waitMs = 0;
  record(tag: string, bytes: number, ms: number): void {
    this.bytes.set(tag, (this.bytes.get(tag) ?? 0) + bytes);
    this.calls.set(tag, (this.calls.get(tag) ?? 0) + 1);
    this.waitMs += ms;
  }
  snapshot(): CommStats {
    return { bytes: new Map(this.bytes), calls: new Map(this.calls), waitMs: this.waitMs };
  }
  reset(): void {
    this.bytes.clear();
    this.calls.clear();
    this.waitMs = 0;
  }
}

/**
 * The ranks hosted by one thread: `ranks[i]` is the global rank of local index i, out of a group of
 * `size` ranks. Produces one Communicator per local rank.
 */
export class LocalRankGroup {
  readonly comms: Communicator[];
  private readonly nextSeq: number[];
  private readonly pending = new Map<number, Pending>();
  private readonly stats: Stats[];
  private poisoned: { rank: number; message: string } | null = null;
  private mismatch: { seq: number; err: CommMismatchError } | null = null;

  constructor(
    readonly transport: string,
    readonly ranks: readonly number[],
    readonly size: number,
    private readonly executor: Executor,
  ) {
    this.nextSeq = ranks.map(() => 0);
    this.stats = ranks.map(() => new Stats());
    this.comms = ranks.map((r, i) => new RankComm(this, i, r));
  }

  /** The failure that poisoned this group, if any. */
  get failure(): { rank: number; message: string } | null {
    return this.poisoned;
  }

  statsOf(local: number): CommStats {
    return this.stats[local]!.snapshot();
  }

  resetStatsOf(local: number): void {
    this.stats[local]!.reset();
  }

  /** Local rank `local` failed with `error`: poison the whole group (first failure wins). */
  abortLocal(local: number, error: unknown): void {
    if (this.poisoned) return;
    let rank = this.ranks[local]!;
    if (error instanceof CommAbortedError) rank = error.failedRank;
    const message = errorMessage(error);
    this.poison(rank, message, true);
  }

  /** The group was poisoned elsewhere (another worker): reject everything here too. */
  abortRemote(rank: number, message: string): void {
    if (this.poisoned) return;
    this.poison(rank, message, false);
  }

  private poison(rank: number, message: string, propagate: boolean, errFor?: (a: Arrival) => unknown): void {
    this.poisoned = { rank, message };
    if (propagate) {
      try {
        this.executor.onLocalFailure(rank, message);
      } catch {
        // propagation is best effort; the local ranks are rejected below either way
      }
    }
    const all: Arrival[] = [];
    for (const p of this.pending.values()) for (const a of p.arrivals) if (a) all.push(a);
    this.pending.clear();
    for (const a of all) a.reject(errFor ? errFor(a) : new CommAbortedError(rank, message));
  }

  /** Entry point of every call. `make` validates the arguments (it may throw). */
  call(local: number, t0: number, make: () => CollectiveCall): Promise<void> {
    if (!this.poisoned) {
      const remote = this.executor.remoteFailure();
      if (remote) this.abortRemote(remote.rank, remote.message);
    }
    if (this.poisoned) {
      // Ranks reaching the collective that mismatched get the mismatch itself.
      const seq = this.nextSeq[local]!++;
      if (this.mismatch && this.mismatch.seq === seq) return Promise.reject(this.mismatch.err);
      return Promise.reject(new CommAbortedError(this.poisoned.rank, this.poisoned.message));
    }
    let call: CollectiveCall;
    try {
      call = make();
    } catch (e) {
      // A call that cannot take part would leave the other ranks waiting forever: fail the group.
      const rank = this.ranks[local]!;
      this.poison(rank, `${errorMessage(e)} (rank ${rank})`, true);
      return Promise.reject(e);
    }
    if (this.size === 1) return this.runAlone(local, t0, call);
    const seq = this.nextSeq[local]!++;
    return new Promise<void>((resolve, reject) => {
      const arrival: Arrival = { call, t0, resolve, reject };
      let p = this.pending.get(seq);
      if (!p) {
        p = { arrivals: new Array<Arrival | undefined>(this.ranks.length).fill(undefined), count: 0, first: local };
        this.pending.set(seq, p);
      }
      p.arrivals[local] = arrival;
      p.count++;
      const ref = p.arrivals[p.first]!.call;
      if (!sameCall(ref, call)) {
        const ra = this.ranks[p.first]!;
        const rb = this.ranks[local]!;
        const msg = `collective #${seq} mismatch: rank ${ra} called ${describeCall(ref)} but rank ${rb} called ${describeCall(call)}`;
        const err = new CommMismatchError(seq, [ra, rb], msg);
        this.mismatch = { seq, err };
        const atSeq = p.arrivals;
        this.poison(rb, msg, true, (a) => (atSeq.includes(a) ? err : new CommAbortedError(rb, msg)));
        return;
      }
      if (p.count === this.ranks.length) {
        this.pending.delete(seq);
        this.execute(seq, p.arrivals as Arrival[]);
      }
    });
  }

  private execute(seq: number, arrivals: Arrival[]): void {
    try {
      this.executor.execute(
        seq,
        arrivals.map((a) => a.call),
      );
    } catch (e) {
      if (e instanceof RemoteAbort) {
        this.pending.set(seq, { arrivals, count: arrivals.length, first: 0 });
        this.abortRemote(e.failedRank, e.original);
      } else if (e instanceof CommMismatchError) {
        this.pending.set(seq, { arrivals, count: arrivals.length, first: 0 });
        const rank = e.ranks[e.ranks.length - 1] ?? this.ranks[0]!;
        this.mismatch = { seq, err: e };
        this.poison(rank, e.message, true, (a) => (arrivals.includes(a) ? e : new CommAbortedError(rank, e.message)));
      } else {
        this.pending.set(seq, { arrivals, count: arrivals.length, first: 0 });
        this.poison(this.ranks[0]!, `${this.transport} transport error: ${errorMessage(e)}`, true);
      }
      return;
    }
    const t1 = performance.now();
    for (let i = 0; i < arrivals.length; i++) {
      const a = arrivals[i]!;
      this.stats[i]!.record(a.call.tag, payloadBytes(a.call, this.size), t1 - a.t0);
      a.resolve();
    }
  }

  /** A group of one rank: nothing moves; reduceScatter and allGather copy input to output. */
  private runAlone(local: number, t0: number, c: CollectiveCall): Promise<void> {
    if ((c.kind === 'reduceScatter' || c.kind === 'allGather') && c.n > 0) {
      const out = c.buf!;
      const inp = c.inp!;
      if (out.buffer !== inp.buffer || out.byteOffset !== inp.byteOffset) out.set(inp.subarray(0, c.n), 0);
    }
    this.stats[local]!.record(c.tag, 0, performance.now() - t0);
    return Promise.resolve();
  }
}

class RankComm implements Communicator {
  readonly size: number;
  readonly transport: string;

  constructor(
    private readonly group: LocalRankGroup,
    private readonly local: number,
    readonly rank: number,
  ) {
    this.size = group.size;
    this.transport = group.transport;
  }

  allReduce(buf: FloatArray, op: ReduceOp, tag: string, offset?: number, length?: number): Promise<void> {
    const t0 = performance.now();
    return this.group.call(this.local, t0, () => makeAllReduce(buf, op, tag, offset, length));
  }

  reduceScatter(out: FloatArray, inp: FloatArray, tag: string, n?: number): Promise<void> {
    const t0 = performance.now();
    return this.group.call(this.local, t0, () => makeReduceScatter(out, inp, tag, this.size, n));
  }

  allGather(out: FloatArray, inp: FloatArray, tag: string, n?: number): Promise<void> {
    const t0 = performance.now();
    return this.group.call(this.local, t0, () => makeAllGather(out, inp, tag, this.size, n));
  }

  allReduceBf16(buf: Uint16Array, tag: string, offset?: number, length?: number): Promise<void> {
    const t0 = performance.now();
    return allReduceBf16Via(this.size, (make) => this.group.call(this.local, t0, () => {
      const g = make();
      return { ...makeAllGather(g.out, g.inp, tag, this.size, g.n), counted: g.counted };
    }), buf, offset, length);
  }

  broadcast(buf: FloatArray, root: number, tag: string, offset?: number, length?: number): Promise<void> {
    const t0 = performance.now();
    return this.group.call(this.local, t0, () => makeBroadcast(buf, root, tag, this.size, offset, length));
  }

  barrier(tag = 'barrier'): Promise<void> {
    const t0 = performance.now();
    return this.group.call(this.local, t0, () => makeBarrier(tag));
  }

  stats(): CommStats {
    return this.group.statsOf(this.local);
  }

  resetStats(): void {
    this.group.resetStatsOf(this.local);
  }

  abort(error: unknown): void {
    this.group.abortLocal(this.local, error);
  }
}

/**
 * The collective methods of a transport that runs one collective at a time (TCP, MPI): every call is
 * described by a CollectiveCall and handed to `issue`, which runs the calls in order and records each
 * one's statistics in `counters` (the start time t0 is taken before the call is described, so argument
 * checking counts as time in the collective, as on the other transports).
 */
export abstract class SerialCommunicator implements Communicator {
  abstract readonly rank: number;
  abstract readonly size: number;
  abstract readonly transport: string;
  protected readonly counters = new Stats();

  protected abstract issue(t0: number, make: () => CollectiveCall): Promise<void>;
  abstract abort(error: unknown): void;

  allReduce(buf: FloatArray, op: ReduceOp, tag: string, offset?: number, length?: number): Promise<void> {
    return this.issue(performance.now(), () => makeAllReduce(buf, op, tag, offset, length));
  }

  reduceScatter(out: FloatArray, inp: FloatArray, tag: string, n?: number): Promise<void> {
    return this.issue(performance.now(), () => makeReduceScatter(out, inp, tag, this.size, n));
  }

  allGather(out: FloatArray, inp: FloatArray, tag: string, n?: number): Promise<void> {
    return this.issue(performance.now(), () => makeAllGather(out, inp, tag, this.size, n));
  }

  allReduceBf16(buf: Uint16Array, tag: string, offset?: number, length?: number): Promise<void> {
    const t0 = performance.now();
    return allReduceBf16Via(this.size, (make) => this.issue(t0, () => {
      const g = make();
      return { ...makeAllGather(g.out, g.inp, tag, this.size, g.n), counted: g.counted };
    }), buf, offset, length);
  }

  broadcast(buf: FloatArray, root: number, tag: string, offset?: number, length?: number): Promise<void> {
    return this.issue(performance.now(), () => makeBroadcast(buf, root, tag, this.size, offset, length));
  }

  barrier(tag = 'barrier'): Promise<void> {
    return this.issue(performance.now(), () => makeBarrier(tag));
  }

  stats(): CommStats {
    return this.counters.snapshot();
  }

  resetStats(): void {
    this.counters.reset();
  }
}

/** Canonical JSON (sorted keys) so that key order never makes configurations differ. */
export function canonicalJson(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v) ?? 'null';
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  const o = v as Record<string, unknown>;
  return `{${Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
    .join(',')}}`;
}
