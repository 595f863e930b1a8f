/**
 * `caat bench kernels`: kernel throughput of every available backend.
 *
 * - GEMM GFLOP/s (2·M·N·K flops per call) for C[M,N] = A[M,K] · B[N,K]ᵀ, the layout of a linear
 *   layer's forward pass with weights stored [out, in] (transA = false, transB = true, packed leading
 *   dimensions, alpha 1, beta 0): op "gemm" for the training shapes, op "gemv" for the skinny M ≤ 8
 *   decode shapes.
 * - GB/s (bytes read + bytes written, float32) for softmaxForward, rmsnormForward and swigluForward.
 * - For the native backend, the same GEMM timed inside C (nativeGemmTimedInC: the addon times the
 *   BLAS call with a monotonic clock), interleaved with the JS-side calls so both see the same load:
 *   `c_gflops`, and `ratio_vs_c` = JS-side GFLOP/s / C-side GFLOP/s, i.e. how much of the BLAS
 *   throughput survives the call from JS (N-API, argument checks).
 *
 * - For the native backend, every float32 GEMM implementation built into the addon on the model's
 *   shapes (op "gemm_impl": the small config of `bench train`, h 512, ffn 1376, V 8192, B·T = 2048
 *   tokens, forward NT, backward NN and TN, and decode rows M = 1, 8, 32), each timed inside C with
 *   that implementation forced (the implementations in turn, so they see the same load), with
 *   `impl`, `chosen` (whether the measured choice, src/backend/gemm-choice.ts, runs it for this shape)
 *   and the shape class; and bf16 GEMM rows (op "gemm_bf16": backend.gemmBf16 timed from JS, paired
 *   with the same call timed inside C, `ratio_vs_c`; `bf16_path` says whether oneDNN's bf16 matmul
 *   ran (`bf16_isa`, `bf16_impl`: the ISA and implementation oneDNN used) or the operands were widened
 *   to float32).
 *
 * Every measurement: one untimed warm-up call, then `repeats` timed calls, median reported. A
 * measurement has a time budget: timed repeats stop once the budget is spent (at least one runs),
 * and a call whose warm-up alone exceeds the budget is reported from that single call (repeats 1,
 * warmup 0: at seconds per call the JIT warm-up is negligible). The js backend gets a small budget
 * since its GEMM runs at about 1 GFLOP/s, and a js GEMM whose one call is estimated to exceed 8 s
 * (from the rate of the js GEMMs already measured) is skipped with a note.
 *
 * Operands are allocated once per backend with `backend.alloc` (so the wasm backend runs without
 * copies) and filled with deterministic pseudo-random values.
 *
 * With --json, stdout holds exactly one JSON object per measurement and nothing else; the machine
 * description, progress and skipped backends go to stderr.
 */
import * as nativeModule from '../backend/native.js';
import * as wasmModule from '../backend/wasm.js';
import { isBackendName, loadBackend, probeBackends } from '../backend/index.js';
import type { Backend, BackendName, FloatArray } from '../backend/types.js';
import { describeMachine, formatMachine, type MachineInfo } from './machine.js';

export type BenchOp = 'gemm' | 'gemv' | 'gemm_impl' | 'gemm_bf16' | 'softmax' | 'rmsnorm' | 'swiglu';

export interface BenchRecord {
  op: BenchOp;
  backend: BackendName;
  /** gemm/gemv: [M, N, K]; softmax/rmsnorm/swiglu: [rows, cols]. */
  shape: number[];
  /** GEMM throughput, 2·M·N·K / median time. */
  gflops?: number;
  /** Memory throughput of the row-wise kernels, bytes read + written / median time. */
  gbps?: number;
  median_ms: number;
  /** Timed calls the median is over. */
  repeats: number;
  /** Untimed warm-up calls before them (0 when one call exceeded the time budget). */
  warmup: number;
  /** native GEMM only: the same call timed inside C. */
  c_gflops?: number;
  /** native GEMM only: gflops / c_gflops. */
  ratio_vs_c?: number;
  /** gemm_impl, gemm_bf16: the transposes, "NT" (A·Bᵀ), "NN" or "TN". */
  trans?: string;
  /** gemm_impl: the implementation timed (onednn, matmul, openblas, skinny); gemm/gemv: the one the choice runs. */
  impl?: string;
  /** gemm_impl: whether the measured choice runs this implementation for this shape. */
  chosen?: boolean;
  /** gemm_impl, gemm/gemv on native: the shape class (e.g. "NT_m65+_large"). */
  gemm_class?: string;
  /** gemm_bf16: 'matmul' (oneDNN bf16 primitive) or 'widen' (float32 GEMM of the widened operands). */
  bf16_path?: string;
  /** gemm_bf16: the CPU ISA oneDNN dispatches to, and its bf16 matmul implementation (null: none). */
  bf16_isa?: string | null;
  bf16_impl?: string | null;
}

export interface BenchShapes {
  /** [M, N, K] */
  gemm: [number, number, number][];
  /** [M, N, K] with M ≤ 8 */
  gemv: [number, number, number][];
  /** [rows, cols] for softmax, rmsnorm and swiglu. */
  rowwise: [number, number];
  /** native: [trans, M, N, K] for the per-implementation rows and the bf16 rows. */
  model: [string, number, number, number][];
}

/** The small config of `bench train` (h 512, ffn 1376, V 8192, B 8 × T 256 = 2048 tokens, TP 1). */
export const FULL_SHAPES: BenchShapes = {
  gemm: [
    [2048, 1536, 512], // qkv
    [2048, 1376, 512], // ffn gate / up
    [2048, 512, 1376], // ffn down
    [2048, 8192, 512], // lm head
    [32, 1376, 512], // decode, 32 sequences
  ],
  gemv: [
    [1, 1376, 512],
    [8, 1376, 512],
    [1, 8192, 512],
  ],
  rowwise: [2048, 4096],
  model: [
    ['NT', 2048, 1536, 512],
    ['NT', 2048, 1376, 512],
    ['NT', 2048, 512, 1376],
    ['NT', 2048, 8192, 512],
    ['NN', 2048, 512, 1376], // backward: dX = dY · W
    ['TN', 1376, 512, 2048], // backward: dW = dYᵀ · X
    ['NT', 32, 1376, 512],
    ['NT', 8, 1376, 512],
    ['NT', 1, 1376, 512],
    ['NT', 1, 8192, 512],
  ],
};

/** Tiny shapes for tests and smoke runs (CAAT_BENCH_QUICK=1). */
export const QUICK_SHAPES: BenchShapes = {
  gemm: [
    [64, 48, 32],
    [33, 17, 65],
  ],
  gemv: [
    [1, 256, 128],
    [8, 256, 128],
  ],
  rowwise: [16, 256],
  model: [
    ['NT', 64, 48, 32],
    ['TN', 33, 17, 65],
    ['NT', 1, 256, 128],
  ],
};

export interface KernelBenchOptions {
  /** Comma-separated backend names; default: every available backend. */
  backends?: string;
  /** Timed repeats per measurement (median reported). */
  repeats: number;
  shapes?: BenchShapes;
  /** Time budget per measurement in ms (default 20 000; js: 5 000). */
  budgetMs?: number;
  jsBudgetMs?: number;
  /**
   * js only: a GEMM whose single call is estimated (from the js GEMM rate measured so far) to take
   * longer than this is skipped, with a note (default 8 000 ms; the first js GEMM always runs).
   */
  jsMaxCallMs?: number;
  /** Called with each record as soon as it is measured. */
  onRecord?: (r: BenchRecord) => void;
  /** Progress and notes (stderr in the CLI). */
  log?: (line: string) => void;
}

export interface KernelBenchResult {
  records: BenchRecord[];
  /** Backends that were not measured, with the reason. */
  skipped: { backend: BackendName; reason: string }[];
  /** Single measurements left out (js GEMMs too slow for the time cap), with the reason. */
  skippedShapes: { backend: BackendName; op: BenchOp; shape: number[]; reason: string }[];
  /** `description` of each measured backend. */
  descriptions: Map<BackendName, string>;
}

/** The native addon's in-C GEMM timer, if the native module exports it. */
type GemmTimedInC = (
  transA: boolean, transB: boolean, M: number, N: number, K: number,
  A: Float32Array, B: Float32Array, C: Float32Array, repeats: number,
) => number;

// Looked up by name so this file builds against any version of native.ts.
function nativeTimer(): GemmTimedInC | undefined {
  const f = (nativeModule as unknown as Record<string, unknown>)['nativeGemmTimedInC'];
  return typeof f === 'function' ? (f as GemmTimedInC) : undefined;
}

/** "kernels avx2, OpenBLAS core Zen, bf16 gemm …, gemm: … " from the native module's nativeInfo(). */
function nativeDetails(): string | undefined {
  const f = (nativeModule as unknown as Record<string, unknown>)['nativeInfo'];
  if (typeof f !== 'function') return undefined;
  try {
    const i = (f as () => Record<string, unknown>)();
    const b = i['bf16'] as { path: string; isa: string | null; impl: string | null } | undefined;
    const bf16 = b ? `bf16 gemm ${b.path === 'matmul' ? `oneDNN matmul ${b.impl ?? ''}` : 'widened to fp32'} (oneDNN isa ${b.isa ?? 'none'}${b.path === 'matmul' ? '' : `, bf16 matmul ${b.impl ?? 'none'}`})` : '';
    let gemm = '';
    try {
      gemm = nativeModule.nativeGemmChoice(1).summary;
    } catch {
      // no choice available
    }
    const parts = [i['isa'] ? `kernels ${String(i['isa'])}` : '', i['corename'] ? `OpenBLAS core ${String(i['corename'])}` : '', bf16, gemm, i['addon'] ? `addon ${String(i['addon'])}` : ''];
    return parts.filter((p) => p !== '').join(', ') || undefined;
  } catch {
    return undefined;
  }
}

function now(): number {
  return performance.now();
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : 0.5 * (s[m - 1]! + s[m]!);
}

export interface Measurement {
  medianMs: number;
  repeats: number;
  warmup: number;
  /** With a `paired` timer: the median of its times (ms). */
  pairedMedianMs?: number;
}

/**
 * Warm-up then timed calls within `budgetMs` (see the module comment). Times in ms.
 * `paired`, if given, is a second timer (returning ms) run right after each timed call, so both
 * medians see the same machine load (the native in-C GEMM timing); its time counts against the budget.
 */
export function measure(fn: () => void, repeats: number, budgetMs: number, paired?: () => number): Measurement {
  const t0 = now();
  fn();
  const first = now() - t0;
  if (first >= budgetMs) {
    return paired ? { medianMs: first, repeats: 1, warmup: 0, pairedMedianMs: paired() } : { medianMs: first, repeats: 1, warmup: 0 };
  }
  const times: number[] = [];
  const pairedTimes: number[] = [];
  let spent = first;
  for (let i = 0; i < repeats; i++) {
    const last = times.length ? times[times.length - 1]! + (pairedTimes[pairedTimes.length - 1] ?? 0) : first;
    if (times.length > 0 && spent + last > budgetMs) break;
    const t = now();
    fn();
    const dt = now() - t;
    times.push(dt);
    spent += now() - t;
    if (paired) {
      const tp = now();
      pairedTimes.push(paired());
      spent += now() - tp;
    }
  }
  const m: Measurement = { medianMs: median(times), repeats: times.length, warmup: 1 };
  if (paired) m.pairedMedianMs = median(pairedTimes);
  return m;
}

/** Deterministic values in [-1, 1) (xorshift32). */
function fillPseudoRandom(a: FloatArray, seed: number): void {
  let x = seed >>> 0 || 1;
  for (let i = 0; i < a.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    a[i] = x / 2147483648 - 1;
  }
}

/** Resolve the backends to measure: an explicit list must all load (errors name the reason). */
function resolveBackends(list: string | undefined): { backends: Backend[]; skipped: { backend: BackendName; reason: string }[] } {
  if (list !== undefined && list.trim() !== '' && list.trim() !== 'all') {
    const names = [...new Set(list.split(',').map((s) => s.trim()).filter((s) => s !== ''))];
    const backends: Backend[] = [];
    for (const n of names) {
      if (!isBackendName(n)) throw new Error(`unknown backend "${n}" (expected native, wasm or js)`);
      backends.push(loadBackend(n)); // throws BackendUnavailableError naming the reason
    }
    return { backends, skipped: [] };
  }
  const backends: Backend[] = [];
  const skipped: { backend: BackendName; reason: string }[] = [];
  for (const p of probeBackends()) {
    if (p.backend) backends.push(p.backend);
    else skipped.push({ backend: p.name, reason: p.reason ?? 'unavailable' });
  }
  return { backends, skipped };
}

function shapeText(shape: readonly number[]): string {
  return shape.join('x');
}

/** Measure every backend; records are also streamed to `onRecord`. */
export async function runKernelBench(o: KernelBenchOptions): Promise<KernelBenchResult> {
  const shapes = o.shapes ?? FULL_SHAPES;
  const log = o.log ?? ((): void => {});
  const { backends, skipped } = resolveBackends(o.backends);
  const records: BenchRecord[] = [];
  const skippedShapes: KernelBenchResult['skippedShapes'] = [];
  const descriptions = new Map<BackendName, string>(
    backends.map((b) => {
      const extra = b.name === 'native' ? nativeDetails() : undefined;
      return [b.name, extra ? `${b.description}; ${extra}` : b.description];
    }),
  );
  const emit = (r: BenchRecord): void => {
    records.push(r);
    o.onRecord?.(r);
  };

  for (const be of backends) {
    const budget = be.name === 'js' ? (o.jsBudgetMs ?? 5000) : (o.budgetMs ?? 20000);
    log(`bench: ${be.description}`);

    // One pool of operands per backend, sized for the largest use of each.
    const [rows, cols] = shapes.rowwise;
    const rw = rows * cols;
    const gemmShapes = [...shapes.gemm.map((s) => ['gemm', s] as const), ...shapes.gemv.map((s) => ['gemv', s] as const)];
    const sizeA = Math.max(rw, ...gemmShapes.map(([, [M, , K]]) => M * K));
    const sizeB = Math.max(rw, ...gemmShapes.map(([, [, N, K]]) => N * K));
    const sizeC = Math.max(rw, ...gemmShapes.map(([, [M, N]]) => M * N));
    const bufA = be.alloc(sizeA);
    const bufB = be.alloc(sizeB);
    const bufC = be.alloc(sizeC);
    const small1 = be.alloc(Math.max(rows, cols));
    const small2 = be.alloc(Math.max(rows, cols));
    fillPseudoRandom(bufA, 1);
    fillPseudoRandom(bufB, 2);
    fillPseudoRandom(bufC, 3);
    fillPseudoRandom(small1, 4);
    small1.forEach((v, i) => { small1[i] = 1 + 0.1 * v; });

    const timedInC = be.name === 'native' ? nativeTimer() : undefined;
    if (be.name === 'native' && !timedInC) log('bench: native module has no nativeGemmTimedInC export; ratio_vs_c omitted');

    let jsGflops: number | undefined; // js GEMM rate so far, for the per-call cap
    const maxCallMs = o.jsMaxCallMs ?? 8000;
    for (const [op, [M, N, K]] of gemmShapes) {
      const flops = 2 * M * N * K;
      if (be.name === 'js' && jsGflops !== undefined && flops / (jsGflops * 1e6) > maxCallMs) {
        const est = flops / (jsGflops * 1e9);
        const reason = `one call would take about ${est.toFixed(0)} s at ${jsGflops.toPrecision(2)} GFLOP/s (cap ${maxCallMs / 1000} s)`;
        log(`bench: ${be.name} ${op} ${shapeText([M, N, K])} skipped: ${reason}`);
        skippedShapes.push({ backend: be.name, op, shape: [M, N, K], reason });
        continue;
      }
      log(`bench: ${be.name} ${op} ${shapeText([M, N, K])}`);
      const A = bufA.subarray(0, M * K);
      const B = bufB.subarray(0, N * K);
      const C = bufC.subarray(0, M * N);
      // native: each timed JS call is followed by the same GEMM timed inside C (one call, after the
      // addon's own warm-up call), so both medians see the same machine load
      const inC =
        timedInC && A instanceof Float32Array && B instanceof Float32Array && C instanceof Float32Array
          ? (): number => 1000 * timedInC(false, true, M, N, K, A, B, C, 1)
          : undefined;
      const m = measure(() => be.gemm(false, true, M, N, K, 1, A, 0, K, B, 0, K, 0, C, 0, N), o.repeats, budget, inC);
      const rec: BenchRecord = {
        op, backend: be.name, shape: [M, N, K],
        gflops: flops / (m.medianMs * 1e6), median_ms: m.medianMs, repeats: m.repeats, warmup: m.warmup,
      };
      if (m.pairedMedianMs !== undefined && Number.isFinite(m.pairedMedianMs) && m.pairedMedianMs > 0) {
        rec.c_gflops = flops / (m.pairedMedianMs * 1e6);
        rec.ratio_vs_c = rec.gflops! / rec.c_gflops;
      }
      if (be.name === 'js') jsGflops = Math.max(jsGflops ?? 0, rec.gflops!);
      if (be.name === 'native') {
        const r = nativeModule.nativeGemmResolve(false, true, M, N, K);
        rec.impl = r.impl;
        rec.gemm_class = r.cls;
      }
      emit(rec);
    }

    if (be.name === 'native') nativeModelRows(be, shapes.model, o.repeats, budget, bufA, bufB, bufC, emit, log);

    const bw = (op: BenchOp, bytes: number, fn: () => void): void => {
      log(`bench: ${be.name} ${op} ${shapeText([rows, cols])}`);
      const m = measure(fn, o.repeats, budget);
      emit({ op, backend: be.name, shape: [rows, cols], gbps: bytes / (m.medianMs * 1e6), median_ms: m.medianMs, repeats: m.repeats, warmup: m.warmup });
    };
    const X = bufA.subarray(0, rw);
    const Y = bufB.subarray(0, rw);
    const Z = bufC.subarray(0, rw);
    bw('softmax', 2 * rw * 4, () => be.softmaxForward(Z, X, rows, cols, 1, 0));
    bw('rmsnorm', (2 * rw + rows + cols) * 4, () => be.rmsnormForward(Z, small2.subarray(0, rows), X, small1.subarray(0, cols), rows, cols, 1e-5));
    bw('swiglu', 3 * rw * 4, () => be.swigluForward(Z, X, Y, rw));

    // the wasm backend keeps its allocations until released
    const release = be.name === 'wasm' ? (wasmModule as unknown as Record<string, unknown>)['releaseWasmArray'] : undefined;
    if (typeof release === 'function') for (const a of [bufA, bufB, bufC, small1, small2]) (release as (a: FloatArray) => void)(a);
  }
  return { records, skipped, skippedShapes, descriptions };
}

/** Every float32 implementation on the model shapes, and the bf16 GEMM (see the module comment). */
function nativeModelRows(
  be: Backend, model: BenchShapes['model'], repeats: number, budget: number,
  bufA: FloatArray, bufB: FloatArray, bufC: FloatArray, emit: (r: BenchRecord) => void, log: (l: string) => void,
): void {
  const info = nativeModule.nativeInfo();
  const impls = info.gemmImpls;
  const sizeA = Math.max(...model.map(([, M, , K]) => M * K));
  const sizeB = Math.max(...model.map(([, , N, K]) => N * K));
  const sizeC = Math.max(...model.map(([, M, N]) => M * N));
  const fA = bufA.length >= sizeA ? (bufA as Float32Array) : new Float32Array(sizeA).map((_, i) => Math.sin(i));
  const fB = bufB.length >= sizeB ? (bufB as Float32Array) : new Float32Array(sizeB).map((_, i) => Math.cos(i));
  const fC = bufC.length >= sizeC ? (bufC as Float32Array) : new Float32Array(sizeC);
  for (const [trans, M, N, K] of model) {
    const tA = trans[0] === 'T';
    const tB = trans[1] === 'T';
    const A = fA.subarray(0, M * K);
    const B = fB.subarray(0, N * K);
    const C = fC.subarray(0, M * N);
    const flops = 2 * M * N * K;
    const { cls, impl: chosen, candidates } = nativeModule.nativeGemmResolve(tA, tB, M, N, K);
    const cands = impls.filter((x) => candidates.includes(x));
    log(`bench: native gemm_impl ${trans} ${shapeText([M, N, K])} (${cands.join(', ')})`);
    // warm-up each, then rounds in turn within the budget
    const t0 = now();
    for (const impl of cands) nativeModule.nativeGemmTimedInC(tA, tB, M, N, K, A, B, C, 1, { impl });
    const first = now() - t0;
    const times = new Map<string, number[]>(cands.map((x) => [x, []]));
    let spent = first;
    for (let r = 0; r < repeats && (r === 0 || spent + first <= budget * cands.length); r++) {
      for (const impl of cands) times.get(impl)!.push(nativeModule.nativeGemmTimedInC(tA, tB, M, N, K, A, B, C, 1, { impl }) * 1000);
      spent = now() - t0;
    }
    for (const impl of cands) {
      const ms = median(times.get(impl)!);
      emit({
        op: 'gemm_impl', backend: 'native', shape: [M, N, K], trans, impl, chosen: impl === chosen, gemm_class: cls,
        gflops: flops / (ms * 1e6), median_ms: ms, repeats: times.get(impl)!.length, warmup: 1,
      });
    }
  }
  // bf16: operands rounded once, then backend.gemmBf16 from JS paired with the same call timed in C
  const hA = new Uint16Array(sizeA);
  const hB = new Uint16Array(sizeB);
  be.toBf16(hA, fA.subarray(0, sizeA), sizeA);
  be.toBf16(hB, fB.subarray(0, sizeB), sizeB);
  const b = info.bf16;
  for (const [trans, M, N, K] of model) {
    const tA = trans[0] === 'T';
    const tB = trans[1] === 'T';
    const A = hA.subarray(0, M * K);
    const B = hB.subarray(0, N * K);
    const C = fC.subarray(0, M * N);
    log(`bench: native gemm_bf16 ${trans} ${shapeText([M, N, K])}`);
    const lda = tA ? M : K;
    const ldb = tB ? K : N;
    const m = measure(() => be.gemmBf16(tA, tB, M, N, K, 1, A, 0, lda, B, 0, ldb, 0, C, 0, N), repeats, budget,
      () => 1000 * nativeModule.nativeGemmBf16TimedInC(tA, tB, M, N, K, A, B, C, 1));
    const flops = 2 * M * N * K;
    const rec: BenchRecord = {
      op: 'gemm_bf16', backend: 'native', shape: [M, N, K], trans, gflops: flops / (m.medianMs * 1e6), median_ms: m.medianMs,
      repeats: m.repeats, warmup: m.warmup, bf16_path: b.path, bf16_isa: b.isa, bf16_impl: b.impl,
    };
    if (m.pairedMedianMs !== undefined && m.pairedMedianMs > 0) {
      rec.c_gflops = flops / (m.pairedMedianMs * 1e6);
      rec.ratio_vs_c = rec.gflops! / rec.c_gflops;
    }
    if (b.path === 'widen') rec.impl = nativeModule.nativeGemmResolve(tA, tB, M, N, K).impl;
    emit(rec);
  }
}

// ---------------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------------

function fmtNum(v: number | undefined, digits = 3): string {
  if (v === undefined) return '';
  if (v === 0) return '0';
  const mag = Math.floor(Math.log10(Math.abs(v)));
  const decimals = Math.max(0, Math.min(6, digits - 1 - mag));
  return v.toFixed(decimals);
}

/** The human-readable table (aligned columns; numbers right-aligned). */
export function formatTable(records: readonly BenchRecord[], descriptions: ReadonlyMap<string, string> = new Map()): string[] {
  const header = ['backend', 'op', 'shape', 'impl', 'median ms', 'runs', 'throughput', 'in C', 'JS/C'];
  const rows = records.map((r) => [
    r.backend,
    r.op,
    `${r.trans ? `${r.trans} ` : ''}${shapeText(r.shape)}`,
    `${r.impl ?? (r.bf16_path === 'matmul' ? `oneDNN ${r.bf16_impl ?? ''}` : '')}${r.chosen ? ' *' : ''}`,
    fmtNum(r.median_ms, 4),
    `${r.repeats}${r.warmup === 0 ? '*' : ''}`,
    r.gflops !== undefined ? `${fmtNum(r.gflops)} GFLOP/s` : `${fmtNum(r.gbps)} GB/s`,
    r.c_gflops !== undefined ? `${fmtNum(r.c_gflops)} GFLOP/s` : '',
    r.ratio_vs_c !== undefined ? fmtNum(r.ratio_vs_c, 3) : '',
  ]);
  const right = [false, false, false, false, true, true, true, true, true];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (right[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  const out = [line(header), line(widths.map((w) => '-'.repeat(w)))];
  let prev: string | undefined;
  for (let i = 0; i < rows.length; i++) {
    const b = records[i]!.backend;
    if (prev !== undefined && b !== prev) out.push('');
    prev = b;
    out.push(line(rows[i]!));
  }
  if (records.some((r) => r.warmup === 0)) out.push('', '* in runs: one call over the time budget, measured once, without warm-up');
  if (records.some((r) => r.chosen)) out.push('* in impl: the implementation the measured GEMM choice runs for that shape');
  if (descriptions.size) out.push('', ...[...descriptions].map(([n, d]) => `${n}: ${d}`));
  return out;
}

export function parseRepeats(s: string | undefined): number {
  const v = s === undefined ? 7 : Number(s);
  if (!Number.isInteger(v) || v < 1 || (s !== undefined && !/^\s*\d+\s*$/.test(s))) {
    throw new Error(`--repeats must be a positive integer, got "${s}"`);
  }
  return v;
}

/** Entry point of `caat bench kernels`. Set CAAT_BENCH_QUICK=1 for tiny shapes (smoke tests). */
export async function benchKernelsCommand(opts: { json?: boolean; backend?: string; repeats?: string }): Promise<void> {
  const repeats = parseRepeats(opts.repeats);
  const quick = process.env['CAAT_BENCH_QUICK'] === '1';
  const json = opts.json === true;
  const out = (s: string): void => void process.stdout.write(`${s}\n`);
  const err = (s: string): void => void process.stderr.write(`${s}\n`);
  const machine: MachineInfo = describeMachine();
  const info = (s: string): void => (json ? err(s) : out(s));
  for (const l of formatMachine(machine)) info(l);
  if (quick) info('bench: CAAT_BENCH_QUICK=1, tiny shapes');

  const result = await runKernelBench({
    backends: opts.backend,
    repeats,
    shapes: quick ? QUICK_SHAPES : FULL_SHAPES,
    log: err,
    onRecord: (r) => {
      if (json) out(JSON.stringify(r));
    },
  });
  for (const s of result.skipped) (json ? err : out)(`${s.backend}: skipped (${s.reason})`);
  if (!json) {
    out('');
    for (const l of formatTable(result.records, result.descriptions)) out(l);
    for (const s of result.skippedShapes) out(`${s.backend} ${s.op} ${shapeText(s.shape)}: skipped (${s.reason})`);
  }
}
