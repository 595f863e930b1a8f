/**
 * The native backend: an N-API addon (native/, built by `npm run build:native`) linked with oneDNN and
 * OpenBLAS (either alone works too), fused attention (GEMM + softmax per (batch, head) inside C++,
 * skipping the masked upper triangle) and vectorised C++ for every other kernel (AVX-512, else AVX2 +
 * FMA, when the CPU has it, chosen at load time; CAAT_NATIVE_ISA=baseline or avx2 caps the choice;
 * baseline is the portable build). Float32 (and bf16 bit patterns for the bf16 kernels); operands
 * are used in place (SharedArrayBuffer-backed arrays and subarray views included), never copied.
 *
 * GEMM: per shape class the fastest of oneDNN's dnnl_sgemm, oneDNN's matmul primitive, OpenBLAS's
 * cblas_sgemm and a hand-written kernel for small M, measured once per machine and thread count and
 * cached (src/backend/gemm-choice.ts); CAAT_GEMM=onednn|matmul|openblas forces one for every shape.
 * `blas` / `gemm` in the options force one for that backend object only.
 *
 * bf16: toBf16/fromBf16 in vectorised C++; gemmBf16 through the oneDNN matmul primitive with bf16
 * operands and float32 accumulation and output where the CPU has bf16 hardware (AVX512_BF16, AMX),
 * else both operands widened exactly to float32 in C++ and the float32 GEMM above (the same bits as
 * `gemmBf16ViaF32` over this backend's `gemm`). `bf16Hardware` says which.
 *
 * Threads: `threads` (default 1, one rank per core) is the libraries' thread count and the width of
 * the skinny kernel's parallel loop. With oneDNN (OpenMP runtime) the setting belongs to the calling
 * thread, so worker threads are independent; OpenBLAS has one process-wide setting.
 *
 * Helpers for benchmarks:
 *   nativeInfo(): NativeInfo
 *     what the addon runs on ({ blas, libraries, version, threads, isa, coretype, gemm, bf16, ... }).
 *   nativeGemmTimedInC(transA, transB, M, N, K, A, B, C, repeats, opts?): number
 *     C = op(A)·op(B) (alpha 1, beta 0) with packed operands (lda/ldb/ldc equal to the stored row
 *     lengths), through the same dispatch as `gemm` (or `opts.gemm`), `repeats` calls each timed
 *     inside C with a monotonic clock (no warm-up call: warm up first). Returns the median seconds per
 *     call. nativeGemmBf16TimedInC: the same for gemmBf16.
 *   setNativeGemmPath(path)
 *     'auto' (default), 'blas' (never the skinny kernel) or 'skinny' (the skinny kernel for every
 *     shape), process-wide; for tests and benchmarks.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkGemm, checkGemmBf16, checked } from './check.js';
import { ensureGemmTable, type GemmChoice, type GemmImpl, GEMM_IMPLS, installGemmTables, summarizeChoice } from './gemm-choice.js';
import type { Communicator } from '../tp/comm.js';
import { type Backend, type BackendOptions, BackendUnavailableError, type FloatArray, KernelError } from './types.js';

export type NativeBlas = 'onednn' | 'openblas';

export interface NativeOptions extends BackendOptions {
  /** Run every GEMM of this backend object through this library's sgemm (it must be built in). */
  blas?: NativeBlas;
  /** Run every GEMM of this backend object through this implementation ('auto': the measured choice). */
  gemm?: GemmImpl | 'auto';
}

export interface NativeInfo {
  /** The first library built in (oneDNN, else OpenBLAS). */
  blas: NativeBlas;
  /** Version of that library, e.g. "2.6.3" (oneDNN) or "0.3.21" (OpenBLAS). */
  version: string;
  /** Every library built in, with its version (null: not built in). */
  libraries: { onednn: string | null; openblas: string | null };
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
  /** The GEMM implementations built in. */
  gemmImpls: GemmImpl[];
  /** How gemmBf16 runs: 'matmul' (oneDNN primitive, bf16 operands) or 'widen' (fp32 GEMM); the CPU ISA oneDNN uses, and the implementation it picks for a bf16 matmul. */
  bf16: Bf16Info;
}

export interface Bf16Info {
  path: 'matmul' | 'widen';
  /** The CPU has bf16 GEMM hardware oneDNN uses (AVX512_BF16 or AMX). */
  hardware: boolean;
  /** dnnl_get_effective_cpu_isa(), e.g. "avx2" or "avx512_core_amx"; null without oneDNN. */
  isa: string | null;
  /** oneDNN's implementation of a bf16 matmul here (e.g. "brg:avx512_core_amx"), or null. */
  impl: string | null;
}

type F32 = Float32Array;

/** The addon's exports (native/src/addon.cc). Float32Array only. */
interface Addon {
  info(): Omit<NativeInfo, 'coretype' | 'addon' | 'gemmImpls' | 'bf16'>;
  bf16Info(): Bf16Info;
  setThreads(n: number): void;
  setGemmPath(mode: number): void;
  setBf16Path(mode: number): void;
  gemmClasses(): { name: string; transA: boolean; transB: boolean; M: number; N: number; K: number; candidates: number[] }[];
  gemmImpls(): { id: number; name: string; built: boolean }[];
  setGemmTable(threads: number, table: Int32Array | null): void;
  gemmTables(): Record<string, number[]>;
  gemmResolve(tA: boolean, tB: boolean, M: number, N: number, K: number, impl?: number): [number, number];
  gemm(tA: boolean, tB: boolean, M: number, N: number, K: number, alpha: number, A: F32, offA: number, lda: number,
    B: F32, offB: number, ldb: number, beta: number, C: F32, offC: number, ldc: number, impl?: number): void;
  gemmTimedInC(tA: boolean, tB: boolean, M: number, N: number, K: number, A: F32, B: F32, C: F32, repeats: number, impl?: number): number;
  gemmBf16(tA: boolean, tB: boolean, M: number, N: number, K: number, alpha: number, A: Uint16Array, offA: number, lda: number,
    B: Uint16Array, offB: number, ldb: number, beta: number, C: F32, offC: number, ldc: number, impl?: number): void;
  gemmBf16W(M: number, N: number, K: number, alpha: number, A: F32, offA: number, lda: number, B: Uint16Array, offB: number, ldb: number,
    beta: number, C: F32, offC: number, ldc: number): void;
  gemmBf16TimedInC(tA: boolean, tB: boolean, M: number, N: number, K: number, A: Uint16Array, B: Uint16Array, C: F32, repeats: number): number;
  toBf16(out: Uint16Array, x: F32, n: number): void;
  fromBf16(out: F32, x: Uint16Array, n: number): void;
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

const ADDON_FILE = 'caatnet_native.node';

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
let loaded: { addon: Addon; path: string } | undefined;

const LIB_LABEL: Record<NativeBlas, string> = { onednn: 'oneDNN', openblas: 'OpenBLAS' };

/** Load (once per thread) the addon; with `blas`, check that library is built in. Throws BackendUnavailableError. */
function loadAddon(blas?: NativeBlas): { addon: Addon; path: string } {
  if (!loaded) {
    const dir = releaseDir();
    if (dir === undefined) throw new BackendUnavailableError('native', 'cannot locate the package directory (native/build/Release)');
    const path = join(dir, ADDON_FILE);
    const fix = 'run `npm run build:native` (needs libdnnl-dev or libopenblas-dev)';
    if (!existsSync(path)) throw new BackendUnavailableError('native', `no usable addon in ${dir} (${ADDON_FILE} not built); ${fix}`);
    let addon: Addon;
    try {
      addon = requireAddon(path) as Addon;
    } catch (e) {
      throw new BackendUnavailableError('native', `no usable addon in ${dir} (${ADDON_FILE} failed to load: ${(e as Error).message.split('\n')[0]}); ${fix}`);
    }
    if (typeof addon.gemmImpls !== 'function') {
      throw new BackendUnavailableError('native', `no usable addon in ${dir} (${ADDON_FILE} is an older build); ${fix}`);
    }
    loaded = { addon, path };
  }
  if (blas !== undefined && !loaded.addon.info().libraries[blas]) {
    throw new BackendUnavailableError('native', `the addon in ${dirname(loaded.path)} is built without ${LIB_LABEL[blas]}; install ${blas === 'onednn' ? 'libdnnl-dev' : 'libopenblas-dev'} and run \`npm run build:native\``);
  }
  return loaded;
}

/** The addon if this JS thread has loaded it already (never loads it). */
function loadedAddon(): Addon | undefined {
  return loaded?.addon;
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

function describe(addon: Addon, threads: number, forced: GemmImpl | undefined): string {
  const i = addon.info();
  const libs = [
    i.libraries.onednn ? `oneDNN ${i.libraries.onednn}` : '',
    i.libraries.openblas ? `OpenBLAS ${i.libraries.openblas}${i.corename ? ` ${i.corename}` : ''}` : '',
  ].filter((x) => x !== '').join(' + ');
  const gemm = forced ? `, gemm ${forced}` : '';
  return `native (${libs}, ${threads} thread${threads === 1 ? '' : 's'}${gemm}${i.isa === 'avx512' ? '' : `, ${i.isa} kernels`})`;
}

/** The implementation id that `opts` forces for this backend object, or -1 (the measured choice). */
function forcedImpl(addon: Addon, opts: NativeOptions): { id: number; name?: GemmImpl } {
  const name = opts.gemm !== undefined && opts.gemm !== 'auto' ? opts.gemm : opts.blas;
  if (name === undefined) return { id: -1 };
  if (!(GEMM_IMPLS as readonly string[]).includes(name)) throw new Error(`native backend: unknown GEMM implementation "${name}" (expected ${GEMM_IMPLS.join(', ')} or auto)`);
  const impl = addon.gemmImpls().find((x) => x.name === name)!;
  if (!impl.built) throw new BackendUnavailableError('native', `the addon is built without ${name === 'openblas' ? 'OpenBLAS' : 'oneDNN'} (GEMM implementation ${name})`);
  return { id: impl.id, name };
}

/** The unchecked backend over a loaded addon (every array is a Float32Array after `f32`). */
function rawNativeBackend(addon: Addon, threads: number, forced: { id: number; name?: GemmImpl }): Backend {
  const t = (): void => useThreads(addon, threads);
  t();
  const impl = forced.id;
  const bf16 = addon.bf16Info();
  const be: Backend = {
    name: 'native',
    description: describe(addon, threads, forced.name),
    bf16Hardware: bf16.path === 'matmul' && bf16.hardware,

    alloc(n, shared) {
      return shared ? new Float32Array(new SharedArrayBuffer(n * 4)) : new Float32Array(n);
    },

    release() {},

    toBf16(out, x, n) {
      addon.toBf16(out, x, n);
    },

    fromBf16(out, x, n) {
      addon.fromBf16(out, x, n);
    },

    gemmBf16(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc) {
      t();
      addon.gemmBf16(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc, impl);
    },

    gemmBf16W(M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc) {
      t();
      addon.gemmBf16W(M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc);
    },

    gemm(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc) {
      t();
      addon.gemm(transA, transB, M, N, K, alpha, f32('gemm', A), offA, lda, B as F32, offB, ldb, beta, C as F32, offC, ldc, impl);
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
 * or it fails to load; the returned backend validates every call (`checked`). The first load for a
 * thread count resolves the GEMM choice (cache, else a short measurement; see gemm-choice.ts).
 */
export function loadNativeBackend(opts: NativeOptions = {}): Backend {
  const threads = threadCount(opts);
  const { addon } = loadAddon(opts.blas);
  const forced = forcedImpl(addon, opts);
  const t0 = addon.info().threads;
  ensureGemmTable(addon, threads);
  if (addon.info().threads !== t0) addon.setThreads(t0); // measuring may have changed this thread's setting
  threadsSet.delete(addon);
  const raw = rawNativeBackend(addon, threads, forced);
  return { ...checked(raw), bf16Hardware: raw.bf16Hardware ?? false };
}

/** The GEMM choice in force for `threads` threads (resolving it if needed), and its one-line summary. */
export function nativeGemmChoice(threads = 1): GemmChoice & { summary: string } {
  const { addon } = loadAddon();
  const c = ensureGemmTable(addon, threads);
  return { ...c, summary: summarizeChoice(c) };
}

/** What the native addon reports about itself (with `blas`: fails unless that library is built in). */
export function nativeInfo(blas?: NativeBlas): NativeInfo {
  const { addon, path } = loadAddon(blas);
  return {
    ...addon.info(),
    coretype: process.env['OPENBLAS_CORETYPE'] ?? null,
    addon: path,
    gemmImpls: addon.gemmImpls().filter((x) => x.built).map((x) => x.name as GemmImpl),
    bf16: addon.bf16Info(),
  };
}

export interface TimedOptions extends NativeOptions {
  /** Force one implementation for the timed calls (default: the dispatch `gemm` uses). */
  impl?: GemmImpl;
}

/**
 * Median seconds per call of C = op(A)·op(B) (alpha 1, beta 0, packed operands), timed inside C over
 * `repeats` calls (no warm-up), through the same GEMM dispatch as the backend's `gemm` (or `opts.impl`).
 */
export function nativeGemmTimedInC(
  transA: boolean, transB: boolean, M: number, N: number, K: number,
  A: Float32Array, B: Float32Array, C: Float32Array, repeats: number, opts: TimedOptions = {},
): number {
  const lda = Math.max(1, transA ? M : K);
  const ldb = Math.max(1, transB ? K : N);
  checkGemm(transA, transB, M, N, K, A, 0, lda, B, 0, ldb, C, 0, Math.max(1, N));
  if (!Number.isInteger(repeats) || repeats < 1) throw new KernelError('gemmTimedInC', `repeats must be a positive integer, got ${repeats}`);
  const { addon } = loadAddon(opts.blas);
  const threads = threadCount(opts);
  ensureGemmTable(addon, threads);
  useThreads(addon, threads);
  const id = opts.impl !== undefined ? forcedImpl(addon, { gemm: opts.impl }).id : forcedImpl(addon, opts).id;
  return addon.gemmTimedInC(transA, transB, M, N, K, f32('gemmTimedInC', A), B, C, repeats, id);
}

/** As nativeGemmTimedInC, for gemmBf16 (bf16 operands, float32 C). */
export function nativeGemmBf16TimedInC(
  transA: boolean, transB: boolean, M: number, N: number, K: number,
  A: Uint16Array, B: Uint16Array, C: Float32Array, repeats: number, opts: NativeOptions = {},
): number {
  const lda = Math.max(1, transA ? M : K);
  const ldb = Math.max(1, transB ? K : N);
  checkGemmBf16(transA, transB, M, N, K, A, 0, lda, B, 0, ldb, C, 0, Math.max(1, N));
  if (!Number.isInteger(repeats) || repeats < 1) throw new KernelError('gemmBf16TimedInC', `repeats must be a positive integer, got ${repeats}`);
  const { addon } = loadAddon();
  const threads = threadCount(opts);
  ensureGemmTable(addon, threads);
  useThreads(addon, threads);
  return addon.gemmBf16TimedInC(transA, transB, M, N, K, A, B, C, repeats);
}

/** [class name, implementation] that a `gemm` call of this shape runs with `threads` threads. */
export function nativeGemmResolve(transA: boolean, transB: boolean, M: number, N: number, K: number, opts: TimedOptions = {}): { cls: string; impl: GemmImpl; candidates: GemmImpl[] } {
  const { addon } = loadAddon();
  const threads = threadCount(opts);
  ensureGemmTable(addon, threads);
  useThreads(addon, threads);
  const id = opts.impl !== undefined ? forcedImpl(addon, { gemm: opts.impl }).id : forcedImpl(addon, opts).id;
  const [c, i] = addon.gemmResolve(transA, transB, M, N, K, id);
  const impls = addon.gemmImpls();
  const cl = addon.gemmClasses()[c]!;
  return { cls: cl.name, impl: impls[i]!.name as GemmImpl, candidates: cl.candidates.map((x) => impls[x]!.name as GemmImpl) };
}

/** Force the GEMM path, process-wide: 'auto' (default), 'blas' or 'skinny' (tests, benchmarks). */
export function setNativeGemmPath(path: 'auto' | 'blas' | 'skinny', blas?: NativeBlas): void {
  loadAddon(blas).addon.setGemmPath(path === 'auto' ? 0 : path === 'blas' ? 1 : 2);
}

/** Force how gemmBf16 runs, process-wide: 'auto' (default), 'widen' or 'matmul' (tests). */
export function setNativeBf16Path(path: 'auto' | 'widen' | 'matmul'): void {
  loadAddon().addon.setBf16Path(path === 'auto' ? 0 : path === 'widen' ? 1 : 2);
}

/** The GEMM tables installed in this process ({ threads: implementation id per class }), if the addon is loaded. */
export function nativeGemmTables(): Record<string, number[]> | undefined {
  return loadedAddon()?.gemmTables();
}

/**
 * Every rank of a job adopts rank 0's GEMM tables, so that the bits of every GEMM are those rank 0's
 * host would compute (collective: every rank of every communicator in `comms` must call it, right
 * after joining). Processes that have not loaded the native addon take part without installing
 * anything. Returns whether this process's tables changed.
 */
export async function shareGemmChoices(comms: readonly Communicator[], log?: (line: string) => void): Promise<boolean> {
  if (comms.length === 0 || comms[0]!.size === 1) return false;
  const addon = loadedAddon();
  const mine = Buffer.from(JSON.stringify(addon ? addon.gemmTables() : {}), 'utf8');
  const got = await Promise.all(comms.map(async (c) => {
    const len = Float64Array.of(c.rank === 0 ? mine.length : 0);
    await c.broadcast(len, 0, 'gemm.choice.len');
    const body = new Float32Array(len[0]!);
    if (c.rank === 0) for (let i = 0; i < mine.length; i++) body[i] = mine[i]!;
    await c.broadcast(body, 0, 'gemm.choice.body');
    return c.rank === 0 ? undefined : Buffer.from(Uint8Array.from(body)).toString('utf8');
  }));
  const theirs = got.find((x) => x !== undefined);
  if (theirs === undefined || !addon) return false;
  const tables = JSON.parse(theirs) as Record<string, number[]>;
  const changed = installGemmTables(addon, tables);
  if (changed) log?.("gemm: adopted rank 0's GEMM choice (this host's cache differs)");
  return changed;
}
