/**
 * `caat bench train` and `caat bench tp`: training-step throughput on synthetic tokens.
 *
 * bench train: one process, TP = 1, per backend and precision (--precision fp32,bf16): tokens/s, ms per
 * step, the bf16/fp32 speed ratio, and the share of step time in every kernel (every Backend method is
 * wrapped with a timer): GEMM (gemm + gemmBf16), attention (fused, or the whole bf16 attention) and the
 * five largest others.
 * bench tp: the same config at TP = 1 on one thread and at TP = 2 on 2 worker threads, for p = 1, 0.5
 * and 0, per precision: step time, tokens/s, bytes communicated per step, speedup over TP = 1, and
 * per-rank memory (all training buffers, and the activations saved for the backward).
 * Medians over timed steps after a warm-up step.
 */
import { selectBackend } from '../backend/index.js';
import type { Backend, BackendName } from '../backend/types.js';
import { resolveConfig, type ResolvedConfig } from '../model/config.js';
import { rankMemoryBytes, type RankMemory } from '../model/model.js';
import { parseTrainConfig, type TrainConfig } from '../train/config.js';
import { allRanks, createRankStates, rankTrainStep, type Batch } from '../train/loop.js';
import { runThreadHosts } from '../train/threads-host.js';
import { createVirtualGroup } from '../tp/virtual.js';
import { UserError } from '../cli/run.js';
import { describeMachine, formatMachine } from './machine.js';
import { setBf16AttentionHook } from '../backend/bf16.js';
import { PRECISIONS, type Precision } from '../model/model.js';
import { describePrecision, hasBf16Hardware } from '../model/precision.js';

export const BENCH_CONFIGS = {
  tiny: { model: { vocab: 8192, hidden: 256, layers: 4, heads: 8, kvHeads: 8, ffn: 688, seqLen: 256 }, batch: 8 },
  small: { model: { vocab: 8192, hidden: 512, layers: 8, heads: 8, kvHeads: 8, ffn: 1376, seqLen: 256 }, batch: 8 },
} as const;

export type BenchConfigName = keyof typeof BENCH_CONFIGS;

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : 0.5 * (s[m - 1]! + s[m]!);
};

function syntheticTokens(n: number, V: number, seed: number): Uint16Array {
  let x = seed >>> 0;
  const t = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    t[i] = x % V;
  }
  return t;
}

function syntheticBatch(B: number, T: number, V: number, seed: number): Batch {
  const t = syntheticTokens(B * (T + 1), V, seed);
  const inputs = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < T; i++) {
      inputs[b * T + i] = t[b * (T + 1) + i]!;
      targets[b * T + i] = t[b * (T + 1) + i + 1]!;
    }
  }
  return { inputs, targets };
}

/**
 * A backend wrapper that accumulates the wall time of every kernel by method name. Calls made inside
 * the bf16 attention (a composition of gemmBf16, softmax and conversions, see bf16.ts) are counted as
 * attention, like the fused float32 attention kernels, not under their own names.
 */
function timedBackend(be: Backend): { be: Backend; ms: () => Map<string, number>; reset: () => void } {
  const ms = new Map<string, number>();
  let depth = 0;
  let attnStart = 0;
  const wrapped: Backend = Object.create(be) as Backend;
  const raw = be as unknown as Record<string, unknown>;
  for (const key of Object.keys(be) as (keyof Backend)[]) {
    const f = raw[key];
    if (typeof f !== 'function' || key === 'alloc' || key === 'release') continue;
    const name = key === 'attentionForward' || key === 'attentionBackward' ? 'attention' : key;
    (wrapped as unknown as Record<string, unknown>)[key] = (...args: unknown[]) => {
      if (depth > 0) return (f as (...a: unknown[]) => unknown).apply(be, args);
      const t = performance.now();
      const r = (f as (...a: unknown[]) => unknown).apply(be, args);
      ms.set(name, (ms.get(name) ?? 0) + performance.now() - t);
      return r;
    };
  }
  setBf16AttentionHook({
    enter: () => {
      if (depth++ === 0) attnStart = performance.now();
    },
    exit: () => {
      if (--depth === 0) ms.set('attention', (ms.get('attention') ?? 0) + performance.now() - attnStart);
    },
  });
  return { be: wrapped, ms: () => ms, reset: () => ms.clear() };
}

function benchTrainCfg(batch: number, seqLen: number, steps: number, precision: Precision = 'fp32'): TrainConfig {
  return parseTrainConfig({ steps, batchSize: batch, seqLen, warmup: 1, evalEvery: 0, ckptEvery: 0, evalBatches: 1, precision }, 'bench');
}

export interface TrainBenchRecord {
  config: BenchConfigName;
  backend: BackendName;
  precision: Precision;
  /** Whether the backend ran its bf16 GEMMs on bf16 hardware (false: widened to float32). */
  bf16_hardware: boolean;
  tokens_per_s: number;
  ms_per_step: number;
  /** bf16 rows: fp32 ms/step ÷ this row's (measured in the same run); absent on fp32 rows or alone. */
  speedup_vs_fp32?: number;
  /** gemm + gemmBf16 (outside attention). */
  gemm_share: number;
  /** The fused attention kernels, or the whole bf16 attention (its products, softmax and casts). */
  attention_share: number;
  /** The five largest other kernels: [name, share of the step] (the rest of the step is glue and communication). */
  top_kernels: [string, number][];
  /** Every kernel's share of the step (median over the timed steps). */
  kernel_shares: Record<string, number>;
  params: number;
  steps: number;
  memory_per_rank: RankMemory;
}

export async function benchTrainOne(name: BenchConfigName, be: Backend, steps: number, precision: Precision = 'fp32'): Promise<TrainBenchRecord> {
  const c = BENCH_CONFIGS[name];
  const cfg = resolveConfig(c.model, { tp: 1, p: 1 });
  const train = benchTrainCfg(c.batch, c.model.seqLen, steps + 1, precision);
  const t = timedBackend(be);
  try {
    const ranks = createRankStates(cfg, train, t.be, createVirtualGroup(1), { step: 0, tokensSeen: 0 });
    const batch = syntheticBatch(c.batch, c.model.seqLen, c.model.vocab, 7);
    const times: number[] = [];
    const shares = new Map<string, number[]>();
    for (let i = 0; i <= steps; i++) {
      t.reset();
      const t0 = performance.now();
      await allRanks(ranks, (r) => rankTrainStep(r, [batch], c.batch, c.model.seqLen, 1e-3, 1));
      const ms = performance.now() - t0;
      if (i === 0) continue; // warm-up
      times.push(ms);
      for (const [k, v] of t.ms()) shares.set(k, [...(shares.get(k) ?? []), v / ms]);
    }
    const ms = median(times);
    const kernel_shares: Record<string, number> = {};
    for (const [k, v] of [...shares].sort((a, b) => median(b[1]) - median(a[1]))) kernel_shares[k] = median(v);
    const gemm_share = (kernel_shares['gemm'] ?? 0) + (kernel_shares['gemmBf16'] ?? 0);
    const attention_share = kernel_shares['attention'] ?? 0;
    const top_kernels = Object.entries(kernel_shares).filter(([k]) => k !== 'gemm' && k !== 'gemmBf16' && k !== 'attention').slice(0, 5);
    return {
      config: name,
      backend: be.name,
      precision,
      bf16_hardware: hasBf16Hardware(be),
      tokens_per_s: (c.batch * c.model.seqLen) / (ms / 1000),
      ms_per_step: ms,
      gemm_share,
      attention_share,
      top_kernels,
      kernel_shares,
      params: ranks[0]!.model.params.size,
      steps,
      memory_per_rank: rankMemoryBytes(cfg, c.batch, c.model.seqLen, precision),
    };
  } finally {
    setBf16AttentionHook(null);
  }
}

/** --precision: a comma-separated list of fp32 and bf16. */
export function parsePrecisions(s: string | undefined, dflt: string): Precision[] {
  const names = (s ?? dflt).split(',').map((x) => x.trim()).filter(Boolean);
  if (names.length === 0) throw new UserError('--precision: expected fp32, bf16 or fp32,bf16');
  for (const n of names) if (!(PRECISIONS as readonly string[]).includes(n)) throw new UserError(`--precision: unknown precision "${n}" (expected fp32 or bf16)`);
  return [...new Set(names)] as Precision[];
}

function parseConfigs(s: string | undefined): BenchConfigName[] {
  const names = (s ?? 'tiny,small').split(',').map((x) => x.trim()).filter(Boolean);
  for (const n of names) if (!(n in BENCH_CONFIGS)) throw new UserError(`--config: unknown config "${n}" (expected tiny or small)`);
  return names as BenchConfigName[];
}

function parseSteps(s: string | undefined, dflt: number): number {
  const n = Number(s ?? dflt);
  if (!Number.isInteger(n) || n < 1) throw new UserError(`--steps: expected a positive integer, got ${JSON.stringify(s)}`);
  return n;
}

export async function benchTrainCommand(opts: { json?: boolean; config?: string; backend?: string; steps?: string; precision?: string }): Promise<void> {
  const configs = parseConfigs(opts.config);
  const steps = parseSteps(opts.steps, 3);
  const precisions = parsePrecisions(opts.precision, 'fp32');
  const json = opts.json === true;
  const info = (s: string) => process.stderr.write(`${s}\n`);
  if (!json) for (const l of formatMachine(describeMachine())) info(l);
  let backends: Backend[];
  if (opts.backend) backends = opts.backend.split(',').map((n) => selectBackend(n.trim(), { quiet: true }));
  else {
    // Default: the fastest available backend only (js takes minutes per small-config step).
    backends = [selectBackend(undefined, { quiet: true })];
  }
  const rows: TrainBenchRecord[] = [];
  for (const name of configs) {
    for (const be of backends) {
      let fp32Ms: number | undefined;
      for (const precision of precisions) {
        if (!json) info(`bench train: ${name} on ${be.description}, ${describePrecision(precision, be)} …`);
        const r = await benchTrainOne(name, be, steps, precision);
        if (precision === 'fp32') fp32Ms = r.ms_per_step;
        else if (fp32Ms !== undefined) r.speedup_vs_fp32 = fp32Ms / r.ms_per_step;
        rows.push(r);
        if (json) process.stdout.write(`${JSON.stringify(r)}\n`);
      }
    }
  }
  if (!json) {
    const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
    process.stdout.write(`${'config'.padEnd(8)}${'backend'.padEnd(9)}${'prec'.padEnd(6)}${'params'.padStart(8)}${'tokens/s'.padStart(10)}${'ms/step'.padStart(9)}${'vs fp32'.padStart(9)}${'gemm'.padStart(7)}${'attn'.padStart(7)}${'acts MiB'.padStart(10)}  largest other kernels\n`);
    for (const r of rows) {
      process.stdout.write(
        `${r.config.padEnd(8)}${r.backend.padEnd(9)}${r.precision.padEnd(6)}${(r.params / 1e6).toFixed(1).padStart(7)}M${r.tokens_per_s.toFixed(0).padStart(10)}${r.ms_per_step.toFixed(0).padStart(9)}` +
          `${(r.speedup_vs_fp32 !== undefined ? `${r.speedup_vs_fp32.toFixed(2)}x` : '').padStart(9)}${pct(r.gemm_share).padStart(7)}${pct(r.attention_share).padStart(7)}` +
          `${(r.memory_per_rank.activations / 2 ** 20).toFixed(1).padStart(10)}  ${r.top_kernels.map(([k, v]) => `${k} ${pct(v)}`).join(', ')}\n`,
      );
    }
  }
}

export interface TpBenchRecord {
  config: BenchConfigName;
  precision: Precision;
  tp: number;
  workers: number;
  p: number;
  shared: number;
  tokens_per_s: number;
  ms_per_step: number;
  bytes_per_step: number;
  block_bytes_per_step: number;
  comm_wait_ms: number;
  speedup_vs_tp1: number;
  memory_per_rank: ReturnType<typeof rankMemoryBytes>;
}

async function tpRun(cfg: ResolvedConfig, batch: number, seqLen: number, steps: number, be: Backend, workers: number, precision: Precision): Promise<{ ms: number; bytes: number; block: number; wait: number }> {
  const train = benchTrainCfg(batch, seqLen, steps + 1, precision);
  const tokens = syntheticTokens(batch * (seqLen + 1) * (steps + 2), cfg.vocab, 11);
  const data = { train: tokens, val: new Uint16Array(0) };
  const ms: number[] = [];
  let bytes = 0;
  let block = 0;
  const waits: number[] = [];
  const onEvent = (e: { type: string; step?: number; ms?: number; commBytes?: Record<string, number>; commWaitMs?: number }) => {
    if (e.type !== 'step' || e.step === 1) return;
    ms.push(e.ms!);
    waits.push(e.commWaitMs!);
    bytes = Object.values(e.commBytes!).reduce((a, b) => a + b, 0);
    block = Object.entries(e.commBytes!).filter(([t]) => t.endsWith('.shared')).reduce((a, [, b]) => a + b, 0);
  };
  const start = { step: 0, tokensSeen: 0 };
  if (workers === 0) {
    const { runVirtualHost } = await import('../train/trainer.js');
    await runVirtualHost(cfg, train, be, data, start, onEvent);
  } else {
    await runThreadHosts({ cfg, train, backend: be.name, workers, data, start, onEvent });
  }
  return { ms: median(ms), bytes, block, wait: median(waits) };
}

export async function benchTpCommand(opts: { json?: boolean; config?: string; backend?: string; steps?: string; tp?: string; precision?: string }): Promise<void> {
  const [name] = parseConfigs(opts.config ?? 'small');
  const c = BENCH_CONFIGS[name!];
  const steps = parseSteps(opts.steps, 4);
  const tp = parseSteps(opts.tp, 2);
  const precisions = parsePrecisions(opts.precision, 'fp32');
  const json = opts.json === true;
  const info = (s: string) => process.stderr.write(`${s}\n`);
  const be = selectBackend(opts.backend, { quiet: true });
  if (!json) for (const l of formatMachine(describeMachine())) info(l);
  info(`bench tp: ${name} config, backend ${be.description}, ${steps} timed steps after one warm-up`);
  const rows: TpBenchRecord[] = [];
  const tokens = c.batch * c.model.seqLen;
  for (const precision of precisions) {
    info(`bench tp: ${describePrecision(precision, be)}`);
    const cfg1 = resolveConfig(c.model, { tp: 1, p: 1 });
    const base = await tpRun(cfg1, c.batch, c.model.seqLen, steps, be, 0, precision);
    for (const p of [1, 0.5, 0]) {
      rows.push({ config: name!, precision, tp: 1, workers: 1, p, shared: cfg1.shared, tokens_per_s: tokens / (base.ms / 1000), ms_per_step: base.ms, bytes_per_step: 0, block_bytes_per_step: 0, comm_wait_ms: 0, speedup_vs_tp1: 1, memory_per_rank: rankMemoryBytes(cfg1, c.batch, c.model.seqLen, precision) });
    }
    for (const p of [1, 0.5, 0]) {
      const cfg = resolveConfig(c.model, { tp, p });
      const workers = Math.min(tp, 2);
      info(`bench tp: TP ${tp} on ${workers} worker threads, p ${p}, ${precision} …`);
      const r = await tpRun(cfg, c.batch, c.model.seqLen, steps, be, workers, precision);
      rows.push({ config: name!, precision, tp, workers, p, shared: cfg.shared, tokens_per_s: tokens / (r.ms / 1000), ms_per_step: r.ms, bytes_per_step: r.bytes, block_bytes_per_step: r.block, comm_wait_ms: r.wait, speedup_vs_tp1: base.ms / r.ms, memory_per_rank: rankMemoryBytes(cfg, c.batch, c.model.seqLen, precision) });
    }
  }
  if (json) {
    for (const r of rows) process.stdout.write(`${JSON.stringify(r)}\n`);
    return;
  }
  const mb = (b: number) => (b / 2 ** 20).toFixed(1);
  process.stdout.write(`${'prec'.padEnd(5)}${'tp'.padStart(3)}${'workers'.padStart(9)}${'p'.padStart(6)}${'tokens/s'.padStart(11)}${'ms/step'.padStart(10)}${'MiB/step'.padStart(10)}${'block MiB'.padStart(11)}${'wait ms'.padStart(9)}${'speedup'.padStart(9)}${'params+grads+adam MiB/rank'.padStart(28)}${'acts MiB/rank'.padStart(15)}${'saved MiB/rank'.padStart(16)}\n`);
  for (const r of rows) {
    const m = r.memory_per_rank;
    process.stdout.write(
      `${r.precision.padEnd(5)}${String(r.tp).padStart(3)}${String(r.workers).padStart(9)}${String(r.p).padStart(6)}${r.tokens_per_s.toFixed(0).padStart(11)}${r.ms_per_step.toFixed(0).padStart(10)}` +
        `${mb(r.bytes_per_step).padStart(10)}${mb(r.block_bytes_per_step).padStart(11)}${r.comm_wait_ms.toFixed(0).padStart(9)}${r.speedup_vs_tp1.toFixed(2).padStart(9)}` +
        `${mb(m.params + m.grads + m.optimizer).padStart(28)}${mb(m.activations).padStart(15)}${mb(m.activationsSaved).padStart(16)}\n`,
    );
  }
}
