/**
 * Process mode: this process is one rank of a TP group whose ranks are separate processes (started by
 * `caat launch`, torchrun-style variables, mpirun or srun; see src/launch/env.ts), connected by the TCP
 * transport.
 *
 * - W processes host the N = tp logical ranks, W dividing N: process w hosts ranks w·N/W … (w+1)·N/W − 1
 *   (the threads placement). Each logical rank is a full member of the N-rank TCP mesh (ranks in one
 *   process reach each other over loopback), so the algorithms and the bits are those of N processes.
 *   The MPI transport hosts one rank per process.
 * - Every rank presents a digest of its configuration at the rendezvous (model, parallel, training
 *   and data settings, the command, and the compute backend: replicated parameters stay bitwise equal
 *   across ranks only if every rank computes with the same kernels); a rank that differs is refused
 *   with the difference.
 * - Training: every rank prepares the data itself (deterministic; token cache and tokenizer files are
 *   written atomically, so concurrent processes are safe) and checks that its tokens equal rank 0's.
 *   Only rank 0 writes the run folder (run.json, tokenizer.json, metrics.jsonl, checkpoints) and prints
 *   progress; the other ranks print nothing but errors. Checkpoints are assembled by all-gathering
 *   every sharded tensor (parameters and AdamW moments) to the ranks; replicated tensors are equal on
 *   every rank and taken from rank 0. The checkpoint format is the one every other placement writes,
 *   so a run can be resumed in any placement of the same TP degree.
 * - Waiting: collectives time out after --comm-timeout seconds (naming the rank that does not answer);
 *   the waits around data preparation and checkpoint writing, which only one rank may be busy with,
 *   allow max(10 × the timeout, 10 minutes). A rank that dies is noticed at once (its connections
 *   close).
 * - generate / eval / gradcheck: the same rendezvous; `ProcessModel` stands in for VirtualModel with
 *   only this process's rank; ranks other than 0 discard their standard output and print only errors.
 */
import { createHash } from 'node:crypto';
import { selectBackend } from '../backend/index.js';
import { describePrecision, resolvePrecision } from '../model/precision.js';
import type { Backend, FloatArray } from '../backend/types.js';
import { UserError } from '../cli/run.js';
import type { FullTensors } from '../io/checkpoint.js';
import { detectLaunch, type LaunchInfo } from '../launch/env.js';
import type { ResolvedConfig } from '../model/config.js';
import type { VirtualModel } from '../model/harness.js';
import { RankModel } from '../model/model.js';
import { paramSpecs, placeShard } from '../model/params.js';
import { runOnRanks, type CommStats, type Communicator, type ReduceOp } from '../tp/comm.js';
import { joinMpiGroup } from '../transport/mpi.js';
import { shareGemmChoices } from '../backend/native.js';
import { configDifference, rendezvous } from '../transport/rendezvous.js';
import type { TcpCommunicator } from '../transport/tcp.js';
import { chooseTransport } from '../transport/transport-select.js';
import { createRankStates, runHost, type HostEvent, type ShardEvent } from './loop.js';
import { describeRun, openRun, prepareEvalTasks, prepareRun, RunWriter, writeRunFiles, type RunSpec, type TrainResult } from './run.js';
import { makeBatchSource, makeValBatches } from './trainer.js';

/** This process's place in a multi-process job, and how long to wait for the others. */
export interface ProcessLaunch {
  launch: LaunchInfo;
  /** Collective and rendezvous timeout in milliseconds. */
  timeoutMs: number;
  /** Collectives through MPI (src/transport/mpi.ts) instead of TCP: an MPI launcher and the MPI addon. */
  mpi?: boolean;
}

export const DEFAULT_COMM_TIMEOUT_S = 30;

/**
 * How this process takes part, from the launcher variables and --transport:
 * - a ProcessLaunch: host this process's ranks over TCP (a launcher with world size > 1 and no
 *   --transport, or --transport tcp) or MPI;
 * - 'idle': a launcher started several processes but --transport threads|virtual asks for every rank
 *   inside one process: rank 0 runs the whole job, the others have nothing to do (train only);
 * - null: the ordinary single-process placement.
 */
export function processMode(transport: string | undefined, commTimeout: string | undefined, env: Record<string, string | undefined> = process.env): ProcessLaunch | 'idle' | null {
  if (transport !== undefined && !['tcp', 'mpi', 'threads', 'virtual'].includes(transport)) {
    throw new UserError(`--transport must be tcp, mpi, threads or virtual, got ${JSON.stringify(transport)}`);
  }
  let timeoutS = DEFAULT_COMM_TIMEOUT_S;
  if (commTimeout !== undefined) {
    timeoutS = Number(commTimeout);
    if (commTimeout.trim() === '' || !Number.isFinite(timeoutS) || timeoutS <= 0) throw new UserError(`--comm-timeout: expected a positive number of seconds, got ${JSON.stringify(commTimeout)}`);
  }
  let launch: LaunchInfo | null;
  try {
    launch = detectLaunch(env);
  } catch (e) {
    throw new UserError(`launcher environment: ${(e as Error).message}`);
  }
  if (transport === 'tcp') {
    if (!launch) {
      throw new UserError(
        '--transport tcp needs a launcher: start the ranks with "caat launch --nproc N -- <command>", torchrun-style variables ' +
          '(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), mpirun or srun',
      );
    }
    return { launch, timeoutMs: timeoutS * 1000 };
  }
  // MPI: asked for, or chosen automatically under an MPI launcher when the addon loads.
  if (transport === 'mpi' || (transport === undefined && launch && launch.worldSize > 1)) {
    let choice;
    try {
      choice = chooseTransport(env, transport === 'mpi' ? { requested: 'mpi' } : {});
    } catch (e) {
      throw new UserError(`${transport === 'mpi' ? '--transport mpi' : 'transport choice'}: ${(e as Error).message}`);
    }
    if (choice.notice && launch?.rank === 0) process.stderr.write(`${choice.notice}\n`);
    if (choice.transport === 'mpi') {
      if (!launch) throw new UserError('--transport mpi: process mode supports Open MPI\'s mpirun and srun; this launcher sets neither OMPI_COMM_WORLD_* nor SLURM_* variables');
      return { launch, timeoutMs: timeoutS * 1000, mpi: true };
    }
  }
  if (!launch || launch.worldSize === 1) return null;
  if (transport === undefined) return { launch, timeoutMs: timeoutS * 1000 };
  return launch.rank === 0 ? null : 'idle';
}

/**
 * Ranks per process: W processes host N = tp logical ranks, W dividing N; process w hosts ranks
 * w·N/W … (w+1)·N/W − 1 (the threads placement). Returns the global ranks of this process.
 */
function checkWorld(p: ProcessLaunch, tp: number): number[] {
  const W = p.launch.worldSize;
  if (tp % W !== 0) {
    throw new UserError(
      `the ${p.launch.launcher} launch has ${W} process${W === 1 ? '' : 'es'} but the TP degree is ${tp}: the number of processes must divide it ` +
        `(each process hosts tp/processes ranks), e.g. caat launch --nproc ${tp} -- ...; or run every rank in one process with --transport threads or virtual`,
    );
  }
  const L = tp / W;
  if (L > 1 && p.mpi) {
    throw new UserError(`the MPI transport hosts one rank per process, but ${W} processes for TP ${tp} means ${L} ranks each: start ${tp} processes, or use --transport tcp`);
  }
  return Array.from({ length: L }, (_, i) => p.launch.rank * L + i);
}

/** Join the TCP group of this launch, presenting `config`. */
export async function joinGroup(p: ProcessLaunch, config: unknown, log?: (m: string) => void): Promise<TcpCommunicator> {
  // MpiCommunicator has the members used here (Communicator, withTimeout, close, closeOnExit).
  if (p.mpi) return (await joinMpiGroup(config, { difference: configDifference })) as unknown as TcpCommunicator;
  const l = p.launch;
  return rendezvous({
    rank: l.rank,
    size: l.worldSize,
    masterAddr: l.masterAddr,
    masterPort: l.masterPort,
    token: l.token,
    tokenLabel: l.tokenLabel,
    config,
    timeoutMs: p.timeoutMs,
    ...(log ? { log } : {}),
  });
}

/**
 * Join the group with every rank this process hosts. One rank per process: joinGroup. Several:
 * every logical rank is a full member of the N-rank TCP mesh (the ranks of one process reach each
 * other over loopback), so the algorithms, and the bits, are those of N processes.
 */
export async function joinRanks(p: ProcessLaunch, ranks: number[], tp: number, config: unknown, log?: (m: string) => void): Promise<TcpCommunicator[]> {
  const comms = await joinRanksOnly(p, ranks, tp, config, log);
  // Every rank uses rank 0's GEMM choices, so the bits do not depend on each host's cache.
  await shareGemmChoices(comms, log ?? ((m) => process.stderr.write(`${m}\n`)));
  return comms;
}

async function joinRanksOnly(p: ProcessLaunch, ranks: number[], tp: number, config: unknown, log?: (m: string) => void): Promise<TcpCommunicator[]> {
  if (ranks.length === 1) return [await joinGroup(p, config, log)];
  const l = p.launch;
  const res = await Promise.allSettled(
    ranks.map((rank) =>
      rendezvous({
        rank,
        size: tp,
        masterAddr: l.masterAddr,
        masterPort: l.masterPort,
        token: l.token,
        tokenLabel: l.tokenLabel,
        config,
        timeoutMs: p.timeoutMs,
        ...(log && rank === 0 ? { log } : { log: () => {} }),
      }),
    ),
  );
  const ok = res.filter((r): r is PromiseFulfilledResult<TcpCommunicator> => r.status === 'fulfilled').map((r) => r.value);
  const bad = res.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (bad) {
    for (const c of ok) c.abort(bad.reason);
    await Promise.all(ok.map((c) => c.close()));
    throw bad.reason;
  }
  return ok;
}

/** The long wait used where one rank alone may be busy (data preparation, checkpoint writing). */
function longWaitMs(p: ProcessLaunch): number {
  return Math.max(10 * p.timeoutMs, 600_000);
}

/** After a failure, make sure the process ends even if some handle lingers. */
function exitSoon(): void {
  setTimeout(() => process.exit(process.exitCode && process.exitCode !== 0 ? process.exitCode : 1), 5000).unref();
}

/**
 * Ranks other than 0 print only errors: their standard output is discarded (it would repeat rank 0's)
 * and only "caat: error…" lines reach standard error.
 */
export function quietUnlessRankZero(p: ProcessLaunch): void {
  if (p.launch.rank === 0) return;
  const err = process.stderr.write.bind(process.stderr) as (chunk: unknown, ...rest: unknown[]) => boolean;
  const drop = (...args: unknown[]): boolean => {
    const cb = args.find((a) => typeof a === 'function') as (() => void) | undefined;
    if (cb) process.nextTick(cb);
    return true;
  };
  process.stdout.write = drop as typeof process.stdout.write;
  process.stderr.write = ((chunk: unknown, ...rest: unknown[]): boolean => {
    const s = typeof chunk === 'string' ? chunk : Buffer.from(chunk as Uint8Array).toString('utf8');
    if (s.startsWith('caat: error')) return err(chunk, ...rest);
    return drop(...rest);
  }) as typeof process.stderr.write;
}

function tokenDigest(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const h = createHash('sha256');
  for (const t of [a, b]) {
    const v = t as unknown as ArrayBufferView;
    h.update(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
    h.update(String(t.length));
  }
  // 48 bits: exactly representable in a float64.
  return h.digest().readUIntBE(0, 6);
}

/** Every rank's value of one number, gathered to all ranks (float64). */
async function gatherNumber(comm: Communicator, x: number, tag: string): Promise<Float64Array> {
  const out = new Float64Array(comm.size);
  await comm.allGather(out, Float64Array.of(x), tag);
  return out;
}

/**
 * Assemble full logical tensors from every rank's shards: sharded tensors are all-gathered, replicated
 * ones are taken from this rank. Collective: every rank must call it with its own shard event.
 */
async function assembleShards(comm: Communicator, cfg: ResolvedConfig, e: ShardEvent): Promise<FullTensors> {
  const N = comm.size;
  const full: FullTensors = { params: new Map(), m: new Map(), v: new Map() };
  for (const spec of paramSpecs(cfg)) {
    const n = spec.shape.reduce((a, b) => a * b, 1);
    for (const kind of ['params', 'm', 'v'] as const) {
      const shard = e[kind][spec.name]!;
      if (spec.shard === null) {
        full[kind].set(spec.name, Float32Array.from(shard));
        continue;
      }
      const gathered = new Float32Array(N * shard.length);
      await comm.allGather(gathered, shard, `ckpt.${kind}`);
      const out = new Float32Array(n);
      for (let r = 0; r < N; r++) placeShard(spec, gathered.subarray(r * shard.length, (r + 1) * shard.length), N, r, out);
      full[kind].set(spec.name, out);
    }
  }
  return full;
}

/** `caat train` as one rank of a multi-process job (called by train() in trainer.ts). */
export async function trainProcess(spec: RunSpec, opts: { runDir?: string; resume?: string }, p: ProcessLaunch): Promise<TrainResult> {
  const t0 = performance.now();
  const lead = p.launch.rank === 0;
  const log = (msg: string): void => {
    if (lead) process.stderr.write(`${msg}\n`);
  };
  const tp = Number(spec.parallel['tp'] ?? 1);
  const myRanks = checkWorld(p, tp);
  const be = selectBackend(spec.backend, { quiet: !lead });
  const precision = resolvePrecision(spec.train.precision, be);
  log(describePrecision(precision, be, spec.train.precision));
  spec = { ...spec, train: { ...spec.train, precision } };
  const config = {
    command: 'train',
    model: spec.model,
    parallel: spec.parallel,
    train: spec.train,
    data: spec.data,
    backend: be.name,
    out: opts.runDir ?? null,
    resume: opts.resume ?? null,
    evalTasks: spec.evalTasks ?? null,
  };
  log(`${p.launch.launcher}: rank 0 of ${p.launch.worldSize} processes, ${p.mpi ? 'collectives over MPI' : `rendezvous on ${p.launch.masterAddr}:${p.launch.masterPort}`}`);
  let comms: TcpCommunicator[];
  try {
    comms = await joinRanks(p, myRanks, tp, config, lead ? undefined : () => {});
  } catch (e) {
    exitSoon();
    throw e;
  }
  let writer: RunWriter | undefined;
  try {
    const { runDir, start, tokenizer } = openRun(opts, lead, log);
    const { data, cfg } = prepareRun(spec, tokenizer, log);
    // Every rank must train on the same tokens; preparing them may take one rank much longer.
    const digest = tokenDigest(data.train.tokens, data.val.tokens);
    const digests = (await runOnRanks(comms, (c) => (c as TcpCommunicator).withTimeout(longWaitMs(p), () => gatherNumber(c, digest, 'data.digest'))))[0]!;
    if (digests[comms[0]!.rank] !== digests[0]) {
      throw new Error(`the tokenised data on rank ${comms[0]!.rank} differs from rank 0's (different corpus files, tokenizer or cache on this host?)`);
    }
    if (lead && !opts.resume) writeRunFiles(runDir, spec, cfg, data.tokenizer);
    const tasks = prepareEvalTasks(spec, data, cfg, log);
    log(describeRun(cfg, data, ` on ${p.launch.worldSize} processes over ${p.mpi ? 'MPI' : 'TCP'}`));
    if (lead) writer = new RunWriter(runDir, cfg, spec, start.step);
    const shardEvents: ShardEvent[] = [];
    const onEvent = async (e: HostEvent): Promise<void> => {
      if (e.type !== 'shards') return writer?.onEvent(e);
      // Every local rank reports its shards in turn; assemble once all of them have (collectively).
      shardEvents.push(e);
      if (shardEvents.length < comms.length) return;
      const events = shardEvents.splice(0);
      const full = (await runOnRanks(comms, (c) => assembleShards(c, cfg, events.find((x) => x.rank === c.rank)!)))[0]!;
      writer?.checkpoint(full, e);
      // The other ranks wait here while rank 0 writes (it may take longer than a collective).
      await runOnRanks(comms, (c) => (c as TcpCommunicator).withTimeout(longWaitMs(p), () => c.barrier('ckpt.written')));
    };
    const ranks = createRankStates(cfg, spec.train, be, comms, start);
    await runHost({ ranks, train: spec.train, data: makeBatchSource(data.train.tokens, spec.train), val: makeValBatches(data.val.tokens, spec.train), start, emit: onEvent, ...(tasks ? { tasks } : {}) });
    writer?.close();
    const seconds = (performance.now() - t0) / 1000;
    if (writer) log(writer.summary(seconds));
    return { runDir, finalLoss: writer?.finalLoss ?? NaN, finalValLoss: writer?.finalValLoss, steps: spec.train.steps, seconds };
  } catch (e) {
    for (const c of comms) c.abort(e);
    exitSoon();
    throw e;
  } finally {
    writer?.close();
    await Promise.all(comms.map((c) => c.close()));
  }
}

// ---------------------------------------------------------------------------------------------------
// generate / eval / gradcheck
// ---------------------------------------------------------------------------------------------------

/**
 * A Communicator whose rank and size are known at once while the connections are still being made:
 * calls wait for the rendezvous (in order), so a model can be built synchronously.
 */
class PendingComm implements Communicator {
  readonly transport = 'tcp';
  private comm: TcpCommunicator | null = null;
  private error: unknown = null;
  private readonly ready: Promise<TcpCommunicator>;

  constructor(
    readonly rank: number,
    readonly size: number,
    connect: () => Promise<TcpCommunicator>,
  ) {
    this.ready = connect().then(
      (c) => {
        this.comm = c;
        c.closeOnExit();
        return c;
      },
      (e: unknown) => {
        this.error = e;
        exitSoon();
        throw e;
      },
    );
    this.ready.catch(() => {});
  }

  private via(fn: (c: TcpCommunicator) => Promise<void>): Promise<void> {
    return this.comm ? fn(this.comm) : this.ready.then(fn);
  }

  allReduce(buf: FloatArray, op: ReduceOp, tag: string, offset?: number, length?: number): Promise<void> {
    return this.via((c) => c.allReduce(buf, op, tag, offset, length));
  }
  reduceScatter(out: FloatArray, inp: FloatArray, tag: string, n?: number): Promise<void> {
    return this.via((c) => c.reduceScatter(out, inp, tag, n));
  }
  allGather(out: FloatArray, inp: FloatArray, tag: string, n?: number): Promise<void> {
    return this.via((c) => c.allGather(out, inp, tag, n));
  }
  allReduceBf16(buf: Uint16Array, tag: string, offset?: number, length?: number): Promise<void> {
    return this.via((c) => c.allReduceBf16(buf, tag, offset, length));
  }
  broadcast(buf: FloatArray, root: number, tag: string, offset?: number, length?: number): Promise<void> {
    return this.via((c) => c.broadcast(buf, root, tag, offset, length));
  }
  barrier(tag?: string): Promise<void> {
    return this.via((c) => c.barrier(tag));
  }
  stats(): CommStats {
    return this.comm ? this.comm.stats() : { bytes: new Map(), calls: new Map(), waitMs: 0 };
  }
  resetStats(): void {
    this.comm?.resetStats();
  }
  abort(error: unknown): void {
    if (this.comm) this.comm.abort(error);
    else if (!this.error) void this.ready.then((c) => c.abort(error), () => {});
    exitSoon();
  }
}

/**
 * VirtualModel's interface with only this process's rank: `all(fn)` runs fn on it (index 0) and
 * returns [its value]; the other ranks run the same call in their processes.
 */
export class ProcessModel {
  readonly ranks: RankModel[];

  constructor(
    readonly cfg: ResolvedConfig,
    readonly be: Backend,
    readonly comms: Communicator[],
  ) {
    this.ranks = comms.map((c) => new RankModel(cfg, be, c));
  }

  async all<T>(fn: (m: RankModel, r: number) => Promise<T>): Promise<T[]> {
    return runOnRanks(this.comms, (_, i) => fn(this.ranks[i]!, i));
  }

  async lossAndGrads(inputs: Int32Array, targets: Int32Array, B: number, T: number): Promise<number> {
    const [loss] = await this.all(async (m) => {
      m.zeroGrad();
      const l = await m.forward(inputs, targets, B, T);
      await m.backward(inputs, targets, 1 / (B * T));
      await m.finalizeGrads();
      return l;
    });
    return loss!;
  }

  full(): FloatArray {
    throw new Error('ProcessModel.full: full tensors need a collective; use gatherFull');
  }

  /** Collective: the full logical tensor of a parameter set (every local rank gathers; the first's copy). */
  async gatherFull(kind: 'params' | 'grads', name: string): Promise<Float32Array> {
    const spec = this.ranks[0]!.specs.find((s) => s.name === name);
    if (!spec) throw new Error(`no parameter named ${name}`);
    const n = spec.shape.reduce((a, b) => a * b, 1);
    const outs = await this.all(async (m) => {
      const local = Float32Array.from((kind === 'params' ? m.params : m.grads).get(name));
      if (spec.shard === null) return local;
      const N = m.N;
      const gathered = new Float32Array(N * local.length);
      await m.comm.allGather(gathered, local, `gather.${kind}`);
      const out = new Float32Array(n);
      for (let r = 0; r < N; r++) placeShard(spec, gathered.subarray(r * local.length, (r + 1) * local.length), N, r, out);
      return out;
    });
    return outs[0]!;
  }
}

/**
 * The model of `caat generate` / `caat eval` under a launcher: this process's rank of the checkpoint,
 * joined to the others lazily (the first collective waits for the rendezvous). `config` is what every
 * rank must agree on (run folder, checkpoint step, command flags).
 */
export function processModel(cfg: ResolvedConfig, be: Backend, p: ProcessLaunch, config: unknown): VirtualModel {
  const myRanks = checkWorld(p, cfg.parallel.tp);
  const tp = cfg.parallel.tp;
  const cfgSeen = { ...(config as object), backend: be.name };
  // The ranks join together (one rendezvous per local rank, started at once).
  const joined = joinRanks(p, myRanks, tp, cfgSeen, p.launch.rank === 0 ? undefined : () => {});
  joined.catch(() => {});
  const comms = myRanks.map((rank, i) => new PendingComm(rank, tp, () => joined.then((cs) => cs[i]!)));
  return new ProcessModel(cfg, be, comms) as unknown as VirtualModel;
}

/**
 * `caat gradcheck` under a launcher: this rank's forward and backward; the full gradients are
 * all-gathered and their norms computed exactly as the single-process command does.
 */
export async function gradcheckProcess(
  cfg: ResolvedConfig,
  be: Backend,
  params: Map<string, Float32Array>,
  inputs: Int32Array,
  targets: Int32Array,
  B: number,
  T: number,
  p: ProcessLaunch,
  config: unknown,
): Promise<{ loss: number; norms: Record<string, number> }> {
  const myRanks = checkWorld(p, cfg.parallel.tp);
  const comms = await joinRanks(p, myRanks, cfg.parallel.tp, { command: 'gradcheck', ...(config as object), backend: be.name }, p.launch.rank === 0 ? undefined : () => {});
  try {
    const pm = new ProcessModel(cfg, be, comms);
    for (const m of pm.ranks) m.loadFull((s) => params.get(s.name)!);
    const loss = await pm.lossAndGrads(inputs, targets, B, T);
    const norms: Record<string, number> = {};
    for (const spec of pm.ranks[0]!.specs) {
      const g = await pm.gatherFull('grads', spec.name);
      let s = 0;
      for (let i = 0; i < g.length; i++) s += g[i]! * g[i]!;
      norms[spec.name] = Math.sqrt(s);
    }
    return { loss, norms };
  } catch (e) {
    for (const c of comms) c.abort(e);
    exitSoon();
    throw e;
  } finally {
    await Promise.all(comms.map((c) => c.close()));
  }
}
