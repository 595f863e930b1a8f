/**
 * `caat eval`: without --tasks, validation loss, perplexity and bits per byte on the held-out split;
 * with --tasks (or task files), zero-shot tasks scored by lm-evaluation-harness's rules (src/eval/).
 * Placement: every rank as a virtual rank in this thread, on --workers M worker threads, or one rank
 * per process under a launcher (every process runs the same scorer; rank 0 prints).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bitsPerByte, prepareData, unigramEntropy, validationBatches } from '../data/dataset.js';
import { writeFileAtomic } from '../io/atomic.js';
import type { MetricRecord } from '../eval/metrics.js';
import { scoringProgress } from '../eval/progress.js';
import { PROXY_TASKS, PROXY_TYPES, proxyRecords } from '../eval/proxy.js';
import { aggregate, buildTaskSet, formatTable, heldOutDocuments, isProxyName, proxyOptions, splitTaskList } from '../eval/run.js';
import { loadTokenizer } from '../data/tokenizers.js';
import { scoreRequests, DEFAULT_BATCH_TOKENS, type Scores } from '../eval/scorer.js';
import type { PlacementFlags } from '../placement/run.js';
import { processMode } from '../train/process-host.js';
import { loadPrecision, loadRun } from './infer.js';
import { UserError } from './run.js';
import { num } from './train.js';

export interface EvalFlags extends PlacementFlags {
  run: string;
  maxBatches?: string;
  batchSize: string;
  json?: boolean;
  tasks?: string;
  taskFile?: string[];
  taskDir?: string;
  logSamples?: string;
  exportTasks?: string;
  batchTokens?: string;
  proxyItems?: string;
  proxySeed?: string;
  precision?: string;
  bootstrapIters?: string;
}

interface RunJson {
  data: { corpus: string; valFraction?: number; cacheDir?: string };
  train: { seqLen: number };
  model: { seqLen: number };
}

function readRunJson(dir: string): RunJson {
  const file = path.join(dir, 'run.json');
  if (!fs.existsSync(file)) throw new UserError(`${dir}: not a run folder (no run.json)`);
  return JSON.parse(fs.readFileSync(file, 'utf8')) as RunJson;
}

const posInt = (flag: string, v: string | undefined): number | undefined => {
  const x = num(flag, v);
  if (x !== undefined && (!Number.isInteger(x) || x < 1)) throw new UserError(`--${flag}: expected a positive integer, got ${v}`);
  return x;
};

export async function evalCommand(f: EvalFlags): Promise<void> {
  const wantsTasks = f.tasks !== undefined || (f.taskFile?.length ?? 0) > 0 || f.taskDir !== undefined;
  if (f.exportTasks !== undefined) {
    exportProxyTasks(f);
    if (!wantsTasks) return;
  }
  if (wantsTasks) return taskEval(f);
  return lossEval(f);
}

/** Under a launcher only rank 0 writes files. */
function isLead(f: EvalFlags): boolean {
  const mode = processMode(f.transport, f.commTimeout);
  return mode === null || (mode !== 'idle' && mode.launch.rank === 0);
}

/** Write the proxy tasks (all, or those named in --tasks) as NAME.TYPE.jsonl files. */
function exportProxyTasks(f: EvalFlags): void {
  if (!isLead(f)) return;
  const runJson = readRunJson(f.run);
  const names = splitTaskList(f.tasks).flatMap((t) => (t === 'proxy' ? [...PROXY_TASKS] : isProxyName(t) ? [t] : []));
  const docs = heldOutDocuments(runJson.data);
  const proxy = proxyOptions(loadTokenizer(path.join(f.run, 'tokenizer.json')), runJson.model.seqLen, { items: posInt('proxy-items', f.proxyItems), seed: num('proxy-seed', f.proxySeed) });
  fs.mkdirSync(f.exportTasks!, { recursive: true });
  for (const name of names.length ? [...new Set(names)] : PROXY_TASKS) {
    const recs = proxyRecords(name, docs, proxy);
    const file = path.join(f.exportTasks!, `${name}.${PROXY_TYPES[name]}.jsonl`);
    writeFileAtomic(file, recs.map((r) => `${JSON.stringify(r)}\n`).join(''));
    process.stderr.write(`wrote ${recs.length} ${PROXY_TYPES[name]} records to ${file}\n`);
  }
}

async function taskEval(f: EvalFlags): Promise<void> {
  const workers = num('workers', f.workers) ?? 0;
  if (!Number.isInteger(workers) || workers < 0) throw new UserError(`--workers: expected a non-negative integer, got ${f.workers}`);
  const batchTokens = posInt('batch-tokens', f.batchTokens) ?? DEFAULT_BATCH_TOKENS;
  const bootstrapIters = num('bootstrap-iters', f.bootstrapIters) ?? 100000;
  const runJson = readRunJson(f.run);
  const precision = loadPrecision(f.precision);
  if (precision === 'bf16' && workers > 0) throw new UserError('--precision bf16 with --tasks scores on virtual ranks or processes; drop --workers');
  const run = loadRun(f.run, f, precision);
  const tp = run.cfg.parallel.tp;
  if (workers > 0 && tp % workers !== 0) throw new UserError(`--workers ${workers} must divide the TP degree ${tp} (each worker hosts tp/workers ranks)`);
  const L = run.cfg.model.seqLen;
  const t0 = performance.now();
  const set = buildTaskSet(splitTaskList(f.tasks), {
    taskFile: f.taskFile,
    taskDir: f.taskDir,
    tokenizer: run.tokenizer,
    L,
    heldOut: () => heldOutDocuments(runJson.data),
    proxy: { items: posInt('proxy-items', f.proxyItems), seed: num('proxy-seed', f.proxySeed) },
  });
  const progress = scoringProgress('eval');
  let scores: Scores;
  try {
    if (workers > 0 && tp > 1) {
      const { scoreOnThreads } = await import('../eval/threads.js');
      const params = new Map(run.vm.ranks[0]!.specs.map((s) => [s.name, Float32Array.from(run.vm.full('params', s.name))]));
      scores = await scoreOnThreads({ cfg: run.cfg, backend: run.vm.be.name, params, requests: set.requests, batchTokens }, workers, progress.update);
    } else {
      scores = await scoreRequests(run.vm, set.requests, { batchTokens, onProgress: progress.update });
    }
  } finally {
    progress.stop();
  }
  const res = aggregate(set, scores, { bootstrapIters, samples: f.logSamples !== undefined });
  reportUnscored(res.unscored);
  if (f.logSamples !== undefined && isLead(f)) {
    writeFileAtomic(f.logSamples, res.samples.map((s) => `${JSON.stringify(s)}\n`).join(''));
  }
  const secs = (performance.now() - t0) / 1000;
  printRecords(res.records, f.json === true, `step ${run.step}  TP ${tp}  p ${run.cfg.parallel.p}  (${set.requests.length} requests in ${secs.toFixed(1)} s)`);
}

/** Documents that cannot be scored are named on stderr (they count in no metric). */
export function reportUnscored(list: { task: string; doc_id: number; error: string }[], write = (s: string) => process.stderr.write(s)): void {
  const byTask = new Map<string, typeof list>();
  for (const u of list) byTask.set(u.task, [...(byTask.get(u.task) ?? []), u]);
  for (const [task, us] of byTask) {
    for (const u of us.slice(0, 10)) write(`caat: warning: ${task} document ${u.doc_id} cannot be scored: ${u.error}\n`);
    if (us.length > 10) write(`caat: warning: ${task}: ${us.length - 10} more documents cannot be scored\n`);
    write(`caat: warning: ${task}: ${us.length} document${us.length === 1 ? '' : 's'} not scored (not counted in n)\n`);
  }
}

function printRecords(records: MetricRecord[], json: boolean, header: string): void {
  if (json) {
    for (const r of records) process.stdout.write(`${JSON.stringify({ task: r.task, metric: r.metric, value: r.value, stderr: r.stderr, n: r.n })}\n`);
    return;
  }
  process.stdout.write(`${header}\n${formatTable(records)}\n`);
}

/** Validation loss, perplexity and bits per byte on the held-out split (one JSON object with --json). */
async function lossEval(f: EvalFlags): Promise<void> {
  const precision = loadPrecision(f.precision);
  const run = loadRun(f.run, f, precision);
  const runJson = readRunJson(f.run);
  const data = prepareData({
    corpus: runJson.data.corpus,
    tokenizer: run.tokenizer,
    valFraction: runJson.data.valFraction,
    cacheDir: runJson.data.cacheDir,
    log: (m) => process.stderr.write(`${m}\n`),
  });
  const T = runJson.train.seqLen;
  const B = num('batch-size', f.batchSize)!;
  const maxBatches = num('max-batches', f.maxBatches) ?? Infinity;
  let lossSum = 0;
  let tokens = 0;
  for (const b of validationBatches(data.val.tokens, B, T, maxBatches)) {
    const l = await run.vm.all((m) => m.forward(b.inputs, b.targets, b.rows, T));
    lossSum += l[0]! * b.rows * T;
    tokens += b.rows * T;
  }
  if (tokens === 0) throw new UserError(`the validation split has fewer than ${T + 1} tokens`);
  const loss = lossSum / tokens;
  const result = {
    run: f.run,
    step: run.step,
    tp: run.cfg.parallel.tp,
    p: run.cfg.parallel.p,
    val_tokens: tokens,
    val_loss: loss,
    perplexity: Math.exp(loss),
    bits_per_byte: bitsPerByte(loss, data.val),
    unigram_entropy_nats: unigramEntropy(data.train.tokens).natsPerToken,
    precision,
  };
  if (f.json) process.stdout.write(`${JSON.stringify(result)}\n`);
  else {
    process.stdout.write(
      `step ${result.step}  TP ${result.tp}  p ${result.p}  ${precision}\n` +
        `validation loss  ${loss.toFixed(4)} nats/token over ${tokens} tokens\n` +
        `perplexity       ${result.perplexity.toFixed(2)}\n` +
        `bits per byte    ${result.bits_per_byte.toFixed(4)}\n` +
        `unigram entropy  ${result.unigram_entropy_nats.toFixed(4)} nats/token (train split; a context-free model's loss)\n`,
    );
  }
}
