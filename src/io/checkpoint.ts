/**
 * Checkpoints: everything needed to resume a run exactly, written atomically and validated on load.
 *
 * Layout inside a run folder:
 *   checkpoints/step-00000100/model.safetensors      full logical weights, Hugging Face Llama names,
 *                                                    __metadata__ = the model config (see metadata.ts)
 *   checkpoints/step-00000100/optimizer.safetensors  AdamW moments "<name>.exp_avg" / "<name>.exp_avg_sq"
 *   checkpoints/step-00000100/state.json             step, schedule, data cursor, config, and the size
 *                                                    and SHA-256 of both tensor files
 *   latest                                           the name of the newest complete checkpoint
 *
 * A checkpoint directory is assembled under a temporary name and renamed into place only once every
 * file is written and fsynced; `latest` is then replaced atomically. An interrupted write therefore
 * leaves the previous checkpoint as the latest one.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import type { FloatArray } from '../backend/types.js';
import type { ResolvedConfig } from '../model/config.js';
import { configFromMetadata, configToMetadata } from '../model/metadata.js';
import { paramSpecs, type ParamSpec } from '../model/params.js';
import { ensureDir, writeFileAtomic } from './atomic.js';
import { parseSafetensors, serializeSafetensors, type TensorInput } from './safetensors.js';

export class CheckpointError extends Error {
  constructor(readonly file: string, readonly problem: string) {
    super(`${file}: ${problem}`);
    this.name = 'CheckpointError';
  }
}

const FileRecord = z.object({ bytes: z.number().int().nonnegative(), sha256: z.string().regex(/^[0-9a-f]{64}$/) }).strict();

export const CheckpointStateSchema = z
  .object({
    format: z.literal('caatnet-checkpoint'),
    version: z.literal(1),
    step: z.number().int().nonnegative(),
    tokensSeen: z.number().int().nonnegative(),
    /** Opaque data-loader cursor (restored by the loader). */
    loader: z.unknown(),
    /** The training configuration the run was started with. */
    train: z.record(z.string(), z.unknown()),
    files: z.object({ model: FileRecord, optimizer: FileRecord }).strict(),
  })
  .strict();

export type CheckpointState = z.infer<typeof CheckpointStateSchema>;

export interface FullTensors {
  /** Full logical tensors by parameter name. */
  params: Map<string, Float32Array>;
  /** AdamW first and second moments, full logical, by parameter name. */
  m: Map<string, Float32Array>;
  v: Map<string, Float32Array>;
}

export interface LoadedCheckpoint extends FullTensors {
  dir: string;
  cfg: ResolvedConfig;
  state: CheckpointState;
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export const checkpointName = (step: number): string => `step-${String(step).padStart(8, '0')}`;

/** Serialise the model weights alone (also used by `caat export` and tests). */
export function serializeModel(cfg: ResolvedConfig, params: Map<string, FloatArray>): Uint8Array {
  const tensors = new Map<string, TensorInput>();
  for (const spec of paramSpecs(cfg)) {
    const data = params.get(spec.name);
    if (!data) throw new Error(`missing parameter ${spec.name}`);
    tensors.set(spec.name, { shape: spec.shape, data: data instanceof Float32Array ? data : Float32Array.from(data) });
  }
  return serializeSafetensors(tensors, configToMetadata(cfg));
}

/** Write a complete checkpoint for `step` into runDir/checkpoints and make it the latest. */
export function writeCheckpoint(
  runDir: string,
  cfg: ResolvedConfig,
  t: FullTensors,
  state: Omit<CheckpointState, 'format' | 'version' | 'files'>,
): string {
  const ckRoot = path.join(runDir, 'checkpoints');
  ensureDir(ckRoot);
  const name = checkpointName(state.step);
  const finalDir = path.join(ckRoot, name);
  const tmpDir = path.join(ckRoot, `.tmp-${name}-${process.pid}-${randomBytes(4).toString('hex')}`);
  fs.mkdirSync(tmpDir);
  try {
    const modelBytes = serializeModel(cfg, t.params);
    const opt = new Map<string, TensorInput>();
    for (const spec of paramSpecs(cfg)) {
      opt.set(`${spec.name}.exp_avg`, { shape: spec.shape, data: t.m.get(spec.name)! });
      opt.set(`${spec.name}.exp_avg_sq`, { shape: spec.shape, data: t.v.get(spec.name)! });
    }
    const optBytes = serializeSafetensors(opt, { format: 'caatnet-optimizer', step: String(state.step) });
    writeFileAtomic(path.join(tmpDir, 'model.safetensors'), modelBytes);
    // Failure injection for tests of interrupted writes (CAAT_FAULT_INJECT_CHECKPOINT=<step>).
    if (process.env['CAAT_FAULT_INJECT_CHECKPOINT'] === String(state.step)) {
      throw new Error(`injected failure while writing checkpoint ${name}`);
    }
    writeFileAtomic(path.join(tmpDir, 'optimizer.safetensors'), optBytes);
    const full: CheckpointState = {
      format: 'caatnet-checkpoint',
      version: 1,
      ...state,
      files: {
        model: { bytes: modelBytes.byteLength, sha256: sha256(modelBytes) },
        optimizer: { bytes: optBytes.byteLength, sha256: sha256(optBytes) },
      },
    };
    writeFileAtomic(path.join(tmpDir, 'state.json'), `${JSON.stringify(full, null, 1)}\n`);
    if (fs.existsSync(finalDir)) fs.rmSync(finalDir, { recursive: true, force: true });
    fs.renameSync(tmpDir, finalDir);
  } catch (e) {
    fs.rmSync(tmpDir, { recursive: true, force: true });
    throw e;
  }
  writeFileAtomic(path.join(runDir, 'latest'), `${name}\n`);
  return finalDir;
}

/**
 * Remove what an interrupted writer left behind (temporary checkpoint folders) and all but the newest
 * `keep` complete checkpoints. The checkpoint named by `latest` is always kept.
 */
export function pruneCheckpoints(runDir: string, keep: number): void {
  const ckRoot = path.join(runDir, 'checkpoints');
  if (!fs.existsSync(ckRoot)) return;
  const latestFile = path.join(runDir, 'latest');
  const latest = fs.existsSync(latestFile) ? fs.readFileSync(latestFile, 'utf8').trim() : '';
  const entries = fs.readdirSync(ckRoot);
  for (const e of entries) if (e.startsWith('.tmp-')) fs.rmSync(path.join(ckRoot, e), { recursive: true, force: true });
  if (keep <= 0) return;
  const complete = entries.filter((e) => /^step-\d{8}$/.test(e)).sort();
  for (const e of complete.slice(0, Math.max(0, complete.length - keep))) {
    if (e !== latest) fs.rmSync(path.join(ckRoot, e), { recursive: true, force: true });
  }
}

/** Resolve a run folder (its latest checkpoint) or a checkpoint folder to the checkpoint folder. */
export function resolveCheckpointDir(p: string): string {
  if (!fs.existsSync(p)) throw new CheckpointError(p, 'no such run or checkpoint folder');
  if (fs.existsSync(path.join(p, 'state.json'))) return p;
  const latest = path.join(p, 'latest');
  if (!fs.existsSync(latest)) throw new CheckpointError(p, 'no checkpoint found (no "latest" file and no state.json)');
  const name = fs.readFileSync(latest, 'utf8').trim();
  if (!/^step-\d{8}$/.test(name)) throw new CheckpointError(latest, `does not name a checkpoint: ${JSON.stringify(name.slice(0, 40))}`);
  const dir = path.join(p, 'checkpoints', name);
  if (!fs.existsSync(dir)) throw new CheckpointError(latest, `names ${name}, which does not exist`);
  return dir;
}

function readChecked(file: string, rec: { bytes: number; sha256: string }): Uint8Array {
  if (!fs.existsSync(file)) throw new CheckpointError(file, 'missing');
  const buf = fs.readFileSync(file);
  if (buf.byteLength !== rec.bytes) throw new CheckpointError(file, `is ${buf.byteLength} bytes but state.json records ${rec.bytes} (truncated or replaced)`);
  if (sha256(buf) !== rec.sha256) throw new CheckpointError(file, 'checksum mismatch: the file is corrupted');
  return buf;
}

/** Check that a parsed model file holds exactly the config's tensors with the right shapes, as F32. */
export function validateModelTensors(file: string, cfg: ResolvedConfig, tensors: Map<string, { dtype: string; shape: number[]; data: unknown }>, suffixes: string[] = ['']): Map<string, Float32Array>[] {
  const specs: ParamSpec[] = paramSpecs(cfg);
  const out = suffixes.map(() => new Map<string, Float32Array>());
  const expected = new Set<string>();
  for (const spec of specs) {
    suffixes.forEach((suf, k) => {
      const name = spec.name + suf;
      expected.add(name);
      const t = tensors.get(name);
      if (!t) throw new CheckpointError(file, `tensor ${name} is missing (the metadata describes a model that has it)`);
      if (t.dtype !== 'F32' && t.dtype !== 'F64') throw new CheckpointError(file, `tensor ${name} has dtype ${t.dtype}; expected F32`);
      if (t.shape.length !== spec.shape.length || t.shape.some((d, i) => d !== spec.shape[i])) {
        throw new CheckpointError(file, `tensor ${name} has shape [${t.shape}] but the metadata implies [${spec.shape}]`);
      }
      const d = t.data as Float32Array | Float64Array;
      out[k]!.set(spec.name, d instanceof Float32Array ? d : Float32Array.from(d));
    });
  }
  for (const name of tensors.keys()) {
    if (!expected.has(name)) throw new CheckpointError(file, `unexpected tensor ${name} (not part of the model the metadata describes)`);
  }
  return out;
}

/** Load and fully validate a checkpoint (a run folder's latest, or a checkpoint folder). */
export function loadCheckpoint(p: string, opts: { tpOverride?: number } = {}): LoadedCheckpoint {
  const dir = resolveCheckpointDir(p);
  const statePath = path.join(dir, 'state.json');
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(statePath, 'utf8'));
  } catch (e) {
    throw new CheckpointError(statePath, `is not valid JSON (${(e as Error).message})`);
  }
  const parsed = CheckpointStateSchema.safeParse(raw);
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    throw new CheckpointError(statePath, `field "${i.path.join('.') || '(root)'}": ${i.message}`);
  }
  const state = parsed.data;
  const modelPath = path.join(dir, 'model.safetensors');
  const optPath = path.join(dir, 'optimizer.safetensors');
  const model = parseSafetensors(readChecked(modelPath, state.files.model), modelPath);
  const cfg = configFromMetadata(model.metadata, modelPath, opts.tpOverride === undefined ? {} : { tpOverride: opts.tpOverride });
  const [params] = validateModelTensors(modelPath, cfg, model.tensors);
  const opt = parseSafetensors(readChecked(optPath, state.files.optimizer), optPath);
  const [m, v] = validateModelTensors(optPath, cfg, opt.tensors, ['.exp_avg', '.exp_avg_sq']);
  return { dir, cfg, state, params: params!, m: m!, v: v! };
}

/** Load a bare model file (no optimizer state), validating tensors against its metadata. */
export function loadModelFile(file: string, opts: { seqLen?: number; tpOverride?: number } = {}): { cfg: ResolvedConfig; params: Map<string, Float32Array> } {
  let buf: Uint8Array;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    throw new CheckpointError(file, `cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const st = parseSafetensors(buf, file);
  const cfg = configFromMetadata(st.metadata, file, opts);
  const [params] = validateModelTensors(file, cfg, st.tensors);
  return { cfg, params: params! };
}
