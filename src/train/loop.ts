/**
 * The training loop of one host: a thread holding one or more ranks of the TP group (all N ranks as
 * virtual ranks in the main thread, or N/M ranks in each of M worker threads). Every host runs the
 * same loop on the same batches; rank 0's host reports metrics; checkpoints are reported as each
 * rank's shards and assembled by the coordinator.
 */
import type { Backend } from '../backend/types.js';
import type { ResolvedConfig } from '../model/config.js';
import { RankModel } from '../model/model.js';
import { sliceShard } from '../model/params.js';
import { runOnRanks, type Communicator } from '../tp/comm.js';
import type { MetricRecord } from '../eval/metrics.js';
import { aggregate, type TaskSet } from '../eval/run.js';
import { scoreRequests, type RankHandle } from '../eval/scorer.js';
import { AdamW } from './adamw.js';
import type { TrainConfig } from './config.js';
import { lrAt } from './schedule.js';

export interface Batch {
  inputs: Int32Array;
  targets: Int32Array;
}

/** A deterministic stream of training batches whose position can be saved and restored exactly. */
export interface BatchSource {
  next(): Batch;
  state(): unknown;
  restore(state: unknown): void;
}

export interface StepEvent {
  type: 'step';
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  ms: number;
  tokens: number;
  commBytes: Record<string, number>;
  commWaitMs: number;
}

export interface EvalEvent {
  type: 'eval';
  step: number;
  /** Mean loss over the validation batches (absent when there are none). */
  valLoss?: number;
  /** Zero-shot task scores (--eval-tasks). */
  tasks?: MetricRecord[];
}

export interface ShardEvent {
  type: 'shards';
  step: number;
  rank: number;
  tokensSeen: number;
  loader: unknown;
  params: Record<string, Float32Array>;
  m: Record<string, Float32Array>;
  v: Record<string, Float32Array>;
}

export type HostEvent = StepEvent | EvalEvent | ShardEvent;

export interface RankState {
  model: RankModel;
  opt: AdamW;
}

/** Per-rank initial state: fresh from the seed, or full logical tensors from a checkpoint. */
export interface StartState {
  step: number;
  tokensSeen: number;
  loader?: unknown;
  params?: Map<string, ArrayLike<number>>;
  m?: Map<string, ArrayLike<number>>;
  v?: Map<string, ArrayLike<number>>;
}

export function createRankStates(cfg: ResolvedConfig, train: TrainConfig, be: Backend, comms: Communicator[], start: StartState): RankState[] {
  return comms.map((comm) => {
    const model = new RankModel(cfg, be, comm);
    model.setPrecision(train.precision === 'bf16' ? 'bf16' : 'fp32');
    if (start.params) model.loadFull((s) => start.params!.get(s.name)!);
    else model.initFromSeed(train.seed);
    const opt = new AdamW(model.params, model.grads, { beta1: train.beta1, beta2: train.beta2, eps: train.eps, weightDecay: train.weightDecay }, be);
    if (start.m && start.v) {
      for (const spec of model.specs) {
        sliceShard(spec, start.m.get(spec.name)!, model.N, model.rank, opt.m.get(spec.name));
        sliceShard(spec, start.v.get(spec.name)!, model.N, model.rank, opt.v.get(spec.name));
      }
    }
    opt.step = start.step;
    return { model, opt };
  });
}

/** Run fn on every local rank concurrently; a failing rank poisons the group so no rank hangs. */
export async function allRanks<T>(ranks: RankState[], fn: (r: RankState) => Promise<T>): Promise<T[]> {
  return runOnRanks(ranks.map((r) => r.model.comm), (_, i) => fn(ranks[i]!));
}

/** One optimiser step on one rank over the micro-batches; returns [mean loss, grad norm]. */
export async function rankTrainStep(r: RankState, micro: Batch[], B: number, T: number, lr: number, clip: number): Promise<[number, number]> {
  const { model, opt } = r;
  model.zeroGrad();
  const total = micro.length * B * T;
  let lossSum = 0;
  for (const b of micro) {
    const l = await model.forward(b.inputs, b.targets, B, T);
    await model.backward(b.inputs, b.targets, 1 / total);
    lossSum += l * B * T;
  }
  await model.finalizeGrads();
  const norm = await model.gradNorm();
  const scale = clip > 0 && norm > clip ? clip / norm : 1;
  opt.update(lr, scale);
  return [lossSum / total, norm];
}

/** Mean loss over the given batches (no gradients). */
export async function rankEval(r: RankState, batches: Batch[], B: number, T: number): Promise<number> {
  let s = 0;
  for (const b of batches) s += await r.model.forward(b.inputs, b.targets, B, T);
  return s / Math.max(1, batches.length);
}

function faultInjection(): { rank: number; step: number } | undefined {
  const spec = process.env['CAAT_FAULT_INJECT'];
  if (!spec) return undefined;
  const m = /^rank=(\d+),step=(\d+)$/.exec(spec.trim());
  if (!m) throw new Error(`CAAT_FAULT_INJECT must look like "rank=1,step=3", got ${JSON.stringify(spec)}`);
  return { rank: Number(m[1]), step: Number(m[2]) };
}

export function shardEvent(r: RankState, step: number, tokensSeen: number, loader: unknown): ShardEvent {
  const rec = (set: AdamW['m']): Record<string, Float32Array> => {
    const o: Record<string, Float32Array> = {};
    for (const s of set.specs) o[s.name] = Float32Array.from(set.get(s.name));
    return o;
  };
  return { type: 'shards', step, rank: r.model.rank, tokensSeen, loader, params: rec(r.model.params), m: rec(r.opt.m), v: rec(r.opt.v) };
}

export interface HostOptions {
  ranks: RankState[];
  train: TrainConfig;
  data: BatchSource;
  val: Batch[];
  start: StartState;
  emit: (e: HostEvent) => void | Promise<void>;
  /** Zero-shot tasks scored at every validation step (tokenised requests; see src/eval/run.ts). */
  tasks?: TaskSet;
}

/** Score the tasks on this host's ranks; the reporting host aggregates them. */
async function hostTaskScores(ranks: RankState[], tasks: TaskSet, report: boolean): Promise<MetricRecord[] | undefined> {
  const handle: RankHandle = { ranks: ranks.map((r) => r.model), all: (fn) => allRanks(ranks, (r) => fn(r.model, ranks.indexOf(r))) };
  const scores = await scoreRequests(handle, tasks.requests);
  return report ? aggregate(tasks, scores).records : undefined;
}

/** The loop itself. Returns when `train.steps` is reached. */
export async function runHost(o: HostOptions): Promise<void> {
  const { ranks, train, data } = o;
  const B = train.batchSize;
  const T = train.seqLen;
  const fault = faultInjection();
  const reporter = ranks.find((r) => r.model.rank === 0);
  let tokensSeen = o.start.tokensSeen;
  if (o.start.loader !== undefined) data.restore(o.start.loader);
  for (let step = o.start.step + 1; step <= train.steps; step++) {
    const t0 = performance.now();
    for (const r of ranks) r.model.comm.resetStats();
    const micro: Batch[] = [];
    for (let i = 0; i < train.gradAccum; i++) micro.push(data.next());
    const lr = lrAt(train, step);
    const res = await allRanks(ranks, async (r) => {
      if (fault && fault.rank === r.model.rank && fault.step === step) throw new Error(`injected fault at step ${step}`);
      return rankTrainStep(r, micro, B, T, lr, train.clip);
    });
    tokensSeen += train.gradAccum * B * T;
    const ms = performance.now() - t0;
    if (reporter) {
      const st = reporter.model.comm.stats();
      await o.emit({
        type: 'step',
        step,
        loss: res[0]![0],
        gradNorm: res[0]![1],
        lr,
        ms,
        tokens: train.gradAccum * B * T,
        commBytes: Object.fromEntries(st.bytes),
        commWaitMs: st.waitMs,
      });
    }
    const last = step === train.steps;
    if ((train.evalEvery > 0 && step % train.evalEvery === 0) || last) {
      const v = o.val.length > 0 ? (await allRanks(ranks, (r) => rankEval(r, o.val, B, T)))[0]! : undefined;
      const tasks = o.tasks ? await hostTaskScores(ranks, o.tasks, reporter !== undefined) : undefined;
      if (reporter && (v !== undefined || tasks)) await o.emit({ type: 'eval', step, ...(v !== undefined ? { valLoss: v } : {}), ...(tasks ? { tasks } : {}) });
    }
    if ((train.ckptEvery > 0 && step % train.ckptEvery === 0) || last) {
      const loader = data.state();
      for (const r of ranks) await o.emit(shardEvent(r, step, tokensSeen, loader));
    }
  }
}
