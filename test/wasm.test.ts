/**
 * Behaviour specific to the wasm backend: where its arrays live, arrays from elsewhere (copied in
 * and out), memory growth, worker threads, float64 rejection, and the kernels that must give the
 * same bits as the js reference. Numerical agreement of every kernel is the conformance suite's job.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { createJsBackend } from '../src/backend/js.js';
import { type Backend, BackendUnavailableError, KernelError } from '../src/backend/types.js';
import { loadWasmBackend, releaseWasmArray, wasmBackendStats } from '../src/backend/wasm.js';

let wasm: Backend | undefined;
let skip: string | false = false;
try {
  wasm = loadWasmBackend();
} catch (e) {
  if (!(e instanceof BackendUnavailableError)) throw e;
  skip = `wasm backend unavailable: ${e.reason}`;
}
const js = createJsBackend('f32');

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

function filled(arr: Float32Array, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  for (let i = 0; i < arr.length; i++) arr[i] = r() * scale;
  return arr;
}

function foreignCalls(): number {
  return wasmBackendStats()!.foreignCalls;
}

function assertClose(actual: Float32Array, expected: Float32Array, tol: number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i]! - expected[i]!);
    if (!(d <= tol * Math.max(1, Math.abs(expected[i]!)))) assert.fail(`${what}: element ${i} is ${actual[i]}, expected ${expected[i]}`);
  }
}

describe('wasm backend', { skip }, () => {
  const be = wasm!;
  const alloc = (n: number, shared?: boolean): Float32Array => be.alloc(n, shared) as Float32Array;

  it('allocates zero-filled, SharedArrayBuffer-backed, 64-byte aligned float32 arrays', () => {
    for (const shared of [false, true]) {
      const a = alloc(1000, shared);
      assert.ok(a instanceof Float32Array);
      assert.ok(a.buffer instanceof SharedArrayBuffer);
      assert.equal(a.length, 1000);
      assert.equal(a.byteOffset % 64, 0);
      assert.ok(a.every((x) => x === 0));
    }
    assert.match(be.description, /wasm/);
  });

  it('reuses released arrays and zero-fills them again', () => {
    const a = alloc(4096);
    a.fill(7);
    const off = a.byteOffset;
    assert.equal(releaseWasmArray(a), true);
    assert.equal(releaseWasmArray(a), false, 'a second release is refused');
    assert.equal(releaseWasmArray(new Float32Array(4)), false);
    const b = alloc(4096);
    assert.equal(b.byteOffset, off);
    assert.ok(b.every((x) => x === 0));
  });

  it('runs on its own arrays without copies', () => {
    const n = 1000;
    const a = filled(alloc(n), 1);
    const b = filled(alloc(n), 2);
    const out = alloc(n);
    const before = foreignCalls();
    be.add(out, a, b, n);
    be.swigluForward(out, a, b, n);
    be.gemm(false, true, 10, 10, 100, 1, a, 0, 100, b, 0, 100, 0, out, 0, 10);
    assert.equal(foreignCalls(), before);
  });

  it('gives the same bits on arrays outside its memory (copied in and out)', () => {
    const rows = 6;
    const cols = 37;
    const n = rows * cols;
    const local = { x: filled(alloc(n), 3, 8), y: alloc(n), g: filled(alloc(n), 4), d: alloc(n) };
    // a plain ArrayBuffer and an unrelated SharedArrayBuffer, viewed at odd element offsets
    const plain = new Float32Array(n + 3).subarray(3);
    const shared = new Float32Array(new SharedArrayBuffer((2 * n + 1) * 4)).subarray(1);
    const fx = plain;
    fx.set(local.x);
    const fy = shared.subarray(0, n);
    const fg = new Float32Array(local.g);
    const fd = shared.subarray(n, 2 * n);
    const before = foreignCalls();
    be.softmaxForward(local.y, local.x, rows, cols, 0.5, 3);
    be.softmaxForward(fy, fx, rows, cols, 0.5, 3);
    assert.deepEqual(fy, local.y);
    be.softmaxBackward(local.d, local.g, local.y, rows, cols, 0.5);
    be.softmaxBackward(fd, fg, fy, rows, cols, 0.5);
    assert.deepEqual(fd, local.d);
    assert.ok(foreignCalls() >= before + 2);
    // in place on a foreign array (out and inp are the same view)
    be.softmaxForward(fx, fx, rows, cols, 0.5, 3);
    assert.deepEqual(fx, local.y);
    // out aliasing an input, both foreign
    const fa = new Float32Array(local.g);
    be.add(fa, fa, fg, n);
    const la = alloc(n);
    be.add(la, local.g, local.g, n);
    assert.deepEqual(fa, la);
  });

  it('writes only the addressed columns of a strided foreign GEMM output', () => {
    const M = 5;
    const N = 7;
    const K = 9;
    const ldc = 12;
    const offC = 2;
    const A = filled(new Float32Array(M * K), 5);
    const B = filled(new Float32Array(N * K), 6);
    const C = new Float32Array(offC + M * ldc).fill(42);
    be.gemm(false, true, M, N, K, 1, A, 0, K, B, 0, K, 0, C, offC, ldc);
    const ref = new Float32Array(offC + M * ldc).fill(42);
    js.gemm(false, true, M, N, K, 1, A, 0, K, B, 0, K, 0, ref, offC, ldc);
    assertClose(C, ref, 1e-5, 'C');
    for (let i = 0; i < C.length; i++) {
      const j = (i - offC) % ldc;
      if (i < offC || j >= N) assert.equal(C[i], 42, `element ${i} outside the addressed block changed`);
    }
  });

  it('agrees with js on GEMM in all transpose cases, the skinny path included', () => {
    for (const [M, N, K] of [[1, 67, 33], [3, 19, 130], [8, 40, 17], [9, 21, 13], [70, 45, 800]] as const) {
      for (const tA of [false, true]) {
        for (const tB of [false, true]) {
          const lda = (tA ? M : K) + 1;
          const ldb = (tB ? K : N) + 2;
          const ldc = N + 3;
          const A = filled(alloc(4 + (tA ? K : M) * lda), 7);
          const B = filled(alloc(5 + (tB ? N : K) * ldb), 8);
          const Cw = filled(alloc(1 + M * ldc), 9);
          const Cj = new Float32Array(Cw);
          be.gemm(tA, tB, M, N, K, 0.75, A, 4, lda, B, 5, ldb, 0.5, Cw, 1, ldc);
          js.gemm(tA, tB, M, N, K, 0.75, A, 4, lda, B, 5, ldb, 0.5, Cj, 1, ldc);
          assertClose(Cw, Cj, 1e-4, `gemm ${M}x${N}x${K} transA=${tA} transB=${tB}`);
        }
      }
    }
  });

  it('keeps earlier arrays valid (and in place) when its memory grows', () => {
    const small = filled(alloc(1024), 10);
    const copy = new Float32Array(small);
    const bytes = wasmBackendStats()!.memoryBytes;
    const big = alloc(bytes / 4 + (32 << 20) / 4); // more than the whole memory so far
    assert.ok(wasmBackendStats()!.memoryBytes > bytes, 'memory grew');
    assert.notEqual(big.buffer, small.buffer, 'a grown shared memory hands out a new buffer object');
    assert.deepEqual(small, copy);
    big[big.length - 1] = 1;
    const before = foreignCalls();
    be.scale(small, 2, small.length);
    be.axpy(big.subarray(0, 1024), 1, small, 1024);
    assert.equal(foreignCalls(), before, 'arrays from before and after the growth are both recognised as local');
    for (let i = 0; i < 1024; i++) {
      assert.equal(small[i], Math.fround(copy[i]! * 2));
      assert.equal(big[i], small[i]);
    }
    releaseWasmArray(big);
  });

  it('rejects float64 buffers with a KernelError', () => {
    const a = new Float64Array(8);
    assert.throws(() => be.add(a, a, a, 8), KernelError);
    assert.throws(() => be.gemm(false, false, 2, 2, 2, 1, a, 0, 2, a, 0, 2, 0, a, 0, 2), KernelError);
    assert.throws(() => be.sumSquares(a, 8), KernelError);
  });

  it('matches js bit for bit in add, axpy, scale, reduceSum, adamw, embedding and pickTarget', () => {
    const n = 1027;
    const w = { a: filled(alloc(n), 11), b: filled(alloc(n), 12), c: filled(alloc(n), 13), out: alloc(n) };
    const j = { a: new Float32Array(w.a), b: new Float32Array(w.b), c: new Float32Array(w.c), out: new Float32Array(n) };
    for (const [x, bk] of [[w, be], [j, js]] as const) {
      bk.add(x.out, x.a, x.b, n);
      bk.axpy(x.out, 0.1, x.c, n);
      bk.scale(x.out, 1 / 3, n);
      bk.reduceSum(x.a, [x.a, x.b, x.c, x.out], n);
    }
    assert.deepEqual(w.out, j.out);
    assert.deepEqual(w.a, j.a);

    const pw = filled(alloc(n), 14);
    const gw = filled(alloc(n), 15);
    const mw = filled(alloc(n), 16, 0.1);
    const vw = alloc(n);
    const [pj, gj, mj, vj] = [pw, gw, mw, vw].map((x) => new Float32Array(x)) as [Float32Array, Float32Array, Float32Array, Float32Array];
    for (let step = 1; step <= 3; step++) {
      be.adamw(pw, gw, mw, vw, n, 3e-4, 0.9, 0.95, 1e-8, 0.1, step, 0.5);
      js.adamw(pj, gj, mj, vj, n, 3e-4, 0.9, 0.95, 1e-8, 0.1, step, 0.5);
    }
    assert.deepEqual(pw, pj);
    assert.deepEqual(mw, mj);
    assert.deepEqual(vw, vj);

    const C = 13;
    const rows = 10;
    const tokens = Int32Array.from([0, 3, 9, 10, 12, 19, 20, 25, 4, 11]);
    const table = filled(alloc(10 * C), 17);
    const ew = alloc(rows * C);
    const ej = new Float32Array(rows * C);
    be.embeddingForward(ew, table, tokens, rows, C, 10, 10);
    js.embeddingForward(ej, table, tokens, rows, C, 10, 10);
    assert.deepEqual(ew, ej);
    const dtw = filled(alloc(10 * C), 18);
    const dtj = new Float32Array(dtw);
    be.embeddingBackward(dtw, ew, tokens, rows, C, 10, 10);
    js.embeddingBackward(dtj, ej, tokens, rows, C, 10, 10);
    assert.deepEqual(dtw, dtj);
    const pickW = alloc(rows);
    const pickJ = new Float32Array(rows);
    be.pickTarget(pickW, ew, tokens, rows, C, 3);
    js.pickTarget(pickJ, ej, tokens, rows, C, 3);
    assert.deepEqual(pickW, pickJ);
  });

  it('handles exp at the extremes in softmax and SwiGLU', () => {
    const xs = Float32Array.from([-1e4, -200, -88, -87.5, -20, -1, 0, 1, 20, 88, 88.7, 89, 200, 1e4, Infinity, -Infinity]);
    const n = xs.length;
    const ones = new Float32Array(n).fill(1);
    const ow = new Float32Array(n);
    const oj = new Float32Array(n);
    be.swigluForward(ow, xs, ones, n);
    js.swigluForward(oj, xs, ones, n);
    for (let i = 0; i < n; i++) {
      if (Number.isNaN(oj[i])) assert.ok(Number.isNaN(ow[i]), `silu(${xs[i]})`);
      else if (!Number.isFinite(oj[i]!)) assert.equal(ow[i], oj[i], `silu(${xs[i]})`);
      else assert.ok(Math.abs(ow[i]! - oj[i]!) <= 1e-6 * Math.max(1, Math.abs(oj[i]!)), `silu(${xs[i]}) = ${ow[i]}, expected ${oj[i]}`);
    }
    const row = Float32Array.from([1000, 0, -1000, 999]);
    const sw = new Float32Array(4);
    be.softmaxForward(sw, row, 1, 4, 1, 0);
    const sj = new Float32Array(4);
    js.softmaxForward(sj, row, 1, 4, 1, 0);
    assertClose(sw, sj, 1e-6, 'softmax');
  });

  it('works in worker threads, each with its own instance, on arrays posted between them', async () => {
    const n = 64;
    const shared = alloc(3 * n * n, true); // A, B, C for a 64×64×64 GEMM computed by the worker
    filled(shared.subarray(0, 2 * n * n), 19);
    const url = new URL('../src/backend/wasm.js', import.meta.url).href;
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      import(workerData.url).then((m) => {
        const be = m.loadWasmBackend();
        const { arr, n } = workerData;
        const A = arr.subarray(0, n * n), B = arr.subarray(n * n, 2 * n * n), C = arr.subarray(2 * n * n);
        be.gemm(false, false, n, n, n, 1, A, 0, n, B, 0, n, 0, C, 0, n); // all foreign here: copied in and out
        const own = be.alloc(n * n); // a local output, foreign inputs
        be.gemm(false, false, n, n, n, 1, A, 0, n, B, 0, n, 0, own, 0, n);
        let same = true;
        for (let i = 0; i < n * n; i++) if (own[i] !== C[i]) same = false;
        parentPort.postMessage({ same, local: own.buffer !== arr.buffer, stats: m.wasmBackendStats() });
      }).catch((e) => parentPort.postMessage({ error: String(e && e.stack || e) }));
    `;
    const worker = new Worker(code, { eval: true, workerData: { url, arr: shared, n } });
    const msg = await new Promise<{ same?: boolean; local?: boolean; stats?: { foreignCalls: number }; error?: string }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
    assert.equal(msg.error, undefined);
    assert.equal(msg.same, true);
    assert.equal(msg.local, true);
    assert.equal(msg.stats!.foreignCalls, 2);
    const ref = new Float32Array(n * n);
    js.gemm(false, false, n, n, n, 1, shared, 0, n, shared, n * n, n, 0, ref, 0, n);
    assertClose(shared.subarray(2 * n * n), ref, 1e-5, 'worker GEMM');
  });
});
