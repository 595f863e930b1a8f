/**
 * A run folder seen from the coordinator, shared by every placement (virtual ranks or worker threads
 * in one process, or one rank per process): opening or resuming it, preparing its data and config,
 * and the writer that turns host events into progress output, metrics.jsonl lines and checkpoints.
 * In multi-process jobs only rank 0 writes (`lead`); the others use the same code silently.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { splitCorpus, type Corpus } from '../data/corpus.js';
import { prepareData, type PreparedDataset } from '../data/dataset.js';
import { buildTaskSet, type TaskSet } from '../eval/run.js';
import type { Tokenizer } from '../data/tokenizer.js';
import { loadTokenizer, saveTokenizer } from '../data/tokenizers.js';
import { writeFileAtomic } from '../io/atomic.js';
import { loadCheckpoint, pruneCheckpoints, writeCheckpoint, type FullTensors } from '../io/checkpoint.js';
import { countParams, resolveConfig, type ModelConfigInput, type ResolvedConfig } from '../model/config.js';
import type { TrainConfig } from './config.js';
import type { HostEvent, StartState } from './loop.js';
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
  /** Zero-shot tasks scored at every validation step (`--eval-tasks`, as `caat eval --tasks`). */
  evalTasks?: string[];
}

export interface TrainResult {
  runDir: string;
  finalLoss: number;
  finalValLoss?: number;
  steps: number;
  seconds: number;
}

export interface OpenedRun {
  runDir: string;
  start: StartState;
  /** The run's tokenizer when resuming (a new run gets one from the data preparation). */
  tokenizer?: Tokenizer;
}

/** Open a new run folder (only `lead` creates it) or load the latest checkpoint of one to resume. */
export function openRun(opts: { runDir?: string; resume?: string }, lead: boolean, log: (m: string) => void): OpenedRun {
  if (opts.resume) {
    const runDir = opts.resume;
    const ck = loadCheckpoint(runDir);
    log(`resuming ${runDir} from ${path.basename(ck.dir)} (step ${ck.state.step})`);
    return {
      runDir,
      start: { step: ck.state.step, tokensSeen: ck.state.tokensSeen, loader: ck.state.loader, params: ck.params, m: ck.m, v: ck.v },
      tokenizer: loadTokenizer(path.join(runDir, 'tokenizer.json')),
    };
  }
  const runDir = opts.runDir ?? path.join('runs', new Date().toISOString().replace(/[:.]/g, '-').replace('Z', ''));
  if (lead) {
    if (fs.existsSync(path.join(runDir, 'latest'))) {
      throw new Error(`${runDir} already holds a run; use --resume ${runDir} to continue it, or choose another --out`);
    }
    fs.mkdirSync(runDir, { recursive: true });
  }
  return { runDir, start: { step: 0, tokensSeen: 0 } };
}

/** Tokenised data and the resolved model config of a run (the vocab comes from the tokenizer). */
export function prepareRun(spec: RunSpec, tokenizer: Tokenizer | undefined, log: (m: string) => void): { data: PreparedDataset & { corpus: Corpus }; cfg: ResolvedConfig } {
  const data = prepareData({
    corpus: spec.data.corpus,
    tokenizer: tokenizer ?? spec.data.tokenizer,
    vocabSize: spec.data.vocabSize,
    valFraction: spec.data.valFraction,
    cacheDir: spec.data.cacheDir,
    log,
  });
  const cfg = resolveConfig({ ...spec.model, vocab: data.tokenizer.vocabSize }, spec.parallel, 'model config');
  if (spec.train.seqLen > cfg.model.seqLen) throw new Error(`train seqLen ${spec.train.seqLen} exceeds the model's seqLen ${cfg.model.seqLen}`);
  for (const n of cfg.notes) log(`note: ${n}`);
  return { data, cfg };
}

/** The --eval-tasks of a run, tokenised (proxy tasks come from the run's held-out documents). */
export function prepareEvalTasks(spec: RunSpec, data: PreparedDataset & { corpus: Corpus }, cfg: ResolvedConfig, log: (m: string) => void): TaskSet | undefined {
  if (!spec.evalTasks || spec.evalTasks.length === 0) return undefined;
  const split = spec.data.valFraction !== undefined ? { valFraction: spec.data.valFraction } : {};
  const set = buildTaskSet(spec.evalTasks, { tokenizer: data.tokenizer, L: cfg.model.seqLen, heldOut: () => splitCorpus(data.corpus.documents, split).val });
  log(`eval tasks: ${set.tasks.map((t) => `${t.name} (${t.docs.length})`).join(', ')}: ${set.requests.length} requests at every validation step`);
  return set;
}

/** Write the files a new run starts with: its tokenizer and its resolved configuration. */
export function writeRunFiles(runDir: string, spec: RunSpec, cfg: ResolvedConfig, tokenizer: Tokenizer): void {
  saveTokenizer(path.join(runDir, 'tokenizer.json'), tokenizer);
  writeFileAtomic(path.join(runDir, 'run.json'), `${JSON.stringify({ ...spec, model: cfg.model, parallel: cfg.parallel, shared: cfg.shared }, null, 2)}\n`);
}

/** The one-line model summary every placement logs; `placement` says where the ranks run. */
export function describeRun(cfg: ResolvedConfig, data: PreparedDataset, placement: string): string {
  return (
    `model: ${(countParams(cfg) / 1e6).toFixed(2)}M parameters (h ${cfg.model.hidden}, L ${cfg.model.layers}, heads ${cfg.model.heads}/${cfg.model.kvHeads}, F ${cfg.model.ffn}, V ${cfg.vocab}); ` +
    `TP ${cfg.parallel.tp}${placement}, p ${cfg.parallel.p} (shared ${cfg.shared}/${cfg.model.hidden}), private scale ${cfg.parallel.privateScale}; ` +
    `train ${data.train.tokens.length} tokens, val ${data.val.tokens.length} tokens`
  );
}

/**
 * Progress, metrics.jsonl and checkpoints of one run. A step's metrics line is written once its
 * validation result (if any) is known, i.e. when the next step or a checkpoint arrives, or at close.
 */
export class RunWriter {
  finalLoss = NaN;
  finalValLoss: number | undefined;
  private readonly metrics: number;
  private readonly progress: Progress;
  private pending: Record<string, unknown> | undefined;
  private closed = false;

  constructor(
    readonly runDir: string,
    private readonly cfg: ResolvedConfig,
    private readonly spec: RunSpec,
    startStep: number,
  ) {
    pruneCheckpoints(runDir, 0); // temporary folders of an interrupted earlier writer
    this.metrics = fs.openSync(path.join(runDir, 'metrics.jsonl'), 'a');
    this.progress = new Progress(spec.train.steps, startStep);
  }

  /** Step and eval events (shard events go through the placement's assembly, then `checkpoint`). */
  onEvent(e: Exclude<HostEvent, { type: 'shards' }>): void {
    if (e.type === 'step') {
      this.flush();
      this.finalLoss = e.loss;
      this.pending = stepRecord(e, this.cfg);
      this.progress.update(e.step, e.loss, e.tokens / (e.ms / 1000));
    } else {
      const here = this.pending && this.pending['step'] === e.step ? this.pending : undefined;
      if (e.valLoss !== undefined) {
        this.finalValLoss = e.valLoss;
        if (here) {
          here['val_loss'] = e.valLoss;
          here['val_ppl'] = Math.exp(e.valLoss);
        }
        this.progress.note(`step ${e.step}: validation loss ${e.valLoss.toFixed(4)} (perplexity ${Math.exp(e.valLoss).toFixed(2)})`);
      }
      if (e.tasks) {
        if (here) here['tasks'] = e.tasks;
        this.progress.note(`step ${e.step}: ${e.tasks.map((r) => `${r.task} ${r.metric} ${r.value.toFixed(4)}`).join(', ')}`);
      }
    }
  }

  /** Write a complete checkpoint atomically, make it the latest, and prune old ones. */
  checkpoint(full: FullTensors, ev: { step: number; tokensSeen: number; loader: unknown }): void {
    this.flush();
    const dir = writeCheckpoint(this.runDir, this.cfg, full, { step: ev.step, tokensSeen: ev.tokensSeen, loader: ev.loader, train: this.spec.train as unknown as Record<string, unknown> });
    pruneCheckpoints(this.runDir, this.spec.train.keepCheckpoints);
    this.progress.note(`checkpoint ${dir}`);
  }

  private flush(): void {
    if (this.pending) fs.writeSync(this.metrics, `${JSON.stringify(this.pending)}\n`);
    this.pending = undefined;
  }

  /** Flush and close (safe to call more than once). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.flush();
    fs.closeSync(this.metrics);
    this.progress.stop();
  }

  /** The closing summary line. */
  summary(seconds: number): string {
    const val = this.finalValLoss !== undefined ? `, validation loss ${this.finalValLoss.toFixed(4)}` : '';
    return `done: ${this.spec.train.steps} steps in ${seconds.toFixed(1)} s; final train loss ${this.finalLoss.toFixed(4)}${val}; run folder ${this.runDir}`;
  }
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
