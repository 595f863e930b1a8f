/**
 * bfloat16 conversions and the bf16 GEMM contract: rounding is round-to-nearest-even on exact bit
 * patterns, widening is exact, and every backend's gemmBf16 equals its float32 GEMM on the widened
 * operands (products of bf16 values are exact in float32).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { bf16Bits, bf16Value, roundBf16 } from '../src/backend/bf16.js';
import { createJsBackend } from '../src/backend/js.js';
import { loadBackend } from '../src/backend/index.js';
import { type Backend, type BackendName, BackendUnavailableError, KernelError } from '../src/backend/types.js';

function bitsOf(x: number): number {
  const f = new Float32Array([x]);
  return new Uint32Array(f.buffer)[0]!;
}

function fromBits(b: number): number {
  return new Float32Array(new Uint32Array([b >>> 0]).buffer)[0]!;
}

describe('bf16 rounding', () => {
  test('exact values, ties to even, overflow, NaN, signed zero', () => {
    assert.equal(bf16Bits(1), 0x3f80);
    assert.equal(bf16Bits(-2), 0xc000);
    assert.equal(bf16Bits(0), 0x0000);
    assert.equal(bf16Bits(-0), 0x8000);
    assert.equal(bf16Bits(Infinity), 0x7f80);
    assert.equal(bf16Bits(-Infinity), 0xff80);
    // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0)
    assert.equal(bf16Bits(fromBits(0x3f808000)), 0x3f80);
    // 1 + 3·2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6: goes up to even
    assert.equal(bf16Bits(fromBits(0x3f818000)), 0x3f82);
    // just above half rounds up, just below rounds down
    assert.equal(bf16Bits(fromBits(0x3f808001)), 0x3f81);
    assert.equal(bf16Bits(fromBits(0x3f807fff)), 0x3f80);
    // the largest float32 rounds to +Inf in bf16
    assert.equal(bf16Bits(fromBits(0x7f7fffff)), 0x7f80);
    const nan = bf16Bits(NaN);
    assert.ok(Number.isNaN(bf16Value(nan)));
    // a signalling NaN whose payload sits only in the low bits still rounds to a NaN, never to Inf
    assert.ok(Number.isNaN(bf16Value(bf16Bits(fromBits(0x7f800001)))));
    assert.equal(roundBf16(3.14159), 3.140625);
    assert.equal(bitsOf(bf16Value(0x4049)), 0x40490000);
  });
});

function tryBackend(name: BackendName): Backend | string {
  try {
    return loadBackend(name);
  } catch (e) {
    if (e instanceof BackendUnavailableError) return e.reason;
    throw e;
  }
}

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

for (const name of ['js', 'wasm', 'native'] as const) {
  const be = tryBackend(name);
  describe(`bf16 kernels on ${name}`, { skip: typeof be === 'string' ? `${name} unavailable: ${be}` : false }, () => {
    const b = be as Backend;
    test('toBf16 and fromBf16 match the reference bit for bit', () => {
      const r = rng(7);
      const n = 1037;
      const x = new Float32Array(n).map(() => (r() - 0.5) * Math.pow(2, Math.floor(r() * 40) - 20));
      x[0] = NaN; x[1] = -0; x[2] = Infinity; x[3] = fromBits(0x3f808000);
      const h = new Uint16Array(n);
      b.toBf16(h, x, n);
      for (let i = 0; i < n; i++) {
        if (Number.isNaN(x[i]!)) assert.ok(Number.isNaN(bf16Value(h[i]!)));
        else assert.equal(h[i], bf16Bits(x[i]!), `element ${i} (${x[i]})`);
      }
      const w = new Float32Array(n);
      b.fromBf16(w, h, n);
      for (let i = 4; i < n; i++) assert.equal(w[i], roundBf16(x[i]!));
    });

    test('gemmBf16 equals the float32 GEMM of the widened operands, every transpose, strided', () => {
      const r = rng(11);
      const js = createJsBackend('f32');
      for (const [tA, tB] of [[false, false], [false, true], [true, false], [true, true]] as const) {
        for (const [M, N, K] of [[1, 7, 33], [5, 64, 48], [37, 19, 70]] as const) {
          const lda = (tA ? M : K) + 3;
          const ldb = (tB ? K : N) + 2;
          const ldc = N + 1;
          const aRows = tA ? K : M;
          const bRows = tB ? N : K;
          const A = new Uint16Array(2 + aRows * lda);
          const B = new Uint16Array(1 + bRows * ldb);
          for (let i = 0; i < A.length; i++) A[i] = bf16Bits(r() * 2 - 1);
          for (let i = 0; i < B.length; i++) B[i] = bf16Bits(r() * 2 - 1);
          const Af = new Float32Array(A.length);
          const Bf = new Float32Array(B.length);
          js.fromBf16(Af, A, A.length);
          js.fromBf16(Bf, B, B.length);
          const C0 = new Float32Array(M * ldc).map(() => r());
          const C = C0.slice();
          const ref = C0.slice();
          b.gemmBf16(tA, tB, M, N, K, 0.5, A, 2, lda, B, 1, ldb, 1, C, 0, ldc);
          js.gemm(tA, tB, M, N, K, 0.5, Af, 2, lda, Bf, 1, ldb, 1, ref, 0, ldc);
          for (let i = 0; i < C.length; i++) {
            // float32 sums in another order: within a few ulps of the float64-accumulated reference
            assert.ok(Math.abs(C[i]! - ref[i]!) <= 1e-5 * (1 + Math.abs(ref[i]!)), `${tA}${tB} ${M}x${N}x${K} [${i}]: ${C[i]} vs ${ref[i]}`);
          }
        }
      }
    });

    test('gemmBf16W (float32 A, bf16 weights [N, K]) is within the float32 summation bound of the exact product, M = 1…33, long K, strided', () => {
      const r = rng(13);
      for (const [M, N, K] of [[1, 37, 70], [2, 19, 513], [3, 8, 40], [5, 33, 129], [8, 17, 64], [9, 21, 77], [33, 18, 50], [1, 5, 9001], [4, 3, 2200]] as const) {
        for (const beta of [0, 1]) {
          const lda = K + 3;
          const ldb = K + 5;
          const ldc = N + 2;
          const A = new Float32Array(1 + M * lda).map(() => r() * 2 - 1);
          const B = new Uint16Array(4 + N * ldb);
          for (let i = 0; i < B.length; i++) B[i] = bf16Bits(r() * 2 - 1);
          const C0 = new Float32Array(1 + M * ldc).map(() => r());
          const C = C0.slice();
          b.gemmBf16W(M, N, K, 0.5, A, 1, lda, B, 4, ldb, beta, C, 1, ldc);
          for (let i = 0; i < M; i++) {
            for (let j = 0; j < N; j++) {
              let exact = 0;
              let mag = 0;
              for (let k = 0; k < K; k++) {
                const p = A[1 + i * lda + k]! * bf16Value(B[4 + j * ldb + k]!);
                exact += p;
                mag += Math.abs(p);
              }
              const c0 = C0[1 + i * ldc + j]!;
              const want = 0.5 * exact + beta * c0;
              const bound = (K + 4) * 2 ** -24 * (0.5 * mag + Math.abs(beta * c0)) + 1e-30;
              const got = C[1 + i * ldc + j]!;
              assert.ok(Math.abs(got - want) <= bound, `${M}x${N}x${K} beta ${beta} [${i},${j}]: ${got} vs ${want} (bound ${bound})`);
            }
          }
          // nothing outside C's rows was written
          for (let i = 0; i < M; i++) for (let j = N; j < ldc && 1 + i * ldc + j < C.length; j++) assert.equal(C[1 + i * ldc + j], C0[1 + i * ldc + j]);
          assert.equal(C[0], C0[0]);
        }
      }
      assert.throws(() => b.gemmBf16W(2, 2, 2, 1, new Float32Array(4), 0, 2, new Float32Array(4) as unknown as Uint16Array, 0, 2, 0, new Float32Array(4), 0, 2),
        (e: unknown) => e instanceof KernelError && /gemmBf16W: buffer B must be a Uint16Array/.test(e.message));
      assert.throws(() => b.gemmBf16W(2, 2, 2, 1, new Float32Array(4), 0, 2, new Uint16Array(3), 0, 2, 0, new Float32Array(4), 0, 2),
        (e: unknown) => e instanceof KernelError && /gemmBf16W: buffer B too short/.test(e.message));
    });

    test('gemmBf16 refuses float32 operands and short buffers, naming them', () => {
      const C = new Float32Array(4);
      assert.throws(() => b.gemmBf16(false, false, 2, 2, 2, 1, new Float32Array(4) as unknown as Uint16Array, 0, 2, new Uint16Array(4), 0, 2, 0, C, 0, 2),
        (e: unknown) => e instanceof KernelError && /gemmBf16: buffer A must be a Uint16Array/.test(e.message));
      assert.throws(() => b.gemmBf16(false, false, 2, 2, 2, 1, new Uint16Array(4), 0, 2, new Uint16Array(3), 0, 2, 0, C, 0, 2),
        (e: unknown) => e instanceof KernelError && /gemmBf16: buffer B too short/.test(e.message));
    });
  });
}
