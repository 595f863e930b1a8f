/**
 * What only the native backend has: its two libraries (oneDNN and OpenBLAS, each forced with the
 * `blas` option) that must agree, the skinny-GEMM path next to the library path, GEMM timed inside C,
 * loading inside worker threads, and the `threads` option. (Every GEMM implementation and the measured
 * choice: test/gemm-choice.test.ts.) The kernels themselves are covered for every backend by backend-conformance.
 * Every test is skipped (with the reason) when the addon is not built.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { createJsBackend } from '../src/backend/js.js';
import {
  type NativeBlas,
  loadNativeBackend,
  nativeGemmTimedInC,
  nativeInfo,
  setNativeGemmPath,
} from '../src/backend/native.js';
import { type Backend, BackendUnavailableError, KernelError } from '../src/backend/types.js';

function tryLoad(blas?: NativeBlas): { backend?: Backend; reason?: string } {
  try {
    return { backend: loadNativeBackend({ blas }) };
  } catch (e) {
    if (e instanceof BackendUnavailableError) return { reason: e.reason };
    throw e;
  }
}

const builds = (['onednn', 'openblas'] as const).map((blas) => ({ blas, ...tryLoad(blas) }));
const anyNative = tryLoad();
const skipAll = anyNative.backend ? false : `native backend unavailable: ${anyNative.reason}`;
const js = createJsBackend('f32');

/** mulberry32, seeded per test so failures reproduce. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function rand(n: number, r: () => number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = r() * 2 - 1;
  return a;
}

/** max |a − b| / max |b| (NaN placement must match). */
function normErr(a: Float32Array, b: Float32Array): number {
  let m = 0;
  let d = 0;
  for (let i = 0; i < b.length; i++) {
    assert.equal(Number.isNaN(a[i]), Number.isNaN(b[i]), `NaN mismatch at ${i}`);
    if (Number.isNaN(b[i])) continue;
    m = Math.max(m, Math.abs(b[i]!));
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
  }
  return m === 0 ? d : d / m;
}

const GEMM_SHAPES: [number, number, number][] = [
  [1, 1, 1], [1, 37, 19], [2, 300, 70], [3, 50, 1000], [5, 16, 16], [8, 129, 33], [8, 1030, 530],
  [9, 64, 65], [16, 100, 17], [40, 50, 60], [24, 70, 300], [64, 33, 257], [1, 0, 5], [3, 5, 0],
];

/** Runs every GEMM shape with strided, offset operands and NaN in C (beta = 0 must overwrite). */
function checkGemmAgainstJs(be: Backend, label: string, seed: number): void {
  const r = rng(seed);
  for (const [M, N, K] of GEMM_SHAPES) {
    for (const tA of [false, true]) {
      for (const tB of [false, true]) {
        for (const beta of [0, 1]) {
          const [offA, offB, offC] = [3, 1, 2];
          const lda = (tA ? M : K) + 2;
          const ldb = (tB ? K : N) + 1;
          const ldc = N + 3;
          const A = rand(offA + (tA ? K : M) * lda, r);
          const B = rand(offB + (tB ? N : K) * ldb, r);
          const C0 = rand(offC + M * ldc + 4, r);
          if (beta === 0) for (let i = 0; i < C0.length; i += 2) C0[i] = NaN;
          const want = C0.slice();
          const got = C0.slice();
          js.gemm(tA, tB, M, N, K, 0.5, A, offA, lda, B, offB, ldb, beta, want, offC, ldc);
          be.gemm(tA, tB, M, N, K, 0.5, A, offA, lda, B, offB, ldb, beta, got, offC, ldc);
          const e = normErr(got, want);
          assert.ok(e < 2e-6, `${label}: gemm M=${M} N=${N} K=${K} tA=${tA} tB=${tB} beta=${beta}: error ${e}`);
        }
      }
    }
  }
}

describe('native backend', { skip: skipAll }, () => {
  for (const { blas, backend, reason } of builds) {
    test(`${blas} build: GEMM matches js on the automatic, BLAS and skinny paths`, { skip: backend ? false : `${blas} build unavailable: ${reason}` }, () => {
      try {
        for (const path of ['auto', 'blas', 'skinny'] as const) {
          setNativeGemmPath(path, blas);
          checkGemmAgainstJs(backend!, `${blas}/${path}`, 0x1234);
        }
      } finally {
        setNativeGemmPath('auto', blas);
      }
    });

    test(`${blas} build: attention (GQA, KV cache, long causal block) matches js on both GEMM paths`, { skip: backend ? false : `${blas} build unavailable: ${reason}` }, () => {
      const r = rng(0xa77);
      try {
        for (const path of ['blas', 'skinny'] as const) {
          setNativeGemmPath(path, blas);
          for (const [B, Tq, Tk, NH, NKV, HD, spare] of [[2, 1, 9, 4, 2, 16, 3], [3, 1, 13, 6, 2, 12, 2], [2, 1, 1, 3, 3, 5, 0], [1, 4, 11, 2, 1, 8, 0], [1, 200, 200, 2, 1, 16, 0]] as const) {
            const kvs = (Tk + spare) * NKV * HD;
            const q = rand(B * Tq * NH * HD, r);
            const k = rand(B * kvs, r);
            const v = rand(B * kvs, r);
            const [o1, o2] = [new Float32Array(B * Tq * NH * HD), new Float32Array(B * Tq * NH * HD).fill(NaN)];
            const [a1, a2] = [new Float32Array(B * NH * Tq * Tk), new Float32Array(B * NH * Tq * Tk).fill(NaN)];
            js.attentionForward(o1, a1, q, k, v, B, Tq, Tk, NH, NKV, HD, kvs);
            backend!.attentionForward(o2, a2, q, k, v, B, Tq, Tk, NH, NKV, HD, kvs);
            assert.ok(normErr(o2, o1) < 2e-6 && normErr(a2, a1) < 2e-6, `${blas}/${path} attentionForward ${[B, Tq, Tk, NH, NKV, HD]}`);
            if (Tq !== Tk || spare !== 0) continue;
            const dout = rand(B * Tq * NH * HD, r);
            const mk = (): Float32Array[] => [
              new Float32Array(B * Tq * NH * HD).fill(NaN), new Float32Array(B * Tq * NKV * HD).fill(NaN),
              new Float32Array(B * Tq * NKV * HD).fill(NaN), new Float32Array(Tq * Tq).fill(NaN),
            ];
            const [dq1, dk1, dv1, s1] = mk() as [Float32Array, Float32Array, Float32Array, Float32Array];
            const [dq2, dk2, dv2, s2] = mk() as [Float32Array, Float32Array, Float32Array, Float32Array];
            js.attentionBackward(dq1, dk1, dv1, s1, dout, q, k, v, a1, B, Tq, NH, NKV, HD);
            backend!.attentionBackward(dq2, dk2, dv2, s2, dout, q, k, v, a1, B, Tq, NH, NKV, HD);
            for (const [name, x, y] of [['dq', dq2, dq1], ['dk', dk2, dk1], ['dv', dv2, dv1]] as const) {
              assert.ok(normErr(x, y) < 5e-6, `${blas}/${path} attentionBackward ${name}: ${normErr(x, y)}`);
            }
          }
        }
      } finally {
        setNativeGemmPath('auto', blas);
      }
    });

    test(`${blas} build: gemmTimedInC returns the median seconds and computes the product`, { skip: backend ? false : `${blas} build unavailable: ${reason}` }, () => {
      const r = rng(7);
      const [M, N, K] = [33, 20, 17];
      const A = rand(K * M, r); // transA: stored [K, M]
      const B = rand(K * N, r);
      const C = new Float32Array(M * N).fill(NaN);
      const t = nativeGemmTimedInC(true, false, M, N, K, A, B, C, 5, { blas });
      assert.ok(Number.isFinite(t) && t > 0 && t < 1, `median seconds ${t}`);
      const want = new Float32Array(M * N);
      js.gemm(true, false, M, N, K, 1, A, 0, M, B, 0, N, 0, want, 0, N);
      assert.ok(normErr(C, want) < 2e-6);
      assert.throws(() => nativeGemmTimedInC(false, false, M, N, K, A.subarray(1), B, C, 1, { blas }), KernelError);
    });

    test(`${blas} build: the threads option reaches the library`, { skip: backend ? false : `${blas} build unavailable: ${reason}` }, () => {
      const r = rng(3);
      const be2 = loadNativeBackend({ blas, threads: 2 });
      assert.match(be2.description, /2 threads/);
      const A = rand(64 * 64, r);
      const C = new Float32Array(64 * 64);
      be2.gemm(false, false, 64, 64, 64, 1, A, 0, 64, A, 0, 64, 0, C, 0, 64);
      assert.equal(nativeInfo(blas).threads, 2);
      assert.equal(nativeInfo(blas).libraryThreads, 2);
      const be1 = loadNativeBackend({ blas, threads: 1 });
      assert.match(be1.description, /1 thread\b/);
      be1.gemm(false, false, 64, 64, 64, 1, A, 0, 64, A, 0, 64, 0, C, 0, 64);
      assert.equal(nativeInfo(blas).threads, 1);
      assert.equal(nativeInfo(blas).libraryThreads, 1);
      assert.throws(() => loadNativeBackend({ blas, threads: 0 }), /threads/);
    });
  }

  test('both builds produce the same GEMM and kernel results', { skip: builds.every((b) => b.backend) ? false : 'needs both the oneDNN and the OpenBLAS build' }, () => {
    const [a, b] = [builds[0]!.backend!, builds[1]!.backend!];
    const r = rng(11);
    for (const [M, N, K] of [[1, 4100, 300], [7, 500, 301], [100, 90, 80]] as const) {
      const A = rand(M * K, r);
      const B = rand(N * K, r);
      const [c1, c2] = [new Float32Array(M * N), new Float32Array(M * N)];
      a.gemm(false, true, M, N, K, 1, A, 0, K, B, 0, K, 0, c1, 0, N);
      b.gemm(false, true, M, N, K, 1, A, 0, K, B, 0, K, 0, c2, 0, N);
      assert.ok(normErr(c1, c2) < 2e-6, `gemm ${M}x${N}x${K}`);
    }
    // Non-GEMM kernels are the same code in both builds: bitwise equal.
    const x = rand(8 * 300, r);
    const [s1, s2] = [new Float32Array(x.length), new Float32Array(x.length)];
    a.softmaxForward(s1, x, 8, 300, 0.3, 4);
    b.softmaxForward(s2, x, 8, 300, 0.3, 4);
    assert.deepEqual(s1, s2);
  });

  test('info describes the library, kernels and environment', () => {
    const info = nativeInfo();
    assert.ok(info.blas === 'onednn' || info.blas === 'openblas');
    assert.match(info.version, /^\d+\.\d+/);
    assert.ok(['avx512', 'avx2', 'baseline'].includes(info.isa), info.isa);
    assert.equal(info.coretype, process.env['OPENBLAS_CORETYPE'] ?? null);
    assert.match(anyNative.backend!.description, /^native \((oneDNN|OpenBLAS) \d/);
  });

  test('Float64Array operands are rejected with a KernelError naming the kernel', () => {
    const be = anyNative.backend!;
    const d = new Float64Array(4);
    assert.throws(() => be.add(d, d, d, 4), (e: unknown) => e instanceof KernelError && e.kernel === 'add' && /float32/.test(e.message));
    assert.throws(() => be.gemm(false, false, 2, 2, 1, 1, d, 0, 1, d, 0, 2, 0, d, 0, 2), (e: unknown) => e instanceof KernelError && e.kernel === 'gemm');
    assert.throws(() => be.sumSquares(d, 4), KernelError);
  });

  test('operands in SharedArrayBuffers and subarray views are used in place', () => {
    const be = anyNative.backend!;
    const r = rng(5);
    const sab = new Float32Array(new SharedArrayBuffer(4 * 1000));
    sab.set(rand(1000, r));
    const A = sab.subarray(3, 3 + 6 * 7); // unaligned view
    const B = sab.subarray(101, 101 + 7 * 5);
    const C = sab.subarray(500, 500 + 6 * 5);
    const want = new Float32Array(6 * 5);
    js.gemm(false, false, 6, 5, 7, 1, A, 0, 7, B, 0, 5, 0, want, 0, 5);
    be.gemm(false, false, 6, 5, 7, 1, A, 0, 7, B, 0, 5, 0, C, 0, 5);
    assert.ok(normErr(new Float32Array(sab.buffer, 500 * 4, 30), want) < 2e-6);
    const before = sab.slice();
    be.scale(sab.subarray(10, 20), 2, 10);
    for (let i = 0; i < 1000; i++) assert.equal(sab[i], i >= 10 && i < 20 ? Math.fround(before[i]! * 2) : before[i], `element ${i}`);
    const shared = be.alloc(8, true);
    assert.ok(shared instanceof Float32Array && shared.buffer instanceof SharedArrayBuffer);
  });

  test('reduceSum gives the same bits as js (collectives rely on it)', () => {
    const be = anyNative.backend!;
    const r = rng(9);
    const n = 5000;
    const srcs = [rand(n, r), rand(n, r), rand(n, r)].map((a) => a.map((x) => x * 1e3));
    const [o1, o2] = [new Float32Array(n), new Float32Array(n)];
    js.reduceSum(o1, srcs, n);
    be.reduceSum(o2, srcs, n);
    assert.deepEqual(o2, o1);
  });

  // The AVX2 build runs where the CPU has AVX2 and FMA; elsewhere CAAT_NATIVE_ISA=avx2 falls back to baseline.
  const cpuFlags = (() => {
    try {
      return new Set((/^flags\s*:(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '').trim().split(/\s+/));
    } catch {
      return new Set<string>();
    }
  })();
  const hasAvx2 = cpuFlags.has('avx2') && cpuFlags.has('fma');
  for (const cap of ['baseline', 'avx2'] as const) test(`the ${cap} kernels (CAAT_NATIVE_ISA=${cap}) agree with js too`, () => {
    // The kernel build is chosen once per process, so this runs in a child with CAAT_NATIVE_ISA set.
    const expectIsa = cap === 'avx2' && hasAvx2 ? 'avx2' : 'baseline';
    const url = (p: string): string => JSON.stringify(new URL(p, import.meta.url).href);
    const code = `
      import { loadNativeBackend, nativeInfo, setNativeGemmPath } from ${url('../src/backend/native.js')};
      import { createJsBackend } from ${url('../src/backend/js.js')};
      const nb = loadNativeBackend(), js = createJsBackend('f32');
      if (nativeInfo().isa !== ${JSON.stringify(expectIsa)}) throw new Error('isa ' + nativeInfo().isa);
      let s = 1;
      const rand = (n) => Float32Array.from({ length: n }, () => { s = (s * 1103515245 + 12345) >>> 0; return (s / 2 ** 32) * 6 - 3; });
      const err = (a, b) => { let m = 0, d = 0; for (let i = 0; i < b.length; i++) { m = Math.max(m, Math.abs(b[i])); d = Math.max(d, Math.abs(a[i] - b[i])); } return d / m; };
      const worst = {};
      const cmp = (name, f) => { const [a, b] = f(); worst[name] = Math.max(worst[name] ?? 0, err(a, b)); };
      for (const [r, c] of [[3, 37], [5, 64], [2, 1000], [17, 45], [40, 300]]) {
        const x = rand(r * c), y = rand(r * c), w = rand(c);
        cmp('softmaxForward', () => { const o = [new Float32Array(r * c), new Float32Array(r * c)]; nb.softmaxForward(o[0], x, r, c, 0.5, 0); js.softmaxForward(o[1], x, r, c, 0.5, 0); return o; });
        cmp('swigluBackward', () => { const o = [new Float32Array(r * c), new Float32Array(r * c), new Float32Array(r * c), new Float32Array(r * c)]; nb.swigluBackward(o[0], o[2], y, x, y, r * c); js.swigluBackward(o[1], o[3], y, x, y, r * c); return [o[0], o[1]]; });
        cmp('rmsnormForward', () => { const o = [new Float32Array(r * c), new Float32Array(r * c)]; nb.rmsnormForward(o[0], new Float32Array(r), x, w, r, c, 1e-5); js.rmsnormForward(o[1], new Float32Array(r), x, w, r, c, 1e-5); return o; });
        cmp('rowSumExp', () => { const o = [new Float32Array(r), new Float32Array(r)], m = new Float32Array(r).fill(3); nb.rowSumExp(o[0], x, m, r, c); js.rowSumExp(o[1], x, m, r, c); return o; });
        for (const path of ['skinny', 'blas']) {
          setNativeGemmPath(path);
          for (const tB of [false, true]) cmp('gemm/' + path, () => { const o = [new Float32Array(r * 19), new Float32Array(r * 19)], b = rand(c * 19); nb.gemm(false, tB, r, 19, c, 1, x, 0, c, b, 0, tB ? c : 19, 0, o[0], 0, 19); js.gemm(false, tB, r, 19, c, 1, x, 0, c, b, 0, tB ? c : 19, 0, o[1], 0, 19); return o; });
        }
      }
      // decode attention (one query row per sequence): GQA, a head size that is not a multiple of 8,
      // a cache longer than the keys in use
      for (const [B, Tk, NH, NKV, HD, spare] of [[2, 9, 4, 2, 16, 3], [3, 13, 6, 2, 12, 2], [1, 70, 2, 1, 5, 0]]) {
        const kvs = (Tk + spare) * NKV * HD, q = rand(B * NH * HD), k = rand(B * kvs), v = rand(B * kvs);
        cmp('attentionForward/decode', () => {
          const o = [new Float32Array(B * NH * HD), new Float32Array(B * NH * HD)], a = [new Float32Array(B * NH * Tk), new Float32Array(B * NH * Tk)];
          nb.attentionForward(o[0], a[0], q, k, v, B, 1, Tk, NH, NKV, HD, kvs);
          js.attentionForward(o[1], a[1], q, k, v, B, 1, Tk, NH, NKV, HD, kvs);
          return [Float32Array.from([...o[0], ...a[0]]), Float32Array.from([...o[1], ...a[1]])];
        });
      }
      // bf16 weights: against js on the widened weights; in the AVX2 build, M <= 8 gives exactly the
      // float32 skinny kernel's bits on the widened weights (same products, same order)
      setNativeGemmPath('auto');
      for (const [m, n, k] of [[1, 37, 70], [3, 19, 1000], [8, 21, 64], [12, 9, 33], [40, 30, 300]]) {
        const a = rand(m * k), w16 = new Uint16Array(n * k), ww = new Float32Array(n * k);
        nb.toBf16(w16, rand(n * k), n * k);
        nb.fromBf16(ww, w16, n * k);
        cmp('gemmBf16W', () => { const o = [new Float32Array(m * n), new Float32Array(m * n)]; nb.gemmBf16W(m, n, k, 1, a, 0, k, w16, 0, k, 0, o[0], 0, n); js.gemm(false, true, m, n, k, 1, a, 0, k, ww, 0, k, 0, o[1], 0, n); return o; });
        if (m <= 8 && nativeInfo().isa === 'avx2') {
          setNativeGemmPath('skinny');
          const o = [new Float32Array(m * n), new Float32Array(m * n)];
          nb.gemmBf16W(m, n, k, 1, a, 0, k, w16, 0, k, 0, o[0], 0, n);
          nb.gemm(false, true, m, n, k, 1, a, 0, k, ww, 0, k, 0, o[1], 0, n);
          setNativeGemmPath('auto');
          o[0].forEach((x, i) => { if (x !== o[1][i]) throw new Error('gemmBf16W ' + m + 'x' + n + 'x' + k + ' [' + i + ']: ' + x + ' vs the float32 skinny kernel ' + o[1][i]); });
        }
      }
      // the skinny kernel's bits do not depend on where B lies in memory (ranks and placements hold
      // their weights at different addresses)
      setNativeGemmPath('skinny');
      for (const M of [1, 3, 8]) {
        const K = 300, N = 40, a = rand(M * K), b = rand(N * K), b16 = new Uint16Array(N * K);
        nb.toBf16(b16, b, N * K);
        let first = null, first16 = null;
        for (const shift of [0, 1, 2, 3, 5]) {
          const buf = new Float32Array(N * K + 8), buf16 = new Uint16Array(N * K + 8), c = new Float32Array(M * N), c16 = new Float32Array(M * N);
          buf.set(b, shift); buf16.set(b16, shift);
          nb.gemm(false, true, M, N, K, 1, a, 0, K, buf, shift, K, 0, c, 0, N);
          nb.gemmBf16W(M, N, K, 1, a, 0, K, buf16, shift, K, 0, c16, 0, N);
          if (first === null) { first = c; first16 = c16; continue; }
          c.forEach((x, i) => { if (x !== first[i]) throw new Error('skinny M = ' + M + ': B at offset ' + shift + ' gives other bits at [' + i + ']'); });
          c16.forEach((x, i) => { if (x !== first16[i]) throw new Error('gemmBf16W M = ' + M + ': B at offset ' + shift + ' gives other bits at [' + i + ']'); });
        }
      }
      setNativeGemmPath('auto');
      console.log(JSON.stringify(worst));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], {
      encoding: 'utf8',
      env: { ...process.env, CAAT_NATIVE_ISA: cap },
    });
    assert.equal(r.status, 0, r.stderr);
    const worst = JSON.parse(r.stdout) as Record<string, number>;
    for (const [name, e] of Object.entries(worst)) assert.ok(e < 2e-6, `${cap} ${name}: error ${e}`);
  });

  test('loads and computes inside worker threads, each with its own thread count', async () => {
    const nativeUrl = new URL('../src/backend/native.js', import.meta.url).href;
    const code = `
      import { parentPort, workerData } from 'node:worker_threads';
      import { loadNativeBackend, nativeInfo } from ${JSON.stringify(nativeUrl)};
      const be = loadNativeBackend({ threads: workerData.threads });
      const a = new Float32Array(workerData.sab, 0, 16), b = new Float32Array(workerData.sab, 64, 16), c = new Float32Array(workerData.sab, 128, 16);
      be.gemm(false, false, 4, 4, 4, 1, a, 0, 4, b, 0, 4, 0, c, 0, 4);
      parentPort.postMessage({ description: be.description, threads: nativeInfo().libraryThreads });`;
    const sab = new SharedArrayBuffer(192);
    const a = new Float32Array(sab, 0, 16);
    const b = new Float32Array(sab, 64, 16);
    for (let i = 0; i < 16; i++) {
      a[i] = i;
      b[i] = (i % 5) - 2;
    }
    const want = new Float32Array(16);
    js.gemm(false, false, 4, 4, 4, 1, a, 0, 4, b, 0, 4, 0, want, 0, 4);
    for (const threads of [1, 2]) {
      const w = new Worker(new URL(`data:text/javascript,${encodeURIComponent(code)}`), { workerData: { sab, threads } });
      try {
        const msg = await new Promise<{ description: string; threads: number }>((resolve, reject) => {
          w.once('message', resolve);
          w.once('error', reject);
        });
        assert.match(msg.description, /^native /);
        assert.equal(msg.threads, threads);
        assert.deepEqual(new Float32Array(sab, 128, 16), want);
      } finally {
        await w.terminate();
      }
    }
  });
});

test('a missing build is reported as unavailable with the reason', () => {
  // In a fresh process whose loader looks in an empty folder (CAAT_NATIVE_ADDON_DIR).
  const empty = mkdtempSync(join(tmpdir(), 'caat-no-addon-'));
  const nativeUrl = new URL('../src/backend/native.js', import.meta.url).href;
  const code = `
    import { loadNativeBackend } from ${JSON.stringify(nativeUrl)};
    for (const blas of ['onednn', 'openblas']) {
      try { loadNativeBackend({ blas }); console.log('loaded'); }
      catch (e) { console.log(JSON.stringify({ name: e.name, backend: e.backend, reason: e.reason })); }
    }`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', env: { ...process.env, CAAT_NATIVE_ADDON_DIR: empty } });
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { name: string; backend: string; reason: string });
  assert.equal(lines.length, 2);
  for (const l of lines) {
    assert.equal(l.name, 'BackendUnavailableError');
    assert.equal(l.backend, 'native');
    assert.ok(l.reason.includes(empty), l.reason);
  }
});
