/**
 * The native backend: an N-API addon (native/, built by `npm run build:native`) whose GEMM is oneDNN's
 * `dnnl_sgemm` or OpenBLAS's `cblas_sgemm`, with a hand-written kernel for skinny products (M ≤ 8,
 * decoding; M ≤ 16 with OpenBLAS, where it is measured faster), fused attention (GEMM + softmax per
 * (batch, head) inside C++, skipping the masked upper triangle) and vectorised C++ for every other
 * kernel (AVX-512, else AVX2 + FMA, when the CPU has it, chosen at load time; CAAT_NATIVE_ISA=baseline or avx2 caps the choice; baseline is the
 * portable build). Float32 only; operands are used in place (SharedArrayBuffer-backed arrays and
 * subarray views included), never copied.
 *
 * Addons (native/build/Release/):
 *   caatnet_native.node           oneDNN when it was found at build time, else OpenBLAS
 *   caatnet_native_openblas.node  OpenBLAS, built in addition when both libraries exist
 * `loadNativeBackend` takes oneDNN first; `blas: 'openblas'` or env CAAT_NATIVE_BLAS=openblas (onednn)
 * selects one explicitly.
 *
 * Threads: `threads` (default 1, one rank per core) is the BLAS thread count and the width of the
 * skinny kernel's parallel loop. With oneDNN (OpenMP runtime) the setting belongs to the calling
 * thread, so worker threads are independent; OpenBLAS has one process-wide setting.
 *
 * Helpers for benchmarks:
 *   nativeInfo(blas?): NativeInfo
 *     which addon loads and what it runs on ({ blas, version, threads, isa, coretype, ... }).
 *   nativeGemmTimedInC(transA, transB, M, N, K, A, B, C, repeats, opts?): number
 *     C = op(A)·op(B) (alpha 1, beta 0) with packed operands (lda/ldb/ldc equal to the stored row
 *     lengths), through the same dispatch as `gemm`, `repeats` calls each timed inside C with a
 *     monotonic clock (no warm-up call: warm up first). Returns the median seconds per call; compare
 *     with the time of `backend.gemm` measured in JS to get the binding overhead.
 *   setNativeGemmPath(path, blas?)
 *     'auto' (default), 'blas' (BLAS for every shape) or 'skinny' (hand-written kernel for every shape),
 *     process-wide for that addon; for tests and benchmarks.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fromBf16Ref, gemmBf16ViaF32, toBf16Ref } from './bf16.js';
import { checkGemm, checked } from './check.js';
import { type Backend, type BackendOptions, BackendUnavailableError, type FloatArray, KernelError } from './types.js';

export type NativeBlas = 'onednn' | 'openblas';

export interface NativeOptions extends BackendOptions {
  /** Which BLAS build to load. Default: env CAAT_NATIVE_BLAS, else oneDNN when built, else OpenBLAS. */
  blas?: NativeBlas;
}

export interface NativeInfo {
  blas: NativeBlas;
  /** Library version, e.g. "2.6.3" (oneDNN) or "0.3.21" (OpenBLAS). */
  version: string;
  /** The library's own configuration string. */
  config: string;
  /** Threads set for the calling thread (the addon's current setting). */
  threads: number;
  /** The library's own view: omp_get_max_threads() (oneDNN) or openblas_get_num_threads(). */
  libraryThreads: number;
  /** Kernel build in use: 'avx512', 'avx2' or 'baseline'. */
  isa: string;
  /** GEMM path: 0 automatic, 1 BLAS always, 2 skinny kernel always. */
  gemmPath: number;
  /** OpenBLAS's kernel set in use (e.g. "Haswell"); null for oneDNN. */
  corename: string | null;
  /** process.env.OPENBLAS_CORETYPE (this machine sets it on purpose), or null. */
  coretype: string | null;
  /** Path of the loaded addon. */
  addon: string;
}

type F32 = Float32Array;

/** The addon's exports (native/src/addon.cc). Float32Array only. */
interface Addon {
  info(): Omit<NativeInfo, 'coretype' | 'addon'>;
  setThreads(n: number): void;
  setGemmPath(mode: number): void;
  gemm(tA: boolean, tB: boolean, M: number, N: number, K: number, alpha: number, A: F32, offA: number, lda: number,
    B: F32, offB: number, ldb: number, beta: number, C: F32, offC: number, ldc: number): void;
  gemmTimedInC(tA: boolean, tB: boolean, M: number, N: number, K: number, A: F32, B: F32, C: F32, repeats: number): number;
  attentionForward(out: F32, att: F32, q: F32, k: F32, v: F32, B: number, Tq: number, Tk: number, NH: number, NKV: number,
    HD: number, kvBatchStride: number): void;
  attentionBackward(dq: F32, dk: F32, dv: F32, scratch: F32, dout: F32, q: F32, k: F32, v: F32, att: F32, B: number,
    T: number, NH: number, NKV: number, HD: number): void;
  softmaxForward(out: F32, inp: F32, rows: number, cols: number, scale: number, causalQ: number): void;
  softmaxBackward(dinp: F32, dout: F32, out: F32, rows: number, cols: number, scale: number): void;
  rmsnormForward(out: F32, rstd: F32, x: F32, w: F32, rows: number, cols: number, eps: number): void;
  rmsnormBackward(dx: F32, dw: F32, dout: F32, x: F32, w: F32, rstd: F32, rows: number, cols: number): void;
  ropeForward(x: F32, cos: F32, sin: F32, B: number, T: number, H: number, HD: number, pos0: number): void;
  ropeBackward(x: F32, cos: F32, sin: F32, B: number, T: number, H: number, HD: number, pos0: number): void;
  swigluForward(out: F32, a: F32, b: F32, n: number): void;
  swigluBackward(da: F32, db: F32, dout: F32, a: F32, b: F32, n: number): void;
  rowMax(out: F32, x: F32, rows: number, cols: number): void;
  rowSumExp(out: F32, x: F32, shift: F32, rows: number, cols: number): void;
  pickTarget(out: F32, x: F32, targets: Int32Array, rows: number, cols: number, vocabStart: number): void;
  crossEntropyBackward(dlogits: F32, logits: F32, targets: Int32Array, lse: F32, rows: number, cols: number,
    vocabStart: number, gradScale: number): void;
  embeddingForward(out: F32, table: F32, tokens: Int32Array, n: number, C: number, vocabStart: number, tableRows: number): void;
  embeddingBackward(dtable: F32, dout: F32, tokens: Int32Array, n: number, C: number, vocabStart: number, tableRows: number): void;
  add(out: F32, a: F32, b: F32, n: number): void;
  axpy(y: F32, alpha: number, x: F32, n: number): void;
  scale(x: F32, alpha: number, n: number): void;
  reduceSum(out: F32, srcs: readonly F32[], n: number): void;
  sumSquares(x: F32, n: number): number;
  adamw(param: F32, grad: F32, m: F32, v: F32, n: number, beta1: number, beta2: number, eps: number, stepSize: number,
    bc2sqrt: number, decay: number, gradScale: number): void;
}

const ADDON_FILES: Record<NativeBlas, readonly string[]> = {
  // Searched in this order; the first that loads and reports the wanted BLAS is used.
  onednn: ['caatnet_native.node'],
  openblas: ['caatnet_native_openblas.node', 'caatnet_native.node'],
};

/**
 * Where the addons are: CAAT_NATIVE_ADDON_DIR when set (a build kept elsewhere), else
 * native/build/Release of the package that holds this file (dist/src/backend or src/backend).
 */
function releaseDir(): string | undefined {
  const override = process.env['CAAT_NATIVE_ADDON_DIR'];
  if (override) return override;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const cand = join(dir, 'native', 'build', 'Release');
    if (existsSync(join(dir, 'native', 'binding.gyp')) || existsSync(cand)) return cand;
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return undefined;
}

const requireAddon = createRequire(import.meta.url);
const loaded = new Map<string, { addon: Addon; path: string; blas: NativeBlas }>();

function wantedBlas(opt?: NativeBlas): NativeBlas | undefined {
  if (opt !== undefined) return opt;
  const env = process.env['CAAT_NATIVE_BLAS'];
  if (env === undefined || env === '' || env === 'auto') return undefined;
  if (env === 'onednn' || env === 'openblas') return env;
  throw new BackendUnavailableError('native', `CAAT_NATIVE_BLAS = "${env}" (expected onednn or openblas)`);
}

/** Load (once per thread) the addon for `blas`, or the preferred one. Throws BackendUnavailableError. */
function loadAddon(blas?: NativeBlas): { addon: Addon; path: string; blas: NativeBlas } {
  const want = wantedBlas(blas);
  const key = want ?? 'auto';
  const hit = loaded.get(key);
  if (hit) return hit;
  const dir = releaseDir();
  if (dir === undefined) throw new BackendUnavailableError('native', 'cannot locate the package directory (native/build/Release)');
  const order: NativeBlas[] = want ? [want] : ['onednn', 'openblas'];
  const reasons: string[] = [];
  for (const b of order) {
    for (const file of ADDON_FILES[b]) {
      const path = join(dir, file);
      if (!existsSync(path)) {
        reasons.push(`${file} not built`);
        continue;
      }
      let addon: Addon;
      try {
        addon = requireAddon(path) as Addon;
      } catch (e) {
        reasons.push(`${file} failed to load: ${(e as Error).message.split('\n')[0]}`);
        continue;
      }
      const got = addon.info().blas;
      if (got !== b) {
        reasons.push(`${file} is built with ${got}`);
        continue;
      }
      const res = { addon, path, blas: b };
      loaded.set(key, res);
      return res;
    }
  }
  const what = want ? `${want} addon` : 'addon';
  throw new BackendUnavailableError(
    'native',
    `no usable ${what} in ${dir} (${[...new Set(reasons)].join('; ')}); run \`npm run build:native\` (needs libdnnl-dev or libopenblas-dev)`,
  );
}

// The thread count last given to each addon from this JS thread (the addon's setting is per OS thread
// for oneDNN, so a worker's setting never leaks into another's).
const threadsSet = new WeakMap<Addon, number>();

function useThreads(addon: Addon, threads: number): void {
  if (threadsSet.get(addon) !== threads) {
    addon.setThreads(threads);
    threadsSet.set(addon, threads);
  }
}

function f32(kernel: string, a: FloatArray): F32 {
  if (!(a instanceof Float32Array)) {
    throw new KernelError(kernel, `the native backend works in float32 only; got a ${(a as object).constructor.name}`);
  }
  return a;
}

function threadCount(opts: BackendOptions): number {
  const t = opts.threads ?? 1;
  if (!Number.isInteger(t) || t < 1) throw new Error(`native backend: threads must be a positive integer, got ${t}`);
  return t;
}

function describe(addon: Addon, blas: NativeBlas, threads: number): string {
  const i = addon.info();
  const lib = blas === 'onednn' ? `oneDNN ${i.version}` : `OpenBLAS ${i.version}${i.corename ? ` ${i.corename}` : ''}`;
  return `native (${lib}, ${threads} thread${threads === 1 ? '' : 's'}${i.isa === 'avx512' ? '' : `, ${i.isa} kernels`})`;
}

/** The unchecked backend over a loaded addon (every array is a Float32Array after `f32`). */
function rawNativeBackend(addon: Addon, blas: NativeBlas, threads: number): Backend {
  const t = (): void => useThreads(addon, threads);
  t();
  const be: Backend = {
    name: 'native',
    description: describe(addon, blas, threads),

    alloc(n, shared) {
      return shared ? new Float32Array(new SharedArrayBuffer(n * 4)) : new Float32Array(n);
    },

    release() {},

    toBf16(out, x, n) {
      toBf16Ref(out, x, n);
    },

    fromBf16(out, x, n) {
      fromBf16Ref(out, x, n);
    },

    gemmBf16(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc) {
      gemmBf16ViaF32(be.gemm, transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc);
    },

    gemm(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc) {
      t();
      addon.gemm(transA, transB, M, N, K, alpha, f32('gemm', A), offA, lda, B as F32, offB, ldb, beta, C as F32, offC, ldc);
    },

    attentionForward(out, att, q, k, v, B, Tq, Tk, NH, NKV, HD, kvBatchStride) {
      t();
      addon.attentionForward(f32('attentionForward', out), att as F32, q as F32, k as F32, v as F32, B, Tq, Tk, NH, NKV, HD, kvBatchStride);
    },

    attentionBackward(dq, dk, dv, scratch, dout, q, k, v, att, B, T, NH, NKV, HD) {
      t();
      addon.attentionBackward(f32('attentionBackward', dq), dk as F32, dv as F32, scratch as F32, dout as F32, q as F32, k as F32,
        v as F32, att as F32, B, T, NH, NKV, HD);
    },

    softmaxForward(out, inp, rows, cols, scale, causalQ) {
      addon.softmaxForward(f32('softmaxForward', out), inp as F32, rows, cols, scale, causalQ);
    },

    softmaxBackward(dinp, dout, out, rows, cols, scale) {
      addon.softmaxBackward(f32('softmaxBackward', dinp), dout as F32, out as F32, rows, cols, scale);
    },

    rmsnormForward(out, rstd, x, w, rows, cols, eps) {
      addon.rmsnormForward(f32('rmsnormForward', out), rstd as F32, x as F32, w as F32, rows, cols, eps);
    },

    rmsnormBackward(dx, dw, dout, x, w, rstd, rows, cols) {
      addon.rmsnormBackward(f32('rmsnormBackward', dx), dw as F32, dout as F32, x as F32, w as F32, rstd as F32, rows, cols);
    },

    ropeForward(x, cos, sin, B, T, H, HD, pos0) {
      addon.ropeForward(f32('ropeForward', x), cos as F32, sin as F32, B, T, H, HD, pos0);
    },

    ropeBackward(dx, cos, sin, B, T, H, HD, pos0) {
      addon.ropeBackward(f32('ropeBackward', dx), cos as F32, sin as F32, B, T, H, HD, pos0);
    },

    swigluForward(out, a, b, n) {
      addon.swigluForward(f32('swigluForward', out), a as F32, b as F32, n);
    },

    swigluBackward(da, db, dout, a, b, n) {
      addon.swigluBackward(f32('swigluBackward', da), db as F32, dout as F32, a as F32, b as F32, n);
    },

    rowMax(out, x, rows, cols) {
      addon.rowMax(f32('rowMax', out), x as F32, rows, cols);
    },

    rowSumExp(out, x, shift, rows, cols) {
      addon.rowSumExp(f32('rowSumExp', out), x as F32, shift as F32, rows, cols);
    },

    pickTarget(out, x, targets, rows, cols, vocabStart) {
      addon.pickTarget(f32('pickTarget', out), x as F32, targets, rows, cols, vocabStart);
    },

    crossEntropyBackward(dlogits, logits, targets, lse, rows, cols, vocabStart, gradScale) {
      addon.crossEntropyBackward(f32('crossEntropyBackward', dlogits), logits as F32, targets, lse as F32, rows, cols, vocabStart, gradScale);
    },

    embeddingForward(out, table, tokens, n, C, vocabStart, tableRows) {
      addon.embeddingForward(f32('embeddingForward', out), table as F32, tokens, n, C, vocabStart, tableRows);
    },

    embeddingBackward(dtable, dout, tokens, n, C, vocabStart, tableRows) {
      addon.embeddingBackward(f32('embeddingBackward', dtable), dout as F32, tokens, n, C, vocabStart, tableRows);
    },

    add(out, a, b, n) {
      addon.add(f32('add', out), a as F32, b as F32, n);
    },

    axpy(y, alpha, x, n) {
      addon.axpy(f32('axpy', y), alpha, x as F32, n);
    },

    scale(x, alpha, n) {
      addon.scale(f32('scale', x), alpha, n);
    },

    reduceSum(out, srcs, n) {
      addon.reduceSum(f32('reduceSum', out), srcs as readonly F32[], n);
    },

    sumSquares(x, n) {
      return addon.sumSquares(f32('sumSquares', x), n);
    },

    adamw(param, grad, m, v, n, lr, beta1, beta2, eps, weightDecay, step, gradScale) {
      // The step constants exactly as the js reference computes them.
      const bc1 = 1 - Math.pow(beta1, step);
      const bc2sqrt = Math.sqrt(1 - Math.pow(beta2, step));
      const stepSize = lr / bc1;
      const decay = 1 - lr * weightDecay;
      addon.adamw(f32('adamw', param), grad as F32, m as F32, v as F32, n, beta1, beta2, eps, stepSize, bc2sqrt, decay, gradScale);
    },
  };
  return be;
}

/**
 * Load the native backend. Throws BackendUnavailableError (with the reason) when no addon was built
 * or it fails to load; the returned backend validates every call (`checked`).
 */
export function loadNativeBackend(opts: NativeOptions = {}): Backend {
  const threads = threadCount(opts);
  const { addon, blas } = loadAddon(opts.blas);
  return checked(rawNativeBackend(addon, blas, threads));
}

/** What the native addon for `blas` (default: the one loadNativeBackend picks) reports about itself. */
export function nativeInfo(blas?: NativeBlas): NativeInfo {
  const { addon, path } = loadAddon(blas);
  return { ...addon.info(), coretype: process.env['OPENBLAS_CORETYPE'] ?? null, addon: path };
}

/**
 * Median seconds per call of C = op(A)·op(B) (alpha 1, beta 0, packed operands), timed inside C over
 * `repeats` calls (no warm-up), through the same GEMM dispatch as the backend's `gemm`.
 */
export function nativeGemmTimedInC(
  transA: boolean, transB: boolean, M: number, N: number, K: number,
  A: Float32Array, B: Float32Array, C: Float32Array, repeats: number, opts: NativeOptions = {},
): number {
  const lda = Math.max(1, transA ? M : K);
  const ldb = Math.max(1, transB ? K : N);
  checkGemm(transA, transB, M, N, K, A, 0, lda, B, 0, ldb, C, 0, Math.max(1, N));
  if (!Number.isInteger(repeats) || repeats < 1) throw new KernelError('gemmTimedInC', `repeats must be a positive integer, got ${repeats}`);
  const { addon } = loadAddon(opts.blas);
  useThreads(addon, threadCount(opts));
  return addon.gemmTimedInC(transA, transB, M, N, K, f32('gemmTimedInC', A), B, C, repeats);
}

/** Force the GEMM path of an addon, process-wide: 'auto' (default), 'blas' or 'skinny' (tests, benchmarks). */
export function setNativeGemmPath(path: 'auto' | 'blas' | 'skinny', blas?: NativeBlas): void {
  loadAddon(blas).addon.setGemmPath(path === 'auto' ? 0 : path === 'blas' ? 1 : 2);
}
