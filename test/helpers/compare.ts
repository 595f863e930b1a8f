/**
 * Numeric comparisons for kernel tests. Every assertion reports the worst element (index, actual,
 * expected, allowed error) so that a failure says where and by how much, not just "not equal".
 */
import assert from 'node:assert/strict';

/** float32 machine epsilon (spacing of floats at 1.0): 2^-23 ≈ 1.19e-7. */
export const EPS32 = 2 ** -23;
/** float64 machine epsilon: 2^-52 ≈ 2.2e-16. */
export const EPS64 = 2 ** -52;

type Arr = ArrayLike<number>;

/**
 * Mixed relative/absolute tolerance: element i passes when
 *   |actual[i] − expected[i]| ≤ rel · |expected[i]| + abs · scale
 * where scale is max_i |expected[i]| (the magnitude of the whole output) unless given. `abs` is thus
 * an error relative to the output's magnitude, which keeps near-zero elements (cancellation) from
 * failing on rounding noise while a wrong element of ordinary size still fails. `floor` (default 0)
 * is added as a plain absolute error, e.g. to admit denormals flushed to zero.
 */
export interface Tolerance {
  rel: number;
  abs: number;
  floor?: number;
}

function allowedError(tol: Tolerance, expected: number, scale: number): number {
  return tol.rel * Math.abs(expected) + tol.abs * scale + (tol.floor ?? 0);
}

export function maxAbs(a: Arr, n = a.length): number {
  let m = 0;
  for (let i = 0; i < n; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

/** ||a − b||₂ / ||b||₂ (0 when both are zero). */
export function relL2Error(actual: Arr, expected: Arr, n = expected.length): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    const d = actual[i]! - expected[i]!;
    num += d * d;
    den += expected[i]! * expected[i]!;
  }
  if (den === 0) return num === 0 ? 0 : Infinity;
  return Math.sqrt(num / den);
}

/** Largest error in units of the allowed error (≤ 1 passes), and where it occurs. */
export function worstError(actual: Arr, expected: Arr, tol: Tolerance, n = expected.length, scale = maxAbs(expected, n)): { ratio: number; index: number } {
  let ratio = 0;
  let index = -1;
  for (let i = 0; i < n; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    const allowed = allowedError(tol, e, scale);
    const err = Math.abs(a - e);
    let r: number;
    if (Number.isNaN(a) || Number.isNaN(e)) r = Number.isNaN(a) && Number.isNaN(e) ? 0 : Infinity;
    else if (a === e) r = 0;
    else r = allowed > 0 ? err / allowed : Infinity;
    if (r > ratio || (index < 0 && r > 0)) {
      ratio = r;
      index = i;
    }
  }
  return { ratio, index };
}

function fmt(v: number): string {
  return Number.isFinite(v) ? v.toPrecision(9) : String(v);
}

/** Assert actual ≈ expected elementwise within `tol` (see Tolerance). NaN must match NaN. */
export function assertClose(actual: Arr, expected: Arr, tol: Tolerance, what: string, opts: { n?: number; scale?: number } = {}): void {
  const n = opts.n ?? expected.length;
  assert.ok(actual.length >= n, `${what}: actual has ${actual.length} elements, expected at least ${n}`);
  const scale = opts.scale ?? maxAbs(expected, n);
  const { ratio, index } = worstError(actual, expected, tol, n, scale);
  if (ratio > 1) {
    const a = actual[index]!;
    const e = expected[index]!;
    assert.fail(
      `${what}: element ${index} of ${n} is ${fmt(a)}, expected ${fmt(e)} ` +
        `(error ${fmt(Math.abs(a - e))} > allowed ${fmt(allowedError(tol, e, scale))} = ` +
        `${tol.rel}·|expected| + ${tol.abs}·${fmt(scale)}${tol.floor ? ` + ${tol.floor}` : ''}; relative L2 error over all ${n}: ${relL2Error(actual, expected, n).toExponential(3)})`,
    );
  }
}

/** Assert ||actual − expected||₂ / ||expected||₂ ≤ tol. */
export function assertRelL2(actual: Arr, expected: Arr, tol: number, what: string, n = expected.length): void {
  const e = relL2Error(actual, expected, n);
  assert.ok(e <= tol, `${what}: relative L2 error ${e.toExponential(3)} exceeds ${tol.toExponential(1)}`);
}

function bitsEqual(a: number, b: number, f32: boolean): boolean {
  if (Number.isNaN(a) || Number.isNaN(b)) return Number.isNaN(a) && Number.isNaN(b);
  if (f32) {
    a = Math.fround(a);
    b = Math.fround(b);
  }
  return Object.is(a, b);
}

/**
 * Assert the first n elements are identical, bit for bit (+0 and −0 differ; any NaN matches any NaN).
 * `float32` compares after rounding both to float32 (for comparing a float32 result to numbers).
 */
export function assertBitwiseEqual(actual: Arr, expected: Arr, what: string, n = expected.length, float32 = false): void {
  assert.ok(actual.length >= n, `${what}: actual has ${actual.length} elements, expected at least ${n}`);
  for (let i = 0; i < n; i++) {
    if (!bitsEqual(actual[i]!, expected[i]!, float32)) {
      let count = 0;
      for (let j = i; j < n; j++) if (!bitsEqual(actual[j]!, expected[j]!, float32)) count++;
      assert.fail(`${what}: element ${i} is ${fmt(actual[i]!)}, expected exactly ${fmt(expected[i]!)} (${count} of ${n} elements differ)`);
    }
  }
}

/** Assert every element of a[0..n) is finite. */
export function assertAllFinite(a: Arr, what: string, n = a.length): void {
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(a[i]!)) assert.fail(`${what}: element ${i} of ${n} is ${a[i]} (expected finite)`);
  }
}

/** A float64 copy (for feeding the float64 reference the exact same values). */
export function toF64(a: Arr): Float64Array {
  return Float64Array.from(a as ArrayLike<number>);
}

/** A float32 copy. */
export function toF32(a: Arr): Float32Array {
  return Float32Array.from(a as ArrayLike<number>);
}
