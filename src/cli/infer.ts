/**
 * `caat generate`, and `loadRun` (used by `caat eval` too): load a run folder's latest checkpoint at its
 * TP degree (every logical rank hosted as a virtual rank in this process, or this process's ranks under
 * a launcher), then sample.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { selectBackend } from '../backend/index.js';
import { StreamDecoder, type Tokenizer } from '../data/tokenizer.js';
import { loadTokenizer } from '../data/tokenizers.js';
import { loadCheckpoint } from '../io/checkpoint.js';
import type { ResolvedConfig } from '../model/config.js';
import { VirtualModel } from '../model/harness.js';
import { processModel, processMode, quietUnlessRankZero } from '../train/process-host.js';
import { mulberry32 } from '../util/random.js';
import { UserError } from './run.js';
import { num } from './train.js';

export interface LoadedRun {
  runDir: string;
  cfg: ResolvedConfig;
  vm: VirtualModel;
  tokenizer: Tokenizer;
  step: number;
}

export function loadRun(runDir: string, flags: { backend?: string; tp?: string; p?: string; privateScale?: string; transport?: string; commTimeout?: string }): LoadedRun {
  // Under a launcher: this process hosts one rank (src/train/process-host.ts); other ranks stay quiet.
  const mode = processMode(flags.transport, flags.commTimeout);
  const launched = mode === 'idle' ? null : mode;
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
  const tokenizer = loadTokenizer(path.join(runDir, 'tokenizer.json'));
  const be = selectBackend(flags.backend);
  const vm = launched ? processModel(ck.cfg, be, launched, { run: runDir, step: ck.state.step, flags }) : new VirtualModel(ck.cfg, be);
  for (const m of vm.ranks) m.loadFull((s) => ck.params.get(s.name)!);
  return { runDir, cfg: ck.cfg, vm, tokenizer, step: ck.state.step };
}

export interface SampleOptions {
  temperature: number;
  topK: number;
  topP: number;
}

/** Sample one token id from logits over the first `vocab` entries (padding ids are never chosen). */
export function sample(logits: ArrayLike<number>, vocab: number, o: SampleOptions, rand: () => number): number {
  if (o.temperature <= 0) {
    let best = 0;
    for (let i = 1; i < vocab; i++) if (logits[i]! > logits[best]!) best = i;
    return best;
  }
  let idx = Array.from({ length: vocab }, (_, i) => i);
  idx.sort((a, b) => logits[b]! - logits[a]! || a - b);
  if (o.topK > 0) idx = idx.slice(0, o.topK);
  const max = logits[idx[0]!]!;
  let probs = idx.map((i) => Math.exp((logits[i]! - max) / o.temperature));
  let total = probs.reduce((a, b) => a + b, 0);
  if (o.topP < 1) {
    let acc = 0;
    let keep = 0;
    while (keep < probs.length) {
      acc += probs[keep]! / total;
      keep++;
      if (acc >= o.topP) break;
    }
    idx = idx.slice(0, keep);
    probs = probs.slice(0, keep);
    total = probs.reduce((a, b) => a + b, 0);
  }
  let u = rand() * total;
  for (let k = 0; k < idx.length; k++) {
    u -= probs[k]!;
    if (u <= 0) return idx[k]!;
  }
  return idx[idx.length - 1]!;
}

export interface GenerateFlags {
  run: string;
  prompt: string;
  maxTokens: string;
  temperature: string;
  topK: string;
  topP: string;
  seed: string;
  backend?: string;
  tp?: string;
  p?: string;
  privateScale?: string;
  transport?: string;
  commTimeout?: string;
}

export async function generateCommand(f: GenerateFlags): Promise<void> {
  const run = loadRun(f.run, f);
  const o: SampleOptions = { temperature: num('temperature', f.temperature)!, topK: num('top-k', f.topK)!, topP: num('top-p', f.topP)! };
  if (o.temperature < 0) throw new UserError('--temperature must be ≥ 0');
  if (!(o.topP > 0 && o.topP <= 1)) throw new UserError('--top-p must be in (0, 1]');
  if (!Number.isInteger(o.topK) || o.topK < 0) throw new UserError('--top-k must be a non-negative integer (0: no limit)');
  const maxTokens = num('max-tokens', f.maxTokens)!;
  const rand = mulberry32(num('seed', f.seed)!); // same seed on every rank: all pick the same token
  const tok = run.tokenizer;
  let ids = tok.encode(f.prompt);
  if (ids.length === 0) {
    if (tok.eotId === null) throw new UserError('--prompt is empty and the tokenizer has no end-of-text token to start from');
    ids = [tok.eotId];
  }
  const maxLen = run.cfg.model.seqLen;
  if (ids.length >= maxLen) ids = ids.slice(ids.length - (maxLen - 1));
  const budget = Math.min(maxTokens, maxLen - ids.length);
  process.stdout.write(f.prompt);
  const dec = new StreamDecoder(tok);
  const caches = run.vm.ranks.map((m) => m.createCache(1, maxLen));
  let next = Int32Array.from(ids);
  const t0 = performance.now();
  let produced = 0;
  for (let i = 0; i < budget; i++) {
    const logits = await run.vm.all((m, r) => m.forwardIncremental(next, next.length, caches[r]!));
    const id = sample(logits[0]!, tok.vocabSize, o, rand);
    if (id === tok.eotId) break;
    process.stdout.write(dec.push(id));
    produced++;
    next = Int32Array.of(id);
  }
  process.stdout.write(`${dec.flush()}\n`);
  const secs = (performance.now() - t0) / 1000;
  process.stderr.write(`generated ${produced} tokens in ${secs.toFixed(2)} s (${(produced / secs).toFixed(1)} tok/s, TP ${run.cfg.parallel.tp}, p ${run.cfg.parallel.p})\n`);
}
