/**
 * Open a run folder for inference on any placement: the checkpoint's configuration and full tensors,
 * the tokenizer, and how this process takes part (a launch or none). The ranks themselves are placed
 * by placeRanks (index.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../cli/run.js';
import { num } from '../cli/train.js';
import type { Tokenizer } from '../data/tokenizer.js';
import { loadTokenizer } from '../data/tokenizers.js';
import { loadCheckpoint } from '../io/checkpoint.js';
import type { ResolvedConfig } from '../model/config.js';
import { processMode, quietUnlessRankZero, type ProcessLaunch } from '../train/process-host.js';

export interface PlacementFlags {
  backend?: string;
  tp?: string;
  p?: string;
  privateScale?: string;
  transport?: string;
  commTimeout?: string;
  workers?: string;
}

export interface OpenedRun {
  runDir: string;
  cfg: ResolvedConfig;
  params: Map<string, Float32Array>;
  tokenizer: Tokenizer;
  step: number;
  /** This process's launch, or null (one process hosts every rank). */
  launched: ProcessLaunch | null;
  /** Worker threads asked for (undefined: virtual ranks). */
  workers: number | undefined;
  /** A launcher started several processes but --transport threads|virtual keeps every rank in rank 0's: nothing to do here. */
  idle: boolean;
}

export function openRunForInference(runDir: string, flags: PlacementFlags): OpenedRun {
  const mode = processMode(flags.transport, flags.commTimeout);
  const launched = mode === 'idle' || mode === null ? null : mode;
  if (launched) quietUnlessRankZero(launched);
  if (!fs.existsSync(runDir)) throw new UserError(`${runDir}: no such run folder`);
  const tpOverride = num('tp', flags.tp);
  const ck = loadCheckpoint(runDir, tpOverride === undefined ? {} : { tpOverride });
  const p = num('p', flags.p);
  if (p !== undefined && p !== ck.cfg.parallel.p) {
    throw new UserError(`--p ${p} does not match the checkpoint's p = ${ck.cfg.parallel.p}: p is part of the architecture the model was trained with`);
  }
  if (flags.privateScale !== undefined && flags.privateScale !== ck.cfg.parallel.privateScale) {
    throw new UserError(`--private-scale ${flags.privateScale} does not match the checkpoint's ${ck.cfg.parallel.privateScale}`);
  }
  const workers = num('workers', flags.workers);
  if (workers !== undefined && (!Number.isInteger(workers) || workers < 0)) throw new UserError(`--workers must be a non-negative integer, got ${flags.workers}`);
  const params = new Map<string, Float32Array>();
  for (const [k, v] of ck.params) params.set(k, v instanceof Float32Array ? v : Float32Array.from(v));
  return {
    runDir,
    cfg: ck.cfg,
    params,
    tokenizer: loadTokenizer(path.join(runDir, 'tokenizer.json')),
    step: ck.state.step,
    launched,
    workers,
    idle: mode === 'idle',
  };
}
