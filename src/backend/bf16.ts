/**
 * bfloat16 helpers and the reference bf16 GEMM.
 *
 * A bf16 value is the upper 16 bits of a float32 (sign, 8 exponent bits, 7 mantissa bits); arrays of
 * them are `Uint16Array`s of those bit patterns. Rounding from float32 is round-to-nearest-even on the
 * dropped 16 bits; NaN stays NaN (quiet), ±Inf and ±0 stay themselves. Widening is exact.
 *
 * The product of two bf16 values is exact in float32 (8 + 8 significant bits ≤ 24), so a GEMM on bf16
 * operands with float32 accumulation differs between implementations only in the order of the sums.
 */
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The bf16 bit pattern nearest to `x` (round to nearest, ties to even). */
export function bf16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  if ((b & 0x7f800000) === 0x7f800000 && (b & 0x007fffff) !== 0) return ((b >>> 16) | 0x0040) & 0xffff;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** The float32 value of a bf16 bit pattern (exact). */
export function bf16Value(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0]!;
}

/** x rounded to the nearest bf16, as a number (what a float32 holds after a round trip through bf16). */
export function roundBf16(x: number): number {
  return bf16Value(bf16Bits(x));
}

/** out[i] = bf16(x[i]) for i < n (the reference of `Backend.toBf16`). */
export function toBf16Ref(out: Uint16Array, x: ArrayLike<number>, n: number): void {
  for (let i = 0; i < n; i++) out[i] = bf16Bits(x[i]!);
}

/** out[i] = float32(x[i]) for i < n (the reference of `Backend.fromBf16`). */
export function fromBf16Ref(out: Float32Array | Float64Array, x: Uint16Array, n: number): void {
  for (let i = 0; i < n; i++) out[i] = bf16Value(x[i]!);
}

/** Widen the [rows, cols] block of a strided bf16 matrix into a packed float32 one. */
function widen(src: Uint16Array, off: number, ld: number, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  const o32 = new Uint32Array(out.buffer);
  for (let r = 0; r < rows; r++) {
    const s = off + r * ld;
    for (let c = 0; c < cols; c++) o32[r * cols + c] = src[s + c]! << 16;
  }
  return out;
}

/**
 * `Backend.gemmBf16` through a backend's own float32 `gemm`: both operands widened exactly to float32,
 * then multiplied with that backend's accumulation. Every backend without a dedicated bf16 GEMM uses
 * this, so its results are those of its fp32 GEMM on bf16-rounded inputs.
 */
export function gemmBf16ViaF32(
  gemm: (tA: boolean, tB: boolean, M: number, N: number, K: number, alpha: number, A: Float32Array, offA: number, lda: number,
    B: Float32Array, offB: number, ldb: number, beta: number, C: Float32Array, offC: number, ldc: number) => void,
  transA: boolean, transB: boolean, M: number, N: number, K: number, alpha: number,
  A: Uint16Array, offA: number, lda: number, B: Uint16Array, offB: number, ldb: number,
  beta: number, C: Float32Array, offC: number, ldc: number,
): void {
  if (M === 0 || N === 0) return;
  const [ar, ac] = transA ? [K, M] : [M, K];
  const [br, bc] = transB ? [N, K] : [K, N];
  const a = widen(A, offA, lda, ar, ac);
  const b = widen(B, offB, ldb, br, bc);
  gemm(transA, transB, M, N, K, alpha, a, 0, Math.max(1, ac), b, 0, Math.max(1, bc), beta, C, offC, ldc);
}
