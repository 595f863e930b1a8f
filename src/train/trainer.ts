/**
 * The training coordinator: prepares the run folder and data, places the N logical ranks (all in this
 * thread as virtual ranks, or N/M per worker thread), and turns host events into progress output,
 * metrics.jsonl lines and atomically written checkpoints.
 */
import { selectBackend } from '../backend/index.js';
import { describePrecision, resolvePrecision } from '../model/precision.js';
import type { Backend } from '../backend/types.js';
import { TokenLoader, validationWindows, type LoaderState, type TokenArray } from '../data/dataset.js';
import type { FullTensors } from '../io/checkpoint.js';
import type { ResolvedConfig } from '../model/config.js';
import { placeShard, paramSpecs } from '../model/params.js';
import { createVirtualGroup } from '../tp/virtual.js';
import type { TrainConfig } from './config.js';
import { createRankStates, runHost, type Batch, type BatchSource, type HostEvent, type ShardEvent, type StartState } from './loop.js';
import type { ProcessLaunch } from './process-host.js';
import type { TaskSet } from '../eval/run.js';
import { describeRun, openRun, prepareEvalTasks, prepareRun, RunWriter, writeRunFiles, type RunSpec, type TrainResult } from './run.js';

export type { RunSpec, TrainResult } from './run.js';

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
  // Started by a launcher: this process is one rank of a group over TCP or MPI (process-host.ts).
  if (opts.process) return (await import('./process-host.js')).trainProcess(spec, opts, opts.process);
  const t0 = performance.now();
  const { runDir, start, tokenizer } = openRun(opts, true, log);
  const be = selectBackend(spec.backend);
  const precision = resolvePrecision(spec.train.precision, be);
  log(describePrecision(precision, be, spec.train.precision));
  spec = { ...spec, train: { ...spec.train, precision } };
  const { data, cfg } = prepareRun(spec, tokenizer, log);
  if (!opts.resume) writeRunFiles(runDir, spec, cfg, data.tokenizer);
  const threads = spec.workers > 0 && cfg.parallel.tp > 1;
  const tasks = prepareEvalTasks(spec, data, cfg, log);
  log(describeRun(cfg, data, threads ? ` on ${spec.workers} worker thread${spec.workers > 1 ? 's' : ''}` : cfg.parallel.tp > 1 ? ' as virtual ranks in one thread' : ''));
  const writer = new RunWriter(runDir, cfg, spec, start.step);
  const assembler = new ShardAssembler(cfg);
  const onEvent = (e: HostEvent) => {
    if (e.type !== 'shards') return writer.onEvent(e);
    const done = assembler.add(e);
    if (done) writer.checkpoint(done.full, done.ev);
  };
  const hostData = { train: data.train.tokens, val: data.val.tokens };
  try {
    if (threads) {
      const { runThreadHosts } = await import('./threads-host.js');
      await runThreadHosts({ cfg, train: spec.train, backend: be.name, workers: spec.workers, data: hostData, start, onEvent, ...(tasks ? { tasks } : {}) });
    } else {
      await runVirtualHost(cfg, spec.train, be, hostData, start, onEvent, tasks);
    }
  } finally {
    writer.close();
  }
  const seconds = (performance.now() - t0) / 1000;
  log(writer.summary(seconds));
  return { runDir, finalLoss: writer.finalLoss, finalValLoss: writer.finalValLoss, steps: spec.train.steps, seconds };
}

/** All N ranks as virtual ranks in this thread. */
export async function runVirtualHost(cfg: ResolvedConfig, trainCfg: TrainConfig, be: Backend, data: HostData, start: StartState, onEvent: (e: HostEvent) => void, tasks?: TaskSet): Promise<void> {
  const comms = createVirtualGroup(cfg.parallel.tp);
  const ranks = createRankStates(cfg, trainCfg, be, comms, start);
  await runHost({ ranks, train: trainCfg, data: makeBatchSource(data.train, trainCfg), val: makeValBatches(data.val, trainCfg), start, emit: onEvent, ...(tasks ? { tasks } : {}) });
}
