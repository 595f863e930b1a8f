/**
 * `caat bench infer`: the inference engine's step on the small config of `bench train` (context
 * raised to 1024 so a 512-token prompt fits): prefill of 512 tokens in one step, and decode of 128
 * tokens at batch 1, 8 and 32 (each step one row per sequence, greedy sampling on rank 0 included),
 * per TP degree, p and placement. Reports tokens/s, ms per step, the sampler's share of a decode
 * step, bytes communicated per token, and, for decode at batch 1, the limit set by reading every
 * weight once per token at the single-core read bandwidth measured here (ReadBandwidth; samples
 * before the run and around the batch-1 decode) (llama-bench's pp512/tg128).
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

// The WebAssembly JS API, typed here (the project's type libraries do not declare it).
export interface WasmMemory {
  readonly buffer: ArrayBufferLike;
}
interface WasmApi {
  Memory: new (descriptor: { initial: number }) => WasmMemory;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: Record<string, Record<string, unknown>>) => { readonly exports: Record<string, unknown> };
}
const WA = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

const leb = (n: number): number[] => {
  const o: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    o.push(b);
  } while (n);
  return o;
};

/**
 * A WebAssembly function sum(from, to) over an imported memory: 128-bit loads into four f32x4
 * accumulators, 64 bytes per iteration (returns lane 0 of their sum so the loads cannot be dropped).
 * A streaming read with nothing else in the loop, one core.
 */
export function wasmReader(mem: WasmMemory): (from: number, to: number) => number {
  const sec = (id: number, bytes: number[]): number[] => [id, ...leb(bytes.length), ...bytes];
  const acc = (l: number, off: number): number[] => [0x20, l, 0x20, 0x00, 0xfd, 0x00, 0x04, off, 0xfd, 0xe4, 0x01, 0x21, l];
  const body = [
    0x01, 0x04, 0x7b, // 4 v128 locals
    0x02, 0x40, 0x03, 0x40, // block, loop
    0x20, 0x00, 0x20, 0x01, 0x4f, 0x0d, 0x01, // from >= to: break
    ...acc(2, 0x00), ...acc(3, 0x10), ...acc(4, 0x20), ...acc(5, 0x30),
    0x20, 0x00, 0x41, 0xc0, 0x00, 0x6a, 0x21, 0x00, // from += 64
    0x0c, 0x00, 0x0b, 0x0b,
    0x20, 0x02, 0x20, 0x03, 0xfd, 0xe4, 0x01, 0x20, 0x04, 0xfd, 0xe4, 0x01, 0x20, 0x05, 0xfd, 0xe4, 0x01, 0xfd, 0x1f, 0x00, 0x0b,
  ];
  const bytes = new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...sec(1, [0x01, 0x60, 0x02, 0x7f, 0x7f, 0x01, 0x7d]), // (i32, i32) -> f32
    ...sec(2, [0x01, 0x01, 0x6d, 0x03, 0x6d, 0x65, 0x6d, 0x02, 0x00, 0x01]), // import m.mem
    ...sec(3, [0x01, 0x00]),
    ...sec(7, [0x01, 0x03, 0x73, 0x75, 0x6d, 0x00, 0x00]), // export "sum"
    ...sec(10, [0x01, ...leb(body.length), ...body]),
  ]);
  const inst = new WA.Instance(new WA.Module(bytes), { m: { mem } });
  return inst.exports['sum'] as (from: number, to: number) => number;
}

export interface Bandwidth {
  /** Bytes/s: the larger of the two readers' medians. */
  readBytesPerS: number;
  wasmBytesPerS: number;
  nativeBytesPerS: number | null;
}

/**
 * Single-core read bandwidth (bytes/s): a streaming read of a 256 MiB buffer (`bytes`; far larger
 * than any cache), the larger of two medians of `repeats`: the WebAssembly reader above and the backend's sum
 * of squares. Reads only: a copy is not used, since a core's loads and (non-temporal) stores overlap,
 * so copy bytes overstate what it can read.
 */
export class ReadBandwidth {
  private readonly mem;
  private readonly read;
  private readonly be;
  private readonly x;
  private readonly wasm: number[] = [];
  private readonly native: number[] = [];

  constructor(backend?: string, readonly bytes = 256 * 1024 * 1024) {
    if (!(Number.isInteger(bytes / 65536) && bytes > 0)) throw new Error('ReadBandwidth: bytes must be a positive multiple of 64 KiB');
    this.mem = new WA.Memory({ initial: bytes / 65536 });
    this.read = wasmReader(this.mem);
    new Float32Array(this.mem.buffer).fill(1);
    this.be = selectBackend(backend, { quiet: true });
    this.x = this.be.alloc(this.bytes / 4);
    for (let i = 0; i < this.x.length; i += 1024) this.x[i] = 1;
    this.read(0, this.bytes);
    this.be.sumSquares(this.x, this.x.length);
  }

  /** Take `repeats` more samples of each reader. */
  sample(repeats: number): void {
    for (let r = 0; r < repeats; r++) {
      let t0 = performance.now();
      this.read(0, this.bytes);
      this.wasm.push(this.bytes / ((performance.now() - t0) / 1000));
      t0 = performance.now();
      this.be.sumSquares(this.x, this.x.length);
      this.native.push(this.bytes / ((performance.now() - t0) / 1000));
    }
  }

  get result(): Bandwidth {
    const w = median(this.wasm);
    const n = this.native.length ? median(this.native) : null;
    return { readBytesPerS: Math.max(w, n ?? 0), wasmBytesPerS: w, nativeBytesPerS: n };
  }

  release(): void {
    this.be.release(this.x);
  }
}

/** Single-core read bandwidth (bytes/s), five samples of each reader (see ReadBandwidth). */
export function measureReadBandwidth(backend?: string): number {
  const bw = new ReadBandwidth(backend);
  bw.sample(5);
  bw.release();
  return bw.result.readBytesPerS;
}

interface Variant {
  tp: number;
  p: number;
  workers: number;
}

export async function benchInferCommand(opts: { json?: boolean; backend?: string; variants?: string; batches?: string; prefill?: string; decode?: string; precision?: string }): Promise<void> {
  const precisions = (opts.precision ?? 'fp32').split(',').map((x) => x.trim());
  for (const x of precisions) if (x !== 'fp32' && x !== 'bf16') throw new UserError(`--precision: expected fp32, bf16 or fp32,bf16, got ${JSON.stringify(opts.precision)}`);
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
  const reader = new ReadBandwidth(opts.backend);
  reader.sample(5);
  const bw0 = reader.result;
  out({ kind: 'bandwidth', read_bytes_per_s: bw0.readBytesPerS, wasm_read_bytes_per_s: bw0.wasmBytesPerS, native_read_bytes_per_s: bw0.nativeBytesPerS, machine });
  if (!opts.json) process.stdout.write(`single-core read bandwidth ${(bw0.readBytesPerS / 1e9).toFixed(2)} GB/s (256 MiB streaming read: wasm ${(bw0.wasmBytesPerS / 1e9).toFixed(2)}, native sum of squares ${((bw0.nativeBytesPerS ?? 0) / 1e9).toFixed(2)})\n`);
  for (const v of variants) for (const prec of precisions as ('fp32' | 'bf16')[]) {
    const cfg = resolveConfig(cfgModel, { tp: v.tp, p: v.p });
    const params = new Map<string, Float32Array>();
    // bytes a decode step reads per token: every weight once (one row of the embedding), the GEMM
    // weights at 2 bytes each with bf16 weights
    let weightsPerToken = 0;
    let weightBytesPerToken = 0;
    paramSpecs(cfg).forEach((spec, i) => {
      const full = initFull(spec, i, 1234) as Float32Array;
      params.set(spec.name, full);
      const n = spec.name === 'model.embed_tokens.weight' ? cfg.model.hidden : full.length;
      weightsPerToken += n;
      weightBytesPerToken += n * (prec === 'bf16' && /(_proj|lm_head)\.weight$/.test(spec.name) ? 2 : 4);
    });
    const maxB = Math.max(...batches);
    const host = placeRanks({ cfg, params, weights: prec, backend: opts.backend, workers: v.workers, launched: null, slots: maxB, maxLen: cfg.model.seqLen, config: {} });
    const placement = `${host.placement}${v.workers ? `×${v.workers}` : ''}`;
    const label = `TP ${v.tp} p ${v.p} ${placement}${precisions.length > 1 || prec !== 'fp32' ? ` ${prec}` : ''}`;
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
      const rowP = { kind: 'prefill', tp: v.tp, p: v.p, placement, precision: prec, tokens: prefillLen, ms: pms, tokens_per_s: prefillLen / (pms / 1000), bytes_per_token: pBytes / prefillLen };
      out(rowP);
      if (!opts.json) process.stdout.write(`${label}: prefill ${prefillLen}: ${pms.toFixed(1)} ms, ${rowP.tokens_per_s.toFixed(0)} tok/s, ${rowP.bytes_per_token.toFixed(0)} B/token\n`);
      for (const B of batches) {
        // a 16-token prompt per sequence, then decodeLen steps of B rows
        const prompt = 16;
        await host.step({ kind: 'step', seqs: Array.from({ length: B }, (_, b) => ({ slot: b, pos: 0, n: prompt, allLogits: false })), tokens: Int32Array.from({ length: B * prompt }, (_, i) => tok(i)), freed: [] });
        const roof = B === 1 && v.tp === 1;
        // the roofline's bandwidth: samples taken just before and just after this decode run as well
        if (roof) reader.sample(3);
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
          kind: 'decode', tp: v.tp, p: v.p, placement, precision: prec, batch: B, tokens: decodeLen, ms_per_step: median(steps), output_tokens_per_s: tps,
          sampler_share: sampleMs / total, bytes_per_token: bytes / (B * decodeLen),
        };
        if (roof) {
          reader.sample(3);
          const bw = reader.result.readBytesPerS;
          const limit = bw / weightBytesPerToken;
          row['read_bytes_per_s'] = bw;
          row['roofline_tokens_per_s'] = limit;
          // from the median step (robust to other load on the machine) and from the mean over the run
          row['fraction_of_roofline'] = B / (median(steps) / 1000) / limit;
          row['fraction_of_roofline_mean'] = tps / limit;
          row['weight_bytes_per_token'] = weightBytesPerToken;
          row['weights_per_token'] = weightsPerToken;
        }
        out(row);
        if (!opts.json) {
          process.stdout.write(`${label}: decode batch ${B}: ${median(steps).toFixed(2)} ms/step, ${tps.toFixed(0)} tok/s, sampler ${(100 * (row['sampler_share'] as number)).toFixed(1)}%, ${(bytes / (B * decodeLen)).toFixed(0)} B/token` +
            (row['roofline_tokens_per_s'] ? `, roofline ${(row['roofline_tokens_per_s'] as number).toFixed(0)} tok/s (${(100 * (row['fraction_of_roofline'] as number)).toFixed(0)}% at the median step, ${(100 * (row['fraction_of_roofline_mean'] as number)).toFixed(0)}% over the run)` : '') + '\n');
        }
      }
    } finally {
      await host.close();
    }
  }
  reader.release();
}
