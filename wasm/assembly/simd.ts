// SIMD helpers shared by the kernels: a vectorised exp and horizontal sums.

/**
 * e^x on four float32 lanes, accurate to about 1 ulp for results in the normal range.
 * Cody–Waite reduction x = n·ln2 + r (|r| ≤ ln2/2, two-constant ln2 so n·C1 is exact), a degree-7
 * polynomial for e^r (the Cephes expf coefficients; max error 1 ulp measured over [-87, 88.7]),
 * and 2^n applied by adding n to the exponent
 * field. x ≥ 88.72283 (above ln FLT_MAX) gives +inf; x < -87.3 (below ln FLT_MIN, results that would
 * be subnormal) gives 0; NaN stays NaN.
 *
 * Written for V8's code generator: pmin/pmax (one instruction each; the operand order keeps NaN)
 * instead of the NaN-exact min/max sequences, and n is rounded with the 1.5·2^23 "magic" addition,
 * whose low mantissa bits then hold n as an integer, instead of the multi-instruction float→int
 * conversion.
 */
// @ts-ignore: decorator
@inline
export function vexp(x: v128): v128 {
  const big = f32x4.ge(x, f32x4.splat(88.72283));
  const small = f32x4.lt(x, f32x4.splat(-87.3));
  // pmax(x, lo) = x < lo ? lo : x and pmin(y, hi) = hi < y ? hi : y both return a NaN x unchanged
  const xc = f32x4.pmin(f32x4.pmax(x, f32x4.splat(-87.3)), f32x4.splat(88.72283));
  const magic = f32x4.splat(12582912.0); // 1.5 · 2^23
  const t = f32x4.add(f32x4.mul(xc, f32x4.splat(1.44269504088896341)), magic);
  const n = f32x4.sub(t, magic); // round-to-nearest-even of x·log2(e)
  let r = f32x4.sub(xc, f32x4.mul(n, f32x4.splat(0.693359375)));
  r = f32x4.add(r, f32x4.mul(n, f32x4.splat(2.12194440e-4)));
  // e^r ≈ 1 + r + r²·(P5 + P4·r + P3·r² + P2·r³ + P1·r⁴ + P0·r⁵), the bracket by Estrin's scheme
  // (short dependency chains, so that consecutive vectors overlap in the pipeline)
  const r2 = f32x4.mul(r, r);
  const q0 = f32x4.add(f32x4.mul(f32x4.splat(1.6666665459e-1), r), f32x4.splat(5.0000001201e-1));
  const q1 = f32x4.add(f32x4.mul(f32x4.splat(8.3334519073e-3), r), f32x4.splat(4.1665795894e-2));
  const q2 = f32x4.add(f32x4.mul(f32x4.splat(1.9875691500e-4), r), f32x4.splat(1.3981999507e-3));
  let y = f32x4.add(q1, f32x4.mul(r2, q2));
  y = f32x4.add(q0, f32x4.mul(r2, y));
  y = f32x4.add(f32x4.add(f32x4.mul(y, r2), r), f32x4.splat(1.0));
  // the bits of t are 0x4B400000 + n, so t << 23 is n << 23 (the exponent increment)
  let res = i32x4.add(y, i32x4.shl(t, 23));
  res = v128.bitselect(f32x4.splat(Infinity), res, big);
  return v128.andnot(res, small);
}

/** Scalar e^x with exactly the same arithmetic as `vexp` (used for row tails). */
// @ts-ignore: decorator
@inline
export function expf(x: f32): f32 {
  return f32x4.extract_lane(vexp(f32x4.splat(x)), 0);
}

/** Sum of the four float32 lanes. */
// @ts-ignore: decorator
@inline
export function hsum(v: v128): f32 {
  const s = f32x4.add(v, f32x4.shuffle(v, v, 2, 3, 0, 1));
  return f32x4.extract_lane(s, 0) + f32x4.extract_lane(s, 1);
}

/** Maximum of the four float32 lanes (NaN if any lane is NaN). */
// @ts-ignore: decorator
@inline
export function hmax(v: v128): f32 {
  const s = f32x4.max(v, f32x4.shuffle(v, v, 2, 3, 0, 1));
  return max<f32>(f32x4.extract_lane(s, 0), f32x4.extract_lane(s, 1));
}

/** Lane-wise running maximum for reductions: one instruction; NaN lanes of x are skipped. */
// @ts-ignore: decorator
@inline
export function vmax(acc: v128, x: v128): v128 {
  return f32x4.pmax(acc, x); // acc < x ? x : acc
}

/** Sum of the two float64 lanes. */
// @ts-ignore: decorator
@inline
export function hsum64(v: v128): f64 {
  return f64x2.extract_lane(v, 0) + f64x2.extract_lane(v, 1);
}

/** The four float32 lanes of v widened to float64 and folded into two lanes: (v0 + v2, v1 + v3). */
// @ts-ignore: decorator
@inline
export function widen(v: v128): v128 {
  return f64x2.add(f64x2.promote_low_f32x4(v), f64x2.promote_low_f32x4(f32x4.shuffle(v, v, 2, 3, 2, 3)));
}
