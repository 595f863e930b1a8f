/**
 * Model and parallel configuration: typed, validated once, with every derived dimension computed here
 * and nowhere else (in particular the shared width s = floor(p·h)).
 *
 * Dimension names used throughout: B batch, T sequence, h hidden, L layers, NH query heads, NKV kv
 * heads, HD head dim, F ffn width, V vocab (padded to a multiple of N), N tensor-parallel degree,
 * s shared channels.
 */
import { z } from 'zod';

export const ModelConfigSchema = z
  .object({
    /** Vocabulary size V (tokens). Padded up to a multiple of the TP degree by `resolveConfig`. */
    vocab: z.number().int().positive(),
    /** Hidden width h. */
    hidden: z.number().int().positive(),
    /** Number of transformer blocks L. */
    layers: z.number().int().positive(),
    /** Query heads NH; head_dim = hidden / heads. */
    heads: z.number().int().positive(),
    /** Key/value heads NKV (grouped-query attention); divides heads. */
    kvHeads: z.number().int().positive(),
    /** SwiGLU width F. */
    ffn: z.number().int().positive(),
    /** Maximum sequence length (RoPE table size, training context). */
    seqLen: z.number().int().positive(),
    /** RMSNorm epsilon. */
    normEps: z.number().positive().default(1e-5),
    /** RoPE base. */
    ropeTheta: z.number().positive().default(10000),
  })
  .strict();

export type ModelConfigInput = z.input<typeof ModelConfigSchema>;
export type ModelConfig = z.output<typeof ModelConfigSchema>;

export const ParallelConfigSchema = z
  .object({
    /** Tensor-parallel degree N (logical ranks: an architecture parameter when p < 1). */
    tp: z.number().int().positive().default(1),
    /** Fraction p of hidden channels all-reduced after each row-parallel layer, 0 ≤ p ≤ 1. */
    p: z.number().min(0).max(1).default(1),
    /** Scale c of private channels: "sqrt" → sqrt(N), "none" → 1. */
    privateScale: z.enum(['sqrt', 'none']).default('sqrt'),
  })
  .strict();

export type ParallelConfigInput = z.input<typeof ParallelConfigSchema>;
export type ParallelConfig = z.output<typeof ParallelConfigSchema>;

/** A fully validated configuration with every derived quantity. */
export interface ResolvedConfig {
  model: ModelConfig;
  parallel: ParallelConfig;
  /** Vocab as requested (the tokenizer's). */
  vocabRequested: number;
  /** Vocab padded to a multiple of tp (equal to model.vocab). */
  vocab: number;
  headDim: number;
  /** s = floor(p·h): shared channels [0, s), private [s, h). Computed once, here. */
  shared: number;
  /** c: multiplier of private channels after a row-parallel layer. */
  privateScaleValue: number;
  /** Per-rank (local) sizes. */
  local: { heads: number; kvHeads: number; ffn: number; vocab: number };
  notes: string[];
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export function formatZodError(where: string, err: z.ZodError): string {
  return err.issues
    .map((i) => {
      const path = i.path.length ? i.path.join('.') : '(root)';
      return `${where}: field "${path}": ${i.message}`;
    })
    .join('; ');
}

/** Validate and derive. `where` names the source (a file, "command line", …) for error messages. */
export function resolveConfig(modelIn: unknown, parallelIn: unknown = {}, where = 'config'): ResolvedConfig {
  const m = ModelConfigSchema.safeParse(modelIn);
  if (!m.success) throw new ConfigError(formatZodError(where, m.error));
  const pp = ParallelConfigSchema.safeParse(parallelIn);
  if (!pp.success) throw new ConfigError(formatZodError(where, pp.error));
  const model = { ...m.data };
  const parallel = pp.data;
  const N = parallel.tp;
  const errs: string[] = [];
  const notes: string[] = [];
  if (model.hidden % model.heads !== 0) errs.push(`hidden (${model.hidden}) must be divisible by heads (${model.heads})`);
  const headDim = model.hidden / model.heads;
  if (Number.isInteger(headDim) && headDim % 2 !== 0) errs.push(`head_dim = hidden/heads = ${headDim} must be even for rotary embeddings`);
  if (model.heads % model.kvHeads !== 0) errs.push(`heads (${model.heads}) must be a multiple of kvHeads (${model.kvHeads})`);
  if (model.heads % N !== 0) errs.push(`heads (${model.heads}) must be divisible by the TP degree ${N}`);
  if (model.kvHeads % N !== 0) errs.push(`kvHeads (${model.kvHeads}) must be divisible by the TP degree ${N}`);
  if (model.ffn % N !== 0) errs.push(`ffn (${model.ffn}) must be divisible by the TP degree ${N}`);
  if (errs.length) throw new ConfigError(`${where}: ${errs.join('; ')}`);
  const vocabRequested = model.vocab;
  const vocab = Math.ceil(vocabRequested / N) * N;
  if (vocab !== vocabRequested) {
    notes.push(`vocab ${vocabRequested} padded to ${vocab} (a multiple of TP degree ${N}); the extra ${vocab - vocabRequested} token(s) never occur in data`);
  }
  model.vocab = vocab;
  const shared = Math.floor(parallel.p * model.hidden);
  return {
    model,
    parallel,
    vocabRequested,
    vocab,
    headDim,
    shared,
    privateScaleValue: parallel.privateScale === 'sqrt' ? Math.sqrt(N) : 1,
    local: { heads: model.heads / N, kvHeads: model.kvHeads / N, ffn: model.ffn / N, vocab: vocab / N },
    notes,
  };
}

/** Number of parameters of the full logical model. */
export function countParams(cfg: ResolvedConfig): number {
  const { hidden: h, layers: L, ffn: F } = cfg.model;
  const V = cfg.vocab;
  const kv = cfg.model.kvHeads * cfg.headDim;
  const perLayer = 2 * h + h * h * 2 + 2 * kv * h + 3 * F * h;
  return 2 * V * h + L * perLayer + h;
}
