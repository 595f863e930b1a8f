/**
 * `caat bench link`: CAAT-Net over a real, rate-limited network link. Needs root.
 *
 * NETWORK. One network namespace per rank and a hub namespace with a bridge; each rank namespace is
 * joined to the bridge by a veth pair (created directly inside the namespaces, so nothing appears in
 * the host's own namespace). Rank r has the address 10.231.0.(r+1)/24, used only inside these
 * namespaces. Both directions of every link are shaped with a token bucket (`tc qdisc ... tbf`) to the
 * rate under test: the rank's egress on its veth end, and the hub's egress towards the rank, like a
 * switch port, with a 32 KiB bucket so that bursts cannot hide a message's time on the link. The links
 * carry jumbo frames (MTU 9000, see LINK_MTU). Every namespace made is deleted at the end, also on
 * failure, SIGINT or SIGTERM.
 *
 * WORK. For each rate (default 1 Gbit/s, then 100 Mbit/s), TP ranks (2, or 4 with --tp 4) run in their
 * namespaces as separate processes joined by the TCP transport and then by the MPI transport
 * (--transport tcp|mpi|both; both by default when Open MPI's mpirun and the MPI addon are there), on
 * the small bench configuration
 * (src/bench/train.ts BENCH_CONFIGS.small) with synthetic tokens, for p = 1, 0.75, 0.5, 0.25 and 0:
 * - train: one warm-up round, then --steps rounds of one training step at every p (median);
 * - prefill: a forward pass with a KV cache over 512 tokens (2 sequences of 256), as in generation:
 *   one warm-up round, then max(--steps, 12) rounds of one prefill at every p and one round of the
 *   link calibration (median);
 * - decode1, decode32: in the same rounds, one serving-engine decode step (RankModel.forwardBatch,
 *   one new token per sequence) of 1 and of 32 sequences with 16+ tokens in their caches: messages of
 *   p·2 KiB (batch 1) and p·64 KiB (batch 32) per all-reduce, where latency, not the rate, dominates.
 * Taking every p in each round, instead of one p after another, spreads the slow spells of a shared
 * machine over all of them.
 * Reported per p: median step time, time inside collectives (comm_ms, rank 0, waiting included),
 * payload bytes per rank, speedup over p = 1, and the cost model's prediction (docs §7)
 * (C + M(1)) / (C + M(p)), with C the measured non-communication time at p = 0 and M(p) the step's
 * communication time on this link: every all-reduce costs α + b·β for b payload bytes per rank, α and β
 * fitted to the measured cost of all-reduces from 256 KiB to 4 MiB made with the transport itself, each
 * after a fixed piece of compute as in a step (see calibrate), and only the blocks' partial all-reduces
 * scale with p (see linkRecords). The prediction from the nominal rate
 * alone is reported beside it.
 *
 * MPI. mpirun starts in rank 0's namespace with one "host" per rank, its address 10.231.0.(r+1), and an
 * rsh agent (a generated shell script, see rshAgentScript) that runs Open MPI's daemon for a host inside
 * that host's namespace. MPI traffic goes through the TCP BTL on the shaped rN interfaces only (pml
 * ob1, btl tcp,self: no shared memory, no UCX), with yielding when idle since the ranks share the
 * cores. The agent, the hostfile and Open MPI's session directories live in one temporary directory,
 * removed at the end like the namespaces.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { selectBackend } from '../backend/index.js';
import type { Backend, FloatArray } from '../backend/types.js';
import { UserError } from '../cli/run.js';
import { resolveConfig } from '../model/config.js';
import { RankModel } from '../model/model.js';
import { parseTrainConfig } from '../train/config.js';
import { createRankStates, rankTrainStep, type Batch } from '../train/loop.js';
import type { Communicator } from '../tp/comm.js';
import { findMpirun, joinMpiGroup, loadMpiAddon } from '../transport/mpi.js';
import { rendezvous } from '../transport/rendezvous.js';
import { describeMachine, formatMachine } from './machine.js';
import { BENCH_CONFIGS } from './train.js';

export const LINK_P_VALUES = [1, 0.75, 0.5, 0.25, 0] as const;
const SUBNET = '10.231.0';
const PORT = 29500;
const RESULT_PREFIX = 'CAAT_LINK_RESULT ';
/**
 * Jumbo frames, as on cluster networks. With 1500-byte frames this 2-core machine spends so much time
 * per packet (veth, bridge, two shapers, TCP) that the link's cost stops being linear in the message
 * size: 1 MiB all-reduces reached 0.73 of 1 Gbit/s while 0.5 MiB ones reached 0.82. At 9000 bytes
 * every size from 0.5 MiB up gets 0.91-0.98 of the rate, so the link, not the CPU, is what is measured.
 */
const LINK_MTU = 9000;
/** Rounds of prefills and calibration (at least --steps), after one warm-up round. */
const PREFILL_ROUNDS = 12;

export type LinkTransport = 'tcp' | 'mpi';

/** train; prefill; decode1 / decode32: one engine decode step (RankModel.forwardBatch) of 1 or 32 sequences. */
export type LinkPhase = 'train' | 'prefill' | 'decode1' | 'decode32';
export const LINK_PHASES: readonly LinkPhase[] = ['train', 'prefill', 'decode1', 'decode32'];
/** Tokens already in each sequence's cache when the decode steps start. */
const DECODE_CONTEXT = 16;

export interface LinkRecord {
  /** The transport that carried the collectives. */
  transport: LinkTransport;
  rate: string;
  tp: number;
  p: number;
  phase: LinkPhase;
  ms: number;
  comm_ms: number;
  bytes: number;
  speedup: number;
  /** The cost model with the link's latency and bandwidth as measured on it (see linkRecords). */
  predicted_speedup: number;
  /** The cost model with the nominal link rate and no latency. */
  nominal_predicted_speedup: number;
  /** Measured per-all-reduce latency and effective link rate (Gbit/s) on this link. */
  link_alpha_ms: number;
  link_gbps: number;
}

/** "1gbit", "100mbit", "2.5gbit", "500kbit" → bits per second. */
export function parseRate(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(k|m|g)?bit$/i.exec(s.trim());
  if (!m) throw new UserError(`bad rate ${JSON.stringify(s)}: expected e.g. 1gbit, 100mbit`);
  const mult = { k: 1e3, m: 1e6, g: 1e9 }[(m[2] ?? '').toLowerCase() as 'k' | 'm' | 'g'] ?? 1;
  return Number(m[1]) * mult;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : 0.5 * (s[m - 1]! + s[m]!);
}

// ---------------------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------------------

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${(r.stderr || r.stdout || String(r.error)).trim()}`);
}

/** The namespaces of one benchmark run; `remove()` deletes every one of them (idempotent). */
class LinkNet {
  readonly hub: string;
  readonly ranks: string[];
  private readonly made: string[] = [];

  constructor(readonly n: number) {
    const tag = `caatlink-${process.pid}`;
    this.hub = `${tag}-hub`;
    this.ranks = Array.from({ length: n }, (_, r) => `${tag}-r${r}`);
  }

  create(): void {
    for (const ns of [this.hub, ...this.ranks]) {
      sh('ip', ['netns', 'add', ns]);
      this.made.push(ns);
    }
    sh('ip', ['-n', this.hub, 'link', 'add', 'br0', 'type', 'bridge']);
    sh('ip', ['-n', this.hub, 'link', 'set', 'br0', 'up']);
    this.ranks.forEach((ns, r) => {
      sh('ip', ['link', 'add', 'name', `r${r}`, 'netns', ns, 'type', 'veth', 'peer', 'name', `h${r}`, 'netns', this.hub]);
      sh('ip', ['-n', this.hub, 'link', 'set', `h${r}`, 'master', 'br0']);
      sh('ip', ['-n', this.hub, 'link', 'set', `h${r}`, 'mtu', String(LINK_MTU), 'up']);
      sh('ip', ['-n', ns, 'addr', 'add', `${SUBNET}.${r + 1}/24`, 'dev', `r${r}`]);
      sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      sh('ip', ['-n', ns, 'link', 'set', `r${r}`, 'mtu', String(LINK_MTU), 'up']);
      // Collectives alternate with compute, leaving each connection idle for a while; by default TCP
      // then shrinks its congestion window back to the initial one and every message starts slowly.
      // Clusters running TCP collectives turn that off (it is a per-namespace setting).
      sh('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv4.tcp_slow_start_after_idle=0']);
    });
  }

  /** Shape both directions of every rank's link to `bps`. */
  shape(bps: number): void {
    // A small bucket (32 KiB): a larger one refills while the ranks compute and lets whole messages
    // out at memory speed; 32 KiB still reaches the full rate (measured 944 Mbit/s at 1 Gbit/s).
    const q = ['root', 'tbf', 'rate', `${Math.round(bps)}bit`, 'burst', String(32 * 1024), 'latency', '50ms'];
    this.ranks.forEach((ns, r) => {
      sh('tc', ['-n', ns, 'qdisc', 'replace', 'dev', `r${r}`, ...q]);
      sh('tc', ['-n', this.hub, 'qdisc', 'replace', 'dev', `h${r}`, ...q]);
    });
  }

  remove(): void {
    // Whatever still runs inside the namespaces (ranks, Open MPI's daemons) goes first: a deleted
    // namespace's name disappears, but the namespace lives on while processes hold it.
    for (const ns of this.made) {
      const r = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' });
      for (const pid of (r.stdout ?? '').split(/\s+/).map(Number)) {
        if (Number.isInteger(pid) && pid > 0 && pid !== process.pid) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
      }
    }
    while (this.made.length > 0) {
      const ns = this.made.pop()!;
      spawnSync('ip', ['netns', 'del', ns]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Rank side (run inside a namespace: node link.js --worker)
// ---------------------------------------------------------------------------------------------------

interface WorkerSpec {
  transport: LinkTransport;
  tp: number;
  steps: number;
  batch: number;
  backend?: string;
}

interface WorkerResult {
  p: number;
  phase: LinkPhase;
  ms: number;
  comm_ms: number;
  bytes: number;
  /** The part of `bytes` moved by the partial all-reduces of the blocks (the part p scales). */
  block_bytes: number;
  /** Collective calls per step, and those of the blocks' partial all-reduces. */
  calls: number;
  block_calls: number;
}

/**
 * The link as the cost model sees it: one all-reduce of b payload bytes per rank costs the step
 * alpha_ms + b · ms_per_byte, fitted to `points` (see calibrate).
 */
export interface LinkCalibration {
  alpha_ms: number;
  ms_per_byte: number;
  /** The measured costs the fit was made from: payload bytes per rank, ms per all-reduce. */
  points?: LinkPoint[];
}

export interface LinkPoint {
  bytes: number;
  ms: number;
}

/**
 * Least-squares fit of T(b) = α + b·β to the points, in relative error (each point weighs 1/T², so a
 * 64 KiB all-reduce counts as much as a 4 MiB one), with α ≥ 0. Throws on fewer than two distinct sizes
 * or on a fit that is not increasing in b.
 */
export function fitLink(points: readonly LinkPoint[]): LinkCalibration {
  if (new Set(points.map((q) => q.bytes)).size < 2) throw new Error('fitLink: need at least two message sizes');
  for (const q of points) {
    if (!(q.ms > 0) || !Number.isFinite(q.ms)) throw new Error(`fitLink: the ${q.bytes}-byte all-reduce has no positive cost (${q.ms} ms)`);
  }
  let sw = 0;
  let sb = 0;
  let sbb = 0;
  let st = 0;
  let sbt = 0;
  for (const { bytes: b, ms: t } of points) {
    const w = 1 / (t * t);
    sw += w;
    sb += w * b;
    sbb += w * b * b;
    st += w * t;
    sbt += w * b * t;
  }
  let beta = (sw * sbt - sb * st) / (sw * sbb - sb * sb);
  let alpha = (st - beta * sb) / sw;
  if (alpha < 0) {
    alpha = 0;
    beta = sbt / sbb;
  }
  if (!(beta > 0)) throw new Error(`fitLink: the cost does not grow with the message size (β = ${beta} ms/byte)`);
  return { alpha_ms: alpha, ms_per_byte: beta, points: points.map((q) => ({ ...q })) };
}

const isBlock = (tag: string): boolean => tag.endsWith('.shared');
const blockBytes = (st: { bytes: Map<string, number> }): number => [...st.bytes].filter(([t]) => isBlock(t)).reduce((a, [, b]) => a + b, 0);
const callCounts = (st: { calls: Map<string, number> }): { calls: number; block_calls: number } => {
  let calls = 0;
  let block = 0;
  for (const [t, n] of st.calls) {
    if (t === 'bench.sync') continue;
    calls += n;
    if (isBlock(t)) block += n;
  }
  return { calls, block_calls: block };
};

/** One line on the link's calibration: the measured cost per all-reduce at each size, and the fit. */
export function describeCalibration(c: LinkCalibration): string {
  const size = (b: number): string => (b >= 1 << 20 ? `${b / (1 << 20)} MiB` : `${b / 1024} KiB`);
  const pts = (c.points ?? []).map((q) => `${size(q.bytes)} ${q.ms.toFixed(2)} ms`).join(', ');
  return `cost per all-reduce${pts ? ` ${pts}` : ''}; fit α ${c.alpha_ms.toFixed(3)} ms, β ${(c.ms_per_byte * (1 << 20)).toFixed(3)} ms/MiB`;
}

/**
 * Payload bytes per rank of the calibration all-reduces: the range the blocks' messages span (256 KiB
 * for a prefill at p = 0.25 up to 4 MiB for a training step at p = 1). Smaller ones would mostly measure
 * the shaper's bucket, which refills while the ranks compute and lets its first 32 KiB out at once.
 */
export const CALIBRATION_BYTES = [256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20] as const;

/**
 * What an all-reduce of b bytes costs a step on this link. A step computes between its collectives, and
 * on a small machine the network stack (veth, bridge, shapers, TCP) runs on the same cores: part of a
 * collective's cost lands in the compute that follows it, where a bare timing of the call misses it.
 * So, as in a step, every all-reduce follows a fixed piece of compute (two GEMMs of a 512-token
 * activation, [512, 512] × [512, 768]), and its cost is the time a loop of `calls` such pairs takes
 * beyond the same loop without the all-reduces, timed in the same round. The rounds are interleaved
 * with the prefills they serve (see worker), so a slow spell of this shared machine hits both alike.
 * α and β are fitted to the median cost at each of CALIBRATION_BYTES.
 */
class LinkCalibrator {
  private readonly M = 512;
  private readonly K = 512;
  private readonly N = 768;
  private readonly A: FloatArray;
  private readonly B: FloatArray;
  private readonly C: FloatArray;
  private readonly bufs = CALIBRATION_BYTES.map((b) => new Float32Array(b / 4));
  private readonly costs: number[][] = CALIBRATION_BYTES.map(() => []);
  private readonly calls = 8;

  constructor(
    private readonly comm: Communicator,
    private readonly be: Backend,
  ) {
    this.A = be.alloc(this.M * this.K);
    this.B = be.alloc(this.K * this.N);
    this.C = be.alloc(this.M * this.N);
    this.A.fill(0.01);
    this.B.fill(0.02);
  }

  private probe(): void {
    const { M, N, K } = this;
    for (let g = 0; g < 2; g++) this.be.gemm(false, false, M, N, K, 1, this.A, 0, K, this.B, 0, N, 0, this.C, 0, N);
  }

  private async loop(buf: Float32Array | null): Promise<number> {
    await this.comm.barrier('bench.sync');
    const t0 = performance.now();
    for (let j = 0; j < this.calls; j++) {
      this.probe();
      if (buf) await this.comm.allReduce(buf, 'sum', 'bench.calibrate');
    }
    return performance.now() - t0;
  }

  /** One round: the compute alone, then with each size; `keep` false for a warm-up round. */
  async round(keep: boolean): Promise<void> {
    const base = await this.loop(null);
    for (const [k, buf] of this.bufs.entries()) {
      const t = await this.loop(buf);
      if (keep) this.costs[k]!.push((t - base) / this.calls);
    }
  }

  result(): LinkCalibration {
    for (const x of [this.A, this.B, this.C]) this.be.release(x);
    return fitLink(CALIBRATION_BYTES.map((bytes, k) => ({ bytes, ms: median(this.costs[k]!) })));
  }
}

/** One phase at one p over the rounds: each timed run's duration, collective wait and traffic. */
class PhaseTimes {
  private readonly ms: number[] = [];
  private readonly waits: number[] = [];
  private traffic = { bytes: 0, block_bytes: 0, calls: 0, block_calls: 0 };

  constructor(
    readonly p: number,
    readonly phase: LinkPhase,
  ) {}

  /** Run `fn` once, the ranks starting together; `keep` false for a warm-up run. */
  async time(comm: Communicator, keep: boolean, fn: () => Promise<unknown>): Promise<void> {
    await comm.barrier('bench.sync');
    comm.resetStats();
    const t0 = performance.now();
    await fn();
    const dt = performance.now() - t0;
    if (!keep) return;
    const st = comm.stats();
    this.ms.push(dt);
    this.waits.push(st.waitMs);
    this.traffic = { bytes: [...st.bytes.values()].reduce((a, b) => a + b, 0), block_bytes: blockBytes(st), ...callCounts(st) };
  }

  result(): WorkerResult {
    return { p: this.p, phase: this.phase, ms: median(this.ms), comm_ms: median(this.waits), ...this.traffic };
  }
}

function syntheticBatch(B: number, T: number, V: number, seed: number): Batch {
  let x = seed >>> 0;
  const inputs = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  for (let i = 0; i < B * T; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    inputs[i] = x % V;
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    targets[i] = x % V;
  }
  return { inputs, targets };
}

async function worker(): Promise<void> {
  const spec = JSON.parse(process.env['CAAT_LINK_SPEC'] ?? '{}') as WorkerSpec;
  let comm: Communicator & { close(): Promise<void> };
  if (spec.transport === 'mpi') {
    comm = await joinMpiGroup(spec);
    if (comm.size !== spec.tp) throw new Error(`bench link: mpirun started ${comm.size} ranks, expected ${spec.tp}`);
  } else {
    comm = await rendezvous({
      rank: Number(process.env['RANK']),
      size: spec.tp,
      masterAddr: `${SUBNET}.1`,
      masterPort: PORT,
      token: process.env['CAAT_JOB_TOKEN'] ?? '',
      tokenLabel: 'CAAT_JOB_TOKEN',
      config: spec,
      timeoutMs: 120_000,
    });
  }
  const rank = comm.rank;
  try {
    const be = selectBackend(spec.backend, { quiet: true });
    const c = BENCH_CONFIGS.small;
    const T = c.model.seqLen;
    const B = spec.batch;
    const batch = syntheticBatch(B, T, c.model.vocab, 7);
    const prefillB = 2;
    const prompt = syntheticBatch(prefillB, T, c.model.vocab, 11).inputs;
    const out: WorkerResult[] = [];
    // Training steps, interleaved over p in the same way as the prefills below (one warm-up round).
    const trains = LINK_P_VALUES.map((p) => {
      const cfg = resolveConfig(c.model, { tp: spec.tp, p });
      const train = parseTrainConfig({ steps: spec.steps + 1, batchSize: B, seqLen: T, warmup: 1, evalEvery: 0, ckptEvery: 0, evalBatches: 1 }, 'bench link');
      const [r] = createRankStates(cfg, train, be, [comm], { step: 0, tokensSeen: 0 });
      return { r: r!, times: new PhaseTimes(p, 'train') };
    });
    for (let i = 0; i <= spec.steps; i++) {
      for (const x of trains) await x.times.time(comm, i > 0, () => rankTrainStep(x.r, [batch], B, T, 1e-3, 1));
    }
    for (const x of trains) out.push(x.times.result());
    trains.length = 0; // the training states (optimizer, activations) can go before the prefills' models
    // The prefills of every p and the link calibration, interleaved round by round: they are short
    // (a 1 Gbit/s prefill takes a quarter of a second), and taken one after another a slow spell of
    // this shared machine would land on one p and skew every speedup against it.
    const prefills = LINK_P_VALUES.map((p) => {
      const model = new RankModel(resolveConfig(c.model, { tp: spec.tp, p }), be, comm);
      model.initFromSeed(1);
      return { model, cache: model.createCache(prefillB, T), times: new PhaseTimes(p, 'prefill') };
    });
    const calibrator = new LinkCalibrator(comm, be);
    const rounds = Math.max(spec.steps, PREFILL_ROUNDS);
    // Decode: the serving engine's step (forwardBatch) of 1 and of 32 sequences, each with
    // DECODE_CONTEXT tokens in its cache to begin with and one more per round.
    const decodeLen = DECODE_CONTEXT + rounds + 2;
    const decodes = prefills.map((x) => {
      const d = [1, 32].map((n) => ({ n, cache: x.model.createCache(n, decodeLen), times: new PhaseTimes(x.times.p, n === 1 ? 'decode1' : 'decode32') }));
      return { model: x.model, d };
    });
    for (const x of decodes) {
      for (const d of x.d) {
        await x.model.forwardBatch(prompt.subarray(0, d.n * DECODE_CONTEXT), Array.from({ length: d.n }, (_, b) => ({ slot: b, pos: 0, n: DECODE_CONTEXT, allLogits: false })), d.cache);
      }
    }
    for (let i = 0; i <= rounds; i++) {
      for (const x of prefills) {
        x.cache.len = 0;
        await x.times.time(comm, i > 0, () => x.model.forwardIncremental(prompt, T, x.cache));
      }
      for (const x of decodes) {
        for (const d of x.d) {
          const seqs = Array.from({ length: d.n }, (_, b) => ({ slot: b, pos: DECODE_CONTEXT + i, n: 1, allLogits: false }));
          await d.times.time(comm, i > 0, () => x.model.forwardBatch(prompt.subarray(i, i + d.n), seqs, d.cache));
        }
      }
      await calibrator.round(i > 0);
    }
    for (const x of prefills) out.push(x.times.result());
    for (const d of [0, 1]) for (const x of decodes) out.push(x.d[d]!.times.result());
    const calibration = calibrator.result();
    if (rank === 0) process.stdout.write(`${RESULT_PREFIX}${JSON.stringify({ calibration, results: out })}\n`);
  } catch (e) {
    comm.abort(e);
    throw e;
  } finally {
    await comm.close();
  }
}

// ---------------------------------------------------------------------------------------------------
// Coordinator
// ---------------------------------------------------------------------------------------------------

function which(exe: string): boolean {
  return (process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(path.delimiter).some((d) => {
    try {
      fs.accessSync(path.join(d, exe), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

interface RateResult {
  calibration: LinkCalibration;
  results: WorkerResult[];
}

interface ChildRun {
  code: number | null;
  out: string;
  err: string;
}

/** Collects a child's output until it closes; `children` holds it meanwhile (for cleanup). */
function collect(child: ChildProcess, children: Set<ChildProcess>): Promise<ChildRun> {
  children.add(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  return new Promise((resolve) => {
    child.on('error', (e) => (err += `${e.message}\n`));
    child.on('close', (code) => {
      children.delete(child);
      resolve({ code, out, err });
    });
  });
}

function resultOf(out: string): RateResult {
  const line = out.split('\n').find((l) => l.startsWith(RESULT_PREFIX));
  if (!line) throw new Error('bench link: rank 0 reported no result');
  return JSON.parse(line.slice(RESULT_PREFIX.length)) as RateResult;
}

async function runRate(net: LinkNet, spec: WorkerSpec, token: string, children: Set<ChildProcess>, log: (m: string) => void): Promise<RateResult> {
  const script = fileURLToPath(import.meta.url);
  const runs = net.ranks.map((ns, r) =>
    collect(
      spawn('ip', ['netns', 'exec', ns, process.execPath, script, '--worker'], {
        env: { ...process.env, RANK: String(r), CAAT_LINK_SPEC: JSON.stringify(spec), CAAT_JOB_TOKEN: token },
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
      children,
    ),
  );
  const res = await Promise.all(runs);
  const bad = res.findIndex((x) => x.code !== 0);
  if (bad >= 0) {
    for (const [r, x] of res.entries()) if (x.err.trim()) log(`rank ${r}: ${x.err.trim()}`);
    throw new Error(`bench link: rank ${bad} failed (exit ${res[bad]!.code})`);
  }
  return resultOf(res[0]!.out);
}

// ---------------------------------------------------------------------------------------------------
// MPI: mpirun across the namespaces
// ---------------------------------------------------------------------------------------------------

/** One MPI "host": a rank's address and the namespace that holds it. */
export interface LinkHost {
  addr: string;
  ns: string;
}

/** Rank r's host is its address 10.231.0.(r+1), in the namespace ranks[r]. */
export function linkHosts(ranks: readonly string[]): LinkHost[] {
  return ranks.map((ns, r) => ({ addr: `${SUBNET}.${r + 1}`, ns }));
}

const SAFE_WORD = /^[A-Za-z0-9._-]+$/;

/**
 * The rsh agent given to mpirun (plm_rsh_agent). Open MPI runs `<agent> [options] <host> <command…>`
 * to start its daemon on a host, the command being words for a remote shell; this agent runs them with
 * /bin/sh inside the host's namespace instead of logging in anywhere. Unknown hosts are refused.
 */
export function rshAgentScript(hosts: readonly LinkHost[]): string {
  for (const h of hosts) {
    if (!SAFE_WORD.test(h.addr) || !SAFE_WORD.test(h.ns)) throw new Error(`bench link: unsafe host or namespace name ${JSON.stringify(h)}`);
  }
  return [
    '#!/bin/sh',
    '# caat bench link: runs an Open MPI daemon of host $1 (a rank address) inside that rank\'s network namespace.',
    'while [ $# -gt 0 ]; do',
    '  case "$1" in',
    '    -*) shift ;;',
    '    *) break ;;',
    '  esac',
    'done',
    'host="$1"',
    'shift',
    'case "$host" in',
    ...hosts.map((h) => `  ${h.addr}) ns=${h.ns} ;;`),
    '  *) echo "caat bench link: no namespace for host $host" >&2; exit 1 ;;',
    'esac',
    'exec ip netns exec "$ns" /bin/sh -c "$*"',
    '',
  ].join('\n');
}

/** One slot per host, so that rank r runs on host r. */
export function hostfileText(hosts: readonly LinkHost[]): string {
  return hosts.map((h) => `${h.addr} slots=1\n`).join('');
}

export interface MpirunArgsOptions {
  np: number;
  hostfile: string;
  agent: string;
  /** Where Open MPI puts its session directories. */
  tmpdir: string;
  /** Environment variables to forward to the ranks (-x). */
  forward: readonly string[];
  root: boolean;
  /** The program and its arguments. */
  program: readonly string[];
}

/**
 * mpirun's arguments: the hosts and the agent above, one rank per host without binding (the "hosts"
 * share the real cores), collectives over TCP on the rank interfaces only (rN, the 10.231.0.0/24
 * subnet; no shared memory, no UCX), and yielding while waiting.
 */
export function mpirunArgs(o: MpirunArgsOptions): string[] {
  // Each namespace has only lo and its own rN, so the subnet selects exactly rN (a list of names would
  // name interfaces that most namespaces lack, which Open MPI rejects).
  const ifaces = `${SUBNET}.0/24`;
  const mca = (k: string, v: string): string[] => ['--mca', k, v];
  return [
    ...(o.root ? ['--allow-run-as-root'] : []),
    '--hostfile', o.hostfile,
    '-np', String(o.np),
    '--map-by', 'node',
    '--bind-to', 'none',
    ...mca('plm_rsh_agent', o.agent),
    ...mca('plm_rsh_no_tree_spawn', '1'),
    ...mca('orte_tmpdir_base', o.tmpdir),
    ...mca('pml', 'ob1'),
    ...mca('btl', 'tcp,self'),
    ...mca('btl_tcp_if_include', ifaces),
    ...mca('oob_tcp_if_include', ifaces),
    ...mca('mpi_yield_when_idle', '1'),
    ...o.forward.flatMap((v) => ['-x', v]),
    ...o.program,
  ];
}

/** Whether the MPI run can happen: Open MPI's mpirun (its rsh agent and MCA options) and the addon. */
export function linkMpiSupport(): { ok: true; mpirun: string } | { ok: false; reason: string } {
  const mpirun = findMpirun();
  if (mpirun === null) return { ok: false, reason: 'mpirun not found (apt-get install openmpi-bin)' };
  if (mpirun.flavor !== 'openmpi') return { ok: false, reason: `needs Open MPI's mpirun, found ${mpirun.version}` };
  const addon = loadMpiAddon();
  if (!addon.ok) return { ok: false, reason: addon.reason };
  return { ok: true, mpirun: mpirun.command };
}

/** The agent and hostfile of one benchmark run, in a temporary directory; `remove()` deletes it. */
class MpiFiles {
  readonly dir: string;
  readonly agent: string;
  readonly hostfile: string;

  constructor(hosts: readonly LinkHost[]) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'caatlink-'));
    this.agent = path.join(this.dir, 'rsh-agent.sh');
    this.hostfile = path.join(this.dir, 'hostfile');
    fs.writeFileSync(this.agent, rshAgentScript(hosts), { mode: 0o700 });
    fs.writeFileSync(this.hostfile, hostfileText(hosts));
  }

  remove(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

async function runRateMpi(net: LinkNet, spec: WorkerSpec, mpirun: string, files: MpiFiles, children: Set<ChildProcess>, log: (m: string) => void): Promise<RateResult> {
  const env: NodeJS.ProcessEnv = { ...process.env, CAAT_LINK_SPEC: JSON.stringify(spec) };
  delete env['RANK'];
  const forward = Object.keys(env).filter((k) => k === 'PATH' || k === 'LD_LIBRARY_PATH' || k.startsWith('CAAT_')).sort();
  const args = mpirunArgs({
    np: spec.tp,
    hostfile: files.hostfile,
    agent: files.agent,
    tmpdir: files.dir,
    forward,
    root: typeof process.getuid === 'function' && process.getuid() === 0,
    program: [process.execPath, fileURLToPath(import.meta.url), '--worker'],
  });
  const res = await collect(spawn('ip', ['netns', 'exec', net.ranks[0]!, mpirun, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] }), children);
  if (res.code !== 0) {
    if (res.err.trim()) log(`mpirun: ${res.err.trim()}`);
    throw new Error(`bench link: mpirun failed (exit ${res.code})`);
  }
  return resultOf(res.out);
}

/**
 * Speedups and the cost model's prediction (docs §7) for one rate's results. With the link measured as
 * T(b) = α + b·β per all-reduce of b payload bytes per rank (β includes the ring's 2(N−1)/N and what
 * the transport and the shaper really achieve), the communication time of a step at p is
 * M(p) = calls(p)·α + bytes(p)·β, where only the blocks' partial all-reduces scale with p (the
 * embedding all-reduce both ways, the cross-entropy reductions and the gradient finalisation do not),
 * and the prediction is (C + M(1)) / (C + M(p)) with C the measured non-communication time at p = 0.
 * `nominal_predicted_speedup` uses the nominal rate instead: β = 2(N−1)/N · 8 / rate, α = 0.
 */
export function linkRecords(rate: string, bps: number, tp: number, res: RateResult, transport: LinkTransport = 'tcp'): LinkRecord[] {
  const out: LinkRecord[] = [];
  const { alpha_ms: alpha, ms_per_byte: beta } = res.calibration;
  const betaNominal = (((2 * (tp - 1)) / tp) * 8 * 1000) / bps;
  for (const phase of LINK_PHASES) {
    const rows = res.results.filter((r) => r.phase === phase);
    const base = rows.find((r) => r.p === 1);
    if (!base) continue;
    // Compute time: the non-communication time where the link carries least (p = 0). At p = 1 it
    // comes out larger on a small machine, since the kernel's network processing (veth, bridge,
    // shaper, TCP) runs on the same cores as the compute.
    const quiet = rows.find((r) => r.p === 0) ?? base;
    const C = Math.max(0, quiet.ms - quiet.comm_ms);
    const fixedBytes = base.bytes - base.block_bytes;
    const fixedCalls = base.calls - base.block_calls;
    const M = (p: number, a: number, b: number): number => (fixedCalls + (p > 0 ? base.block_calls : 0)) * a + (fixedBytes + p * base.block_bytes) * b;
    for (const r of rows) {
      out.push({
        transport,
        rate,
        tp,
        p: r.p,
        phase,
        ms: r.ms,
        comm_ms: r.comm_ms,
        bytes: r.bytes,
        speedup: base.ms / r.ms,
        predicted_speedup: (C + M(1, alpha, beta)) / (C + M(r.p, alpha, beta)),
        nominal_predicted_speedup: (C + M(1, 0, betaNominal)) / (C + M(r.p, 0, betaNominal)),
        link_alpha_ms: alpha,
        link_gbps: (((2 * (tp - 1)) / tp) * 8) / beta / 1e6,
      });
    }
  }
  return out;
}

export interface BenchLinkOptions {
  json?: boolean;
  tp?: string;
  rates?: string;
  steps?: string;
  batch?: string;
  backend?: string;
  transport?: string;
}

export async function benchLinkCommand(o: BenchLinkOptions): Promise<void> {
  const tp = Number(o.tp ?? '2');
  if (tp !== 2 && tp !== 4) throw new UserError(`--tp must be 2 or 4, got ${JSON.stringify(o.tp)}`);
  const steps = Number(o.steps ?? '3');
  if (!Number.isInteger(steps) || steps < 1) throw new UserError(`--steps must be a positive integer, got ${JSON.stringify(o.steps)}`);
  const batch = Number(o.batch ?? String(BENCH_CONFIGS.small.batch));
  if (!Number.isInteger(batch) || batch < 1) throw new UserError(`--batch must be a positive integer, got ${JSON.stringify(o.batch)}`);
  const rates = (o.rates ?? '1gbit,100mbit').split(',').map((s) => s.trim()).filter(Boolean);
  const bpsOf = rates.map(parseRate);
  if (typeof process.getuid === 'function' && process.getuid() !== 0) throw new UserError('bench link needs root (it creates network namespaces and shapes links with tc)');
  for (const exe of ['ip', 'tc']) if (!which(exe)) throw new UserError(`bench link needs ${exe} (apt-get install iproute2)`);
  if (o.transport !== undefined && !['tcp', 'mpi', 'both'].includes(o.transport)) {
    throw new UserError(`--transport must be tcp, mpi or both, got ${JSON.stringify(o.transport)}`);
  }
  const mpiSupport = o.transport === 'tcp' ? null : linkMpiSupport();
  if (mpiSupport && !mpiSupport.ok && o.transport !== undefined) throw new UserError(`--transport ${o.transport}: the MPI run is unavailable: ${mpiSupport.reason}`);
  const mpirun = mpiSupport?.ok ? mpiSupport.mpirun : null;
  const transports: LinkTransport[] = o.transport === 'mpi' ? ['mpi'] : mpirun ? ['tcp', 'mpi'] : ['tcp'];
  const be = selectBackend(o.backend, { quiet: true });
  const log = (m: string): void => {
    process.stderr.write(`${m}\n`);
  };
  const c = BENCH_CONFIGS.small;
  if (!o.json) {
    for (const l of formatMachine(describeMachine())) log(l);
    log(
      `bench link: TP ${tp}, small config (h ${c.model.hidden}, L ${c.model.layers}, V ${c.model.vocab}), train batch ${batch}×${c.model.seqLen}, prefill 2×${c.model.seqLen} tokens, decode steps of 1 and 32 sequences, ` +
        `backend ${be.name}; ${tp} network namespaces on a bridge, links shaped with tc tbf; ${steps} timed steps per point` +
        (transports.includes('mpi') ? `; transport ${transports.join(' then ')} (MPI: mpirun across the namespaces, TCP BTL on the shaped links)` : ''),
    );
  }
  const net = new LinkNet(tp);
  const children = new Set<ChildProcess>();
  let files: MpiFiles | null = null;
  const cleanup = (): void => {
    for (const ch of children) ch.kill('SIGKILL');
    net.remove();
    files?.remove();
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    cleanup();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', cleanup);
  const specOf = (transport: LinkTransport): WorkerSpec => ({ transport, tp, steps, batch, backend: be.name });
  const token = `bench-link-${process.pid}-${Date.now()}`;
  try {
    net.create();
    if (mpirun) files = new MpiFiles(linkHosts(net.ranks));
    for (let i = 0; i < rates.length; i++) {
      net.shape(bpsOf[i]!);
      for (const transport of transports) {
        if (!o.json) log(`rate ${rates[i]}, ${transport}: running p = ${LINK_P_VALUES.join(', ')} …`);
        const res = transport === 'mpi' ? await runRateMpi(net, specOf('mpi'), mpirun!, files!, children, log) : await runRate(net, specOf('tcp'), token, children, log);
        const recs = linkRecords(rates[i]!, bpsOf[i]!, tp, res, transport);
        log(`rate ${rates[i]}, ${transport}: ${describeCalibration(res.calibration)}`);
        if (o.json) for (const r of recs) process.stdout.write(`${JSON.stringify(r)}\n`);
        else {
          const r0 = recs[0];
          process.stdout.write(`\nlink ${rates[i]}, TP ${tp}, ${transport}${r0 ? `: measured ${r0.link_gbps.toFixed(3)} Gbit/s effective, ${r0.link_alpha_ms.toFixed(2)} ms per all-reduce` : ''}\n`);
          process.stdout.write(
            `${'transport'.padEnd(10)}${'phase'.padEnd(10)}${'p'.padStart(5)}${'ms'.padStart(10)}${'comm ms'.padStart(10)}${'MB/rank'.padStart(10)}${'speedup'.padStart(9)}${'predicted'.padStart(11)}${'(nominal)'.padStart(11)}\n`,
          );
          for (const r of recs) {
            process.stdout.write(
              `${r.transport.padEnd(10)}${r.phase.padEnd(10)}${r.p.toFixed(2).padStart(5)}${r.ms.toFixed(1).padStart(10)}${r.comm_ms.toFixed(1).padStart(10)}${(r.bytes / 1e6).toFixed(2).padStart(10)}` +
                `${r.speedup.toFixed(2).padStart(9)}${r.predicted_speedup.toFixed(2).padStart(11)}${r.nominal_predicted_speedup.toFixed(2).padStart(11)}\n`,
            );
          }
        }
      }
    }
  } finally {
    cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('exit', cleanup);
  }
}

if (process.argv[2] === '--worker' && import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  worker().catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
