/**
 * `caat sweep`: train and evaluate every cell of a grid of run settings (src/experiments/sweep.ts).
 * The grid comes from a sweep file (--config), from flags (--grid tp=2,4 --set steps=200), or both
 * (flags override the file).
 */
import * as path from 'node:path';
import { readSweepFile, parseSweepSpec, expandCells, type SweepSpec } from '../experiments/sweep-config.js';
import { runSweep } from '../experiments/sweep.js';
import { UserError } from './run.js';
import { num } from './train.js';

export interface SweepFlags {
  config?: string;
  out?: string;
  grid?: string[];
  set?: string[];
  cores?: string;
  jobs?: string;
  evalTasks?: string;
  dryRun?: boolean;
}

const value = (s: string): number | string => (s.trim() !== '' && Number.isFinite(Number(s)) ? Number(s) : s);

function keyValue(flag: string, s: string): [string, string] {
  const i = s.indexOf('=');
  if (i <= 0) throw new UserError(`--${flag} ${JSON.stringify(s)}: expected SETTING=VALUE${flag === 'grid' ? ',VALUE…' : ''}`);
  return [s.slice(0, i).trim(), s.slice(i + 1)];
}

/** The sweep spec of the file and flags together. */
export function sweepSpecOf(f: SweepFlags): SweepSpec {
  const raw: { base: Record<string, unknown>; grid: Record<string, unknown[]>; [k: string]: unknown } = { base: {}, grid: {} };
  let where = 'command line';
  if (f.config) {
    const spec = readSweepFile(f.config);
    where = f.config;
    raw.base = { ...spec.base };
    raw.grid = Object.fromEntries(spec.grid);
    if (spec.eval.batchSize || spec.eval.maxBatches) raw['eval'] = { ...(spec.eval.batchSize ? { 'batch-size': spec.eval.batchSize } : {}), ...(spec.eval.maxBatches ? { 'max-batches': spec.eval.maxBatches } : {}) };
    if (spec.evalTasks) raw['eval_tasks'] = spec.evalTasks;
    if (spec.cores) raw['cores'] = spec.cores;
    if (spec.jobs) raw['jobs'] = spec.jobs;
  }
  for (const s of f.set ?? []) {
    const [k, v] = keyValue('set', s);
    raw.base[k] = value(v);
  }
  for (const s of f.grid ?? []) {
    const [k, v] = keyValue('grid', s);
    raw.grid[k] = v.split(',').filter((x) => x.trim() !== '').map(value);
  }
  if (f.evalTasks) raw['eval_tasks'] = f.evalTasks.split(',').map((t) => t.trim()).filter(Boolean);
  if (f.grid?.length || f.set?.length || f.evalTasks) where = f.config ? `${f.config} with flags` : 'command line';
  return parseSweepSpec(raw, where);
}

export async function sweepCommand(f: SweepFlags): Promise<void> {
  if (!f.config && !f.grid?.length) throw new UserError('give a sweep file (--config SWEEP.json) or at least one --grid SETTING=V1,V2');
  const spec = sweepSpecOf(f);
  const cells = expandCells(spec); // every cell validated before anything runs
  const out = f.out ?? path.join('sweeps', f.config ? path.basename(f.config, '.json') : 'sweep');
  if (f.dryRun) {
    for (const c of cells) process.stdout.write(`${c.name}\t${JSON.stringify(c.trainConfig)}\n`);
    process.stderr.write(`${cells.length} cells; folder ${out}\n`);
    return;
  }
  const ac = new AbortController();
  let sig: NodeJS.Signals | undefined;
  const onSignal = (s: NodeJS.Signals): void => {
    sig = s;
    process.stderr.write(`sweep: ${s}: stopping the running cells (their checkpoints stay; run the same command again to continue)\n`);
    ac.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const cores = num('cores', f.cores);
    const jobs = num('jobs', f.jobs);
    const r = await runSweep({ spec, out, ...(cores ? { cores } : {}), ...(jobs ? { jobs } : {}), signal: ac.signal });
    if (sig) {
      process.exitCode = sig === 'SIGINT' ? 130 : 143;
      return;
    }
    const s = r.started;
    process.stderr.write(
      `sweep: ${r.rows.filter((x) => x.status === 'ok').length}/${r.cells} cells complete (${r.skipped} were already; this run started ${s.train} trainings, ${s.resume} resumes, ${s.eval + s.tasks} evaluations); results ${path.join(out, 'results.jsonl')}\n`,
    );
    if (r.failed.length) throw new UserError(`${r.failed.length} cell(s) failed: ${r.failed.join(', ')} (see their rows in results.jsonl and the logs under ${path.join(out, 'state')}); run the same command again to retry them`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
