/** Training configuration: validated with clear errors naming the field and its source. */
import { z } from 'zod';
import { ConfigError, formatZodError } from '../model/config.js';

export const TrainConfigSchema = z
  .object({
    /** Optimiser steps in total. */
    steps: z.number().int().positive().default(1000),
    /** Sequences per micro-batch (B). */
    batchSize: z.number().int().positive().default(16),
    /** Tokens per sequence (T); at most the model's seqLen. */
    seqLen: z.number().int().positive().default(128),
    /** Micro-batches accumulated per optimiser step; the loss is normalised by their total token count. */
    gradAccum: z.number().int().positive().default(1),
    /** Peak learning rate. */
    lr: z.number().positive().default(3e-3),
    /** Final learning rate of the cosine decay. */
    minLr: z.number().nonnegative().default(3e-4),
    /** Linear warm-up steps. */
    warmup: z.number().int().nonnegative().default(30),
    weightDecay: z.number().nonnegative().default(0.1),
    beta1: z.number().min(0).max(1).default(0.9),
    beta2: z.number().min(0).max(1).default(0.95),
    eps: z.number().positive().default(1e-8),
    /** Global gradient-norm clipping threshold (0 disables). */
    clip: z.number().nonnegative().default(1),
    /** Validate every this many steps (0: only at the end). */
    evalEvery: z.number().int().nonnegative().default(100),
    /** Validation batches per evaluation. */
    evalBatches: z.number().int().positive().default(8),
    /** Checkpoint every this many steps (0: only at the end). */
    ckptEvery: z.number().int().nonnegative().default(250),
    /** Complete checkpoints kept in the run folder (older ones are deleted; 0 keeps all). */
    keepCheckpoints: z.number().int().nonnegative().default(3),
    /** Seed of the weights and the data order. */
    seed: z.number().int().nonnegative().default(1234),
    /**
     * GEMM and activation precision: fp32, or bf16 mixed precision (fp32 master weights, gradients and
     * AdamW state). `auto` (the command line's default) is resolved to one of them when a run starts,
     * so run.json records the precision used; library callers that leave it at auto get fp32.
     */
    precision: z.enum(['auto', 'fp32', 'bf16']).default('auto'),
  })
  .strict();

export type TrainConfig = z.output<typeof TrainConfigSchema>;

export function parseTrainConfig(input: unknown, where: string): TrainConfig {
  const r = TrainConfigSchema.safeParse(input);
  if (!r.success) throw new ConfigError(formatZodError(where, r.error));
  if (r.data.minLr > r.data.lr) throw new ConfigError(`${where}: field "minLr" (${r.data.minLr}) exceeds "lr" (${r.data.lr})`);
  return r.data;
}
