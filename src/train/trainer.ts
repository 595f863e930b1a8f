/**
 * The training coordinator: prepares the run folder and data, places the N logical ranks (all in this
 * thread as virtual ranks, or N/M per worker thread), and turns host events into progress output,
 * metrics.jsonl lines and atomically written checkpoints.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { selectBackend } from '../backend/index.js';
import type { Backend } from '../backend/types.js';
import { prepareData, TokenLoader, validationWindows, type LoaderState, type TokenArray } from '../data/dataset.js';
import { saveTokenizer, loadTokenizer } from '../data/tokenizers.js';
import type { Tokenizer } from '../data/tokenizer.js';
import { writeFileAtomic } from '../io/atomic.js';
import { loadCheckpoint, pruneCheckpoints, writeCheckpoint, type FullTensors } from '../io/checkpoint.js';
import { countParams, resolveConfig, type ModelConfigInput, type ResolvedConfig } from '../model/config.js';
import { placeShard, paramSpecs } from '../model/params.js';
import { createVirtualGroup } from '../tp/virtual.js';
import type { TrainConfig } from './config.js';
import { createRankStates, runHost, type Batch, type BatchSource, type HostEvent, type ShardEvent, type StartState } from './loop.js';
import type { ProcessLaunch } from './process-host.js';
import { Progress } from './progress.js';

export interface RunSpec {
  /** Model config without the vocab (that comes from the tokenizer). Validated by resolveConfig. */
  model: Omit<ModelConfigInput, 'vocab'>;
  /** Parallel config as given; validated by resolveConfig. */
  parallel: Record<string, unknown>;
  train: TrainConfig;
  data: { corpus: string; tokenizer: string; vocabSize: number; valFraction?: number; cacheDir?: string };
  /** Worker threads hosting the ranks; 0 = every rank as a virtual rank in the main thread. */
  workers: number;
  backend?: string;
}

export interface TrainResult {
  runDir: string;
  finalLoss: number;
  finalValLoss?: number;
  steps: number;
  seconds: number;
}

/** What a host needs to rebuild the data pipeline deterministically (also sent to worker threads). */
export interface HostData {
  train: TokenArray;
  val: TokenArray;
}

export function makeBatchSource(tokens: ArrayLike<number>, train: TrainConfig): BatchSource {
  const loader = new TokenLoader(tokens, { batchSize: train.batchSize, seqLen: train.seqLen, seed: train.seed });
  return {
    next: (): Batch => loader.next(),
    state: () => loader.state(),
    restore: (s) => loader.restore(s as LoaderState),
  };
}

/**
 * The validation batches used during training: evalBatches·B windows spread evenly over the whole
 * validation split (not just its first documents), fixed for the run.
 */
export function makeValBatches(tokens: ArrayLike<number>, train: TrainConfig): Batch[] {
  const B = train.batchSize;
  const T = train.seqLen;
  const nWin = validationWindows(tokens.length, T);
  const want = Math.min(nWin, train.evalBatches * B);
  const batches: Batch[] = [];
  for (let b = 0; b + B <= want; b += B) {
    const inputs = new Int32Array(B * T);
    const targets = new Int32Array(B * T);
    for (let r = 0; r < B; r++) {
      const start = Math.floor(((b + r) * nWin) / want) * T;
      for (let t = 0; t < T; t++) {
        inputs[r * T + t] = tokens[start + t]!;
        targets[r * T + t] = tokens[start + t + 1]!;
      }
    }
    batches.push({ inputs, targets });
  }
  return batches;
}

/** Collects every rank's shards of one step and assembles full logical tensors. */
class ShardAssembler {
  private pending = new Map<number, ShardEvent[]>();
  constructor(private readonly cfg: ResolvedConfig) {}

  add(e: ShardEvent): { full: FullTensors; ev: ShardEvent } | undefined {
    const list = this.pending.get(e.step) ?? [];
    list.push(e);
    this.pending.set(e.step, list);
    if (list.length < this.cfg.parallel.tp) return undefined;
    this.pending.delete(e.step);
    const N = this.cfg.parallel.tp;
    const full: FullTensors = { params: new Map(), m: new Map(), v: new Map() };
    for (const spec of paramSpecs(this.cfg)) {
      const n = spec.shape.reduce((a, b) => a * b, 1);
      for (const kind of ['params', 'm', 'v'] as const) {
        const out = new Float32Array(n);
        for (const s of list) placeShard(spec, s[kind][spec.name]!, N, s.rank, out);
        full[kind].set(spec.name, out);
      }
    }
    return { full, ev: list[0]! };
  }
}

function log(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

/** Start a new run (or resume one) and train to `train.steps`. */
export async function train(spec: RunSpec, opts: { runDir?: string; resume?: string; process?: ProcessLaunch } = {}): Promise<TrainResult> {
  // Started by a launcher: this process is one rank of a group over TCP (src/train/process-host.ts).
  if (opts.process) return (await import('./process-host.js')).trainProcess(spec, opts, opts.process);
  const t0 = performance.now();
  let runDir: string;
  let start: StartState = { step: 0, tokensSeen: 0 };
  let tokenizer: Tokenizer | undefined;
  if (opts.resume) {
    runDir = opts.resume;
    const ck = loadCheckpoint(runDir);
    start = { step: ck.state.step, tokensSeen: ck.state.tokensSeen, loader: ck.state.loader, params: ck.params, m: ck.m, v: ck.v };
    tokenizer = loadTokenizer(path.join(runDir, 'tokenizer.json'));
    log(`resuming ${runDir} from ${path.basename(ck.dir)} (step ${ck.state.step})`);
  } else {
    runDir = opts.runDir ?? path.join('runs', new Date().toISOString().replace(/[:.]/g, '-').replace('Z', ''));
    if (fs.existsSync(path.join(runDir, 'latest'))) {
      throw new Error(`${runDir} already holds a run; use --resume ${runDir} to continue it, or choose another --out`);
    }
    fs.mkdirSync(runDir, { recursive: true });
  }

  const data = prepareData({
    corpus: spec.data.corpus,
    tokenizer: tokenizer ?? spec.data.tokenizer,
    vocabSize: spec.data.vocabSize,
    valFraction: spec.data.valFraction,
    cacheDir: spec.data.cacheDir,
    log,
  });
  tokenizer = data.tokenizer;
  const cfg = resolveConfig({ ...spec.model, vocab: tokenizer.vocabSize }, spec.parallel, 'model config');
  if (spec.train.seqLen > cfg.model.seqLen) throw new Error(`train seqLen ${spec.train.seqLen} exceeds the model's seqLen ${cfg.model.seqLen}`);
  for (const n of cfg.notes) log(`note: ${n}`);
  if (!opts.resume) {
    saveTokenizer(path.join(runDir, 'tokenizer.json'), tokenizer);
    writeFileAtomic(path.join(runDir, 'run.json'), `${JSON.stringify({ ...spec, model: cfg.model, parallel: cfg.parallel, shared: cfg.shared }, null, 2)}\n`);
  }
  const be = selectBackend(spec.backend);
  log(
    `model: ${(countParams(cfg) / 1e6).toFixed(2)}M parameters (h ${cfg.model.hidden}, L ${cfg.model.layers}, heads ${cfg.model.heads}/${cfg.model.kvHeads}, F ${cfg.model.ffn}, V ${cfg.vocab}); ` +
      `TP ${cfg.parallel.tp}, p ${cfg.parallel.p} (shared ${cfg.shared}/${cfg.model.hidden}), private scale ${cfg.parallel.privateScale}; ` +
      `train ${data.train.tokens.length} tokens, val ${data.val.tokens.length} tokens`,
  );

  pruneCheckpoints(runDir, 0); // temporary folders of an interrupted earlier writer
  const metricsPath = path.join(runDir, 'metrics.jsonl');
  const metrics = fs.openSync(metricsPath, 'a');
  const progress = new Progress(spec.train.steps, start.step);
  const assembler = new ShardAssembler(cfg);
  let finalLoss = NaN;
  let finalValLoss: number | undefined;
  let pendingStep: Record<string, unknown> | undefined;
  const flushStep = () => {
    if (pendingStep) fs.writeSync(metrics, `${JSON.stringify(pendingStep)}\n`);
    pendingStep = undefined;
  };
  const onEvent = (e: HostEvent) => {
    if (e.type === 'step') {
      flushStep();
      finalLoss = e.loss;
      pendingStep = stepRecord(e, cfg);
      progress.update(e.step, e.loss, e.tokens / (e.ms / 1000));
    } else if (e.type === 'eval') {
      finalValLoss = e.valLoss;
      if (pendingStep && pendingStep['step'] === e.step) {
        pendingStep['val_loss'] = e.valLoss;
        pendingStep['val_ppl'] = Math.exp(e.valLoss);
      }
      progress.note(`step ${e.step}: validation loss ${e.valLoss.toFixed(4)} (perplexity ${Math.exp(e.valLoss).toFixed(2)})`);
    } else {
      const done = assembler.add(e);
      if (done) {
        const dir = writeCheckpoint(runDir, cfg, done.full, {
          step: done.ev.step,
          tokensSeen: done.ev.tokensSeen,
          loader: done.ev.loader,
          train: spec.train as unknown as Record<string, unknown>,
        });
        pruneCheckpoints(runDir, spec.train.keepCheckpoints);
        progress.note(`checkpoint ${dir}`);
      }
    }
  };

  try {
    if (spec.workers > 0 && cfg.parallel.tp > 1) {
      const { runThreadHosts } = await import('./threads-host.js');
      await runThreadHosts({ cfg, train: spec.train, backend: be.name, workers: spec.workers, data: { train: data.train.tokens, val: data.val.tokens }, start, onEvent });
    } else {
      await runVirtualHost(cfg, spec.train, be, { train: data.train.tokens, val: data.val.tokens }, start, onEvent);
    }
  } finally {
    flushStep();
    fs.closeSync(metrics);
    progress.stop();
  }
  const seconds = (performance.now() - t0) / 1000;
  log(`done: ${spec.train.steps} steps in ${seconds.toFixed(1)} s; final train loss ${finalLoss.toFixed(4)}${finalValLoss !== undefined ? `, validation loss ${finalValLoss.toFixed(4)}` : ''}; run folder ${runDir}`);
  return { runDir, finalLoss, finalValLoss, steps: spec.train.steps, seconds };
}

/** All N ranks as virtual ranks in this thread. */
export async function runVirtualHost(cfg: ResolvedConfig, trainCfg: TrainConfig, be: Backend, data: HostData, start: StartState, onEvent: (e: HostEvent) => void): Promise<void> {
  const comms = createVirtualGroup(cfg.parallel.tp);
  const ranks = createRankStates(cfg, trainCfg, be, comms, start);
  await runHost({ ranks, train: trainCfg, data: makeBatchSource(data.train, trainCfg), val: makeValBatches(data.val, trainCfg), start, emit: onEvent });
}

/** One metrics.jsonl record (full precision), with communication split by direction and kind. */
export function stepRecord(e: Extract<HostEvent, { type: 'step' }>, cfg: ResolvedConfig): Record<string, unknown> {
  const b = e.commBytes;
  const sum = (pred: (tag: string) => boolean) => Object.entries(b).filter(([t]) => pred(t)).reduce((a, [, v]) => a + v, 0);
  const fwdShared = sum((t) => t.endsWith('.fwd.shared'));
  const bwdShared = sum((t) => t.endsWith('.bwd.shared'));
  const embedding = sum((t) => t.startsWith('embed.'));
  const total = sum(() => true);
  // Private channels are never communicated: 4 row-parallel boundaries per layer (2 forward, 2
  // backward) each keep tokens·(h − s) values local that p = 1 would all-reduce.
  const privateKept = cfg.parallel.tp > 1 ? 4 * cfg.model.layers * e.tokens * (cfg.model.hidden - cfg.shared) * 4 : 0;
  return {
    step: e.step,
    loss: e.loss,
    lr: e.lr,
    grad_norm: e.gradNorm,
    tokens_per_s: e.tokens / (e.ms / 1000),
    ms_per_step: e.ms,
    comm_bytes: total,
    comm_bytes_fwd_shared: fwdShared,
    comm_bytes_bwd_shared: bwdShared,
    comm_bytes_embedding: embedding,
    comm_bytes_other: total - fwdShared - bwdShared - embedding,
    comm_bytes_private_kept_local: privateKept,
    comm_wait_ms: e.commWaitMs,
  };
}
