/**
 * `caat bench infer`: the inference engine's step on the small config of `bench train` (context
 * raised to 1024 so a 512-token prompt fits): prefill of 512 tokens in one step, and decode of 128
 * tokens at batch 1, 8 and 32 (each step one row per sequence, greedy sampling on rank 0 included),
 * per TP degree, p and placement. Reports tokens/s, ms per step, the sampler's share of a decode
 * step, bytes communicated per token, and, for decode at batch 1, the limit set by reading every
 * weight once per token at the single-core memory bandwidth measured here (llama-bench's pp512/tg128).
 */
import { selectBackend } from '../backend/index.js';
import { UserError } from '../cli/run.js';
import { SequenceSampler } from '../infer/sampler.js';
import { resolveConfig } from '../model/config.js';
import { initFull, paramSpecs } from '../model/params.js';
import { placeRanks, type StepPlan } from '../placement/index.js';
import { BENCH_CONFIGS } from './train.js';
import { describeMachine, formatMachine } from './machine.js';

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : 0.5 * (s[m - 1]! + s[m]!);
};

/**
 * Single-core memory bandwidth (bytes/s), the larger of two medians of 5: the backend's sum of squares
 * over a 256 MiB buffer (reads only) and a 256 MiB copy (memcpy; read + write bytes counted).
 */
export function measureReadBandwidth(backend?: string): number {
  const src = new Float32Array(64 * 1024 * 1024).fill(1);
  const dst = new Float32Array(src.length);
  dst.set(src);
  const cs: number[] = [];
  for (let r = 0; r < 5; r++) {
    const t0 = performance.now();
    dst.set(src);
    cs.push(performance.now() - t0);
  }
  const copy = (2 * src.length * 4) / (median(cs) / 1000);
  return Math.max(copy, sumSquaresBandwidth(backend));
}

function sumSquaresBandwidth(backend?: string): number {
  const be = selectBackend(backend, { quiet: true });
  const n = 64 * 1024 * 1024;
  const x = be.alloc(n);
  for (let i = 0; i < n; i += 1024) x[i] = 1;
  be.sumSquares(x, n);
  const ts: number[] = [];
  for (let r = 0; r < 5; r++) {
    const t0 = performance.now();
    be.sumSquares(x, n);
    ts.push(performance.now() - t0);
  }
  be.release(x);
  return (n * 4) / (median(ts) / 1000);
}

interface Variant {
  tp: number;
  p: number;
  workers: number;
}

export async function benchInferCommand(opts: { json?: boolean; backend?: string; variants?: string; batches?: string; prefill?: string; decode?: string }): Promise<void> {
  const cfgModel = { ...BENCH_CONFIGS.small.model, seqLen: 1024 };
  const prefillLen = Number(opts.prefill ?? 512);
  const decodeLen = Number(opts.decode ?? 128);
  const batches = (opts.batches ?? '1,8,32').split(',').map(Number);
  if (batches.some((b) => !Number.isInteger(b) || b < 1)) throw new UserError('--batches: comma-separated positive integers');
  const variants: Variant[] = (opts.variants ?? 'tp1,tp2:p1,tp2:p0.5').split(',').map((v) => {
    const m = /^tp(\d+)(?::p([\d.]+))?(?::w(\d+))?$/.exec(v.trim());
    if (!m) throw new UserError(`--variants: "${v}" is not tpN[:pX][:wM]`);
    const tp = Number(m[1]);
    return { tp, p: m[2] === undefined ? 1 : Number(m[2]), workers: m[3] === undefined ? (tp === 1 ? 0 : tp) : Number(m[3]) };
  });
  const out = (o: Record<string, unknown>): void => {
    if (opts.json) process.stdout.write(`${JSON.stringify(o)}\n`);
  };
  const machine = describeMachine();
  if (!opts.json) for (const l of formatMachine(machine)) process.stdout.write(`${l}\n`);
  const bw = measureReadBandwidth(opts.backend);
  out({ kind: 'bandwidth', read_bytes_per_s: bw, machine });
  if (!opts.json) process.stdout.write(`single-core read bandwidth ${(bw / 1e9).toFixed(2)} GB/s\n`);
  for (const v of variants) {
    const cfg = resolveConfig(cfgModel, { tp: v.tp, p: v.p });
    const params = new Map<string, Float32Array>();
    let weightsPerToken = 0;
    paramSpecs(cfg).forEach((spec, i) => {
      const full = initFull(spec, i, 1234) as Float32Array;
      params.set(spec.name, full);
      weightsPerToken += spec.name === 'model.embed_tokens.weight' ? cfg.model.hidden : full.length;
    });
    const maxB = Math.max(...batches);
    const host = placeRanks({ cfg, params, backend: opts.backend, workers: v.workers, launched: null, slots: maxB, maxLen: cfg.model.seqLen, config: {} });
    const placement = `${host.placement}${v.workers ? `×${v.workers}` : ''}`;
    const V = cfg.vocab;
    const tok = (i: number): number => (i * 2654435761) % V;
    try {
      // prefill: one sequence of prefillLen tokens in one step
      const pts: number[] = [];
      let pBytes = 0;
      for (let r = 0; r < 4; r++) {
        const plan: StepPlan = { kind: 'step', seqs: [{ slot: 0, pos: 0, n: prefillLen, allLogits: false }], tokens: Int32Array.from({ length: prefillLen }, (_, i) => tok(i + r)), freed: [] };
        const res = await host.step(plan);
        if (r > 0) pts.push(res.ms);
        pBytes = res.commBytes;
      }
      const pms = median(pts);
      const rowP = { kind: 'prefill', tp: v.tp, p: v.p, placement, tokens: prefillLen, ms: pms, tokens_per_s: prefillLen / (pms / 1000), bytes_per_token: pBytes / prefillLen };
      out(rowP);
      if (!opts.json) process.stdout.write(`TP ${v.tp} p ${v.p} ${placement}: prefill ${prefillLen}: ${pms.toFixed(1)} ms, ${rowP.tokens_per_s.toFixed(0)} tok/s, ${rowP.bytes_per_token.toFixed(0)} B/token\n`);
      for (const B of batches) {
        // a 16-token prompt per sequence, then decodeLen steps of B rows
        const prompt = 16;
        await host.step({ kind: 'step', seqs: Array.from({ length: B }, (_, b) => ({ slot: b, pos: 0, n: prompt, allLogits: false })), tokens: Int32Array.from({ length: B * prompt }, (_, i) => tok(i)), freed: [] });
        const samplers = Array.from({ length: B }, () => new SequenceSampler({ temperature: 0, topK: 0, topP: 1, presencePenalty: 0, frequencyPenalty: 0 }));
        const next = Int32Array.from({ length: B }, (_, b) => tok(b));
        let sampleMs = 0;
        let bytes = 0;
        const t0 = performance.now();
        const steps: number[] = [];
        for (let s = 0; s < decodeLen; s++) {
          const res = await host.step({ kind: 'step', seqs: Array.from({ length: B }, (_, b) => ({ slot: b, pos: prompt + s, n: 1, allLogits: false })), tokens: next, freed: [] });
          const ts = performance.now();
          for (let b = 0; b < B; b++) next[b] = samplers[b]!.next(res.logits.subarray(b * V, (b + 1) * V), V);
          sampleMs += performance.now() - ts;
          steps.push(res.ms + (performance.now() - ts));
          bytes += res.commBytes;
        }
        const total = performance.now() - t0;
        const tps = (B * decodeLen) / (total / 1000);
        const row: Record<string, unknown> = {
          kind: 'decode', tp: v.tp, p: v.p, placement, batch: B, tokens: decodeLen, ms_per_step: median(steps), output_tokens_per_s: tps,
          sampler_share: sampleMs / total, bytes_per_token: bytes / (B * decodeLen),
        };
        if (B === 1 && v.tp === 1) {
          const limit = bw / (weightsPerToken * 4);
          row['roofline_tokens_per_s'] = limit;
          row['fraction_of_roofline'] = tps / limit;
          row['weight_bytes_per_token'] = weightsPerToken * 4;
        }
        out(row);
        if (!opts.json) {
          process.stdout.write(`TP ${v.tp} p ${v.p} ${placement}: decode batch ${B}: ${median(steps).toFixed(2)} ms/step, ${tps.toFixed(0)} tok/s, sampler ${(100 * (row['sampler_share'] as number)).toFixed(1)}%, ${(bytes / (B * decodeLen)).toFixed(0)} B/token` +
            (row['roofline_tokens_per_s'] ? `, roofline ${(row['roofline_tokens_per_s'] as number).toFixed(0)} tok/s (${(100 * (row['fraction_of_roofline'] as number)).toFixed(0)}%)` : '') + '\n');
        }
      }
    } finally {
      await host.close();
    }
  }
}
