/**
 * `caat generate`, and `loadRun` (used by `caat eval` too): load a run folder's latest checkpoint at its
 * TP degree (every logical rank hosted as a virtual rank in this process, or this process's ranks under
 * a launcher), then sample.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { selectBackend } from '../backend/index.js';
import type { Tokenizer } from '../data/tokenizer.js';
import { loadTokenizer } from '../data/tokenizers.js';
import { loadCheckpoint } from '../io/checkpoint.js';
import type { ResolvedConfig } from '../model/config.js';
import { VirtualModel } from '../model/harness.js';
import { processModel, processMode, quietUnlessRankZero } from '../train/process-host.js';
import { Engine } from '../infer/engine.js';
import type { SampleOptions } from '../infer/sampler.js';
import { placeRanks } from '../placement/index.js';
import { openRunForInference, type PlacementFlags } from '../placement/run.js';
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

export { sample, type SampleOptions } from '../infer/sampler.js';

export interface GenerateFlags extends PlacementFlags {
  run: string;
  prompt: string;
  maxTokens: string;
  temperature: string;
  topK: string;
  topP: string;
  seed: string;
}

export async function generateCommand(f: GenerateFlags): Promise<void> {
  const run = openRunForInference(f.run, f);
  if (run.idle) return;
  const o: SampleOptions = { temperature: num('temperature', f.temperature)!, topK: num('top-k', f.topK)!, topP: num('top-p', f.topP)! };
  if (o.temperature < 0) throw new UserError('--temperature must be ≥ 0');
  if (!(o.topP > 0 && o.topP <= 1)) throw new UserError('--top-p must be in (0, 1]');
  if (!Number.isInteger(o.topK) || o.topK < 0) throw new UserError('--top-k must be a non-negative integer (0: no limit)');
  const maxTokens = num('max-tokens', f.maxTokens)!;
  const seed = num('seed', f.seed)!;
  const tok = run.tokenizer;
  let ids = tok.encode(f.prompt);
  if (ids.length === 0) {
    if (tok.eotId === null) throw new UserError('--prompt is empty and the tokenizer has no end-of-text token to start from');
    ids = [tok.eotId];
  }
  const maxLen = run.cfg.model.seqLen;
  if (ids.length >= maxLen) ids = ids.slice(ids.length - (maxLen - 1));
  const budget = Math.min(maxTokens, maxLen - ids.length);
  const host = placeRanks({
    cfg: run.cfg,
    params: run.params,
    backend: f.backend,
    workers: run.workers,
    launched: run.launched,
    slots: 1,
    maxLen,
    config: { command: 'generate', run: f.run, step: run.step, prompt: f.prompt, maxTokens, seed, ...o },
  });
  if (!host.lead) return host.follow();
  process.stdout.write(f.prompt);
  const engine = new Engine({ host, tokenizer: tok, vocab: tok.vocabSize, maxBatchTokens: maxLen, maxWaiting: 1 });
  const t0 = performance.now();
  let produced = 0;
  try {
    await new Promise<void>((resolve, reject) => {
      engine.add(ids, { ...o, seed, presencePenalty: 0, frequencyPenalty: 0, maxTokens: budget, stop: [], ignoreEos: false, logprobs: null, echo: false }, (e) => {
        if (e.type === 'token') {
          if (e.token >= 0) produced++;
          process.stdout.write(e.text);
        } else if (e.type === 'done') resolve();
        else reject(e.error);
      });
    });
  } finally {
    await engine.stop();
    await host.close();
  }
  process.stdout.write('\n');
  const secs = (performance.now() - t0) / 1000;
  process.stderr.write(`generated ${produced} tokens in ${secs.toFixed(2)} s (${(produced / secs).toFixed(1)} tok/s, TP ${run.cfg.parallel.tp}, p ${run.cfg.parallel.p}, ${host.placement})\n`);
}
