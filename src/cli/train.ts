/**
 * `caat train`: every setting has a flag, and a JSON config file (--config) can hold any of them as
 * {"model": {...}, "parallel": {...}, "train": {...}, "data": {...}}; flags override the file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { ConfigError, formatZodError, ModelConfigSchema, ParallelConfigSchema, resolveConfig } from '../model/config.js';
import { parseTrainConfig } from '../train/config.js';
import { train, type RunSpec } from '../train/trainer.js';
import { splitTaskList } from '../eval/run.js';
import { readJsonFile, UserError } from './run.js';
import { isPrecisionChoice, type PrecisionChoice } from '../model/precision.js';

/** The default model: ~1.8M parameters with the default 4096-token BPE. */
export const DEFAULT_MODEL = { hidden: 128, layers: 4, heads: 8, kvHeads: 4, ffn: 384, seqLen: 128 };

const FileSchema = z
  .object({
    model: ModelConfigSchema.partial().omit({ vocab: true }).strict().optional(),
    parallel: ParallelConfigSchema.partial().optional(),
    train: z.record(z.string(), z.unknown()).optional(),
    data: z
      .object({
        corpus: z.string().optional(),
        tokenizer: z.string().optional(),
        vocabSize: z.number().int().min(257).max(65535).optional(),
        valFraction: z.number().gt(0).lt(1).optional(),
        cacheDir: z.string().optional(),
      })
      .strict()
      .optional(),
    workers: z.number().int().nonnegative().optional(),
    backend: z.enum(['native', 'wasm', 'js', 'auto']).optional(),
  })
  .strict();

export interface TrainFlags {
  config?: string;
  out?: string;
  resume?: string;
  data?: string;
  tokenizer?: string;
  vocabSize?: string;
  hidden?: string;
  layers?: string;
  heads?: string;
  kvHeads?: string;
  ffn?: string;
  seqLen?: string;
  steps?: string;
  batchSize?: string;
  gradAccum?: string;
  lr?: string;
  minLr?: string;
  warmup?: string;
  weightDecay?: string;
  clip?: string;
  evalEvery?: string;
  evalBatches?: string;
  ckptEvery?: string;
  keepCheckpoints?: string;
  seed?: string;
  tp?: string;
  p?: string;
  privateScale?: string;
  workers?: string;
  backend?: string;
  cacheDir?: string;
  transport?: string;
  commTimeout?: string;
  evalTasks?: string;
  precision?: string;
}

/** --precision: fp32, bf16 or auto (UserError naming the flag otherwise). */
export function precisionFlag(v: string | undefined): PrecisionChoice | undefined {
  if (v === undefined) return undefined;
  if (!isPrecisionChoice(v)) throw new UserError(`--precision: expected fp32, bf16 or auto, got ${JSON.stringify(v)}`);
  return v;
}

/** Parse a numeric flag strictly: "--lr abc" is an error naming the flag. */
export function num(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const x = Number(v);
  if (v.trim() === '' || !Number.isFinite(x)) throw new UserError(`--${flag}: expected a number, got ${JSON.stringify(v)}`);
  return x;
}

function readConfigFile(file: string): z.infer<typeof FileSchema> {
  const r = FileSchema.safeParse(readJsonFile(file));
  if (!r.success) throw new ConfigError(formatZodError(file, r.error));
  return r.data;
}

const strip = <T extends Record<string, unknown>>(o: T): Partial<T> => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;

export function buildRunSpec(f: TrainFlags): RunSpec {
  let file: z.infer<typeof FileSchema> = {};
  if (f.config) file = readConfigFile(f.config);
  else if (f.resume) {
    const runJson = path.join(f.resume, 'run.json');
    if (!fs.existsSync(runJson)) throw new UserError(`${f.resume}: not a run folder (no run.json)`);
    const saved = JSON.parse(fs.readFileSync(runJson, 'utf8')) as Record<string, unknown>;
    const model = { ...(saved['model'] as Record<string, unknown>) };
    delete model['vocab'];
    file = FileSchema.parse({ model, parallel: saved['parallel'], train: saved['train'], data: saved['data'], workers: saved['workers'], backend: saved['backend'] });
  }
  const where = f.config ?? 'command line';
  const model = {
    ...DEFAULT_MODEL,
    ...file.model,
    ...strip({ hidden: num('hidden', f.hidden), layers: num('layers', f.layers), heads: num('heads', f.heads), kvHeads: num('kv-heads', f.kvHeads), ffn: num('ffn', f.ffn), seqLen: num('seq-len', f.seqLen) }),
  };
  const parallel = {
    ...file.parallel,
    ...strip({ tp: num('tp', f.tp), p: num('p', f.p), privateScale: f.privateScale }),
  };
  const train = parseTrainConfig(
    {
      seqLen: model.seqLen,
      ...file.train,
      ...strip({
        steps: num('steps', f.steps),
        batchSize: num('batch-size', f.batchSize),
        gradAccum: num('grad-accum', f.gradAccum),
        lr: num('lr', f.lr),
        minLr: num('min-lr', f.minLr),
        warmup: num('warmup', f.warmup),
        weightDecay: num('weight-decay', f.weightDecay),
        clip: num('clip', f.clip),
        evalEvery: num('eval-every', f.evalEvery),
        evalBatches: num('eval-batches', f.evalBatches),
        ckptEvery: num('ckpt-every', f.ckptEvery),
        keepCheckpoints: num('keep-checkpoints', f.keepCheckpoints),
        seed: num('seed', f.seed),
        precision: precisionFlag(f.precision),
      }),
      ...(f.seqLen !== undefined ? { seqLen: num('seq-len', f.seqLen) } : {}),
    },
    where,
  );
  const tp = (parallel.tp as number | undefined) ?? 1;
  const workersDefault = tp > 1 ? Math.min(tp, 2) : 0;
  const workers = num('workers', f.workers) ?? file.workers ?? workersDefault;
  if (!Number.isInteger(workers) || workers < 0) throw new UserError(`--workers: expected a non-negative integer, got ${workers}`);
  if (workers > 0 && tp % workers !== 0) throw new UserError(`--workers ${workers} must divide the TP degree ${tp} (each worker hosts tp/workers ranks)`);
  return {
    model,
    parallel,
    train,
    data: {
      corpus: f.data ?? file.data?.corpus ?? 'default',
      tokenizer: f.tokenizer ?? file.data?.tokenizer ?? 'bpe',
      vocabSize: num('vocab-size', f.vocabSize) ?? file.data?.vocabSize ?? 4096,
      ...(file.data?.valFraction !== undefined ? { valFraction: file.data.valFraction } : {}),
      ...(f.cacheDir ?? file.data?.cacheDir ? { cacheDir: f.cacheDir ?? file.data?.cacheDir } : {}),
    },
    workers,
    backend: f.backend ?? file.backend,
    ...(f.evalTasks !== undefined ? { evalTasks: splitTaskList(f.evalTasks) } : {}),
  };
}

export async function trainCommand(f: TrainFlags): Promise<void> {
  // Under a launcher (caat launch, torchrun-style variables, mpirun, srun): one rank per process.
  const { processMode } = await import('../train/process-host.js');
  const mode = processMode(f.transport, f.commTimeout);
  if (mode === 'idle') return;
  const spec = buildRunSpec(f);
  if (f.transport === 'virtual') spec.workers = 0;
  // Validate the model/parallel combination before touching any data (any vocab that the TP degree
  // divides will do here; the tokenizer's is checked once it is known).
  resolveConfig({ ...spec.model, vocab: Number(spec.parallel['tp'] ?? 1) }, spec.parallel, f.config ?? 'command line');
  await train(spec, { runDir: f.out, resume: f.resume, ...(mode ? { process: mode } : {}) });
}
