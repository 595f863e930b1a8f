/**
 * Sweep files: a base of run settings and a grid of settings to vary, expanded into cells. Every cell
 * becomes a `caat train --config` file; every cell is validated (setting names, values, the model and
 * TP combination) before any cell starts, and errors name the field.
 *
 *   {
 *     "base": { "hidden": 128, "layers": 4, "steps": 1000 },
 *     "grid": { "tp": [4, 8], "p": [1, 0.5, 0], "seed": [1, 2, 3] },
 *     "eval": { "batch-size": 16, "max-batches": 40 },
 *     "eval_tasks": ["..."],
 *     "jobs": 2
 *   }
 *
 * Setting names are `caat train`'s flag names (`kv-heads`, `batch-size`, `private-scale`, …; camelCase
 * spellings are accepted too). A grid value of the setting "model" is an object of model settings
 * (optionally with a "name"), to vary the model size as one setting.
 */
import * as fs from 'node:fs';
import { z } from 'zod';
import { readJsonFile, UserError } from '../cli/run.js';
import { buildRunSpec } from '../cli/train.js';
import { resolveConfig, countParams } from '../model/config.js';

type Section = 'model' | 'parallel' | 'train' | 'data' | 'top';
interface SettingDef {
  section: Section;
  key: string;
  kind: 'number' | 'string';
}

const def = (section: Section, key: string, kind: 'number' | 'string' = 'number'): SettingDef => ({ section, key, kind });

/** Every setting a sweep can fix or vary, by its `caat train` flag name. */
export const SETTINGS: Record<string, SettingDef> = {
  hidden: def('model', 'hidden'),
  layers: def('model', 'layers'),
  heads: def('model', 'heads'),
  'kv-heads': def('model', 'kvHeads'),
  ffn: def('model', 'ffn'),
  'seq-len': def('model', 'seqLen'),
  'norm-eps': def('model', 'normEps'),
  'rope-theta': def('model', 'ropeTheta'),
  tp: def('parallel', 'tp'),
  p: def('parallel', 'p'),
  'private-scale': def('parallel', 'privateScale', 'string'),
  steps: def('train', 'steps'),
  'batch-size': def('train', 'batchSize'),
  'grad-accum': def('train', 'gradAccum'),
  lr: def('train', 'lr'),
  'min-lr': def('train', 'minLr'),
  warmup: def('train', 'warmup'),
  'weight-decay': def('train', 'weightDecay'),
  beta1: def('train', 'beta1'),
  beta2: def('train', 'beta2'),
  eps: def('train', 'eps'),
  clip: def('train', 'clip'),
  'eval-every': def('train', 'evalEvery'),
  'eval-batches': def('train', 'evalBatches'),
  'ckpt-every': def('train', 'ckptEvery'),
  'keep-checkpoints': def('train', 'keepCheckpoints'),
  seed: def('train', 'seed'),
  data: def('data', 'corpus', 'string'),
  tokenizer: def('data', 'tokenizer', 'string'),
  'vocab-size': def('data', 'vocabSize'),
  'val-fraction': def('data', 'valFraction'),
  'cache-dir': def('data', 'cacheDir', 'string'),
  workers: def('top', 'workers'),
  backend: def('top', 'backend', 'string'),
};

/** Model settings a "model" grid value may hold. */
const MODEL_KEYS = ['hidden', 'layers', 'heads', 'kv-heads', 'ffn', 'seq-len', 'norm-eps', 'rope-theta'];

/** "kvHeads" → "kv-heads"; "kv_heads" → "kv-heads". */
export function canonicalName(name: string): string {
  return name.replace(/_/g, '-').replace(/([a-z0-9])([A-Z])/g, '$1-$2').toLowerCase();
}

const EvalSchema = z
  .object({
    'batch-size': z.number().int().positive().optional(),
    'max-batches': z.number().int().positive().optional(),
  })
  .strict();

const SweepFileSchema = z
  .object({
    base: z.record(z.string(), z.unknown()).optional(),
    grid: z.record(z.string(), z.array(z.unknown())),
    eval: EvalSchema.optional(),
    eval_tasks: z.array(z.string().min(1)).optional(),
    jobs: z.number().int().positive().optional(),
    cores: z.number().int().positive().optional(),
  })
  .strict();

export type SweepValue = number | string | Record<string, number | string>;

export interface SweepSpec {
  /** Where the spec came from, for messages. */
  where: string;
  base: Record<string, SweepValue>;
  /** Grid settings in the file's order, each with its values. */
  grid: [string, SweepValue[]][];
  eval: { batchSize?: number; maxBatches?: number };
  evalTasks?: string[];
  /** Cores the sweep may use (default: all of this machine's). */
  cores?: number;
  /** At most this many cells side by side. */
  jobs?: number;
}

export interface Cell {
  /** Folder name: the grid settings, e.g. "tp4-p0.5-seed1". */
  name: string;
  /** The grid values of this cell, by setting name. */
  grid: Record<string, SweepValue>;
  /** Every setting (base and grid, model presets expanded), by setting name. */
  settings: Record<string, number | string>;
  /** The `caat train --config` file of this cell. */
  trainConfig: TrainConfigFile;
  /** Cores a running cell occupies: its worker threads, or 1 for virtual ranks in one thread. */
  cores: number;
  /** Relative amount of work (steps × tokens per step × parameters), for the ETA. */
  work: number;
  steps: number;
}

export interface TrainConfigFile {
  model: Record<string, number>;
  parallel: Record<string, number | string>;
  train: Record<string, number>;
  data: Record<string, number | string>;
  workers?: number;
  backend?: string;
}

function fail(where: string, field: string, msg: string): never {
  throw new UserError(`${where}: field "${field}": ${msg}`);
}

function checkValue(where: string, field: string, name: string, v: unknown): SweepValue {
  if (name === 'model') {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(where, field, `a "model" value must be an object of model settings, got ${JSON.stringify(v)}`);
    const out: Record<string, number | string> = {};
    for (const [k0, x] of Object.entries(v as Record<string, unknown>)) {
      if (k0 === 'name') {
        if (typeof x !== 'string' || x === '') fail(where, `${field}.name`, 'expected a non-empty string');
        out['name'] = x;
        continue;
      }
      const k = canonicalName(k0);
      if (!MODEL_KEYS.includes(k)) fail(where, `${field}.${k0}`, `unknown model setting (known: ${MODEL_KEYS.join(', ')}, name)`);
      if (typeof x !== 'number' || !Number.isFinite(x)) fail(where, `${field}.${k0}`, `expected a number, got ${JSON.stringify(x)}`);
      out[k] = x;
    }
    return out;
  }
  const d = SETTINGS[name];
  if (!d) fail(where, field, `unknown setting "${name}" (known: ${[...Object.keys(SETTINGS), 'model'].join(', ')})`);
  if (d.kind === 'number' && (typeof v !== 'number' || !Number.isFinite(v))) fail(where, field, `expected a number, got ${JSON.stringify(v)}`);
  if (d.kind === 'string' && typeof v !== 'string') fail(where, field, `expected a string, got ${JSON.stringify(v)}`);
  return v as SweepValue;
}

/** Validate a parsed sweep file (setting names and value types; cells are checked by `expandCells`). */
export function parseSweepSpec(raw: unknown, where: string): SweepSpec {
  const r = SweepFileSchema.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues[0]!;
    const field = i.path.length ? i.path.join('.') : '(root)';
    if (i.code === 'unrecognized_keys') throw new UserError(`${where}: unknown field${i.keys.length > 1 ? 's' : ''} ${i.keys.map((k) => `"${k}"`).join(', ')} (known: base, grid, eval, eval_tasks, jobs, cores)`);
    throw new UserError(`${where}: field "${field}": ${i.message}`);
  }
  const f = r.data;
  const base: Record<string, SweepValue> = {};
  for (const [k0, v] of Object.entries(f.base ?? {})) {
    const k = k0 === 'model' ? 'model' : canonicalName(k0);
    if (k !== 'model' && !SETTINGS[k]) fail(where, `base.${k0}`, `unknown setting "${k0}" (known: ${[...Object.keys(SETTINGS), 'model'].join(', ')})`);
    base[k] = checkValue(where, `base.${k0}`, k, v);
  }
  const entries = Object.entries(f.grid);
  if (entries.length === 0) throw new UserError(`${where}: field "grid": empty grid (give at least one setting with a list of values, e.g. "grid": {"seed": [1]})`);
  const grid: [string, SweepValue[]][] = [];
  const seen = new Set<string>();
  for (const [k0, vals] of entries) {
    const k = k0 === 'model' ? 'model' : canonicalName(k0);
    if (k !== 'model' && !SETTINGS[k]) fail(where, `grid.${k0}`, `unknown setting "${k0}" (known: ${[...Object.keys(SETTINGS), 'model'].join(', ')})`);
    if (seen.has(k)) fail(where, `grid.${k0}`, `setting "${k}" appears twice in the grid`);
    seen.add(k);
    if (vals.length === 0) fail(where, `grid.${k0}`, 'empty list of values: the grid would have no cells');
    const checked = vals.map((v, i) => checkValue(where, `grid.${k0}[${i}]`, k, v));
    const keys = checked.map((v) => JSON.stringify(v));
    const dup = keys.findIndex((x, i) => keys.indexOf(x) !== i);
    if (dup >= 0) fail(where, `grid.${k0}[${dup}]`, `value ${keys[dup]} appears twice`);
    grid.push([k, checked]);
  }
  return {
    where,
    base,
    grid,
    eval: { ...(f.eval?.['batch-size'] ? { batchSize: f.eval['batch-size'] } : {}), ...(f.eval?.['max-batches'] ? { maxBatches: f.eval['max-batches'] } : {}) },
    ...(f.eval_tasks ? { evalTasks: f.eval_tasks } : {}),
    ...(f.cores ? { cores: f.cores } : {}),
    ...(f.jobs ? { jobs: f.jobs } : {}),
  };
}

export function readSweepFile(file: string): SweepSpec {
  return parseSweepSpec(readJsonFile(file), file);
}

/** "p" → 0.5 → "p0.5"; a model preset → its name, else "model<index>". */
function label(name: string, v: SweepValue, index: number): string {
  if (typeof v === 'object') return typeof v['name'] === 'string' ? String(v['name']) : `model${index}`;
  const short: Record<string, string> = { 'private-scale': 'ps', 'batch-size': 'bs', 'kv-heads': 'kv' };
  return `${short[name] ?? name}${String(v)}`.replace(/[^A-Za-z0-9._-]/g, '_');
}

/** The `caat train --config` file of a set of settings. */
export function trainConfigOf(settings: Record<string, number | string>): TrainConfigFile {
  const out: TrainConfigFile = { model: {}, parallel: {}, train: {}, data: {} };
  for (const [k, v] of Object.entries(settings)) {
    const d = SETTINGS[k]!;
    if (d.section === 'top') (out as unknown as Record<string, unknown>)[d.key] = v;
    else (out[d.section] as Record<string, unknown>)[d.key] = v;
  }
  // Cells run side by side: by default every rank of a cell is a virtual rank in the cell's one thread.
  if (out.workers === undefined) out.workers = 0;
  return out;
}

/** Where each setting of a cell came from, for error messages. */
function origin(spec: SweepSpec, name: string): string {
  if (spec.grid.some(([k]) => k === name)) return `grid.${name}`;
  if (MODEL_KEYS.includes(name) && spec.grid.some(([k]) => k === 'model')) return 'grid.model';
  if (name in spec.base) return `base.${name}`;
  if (MODEL_KEYS.includes(name) && 'model' in spec.base) return 'base.model';
  return `${name} (default)`;
}

/**
 * Every cell of the grid (the cartesian product in the file's order, the last setting varying fastest),
 * each validated as `caat train` would validate it, before anything runs.
 */
export function expandCells(spec: SweepSpec): Cell[] {
  let combos: [string, SweepValue, number][][] = [[]];
  for (const [k, vals] of spec.grid) combos = combos.flatMap((c) => vals.map((v, i) => [...c, [k, v, i] as [string, SweepValue, number]]));
  const cells: Cell[] = [];
  const names = new Set<string>();
  for (const combo of combos) {
    const settings: Record<string, number | string> = {};
    const apply = (k: string, v: SweepValue): void => {
      if (typeof v === 'object') for (const [mk, mv] of Object.entries(v)) { if (mk !== 'name') settings[mk] = mv; }
      else settings[k] = v;
    };
    if (spec.base['model'] !== undefined) apply('model', spec.base['model']);
    for (const [k, v] of Object.entries(spec.base)) if (k !== 'model') apply(k, v);
    for (const [k, v] of combo) apply(k, v);
    const name = combo.map(([k, v, i]) => label(k, v, i)).join('-');
    if (names.has(name)) throw new UserError(`${spec.where}: two cells would share the folder name "${name}"`);
    names.add(name);
    const trainConfig = trainConfigOf(settings);
    const gridValues = Object.fromEntries(combo.map(([k, v]) => [k, v]));
    const what = `${spec.where}: cell ${name}`;
    let runSpec;
    try {
      runSpec = buildRunSpecFromObject(trainConfig, what);
      resolveConfig({ ...runSpec.model, vocab: Number(runSpec.parallel['tp'] ?? 1) }, runSpec.parallel, what);
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      const involved = ['tp', 'hidden', 'heads', 'kv-heads', 'ffn', 'workers'].filter((k) => msg.includes(k === 'kv-heads' ? 'kvHeads' : k));
      const fields = involved.map((k) => `"${origin(spec, k)}"`).join(', ');
      throw new UserError(`${msg}${fields ? ` (fields ${fields})` : ''}`);
    }
    const tp = Number(runSpec.parallel['tp'] ?? 1);
    const cores = runSpec.workers > 0 && tp > 1 ? runSpec.workers : 1;
    const resolved = resolveConfig({ ...runSpec.model, vocab: Math.ceil(runSpec.data.vocabSize / tp) * tp }, runSpec.parallel, what);
    const t = runSpec.train;
    const work = t.steps * t.gradAccum * t.batchSize * t.seqLen * countParams(resolved);
    // Record every effective setting (defaults included) so that rows and reports can group on them.
    const full: Record<string, number | string> = {
      hidden: resolved.model.hidden,
      layers: resolved.model.layers,
      heads: resolved.model.heads,
      'kv-heads': resolved.model.kvHeads,
      ffn: resolved.model.ffn,
      'seq-len': t.seqLen,
      tp,
      p: resolved.parallel.p,
      'private-scale': resolved.parallel.privateScale,
      steps: t.steps,
      'batch-size': t.batchSize,
      'grad-accum': t.gradAccum,
      lr: t.lr,
      seed: t.seed,
      data: runSpec.data.corpus,
      'vocab-size': runSpec.data.vocabSize,
      ...settings,
    };
    cells.push({ name, grid: gridValues, settings: full, trainConfig, cores, work, steps: t.steps });
  }
  return cells;
}

/** `caat train`'s own validation of a config object (through a temporary file it would read). */
function buildRunSpecFromObject(cfg: TrainConfigFile, where: string): ReturnType<typeof buildRunSpec> {
  const tmp = `${process.env['TMPDIR'] ?? '/tmp'}/caat-sweep-${process.pid}-${Math.random().toString(36).slice(2)}.json`;
  fs.writeFileSync(tmp, JSON.stringify(cfg));
  try {
    return buildRunSpec({ config: tmp });
  } catch (e) {
    const msg = (e instanceof Error ? e.message : String(e)).split(tmp).join(where);
    throw new UserError(msg);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}
