/**
 * What a sweep records per cell: the run's metrics.jsonl (read back with one record per step, the
 * last one winning, since a resumed run repeats the steps after its last checkpoint), the output of
 * `caat eval --json` and of `caat eval --tasks … --json`, and the row of results.jsonl built from them.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../io/atomic.js';

export interface MetricsRecord {
  step: number;
  loss: number;
  val_loss?: number;
  ms_per_step?: number;
  comm_bytes?: number;
  comm_bytes_fwd_shared?: number;
  comm_bytes_bwd_shared?: number;
  comm_bytes_embedding?: number;
  comm_bytes_other?: number;
  comm_bytes_private_kept_local?: number;
  comm_wait_ms?: number;
  [k: string]: unknown;
}

/** metrics.jsonl with one record per step in step order (a repeated step keeps its last record). */
export function readMetrics(runDir: string): MetricsRecord[] {
  const file = path.join(runDir, 'metrics.jsonl');
  if (!fs.existsSync(file)) return [];
  const byStep = new Map<number, MetricsRecord>();
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!.trim();
    if (!l) continue;
    let rec: MetricsRecord;
    try {
      rec = JSON.parse(l) as MetricsRecord;
    } catch {
      // A line cut short by a killed process is the last one; anything else is damage.
      if (i >= lines.length - 2) continue;
      throw new Error(`${file}:${i + 1}: not valid JSON`);
    }
    if (typeof rec.step === 'number') byStep.set(rec.step, rec);
  }
  return [...byStep.values()].sort((a, b) => a.step - b.step);
}

/** The step of a run folder's latest complete checkpoint, or null when it has none. */
export function latestCheckpointStep(runDir: string): number | null {
  try {
    const name = fs.readFileSync(path.join(runDir, 'latest'), 'utf8').trim();
    const st = JSON.parse(fs.readFileSync(path.join(runDir, 'checkpoints', name, 'state.json'), 'utf8')) as { step: number };
    return typeof st.step === 'number' ? st.step : null;
  } catch {
    return null;
  }
}

export interface EvalResult {
  step: number;
  val_loss: number;
  perplexity: number;
  bits_per_byte: number;
  [k: string]: unknown;
}

/** The one JSON object `caat eval --json` prints (the last JSON line of its output). */
export function parseEvalOutput(stdout: string): EvalResult {
  const lines = stdout.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('{'));
  if (lines.length === 0) throw new Error(`caat eval printed no JSON object (output: ${JSON.stringify(stdout.slice(0, 200))})`);
  const o = JSON.parse(lines[lines.length - 1]!) as Record<string, unknown>;
  for (const k of ['val_loss', 'perplexity', 'bits_per_byte']) {
    if (typeof o[k] !== 'number') throw new Error(`caat eval --json: field "${k}" missing or not a number`);
  }
  return o as EvalResult;
}

export interface TaskMetric {
  task: string;
  metric: string;
  value: number;
  stderr: number | null;
  n: number;
}

/** The lines `caat eval --tasks LIST --json` prints: one {"task","metric","value","stderr","n"} per task and metric. */
export function parseTaskOutput(stdout: string): TaskMetric[] {
  const out: TaskMetric[] = [];
  const lines = stdout.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!.trim();
    if (!l.startsWith('{')) continue;
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(l) as Record<string, unknown>;
    } catch (e) {
      throw new Error(`caat eval --tasks, line ${i + 1}: not valid JSON (${(e as Error).message})`);
    }
    if (!('task' in o)) continue; // not a task line (e.g. the loss object)
    const where = `caat eval --tasks, line ${i + 1}`;
    if (typeof o['task'] !== 'string' || o['task'] === '') throw new Error(`${where}: field "task" must be a non-empty string`);
    if (typeof o['metric'] !== 'string' || o['metric'] === '') throw new Error(`${where}: field "metric" must be a non-empty string`);
    if (typeof o['value'] !== 'number' || !Number.isFinite(o['value'])) throw new Error(`${where}: field "value" must be a finite number`);
    if (o['stderr'] !== null && (typeof o['stderr'] !== 'number' || !Number.isFinite(o['stderr']))) throw new Error(`${where}: field "stderr" must be a number or null`);
    if (typeof o['n'] !== 'number' || !Number.isInteger(o['n']) || o['n'] < 0) throw new Error(`${where}: field "n" must be a non-negative integer`);
    out.push({ task: o['task'], metric: o['metric'], value: o['value'], stderr: o['stderr'] as number | null, n: o['n'] });
  }
  if (out.length === 0) throw new Error('caat eval --tasks printed no task line');
  return out;
}

export interface CommPerStep {
  total: number;
  fwd_shared: number;
  bwd_shared: number;
  embedding: number;
  other: number;
  private_kept_local: number;
}

/** Bytes communicated per step (per rank), from the last step of metrics.jsonl (every step moves the same). */
export function commPerStep(m: MetricsRecord[]): CommPerStep | null {
  const last = m[m.length - 1];
  if (!last || typeof last.comm_bytes !== 'number') return null;
  return {
    total: last.comm_bytes,
    fwd_shared: last.comm_bytes_fwd_shared ?? 0,
    bwd_shared: last.comm_bytes_bwd_shared ?? 0,
    embedding: last.comm_bytes_embedding ?? 0,
    other: last.comm_bytes_other ?? 0,
    private_kept_local: last.comm_bytes_private_kept_local ?? 0,
  };
}

export interface ResultRow {
  cell: string;
  /** The cell's run folder, relative to the sweep folder. */
  dir: string;
  status: 'ok' | 'failed';
  error?: string;
  /** The grid values of this cell. */
  grid: Record<string, unknown>;
  /** Every effective setting. */
  settings: Record<string, number | string>;
  step: number | null;
  metrics: Record<string, number>;
  /** Standard errors of the metrics where the evaluation gives one (null: not defined). */
  stderr: Record<string, number | null>;
  /** Zero-shot task metrics, one per task and metric (present when the sweep sets eval_tasks). */
  tasks?: TaskMetric[];
  comm_bytes_per_step: CommPerStep | null;
  /** Seconds: training (all attempts this sweep saw end), evaluation, and the sum of step times in metrics.jsonl. */
  wall_s: { train: number; eval: number; steps: number };
}

/** Build a cell's row from its run folder and its evaluation outputs. */
export function buildRow(o: {
  cell: string;
  dir: string;
  runDir: string;
  grid: Record<string, unknown>;
  settings: Record<string, number | string>;
  evalResult?: EvalResult;
  tasks?: TaskMetric[];
  trainSeconds: number;
  evalSeconds: number;
  error?: string;
}): ResultRow {
  const m = readMetrics(o.runDir);
  const metrics: Record<string, number> = {};
  const stderr: Record<string, number | null> = {};
  const last = m[m.length - 1];
  if (last) metrics['final_train_loss'] = last.loss;
  const lastVal = [...m].reverse().find((r) => typeof r.val_loss === 'number');
  if (lastVal) metrics['train_val_loss'] = lastVal.val_loss!;
  if (o.evalResult) {
    for (const k of ['val_loss', 'perplexity', 'bits_per_byte', 'unigram_entropy_nats', 'val_tokens']) {
      const v = o.evalResult[k];
      if (typeof v === 'number') metrics[k] = v;
    }
    for (const k of ['val_loss', 'perplexity', 'bits_per_byte']) {
      const s = o.evalResult[`${k}_stderr`];
      stderr[k] = typeof s === 'number' ? s : null;
    }
  }
  const stepSeconds = m.reduce((a, r) => a + (typeof r.ms_per_step === 'number' ? r.ms_per_step : 0), 0) / 1000;
  return {
    cell: o.cell,
    dir: o.dir,
    status: o.error ? 'failed' : 'ok',
    ...(o.error ? { error: o.error } : {}),
    grid: o.grid,
    settings: o.settings,
    step: o.evalResult?.step ?? last?.step ?? null,
    metrics,
    stderr,
    ...(o.tasks ? { tasks: o.tasks } : {}),
    comm_bytes_per_step: commPerStep(m),
    wall_s: { train: o.trainSeconds, eval: o.evalSeconds, steps: stepSeconds },
  };
}

export function writeResults(file: string, rows: ResultRow[]): void {
  writeFileAtomic(file, rows.map((r) => `${JSON.stringify(r)}\n`).join(''));
}

export function readResults(file: string): ResultRow[] {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l, i) => {
      try {
        return JSON.parse(l) as ResultRow;
      } catch {
        throw new Error(`${file}:${i + 1}: not valid JSON`);
      }
    });
}

/** One point of a loss curve: the training loss of a step and, at validation steps, the validation loss. */
export interface CurvePoint {
  step: number;
  loss: number;
  val_loss?: number;
}

/** At most `max` points of a curve (every k-th step, the last one always kept). */
export function thinCurve<T extends { step: number }>(xs: T[], max = 400): T[] {
  if (xs.length <= max) return xs;
  const k = Math.ceil(xs.length / max);
  return xs.filter((_, i) => i % k === 0 || i === xs.length - 1);
}

/**
 * A run's loss curve from its metrics.jsonl: the training loss thinned to at most 400 points, and every
 * step that has a validation loss (those are few and must not be thinned away).
 */
export function curveOf(m: MetricsRecord[]): CurvePoint[] {
  const pts: CurvePoint[] = m.map((r) => ({ step: r.step, loss: r.loss, ...(typeof r.val_loss === 'number' ? { val_loss: r.val_loss } : {}) }));
  const k = Math.max(1, Math.ceil(pts.length / 400));
  return pts.filter((x, i) => i % k === 0 || i === pts.length - 1 || x.val_loss !== undefined);
}

/**
 * The file that keeps a sweep cell's curve beside results.jsonl (curves/NAME.json), so that the sweep's
 * record (sweep.json, results.jsonl, curves/) can be kept without the cells' run folders and still report.
 */
export function curveFile(sweepDir: string, cell: string): string {
  return path.join(sweepDir, 'curves', `${cell}.json`);
}

export function readCurve(file: string): CurvePoint[] {
  const o = JSON.parse(fs.readFileSync(file, 'utf8')) as unknown;
  const bad = (why: string): never => {
    throw new Error(`${file}: ${why}`);
  };
  if (!Array.isArray(o)) bad('not a JSON array of curve points');
  return (o as unknown[]).map((x, i) => {
    const r = x as Partial<CurvePoint>;
    if (typeof r.step !== 'number' || typeof r.loss !== 'number') bad(`point ${i}: "step" and "loss" must be numbers`);
    return r as CurvePoint;
  });
}
