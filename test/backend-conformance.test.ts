/**
 * Backend conformance: every kernel of the Backend interface, on every backend, against the js
 * reference.
 *
 * Each backend under test (js float32, and every other backend `probeBackends()` finds; unavailable
 * ones are reported as skipped with the reason) is fed float32 operands. The expected result is
 * computed by the js float64 backend from the very same float32 values, so it is the exact answer up
 * to float64 rounding, and the tolerances below measure only the backend's own float32 error.
 * Kernels whose result is fully determined in float32 (copies, max, selection, float32 additions in
 * a fixed order) are compared bit for bit with the js float32 backend instead.
 *
 * Every operand of the row-wise and element-wise kernels is also placed five ways (plain array,
 * unaligned subarray view, view into a SharedArrayBuffer, backend.alloc, backend.alloc(shared)); the
 * views are surrounded by NaN guards that must stay untouched and would poison any result that reads
 * them. GEMM padding (leading dimensions, offsets) likewise holds NaN.
 *
 * Tolerances (eps = 2^-23, float32 machine epsilon; "|Δ|" is the error of one element against the
 * float64 result of the same inputs; every bound also admits 1e-30 absolute, for flush-to-zero of
 * denormals). Each bound assumes the worst reasonable float32 implementation: sequential float32
 * accumulation and an exp accurate to a few ulp (vectorised polynomial), not js's float64 sums.
 *
 * | op                         | bound                                                        | reason |
 * |----------------------------|--------------------------------------------------------------|--------|
 * | gemm                       | |Δc_ij| ≤ 4(√K+1)·eps·(|α|·Σ_p|a_ip||b_pj| + |β|·|c_ij|)     | float32 dot products: rounding errors of K additions grow like √K (random walk) relative to Σ|a||b| |
 * | attentionForward att       | |Δp| ≤ p·(2σ + 8(1+L)eps + 4(√Tk+1)eps)                      | σ = score error bound 4(√HD+1)eps·Σ|q||k|/√HD; an error δ in a logit is a relative error δ in its probability; L = max |logit| (exp of a float32-rounded logit) |
 * | attentionForward out       | |Δo| ≤ (ρ + 4(√Tk+1)eps)·Σ_j p_j|v_j|                         | ρ = the row's relative probability bound above, then a float32 dot product over Tk keys |
 * | attentionBackward dq,dk,dv | |Δ| ≤ 2e-4 · max|grad| (per tensor)                           | dS = P⊙(dP − rowsum) cancels, so only an error scaled to the tensor's magnitude is meaningful; sequential float32 sums stay below 2e-5 here (T ≤ 31), 2e-4 leaves room for other orders |
 * | softmaxForward             | |Δp| ≤ p·(8(1+L)eps + 4(√cols+1)eps); masked entries exactly 0 | logits up to L carry float32 rounding L·eps into exp; the row sum adds √cols·eps |
 * | softmaxBackward            | |Δ| ≤ 8(√cols+2)eps·|s|·p_i·(|g_i| + max|g|)                  | cancellation in g_i − Σ g·p is bounded by the magnitudes, not by the result |
 * | rmsnormForward out, rstd   | relative 4(√cols+2)eps                                        | float32 sum of squares over cols, sqrt, product |
 * | rmsnormBackward dx, dw     | |Δ| ≤ 8(√n+2)eps·(Σ|terms| + |initial|)                        | dx has the cancellation s·w·dy − k·x, dw sums over rows; bounds use magnitudes of the summed terms |
 * | ropeForward/Backward       | |Δ| ≤ 4eps·(|a| + |b|)·(|cos| + |sin|)                        | two products and one addition per element of the pair (a, b) |
 * | rope bwd∘fwd               | |Δ| ≤ 16eps·max|x|                                            | two rotations, the tables' float32 cos²+sin² ≠ 1 by a few eps |
 * | swigluForward/Backward     | relative 32eps of the magnitudes (da: of |g·b|·(σ + |silu|(1−σ))) | exp-based, no cancellation except inside silu' which the magnitude bound covers |
 * | rowMax, pickTarget         | bitwise equal to js float32                                   | max and selection are exact |
 * | rowSumExp                  | relative (4√cols + 32 + 2L)eps                                | positive terms: float32 sum error ≤ √cols·eps typical; L = max|x − shift| |
 * | crossEntropyBackward       | |Δ| ≤ |gs|·(p·(32 + 2|l − lse|)eps + eps)                     | exp of a float32 difference, minus 1 at the target |
 * | embeddingForward           | bitwise equal to js float32                                   | a copy (and zeros outside the vocab block) |
 * | embeddingBackward          | |Δ| ≤ 4(√r+1)eps·(|initial| + Σ|terms|), r = repeats of a token | float32 accumulation; order within repeated tokens may differ |
 * | add                        | bitwise equal to js float32                                   | one correctly rounded float32 addition |
 * | axpy, scale                | relative 2eps (axpy: of |y| + |αx|)                           | one product, one addition (fused or not; α may be rounded to float32) |
 * | reduceSum                  | bitwise equal to js float32                                   | the contract fixes the order: left to right, rounded to float32 after each addition |
 * | sumSquares                 | relative 1e-9 vs float64                                      | the contract says float64 accumulation; float32 accumulation would be off by ~1e-5 here |
 * | adamw param, m, v          | |Δ| ≤ 8·step·eps·(|x| + max|x|)                                | a few roundings per step, compounded over the steps |
 *
 * Seeds: each test draws from rngFor(test name) (test/helpers/rng.ts); set CAAT_TEST_SEED to vary.
 * CAAT_TEST_THREADS=n loads the backends with n threads; CAAT_NATIVE_BLAS=openblas|onednn picks the
 * native build under test.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createJsBackend, ropeTables } from '../src/backend/index.js';
import type { Backend } from '../src/backend/types.js';
import { allBackends, skipUnless } from './helpers/backends.js';
import { PLACEMENT_KINDS, Placement, type PlacementKind } from './helpers/buffers.js';
import { assertAllFinite, assertBitwiseEqual, assertClose, EPS32, maxAbs, toF64 } from './helpers/compare.js';
import { BASE_SEED, type Rng, rngFor } from './helpers/rng.js';

const eps = EPS32;
/** Absolute floor of every bound (denormals may be flushed to zero). */
const TINY = 1e-30;

const ref64 = createJsBackend('f64');
const ref32 = createJsBackend('f32');

/** GEMM error factor for K-term float32 dot products. */
function gemmGamma(K: number): number {
  return 4 * (Math.sqrt(K) + 1) * eps;
}

/**
 * Assert |actual[i] − expected[i]| ≤ bound[i] + TINY for i < n, naming the worst element. NaN in the
 * result fails unless expected is NaN there too.
 */
function assertWithin(actual: ArrayLike<number>, expected: ArrayLike<number>, bound: ArrayLike<number>, what: string, n = expected.length): void {
  let worst = 0;
  let wi = -1;
  for (let i = 0; i < n; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    let r: number;
    if (Number.isNaN(a) || Number.isNaN(e)) r = Number.isNaN(a) && Number.isNaN(e) ? 0 : Infinity;
    else if (a === e) r = 0;
    else r = Math.abs(a - e) / (bound[i]! + TINY);
    if (r > worst) {
      worst = r;
      wi = i;
    }
  }
  if (worst > 1) {
    assert.fail(
      `${what}: element ${wi} of ${n} is ${actual[wi]}, expected ${expected[wi]} ± ${(bound[wi]! + TINY).toExponential(3)} ` +
        `(error ${Math.abs(actual[wi]! - expected[wi]!).toExponential(3)}, ${worst.toFixed(1)}× the bound; base seed ${BASE_SEED})`,
    );
  }
}

/** Raw bit patterns of a float32 array (to check padding and inputs are untouched, NaN payloads included). */
function bits(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length).slice();
}

function assertBitsUnchanged(a: Float32Array, before: Uint32Array, what: string, skip?: (i: number) => boolean): void {
  const now = new Uint32Array(a.buffer, a.byteOffset, a.length);
  for (let i = 0; i < a.length; i++) {
    if (skip?.(i)) continue;
    if (now[i] !== before[i]) assert.fail(`${what}: element ${i} changed from bits 0x${before[i]!.toString(16)} to ${a[i]}`);
  }
}

// ---------------------------------------------------------------------------------------------------
// GEMM
// ---------------------------------------------------------------------------------------------------

interface GemmCase {
  tA: boolean;
  tB: boolean;
  M: number;
  N: number;
  K: number;
  alpha?: number;
  beta?: number;
  /** Extra leading-dimension elements beyond the row length. */
  padA?: number;
  padB?: number;
  padC?: number;
  offA?: number;
  offB?: number;
  offC?: number;
  /** Extra elements after each operand. */
  tail?: number;
  /** Fill C's window with NaN before the call (only meaningful with beta = 0). */
  nanC?: boolean;
  placement?: PlacementKind;
}

function describeGemm(c: GemmCase, lda: number, ldb: number, ldc: number): string {
  return (
    `gemm(transA=${c.tA}, transB=${c.tB}, M=${c.M}, N=${c.N}, K=${c.K}, alpha=${c.alpha ?? 1}, beta=${c.beta ?? 0}, ` +
    `lda=${lda}, ldb=${ldb}, ldc=${ldc}, offA=${c.offA ?? 0}, offB=${c.offB ?? 0}, offC=${c.offC ?? 0}${c.nanC ? ', C=NaN' : ''}, ${c.placement ?? 'plain'})`
  );
}

/** Run one GEMM on `be` and on the float64 reference, and check C, its padding and the inputs. */
function runGemmCase(be: Backend, rng: Rng, c: GemmCase): void {
  const { tA, tB, M, N, K } = c;
  const alpha = c.alpha ?? 1;
  const beta = c.beta ?? 0;
  const [ar, ac] = tA ? [K, M] : [M, K];
  const [br, bc] = tB ? [N, K] : [K, N];
  const lda = Math.max(1, ac + (c.padA ?? 0));
  const ldb = Math.max(1, bc + (c.padB ?? 0));
  const ldc = Math.max(1, N + (c.padC ?? 0));
  const offA = c.offA ?? 0;
  const offB = c.offB ?? 0;
  const offC = c.offC ?? 0;
  const tail = c.tail ?? 0;
  const what = describeGemm(c, lda, ldb, ldc);
  const span = (r: number, cols: number, ld: number, off: number): number => off + (r === 0 || cols === 0 ? 0 : (r - 1) * ld + cols);

  // Operands: NaN everywhere outside the matrix windows (padding must never be read or written).
  const mk = (r: number, cols: number, ld: number, off: number, fill: () => number): { arr: Float64Array; inWin: (i: number) => boolean } => {
    const len = span(r, cols, ld, off) + tail;
    const arr = new Float64Array(len).fill(NaN);
    for (let i = 0; i < r; i++) for (let j = 0; j < cols; j++) arr[off + i * ld + j] = fill();
    const inWin = (i: number): boolean => {
      const k = i - off;
      if (k < 0 || r === 0 || cols === 0) return false;
      const row = Math.floor(k / ld);
      return row < r && k - row * ld < cols;
    };
    return { arr, inWin };
  };
  const Av = mk(ar, ac, lda, offA, () => Math.fround(rng.normal()));
  const Bv = mk(br, bc, ldb, offB, () => Math.fround(rng.normal()));
  const Cv = mk(M, N, ldc, offC, () => (c.nanC ? NaN : Math.fround(rng.normal())));

  const P = new Placement(c.placement ?? 'plain', be);
  const A = P.make(Av.arr, 'A');
  const B = P.make(Bv.arr, 'B');
  const C = P.make(Cv.arr, 'C');
  const aBits = bits(A);
  const bBits = bits(B);
  const cBits = bits(C);

  be.gemm(tA, tB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc);

  // Reference in float64 from the same float32 values, and Σ|a||b| for the bound.
  const C64 = toF64(Cv.arr);
  ref64.gemm(tA, tB, M, N, K, alpha, Av.arr, offA, lda, Bv.arr, offB, ldb, beta, C64, offC, ldc);
  const absA = Av.arr.map(Math.abs);
  const absB = Bv.arr.map(Math.abs);
  const S = new Float64Array(Cv.arr.length);
  ref64.gemm(tA, tB, M, N, K, 1, absA, offA, lda, absB, offB, ldb, 0, S, offC, ldc);

  const g = gemmGamma(K);
  const got: number[] = [];
  const want: number[] = [];
  const bound: number[] = [];
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      const idx = offC + i * ldc + j;
      got.push(C[idx]!);
      want.push(C64[idx]!);
      const c0 = beta === 0 ? 0 : Math.abs(beta * Cv.arr[idx]!);
      bound.push(g * (Math.abs(alpha) * S[idx]! + c0));
    }
  }
  assertWithin(got, want, bound, `${what}: C`);
  assertBitsUnchanged(C, cBits, `${what}: C outside the M×N window`, Cv.inWin);
  assertBitsUnchanged(A, aBits, `${what}: A (input)`);
  assertBitsUnchanged(B, bBits, `${what}: B (input)`);
  P.checkGuards(what);
}

const TRANS: readonly [boolean, boolean][] = [
  [false, false],
  [false, true],
  [true, false],
  [true, true],
];
const ODD_SIZES = [1, 3, 7, 17, 31, 67, 129] as const;

// ---------------------------------------------------------------------------------------------------
// Attention reference bounds (float64, naive loops; only for the error bounds)
// ---------------------------------------------------------------------------------------------------

interface AttnShape {
  B: number;
  Tq: number;
  Tk: number;
  NH: number;
  NKV: number;
  HD: number;
  kvBatchStride: number;
}

/** Per-element bounds for att and out of attentionForward (see the table). */
function attentionBounds(s: AttnShape, q: Float64Array, k: Float64Array, v: Float64Array, att: Float64Array): { attBound: Float64Array; outBound: Float64Array } {
  const { B, Tq, Tk, NH, NKV, HD, kvBatchStride } = s;
  const group = NH / NKV;
  const scale = 1 / Math.sqrt(HD);
  const attBound = new Float64Array(B * NH * Tq * Tk);
  const outBound = new Float64Array(B * Tq * NH * HD);
  const gHD = gemmGamma(HD);
  const gTk = 4 * (Math.sqrt(Tk) + 1) * eps;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < NH; h++) {
      const kv = Math.floor(h / group);
      for (let i = 0; i < Tq; i++) {
        const visible = Tk - Tq + i + 1;
        const qo = ((b * Tq + i) * NH + h) * HD;
        let sigma = 0;
        let L = 0;
        for (let j = 0; j < visible; j++) {
          const ko = b * kvBatchStride + (j * NKV + kv) * HD;
          let sa = 0;
          let sv = 0;
          for (let d = 0; d < HD; d++) {
            sa += Math.abs(q[qo + d]! * k[ko + d]!);
            sv += q[qo + d]! * k[ko + d]!;
          }
          sigma = Math.max(sigma, gHD * sa * scale);
          L = Math.max(L, Math.abs(sv * scale));
        }
        const rho = 2 * sigma + 8 * (1 + L) * eps + 4 * (Math.sqrt(Tk) + 1) * eps;
        const ao = ((b * NH + h) * Tq + i) * Tk;
        for (let j = 0; j < Tk; j++) attBound[ao + j] = rho * att[ao + j]!;
        for (let d = 0; d < HD; d++) {
          let m = 0;
          for (let j = 0; j < visible; j++) m += att[ao + j]! * Math.abs(v[b * kvBatchStride + (j * NKV + kv) * HD + d]!);
          outBound[qo + d] = (rho + gTk) * m;
        }
      }
    }
  }
  return { attBound, outBound };
}

// ---------------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------------

function defineSuite(be: Backend): void {
  /** A test whose body runs once per operand placement, with the same random data each time. */
  function placedTest(name: string, body: (P: Placement, rng: Rng, where: string) => void): void {
    test(name, async (t) => {
      for (const kind of PLACEMENT_KINDS) {
        await t.test(kind, () => {
          const P = new Placement(kind, be);
          const where = `${be.name} ${name} [${kind}]`;
          body(P, rngFor(name), where);
          P.checkGuards(where);
        });
      }
    });
  }

  test('alloc: zero-filled Float32Array of the requested length, shared when asked', () => {
    for (const n of [0, 1, 17, 4099]) {
      for (const shared of [false, true]) {
        const a = be.alloc(n, shared);
        assert.ok(a instanceof Float32Array, `alloc(${n}, ${shared}) returned ${a.constructor.name}, expected Float32Array (float32 working precision)`);
        assert.equal(a.length, n, `alloc(${n}, ${shared}).length`);
        if (shared) assert.ok(a.buffer instanceof SharedArrayBuffer, `alloc(${n}, true) must be SharedArrayBuffer-backed`);
        for (let i = 0; i < n; i++) if (a[i] !== 0) assert.fail(`alloc(${n}, ${shared})[${i}] = ${a[i]}, expected 0`);
      }
    }
  });

  // ----- GEMM ---------------------------------------------------------------------------------------

  describe('gemm', () => {
    for (const [tA, tB] of TRANS) {
      test(`M, N, K from {${ODD_SIZES.join(', ')}} (M·N·K ≤ 67³, and 129³), transA=${tA} transB=${tB}, random alpha/beta/ld/offsets`, () => {
        const rng = rngFor(`gemm odd ${tA} ${tB}`);
        for (const M of ODD_SIZES) {
          for (const N of ODD_SIZES) {
            for (const K of ODD_SIZES) {
              if (M * N * K > 67 * 67 * 67 && !(M === 129 && N === 129 && K === 129)) continue; // keep the js reference fast
              const beta = rng.pick([0, 0, 1, 0.5, -1.5]);
              runGemmCase(be, rng, {
                tA, tB, M, N, K,
                alpha: rng.pick([1, 1, -1, 0.75, 2.5]),
                beta,
                padA: rng.pick([0, 0, 1, 5]),
                padB: rng.pick([0, 0, 2, 7]),
                padC: rng.pick([0, 0, 3]),
                offA: rng.pick([0, 0, 1, 13]),
                offB: rng.pick([0, 0, 3, 8]),
                offC: rng.pick([0, 0, 5]),
                tail: rng.int(0, 4),
                nanC: beta === 0 && rng.next() < 0.5,
              });
            }
          }
        }
      });
    }

    test('sizes past typical blocking boundaries', () => {
      const rng = rngFor('gemm blocks');
      for (const [tA, tB] of TRANS) {
        runGemmCase(be, rng, { tA, tB, M: 259, N: 131, K: 263 });
        runGemmCase(be, rng, { tA, tB, M: 65, N: 517, K: 129, beta: 1 });
      }
    });

    test('leading dimensions larger than needed', () => {
      const rng = rngFor('gemm ld');
      for (const [tA, tB] of TRANS) {
        runGemmCase(be, rng, { tA, tB, M: 17, N: 31, K: 7, padA: 5, padB: 3, padC: 11 });
        runGemmCase(be, rng, { tA, tB, M: 3, N: 5, K: 67, padA: 200, padB: 1, padC: 100, beta: 1 });
        runGemmCase(be, rng, { tA, tB, M: 33, N: 8, K: 16, padA: 1, padB: 1000, padC: 1 });
      }
    });

    test('offsets into larger buffers', () => {
      const rng = rngFor('gemm offsets');
      for (const [tA, tB] of TRANS) {
        runGemmCase(be, rng, { tA, tB, M: 13, N: 29, K: 19, offA: 1, offB: 2, offC: 3, tail: 9 });
        runGemmCase(be, rng, { tA, tB, M: 31, N: 7, K: 67, offA: 1001, offB: 77, offC: 513, padC: 4, beta: 0.5 });
      }
    });

    test('column block of a wider matrix (the attention pattern: offset h·HD, ld NH·HD)', () => {
      const rng = rngFor('gemm heads');
      const NH = 4, HD = 12, T = 19;
      for (let h = 0; h < NH; h++) {
        // scores = q_h · k_hᵀ and out_h = P · v_h as composed attention does
        runGemmCase(be, rng, { tA: false, tB: true, M: T, N: T, K: HD, padA: (NH - 1) * HD, padB: (NH - 1) * HD, offA: h * HD, offB: h * HD });
        runGemmCase(be, rng, { tA: false, tB: false, M: T, N: HD, K: T, padB: (NH - 1) * HD, padC: (NH - 1) * HD, offB: h * HD, offC: h * HD, nanC: true });
      }
    });

    for (const placement of ['view', 'shared-view', 'alloc', 'alloc-shared'] as const) {
      test(`operands as ${placement === 'view' ? 'unaligned subarray views' : placement === 'shared-view' ? 'SharedArrayBuffer views' : `backend.alloc${placement === 'alloc-shared' ? '(shared)' : ''} buffers`}`, () => {
        const rng = rngFor(`gemm placement ${placement}`);
        for (const [tA, tB] of TRANS) {
          runGemmCase(be, rng, { tA, tB, M: 23, N: 37, K: 41, placement, offA: 1, offC: 2, padB: 1, beta: 1 });
          runGemmCase(be, rng, { tA, tB, M: 4, N: 67, K: 131, placement, nanC: true });
        }
      });
    }

    test('beta = 0 overwrites C even where it holds NaN', () => {
      const rng = rngFor('gemm beta0');
      for (const [tA, tB] of TRANS) {
        for (const [M, N, K] of [[17, 31, 7], [1, 129, 67], [8, 33, 65], [64, 64, 64]] as const) {
          runGemmCase(be, rng, { tA, tB, M, N, K, beta: 0, nanC: true, padC: 2 });
        }
      }
    });

    test('beta = 1 accumulates, general alpha and beta', () => {
      const rng = rngFor('gemm beta1');
      for (const [tA, tB] of TRANS) {
        for (const [alpha, beta] of [[1, 1], [-0.5, 1], [2, 0.25], [0, 0.5], [0, 1], [1, -1]] as const) {
          runGemmCase(be, rng, { tA, tB, M: 13, N: 21, K: 34, alpha, beta });
          runGemmCase(be, rng, { tA, tB, M: 3, N: 130, K: 257, alpha, beta });
        }
      }
    });

    test('skinny path: M = 1..8 with large N and K, every transpose combination', () => {
      const rng = rngFor('gemm skinny');
      for (const [tA, tB] of TRANS) {
        for (let M = 1; M <= 8; M++) {
          const big = tB && !tA;
          runGemmCase(be, rng, {
            tA, tB, M,
            N: big ? 1031 : 515,
            K: big ? 769 : 389,
            beta: M % 3 === 0 ? 1 : 0,
            nanC: M % 3 === 1,
            offA: M % 2,
            padA: M === 5 ? 3 : 0,
          });
        }
      }
    });

    test('K = 0: C = beta·C (beta = 0 clears, NaN included)', () => {
      const rng = rngFor('gemm k0');
      for (const [tA, tB] of TRANS) {
        for (const beta of [0, 0.5, 1]) {
          runGemmCase(be, rng, { tA, tB, M: 7, N: 9, K: 0, beta, alpha: 1.5, padC: 2, offC: 1 });
          runGemmCase(be, rng, { tA, tB, M: 3, N: 5, K: 0, beta, nanC: beta === 0 });
        }
      }
    });

    test('M = 0 or N = 0 leaves every buffer untouched', () => {
      const rng = rngFor('gemm mn0');
      for (const [tA, tB] of TRANS) {
        runGemmCase(be, rng, { tA, tB, M: 0, N: 9, K: 5, beta: 0 });
        runGemmCase(be, rng, { tA, tB, M: 7, N: 0, K: 5, beta: 0 });
        runGemmCase(be, rng, { tA, tB, M: 0, N: 0, K: 0, beta: 0.5 });
      }
    });
  });

  // ----- Attention -----------------------------------------------------------------------------------

  describe('attentionForward', () => {
    const cases: (AttnShape & { name: string; cacheNaN?: boolean })[] = [
      { name: 'training shape, GQA NH/NKV = 2', B: 2, Tq: 17, Tk: 17, NH: 4, NKV: 2, HD: 16, kvBatchStride: 17 * 2 * 16 },
      { name: 'MHA (NKV = NH), HD = 24', B: 1, Tq: 9, Tk: 9, NH: 3, NKV: 3, HD: 24, kvBatchStride: 9 * 3 * 24 },
      { name: 'MQA (NKV = 1)', B: 3, Tq: 7, Tk: 7, NH: 4, NKV: 1, HD: 8, kvBatchStride: 7 * 8 },
      { name: 'Tq < Tk from a KV cache (kvBatchStride > Tk·NKV·HD, unused cache is NaN)', B: 2, Tq: 5, Tk: 19, NH: 4, NKV: 2, HD: 16, kvBatchStride: 32 * 2 * 16, cacheNaN: true },
      { name: 'decode step Tq = 1 from a KV cache', B: 2, Tq: 1, Tk: 23, NH: 8, NKV: 2, HD: 8, kvBatchStride: 40 * 2 * 8, cacheNaN: true },
      { name: 'long rows (Tk = 67)', B: 1, Tq: 67, Tk: 67, NH: 2, NKV: 1, HD: 32, kvBatchStride: 67 * 32 },
    ];
    for (const c of cases) {
      placedTest(`attentionForward: ${c.name}`, (P, rng, where) => {
        const { B, Tq, Tk, NH, NKV, HD, kvBatchStride } = c;
        const kvLen = (B - 1) * kvBatchStride + (c.cacheNaN ? kvBatchStride : Tk * NKV * HD);
        const q64 = toF64(rng.normalF32(B * Tq * NH * HD));
        const k64 = toF64(rng.normalF32(kvLen));
        const v64 = toF64(rng.normalF32(kvLen));
        if (c.cacheNaN) {
          // cache slots at positions ≥ Tk hold NaN: reading them would poison the result
          for (let b = 0; b < B; b++) {
            k64.fill(NaN, b * kvBatchStride + Tk * NKV * HD, (b + 1) * kvBatchStride);
            v64.fill(NaN, b * kvBatchStride + Tk * NKV * HD, (b + 1) * kvBatchStride);
          }
        }
        const q = P.make(q64, 'q');
        const k = P.make(k64, 'k');
        const v = P.make(v64, 'v');
        const out = P.filled(B * Tq * NH * HD, NaN, 'out');
        const att = P.filled(B * NH * Tq * Tk, NaN, 'att');
        be.attentionForward(out, att, q, k, v, B, Tq, Tk, NH, NKV, HD, kvBatchStride);

        const out64 = new Float64Array(out.length);
        const att64 = new Float64Array(att.length);
        ref64.attentionForward(out64, att64, q64, k64, v64, B, Tq, Tk, NH, NKV, HD, kvBatchStride);
        const { attBound, outBound } = attentionBounds(c, q64, k64, v64, att64);
        assertWithin(att, att64, attBound, `${where}: att`);
        assertWithin(out, out64, outBound, `${where}: out`);
        // masked probabilities are exactly zero
        for (let bh = 0; bh < B * NH; bh++) {
          for (let i = 0; i < Tq; i++) {
            for (let j = Tk - Tq + i + 1; j < Tk; j++) {
              const x = att[(bh * Tq + i) * Tk + j]!;
              if (x !== 0) assert.fail(`${where}: att[b·h=${bh}, i=${i}, j=${j}] = ${x} is masked and must be 0`);
            }
          }
        }
      });
    }
  });

  describe('attentionBackward', () => {
    const cases = [
      { name: 'GQA NH/NKV = 2', B: 2, T: 13, NH: 4, NKV: 2, HD: 16 },
      { name: 'MQA NKV = 1, odd HD', B: 1, T: 17, NH: 3, NKV: 1, HD: 10 },
      { name: 'MHA, T = 31', B: 1, T: 31, NH: 2, NKV: 2, HD: 8 },
    ];
    for (const c of cases) {
      placedTest(`attentionBackward: ${c.name}`, (P, rng, where) => {
        const { B, T, NH, NKV, HD } = c;
        const qn = B * T * NH * HD;
        const kvn = B * T * NKV * HD;
        const q64 = toF64(rng.normalF32(qn));
        const k64 = toF64(rng.normalF32(kvn));
        const v64 = toF64(rng.normalF32(kvn));
        const dout64 = toF64(rng.normalF32(qn));
        // att from the float64 forward, rounded to float32: the same probabilities for both sides
        const o64 = new Float64Array(qn);
        const a64 = new Float64Array(B * NH * T * T);
        ref64.attentionForward(o64, a64, q64, k64, v64, B, T, T, NH, NKV, HD, T * NKV * HD);
        const att32 = Float32Array.from(a64);
        const att64 = toF64(att32);

        const q = P.make(q64, 'q');
        const k = P.make(k64, 'k');
        const v = P.make(v64, 'v');
        const dout = P.make(dout64, 'dout');
        const att = P.make(att32, 'att');
        const dq = P.filled(qn, NaN, 'dq');
        const dk = P.filled(kvn, NaN, 'dk');
        const dv = P.filled(kvn, NaN, 'dv');
        const scratch = P.filled(T * T + 7, NaN, 'scratch');
        be.attentionBackward(dq, dk, dv, scratch, dout, q, k, v, att, B, T, NH, NKV, HD);

        const dq64 = new Float64Array(qn);
        const dk64 = new Float64Array(kvn);
        const dv64 = new Float64Array(kvn);
        ref64.attentionBackward(dq64, dk64, dv64, new Float64Array(T * T), dout64, q64, k64, v64, att64, B, T, NH, NKV, HD);
        const tol = { rel: 0, abs: 2e-4, floor: TINY };
        assertClose(dq, dq64, tol, `${where}: dq`);
        assertClose(dk, dk64, tol, `${where}: dk`);
        assertClose(dv, dv64, tol, `${where}: dv`);
      });
    }
  });

  // ----- Softmax -------------------------------------------------------------------------------------

  const softmaxCases = [
    { name: 'causalQ = 0', rows: 12, cols: 67, causalQ: 0, scale: 0.37, std: 3 },
    { name: 'causalQ = 4 (groups of 4 query rows, cols > causalQ)', rows: 12, cols: 67, causalQ: 4, scale: 0.5, std: 2 },
    { name: 'causalQ = cols (square causal)', rows: 34, cols: 17, causalQ: 17, scale: 1, std: 1 },
    { name: 'long rows', rows: 3, cols: 1031, causalQ: 0, scale: 1, std: 1 },
    { name: 'large logits (±150: must subtract the row max)', rows: 4, cols: 9, causalQ: 0, scale: 1, std: 1, shift: 150 },
    { name: 'causalQ = 1 (decode)', rows: 5, cols: 33, causalQ: 1, scale: 0.125, std: 4 },
  ];

  function softmaxExpected(x: Float64Array, c: (typeof softmaxCases)[number]): { p: Float64Array; bound: Float64Array } {
    const p = new Float64Array(x.length);
    ref64.softmaxForward(p, x, c.rows, c.cols, c.scale, c.causalQ);
    const bound = new Float64Array(x.length);
    for (let r = 0; r < c.rows; r++) {
      const L = maxAbs(x.subarray(r * c.cols, (r + 1) * c.cols)) * Math.abs(c.scale);
      const rel = 8 * (1 + L) * eps + 4 * (Math.sqrt(c.cols) + 1) * eps;
      for (let j = 0; j < c.cols; j++) bound[r * c.cols + j] = rel * p[r * c.cols + j]!;
    }
    return { p, bound };
  }

  function softmaxInput(rng: Rng, c: (typeof softmaxCases)[number]): Float64Array {
    const x = rng.normalF64(c.rows * c.cols, c.std);
    if (c.shift) {
      for (let j = 0; j < c.cols; j++) {
        x[j]! += c.shift;
        x[c.cols + j]! -= c.shift;
      }
    }
    return toF64(Float32Array.from(x));
  }

  function checkMasked(out: Float32Array, c: (typeof softmaxCases)[number], where: string): void {
    if (c.causalQ === 0) return;
    for (let r = 0; r < c.rows; r++) {
      const visible = (r % c.causalQ) + (c.cols - c.causalQ) + 1;
      for (let j = visible; j < c.cols; j++) {
        if (out[r * c.cols + j] !== 0) assert.fail(`${where}: out[${r}, ${j}] = ${out[r * c.cols + j]} is masked and must be 0`);
      }
    }
  }

  for (const c of softmaxCases) {
    placedTest(`softmaxForward: ${c.name}`, (P, rng, where) => {
      const x64 = softmaxInput(rng, c);
      const inp = P.make(x64, 'inp');
      const inBits = bits(inp);
      const out = P.filled(x64.length, NaN, 'out');
      be.softmaxForward(out, inp, c.rows, c.cols, c.scale, c.causalQ);
      const { p, bound } = softmaxExpected(x64, c);
      assertWithin(out, p, bound, `${where}: out`);
      checkMasked(out, c, where);
      assertBitsUnchanged(inp, inBits, `${where}: inp (input)`);
    });
    placedTest(`softmaxForward in place (out = inp): ${c.name}`, (P, rng, where) => {
      const x64 = softmaxInput(rng, c);
      const buf = P.make(x64, 'inp/out');
      be.softmaxForward(buf, buf, c.rows, c.cols, c.scale, c.causalQ);
      const { p, bound } = softmaxExpected(x64, c);
      assertWithin(buf, p, bound, `${where}: out`);
      checkMasked(buf, c, where);
    });
  }

  const softmaxBwdCases = [
    { rows: 12, cols: 67, scale: 0.37, causalQ: 0 },
    { rows: 34, cols: 17, scale: 1, causalQ: 17 },
    { rows: 3, cols: 1031, scale: -0.5, causalQ: 0 },
  ];
  for (const inPlace of [false, true]) {
    placedTest(`softmaxBackward${inPlace ? ' in place (dinp = dout)' : ''}`, (P, rng, where) => {
      for (const c of softmaxBwdCases) {
        const n = c.rows * c.cols;
        const p64 = new Float64Array(n);
        ref64.softmaxForward(p64, rng.normalF64(n, 2), c.rows, c.cols, 1, c.causalQ);
        const out64 = toF64(Float32Array.from(p64));
        const g64 = toF64(rng.normalF32(n));
        const out = P.make(out64, 'out');
        const dout = P.make(g64, 'dout');
        const dinp = inPlace ? dout : P.filled(n, NaN, 'dinp');
        be.softmaxBackward(dinp, dout, out, c.rows, c.cols, c.scale);
        const d64 = new Float64Array(n);
        ref64.softmaxBackward(d64, g64, out64, c.rows, c.cols, c.scale);
        const bound = new Float64Array(n);
        for (let r = 0; r < c.rows; r++) {
          const gmax = maxAbs(g64.subarray(r * c.cols, (r + 1) * c.cols));
          for (let j = 0; j < c.cols; j++) {
            const i = r * c.cols + j;
            bound[i] = 8 * (Math.sqrt(c.cols) + 2) * eps * Math.abs(c.scale) * out64[i]! * (Math.abs(g64[i]!) + gmax);
          }
        }
        assertWithin(dinp, d64, bound, `${where} rows=${c.rows} cols=${c.cols}: dinp`);
      }
    });
  }

  // ----- RMSNorm -------------------------------------------------------------------------------------

  const rmsCases = [
    { rows: 9, cols: 67 },
    { rows: 4, cols: 1024 },
    { rows: 1, cols: 5 },
  ];
  placedTest('rmsnormForward', (P, rng, where) => {
    for (const { rows, cols } of rmsCases) {
      const x64 = toF64(rng.normalF32(rows * cols, 2));
      const w64 = toF64(Float32Array.from(rng.normalF64(cols, 0.3).map((u) => 1 + u)));
      const x = P.make(x64, 'x');
      const w = P.make(w64, 'w');
      const out = P.filled(rows * cols, NaN, 'out');
      const rstd = P.filled(rows, NaN, 'rstd');
      be.rmsnormForward(out, rstd, x, w, rows, cols, 1e-5);
      const out64 = new Float64Array(rows * cols);
      const rstd64 = new Float64Array(rows);
      ref64.rmsnormForward(out64, rstd64, x64, w64, rows, cols, 1e-5);
      const rel = 4 * (Math.sqrt(cols) + 2) * eps;
      assertClose(out, out64, { rel, abs: 0, floor: TINY }, `${where} ${rows}×${cols}: out`);
      assertClose(rstd, rstd64, { rel, abs: 0, floor: TINY }, `${where} ${rows}×${cols}: rstd`);
    }
  });

  placedTest('rmsnormBackward (accumulates into nonzero dx, dw)', (P, rng, where) => {
    for (const { rows, cols } of rmsCases) {
      const n = rows * cols;
      const x64 = toF64(rng.normalF32(n, 2));
      const w64 = toF64(Float32Array.from(rng.normalF64(cols, 0.3).map((u) => 1 + u)));
      const dy64 = toF64(rng.normalF32(n));
      const r64 = new Float64Array(rows);
      ref64.rmsnormForward(new Float64Array(n), r64, x64, w64, rows, cols, 1e-5);
      const rstd64 = toF64(Float32Array.from(r64));
      const dx0 = toF64(rng.normalF32(n));
      const dw0 = toF64(rng.normalF32(cols));

      const dx = P.make(dx0, 'dx');
      const dw = P.make(dw0, 'dw');
      be.rmsnormBackward(dx, dw, P.make(dy64, 'dout'), P.make(x64, 'x'), P.make(w64, 'w'), P.make(rstd64, 'rstd'), rows, cols);
      const dxE = dx0.slice();
      const dwE = dw0.slice();
      ref64.rmsnormBackward(dxE, dwE, dy64, x64, w64, rstd64, rows, cols);

      // bounds from the magnitudes of the summed terms
      const gc = 8 * (Math.sqrt(cols) + 2) * eps;
      const gr = 8 * (Math.sqrt(rows) + 2) * eps;
      const dxB = new Float64Array(n);
      const dwB = new Float64Array(cols).map((_, c) => gr * Math.abs(dw0[c]!));
      for (let r = 0; r < rows; r++) {
        const s = rstd64[r]!;
        let dotAbs = 0;
        for (let c = 0; c < cols; c++) dotAbs += Math.abs(dy64[r * cols + c]! * w64[c]! * x64[r * cols + c]!);
        const kAbs = (dotAbs / cols) * s * s * s;
        for (let c = 0; c < cols; c++) {
          const i = r * cols + c;
          dxB[i] = gc * (Math.abs(s * w64[c]! * dy64[i]!) + kAbs * Math.abs(x64[i]!) + Math.abs(dx0[i]!));
          dwB[c]! += gr * Math.abs(dy64[i]! * x64[i]! * s);
        }
      }
      assertWithin(dx, dxE, dxB, `${where} ${rows}×${cols}: dx`);
      assertWithin(dw, dwE, dwB, `${where} ${rows}×${cols}: dw`);
    }
  });

  // ----- RoPE ----------------------------------------------------------------------------------------

  const ropeCases = [
    { B: 2, T: 5, H: 3, HD: 16, pos0: 7 },
    { B: 1, T: 9, H: 2, HD: 6, pos0: 0 },
    { B: 3, T: 1, H: 4, HD: 64, pos0: 40 },
  ];
  function ropeBound(x: Float64Array, cos: Float64Array, sin: Float64Array, c: (typeof ropeCases)[number]): Float64Array {
    const half = c.HD / 2;
    const bound = new Float64Array(x.length);
    for (let bt = 0; bt < c.B * c.T; bt++) {
      const p = (c.pos0 + (bt % c.T)) * half;
      for (let h = 0; h < c.H; h++) {
        const o = (bt * c.H + h) * c.HD;
        for (let i = 0; i < half; i++) {
          const m = 4 * eps * (Math.abs(x[o + i]! * cos[p + i]!) + Math.abs(x[o + i + half]! * sin[p + i]!) + Math.abs(x[o + i + half]! * cos[p + i]!) + Math.abs(x[o + i]! * sin[p + i]!));
          bound[o + i] = m;
          bound[o + i + half] = m;
        }
      }
    }
    return bound;
  }
  for (const dir of ['ropeForward', 'ropeBackward'] as const) {
    placedTest(`${dir} (in place, pos0 > 0 and = 0)`, (P, rng, where) => {
      for (const c of ropeCases) {
        const { cos: cos32, sin: sin32 } = ropeTables(c.pos0 + c.T + 3, c.HD, 10000, Float32Array);
        const cos64 = toF64(cos32);
        const sin64 = toF64(sin32);
        const n = c.B * c.T * c.H * c.HD;
        const x64 = toF64(rng.normalF32(n));
        const x = P.make(x64, 'x');
        const cos = P.make(cos32, 'cos');
        const sin = P.make(sin32, 'sin');
        be[dir](x, cos, sin, c.B, c.T, c.H, c.HD, c.pos0);
        const e = x64.slice();
        ref64[dir](e, cos64, sin64, c.B, c.T, c.H, c.HD, c.pos0);
        assertWithin(x, e, ropeBound(x64, cos64, sin64, c), `${where} B=${c.B} T=${c.T} H=${c.H} HD=${c.HD} pos0=${c.pos0}`);
      }
    });
  }
  placedTest('ropeBackward ∘ ropeForward = identity', (P, rng, where) => {
    for (const c of ropeCases) {
      const { cos, sin } = ropeTables(c.pos0 + c.T, c.HD, 500000, Float32Array);
      const x0 = rng.normalF32(c.B * c.T * c.H * c.HD);
      const x = P.make(x0, 'x');
      const cs = P.make(cos, 'cos');
      const sn = P.make(sin, 'sin');
      be.ropeForward(x, cs, sn, c.B, c.T, c.H, c.HD, c.pos0);
      be.ropeBackward(x, cs, sn, c.B, c.T, c.H, c.HD, c.pos0);
      assertClose(x, x0, { rel: 0, abs: 16 * eps, floor: TINY }, `${where} HD=${c.HD} pos0=${c.pos0}`);
    }
  });

  // ----- SwiGLU --------------------------------------------------------------------------------------

  function swigluInputs(rng: Rng): { a: Float64Array; b: Float64Array } {
    const n = 1031;
    const a = rng.normalF64(n, 3);
    const special = [30, -30, 60, -60, 100, -100, 0, -0, 1e-20, -1.2784645, 88, -88, 15.5, -15.5];
    special.forEach((s, i) => { a[i * 7] = s; });
    const b = rng.normalF64(n, 1);
    return { a: toF64(Float32Array.from(a)), b: toF64(Float32Array.from(b)) };
  }
  placedTest('swigluForward (|a| up to 100)', (P, rng, where) => {
    const { a, b } = swigluInputs(rng);
    const n = a.length;
    const out = P.filled(n, NaN, 'out');
    be.swigluForward(out, P.make(a, 'a'), P.make(b, 'b'), n);
    const e = new Float64Array(n);
    ref64.swigluForward(e, a, b, n);
    assertAllFinite(out, `${where}: out`);
    assertClose(out, e, { rel: 32 * eps, abs: 0, floor: TINY }, `${where}: out`);
  });
  placedTest('swigluBackward (|a| up to 100)', (P, rng, where) => {
    const { a, b } = swigluInputs(rng);
    const n = a.length;
    const g = toF64(rng.normalF32(n));
    const da = P.filled(n, NaN, 'da');
    const db = P.filled(n, NaN, 'db');
    be.swigluBackward(da, db, P.make(g, 'dout'), P.make(a, 'a'), P.make(b, 'b'), n);
    const daE = new Float64Array(n);
    const dbE = new Float64Array(n);
    ref64.swigluBackward(daE, dbE, g, a, b, n);
    assertAllFinite(da, `${where}: da`);
    assertAllFinite(db, `${where}: db`);
    const daB = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const sig = 1 / (1 + Math.exp(-a[i]!));
      daB[i] = 32 * eps * Math.abs(g[i]! * b[i]!) * (sig + Math.abs(a[i]! * sig) * (1 - sig));
    }
    assertWithin(da, daE, daB, `${where}: da`);
    assertClose(db, dbE, { rel: 32 * eps, abs: 0, floor: TINY }, `${where}: db`);
  });

  // ----- Cross-entropy pieces ------------------------------------------------------------------------

  placedTest('rowMax (bitwise)', (P, rng, where) => {
    for (const [rows, cols] of [[7, 1031], [16, 3], [1, 1]] as const) {
      const x32 = rng.normalF32(rows * cols, 5);
      if (rows > 1) for (let j = 0; j < cols; j++) x32[cols + j] = -1000 - j; // an all-negative row
      const out = P.filled(rows, NaN, 'out');
      be.rowMax(out, P.make(x32, 'x'), rows, cols);
      const e = new Float32Array(rows);
      ref32.rowMax(e, x32, rows, cols);
      assertBitwiseEqual(out, e, `${where} ${rows}×${cols}`);
    }
  });

  placedTest('rowSumExp', (P, rng, where) => {
    for (const [rows, cols] of [[7, 1031], [16, 3], [2, 50000]] as const) {
      const x64 = toF64(rng.normalF32(rows * cols, 3));
      const mx = new Float64Array(rows);
      ref64.rowMax(mx, x64, rows, cols);
      // shift = row max for some rows, something else (sums > 1 or < 1) for others
      const shift64 = toF64(Float32Array.from(mx, (m, r) => (r % 3 === 0 ? m : r % 3 === 1 ? m - 5 : m + 4)));
      const out = P.filled(rows, NaN, 'out');
      be.rowSumExp(out, P.make(x64, 'x'), P.make(shift64, 'shift'), rows, cols);
      const e = new Float64Array(rows);
      ref64.rowSumExp(e, x64, shift64, rows, cols);
      const bound = e.map((s, r) => {
        let L = 0;
        for (let c = 0; c < cols; c++) L = Math.max(L, Math.abs(x64[r * cols + c]! - shift64[r]!));
        return (4 * Math.sqrt(cols) + 32 + 2 * L) * eps * s;
      });
      assertWithin(out, e, bound, `${where} ${rows}×${cols}`);
    }
  });

  placedTest('pickTarget (targets inside and outside the vocab block; bitwise)', (P, rng, where) => {
    const rows = 24;
    const cols = 50;
    const vocabStart = 100;
    const x32 = rng.normalF32(rows * cols);
    const targets = rng.ints(rows, 0, 300);
    [99, 100, 149, 150, 0, 299, 120, 101].forEach((t, i) => { targets[i * 3] = t; });
    const out = P.filled(rows, NaN, 'out');
    be.pickTarget(out, P.make(x32, 'x'), P.makeInt(targets, 'targets'), rows, cols, vocabStart);
    const e = new Float32Array(rows);
    ref32.pickTarget(e, x32, targets, rows, cols, vocabStart);
    assertBitwiseEqual(out, e, where);
    for (let r = 0; r < rows; r++) {
      const t = targets[r]! - vocabStart;
      if (t < 0 || t >= cols) assert.equal(out[r], 0, `${where}: row ${r} target ${targets[r]} is outside the block, expected 0`);
    }
  });

  placedTest('crossEntropyBackward (second vocab block, global lse)', (P, rng, where) => {
    const rows = 9;
    const V = 201;
    const vocabStart = 67;
    const cols = 67;
    const full = toF64(rng.normalF32(rows * V, 3));
    const lse64 = new Float64Array(rows);
    for (let r = 0; r < rows; r++) {
      let m = -Infinity;
      for (let c = 0; c < V; c++) m = Math.max(m, full[r * V + c]!);
      let s = 0;
      for (let c = 0; c < V; c++) s += Math.exp(full[r * V + c]! - m);
      lse64[r] = m + Math.log(s);
    }
    const lse = toF64(Float32Array.from(lse64));
    const logits64 = new Float64Array(rows * cols);
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) logits64[r * cols + c] = full[r * V + vocabStart + c]!;
    const targets = rng.ints(rows, 0, V);
    targets[0] = vocabStart;
    targets[1] = vocabStart + cols - 1;
    targets[2] = vocabStart - 1;
    targets[3] = vocabStart + cols;
    const gradScale = 1 / rows;
    const d = P.filled(rows * cols, NaN, 'dlogits');
    be.crossEntropyBackward(d, P.make(logits64, 'logits'), P.makeInt(targets, 'targets'), P.make(lse, 'lse'), rows, cols, vocabStart, gradScale);
    const e = new Float64Array(rows * cols);
    ref64.crossEntropyBackward(e, logits64, targets, lse, rows, cols, vocabStart, gradScale);
    const bound = e.map((_, i) => {
      const r = Math.floor(i / cols);
      const l = logits64[i]! - lse[r]!;
      return Math.abs(gradScale) * (Math.exp(l) * (32 + 2 * Math.abs(l)) * eps + eps);
    });
    assertWithin(d, e, bound, where);
  });

  // ----- Embedding -----------------------------------------------------------------------------------

  const emb = { n: 50, C: 37, vocabStart: 30, tableRows: 20 };
  function embTokens(rng: Rng): Int32Array {
    const tokens = rng.ints(emb.n, 0, 80);
    [29, 30, 49, 50, 0, 79, 35, 35, 35].forEach((t, i) => { tokens[i * 5] = t; });
    return tokens;
  }
  placedTest('embeddingForward (vocabStart > 0, tokens outside the block give 0; bitwise)', (P, rng, where) => {
    const { n, C, vocabStart, tableRows } = emb;
    const table32 = rng.normalF32(tableRows * C);
    const tokens = embTokens(rng);
    const out = P.filled(n * C, NaN, 'out');
    be.embeddingForward(out, P.make(table32, 'table'), P.makeInt(tokens, 'tokens'), n, C, vocabStart, tableRows);
    const e = new Float32Array(n * C);
    ref32.embeddingForward(e, table32, tokens, n, C, vocabStart, tableRows);
    assertBitwiseEqual(out, e, where);
  });
  placedTest('embeddingBackward (accumulates, repeated tokens, out-of-block tokens ignored)', (P, rng, where) => {
    const { n, C, vocabStart, tableRows } = emb;
    const dt0 = toF64(rng.normalF32(tableRows * C));
    const dout64 = toF64(rng.normalF32(n * C));
    const tokens = embTokens(rng);
    const dtable = P.make(dt0, 'dtable');
    be.embeddingBackward(dtable, P.make(dout64, 'dout'), P.makeInt(tokens, 'tokens'), n, C, vocabStart, tableRows);
    const e = dt0.slice();
    ref64.embeddingBackward(e, dout64, tokens, n, C, vocabStart, tableRows);
    const bound = dt0.map(Math.abs);
    const reps = new Float64Array(tableRows);
    for (let i = 0; i < n; i++) {
      const t = tokens[i]! - vocabStart;
      if (t < 0 || t >= tableRows) continue;
      reps[t]!++;
      for (let c = 0; c < C; c++) bound[t * C + c]! += Math.abs(dout64[i * C + c]!);
    }
    for (let i = 0; i < bound.length; i++) bound[i]! *= 4 * (Math.sqrt(reps[Math.floor(i / C)]!) + 1) * eps;
    assertWithin(dtable, e, bound, where);
  });

  // ----- Element-wise --------------------------------------------------------------------------------

  placedTest('add (bitwise; out may alias a or b)', (P, rng, where) => {
    for (const n of [1031, 1, 0]) {
      const a32 = rng.normalF32(n);
      const b32 = rng.normalF32(n, 1e-3);
      const e = new Float32Array(n);
      ref32.add(e, a32, b32, n);
      const out = P.filled(n, NaN, 'out');
      be.add(out, P.make(a32, 'a'), P.make(b32, 'b'), n);
      assertBitwiseEqual(out, e, `${where} n=${n}`);
      const a = P.make(a32, 'a (aliased)');
      be.add(a, a, P.make(b32, 'b'), n);
      assertBitwiseEqual(a, e, `${where} n=${n} out = a`);
      const b = P.make(b32, 'b (aliased)');
      be.add(b, P.make(a32, 'a'), b, n);
      assertBitwiseEqual(b, e, `${where} n=${n} out = b`);
    }
  });
  placedTest('axpy', (P, rng, where) => {
    for (const [n, alpha] of [[1031, 0.3], [17, -2], [0, 1]] as const) {
      const y64 = toF64(rng.normalF32(n));
      const x64 = toF64(rng.normalF32(n));
      const y = P.make(y64, 'y');
      be.axpy(y, alpha, P.make(x64, 'x'), n);
      const e = y64.slice();
      ref64.axpy(e, alpha, x64, n);
      const bound = e.map((_, i) => 2 * eps * (Math.abs(y64[i]!) + Math.abs(alpha * x64[i]!)));
      assertWithin(y, e, bound, `${where} n=${n} alpha=${alpha}`);
    }
  });
  placedTest('scale', (P, rng, where) => {
    for (const [n, alpha] of [[1031, 0.1], [17, -3], [5, 0]] as const) {
      const x64 = toF64(rng.normalF32(n));
      const x = P.make(x64, 'x');
      be.scale(x, alpha, n);
      const e = x64.map((v) => v * alpha);
      assertClose(x, e, { rel: 2 * eps, abs: 0, floor: TINY }, `${where} n=${n} alpha=${alpha}`);
    }
  });

  placedTest('reduceSum (bitwise equal to left-to-right float32; out separate or aliasing srcs[0])', (P, rng, where) => {
    const n = 1031;
    // mixed magnitudes so that the summation order changes the rounding
    const mk = (): Float32Array => Float32Array.from({ length: n }, () => rng.normal() * 10 ** rng.uniform(-3, 3));
    for (const k of [1, 2, 3, 4]) {
      const srcs32 = Array.from({ length: k }, mk);
      const e = new Float32Array(n);
      ref32.reduceSum(e, srcs32, n);
      if (k >= 3) {
        // the data must be able to tell orders apart: s0 + (s1 + s2) differs somewhere
        let differs = false;
        for (let i = 0; i < n && !differs; i++) differs = Math.fround(srcs32[0]![i]! + Math.fround(srcs32[1]![i]! + srcs32[2]![i]!)) !== Math.fround(Math.fround(srcs32[0]![i]! + srcs32[1]![i]!) + srcs32[2]![i]!);
        assert.ok(differs, 'test data does not distinguish summation orders');
      }
      const srcs = srcs32.map((s, i) => P.make(s, `srcs[${i}]`));
      const srcBits = srcs.map(bits);
      const out = P.filled(n, NaN, 'out');
      be.reduceSum(out, srcs, n);
      assertBitwiseEqual(out, e, `${where} k=${k}`);
      srcs.forEach((s, i) => assertBitsUnchanged(s, srcBits[i]!, `${where} k=${k}: srcs[${i}] (input)`));

      const aliased = srcs32.map((s, i) => P.make(s, `srcs[${i}]`));
      be.reduceSum(aliased[0]!, aliased, n);
      assertBitwiseEqual(aliased[0]!, e, `${where} k=${k}, out = srcs[0]`);

      // a prefix only: elements past n stay as they were
      const part = P.make(srcs32[0]!, 'out (prefix)');
      be.reduceSum(part, srcs, 17);
      assertBitwiseEqual(part.subarray(0, 17), e.subarray(0, 17), `${where} k=${k}, n=17`);
      assertBitwiseEqual(part.subarray(17), srcs32[0]!.subarray(17), `${where} k=${k}, n=17: elements past n`);
    }
  });

  placedTest('sumSquares (float64 accumulation)', (P, rng, where) => {
    for (const n of [100003, 7, 0]) {
      const x32 = Float32Array.from({ length: n }, () => rng.normal() * (1 + 1000 * rng.next() * rng.next()));
      const got = be.sumSquares(P.make(x32, 'x'), n);
      const want = ref64.sumSquares(toF64(x32), n);
      assert.equal(typeof got, 'number');
      const err = Math.abs(got - want);
      assert.ok(err <= 1e-9 * want, `${where} n=${n}: ${got} vs float64 ${want} (relative error ${(err / (want || 1)).toExponential(2)} > 1e-9)`);
    }
  });

  placedTest('adamw over several steps', (P, rng, where) => {
    const n = 1031;
    const hp = { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, wd: 0.1, gradScale: 0.5 };
    const p64 = toF64(rng.normalF32(n));
    const m64 = new Float64Array(n);
    const v64 = new Float64Array(n);
    const param = P.make(p64, 'param');
    const m = P.zeros(n, 'm');
    const v = P.zeros(n, 'v');
    const grad = P.zeros(n, 'grad');
    for (let step = 1; step <= 6; step++) {
      const g32 = rng.normalF32(n, step === 3 ? 1e-4 : 1);
      grad.set(g32);
      be.adamw(param, grad, m, v, n, hp.lr, hp.beta1, hp.beta2, hp.eps, hp.wd, step, hp.gradScale);
      ref64.adamw(p64, toF64(g32), m64, v64, n, hp.lr, hp.beta1, hp.beta2, hp.eps, hp.wd, step, hp.gradScale);
      const tol = { rel: 8 * step * eps, abs: 8 * step * eps, floor: TINY };
      assertClose(param, p64, tol, `${where} step ${step}: param`);
      assertClose(m, m64, tol, `${where} step ${step}: m`);
      assertClose(v, v64, tol, `${where} step ${step}: v`);
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Which backends
// ---------------------------------------------------------------------------------------------------

describe('js float32 conformance (against js float64)', () => defineSuite(createJsBackend('f32')));

for (const entry of allBackends()) {
  if (entry.name === 'js') continue;
  const skip = skipUnless(entry);
  if (skip !== false || !entry.backend) {
    // a test (not a suite) so the runner counts it among the skipped and prints the reason
    test(`${entry.name} conformance`, { skip: skip || 'unavailable' }, () => {});
  } else {
    const be = entry.backend;
    describe(`${entry.name} conformance (${be.description}, against js float64 / js float32)`, () => defineSuite(be));
  }
}
