/**
 * The MPI transport: one rank per process, collectives through the optional MPI addon (mpi/, built by
 * `npm run build:mpi` against Open MPI or MPICH; see mpi/src/mpi_addon.cc).
 *
 *     mpirun -np 4 node my-script.js        # in the script:
 *     const comm = createMpiCommunicator();  // rank and size from MPI_COMM_WORLD
 *
 * WHEN. MPI is used only in a process started by an MPI launcher: `detectMpiLauncher` looks for
 * OMPI_COMM_WORLD_SIZE (Open MPI's mpirun), PMIX_RANK (Open MPI, or srun --mpi=pmix) or PMI_SIZE
 * (MPICH's mpiexec, or srun --mpi=pmi2). MPI_Init is never attempted elsewhere: a failed MPI_Init
 * aborts the process and cannot be caught. `mpiAvailable()` says whether both conditions hold (a
 * launcher, and an addon that loads) and why not; `createMpiCommunicator()` throws with that reason.
 *
 * BITS. Sums are computed by the addon in rank order, ((x0 + x1) + x2) + …, rounded in the element
 * type after each addition, exactly as the virtual and threads transports do (MPI_Allreduce's own
 * order is implementation-defined, so it is not used): every rank and every transport gets the same
 * bits. Max follows Math.max (NaN wins, +0 over −0).
 *
 * CONCURRENCY. At most one collective is in flight per process; calls made while one is pending are
 * queued and issued in call order, so every rank issues them in the same order. A collective whose
 * payload is at most `syncBytes` (16 KiB by default, env CAAT_MPI_SYNC_BYTES) and that finds nothing
 * queued runs synchronously on the main thread (a few microseconds; handing it to a pool thread would
 * cost more than the transfer). Larger ones run on a libuv pool thread and the event loop keeps
 * running (MPI_THREAD_SERIALIZED; when the library provides less, everything runs synchronously).
 *
 * CHECKS. Every collective starts by exchanging a 128-byte header (sequence number, kind, op, element
 * type, count, root, tag); when ranks disagree, every rank rejects with CommMismatchError naming rank
 * 0's call and the first differing rank's call, and the communicator is poisoned.
 *
 * FAILURE. `abort(error)` ends the whole job: it prints "rank K failed: <message>" to stderr (K is the
 * failed rank: this one, the one a CommAbortedError names, or the differing rank of a
 * CommMismatchError) and calls MPI_Abort, which makes the
 * launcher terminate every rank. A process that exits with a non-zero code without calling abort does
 * the same from its 'exit' handler; one that exits with code 0 finalizes MPI there (or earlier with
 * `finalize()`). An MPI error inside a collective rejects that call (and every later one) with
 * CommAbortedError naming this rank.
 *
 * Statistics (bytes and calls by tag, waitMs) follow the Communicator contract (src/tp/comm.ts).
 *
 * TUNING. Before MPI_Init the addon sets OMPI_MCA_btl_vader_single_copy_mechanism=none unless it is
 * already set (Open MPI's shared-memory transport then copies through the shared segment instead of
 * process_vm_readv, which containers often forbid and which measured slower here).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import type { FloatArray } from '../backend/types.js';
import { CommAbortedError, type ReduceOp } from '../tp/comm.js';
import {
  type CollectiveCall,
  CommMismatchError,
  describeCall,
  errorMessage,
  payloadBytes,
  SerialCommunicator,
  canonicalJson,
  tagHash,
} from './transport-common.js';

// ---------------------------------------------------------------------------------------------------
// Launcher detection
// ---------------------------------------------------------------------------------------------------

export interface MpiLauncher {
  /** openmpi: Open MPI's mpirun; pmix: a PMIx launcher (srun --mpi=pmix); mpich: PMI (MPICH's mpiexec, srun --mpi=pmi2). */
  kind: 'openmpi' | 'pmix' | 'mpich';
  /** The variable that identified it. */
  variable: string;
  /** Rank and world size when the environment states them (MPI_Init gives the authoritative values). */
  rank: number | null;
  size: number | null;
}

function intVar(env: NodeJS.ProcessEnv, name: string): number | null {
  const v = env[name];
  if (v === undefined || v.trim() === '') return null;
  const n = Number(v);
  return Number.isInteger(n) && n >= 0 ? n : null;
}

function present(env: NodeJS.ProcessEnv, name: string): boolean {
  const v = env[name];
  return v !== undefined && v !== '';
}

/** The MPI launcher that started this process, or null (from environment variables only). */
export function detectMpiLauncher(env: NodeJS.ProcessEnv = process.env): MpiLauncher | null {
  if (present(env, 'OMPI_COMM_WORLD_SIZE')) {
    return { kind: 'openmpi', variable: 'OMPI_COMM_WORLD_SIZE', rank: intVar(env, 'OMPI_COMM_WORLD_RANK'), size: intVar(env, 'OMPI_COMM_WORLD_SIZE') };
  }
  if (present(env, 'PMIX_RANK')) {
    return { kind: 'pmix', variable: 'PMIX_RANK', rank: intVar(env, 'PMIX_RANK'), size: intVar(env, 'SLURM_NTASKS') ?? intVar(env, 'PMIX_SIZE') };
  }
  if (present(env, 'PMI_SIZE')) {
    return { kind: 'mpich', variable: 'PMI_SIZE', rank: intVar(env, 'PMI_RANK'), size: intVar(env, 'PMI_SIZE') };
  }
  return null;
}

export const MPI_LAUNCHER_VARIABLES: readonly string[] = ['OMPI_COMM_WORLD_SIZE', 'PMIX_RANK', 'PMI_SIZE'];

export interface MpirunInfo {
  /** The command (`mpirun`, or CAAT_MPIRUN). */
  command: string;
  flavor: 'openmpi' | 'mpich' | 'unknown';
  /** First line of `mpirun --version`. */
  version: string;
  /**
   * Arguments to put before `-np N`: for Open MPI, --oversubscribe (more ranks than cores is fine for
   * tests) and --allow-run-as-root when running as root.
   */
  baseArgs: string[];
}

/** The `mpirun` on the PATH (or env CAAT_MPIRUN), or null when there is none. */
export function findMpirun(env: NodeJS.ProcessEnv = process.env): MpirunInfo | null {
  const command = env['CAAT_MPIRUN'] || 'mpirun';
  const r = spawnSync(command, ['--version'], { encoding: 'utf8', timeout: 10_000, env });
  if (r.error || r.status !== 0) return null;
  const text = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  const version = text.split('\n').find((l) => l.trim() !== '')?.trim() ?? 'unknown';
  if (/Open MPI|OpenRTE/i.test(text)) {
    const root = typeof process.getuid === 'function' && process.getuid() === 0;
    return { command, flavor: 'openmpi', version, baseArgs: [...(root ? ['--allow-run-as-root'] : []), '--oversubscribe'] };
  }
  if (/HYDRA|MPICH/i.test(text)) return { command, flavor: 'mpich', version, baseArgs: [] };
  return { command, flavor: 'unknown', version, baseArgs: [] };
}

// ---------------------------------------------------------------------------------------------------
// The addon
// ---------------------------------------------------------------------------------------------------

export interface MpiInitInfo {
  rank: number;
  size: number;
  /** Thread support MPI provided: 'serialized' or 'multiple' allow the pool-thread path. */
  threadLevel: 'single' | 'funneled' | 'serialized' | 'multiple' | 'unknown';
  /** e.g. "Open MPI v4.1.4". */
  library: string;
  host: string;
}

/** The addon's exports (mpi/src/mpi_addon.cc). */
export interface MpiAddon {
  /** Library version; safe before MPI_Init. */
  info(): { library: string; standard: string; initialized: boolean; finalized: boolean };
  /** MPI_Init_thread(SERIALIZED) once, then rank and size of MPI_COMM_WORLD. Only under a launcher. */
  init(): MpiInitInfo;
  /** Status 0 (done) or 1 (headers differ); a Promise of it when async. Throws / rejects on MPI errors. */
  collective(
    async: boolean,
    kind: number,
    op: number,
    header: Uint8Array,
    headers: Uint8Array,
    buf: FloatArray | null,
    inp: FloatArray | null,
    n: number,
    root: number,
  ): number | Promise<number>;
  /** MPI_Abort(MPI_COMM_WORLD, code): does not return when MPI is initialized. */
  abort(code: number): void;
  /** MPI_Finalize; false when MPI was not initialized or is already finalized. */
  finalize(): boolean;
}

export type MpiAddonStatus = { ok: true; addon: MpiAddon; path: string } | { ok: false; reason: string };
/** Loads the addon (or says why not). Injectable for tests of the transport choice. */
export type MpiLoader = () => MpiAddonStatus;

/** mpi/ of the package that holds this file (dist/src/tp or src/tp). */
function mpiDir(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const cand = join(dir, 'mpi');
    if (existsSync(join(cand, 'binding.gyp')) || existsSync(join(cand, 'build'))) return cand;
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return undefined;
}

const requireAddon = createRequire(import.meta.url);
let cachedStatus: MpiAddonStatus | null = null;

/** Loads mpi/build/Release/caatnet_mpi.node once per process. Never initialises MPI. */
export const loadMpiAddon: MpiLoader = () => {
  if (cachedStatus) return cachedStatus;
  cachedStatus = loadUncached();
  return cachedStatus;
};

function loadUncached(): MpiAddonStatus {
  const dir = mpiDir();
  if (dir === undefined) return { ok: false, reason: 'cannot locate the package directory (mpi/)' };
  const path = join(dir, 'build', 'Release', 'caatnet_mpi.node');
  if (!existsSync(path)) {
    let why = 'the MPI addon is not built';
    try {
      const st = JSON.parse(readFileSync(join(dir, 'build', 'status.json'), 'utf8')) as { built?: boolean; reason?: string };
      if (st.built === false && st.reason) why = `the MPI addon is not built: ${st.reason}`;
    } catch {
      // no status file: the build never ran
    }
    return { ok: false, reason: `${why} (apt-get install libopenmpi-dev, then npm run build:mpi)` };
  }
  try {
    const addon = requireAddon(path) as MpiAddon;
    addon.info();
    return { ok: true, addon, path };
  } catch (e) {
    return { ok: false, reason: `the MPI addon failed to load: ${errorMessage(e).split('\n')[0]}` };
  }
}

/**
 * Whether this process can use the MPI transport: started by an MPI launcher, and the addon loads.
 * The addon is loaded only when a launcher is present.
 */
export function mpiAvailable(env: NodeJS.ProcessEnv = process.env, loader: MpiLoader = loadMpiAddon): { ok: true } | { ok: false; reason: string } {
  const launcher = detectMpiLauncher(env);
  if (launcher === null) {
    return { ok: false, reason: `not started by an MPI launcher (none of ${MPI_LAUNCHER_VARIABLES.join(', ')} is set)` };
  }
  const st = loader();
  if (!st.ok) return { ok: false, reason: st.reason };
  return { ok: true };
}

// ---------------------------------------------------------------------------------------------------
// The communicator
// ---------------------------------------------------------------------------------------------------

// Codes shared with mpi/src/mpi_addon.cc.
const KIND_CODES = ['barrier', 'allReduce', 'reduceScatter', 'allGather', 'broadcast'] as const;
const OP_CODES: Record<ReduceOp, number> = { sum: 0, max: 1 };
const DTYPE_CODES = ['none', 'float32', 'float64'] as const;
const STATUS_MISMATCH = 1;
const HEADER_BYTES = 128;
const HEADER_INTS = 8;
const TAG_BYTES = HEADER_BYTES - HEADER_INTS * 4;
const MAGIC = 0x43414154; // "CAAT"

/** Collectives whose payload is at most this many bytes run synchronously on the main thread. */
export const DEFAULT_MPI_SYNC_BYTES = 16 * 1024;
/**
 * All-reduces larger than this go to MPI in pieces of this size. Over Open MPI's TCP transport on a
 * shaped 1 Gbit/s link (caat bench link), one 4 MiB all-reduce took 45 ms where 1 MiB took 9, and at
 * 100 Mbit/s 119 ms per MiB at 4 MiB against 84 at 1 MiB; in 1 MiB pieces 4 MiB took 36 ms.
 */
export const DEFAULT_MPI_SEGMENT_BYTES = 1 << 20;

const encoder = new TextEncoder();
const decoder = new TextDecoder();


export interface MpiCommunicatorOptions {
  /** Environment to check for a launcher (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Addon loader (default: mpi/build/Release/caatnet_mpi.node). */
  loader?: MpiLoader;
  /** Payload bytes up to which a collective runs synchronously (default env CAAT_MPI_SYNC_BYTES, else 16 KiB). */
  syncBytes?: number;
  /** Largest all-reduce payload handed to MPI in one piece (default env CAAT_MPI_SEGMENT_BYTES, else 1 MiB). */
  segmentBytes?: number;
}

export class MpiCommunicator extends SerialCommunicator {
  readonly transport = 'mpi';
  readonly rank: number;
  readonly size: number;
  /** What MPI reported at initialisation (library, thread level, host). */
  readonly info: MpiInitInfo;
  /** Payload bytes up to which collectives run synchronously (Infinity when MPI lacks SERIALIZED). */
  readonly syncBytes: number;

  private readonly header = new Uint8Array(HEADER_BYTES);
  private readonly headerInts = new Int32Array(this.header.buffer);
  private readonly headers: Uint8Array;
  private seq = 0;
  private tail: Promise<void> = Promise.resolve();
  private queued = 0;
  private poisoned: { rank: number; message: string; mismatch: { seq: number; err: CommMismatchError } | null } | null = null;
  private done = false;
  private aborting = false;

  constructor(
    private readonly addon: MpiAddon,
    info: MpiInitInfo,
    syncBytes: number,
    /** Largest all-reduce payload handed to MPI in one piece (see MpiCommunicatorOptions). */
    readonly segmentBytes: number = DEFAULT_MPI_SEGMENT_BYTES,
  ) {
    super();
    this.info = info;
    this.rank = info.rank;
    this.size = info.size;
    this.headers = new Uint8Array(HEADER_BYTES * info.size);
    const canThread = info.threadLevel === 'serialized' || info.threadLevel === 'multiple';
    this.syncBytes = canThread ? syncBytes : Infinity;
  }

  /**
   * This rank failed: print "rank K failed: <message>" to stderr and end the whole job (MPI_Abort,
   * exit code 1). Does not return while MPI is initialized.
   */
  override abort(error: unknown): void {
    if (this.aborting) return;
    this.aborting = true;
    const rank =
      error instanceof CommAbortedError
        ? error.failedRank
        : error instanceof CommMismatchError
          ? (error.ranks[error.ranks.length - 1] ?? this.rank)
          : this.rank;
    const message = errorMessage(error);
    if (!this.poisoned) this.poisoned = { rank, message, mismatch: null };
    try {
      writeSync(2, `rank ${rank} failed: ${message}\n`);
    } catch {
      // stderr closed: MPI_Abort still ends the job
    }
    if (!this.done) this.addon.abort(1);
  }

  /**
   * MPI_Finalize, once every queued collective has completed. Called automatically at a normal exit;
   * the communicator cannot be used afterwards.
   */
  async finalize(): Promise<void> {
    await this.tail;
    this.finalizeNow();
  }

  /**
   * Runs fn. MPI collectives have no timeout of their own (a rank that stops answering stalls the job
   * until the launcher or the user ends it), so `ms` is accepted for interface parity with the tcp
   * transport and not enforced.
   */
  async withTimeout<T>(_ms: number, fn: () => Promise<T>): Promise<T> {
    return fn();
  }

  /** Same as finalize(): the end of this rank's part in the job (tcp transport parity). */
  close(): Promise<void> {
    return this.finalize();
  }

  /** Finalize when the process is about to exit normally (tcp transport parity; the 'exit' handler does it). */
  closeOnExit(): void {}

  /** Finalize now if nothing is in flight (from the process 'exit' handler); false otherwise. */
  finalizeNow(): boolean {
    if (this.done) return true;
    if (this.queued > 0) return false;
    this.done = true;
    if (!this.poisoned) this.poisoned = { rank: this.rank, message: 'MPI was finalized', mismatch: null };
    this.addon.finalize();
    return true;
  }

  /**
   * The process 'exit' handler: exit code 0 finalizes MPI (when nothing is in flight); any other code
   * ends the job as abort() does, so the other ranks do not wait for this one.
   */
  onProcessExit(code: number): void {
    if (this.done || this.aborting) return;
    if (code !== 0) this.abort(new Error(`process exiting with code ${code}`));
    else this.finalizeNow();
  }

  private failure(seq: number): Error {
    const p = this.poisoned!;
    if (p.mismatch && p.mismatch.seq === seq) return p.mismatch.err;
    return new CommAbortedError(p.rank, p.message);
  }

  protected issue(t0: number, make: () => CollectiveCall): Promise<void> {
    if (this.poisoned) return Promise.reject(this.failure(this.seq++));
    let call: CollectiveCall;
    try {
      call = make();
    } catch (e) {
      // A call that cannot take part would leave the other ranks waiting: this rank has failed.
      this.poisoned = { rank: this.rank, message: `${errorMessage(e)} (rank ${this.rank})`, mismatch: null };
      return Promise.reject(e);
    }
    if (call.n * this.size > 0x7fffffff) {
      const e = new RangeError(`mpi: ${describeCall(call)} is too large for MPI's 32-bit counts (size·n must be below 2^31)`);
      this.poisoned = { rank: this.rank, message: `${e.message} (rank ${this.rank})`, mismatch: null };
      return Promise.reject(e);
    }
    if (this.size === 1) return this.runAlone(t0, call);
    const seq = this.seq++;
    const bytes = payloadBytes(call, this.size);
    if (this.queued === 0 && bytes <= this.syncBytes) {
      try {
        this.execSync(seq, call);
      } catch (e) {
        return Promise.reject(e);
      }
      this.record(call, t0);
      return Promise.resolve();
    }
    this.queued++;
    const run = async (): Promise<void> => {
      try {
        if (this.poisoned) throw this.failure(seq);
        if (bytes <= this.syncBytes) this.execSync(seq, call);
        else if (call.kind === 'allReduce' && bytes > this.segmentBytes) {
          // In pieces: each element is still summed in rank order, so the result is the same bits.
          const per = Math.max(1, Math.floor(this.segmentBytes / (call.dtype === 'float64' ? 8 : 4)));
          for (let start = 0; start < call.n; start += per) {
            await this.execAsync(seq, { ...call, offset: call.offset + start, n: Math.min(per, call.n - start) });
          }
        } else await this.execAsync(seq, call);
        this.record(call, t0);
      } finally {
        this.queued--;
      }
    };
    const p = this.tail.then(run);
    this.tail = p.catch(() => undefined);
    return p;
  }

  private runAlone(t0: number, c: CollectiveCall): Promise<void> {
    if ((c.kind === 'reduceScatter' || c.kind === 'allGather') && c.n > 0) {
      const out = c.buf!;
      const inp = c.inp!;
      if (out.buffer !== inp.buffer || out.byteOffset !== inp.byteOffset) out.set(inp.subarray(0, c.n), 0);
    }
    this.record(c, t0);
    return Promise.resolve();
  }

  private record(c: CollectiveCall, t0: number): void {
    this.counters.record(c.tag, payloadBytes(c, this.size), performance.now() - t0);
  }

  private writeHeader(seq: number, c: CollectiveCall): void {
    const h = this.headerInts;
    h[0] = MAGIC;
    h[1] = seq | 0;
    h[2] = (KIND_CODES.indexOf(c.kind) & 0xff) | ((c.op === '' ? 0 : OP_CODES[c.op] + 1) << 8) | (DTYPE_CODES.indexOf(c.dtype) << 16);
    h[3] = c.n;
    h[4] = c.root;
    h[5] = tagHash(c.tag);
    let tb = encoder.encode(c.tag);
    if (tb.length > TAG_BYTES) tb = tb.subarray(0, TAG_BYTES);
    h[6] = tb.length;
    h[7] = 0;
    const area = this.header.subarray(HEADER_INTS * 4);
    area.fill(0);
    area.set(tb);
  }

  private readHeader(r: number): { seq: number; call: CollectiveCall } {
    const ints = new Int32Array(this.headers.buffer, r * HEADER_BYTES, HEADER_INTS);
    const word = ints[2]!;
    const opCode = (word >> 8) & 0xff;
    const tagLen = Math.min(Math.max(ints[6]!, 0), TAG_BYTES);
    const tag = decoder.decode(this.headers.subarray(r * HEADER_BYTES + HEADER_INTS * 4, r * HEADER_BYTES + HEADER_INTS * 4 + tagLen));
    const call: CollectiveCall = {
      kind: KIND_CODES[word & 0xff] ?? 'barrier',
      op: opCode === 1 ? 'sum' : opCode === 2 ? 'max' : '',
      tag,
      dtype: DTYPE_CODES[(word >> 16) & 0xff] ?? 'none',
      n: ints[3]!,
      root: ints[4]!,
      buf: null,
      offset: 0,
      inp: null,
    };
    return { seq: ints[1]!, call };
  }

  private args(c: CollectiveCall): [number, number, FloatArray | null, FloatArray | null, number, number] {
    const kind = KIND_CODES.indexOf(c.kind);
    const op = c.op === 'max' ? OP_CODES.max : OP_CODES.sum;
    let buf: FloatArray | null = null;
    let inp: FloatArray | null = null;
    if (c.kind === 'allReduce' || c.kind === 'broadcast') buf = c.buf!.subarray(c.offset, c.offset + c.n);
    else if (c.kind === 'reduceScatter' || c.kind === 'allGather') {
      buf = c.buf!;
      inp = c.inp!;
    }
    return [kind, op, buf, inp, c.n, c.root < 0 ? 0 : c.root];
  }

  private execSync(seq: number, c: CollectiveCall): void {
    this.writeHeader(seq, c);
    const [kind, op, buf, inp, n, root] = this.args(c);
    let status: number;
    try {
      status = this.addon.collective(false, kind, op, this.header, this.headers, buf, inp, n, root) as number;
    } catch (e) {
      throw this.transportError(e);
    }
    if (status === STATUS_MISMATCH) throw this.mismatch(seq);
  }

  private async execAsync(seq: number, c: CollectiveCall): Promise<void> {
    this.writeHeader(seq, c);
    const [kind, op, buf, inp, n, root] = this.args(c);
    let status: number;
    try {
      status = await (this.addon.collective(true, kind, op, this.header, this.headers, buf, inp, n, root) as Promise<number>);
    } catch (e) {
      throw this.transportError(e);
    }
    if (status === STATUS_MISMATCH) throw this.mismatch(seq);
  }

  private transportError(e: unknown): CommAbortedError {
    const message = `mpi transport error on rank ${this.rank}: ${errorMessage(e)}`;
    if (!this.poisoned) this.poisoned = { rank: this.rank, message, mismatch: null };
    return new CommAbortedError(this.rank, message);
  }

  private mismatch(seq: number): CommMismatchError {
    const ref = this.readHeader(0);
    let other = 1;
    for (let r = 1; r < this.size; r++) {
      const a = this.headers.subarray(0, HEADER_BYTES);
      const b = this.headers.subarray(r * HEADER_BYTES, (r + 1) * HEADER_BYTES);
      if (!Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length))) {
        other = r;
        break;
      }
    }
    const theirs = this.readHeader(other);
    const where = ref.seq === theirs.seq ? `collective #${seq}` : `collective #${ref.seq} (rank 0) / #${theirs.seq} (rank ${other})`;
    const msg = `${where} mismatch: rank 0 called ${describeCall(ref.call)} but rank ${other} called ${describeCall(theirs.call)}`;
    const err = new CommMismatchError(seq, [0, other], msg);
    if (!this.poisoned) this.poisoned = { rank: other, message: msg, mismatch: { seq, err } };
    return err;
  }
}

let theCommunicator: MpiCommunicator | null = null;

export function syncBytesFrom(env: NodeJS.ProcessEnv, given: number | undefined): number {
  if (given !== undefined) {
    if (!(given >= 0)) throw new RangeError(`createMpiCommunicator: syncBytes must be ≥ 0, got ${given}`);
    return given;
  }
  const v = env['CAAT_MPI_SYNC_BYTES'];
  if (v === undefined || v === '') return DEFAULT_MPI_SYNC_BYTES;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new RangeError(`CAAT_MPI_SYNC_BYTES must be a non-negative number, got "${v}"`);
  return n;
}

export function segmentBytesFrom(env: NodeJS.ProcessEnv, given: number | undefined): number {
  if (given !== undefined) {
    if (!(given >= 8)) throw new RangeError(`createMpiCommunicator: segmentBytes must be at least 8, got ${given}`);
    return given;
  }
  const v = env['CAAT_MPI_SEGMENT_BYTES'];
  if (v === undefined || v === '') return DEFAULT_MPI_SEGMENT_BYTES;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 8) throw new RangeError(`CAAT_MPI_SEGMENT_BYTES must be a number of bytes ≥ 8, got "${v}"`);
  return n;
}

/**
 * This process's rank of MPI_COMM_WORLD as a Communicator (one rank per process; the same object on
 * every call). Throws, without touching MPI, when `mpiAvailable()` is not ok.
 */
export function createMpiCommunicator(options: MpiCommunicatorOptions = {}): MpiCommunicator {
  if (theCommunicator) return theCommunicator;
  const env = options.env ?? process.env;
  const loader = options.loader ?? loadMpiAddon;
  const avail = mpiAvailable(env, loader);
  if (!avail.ok) throw new Error(`the MPI transport is unavailable: ${avail.reason}`);
  const st = loader();
  if (!st.ok) throw new Error(`the MPI transport is unavailable: ${st.reason}`);
  const syncBytes = syncBytesFrom(env, options.syncBytes);
  const segmentBytes = segmentBytesFrom(env, options.segmentBytes);
  const info = st.addon.init();
  const comm = new MpiCommunicator(st.addon, info, syncBytes, segmentBytes);
  theCommunicator = comm;
  process.once('exit', (code) => comm.onProcessExit(code));
  return comm;
}

// ---------------------------------------------------------------------------------------------------
// Joining a job with a configuration check
// ---------------------------------------------------------------------------------------------------

export interface JoinMpiOptions extends MpiCommunicatorOptions {
  /**
   * Describes how two configurations differ, as lines (e.g. configDifference of src/transport/rendezvous.ts);
   * without it the error names only the ranks.
   */
  difference?: (a: unknown, b: unknown, whoA: string, whoB: string) => string[];
}

/**
 * createMpiCommunicator, then every rank checks that its `config` (JSON-serialisable) equals rank 0's,
 * like the tcp rendezvous does: a SHA-256 of the canonical JSON is all-gathered; when some rank
 * differs, rank 0's configuration is broadcast and every rank rejects with an error naming the
 * differing ranks (a differing rank also lists the differences). Collective: every rank must call it.
 */
export async function joinMpiGroup(config: unknown, options: JoinMpiOptions = {}): Promise<MpiCommunicator> {
  const comm = createMpiCommunicator(options);
  const json = canonicalJson(config);
  const digest = createHash('sha256').update(json).digest();
  // 6 numbers of 48 bits (exact in float64) cover the 32-byte digest.
  const mine = new Float64Array(6);
  for (let i = 0; i < 6; i++) mine[i] = i < 5 ? digest.readUIntBE(i * 6, 6) : digest.readUIntBE(30, 2);
  const all = new Float64Array(6 * comm.size);
  await comm.allGather(all, mine, 'join.config');
  const differing: number[] = [];
  for (let r = 1; r < comm.size; r++) {
    for (let i = 0; i < 6; i++) {
      if (all[r * 6 + i] !== all[i]) {
        differing.push(r);
        break;
      }
    }
  }
  if (differing.length === 0) return comm;
  // Rank 0's configuration, as bytes (exact in float32).
  const bytes = Buffer.from(json, 'utf8');
  const len = Float64Array.of(comm.rank === 0 ? bytes.length : 0);
  await comm.broadcast(len, 0, 'join.config.len');
  const body = new Float32Array(len[0]!);
  if (comm.rank === 0) for (let i = 0; i < bytes.length; i++) body[i] = bytes[i]!;
  await comm.broadcast(body, 0, 'join.config.body');
  const ranks = differing.length === 1 ? `rank ${differing[0]}` : `ranks ${differing.join(', ')}`;
  let message = `the configuration of ${ranks} differs from rank 0's`;
  if (differing.includes(comm.rank) && options.difference) {
    const theirs = JSON.parse(Buffer.from(Uint8Array.from(body)).toString('utf8')) as unknown;
    const lines = options.difference(theirs, JSON.parse(json) as unknown, 'rank 0', `rank ${comm.rank}`);
    if (lines.length > 0) message += `: ${lines.join('; ')}`;
  }
  throw new Error(message);
}
