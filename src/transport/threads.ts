/**
 * The threads transport: worker_threads over SharedArrayBuffer, with placement.
 *
 * PLACEMENT. M workers host N logical ranks (M divides N); worker w hosts the N/M consecutive ranks
 * w·N/M … (w+1)·N/M − 1 as virtual ranks (one async task each, as in the virtual transport).
 *
 * MAIN THREAD: `launchThreadGroup({ nRanks, nWorkers, workerModule, workerData })` allocates the shared
 * memory, spawns the M workers running `workerModule` (a compiled .js file), and resolves with every
 * rank's returned value (index = rank), or rejects with CommAbortedError(failedRank, original message)
 * as soon as a rank fails or a worker dies, once every worker has stopped (workers get `abortGraceMs`,
 * default 250 ms, to exit by themselves; the rest are terminated). The main thread never blocks: it
 * listens to worker events and polls the shared abort flag every 20 ms.
 *
 * WORKER: `joinThreadGroup()` returns one Communicator per local rank and `run(fn)`, which runs fn for
 * every local rank concurrently, reports each rank's value (or error) to the main thread, and aborts
 * the group when a rank throws.
 *
 * SHARED MEMORY.
 * - Control block (Int32Array on a SAB): the abort word (0 none, 1 being written, 2 set), the failed
 *   rank, a 4 KiB UTF-8 message area; the barrier words (arrival count, generation); and collective
 *   headers (sequence number, kind, op, element type, n, root, tag hash and the first 96 bytes of the
 *   tag) in two banks (by sequence parity) × M workers.
 * - Data block: N + 1 slots of `slotBytes` bytes each (default 4 MiB, rounded up to a multiple of 64):
 *   slot r stages rank r's input, slot N holds a reduced result. Collectives larger than a slot are
 *   processed in rounds of at most one slot per rank (reduceScatter: N segments of slotBytes/(N·bpe)
 *   elements per round), so any size works with fixed memory (N + 1)·slotBytes; results do not depend
 *   on the round size because every reduction is element-wise in fixed rank order.
 *
 * PROTOCOL. Call k of every local rank forms collective k. When the last local rank of a worker
 * arrives, the worker (its local ranks all being parked on promises) runs collective k synchronously,
 * blocking in Atomics.wait where needed:
 *   header → per round: post (copy local inputs into their slots) → BARRIER 1 → (first round: compare
 *   every worker's header with worker 0's; any difference fails every rank with CommMismatchError) →
 *   compute → BARRIER 2 → copy out.
 *   - allReduce: worker w reduces the w-th 16-element-aligned chunk of the round, ranks 0…N−1 in order,
 *     into the result slot (parallel, disjoint); after barrier 2 every worker copies the result to its
 *     local ranks' buffers.
 *   - reduceScatter: each worker reduces its own ranks' segments from all slots straight into their
 *     outputs (between the barriers).
 *   - allGather, broadcast: each worker copies from the posting slots straight into its outputs.
 *   - barrier: header and barrier 1 only.
 * Slot reuse is safe without a third barrier: rank slots are written only before barrier 1 and read
 * only between barriers 1 and 2; the result slot is written only between barriers 1 and 2 and read only
 * after barrier 2 and before the next barrier 1. Headers alternate banks by sequence parity.
 * The barrier is a generation barrier (count + generation word): the last arriver resets the count,
 * bumps the generation and notifies; the others poll the generation for an adaptive budget (up to
 * `spinUs`, 50 µs by default when workers do not outnumber cores: a futex wake-up costs ~20-40 µs;
 * halved after every poll in vain, down to 20 µs, doubled after a successful one, so workers sharing
 * a core with the one they wait for do not starve it for long), then Atomics.wait in 10 ms slices,
 * re-checking the abort word after every slice. Measured between 2 workers on this 2-core machine:
 * all-reduce of 4 KiB ~4 µs, of 16 MiB ~4.8 ms (~3.5 GB/s).
 *
 * ABORT. A rank's failure (abort(), or run's fn throwing) sets the abort word with its rank and message
 * (first writer wins, by compare-and-exchange) and notifies every waiter: workers blocked in a barrier
 * wake within milliseconds and reject their ranks' calls with CommAbortedError; idle workers notice on
 * their next call or within 20 ms (a timer). A worker that dies without setting the flag (process.exit,
 * uncaught error, termination) is detected by the main thread's 'error' / 'exit' listeners, which set
 * the flag on its behalf.
 */
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import { isMainThread, parentPort, Worker, workerData as rawWorkerData } from 'node:worker_threads';
import { CommAbortedError, type Communicator } from '../tp/comm.js';
import {
  type CollectiveCall,
  CommMismatchError,
  describeCall,
  type Executor,
  errorMessage,
  LocalRankGroup,
  reduceRanks,
  RemoteAbort,
  tagHash,
} from './transport-common.js';

// ---------------------------------------------------------------------------------------------------
// Shared control block layout (indices into an Int32Array)
// ---------------------------------------------------------------------------------------------------

const ABORT = 0; // 0: none, 1: being written, 2: set
const FAILED_RANK = 1;
const MSG_LEN = 2;
const COUNT = 16; // barrier arrivals (own cache line)
const GEN = 32; // barrier generation (own cache line)
const MSG_BASE = 64; // int index of the message area
const MSG_BYTES = 4096;
const HDR_BASE = MSG_BASE + MSG_BYTES / 4;
const HDR_INTS = 32; // 8 fields + 96 tag bytes
const HDR_TAG_BYTES = (HDR_INTS - 8) * 4;
const WAIT_SLICE_MS = 10;
const POLL_MS = 20;
const SPIN_FLOOR_MS = 0.02;

/** Default staging slot size per rank. */
export const DEFAULT_SLOT_BYTES = 4 * 1024 * 1024;

const KIND_CODES = ['barrier', 'allReduce', 'reduceScatter', 'allGather', 'broadcast'] as const;
const OP_CODES = ['', 'sum', 'max'] as const;
const DTYPE_CODES = ['none', 'float32', 'float64'] as const;

function controlInts(nWorkers: number): number {
  return HDR_BASE + 2 * nWorkers * HDR_INTS;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Set the abort word (first writer wins). Never blocks. Returns whether this call set it. */
function trySetAbort(ctl: Int32Array, rank: number, message: string): boolean {
  if (Atomics.compareExchange(ctl, ABORT, 0, 1) !== 0) return false;
  Atomics.store(ctl, FAILED_RANK, rank);
  let bytes = encoder.encode(message);
  if (bytes.length > MSG_BYTES) bytes = bytes.subarray(0, MSG_BYTES);
  new Uint8Array(ctl.buffer, MSG_BASE * 4, MSG_BYTES).set(bytes);
  Atomics.store(ctl, MSG_LEN, bytes.length);
  Atomics.store(ctl, ABORT, 2);
  Atomics.notify(ctl, ABORT);
  Atomics.notify(ctl, GEN);
  return true;
}

/** The recorded failure, once completely written; null otherwise. Never blocks. */
function readAbort(ctl: Int32Array): { rank: number; message: string } | null {
  if (Atomics.load(ctl, ABORT) !== 2) return null;
  const len = Atomics.load(ctl, MSG_LEN);
  const bytes = new Uint8Array(ctl.buffer, MSG_BASE * 4, len).slice();
  return { rank: Atomics.load(ctl, FAILED_RANK), message: decoder.decode(bytes) };
}


function rankRange(first: number, count: number): string {
  return count === 1 ? `rank ${first}` : `ranks ${first}–${first + count - 1}`;
}

// ---------------------------------------------------------------------------------------------------
// Worker side
// ---------------------------------------------------------------------------------------------------

const KEY = '__caatnetThreadGroup';

interface GroupSpec {
  ctl: SharedArrayBuffer;
  data: SharedArrayBuffer;
  nRanks: number;
  nWorkers: number;
  workerIndex: number;
  slotBytes: number;
  spinUs: number;
}

class SharedMemoryExecutor implements Executor {
  private readonly ctl: Int32Array;
  private readonly M: number;
  private readonly N: number;
  private readonly L: number;
  private readonly w: number;
  private readonly firstRank: number;
  private readonly slotBytes: number;
  private readonly f32: Float32Array[];
  private readonly f64: Float64Array[];
  private readonly spinMs: number;
  private spinBudgetMs: number;

  constructor(spec: GroupSpec) {
    this.ctl = new Int32Array(spec.ctl);
    this.M = spec.nWorkers;
    this.N = spec.nRanks;
    this.L = spec.nRanks / spec.nWorkers;
    this.w = spec.workerIndex;
    this.firstRank = this.w * this.L;
    this.slotBytes = spec.slotBytes;
    this.f32 = [];
    this.f64 = [];
    for (let s = 0; s <= this.N; s++) {
      this.f32.push(new Float32Array(spec.data, s * spec.slotBytes, spec.slotBytes / 4));
      this.f64.push(new Float64Array(spec.data, s * spec.slotBytes, spec.slotBytes / 8));
    }
    this.spinMs = spec.spinUs / 1000;
    this.spinBudgetMs = this.spinMs;
  }

  remoteFailure(): { rank: number; message: string } | null {
    return readAbort(this.ctl);
  }

  onLocalFailure(rank: number, message: string): void {
    trySetAbort(this.ctl, rank, message);
  }

  private checkAbort(): void {
    if (Atomics.load(this.ctl, ABORT) === 0) return;
    // Being written by another thread: it finishes within microseconds.
    while (Atomics.load(this.ctl, ABORT) === 1) Atomics.wait(this.ctl, ABORT, 1, 1);
    const info = readAbort(this.ctl)!;
    throw new RemoteAbort(info.rank, info.message);
  }

  /** Generation barrier across the M workers. */
  private sync(): void {
    const ctl = this.ctl;
    if (this.M === 1) return;
    const gen = Atomics.load(ctl, GEN);
    if (Atomics.add(ctl, COUNT, 1) === this.M - 1) {
      Atomics.store(ctl, COUNT, 0);
      Atomics.add(ctl, GEN, 1);
      Atomics.notify(ctl, GEN);
      return;
    }
    if (this.spinMs > 0) {
      // Adaptive: polling that pays off grows the budget (up to spinUs); polling in vain halves it
      // (down to a floor), so a worker sharing its core with the one it waits for soon stops polling.
      const until = performance.now() + this.spinBudgetMs;
      for (;;) {
        for (let i = 0; i < 64; i++) {
          if (Atomics.load(ctl, GEN) !== gen) {
            this.spinBudgetMs = Math.min(this.spinMs, this.spinBudgetMs * 2);
            return;
          }
        }
        if (performance.now() > until) break;
      }
      this.spinBudgetMs = Math.max(Math.min(SPIN_FLOOR_MS, this.spinMs), this.spinBudgetMs / 2);
    }
    for (;;) {
      Atomics.wait(ctl, GEN, gen, WAIT_SLICE_MS);
      if (Atomics.load(ctl, GEN) !== gen) return;
      this.checkAbort();
    }
  }

  private writeHeader(seq: number, c: CollectiveCall): void {
    const ctl = this.ctl;
    const base = HDR_BASE + ((seq & 1) * this.M + this.w) * HDR_INTS;
    ctl[base] = seq | 0;
    ctl[base + 1] = KIND_CODES.indexOf(c.kind);
    ctl[base + 2] = OP_CODES.indexOf(c.op);
    ctl[base + 3] = DTYPE_CODES.indexOf(c.dtype);
    ctl[base + 4] = c.n;
    ctl[base + 5] = c.root;
    ctl[base + 6] = tagHash(c.tag);
    let tb = encoder.encode(c.tag);
    if (tb.length > HDR_TAG_BYTES) tb = tb.subarray(0, HDR_TAG_BYTES);
    ctl[base + 7] = tb.length;
    const area = new Uint8Array(ctl.buffer, (base + 8) * 4, HDR_TAG_BYTES);
    area.fill(0); // the comparison reads whole words
    area.set(tb);
  }

  private describeHeader(seq: number, v: number): string {
    const ctl = this.ctl;
    const base = HDR_BASE + ((seq & 1) * this.M + v) * HDR_INTS;
    const tagLen = ctl[base + 7]!;
    const tag = decoder.decode(new Uint8Array(ctl.buffer, (base + 8) * 4, tagLen).slice());
    const call: CollectiveCall = {
      kind: KIND_CODES[ctl[base + 1]!] ?? 'barrier',
      op: OP_CODES[ctl[base + 2]!] ?? '',
      tag,
      dtype: DTYPE_CODES[ctl[base + 3]!] ?? 'none',
      n: ctl[base + 4]!,
      root: ctl[base + 5]!,
      buf: null,
      offset: 0,
      inp: null,
    };
    const s = describeCall(call);
    return ctl[base]! === (seq | 0) ? s : `${s} as its collective #${ctl[base]!}`;
  }

  /** After barrier 1 of a collective's first round: every worker's header must equal worker 0's. */
  private checkHeaders(seq: number): void {
    const ctl = this.ctl;
    const b0 = HDR_BASE + (seq & 1) * this.M * HDR_INTS;
    for (let v = 1; v < this.M; v++) {
      const bv = b0 + v * HDR_INTS;
      let same = ctl[bv + 7] === ctl[b0 + 7];
      for (let i = 0; same && i < 8 + Math.ceil(ctl[b0 + 7]! / 4); i++) same = ctl[bv + i] === ctl[b0 + i];
      if (!same) {
        const r0 = 0;
        const rv = v * this.L;
        const msg =
          `collective #${seq} mismatch: ${rankRange(r0, this.L)} called ${this.describeHeader(seq, 0)} ` +
          `but ${rankRange(rv, this.L)} called ${this.describeHeader(seq, v)}`;
        throw new CommMismatchError(seq, [r0, rv], msg);
      }
    }
  }

  private slot(dtype: CollectiveCall['dtype'], s: number): Float32Array | Float64Array {
    return dtype === 'float64' ? this.f64[s]! : this.f32[s]!;
  }

  execute(seq: number, calls: readonly CollectiveCall[]): void {
    this.checkAbort();
    const c0 = calls[0]!;
    this.writeHeader(seq, c0);
    if (c0.kind === 'barrier') {
      this.sync();
      this.checkHeaders(seq);
      return;
    }
    const N = this.N;
    const L = this.L;
    const first = this.firstRank;
    const n = c0.n;
    const bpe = c0.dtype === 'float64' ? 8 : 4;
    const cap = this.slotBytes / bpe;
    const slots: (Float32Array | Float64Array)[] = [];
    for (let s = 0; s <= N; s++) slots.push(this.slot(c0.dtype, s));
    const srcs = slots.slice(0, N);
    const round = c0.kind === 'reduceScatter' ? Math.floor(cap / N) : cap;
    let isFirst = true;
    for (let start = 0; isFirst || start < n; start += round) {
      const len = Math.min(round, n - start);
      // post
      switch (c0.kind) {
        case 'allReduce':
          for (let i = 0; i < L; i++) {
            const c = calls[i]!;
            slots[first + i]!.set(c.buf!.subarray(c.offset + start, c.offset + start + len), 0);
          }
          break;
        case 'broadcast':
          if (c0.root >= first && c0.root < first + L) {
            const c = calls[c0.root - first]!;
            slots[c0.root]!.set(c.buf!.subarray(c.offset + start, c.offset + start + len), 0);
          }
          break;
        case 'reduceScatter':
          for (let i = 0; i < L; i++) {
            const inp = calls[i]!.inp!;
            const sl = slots[first + i]!;
            for (let j = 0; j < N; j++) sl.set(inp.subarray(j * n + start, j * n + start + len), j * len);
          }
          break;
        case 'allGather':
          for (let i = 0; i < L; i++) slots[first + i]!.set(calls[i]!.inp!.subarray(start, start + len), 0);
          break;
      }
      this.sync();
      if (isFirst) this.checkHeaders(seq);
      isFirst = false;
      // compute (between the barriers)
      switch (c0.kind) {
        case 'allReduce': {
          const per = Math.ceil(len / this.M / 16) * 16;
          const a = Math.min(len, this.w * per);
          const b = Math.min(len, a + per);
          reduceRanks(slots[N]!, a, srcs, new Array<number>(N).fill(a), b - a, c0.op === '' ? 'sum' : c0.op);
          break;
        }
        case 'broadcast': {
          const src = slots[c0.root]!.subarray(0, len);
          for (let i = 0; i < L; i++) {
            if (first + i === c0.root) continue;
            const c = calls[i]!;
            c.buf!.set(src, c.offset + start);
          }
          break;
        }
        case 'reduceScatter':
          for (let i = 0; i < L; i++) {
            const r = first + i;
            reduceRanks(calls[i]!.buf!, start, srcs, new Array<number>(N).fill(r * len), len, 'sum');
          }
          break;
        case 'allGather':
          for (let i = 0; i < L; i++) {
            const out = calls[i]!.buf!;
            for (let j = 0; j < N; j++) out.set(slots[j]!.subarray(0, len), j * n + start);
          }
          break;
      }
      this.sync();
      if (c0.kind === 'allReduce') {
        const res = slots[N]!.subarray(0, len);
        for (let i = 0; i < L; i++) {
          const c = calls[i]!;
          c.buf!.set(res, c.offset + start);
        }
      }
    }
  }
}

/** What a worker of a thread group sees. */
export interface ThreadGroupMember<D = unknown> {
  /** One communicator per rank hosted by this worker, in rank order. */
  readonly comms: Communicator[];
  /** The global ranks hosted by this worker. */
  readonly ranks: readonly number[];
  readonly nRanks: number;
  readonly nWorkers: number;
  readonly workerIndex: number;
  /** The `workerData` given to launchThreadGroup. */
  readonly workerData: D;
  /** Send a message to the launcher's `onMessage` (structured-cloned). */
  post(message: unknown): void;
  /**
   * Run fn for every local rank concurrently. Each rank's resolved value is reported to the launcher
   * (it must be structured-cloneable); a rank that throws aborts the group (CommAbortedError on every
   * other rank) and its error is reported. Resolves when every local rank has finished either way.
   */
  run<R>(fn: (comm: Communicator) => Promise<R> | R): Promise<void>;
}

/** True inside a worker started by launchThreadGroup. */
export function isThreadGroupWorker(): boolean {
  return !isMainThread && typeof rawWorkerData === 'object' && rawWorkerData !== null && KEY in rawWorkerData;
}

let joined: ThreadGroupMember | null = null;

/** Join the group this worker was launched into (idempotent: later calls return the same member). */
export function joinThreadGroup<D = unknown>(): ThreadGroupMember<D> {
  if (joined) return joined as ThreadGroupMember<D>;
  if (!isThreadGroupWorker()) throw new Error('joinThreadGroup: not running inside a worker started by launchThreadGroup');
  const wd = rawWorkerData as { [KEY]: GroupSpec; user: D };
  const spec = wd[KEY];
  const port = parentPort!;
  const L = spec.nRanks / spec.nWorkers;
  const ranks = Array.from({ length: L }, (_, i) => spec.workerIndex * L + i);
  const executor = new SharedMemoryExecutor(spec);
  const group = new LocalRankGroup('threads', ranks, spec.nRanks, executor);
  // Notice a failure elsewhere even while no local call is made (ranks parked on earlier calls).
  const poll = setInterval(() => {
    const info = executor.remoteFailure();
    if (info) {
      group.abortRemote(info.rank, info.message);
      clearInterval(poll);
    }
  }, POLL_MS);
  poll.unref();
  const member: ThreadGroupMember<D> = {
    comms: group.comms,
    ranks,
    nRanks: spec.nRanks,
    nWorkers: spec.nWorkers,
    workerIndex: spec.workerIndex,
    workerData: wd.user,
    post(message: unknown): void {
      port.postMessage({ [KEY]: 'user', payload: message });
    },
    async run<R>(fn: (comm: Communicator) => Promise<R> | R): Promise<void> {
      await Promise.all(
        group.comms.map(async (comm) => {
          try {
            const value = await fn(comm);
            port.postMessage({ [KEY]: 'result', rank: comm.rank, value });
          } catch (e) {
            comm.abort(e);
            port.postMessage({
              [KEY]: 'error',
              rank: comm.rank,
              message: errorMessage(e),
              stack: e instanceof Error ? e.stack : undefined,
              aborted: e instanceof CommAbortedError,
              failedRank: e instanceof CommAbortedError ? e.failedRank : comm.rank,
            });
          }
        }),
      );
    },
  };
  joined = member;
  return member;
}

// ---------------------------------------------------------------------------------------------------
// Main-thread side
// ---------------------------------------------------------------------------------------------------

export interface LaunchThreadGroupOptions<D = unknown> {
  /** Logical ranks N. */
  nRanks: number;
  /** Workers M (divides N; default N: one rank per worker). */
  nWorkers?: number;
  /** The compiled worker module (.js), e.g. new URL('./worker.js', import.meta.url). */
  workerModule: URL | string;
  /** Passed to every worker as joinThreadGroup().workerData (structured-cloned). */
  workerData?: D;
  /** Messages a worker sends with member.post (or raw parentPort messages). */
  onMessage?: (message: unknown, workerIndex: number) => void;
  /** Called once per spawned worker (e.g. to watch its events). */
  onWorker?: (worker: Worker, workerIndex: number) => void;
  /** Staging slot size per rank in bytes (default 4 MiB; rounded up to a multiple of 64, at least 64·N). */
  slotBytes?: number;
  /**
   * The most a worker polls a barrier before sleeping in Atomics.wait (µs); the actual budget adapts
   * between min(20, spinUs) µs and this. Default 50 when workers do not outnumber the cores, else 0
   * (never poll).
   */
  spinUs?: number;
  /** After every rank has reported, how long workers may take to exit by themselves before termination (default 2000 ms). */
  exitGraceMs?: number;
  /** After a failure, how long workers may take to exit by themselves before termination (default 250 ms). */
  abortGraceMs?: number;
}

interface InternalMessage {
  [KEY]: 'result' | 'error' | 'user';
  rank?: number;
  value?: unknown;
  payload?: unknown;
  message?: string;
  stack?: string;
  aborted?: boolean;
  failedRank?: number;
}

function isInternal(m: unknown): m is InternalMessage {
  return typeof m === 'object' && m !== null && KEY in m;
}

/**
 * Spawn M workers hosting N ranks and collect every rank's result (index = rank). Rejects with
 * CommAbortedError(failedRank, original message) once any rank fails or any worker dies, after
 * terminating all workers.
 */
export function launchThreadGroup<R = unknown, D = unknown>(opts: LaunchThreadGroupOptions<D>): Promise<R[]> {
  const N = opts.nRanks;
  const M = opts.nWorkers ?? N;
  if (!Number.isInteger(N) || N < 1) return Promise.reject(new RangeError(`launchThreadGroup: nRanks must be a positive integer, got ${N}`));
  if (!Number.isInteger(M) || M < 1 || N % M !== 0) {
    return Promise.reject(new RangeError(`launchThreadGroup: nWorkers (${M}) must be a positive divisor of nRanks (${N})`));
  }
  const L = N / M;
  const slotBytes = Math.max(64 * N, Math.ceil((opts.slotBytes ?? DEFAULT_SLOT_BYTES) / 64) * 64);
  const ctlSab = new SharedArrayBuffer(controlInts(M) * 4);
  const ctl = new Int32Array(ctlSab);
  const data = new SharedArrayBuffer((N + 1) * slotBytes);
  const exitGraceMs = opts.exitGraceMs ?? 2000;
  const abortGraceMs = opts.abortGraceMs ?? 250;
  const spinUs = opts.spinUs ?? (M <= availableParallelism() ? 50 : 0);

  return new Promise<R[]>((resolve, reject) => {
    const results = new Array<R>(N);
    const reported = new Uint8Array(N);
    let nReported = 0;
    let state: 'running' | 'finishing' | 'failing' = 'running';
    const stacks = new Map<number, string>();
    const workers: Worker[] = [];
    const exited = new Array<boolean>(M).fill(false);
    const exitPromises: Promise<void>[] = [];

    const workerName = (wi: number): string => `worker ${wi} (${rankRange(wi * L, L)})`;
    const missingOf = (wi: number): number[] => {
      const out: number[] = [];
      for (let r = wi * L; r < (wi + 1) * L; r++) if (!reported[r]) out.push(r);
      return out;
    };

    const fail = (rank: number, message: string): void => {
      if (state !== 'running') return;
      state = 'failing';
      clearInterval(poll);
      trySetAbort(ctl, rank, message);
      let info = readAbort(ctl);
      // Another thread may be half-way through writing its failure: it takes microseconds.
      for (let i = 0; !info && i < 100000; i++) info = readAbort(ctl);
      const f = info ?? { rank, message };
      const err = new CommAbortedError(f.rank, f.message);
      const stack = stacks.get(f.rank);
      if (stack) err.cause = Object.assign(new Error(f.message), { stack });
      // Let the workers wind down by themselves (their ranks reject, report and return), then
      // terminate whatever is still running.
      const timer = setTimeout(() => {
        workers.forEach((w, i) => {
          if (!exited[i]) void w.terminate();
        });
      }, abortGraceMs);
      void Promise.all(exitPromises).then(() => {
        clearTimeout(timer);
        reject(err);
      });
    };

    const finish = (): void => {
      state = 'finishing';
      clearInterval(poll);
      const timer = setTimeout(() => {
        workers.forEach((w, i) => {
          if (!exited[i]) void w.terminate();
        });
      }, exitGraceMs);
      void Promise.all(exitPromises).then(() => {
        clearTimeout(timer);
        resolve(results);
      });
    };

    const poll = setInterval(() => {
      const info = readAbort(ctl);
      if (info) fail(info.rank, info.message);
    }, POLL_MS);

    for (let wi = 0; wi < M; wi++) {
      const spec: GroupSpec = { ctl: ctlSab, data, nRanks: N, nWorkers: M, workerIndex: wi, slotBytes, spinUs };
      let worker: Worker;
      try {
        worker = new Worker(opts.workerModule, { workerData: { [KEY]: spec, user: opts.workerData } });
      } catch (e) {
        fail(wi * L, `${workerName(wi)} could not start: ${errorMessage(e)}`);
        break;
      }
      workers.push(worker);
      exitPromises.push(new Promise<void>((res) => worker.once('exit', () => res())));
      worker.on('message', (m: unknown) => {
        if (!isInternal(m)) {
          opts.onMessage?.(m, wi);
          return;
        }
        switch (m[KEY]) {
          case 'user':
            opts.onMessage?.(m.payload, wi);
            return;
          case 'result': {
            const r = m.rank!;
            if (!reported[r]) {
              reported[r] = 1;
              results[r] = m.value as R;
              nReported++;
              if (nReported === N && state === 'running') finish();
            }
            return;
          }
          case 'error':
            if (m.stack !== undefined && !m.aborted) stacks.set(m.rank!, m.stack);
            if (m.aborted) fail(m.failedRank!, m.message!);
            else fail(m.rank!, m.message!);
            return;
        }
      });
      worker.on('error', (e: unknown) => {
        const missing = missingOf(wi);
        fail(missing[0] ?? wi * L, `${workerName(wi)} crashed: ${errorMessage(e)}`);
      });
      worker.on('exit', (code: number) => {
        exited[wi] = true;
        if (state !== 'running') return;
        const check = (): void => {
          const missing = missingOf(wi);
          if (missing.length > 0) {
            fail(missing[0]!, `${workerName(wi)} exited with code ${code} before rank(s) ${missing.join(', ')} finished`);
          }
        };
        // Messages the worker posted just before exiting may still be in flight.
        setTimeout(check, 50);
      });
      opts.onWorker?.(worker, wi);
    }
  });
}
