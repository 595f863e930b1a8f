/**
 * `caat bench link`: CAAT-Net over a real, rate-limited network link. Needs root.
 *
 * NETWORK. One network namespace per rank and a hub namespace with a bridge; each rank namespace is
 * joined to the bridge by a veth pair (created directly inside the namespaces, so nothing appears in
 * the host's own namespace). Rank r has the address 10.231.0.(r+1)/24, used only inside these
 * namespaces. Both directions of every link are shaped with a token bucket (`tc qdisc ... tbf`) to the
 * rate under test: the rank's egress on its veth end, and the hub's egress towards the rank, like a
 * switch port, with a 32 KiB bucket so that bursts cannot hide a message's time on the link. Every namespace made is deleted at the end, also on failure, SIGINT or SIGTERM.
 *
 * WORK. For each rate (default 1 Gbit/s, then 100 Mbit/s), TP ranks (2, or 4 with --tp 4) run in their
 * namespaces as separate processes joined by the TCP transport, on the small bench configuration
 * (src/bench/train.ts BENCH_CONFIGS.small) with synthetic tokens, for p = 1, 0.75, 0.5, 0.25 and 0:
 * - train: one warm-up step, then --steps timed training steps (median);
 * - prefill: a forward pass with a KV cache over 512 tokens (2 sequences of 256), as in generation.
 * Reported per p: median step time, time inside collectives (comm_ms, rank 0, waiting included),
 * payload bytes per rank, speedup over p = 1, and the cost model's prediction (docs §7)
 * (C + M(1)) / (C + M(p)), with C the measured non-communication time at p = 0 and M(p) the step's
 * communication time on this link: every all-reduce costs α + b·β for b payload bytes per rank, α and β
 * measured on the shaped link with the transport itself (4 KiB and 16 MiB all-reduces), and only the
 * blocks' partial all-reduces scale with p (see linkRecords). The prediction from the nominal rate
 * alone is reported beside it.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { selectBackend } from '../backend/index.js';
import { UserError } from '../cli/run.js';
import { resolveConfig } from '../model/config.js';
import { parseTrainConfig } from '../train/config.js';
import { createRankStates, rankTrainStep, type Batch } from '../train/loop.js';
import type { Communicator } from '../tp/comm.js';
import { rendezvous } from '../tp/rendezvous.js';
import { describeMachine, formatMachine } from './machine.js';
import { BENCH_CONFIGS } from './train.js';

export const LINK_P_VALUES = [1, 0.75, 0.5, 0.25, 0] as const;
const SUBNET = '10.231.0';
const PORT = 29500;
const RESULT_PREFIX = 'CAAT_LINK_RESULT ';

export interface LinkRecord {
  rate: string;
  tp: number;
  p: number;
  phase: 'train' | 'prefill';
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
      sh('ip', ['-n', this.hub, 'link', 'set', `h${r}`, 'up']);
      sh('ip', ['-n', ns, 'addr', 'add', `${SUBNET}.${r + 1}/24`, 'dev', `r${r}`]);
      sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      sh('ip', ['-n', ns, 'link', 'set', `r${r}`, 'up']);
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
  tp: number;
  steps: number;
  batch: number;
  backend?: string;
}

interface WorkerResult {
  p: number;
  phase: 'train' | 'prefill';
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
 * The link as the cost model sees it, measured over the shaped link with the transport itself: one
 * all-reduce of b payload bytes per rank takes alpha_ms + b · ms_per_byte.
 */
interface LinkCalibration {
  alpha_ms: number;
  ms_per_byte: number;
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

/** Median time of all-reduces of 4 KiB and 16 MiB on the link: the two points of T(b) = α + b·β. */
async function calibrate(comm: Communicator, repeats: number): Promise<LinkCalibration> {
  const time = async (n: number): Promise<number> => {
    const buf = new Float32Array(n);
    const ts: number[] = [];
    for (let i = 0; i <= repeats; i++) {
      await comm.barrier('bench.sync');
      const t0 = performance.now();
      await comm.allReduce(buf, 'sum', 'bench.calibrate');
      if (i > 0) ts.push(performance.now() - t0);
    }
    return median(ts);
  };
  const small = 1024; // 4 KiB
  const large = 4 * 1024 * 1024; // 16 MiB
  const ts = await time(small);
  const tl = await time(large);
  const msPerByte = (tl - ts) / ((large - small) * 4);
  return { alpha_ms: Math.max(0, ts - small * 4 * msPerByte), ms_per_byte: msPerByte };
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
  const rank = Number(process.env['RANK']);
  const comm = await rendezvous({
    rank,
    size: spec.tp,
    masterAddr: `${SUBNET}.1`,
    masterPort: PORT,
    token: process.env['CAAT_JOB_TOKEN'] ?? '',
    tokenLabel: 'CAAT_JOB_TOKEN',
    config: spec,
    timeoutMs: 120_000,
  });
  try {
    const be = selectBackend(spec.backend, { quiet: true });
    const c = BENCH_CONFIGS.small;
    const T = c.model.seqLen;
    const B = spec.batch;
    const batch = syntheticBatch(B, T, c.model.vocab, 7);
    const prefillB = 2;
    const prompt = syntheticBatch(prefillB, T, c.model.vocab, 11).inputs;
    const out: WorkerResult[] = [];
    for (const p of LINK_P_VALUES) {
      const cfg = resolveConfig(c.model, { tp: spec.tp, p });
      const train = parseTrainConfig({ steps: spec.steps + 1, batchSize: B, seqLen: T, warmup: 1, evalEvery: 0, ckptEvery: 0, evalBatches: 1 }, 'bench link');
      const [r] = createRankStates(cfg, train, be, [comm], { step: 0, tokensSeen: 0 });
      const ms: number[] = [];
      const commMs: number[] = [];
      let bytes = 0;
      let block = 0;
      let calls = { calls: 0, block_calls: 0 };
      for (let i = 0; i <= spec.steps; i++) {
        await comm.barrier('bench.sync');
        comm.resetStats();
        const t0 = performance.now();
        await rankTrainStep(r!, [batch], B, T, 1e-3, 1);
        const dt = performance.now() - t0;
        const st = comm.stats();
        if (i === 0) continue;
        ms.push(dt);
        commMs.push(st.waitMs);
        bytes = [...st.bytes.values()].reduce((a, b) => a + b, 0);
        block = blockBytes(st);
        calls = callCounts(st);
      }
      out.push({ p, phase: 'train', ms: median(ms), comm_ms: median(commMs), bytes, block_bytes: block, ...calls });
      const cache = r!.model.createCache(prefillB, T);
      const pms: number[] = [];
      const pcomm: number[] = [];
      let pbytes = 0;
      let pblock = 0;
      let pcalls = { calls: 0, block_calls: 0 };
      for (let i = 0; i <= spec.steps; i++) {
        cache.len = 0;
        await comm.barrier('bench.sync');
        comm.resetStats();
        const t0 = performance.now();
        await r!.model.forwardIncremental(prompt, T, cache);
        const dt = performance.now() - t0;
        const st = comm.stats();
        if (i === 0) continue;
        pms.push(dt);
        pcomm.push(st.waitMs);
        pbytes = [...st.bytes.values()].reduce((a, b) => a + b, 0);
        pblock = blockBytes(st);
        pcalls = callCounts(st);
      }
      out.push({ p, phase: 'prefill', ms: median(pms), comm_ms: median(pcomm), bytes: pbytes, block_bytes: pblock, ...pcalls });
    }
    const calibration = await calibrate(comm, spec.steps);
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

async function runRate(net: LinkNet, spec: WorkerSpec, token: string, children: Set<ChildProcess>, log: (m: string) => void): Promise<RateResult> {
  const script = fileURLToPath(import.meta.url);
  const runs = net.ranks.map(
    (ns, r) =>
      new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
        const child = spawn('ip', ['netns', 'exec', ns, process.execPath, script, '--worker'], {
          env: { ...process.env, RANK: String(r), CAAT_LINK_SPEC: JSON.stringify(spec), CAAT_JOB_TOKEN: token },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        children.add(child);
        let out = '';
        let err = '';
        child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
        child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
        child.on('close', (code) => {
          children.delete(child);
          resolve({ code, out, err });
        });
      }),
  );
  const res = await Promise.all(runs);
  const bad = res.findIndex((x) => x.code !== 0);
  if (bad >= 0) {
    for (const [r, x] of res.entries()) if (x.err.trim()) log(`rank ${r}: ${x.err.trim()}`);
    throw new Error(`bench link: rank ${bad} failed (exit ${res[bad]!.code})`);
  }
  const line = res[0]!.out.split('\n').find((l) => l.startsWith(RESULT_PREFIX));
  if (!line) throw new Error('bench link: rank 0 reported no result');
  return JSON.parse(line.slice(RESULT_PREFIX.length)) as RateResult;
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
export function linkRecords(rate: string, bps: number, tp: number, res: RateResult): LinkRecord[] {
  const out: LinkRecord[] = [];
  const { alpha_ms: alpha, ms_per_byte: beta } = res.calibration;
  const betaNominal = (((2 * (tp - 1)) / tp) * 8 * 1000) / bps;
  for (const phase of ['train', 'prefill'] as const) {
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
  const be = selectBackend(o.backend, { quiet: true });
  const log = (m: string): void => {
    process.stderr.write(`${m}\n`);
  };
  const c = BENCH_CONFIGS.small;
  if (!o.json) {
    for (const l of formatMachine(describeMachine())) log(l);
    log(
      `bench link: TP ${tp}, small config (h ${c.model.hidden}, L ${c.model.layers}, V ${c.model.vocab}), train batch ${batch}×${c.model.seqLen}, prefill 2×${c.model.seqLen} tokens, ` +
        `backend ${be.name}; ${tp} network namespaces on a bridge, links shaped with tc tbf; ${steps} timed steps per point`,
    );
  }
  const net = new LinkNet(tp);
  const children = new Set<ChildProcess>();
  const cleanup = (): void => {
    for (const ch of children) ch.kill('SIGKILL');
    net.remove();
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    cleanup();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', cleanup);
  const spec: WorkerSpec = { tp, steps, batch, backend: be.name };
  const token = `bench-link-${process.pid}-${Date.now()}`;
  try {
    net.create();
    for (let i = 0; i < rates.length; i++) {
      net.shape(bpsOf[i]!);
      if (!o.json) log(`rate ${rates[i]}: running p = ${LINK_P_VALUES.join(', ')} …`);
      const res = await runRate(net, spec, token, children, log);
      const recs = linkRecords(rates[i]!, bpsOf[i]!, tp, res);
      if (o.json) for (const r of recs) process.stdout.write(`${JSON.stringify(r)}\n`);
      else {
        const r0 = recs[0];
        process.stdout.write(`\nlink ${rates[i]}, TP ${tp}${r0 ? `: measured ${r0.link_gbps.toFixed(3)} Gbit/s effective, ${r0.link_alpha_ms.toFixed(2)} ms per all-reduce` : ''}\n`);
        process.stdout.write(`${'phase'.padEnd(8)}${'p'.padStart(5)}${'ms'.padStart(10)}${'comm ms'.padStart(10)}${'MB/rank'.padStart(10)}${'speedup'.padStart(9)}${'predicted'.padStart(11)}${'(nominal)'.padStart(11)}\n`);
        for (const r of recs) {
          process.stdout.write(
            `${r.phase.padEnd(8)}${r.p.toFixed(2).padStart(5)}${r.ms.toFixed(1).padStart(10)}${r.comm_ms.toFixed(1).padStart(10)}${(r.bytes / 1e6).toFixed(2).padStart(10)}` +
              `${r.speedup.toFixed(2).padStart(9)}${r.predicted_speedup.toFixed(2).padStart(11)}${r.nominal_predicted_speedup.toFixed(2).padStart(11)}\n`,
          );
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
