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
