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
  if (x instanceof Float32Array && x.byteOffset % 4 === 0) {
    toBf16Fast(out, x, n);
    return;
  }
  for (let i = 0; i < n; i++) out[i] = bf16Bits(x[i]!);
}

/** out[i] = float32(x[i]) for i < n (the reference of `Backend.fromBf16`). */
export function fromBf16Ref(out: Float32Array | Float64Array, x: Uint16Array, n: number): void {
  if (out instanceof Float32Array) {
    fromBf16Fast(out, x, n);
    return;
  }
  for (let i = 0; i < n; i++) out[i] = bf16Value(x[i]!);
}

/**
 * Two growable float32 scratch buffers for the widened operands of gemmBf16ViaF32 (GEMMs run one at a
 * time in a thread, and each worker thread has its own module instance).
 */
const widenScratch: [Float32Array, Float32Array] = [new Float32Array(0), new Float32Array(0)];

/** Widen the [rows, cols] block of a strided bf16 matrix into packed float32 scratch `slot`. */
function widen(slot: 0 | 1, src: Uint16Array, off: number, ld: number, rows: number, cols: number): Float32Array {
  const n = rows * cols;
  if (widenScratch[slot].length < n) widenScratch[slot] = new Float32Array(Math.max(n, 2 * widenScratch[slot].length));
  const out = widenScratch[slot];
  const o32 = new Uint32Array(out.buffer, 0, n);
  if (ld === cols) {
    for (let i = 0; i < n; i++) o32[i] = src[off + i]! << 16;
    return out;
  }
  for (let r = 0; r < rows; r++) {
    const s = off + r * ld;
    const d = r * cols;
    for (let c = 0; c < cols; c++) o32[d + c] = src[s + c]! << 16;
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
  const a = widen(0, A, offA, lda, ar, ac);
  const b = widen(1, B, offB, ldb, br, bc);
  gemm(transA, transB, M, N, K, alpha, a, 0, Math.max(1, ac), b, 0, Math.max(1, bc), beta, C, offC, ldc);
}

/** `Backend.gemmBf16W` through a backend's float32 `gemm`: the bf16 weights B [N, K] widened exactly, then C = alpha·A·Bᵀ + beta·C. */
export function gemmBf16WViaF32(
  gemm: (tA: boolean, tB: boolean, M: number, N: number, K: number, alpha: number, A: Float32Array, offA: number, lda: number,
    B: Float32Array, offB: number, ldb: number, beta: number, C: Float32Array, offC: number, ldc: number) => void,
  M: number, N: number, K: number, alpha: number, A: Float32Array, offA: number, lda: number,
  B: Uint16Array, offB: number, ldb: number, beta: number, C: Float32Array, offC: number, ldc: number,
): void {
  if (M === 0 || N === 0) return;
  const b = widen(1, B, offB, ldb, N, K);
  gemm(false, true, M, N, K, alpha, A, offA, lda, b, 0, Math.max(1, K), beta, C, offC, ldc);
}

/** toBf16Ref on the float32 bit patterns directly (same results, no per-element float32 store). */
export function toBf16Fast(out: Uint16Array, x: Float32Array, n: number): void {
  const u = new Uint32Array(x.buffer, x.byteOffset, n);
  for (let i = 0; i < n; i++) {
    const b = u[i]!;
    out[i] = (b & 0x7f800000) === 0x7f800000 && (b & 0x007fffff) !== 0 ? (b >>> 16) | 0x0040 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
}

/** fromBf16Ref into a float32 array through its bit patterns (exact). */
export function fromBf16Fast(out: Float32Array, x: Uint16Array, n: number): void {
  const u = new Uint32Array(out.buffer, out.byteOffset, n);
  for (let i = 0; i < n; i++) u[i] = x[i]! << 16;
}

/** In place: x[i] = float32(bf16(x[i])) (what a bf16 round trip leaves in float32 storage). */
export function roundBf16InPlace(x: Float32Array, n: number): void {
  const u = new Uint32Array(x.buffer, x.byteOffset, n);
  for (let i = 0; i < n; i++) {
    const b = u[i]!;
    u[i] = (b & 0x7f800000) === 0x7f800000 && (b & 0x007fffff) !== 0 ? (b | 0x00400000) & 0xffff0000 : ((b + 0x7fff + ((b >>> 16) & 1)) & 0xffff0000) >>> 0;
  }
}

/** Profiling hook around the bf16 attention functions (bench train attributes their inner kernel calls to attention). */
export interface Bf16AttentionHook {
  enter(): void;
  exit(): void;
}

let attentionHook: Bf16AttentionHook | null = null;

/** Install (or with null remove) the profiling hook of attentionForwardBf16 / attentionBackwardBf16. */
export function setBf16AttentionHook(h: Bf16AttentionHook | null): void {
  attentionHook = h;
}

type Bf16Kernels = Pick<import('./types.js').Backend, 'gemmBf16' | 'softmaxForward' | 'softmaxBackward' | 'toBf16' | 'fromBf16'>;

/**
 * Causal grouped-query attention with bf16 products, one (batch, head) at a time, with the layout of
 * `Backend.attentionForward`: scores S = q·kᵀ from bf16 q and k (`gemmBf16`, float32 sums), softmax of
 * scale·S in float32, the probabilities rounded to bf16 (kept in `att16` [B, NH, Tq, Tk] for the
 * backward) and out = P·v from bf16 P and v (float32 out). `scores` is float32 scratch of Tq·Tk.
 */
export function attentionForwardBf16(
  be: Bf16Kernels,
  out: Float32Array, att16: Uint16Array, q: Uint16Array, k: Uint16Array, v: Uint16Array, scores: Float32Array,
  B: number, Tq: number, Tk: number, NH: number, NKV: number, HD: number, kvBatchStride: number,
): void {
  attentionHook?.enter();
  try {
    attentionForwardBf16Body(be, out, att16, q, k, v, scores, B, Tq, Tk, NH, NKV, HD, kvBatchStride);
  } finally {
    attentionHook?.exit();
  }
}

function attentionForwardBf16Body(
  be: Bf16Kernels,
  out: Float32Array, att16: Uint16Array, q: Uint16Array, k: Uint16Array, v: Uint16Array, scores: Float32Array,
  B: number, Tq: number, Tk: number, NH: number, NKV: number, HD: number, kvBatchStride: number,
): void {
  const group = NH / NKV;
  const qRow = NH * HD;
  const kvRow = NKV * HD;
  const scale = 1 / Math.sqrt(HD);
  const S = scores.subarray(0, Tq * Tk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < NH; h++) {
      const g = Math.floor(h / group);
      const qOff = b * Tq * qRow + h * HD;
      const kvOff = b * kvBatchStride + g * HD;
      const aOff = (b * NH + h) * Tq * Tk;
      be.gemmBf16(false, true, Tq, Tk, HD, 1, q, qOff, qRow, k, kvOff, kvRow, 0, S, 0, Tk);
      be.softmaxForward(S, S, Tq, Tk, scale, Tq);
      const P = att16.subarray(aOff, aOff + Tq * Tk);
      be.toBf16(P, S, Tq * Tk);
      be.gemmBf16(false, false, Tq, HD, Tk, 1, att16, aOff, Tk, v, kvOff, kvRow, 0, out, qOff, qRow);
    }
  }
}

/**
 * Backward of `attentionForwardBf16` (training: Tq = Tk = T): every product on bf16 operands (dout,
 * q, k, v, the saved bf16 probabilities and dS rounded to bf16), the softmax backward in float32.
 * Writes dq [B, T, NH, HD] and dk, dv [B, T, NKV, HD] in float32. Scratch: `p32` and `dS` float32 of
 * T·T, `dS16` bf16 of T·T.
 */
export function attentionBackwardBf16(
  be: Bf16Kernels,
  dq: Float32Array, dk: Float32Array, dv: Float32Array, dout: Uint16Array,
  q: Uint16Array, k: Uint16Array, v: Uint16Array, att16: Uint16Array,
  p32: Float32Array, dS: Float32Array, dS16: Uint16Array,
  B: number, T: number, NH: number, NKV: number, HD: number,
): void {
  attentionHook?.enter();
  try {
    attentionBackwardBf16Body(be, dq, dk, dv, dout, q, k, v, att16, p32, dS, dS16, B, T, NH, NKV, HD);
  } finally {
    attentionHook?.exit();
  }
}

function attentionBackwardBf16Body(
  be: Bf16Kernels,
  dq: Float32Array, dk: Float32Array, dv: Float32Array, dout: Uint16Array,
  q: Uint16Array, k: Uint16Array, v: Uint16Array, att16: Uint16Array,
  p32: Float32Array, dS: Float32Array, dS16: Uint16Array,
  B: number, T: number, NH: number, NKV: number, HD: number,
): void {
  const group = NH / NKV;
  const qRow = NH * HD;
  const kvRow = NKV * HD;
  const scale = 1 / Math.sqrt(HD);
  dk.fill(0, 0, B * T * kvRow);
  dv.fill(0, 0, B * T * kvRow);
  const TT = T * T;
  const P = p32.subarray(0, TT);
  const D = dS.subarray(0, TT);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < NH; h++) {
      const g = Math.floor(h / group);
      const qOff = b * T * qRow + h * HD;
      const kvOff = b * T * kvRow + g * HD;
      const aOff = (b * NH + h) * TT;
      // dV_bg += Pᵀ · dO_bh
      be.gemmBf16(true, false, T, HD, T, 1, att16, aOff, T, dout, qOff, qRow, 1, dv, kvOff, kvRow);
      // dP = dO_bh · V_bgᵀ
      be.gemmBf16(false, true, T, T, HD, 1, dout, qOff, qRow, v, kvOff, kvRow, 0, D, 0, T);
      be.fromBf16(P, att16.subarray(aOff, aOff + TT), TT);
      be.softmaxBackward(D, D, P, T, T, scale);
      be.toBf16(dS16, D, TT);
      // dQ_bh = dS · K_bg;  dK_bg += dSᵀ · Q_bh
      be.gemmBf16(false, false, T, HD, T, 1, dS16, 0, T, k, kvOff, kvRow, 0, dq, qOff, qRow);
      be.gemmBf16(true, false, T, HD, T, 1, dS16, 0, T, q, qOff, qRow, 1, dk, kvOff, kvRow);
    }
  }
}
