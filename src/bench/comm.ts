/**
 * `caat bench comm`: float32 sum all-reduce between 2 ranks on every available transport, side by side.
 *
 *   threads  2 worker threads of this process over SharedArrayBuffer (src/transport/bench-comm.ts)
 *   tcp      2 processes over loopback TCP (src/transport/tcp.ts, joined by src/transport/rendezvous.ts)
 *   mpi      2 processes under mpirun (src/transport/mpi.ts; Open MPI's shared-memory transport on one host)
 *
 * Sizes: 4 KiB (latency), 1 MiB and 16 MiB (bandwidth). Every measurement: a few untimed all-reduces,
 * then `repeats` timed ones, each after a barrier; a repetition's time is the slowest rank's, and the
 * median over repetitions is reported as `median_us`, with `gbps` = bytes / median time (GB/s of the
 * buffer being all-reduced, 1 GB = 1e9 bytes). The tcp and mpi ranks run this same module as a script
 * (`--worker tcp|mpi`); they gather their timings over the transport itself and rank 0 prints them.
 *
 * A transport that cannot run (no mpirun, no MPI addon, no tcp transport) is reported as skipped with
 * the reason. With --json, stdout holds one JSON object per measurement ({transport, bytes, median_us,
 * gbps, repeats, ranks}) and nothing else; the machine description, skips and the comparison go to
 * stderr. CAAT_BENCH_QUICK=1 uses few repetitions (smoke tests).
 */
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { randomBytes } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import type { Communicator } from '../tp/comm.js';
import { benchAllReduce, median } from '../transport/bench-comm.js';
import { createMpiCommunicator, findMpirun, loadMpiAddon } from '../transport/mpi.js';
import { describeMachine, formatMachine } from './machine.js';

export type CommBenchTransport = 'threads' | 'tcp' | 'mpi';
export const COMM_BENCH_TRANSPORTS: readonly CommBenchTransport[] = ['threads', 'tcp', 'mpi'];
export const COMM_BENCH_SIZES: readonly number[] = [4096, 1 << 20, 16 << 20];

export interface CommBenchRecord {
  transport: CommBenchTransport;
  /** Bytes all-reduced per rank. */
  bytes: number;
  /** Median over repetitions of the slowest rank's time, microseconds. */
  median_us: number;
  /** bytes / median time, GB/s. */
  gbps: number;
  repeats: number;
  ranks: number;
}

export interface CommBenchSkip {
  transport: CommBenchTransport;
  reason: string;
}

const THIS_FILE = fileURLToPath(import.meta.url);
const RESULT_PREFIX = 'CAAT_BENCH_COMM ';
const RANKS = 2;

/** Timed repetitions for a size (fewer for large buffers; CAAT_BENCH_QUICK=1: a handful). */
export function repeatsFor(bytes: number, quick = process.env['CAAT_BENCH_QUICK'] === '1'): number {
  if (quick) return bytes >= 1 << 20 ? 3 : 10;
  if (bytes <= 64 * 1024) return 400;
  if (bytes <= 2 << 20) return 60;
  return 15;
}

function record(transport: CommBenchTransport, bytes: number, medianUs: number, repeats: number): CommBenchRecord {
  return { transport, bytes, median_us: medianUs, gbps: bytes / (medianUs * 1e-6) / 1e9, repeats, ranks: RANKS };
}

// ---------------------------------------------------------------------------------------------------
// Ranks in their own processes (tcp, mpi): this module run as a script
// ---------------------------------------------------------------------------------------------------

interface WorkerPlan {
  sizes: number[];
  repeats: number[];
}

/** One rank's timings, gathered to every rank; returns per size the median of the slowest rank's times. */
async function timeAllReduce(comm: Communicator, plan: WorkerPlan): Promise<{ bytes: number; median_us: number; repeats: number }[]> {
  const out: { bytes: number; median_us: number; repeats: number }[] = [];
  for (let k = 0; k < plan.sizes.length; k++) {
    const bytes = plan.sizes[k]!;
    const repeats = plan.repeats[k]!;
    const buf = new Float32Array(Math.max(1, Math.floor(bytes / 4))).fill(1e-3 * (comm.rank + 1));
    const warmup = Math.max(3, Math.min(repeats, 20));
    for (let i = 0; i < warmup; i++) await comm.allReduce(buf, 'sum', 'bench');
    const us = new Float64Array(repeats);
    for (let i = 0; i < repeats; i++) {
      await comm.barrier('bench.sync');
      const t0 = performance.now();
      await comm.allReduce(buf, 'sum', 'bench');
      us[i] = (performance.now() - t0) * 1000;
    }
    const all = new Float64Array(repeats * comm.size);
    await comm.allGather(all, us, 'bench.times');
    const slowest = Array.from({ length: repeats }, (_, i) => {
      let m = 0;
      for (let r = 0; r < comm.size; r++) m = Math.max(m, all[r * repeats + i]!);
      return m;
    });
    out.push({ bytes, median_us: median(slowest), repeats });
  }
  return out;
}

async function workerMain(argv: string[]): Promise<void> {
  const arg = (name: string): string => {
    const i = argv.indexOf(name);
    if (i < 0 || i + 1 >= argv.length) throw new Error(`bench comm worker: missing ${name}`);
    return argv[i + 1]!;
  };
  const kind = arg('--worker');
  const plan: WorkerPlan = { sizes: arg('--sizes').split(',').map(Number), repeats: arg('--repeats').split(',').map(Number) };
  if (kind === 'mpi') {
    const comm = createMpiCommunicator();
    try {
      const res = await timeAllReduce(comm, plan);
      if (comm.rank === 0) process.stdout.write(`${RESULT_PREFIX}${JSON.stringify(res)}\n`);
      await comm.finalize();
    } catch (e) {
      comm.abort(e);
    }
    return;
  }
  if (kind === 'tcp') {
    const env = process.env;
    const mod = (await import(new URL('../transport/rendezvous.js', import.meta.url).href)) as { rendezvous: (o: unknown) => Promise<Communicator & { close(): Promise<void> }> };
    const comm = await mod.rendezvous({
      rank: Number(env['RANK']),
      size: Number(env['WORLD_SIZE']),
      masterAddr: env['MASTER_ADDR'] ?? '127.0.0.1',
      masterPort: Number(env['MASTER_PORT']),
      token: env['CAAT_JOB_TOKEN'] ?? 'bench-comm',
      tokenLabel: 'CAAT_JOB_TOKEN',
      config: { bench: 'comm', sizes: plan.sizes },
      timeoutMs: 60_000,
    });
    try {
      const res = await timeAllReduce(comm, plan);
      if (comm.rank === 0) process.stdout.write(`${RESULT_PREFIX}${JSON.stringify(res)}\n`);
    } catch (e) {
      comm.abort(e);
      throw e;
    } finally {
      await comm.close();
    }
    return;
  }
  throw new Error(`bench comm worker: unknown transport "${kind}"`);
}

interface ChildResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runChild(cmd: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      stderr += `\n(killed after ${timeoutMs / 1000} s)`;
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 3000).unref();
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

function parseResult(transport: CommBenchTransport, results: ChildResult[]): CommBenchRecord[] {
  for (const r of results) {
    const line = r.stdout.split('\n').find((l) => l.startsWith(RESULT_PREFIX));
    if (line) {
      const rows = JSON.parse(line.slice(RESULT_PREFIX.length)) as { bytes: number; median_us: number; repeats: number }[];
      return rows.map((x) => record(transport, x.bytes, x.median_us, x.repeats));
    }
  }
  const why = results
    .map((r) => `exit ${r.code}: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`)
    .join('; ');
  throw new Error(`${transport} ranks produced no result (${why})`);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

function workerArgs(kind: 'tcp' | 'mpi', sizes: readonly number[], repeats: readonly number[]): string[] {
  return [THIS_FILE, '--worker', kind, '--sizes', sizes.join(','), '--repeats', repeats.join(',')];
}

/** Whether the tcp transport is present (its module loads), or why not. */
async function tcpStatus(): Promise<{ ok: true } | { ok: false; reason: string }> {
  try {
    const mod = (await import(new URL('../transport/rendezvous.js', import.meta.url).href)) as Record<string, unknown>;
    if (typeof mod['rendezvous'] !== 'function') return { ok: false, reason: 'src/transport/rendezvous.ts exports no rendezvous()' };
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: `the tcp transport is not available (${(e as Error).message.split('\n')[0]})` };
  }
}

async function benchTcp(sizes: readonly number[], repeats: readonly number[]): Promise<CommBenchRecord[]> {
  const port = await freePort();
  const token = randomBytes(8).toString('hex');
  const runs = Array.from({ length: RANKS }, (_, rank) =>
    runChild(
      process.execPath,
      workerArgs('tcp', sizes, repeats),
      { ...process.env, RANK: String(rank), WORLD_SIZE: String(RANKS), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), CAAT_JOB_TOKEN: token },
      300_000,
    ),
  );
  return parseResult('tcp', await Promise.all(runs));
}

/** mpirun arguments for the benchmark: 2 ranks, shared memory; yield when idle only if oversubscribed. */
export function mpirunBenchArgs(baseArgs: readonly string[], flavor: string, cores: number): string[] {
  const args = [...baseArgs];
  if (flavor === 'openmpi') {
    args.push('--mca', 'btl', 'vader,self');
    if (cores < RANKS) args.push('--mca', 'mpi_yield_when_idle', '1');
  }
  args.push('-np', String(RANKS));
  return args;
}

async function benchMpi(sizes: readonly number[], repeats: readonly number[], cores: number): Promise<CommBenchRecord[]> {
  const mpirun = findMpirun()!;
  const env = { ...process.env };
  delete env['CAAT_TRANSPORT'];
  const res = await runChild(mpirun.command, [...mpirunBenchArgs(mpirun.baseArgs, mpirun.flavor, cores), process.execPath, ...workerArgs('mpi', sizes, repeats)], env, 300_000);
  return parseResult('mpi', [res]);
}

export interface CommBenchOptions {
  transports?: readonly CommBenchTransport[];
  sizes?: readonly number[];
  /** Repetitions per size (default repeatsFor). */
  repeats?: number;
  log?: (line: string) => void;
  onRecord?: (r: CommBenchRecord) => void;
}

export async function runCommBench(o: CommBenchOptions = {}): Promise<{ records: CommBenchRecord[]; skipped: CommBenchSkip[] }> {
  const transports = o.transports ?? COMM_BENCH_TRANSPORTS;
  const sizes = o.sizes ?? COMM_BENCH_SIZES;
  const repeats = sizes.map((b) => o.repeats ?? repeatsFor(b));
  const log = o.log ?? (() => {});
  const records: CommBenchRecord[] = [];
  const skipped: CommBenchSkip[] = [];
  const cores = describeMachine().cores;
  const emit = (rs: CommBenchRecord[]): void => {
    for (const r of rs) {
      records.push(r);
      o.onRecord?.(r);
    }
  };
  for (const t of transports) {
    try {
      if (t === 'threads') {
        log('bench comm: threads (2 worker threads)');
        for (let k = 0; k < sizes.length; k++) {
          emit([record('threads', sizes[k]!, await benchAllReduce('threads', sizes[k]!, repeats[k]!, { nRanks: RANKS }), repeats[k]!)]);
        }
      } else if (t === 'tcp') {
        const st = await tcpStatus();
        if (!st.ok) {
          skipped.push({ transport: 'tcp', reason: st.reason });
          continue;
        }
        log('bench comm: tcp (2 processes over loopback)');
        emit(await benchTcp(sizes, repeats));
      } else if (t === 'mpi') {
        const mpirun = findMpirun();
        if (mpirun === null) {
          skipped.push({ transport: 'mpi', reason: 'mpirun not found (apt-get install openmpi-bin)' });
          continue;
        }
        const addon = loadMpiAddon();
        if (!addon.ok) {
          skipped.push({ transport: 'mpi', reason: addon.reason });
          continue;
        }
        log(`bench comm: mpi (2 ranks under ${mpirun.version})`);
        emit(await benchMpi(sizes, repeats, cores));
      }
    } catch (e) {
      skipped.push({ transport: t, reason: `failed: ${(e as Error).message}` });
    }
  }
  return { records, skipped };
}

function sizeText(b: number): string {
  if (b >= 1 << 20 && b % (1 << 20) === 0) return `${b >> 20} MiB`;
  if (b >= 1024 && b % 1024 === 0) return `${b >> 10} KiB`;
  return `${b} B`;
}

export function formatCommTable(records: readonly CommBenchRecord[]): string[] {
  const lines = ['transport  size      median_us        GB/s  repeats'];
  for (const r of records) {
    lines.push(
      `${r.transport.padEnd(9)}  ${sizeText(r.bytes).padEnd(8)}  ${r.median_us.toFixed(1).padStart(9)}  ${r.gbps.toFixed(3).padStart(10)}  ${String(r.repeats).padStart(7)}`,
    );
  }
  return lines;
}

/** "mpi vs tcp" style ratios at the smallest and largest size, when both were measured. */
export function compareTransports(records: readonly CommBenchRecord[], a: CommBenchTransport, b: CommBenchTransport): string | null {
  const sizes = [...new Set(records.map((r) => r.bytes))].sort((x, y) => x - y);
  if (sizes.length === 0) return null;
  const at = (t: CommBenchTransport, bytes: number): CommBenchRecord | undefined => records.find((r) => r.transport === t && r.bytes === bytes);
  const small = sizes[0]!;
  const large = sizes[sizes.length - 1]!;
  const as = at(a, small);
  const bs = at(b, small);
  const al = at(a, large);
  const bl = at(b, large);
  if (!as || !bs || !al || !bl) return null;
  const lat = bs.median_us / as.median_us;
  const bw = al.gbps / bl.gbps;
  const latText = lat >= 1 ? `${lat.toFixed(1)}× lower` : `${(1 / lat).toFixed(1)}× higher`;
  const bwText = bw >= 1 ? `${bw.toFixed(1)}× higher` : `${(1 / bw).toFixed(1)}× lower`;
  return `${a} vs ${b}: ${sizeText(small)} latency ${latText}, ${sizeText(large)} bandwidth ${bwText}`;
}

function parseTransports(s: string | undefined): CommBenchTransport[] {
  if (s === undefined || s === '' || s === 'all') return [...COMM_BENCH_TRANSPORTS];
  const out: CommBenchTransport[] = [];
  for (const part of s.split(',').map((x) => x.trim())) {
    if (part !== 'threads' && part !== 'tcp' && part !== 'mpi') throw new Error(`bench comm: unknown transport "${part}" (expected threads, tcp or mpi)`);
    out.push(part);
  }
  return out;
}

export async function benchCommCommand(opts: { json?: boolean; transport?: string; repeats?: string }): Promise<void> {
  const json = opts.json === true;
  const out = (s: string): void => void process.stdout.write(`${s}\n`);
  const err = (s: string): void => void process.stderr.write(`${s}\n`);
  const info = (s: string): void => (json ? err(s) : out(s));
  let repeats: number | undefined;
  if (opts.repeats !== undefined) {
    repeats = Number(opts.repeats);
    if (!Number.isInteger(repeats) || repeats < 1) throw new Error(`bench comm: --repeats must be a positive integer, got "${opts.repeats}"`);
  }
  for (const l of formatMachine(describeMachine())) info(l);
  const { records, skipped } = await runCommBench({
    transports: parseTransports(opts.transport),
    ...(repeats !== undefined ? { repeats } : {}),
    log: err,
    onRecord: (r) => {
      if (json) out(JSON.stringify(r));
    },
  });
  for (const s of skipped) info(`${s.transport}: skipped (${s.reason})`);
  if (!json) {
    out('');
    for (const l of formatCommTable(records)) out(l);
  }
  for (const [a, b] of [
    ['mpi', 'tcp'],
    ['mpi', 'threads'],
    ['threads', 'tcp'],
  ] as const) {
    const c = compareTransports(records, a, b);
    if (c) info(c);
  }
}

// Run as a rank of the tcp or mpi measurement (`node dist/src/bench/comm.js --worker …`).
function isMainScript(): boolean {
  const argv1 = process.argv[1];
  if (argv1 === undefined) return false;
  try {
    return realpathSync(argv1) === realpathSync(THIS_FILE);
  } catch {
    return false;
  }
}

if (isMainScript() && process.argv.includes('--worker')) {
  try {
    await workerMain(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`bench comm worker: ${(e as Error).message}\n`);
    process.exitCode = 1;
  }
}
