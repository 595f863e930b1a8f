/**
 * `caat gradcheck`: one forward and backward of a checkpoint on a given batch; prints the loss and the
 * L2 norm of every full logical gradient in the shape of the reference fixtures' expected.json.
 */
import { z } from 'zod';
import { selectBackend } from '../backend/index.js';
import { loadModelFile } from '../io/checkpoint.js';
import { formatZodError } from '../model/config.js';
import { VirtualModel } from '../model/harness.js';
import { readJsonFile, UserError } from './run.js';
import { loadPrecision } from './infer.js';
import type { Backend } from '../backend/types.js';
import type { ResolvedConfig } from '../model/config.js';
import { describePrecision } from '../model/precision.js';

async function lossAndNorms(cfg: ResolvedConfig, be: Backend, params: Map<string, ArrayLike<number>>, precision: 'fp32' | 'bf16', inp: Int32Array, tgt: Int32Array, B: number, T: number): Promise<{ loss: number; norms: Record<string, number> }> {
  const vm = new VirtualModel(cfg, be);
  for (const m of vm.ranks) {
    m.loadFull((s) => params.get(s.name)!);
    m.setPrecision(precision);
  }
  const loss = await vm.lossAndGrads(inp, tgt, B, T);
  const norms: Record<string, number> = {};
  for (const spec of vm.ranks[0]!.specs) {
    const g = vm.full('grads', spec.name);
    let s = 0;
    for (let i = 0; i < g.length; i++) s += g[i]! * g[i]!;
    norms[spec.name] = Math.sqrt(s);
  }
  return { loss, norms };
}

/**
 * gradcheck --precision bf16: the bf16 forward/backward next to the fp32 one on the same checkpoint and
 * batch, with the relative difference of the loss and of every gradient norm (finite differences stay
 * the float64 path's business: bf16 rounding makes them meaningless).
 */
async function gradcheckBf16(f: GradcheckFlags, cfg: ResolvedConfig, be: Backend, params: Map<string, ArrayLike<number>>, inp: Int32Array, tgt: Int32Array, B: number, T: number): Promise<void> {
  if (!f.json) process.stderr.write(`${describePrecision('bf16', be)}\n`);
  const ref = await lossAndNorms(cfg, be, params, 'fp32', inp, tgt, B, T);
  const got = await lossAndNorms(cfg, be, params, 'bf16', inp, tgt, B, T);
  const rel = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-30);
  const normRel: Record<string, number> = {};
  for (const k of Object.keys(ref.norms)) normRel[k] = rel(got.norms[k]!, ref.norms[k]!);
  const out = {
    loss: got.loss, grad_norms: got.norms, shared: cfg.shared, n_tokens: B * T,
    config: { tp: cfg.parallel.tp, p: cfg.parallel.p, private_scale: cfg.parallel.privateScale, backend: be.name, precision: 'bf16' },
    fp32: { loss: ref.loss, loss_rel_diff: rel(got.loss, ref.loss), grad_norm_rel_diff: normRel },
  };
  if (f.json) process.stdout.write(`${JSON.stringify(out)}\n`);
  else {
    process.stdout.write(`loss ${got.loss} (fp32 ${ref.loss}, relative difference ${out.fp32.loss_rel_diff.toExponential(2)})\nshared ${cfg.shared} of ${cfg.model.hidden} channels, ${B * T} tokens\n`);
    for (const [k, v] of Object.entries(got.norms)) process.stdout.write(`${k.padEnd(48)} ${v}  (vs fp32 ${normRel[k]!.toExponential(2)})\n`);
  }
}

const TokensSchema = z
  .object({ inputs: z.array(z.array(z.number().int().nonnegative())).min(1), targets: z.array(z.array(z.number().int().nonnegative())).min(1) })
  .strict();

export interface GradcheckFlags {
  model: string;
  tokens: string;
  workers?: string;
  backend?: string;
  json?: boolean;
  transport?: string;
  commTimeout?: string;
  precision?: string;
}

export async function gradcheckCommand(f: GradcheckFlags): Promise<void> {
  const parsed = TokensSchema.safeParse(readJsonFile(f.tokens));
  if (!parsed.success) throw new UserError(formatZodError(f.tokens, parsed.error));
  const { inputs, targets } = parsed.data;
  const B = inputs.length;
  const T = inputs[0]!.length;
  if (targets.length !== B || [...inputs, ...targets].some((r) => r.length !== T)) {
    throw new UserError(`${f.tokens}: "inputs" and "targets" must both be ${B}×${T} (every row the same length)`);
  }
  const { cfg, params } = loadModelFile(f.model, { seqLen: T });
  const flat = (rows: number[][], field: string) => {
    const a = Int32Array.from(rows.flat());
    const bad = a.findIndex((t) => t >= cfg.vocab);
    if (bad >= 0) throw new UserError(`${f.tokens}: "${field}" holds token ${a[bad]} ≥ vocab ${cfg.vocab}`);
    return a;
  };
  const inp = flat(inputs, 'inputs');
  const tgt = flat(targets, 'targets');
  // Under a launcher: this process hosts one rank (src/train/process-host.ts); other ranks stay quiet.
  const { gradcheckProcess, processMode, quietUnlessRankZero } = await import('../train/process-host.js');
  const mode = processMode(f.transport, f.commTimeout);
  const launched = mode === 'idle' ? null : mode;
  if (launched) quietUnlessRankZero(launched);
  const be = selectBackend(f.backend, { quiet: f.json === true });
  const workers = f.workers === undefined ? 0 : Number(f.workers);
  const precision = loadPrecision(f.precision);
  if (precision === 'bf16') {
    if (launched || (workers > 0 && cfg.parallel.tp > 1)) throw new UserError('gradcheck --precision bf16 runs on virtual ranks in one process; drop --workers and the launcher');
    return gradcheckBf16(f, cfg, be, params, inp, tgt, B, T);
  }
  let loss: number;
  let norms: Record<string, number>;
  if (launched) {
    ({ loss, norms } = await gradcheckProcess(cfg, be, params, inp, tgt, B, T, launched, { model: f.model, tokens: f.tokens }));
  } else if (workers > 0 && cfg.parallel.tp > 1) {
    const { gradcheckThreads } = await import('../train/threads-host.js');
    ({ loss, norms } = await gradcheckThreads(cfg, be.name, workers, params, inp, tgt, B, T));
  } else {
    const vm = new VirtualModel(cfg, be);
    for (const m of vm.ranks) m.loadFull((s) => params.get(s.name)!);
    loss = await vm.lossAndGrads(inp, tgt, B, T);
    norms = {};
    for (const spec of vm.ranks[0]!.specs) {
      const g = vm.full('grads', spec.name);
      let s = 0;
      for (let i = 0; i < g.length; i++) s += g[i]! * g[i]!;
      norms[spec.name] = Math.sqrt(s);
    }
  }
  const out = { loss, grad_norms: norms, shared: cfg.shared, n_tokens: B * T, config: { tp: cfg.parallel.tp, p: cfg.parallel.p, private_scale: cfg.parallel.privateScale, backend: be.name } };
  if (f.json) process.stdout.write(`${JSON.stringify(out)}\n`);
  else {
    process.stdout.write(`loss ${loss}\nshared ${cfg.shared} of ${cfg.model.hidden} channels, ${B * T} tokens\n`);
    for (const [k, v] of Object.entries(norms)) process.stdout.write(`${k.padEnd(48)} ${v}\n`);
  }
}
