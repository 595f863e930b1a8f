/**
 * The placement layer: one handle on a command's N logical ranks, whatever hosts them.
 *
 * - virtual: every rank in this thread (`--workers 0`, the default of one process);
 * - threads: M worker threads hosting N/M ranks each (`--workers M`), collectives over shared memory;
 *   this thread drives them and hosts no rank;
 * - tcp / mpi: one or more ranks per process, the processes started by a launcher (`caat launch`,
 *   torchrun-style variables, mpirun, srun; see src/train/process-host.ts).
 *
 * Whatever the transport, the process that drives (`lead`) calls `step(plan)`: the plan reaches every
 * rank (processes: broadcast by rank 0 over the job's transport; threads: posted to every worker),
 * every rank runs the same RankExecutor on its shard, and rank 0's logits come back. The other
 * processes call `follow()`, which runs the plans rank 0 broadcasts until it sends `stop`. While idle,
 * the lead sends heartbeats so the followers' collectives stay within --comm-timeout; a rank that dies
 * or stops answering fails the pending and every later step, and `onFailure` listeners hear of it.
 */
import type { Worker } from 'node:worker_threads';
import { selectBackend } from '../backend/index.js';
import type { BackendName, FloatArray } from '../backend/types.js';
import { UserError } from '../cli/run.js';
import type { ResolvedConfig } from '../model/config.js';
import { VirtualModel } from '../model/harness.js';
import { processModel, type ProcessLaunch } from '../train/process-host.js';
import { runOnRanks, type Communicator } from '../tp/comm.js';
import { launchThreadGroup } from '../transport/threads.js';
import { RankExecutor } from './executor.js';
import { controlPlan, decodePlan, encodePlan, type StepPlan } from './plan.js';

export { controlPlan, decodePlan, encodePlan, type StepPlan } from './plan.js';

export type Placement = 'virtual' | 'threads' | 'tcp' | 'mpi';

export interface StepResult {
  /** Rank 0's gathered logits [rows, V] (rows: see RankModel.forwardBatch). */
  logits: Float32Array;
  /** Wall time of the step (ms), collective time on rank 0 (ms) and bytes rank 0 moved. */
  ms: number;
  commMs: number;
  commBytes: number;
}

export interface RankHost {
  readonly tp: number;
  readonly placement: Placement;
  /** This process drives the ranks (calls step); false on processes other than rank 0's. */
  readonly lead: boolean;
  readonly slots: number;
  readonly maxLen: number;
  /** Lead: run one plan on every rank. Steps run one at a time, in call order. */
  step(plan: StepPlan): Promise<StepResult>;
  /** Not lead: run the lead's plans until it stops (resolves) or the job fails (rejects). */
  follow(): Promise<void>;
  /** The failure that ended the job, if any. */
  readonly failure: Error | null;
  onFailure(cb: (e: Error) => void): void;
  /** Lead: stop every rank and release them. */
  close(): Promise<void>;
}

export interface PlaceOptions {
  cfg: ResolvedConfig;
  /** Full logical tensors by name. */
  params: Map<string, Float32Array>;
  /** The GEMM weights the ranks multiply with: float32 (default) or bf16 copies (RankModel.setBatchWeights). */
  weights?: 'fp32' | 'bf16';
  backend?: string;
  /** Worker threads (must divide tp); 0 or undefined: virtual ranks in this thread. */
  workers?: number;
  /** From processMode(): a launch this process is part of, or null. */
  launched: ProcessLaunch | null;
  /** KV cache: sequences held at once, and their longest length. */
  slots: number;
  maxLen: number;
  /** What every process must agree on (run folder, step, command flags). */
  config: unknown;
  /** Heartbeat period while idle (ms); default: a quarter of the collective timeout, at most 1 s. */
  heartbeatMs?: number;
}

abstract class HostBase implements RankHost {
  abstract readonly tp: number;
  abstract readonly placement: Placement;
  abstract readonly lead: boolean;
  failure: Error | null = null;
  private readonly listeners: ((e: Error) => void)[] = [];
  protected chain: Promise<unknown> = Promise.resolve();
  protected closed = false;

  constructor(
    readonly slots: number,
    readonly maxLen: number,
  ) {}

  onFailure(cb: (e: Error) => void): void {
    if (this.failure) queueMicrotask(() => cb(this.failure!));
    else this.listeners.push(cb);
  }

  protected fail(e: unknown): Error {
    const err = e instanceof Error ? e : new Error(String(e));
    if (!this.failure) {
      this.failure = err;
      for (const cb of this.listeners.splice(0)) cb(err);
    }
    return this.failure;
  }

  step(plan: StepPlan): Promise<StepResult> {
    if (!this.lead) return Promise.reject(new Error('step: only the lead process drives the ranks'));
    const run = async (): Promise<StepResult> => {
      if (this.failure) throw this.failure;
      if (this.closed) throw new Error('the ranks have been stopped');
      const t0 = performance.now();
      try {
        const r = await this.runStep(plan);
        return { ...r, ms: performance.now() - t0 };
      } catch (e) {
        throw this.fail(e);
      }
    };
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => {});
    return p;
  }

  protected abstract runStep(plan: StepPlan): Promise<Omit<StepResult, 'ms'>>;

  follow(): Promise<void> {
    return Promise.reject(new Error('follow: this process drives the ranks'));
  }

  abstract close(): Promise<void>;
}

const toF32 = (x: FloatArray | null): Float32Array => (x === null ? new Float32Array(0) : x instanceof Float32Array ? x.slice() : Float32Array.from(x));

/** Every rank in this thread. */
class VirtualHost extends HostBase {
  readonly placement = 'virtual' as const;
  readonly lead = true;
  readonly tp: number;
  private readonly ex: RankExecutor[];
  private readonly comms: Communicator[];

  constructor(o: PlaceOptions) {
    super(o.slots, o.maxLen);
    const vm = new VirtualModel(o.cfg, selectBackend(o.backend));
    for (const m of vm.ranks) {
      m.loadFull((s) => o.params.get(s.name)!);
      m.setBatchWeights(o.weights ?? 'fp32');
    }
    this.tp = o.cfg.parallel.tp;
    this.comms = vm.comms;
    this.ex = vm.ranks.map((m) => new RankExecutor(m, o.slots, o.maxLen));
  }

  protected async runStep(plan: StepPlan): Promise<Omit<StepResult, 'ms'>> {
    const outs = await runOnRanks(this.comms, (_, r) => this.ex[r]!.run(plan));
    const st = this.ex[0]!.takeCommStats();
    return { logits: toF32(outs[0]!), commMs: st.ms, commBytes: st.bytes };
  }

  async close(): Promise<void> {
    await this.chain;
    this.closed = true;
    for (const e of this.ex) e.release();
  }
}

/** What the workers of the threads placement receive (src/placement/worker.ts). */
export interface ThreadsInput {
  cfg: ResolvedConfig;
  backend: BackendName;
  params: Map<string, Float32Array>;
  weights: 'fp32' | 'bf16';
  slots: number;
  maxLen: number;
}

export interface WorkerReply {
  caatStep: number;
  logits: Float32Array;
  commMs: number;
  commBytes: number;
}

/** Ranks on worker threads; this thread drives them. */
class ThreadsHost extends HostBase {
  readonly placement = 'threads' as const;
  readonly lead = true;
  readonly tp: number;
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, { resolve: (r: WorkerReply) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private readonly done: Promise<unknown>;

  constructor(o: PlaceOptions, workers: number) {
    super(o.slots, o.maxLen);
    this.tp = o.cfg.parallel.tp;
    const be = selectBackend(o.backend, { quiet: true });
    const input: ThreadsInput = { cfg: o.cfg, backend: be.name, params: o.params, weights: o.weights ?? 'fp32', slots: o.slots, maxLen: o.maxLen };
    this.done = launchThreadGroup<null, ThreadsInput>({
      nRanks: this.tp,
      nWorkers: workers,
      workerModule: new URL('./worker.js', import.meta.url),
      workerData: input,
      onWorker: (w, i) => {
        this.workers[i] = w;
      },
      onMessage: (m) => {
        const r = m as WorkerReply;
        const p = this.pending.get(r.caatStep);
        if (!p) return;
        this.pending.delete(r.caatStep);
        p.resolve(r);
      },
    }).then(
      () => {
        // Every rank returned: only after stop.
        if (!this.closed) this.failAll(new Error('the worker threads stopped'));
      },
      (e: unknown) => this.failAll(e),
    );
  }

  private failAll(e: unknown): void {
    const err = this.fail(e);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  private post(plan: StepPlan, id: number): void {
    const buf = encodePlan(plan);
    for (const w of this.workers) w.postMessage({ caatPlan: buf, id });
  }

  protected async runStep(plan: StepPlan): Promise<Omit<StepResult, 'ms'>> {
    const id = this.nextId++;
    const reply = new Promise<WorkerReply>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    this.post(plan, id);
    const r = await reply;
    return { logits: r.logits, commMs: r.commMs, commBytes: r.commBytes };
  }

  async close(): Promise<void> {
    await this.chain;
    if (this.closed) return;
    this.closed = true;
    if (!this.failure) this.post(controlPlan('stop'), 0);
    await this.done;
  }
}

/** One or more ranks per process; rank 0's process drives, the plan is broadcast over the job's transport. */
class ProcessHost extends HostBase {
  readonly placement: Placement;
  readonly lead: boolean;
  readonly tp: number;
  private readonly ex: RankExecutor[];
  private readonly comms: Communicator[];
  private heartbeat: NodeJS.Timeout | null = null;
  private lastStep = performance.now();

  constructor(o: PlaceOptions, launched: ProcessLaunch) {
    super(o.slots, o.maxLen);
    const be = selectBackend(o.backend, { quiet: launched.launch.rank !== 0 });
    const pm = processModel(o.cfg, be, launched, o.config);
    for (const m of pm.ranks) {
      m.loadFull((s) => o.params.get(s.name)!);
      m.setBatchWeights(o.weights ?? 'fp32');
    }
    this.tp = o.cfg.parallel.tp;
    this.placement = launched.mpi ? 'mpi' : 'tcp';
    this.comms = pm.comms;
    this.lead = this.comms[0]!.rank === 0;
    this.ex = pm.ranks.map((m) => new RankExecutor(m, o.slots, o.maxLen));
    if (this.lead) {
      const every = o.heartbeatMs ?? Math.min(1000, launched.timeoutMs / 4);
      this.heartbeat = setInterval(() => {
        if (performance.now() - this.lastStep < every || this.failure || this.closed) return;
        this.step(controlPlan('heartbeat')).catch(() => {});
      }, every);
      this.heartbeat.unref();
    }
  }

  /** Every local rank: receive the plan from rank 0 (its size, then its body). */
  private async exchange(comm: Communicator, plan: StepPlan | null): Promise<StepPlan> {
    const head = new Float32Array(1);
    const body0 = plan ? encodePlan(plan) : null;
    if (comm.rank === 0) head[0] = body0!.length;
    await comm.broadcast(head, 0, 'plan.size');
    const body = comm.rank === 0 ? body0! : new Float32Array(head[0]!);
    await comm.broadcast(body, 0, 'plan.body');
    return comm.rank === 0 ? plan! : decodePlan(body);
  }

  protected async runStep(plan: StepPlan): Promise<Omit<StepResult, 'ms'>> {
    this.lastStep = performance.now();
    const outs = await runOnRanks(this.comms, async (c, i) => {
      const p = await this.exchange(c, c.rank === 0 ? plan : null);
      return this.ex[i]!.run(p);
    });
    this.lastStep = performance.now();
    const st = this.ex[0]!.takeCommStats();
    return { logits: toF32(outs[0]!), commMs: st.ms, commBytes: st.bytes };
  }

  override async follow(): Promise<void> {
    if (this.lead) throw new Error('follow: this process drives the ranks');
    try {
      await runOnRanks(this.comms, async (c, i) => {
        for (;;) {
          const p = await this.exchange(c, null);
          if (p.kind === 'stop') return;
          await this.ex[i]!.run(p);
        }
      });
    } catch (e) {
      throw this.fail(e);
    }
  }

  async close(): Promise<void> {
    if (this.heartbeat) clearInterval(this.heartbeat);
    if (this.lead && !this.closed && !this.failure) await this.step(controlPlan('stop')).catch(() => {});
    await this.chain;
    this.closed = true;
    await Promise.all(this.comms.map((c) => (c as unknown as { close?: () => Promise<void> }).close?.()));
  }
}

/** Place the N = cfg.parallel.tp ranks of a model: processes under a launcher, else threads or virtual. */
export function placeRanks(o: PlaceOptions): RankHost {
  if (!(Number.isInteger(o.slots) && o.slots >= 1)) throw new UserError(`the KV cache needs at least 1 slot, got ${o.slots}`);
  if (o.launched) {
    if (o.workers !== undefined && o.workers > 0) throw new UserError('--workers places ranks on threads of one process; under a launcher every process hosts its own ranks (omit --workers, or use --transport threads)');
    return new ProcessHost(o, o.launched);
  }
  const M = o.workers ?? 0;
  const tp = o.cfg.parallel.tp;
  if (!Number.isInteger(M) || M < 0) throw new UserError(`--workers must be a non-negative integer, got ${o.workers}`);
  if (M === 0) return new VirtualHost(o);
  if (tp % M !== 0) throw new UserError(`--workers ${M} must divide the TP degree ${tp} (each worker hosts tp/workers ranks)`);
  return new ThreadsHost(o, M);
}
