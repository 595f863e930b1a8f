/**
 * `caat generate`, and `loadRun` (used by `caat eval` too): load a run folder's latest checkpoint at its
 * TP degree (every logical rank hosted as a virtual rank in this process, or this process's ranks under
 * a launcher), then sample.
 */
import { selectBackend } from '../backend/index.js';
import { roundBf16InPlace } from '../backend/bf16.js';
import type { Precision } from '../model/model.js';
import { describePrecision } from '../model/precision.js';
import type { Tokenizer } from '../data/tokenizer.js';
import type { ResolvedConfig } from '../model/config.js';
import { VirtualModel } from '../model/harness.js';
import { processModel } from '../train/process-host.js';
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

/**
 * Load a run's latest checkpoint onto this process's ranks. `precision` bf16 runs the forward in bf16
 * mixed precision (whatever precision the checkpoint was trained in: checkpoints hold float32 masters).
 */
export function loadRun(runDir: string, flags: PlacementFlags, precision: Precision = 'fp32'): LoadedRun {
  // Under a launcher: this process hosts its ranks (src/train/process-host.ts); other ranks stay quiet.
  const run = openRunForInference(runDir, flags);
  const be = selectBackend(flags.backend);
  const vm = run.launched ? processModel(run.cfg, be, run.launched, { run: runDir, step: run.step, flags }) : new VirtualModel(run.cfg, be);
  for (const m of vm.ranks) {
    m.loadFull((s) => run.params.get(s.name)!);
    m.setPrecision(precision);
  }
  if (precision !== 'fp32' && (!run.launched || run.launched.launch.rank === 0)) process.stderr.write(`${describePrecision(precision, be)}\n`);
  return { runDir, cfg: run.cfg, vm, tokenizer: run.tokenizer, step: run.step };
}

/** --precision of generate and eval: fp32 (the default) or bf16. */
export function loadPrecision(v: string | undefined): Precision {
  if (v === undefined || v === 'fp32') return 'fp32';
  if (v === 'bf16') return 'bf16';
  throw new UserError(`--precision: expected fp32 or bf16, got ${JSON.stringify(v)}`);
}

/** What generate and serve print with --precision bf16. */
export const BF16_WEIGHTS_NOTICE = "precision: bf16 weights (every GEMM weight held in bf16 and widened exactly in the GEMM, half the bytes per decoded token; activations, the KV cache, norms and the embedding stay fp32)";

/**
 * The parameters with every GEMM weight rounded to bf16, in float32 storage: the reference that the
 * engine's bf16 weights (RankModel.setBatchWeights) are tested against.
 */
export function bf16RoundedWeights<T extends ArrayLike<number>>(params: Map<string, T>): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const [name, t] of params) {
    const x = Float32Array.from(t);
    if (/\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$/.test(name) || name === 'lm_head.weight') roundBf16InPlace(x, x.length);
    out.set(name, x);
  }
  return out;
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
  precision?: string;
}

export async function generateCommand(f: GenerateFlags): Promise<void> {
  const precision = loadPrecision(f.precision);
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
  if (precision === 'bf16' && (!run.launched || run.launched.launch.rank === 0)) process.stderr.write(`${BF16_WEIGHTS_NOTICE}\n`);
  const host = placeRanks({
    cfg: run.cfg,
    params: run.params,
    weights: precision,
    backend: f.backend,
    workers: run.workers,
    launched: run.launched,
    slots: 1,
    maxLen,
    config: { command: 'generate', run: f.run, step: run.step, prompt: f.prompt, maxTokens, seed, precision, ...o },
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
