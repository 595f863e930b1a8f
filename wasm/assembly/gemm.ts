// Single-precision GEMM: C = alpha · op(A) · op(B) + beta · C, row-major, all four transpose cases.
//
// Large shapes use the GotoBLAS/BLIS loop nest: for each NC-column block of C and KC-deep slice of K,
// op(B) is packed into NR-wide column panels ([kc][NR], zero-padded); for each MC-row block, op(A) is
// packed into MR-high row panels ([kc][MR], zero-padded); the register-blocked micro-kernel then
// computes one MR×NR tile of C per (row panel, column panel) pair with the column panel held in L1.
// Transposition is absorbed by the packing routines (4×4 register transposes where the source is
// strided). Shapes with M ≤ 8 (decoding) take a skinny path that streams B once without packing it.
//
// All pointers are byte addresses in linear memory; leading dimensions are in elements. The caller
// provides a work area of `gemmWorkBytes(M, N, K)` bytes aligned to 64.
import { MR, NR, microKernel } from './microkernel';
import { hsum } from './simd';

const KC: i32 = 384;
const MC: i32 = 120; // multiple of MR
const NC: i32 = 3072; // multiple of NR
const SKINNY_M: i32 = 8;

/** Bytes of work area `gemm` needs for this shape. */
export function gemmWorkBytes(M: i32, N: i32, K: i32): i32 {
  if (M <= SKINNY_M) return 2 * ((M * K * 4 + 63) & ~63) + 64;
  const nc = min(NC, (N + NR - 1) / NR * NR);
  const kc = min(KC, K);
  const mc = min(MC, (M + MR - 1) / MR * MR);
  return ((mc * kc * 4 + 63) & ~63) + ((nc * kc * 4 + 63) & ~63) + ((MR * NR * 4 + 63) & ~63);
}

/** C[M, N] (leading dimension ldc) = beta · C; beta = 0 writes zeros (NaNs in C are not kept). */
function scaleC(M: i32, N: i32, beta: f32, C: usize, ldc: i32): void {
  if (beta == 1) return;
  const vb = f32x4.splat(beta);
  for (let i = 0; i < M; i++) {
    const c = C + (<usize>i * <usize>ldc << 2);
    if (beta == 0) {
      memory.fill(c, 0, <usize>N << 2);
      continue;
    }
    let j = 0;
    for (; j + 4 <= N; j += 4) {
      const p = c + (<usize>j << 2);
      v128.store(p, f32x4.mul(v128.load(p), vb));
    }
    for (; j < N; j++) {
      const p = c + (<usize>j << 2);
      store<f32>(p, load<f32>(p) * beta);
    }
  }
}

export function gemm(
  transA: i32, transB: i32, M: i32, N: i32, K: i32, alpha: f32,
  A: usize, lda: i32, B: usize, ldb: i32, beta: f32, C: usize, ldc: i32, work: usize,
): void {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    scaleC(M, N, beta, C, ldc);
    return;
  }
  if (M <= SKINNY_M) {
    skinny(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, work);
    return;
  }
  const ncMax = min(NC, (N + NR - 1) / NR * NR);
  const kcMax = min(KC, K);
  const mcMax = min(MC, (M + MR - 1) / MR * MR);
  const Ap = work;
  const Bp = Ap + ((<usize>(mcMax * kcMax * 4) + 63) & ~63);
  const tile = Bp + ((<usize>(ncMax * kcMax * 4) + 63) & ~63);
  const ldcB = <usize>ldc << 2;
  for (let jc = 0; jc < N; jc += NC) {
    const nc = min(NC, N - jc);
    for (let pc = 0; pc < K; pc += KC) {
      const kc = min(KC, K - pc);
      if (transB) packBT(B, ldb, pc, jc, kc, nc, Bp);
      else packBN(B, ldb, pc, jc, kc, nc, Bp);
      const bEff: f32 = pc == 0 ? beta : 1;
      for (let ic = 0; ic < M; ic += MC) {
        const mc = min(MC, M - ic);
        if (transA) packAT(A, lda, ic, pc, mc, kc, Ap);
        else packAN(A, lda, ic, pc, mc, kc, Ap);
        for (let jr = 0; jr < nc; jr += NR) {
          const nr = min(NR, nc - jr);
          const bp = Bp + (<usize>jr * <usize>kc << 2);
          for (let ir = 0; ir < mc; ir += MR) {
            const mr = min(MR, mc - ir);
            const ap = Ap + (<usize>ir * <usize>kc << 2);
            const c = C + ((<usize>(ic + ir) * <usize>ldc + <usize>(jc + jr)) << 2);
            if (mr == MR && nr == NR) {
              microKernel(kc, ap, bp, c, ldcB, alpha, bEff);
            } else {
              microKernel(kc, ap, bp, tile, NR * 4, 1, 0);
              edgeStore(mr, nr, tile, c, ldcB, alpha, bEff);
            }
          }
        }
      }
    }
  }
}

/** Writes the top-left mr×nr of an MR×NR tile (row stride NR) into C with alpha and beta. */
function edgeStore(mr: i32, nr: i32, tile: usize, c: usize, ldcB: usize, alpha: f32, beta: f32): void {
  for (let i = 0; i < mr; i++) {
    const t = tile + (<usize>(i * NR) << 2);
    const ci = c + <usize>i * ldcB;
    for (let j = 0; j < nr; j++) {
      const p = ci + (<usize>j << 2);
      const v = alpha * load<f32>(t + (<usize>j << 2));
      store<f32>(p, beta == 0 ? v : v + beta * load<f32>(p));
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Packing. Row panels of op(A): panel r holds rows [r·MR, r·MR + MR) as [kc][MR]. Column panels of
// op(B): panel q holds columns [q·NR, q·NR + NR) as [kc][NR]. Missing rows/columns are zero.
// ------------------------------------------------------------------------------------------------

/** A stored [M, K]: op(A)(i, p) = A[i·lda + p]. */
function packAN(A: usize, lda: i32, i0: i32, p0: i32, mc: i32, kc: i32, dst: usize): void {
  const ldaB = <usize>lda << 2;
  for (let ir = 0; ir < mc; ir += MR) {
    const mr = min(MR, mc - ir);
    const src = A + ((<usize>(i0 + ir) * <usize>lda + <usize>p0) << 2);
    if (mr == MR && MR == 4) {
      const r0 = src, r1 = src + ldaB, r2 = src + 2 * ldaB, r3 = src + 3 * ldaB;
      let p = 0;
      for (; p + 4 <= kc; p += 4) {
        const o = <usize>p << 2;
        const x0 = v128.load(r0 + o), x1 = v128.load(r1 + o), x2 = v128.load(r2 + o), x3 = v128.load(r3 + o);
        const t0 = f32x4.shuffle(x0, x1, 0, 4, 1, 5);
        const t1 = f32x4.shuffle(x0, x1, 2, 6, 3, 7);
        const t2 = f32x4.shuffle(x2, x3, 0, 4, 1, 5);
        const t3 = f32x4.shuffle(x2, x3, 2, 6, 3, 7);
        v128.store(dst, f32x4.shuffle(t0, t2, 0, 1, 4, 5), 0);
        v128.store(dst, f32x4.shuffle(t0, t2, 2, 3, 6, 7), 16);
        v128.store(dst, f32x4.shuffle(t1, t3, 0, 1, 4, 5), 32);
        v128.store(dst, f32x4.shuffle(t1, t3, 2, 3, 6, 7), 48);
        dst += 64;
      }
      for (; p < kc; p++) {
        const o = <usize>p << 2;
        store<f32>(dst, load<f32>(r0 + o), 0);
        store<f32>(dst, load<f32>(r1 + o), 4);
        store<f32>(dst, load<f32>(r2 + o), 8);
        store<f32>(dst, load<f32>(r3 + o), 12);
        dst += 16;
      }
    } else {
      for (let p = 0; p < kc; p++) {
        for (let i = 0; i < MR; i++) {
          store<f32>(dst, i < mr ? load<f32>(src + <usize>i * ldaB + (<usize>p << 2)) : 0);
          dst += 4;
        }
      }
    }
  }
}

/** A stored [K, M]: op(A)(i, p) = A[p·lda + i]. */
function packAT(A: usize, lda: i32, i0: i32, p0: i32, mc: i32, kc: i32, dst: usize): void {
  const ldaB = <usize>lda << 2;
  for (let ir = 0; ir < mc; ir += MR) {
    const mr = min(MR, mc - ir);
    let src = A + ((<usize>p0 * <usize>lda + <usize>(i0 + ir)) << 2);
    if (mr == MR) {
      for (let p = 0; p < kc; p++) {
        for (let v = 0; v < MR; v += 4) v128.store(dst + (<usize>v << 2), v128.load(src + (<usize>v << 2)));
        src += ldaB;
        dst += MR * 4;
      }
    } else {
      for (let p = 0; p < kc; p++) {
        for (let i = 0; i < MR; i++) {
          store<f32>(dst, i < mr ? load<f32>(src + (<usize>i << 2)) : 0);
          dst += 4;
        }
        src += ldaB;
      }
    }
  }
}

/** B stored [K, N]: op(B)(p, j) = B[p·ldb + j]. */
function packBN(B: usize, ldb: i32, p0: i32, j0: i32, kc: i32, nc: i32, dst: usize): void {
  const ldbB = <usize>ldb << 2;
  for (let jr = 0; jr < nc; jr += NR) {
    const nr = min(NR, nc - jr);
    let src = B + ((<usize>p0 * <usize>ldb + <usize>(j0 + jr)) << 2);
    if (nr == NR) {
      for (let p = 0; p < kc; p++) {
        for (let v = 0; v < NR; v += 4) v128.store(dst + (<usize>v << 2), v128.load(src + (<usize>v << 2)));
        src += ldbB;
        dst += NR * 4;
      }
    } else {
      for (let p = 0; p < kc; p++) {
        for (let j = 0; j < NR; j++) {
          store<f32>(dst, j < nr ? load<f32>(src + (<usize>j << 2)) : 0);
          dst += 4;
        }
        src += ldbB;
      }
    }
  }
}

/** B stored [N, K]: op(B)(p, j) = B[j·ldb + p]. */
function packBT(B: usize, ldb: i32, p0: i32, j0: i32, kc: i32, nc: i32, dst: usize): void {
  const ldbB = <usize>ldb << 2;
  for (let jr = 0; jr < nc; jr += NR) {
    const nr = min(NR, nc - jr);
    const src = B + ((<usize>(j0 + jr) * <usize>ldb + <usize>p0) << 2);
    if (nr == NR) {
      let p = 0;
      for (; p + 4 <= kc; p += 4) {
        const o = <usize>p << 2;
        for (let g = 0; g < NR; g += 4) {
          const r0 = src + <usize>g * ldbB + o;
          const x0 = v128.load(r0), x1 = v128.load(r0 + ldbB), x2 = v128.load(r0 + 2 * ldbB), x3 = v128.load(r0 + 3 * ldbB);
          const t0 = f32x4.shuffle(x0, x1, 0, 4, 1, 5);
          const t1 = f32x4.shuffle(x0, x1, 2, 6, 3, 7);
          const t2 = f32x4.shuffle(x2, x3, 0, 4, 1, 5);
          const t3 = f32x4.shuffle(x2, x3, 2, 6, 3, 7);
          const d = dst + (<usize>g << 2);
          v128.store(d, f32x4.shuffle(t0, t2, 0, 1, 4, 5), 0);
          v128.store(d + NR * 4, f32x4.shuffle(t0, t2, 2, 3, 6, 7));
          v128.store(d + NR * 8, f32x4.shuffle(t1, t3, 0, 1, 4, 5));
          v128.store(d + NR * 12, f32x4.shuffle(t1, t3, 2, 3, 6, 7));
        }
        dst += NR * 16;
      }
      for (; p < kc; p++) {
        for (let j = 0; j < NR; j++) {
          store<f32>(dst, load<f32>(src + <usize>j * ldbB + (<usize>p << 2)));
          dst += 4;
        }
      }
    } else {
      for (let p = 0; p < kc; p++) {
        for (let j = 0; j < NR; j++) {
          store<f32>(dst, j < nr ? load<f32>(src + <usize>j * ldbB + (<usize>p << 2)) : 0);
          dst += 4;
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Skinny path (M ≤ 8): op(A) is copied, scaled by alpha, into a dense row-major [M, K] block Ap and,
// for B transposed, also into Ai, [K/4][M][4] (the rows' 4-float chunks of each k-vector adjacent);
// B is streamed once and never packed.
//
// Loops address memory as `base + o` with one running byte offset o (V8 then needs no separate
// pointer increments and zero-extensions per stream).
// ------------------------------------------------------------------------------------------------

function skinny(
  transA: i32, transB: i32, M: i32, N: i32, K: i32, alpha: f32,
  A: usize, lda: i32, B: usize, ldb: i32, beta: f32, C: usize, ldc: i32, work: usize,
): void {
  const Ap = work;
  const va = f32x4.splat(alpha);
  const ldaB = <usize>lda << 2;
  for (let i = 0; i < M; i++) {
    const d = Ap + (<usize>i * <usize>K << 2);
    if (transA) {
      const s = A + (<usize>i << 2);
      for (let p = 0; p < K; p++) store<f32>(d + (<usize>p << 2), alpha * load<f32>(s + <usize>p * ldaB));
    } else {
      const s = A + <usize>i * ldaB;
      let p = 0;
      for (; p + 4 <= K; p += 4) v128.store(d + (<usize>p << 2), f32x4.mul(v128.load(s + (<usize>p << 2)), va));
      for (; p < K; p++) store<f32>(d + (<usize>p << 2), alpha * load<f32>(s + (<usize>p << 2)));
    }
  }
  if (transB) {
    const Ai = Ap + ((<usize>M * <usize>K * 4 + 63) & ~63);
    const kv = K >> 2;
    for (let q = 0; q < kv; q++) {
      for (let i = 0; i < M; i++) {
        v128.store(Ai + ((<usize>(q * M + i)) << 4), v128.load(Ap + ((<usize>i * <usize>K + <usize>(q << 2)) << 2)));
      }
    }
    skinnyNT(M, N, K, Ap, Ai, B, ldb, beta, C, ldc);
  } else {
    skinnyNN(M, N, K, Ap, B, ldb, beta, C, ldc);
  }
}

/**
 * C = Ap · B + beta·C with B stored [K, N]: a block of C's columns stays in L1 while B streams past
 * four rows at a time (each row segment contiguous), every row of C updated from the same four rows.
 */
function skinnyNN(M: i32, N: i32, K: i32, Ap: usize, B: usize, ldb: i32, beta: f32, C: usize, ldc: i32): void {
  scaleC(M, N, beta, C, ldc);
  const ldbB = <usize>ldb << 2;
  const KB = <usize>K << 2;
  const NB = M == 1 ? 4096 : 1024;
  for (let jb = 0; jb < N; jb += NB) {
    const jn = min(NB, N - jb);
    const end8 = <usize>(jn & ~7) << 2;
    const jv = jn & ~3;
    let k = 0;
    for (; k + 4 <= K; k += 4) {
      const b0 = B + ((<usize>k * <usize>ldb + <usize>jb) << 2);
      const b1 = b0 + ldbB, b2 = b1 + ldbB, b3 = b2 + ldbB;
      for (let i = 0; i < M; i++) {
        const a = Ap + <usize>i * KB + (<usize>k << 2);
        const a0 = v128.load32_splat(a, 0), a1 = v128.load32_splat(a, 4), a2 = v128.load32_splat(a, 8), a3 = v128.load32_splat(a, 12);
        const c = C + ((<usize>i * <usize>ldc + <usize>jb) << 2);
        let o: usize = 0;
        for (; o < end8; o += 32) {
          const p0 = b0 + o, p1 = b1 + o, p2 = b2 + o, p3 = b3 + o, pc = c + o;
          const s0 = f32x4.add(
            f32x4.add(f32x4.mul(a0, v128.load(p0)), f32x4.mul(a1, v128.load(p1))),
            f32x4.add(f32x4.mul(a2, v128.load(p2)), f32x4.mul(a3, v128.load(p3))),
          );
          const s1 = f32x4.add(
            f32x4.add(f32x4.mul(a0, v128.load(p0, 16)), f32x4.mul(a1, v128.load(p1, 16))),
            f32x4.add(f32x4.mul(a2, v128.load(p2, 16)), f32x4.mul(a3, v128.load(p3, 16))),
          );
          v128.store(pc, f32x4.add(v128.load(pc), s0));
          v128.store(pc, f32x4.add(v128.load(pc, 16), s1), 16);
        }
        let j = <i32>(o >> 2);
        for (; j < jv; j += 4) {
          const oo = <usize>j << 2;
          const s01 = f32x4.add(f32x4.mul(a0, v128.load(b0 + oo)), f32x4.mul(a1, v128.load(b1 + oo)));
          const s23 = f32x4.add(f32x4.mul(a2, v128.load(b2 + oo)), f32x4.mul(a3, v128.load(b3 + oo)));
          v128.store(c + oo, f32x4.add(v128.load(c + oo), f32x4.add(s01, s23)));
        }
        const x0 = f32x4.extract_lane(a0, 0), x1 = f32x4.extract_lane(a1, 0), x2 = f32x4.extract_lane(a2, 0), x3 = f32x4.extract_lane(a3, 0);
        for (; j < jn; j++) {
          const oo = <usize>j << 2;
          const s = (x0 * load<f32>(b0 + oo) + x1 * load<f32>(b1 + oo)) + (x2 * load<f32>(b2 + oo) + x3 * load<f32>(b3 + oo));
          store<f32>(c + oo, load<f32>(c + oo) + s);
        }
      }
    }
    for (; k < K; k++) {
      const b0 = B + ((<usize>k * <usize>ldb + <usize>jb) << 2);
      for (let i = 0; i < M; i++) {
        const a = Ap + <usize>i * KB + (<usize>k << 2);
        const a0 = v128.load32_splat(a);
        const x0 = load<f32>(a);
        const c = C + ((<usize>i * <usize>ldc + <usize>jb) << 2);
        let j = 0;
        for (; j < jv; j += 4) {
          const oo = <usize>j << 2;
          v128.store(c + oo, f32x4.add(v128.load(c + oo), f32x4.mul(a0, v128.load(b0 + oo))));
        }
        for (; j < jn; j++) {
          const oo = <usize>j << 2;
          store<f32>(c + oo, load<f32>(c + oo) + x0 * load<f32>(b0 + oo));
        }
      }
    }
  }
}

// @ts-ignore: decorator
@inline
function putC(c: usize, v: f32, beta: f32): void {
  store<f32>(c, beta == 0 ? v : v + beta * load<f32>(c));
}

/** Σ_p Ap[i, p]·B[j, p] over the tail p ∈ [kv·4, K) (scalar). */
// @ts-ignore: decorator
@inline
function tailDot(a: usize, b: usize, from: i32, K: i32): f32 {
  let t: f32 = 0;
  for (let p = from; p < K; p++) t += load<f32>(a + (<usize>p << 2)) * load<f32>(b + (<usize>p << 2));
  return t;
}

/**
 * C = Ap · Bᵀ + beta·C with B stored [N, K]: dot products along K, four rows of B at a time (four
 * concurrent streams) against two rows of A (from Ai: both at fixed offsets of one pointer); an odd
 * last row of A goes alone.
 */
function skinnyNT(M: i32, N: i32, K: i32, Ap: usize, Ai: usize, B: usize, ldb: i32, beta: f32, C: usize, ldc: i32): void {
  const ldbB = <usize>ldb << 2;
  const KB = <usize>K << 2;
  const ldcB = <usize>ldc << 2;
  const kv = K >> 2;
  const kvB = <usize>kv << 4;
  const sA = <usize>M << 4; // Ai bytes per k-vector
  const M2 = M & ~1;
  const kv2B = <usize>(K & ~7) << 2;
  const kt = kv << 2;
  let j = 0;
  const jq = M == 1 ? 0 : N & ~3;
  for (; j < jq; j += 4) {
    const b0 = B + <usize>j * ldbB, b1 = b0 + ldbB, b2 = b1 + ldbB, b3 = b2 + ldbB;
    // rows [0, M2): 2 rows × 4 columns
    for (let i = 0; i < M2; i += 2) {
      let pa = Ai + (<usize>i << 4);
      let s00 = f32x4.splat(0), s01 = s00, s02 = s00, s03 = s00, s10 = s00, s11 = s00, s12 = s00, s13 = s00;
      for (let o: usize = 0; o < kvB; o += 16) {
        const x0 = v128.load(pa, 0), x1 = v128.load(pa, 16);
        const y0 = v128.load(b0 + o), y1 = v128.load(b1 + o), y2 = v128.load(b2 + o), y3 = v128.load(b3 + o);
        s00 = f32x4.add(s00, f32x4.mul(x0, y0));
        s01 = f32x4.add(s01, f32x4.mul(x0, y1));
        s02 = f32x4.add(s02, f32x4.mul(x0, y2));
        s03 = f32x4.add(s03, f32x4.mul(x0, y3));
        s10 = f32x4.add(s10, f32x4.mul(x1, y0));
        s11 = f32x4.add(s11, f32x4.mul(x1, y1));
        s12 = f32x4.add(s12, f32x4.mul(x1, y2));
        s13 = f32x4.add(s13, f32x4.mul(x1, y3));
        pa += sA;
      }
      const a0 = Ap + <usize>i * KB, a1 = a0 + KB;
      const c0 = C + <usize>i * ldcB + (<usize>j << 2), c1 = c0 + ldcB;
      putC(c0, hsum(s00) + tailDot(a0, b0, kt, K), beta);
      putC(c0 + 4, hsum(s01) + tailDot(a0, b1, kt, K), beta);
      putC(c0 + 8, hsum(s02) + tailDot(a0, b2, kt, K), beta);
      putC(c0 + 12, hsum(s03) + tailDot(a0, b3, kt, K), beta);
      putC(c1, hsum(s10) + tailDot(a1, b0, kt, K), beta);
      putC(c1 + 4, hsum(s11) + tailDot(a1, b1, kt, K), beta);
      putC(c1 + 8, hsum(s12) + tailDot(a1, b2, kt, K), beta);
      putC(c1 + 12, hsum(s13) + tailDot(a1, b3, kt, K), beta);
    }
    // the last row when M is odd: 1 row × 4 columns, k unrolled by two vectors
    for (let i = M2; i < M; i++) {
      const a = Ap + <usize>i * KB;
      let s0 = f32x4.splat(0), s1 = s0, s2 = s0, s3 = s0;
      let o: usize = 0;
      for (; o < kv2B; o += 32) {
        const pa = a + o, p0 = b0 + o, p1 = b1 + o, p2 = b2 + o, p3 = b3 + o;
        const x0 = v128.load(pa), x1 = v128.load(pa, 16);
        s0 = f32x4.add(s0, f32x4.add(f32x4.mul(x0, v128.load(p0)), f32x4.mul(x1, v128.load(p0, 16))));
        s1 = f32x4.add(s1, f32x4.add(f32x4.mul(x0, v128.load(p1)), f32x4.mul(x1, v128.load(p1, 16))));
        s2 = f32x4.add(s2, f32x4.add(f32x4.mul(x0, v128.load(p2)), f32x4.mul(x1, v128.load(p2, 16))));
        s3 = f32x4.add(s3, f32x4.add(f32x4.mul(x0, v128.load(p3)), f32x4.mul(x1, v128.load(p3, 16))));
      }
      for (; o < kvB; o += 16) {
        const x0 = v128.load(a + o);
        s0 = f32x4.add(s0, f32x4.mul(x0, v128.load(b0 + o)));
        s1 = f32x4.add(s1, f32x4.mul(x0, v128.load(b1 + o)));
        s2 = f32x4.add(s2, f32x4.mul(x0, v128.load(b2 + o)));
        s3 = f32x4.add(s3, f32x4.mul(x0, v128.load(b3 + o)));
      }
      const c0 = C + <usize>i * ldcB + (<usize>j << 2);
      putC(c0, hsum(s0) + tailDot(a, b0, kt, K), beta);
      putC(c0 + 4, hsum(s1) + tailDot(a, b1, kt, K), beta);
      putC(c0 + 8, hsum(s2) + tailDot(a, b2, kt, K), beta);
      putC(c0 + 12, hsum(s3) + tailDot(a, b3, kt, K), beta);
    }
  }
  for (; j < N; j++) for (let i = 0; i < M; i++) dot1(i, j, K, Ap, B, ldbB, beta, C, ldcB);
}

/** C[i, j] = Ap[i, :]·B[j, :] + beta·C[i, j]. */
function dot1(i: i32, j: i32, K: i32, Ap: usize, B: usize, ldbB: usize, beta: f32, C: usize, ldcB: usize): void {
  const a = Ap + (<usize>i * <usize>K << 2);
  const b = B + <usize>j * ldbB;
  let s0 = f32x4.splat(0), s1 = s0, s2 = s0, s3 = s0;
  let p = 0;
  for (; p + 16 <= K; p += 16) {
    const o = <usize>p << 2;
    const pa = a + o, pb = b + o;
    s0 = f32x4.add(s0, f32x4.mul(v128.load(pa), v128.load(pb)));
    s1 = f32x4.add(s1, f32x4.mul(v128.load(pa, 16), v128.load(pb, 16)));
    s2 = f32x4.add(s2, f32x4.mul(v128.load(pa, 32), v128.load(pb, 32)));
    s3 = f32x4.add(s3, f32x4.mul(v128.load(pa, 48), v128.load(pb, 48)));
  }
  s0 = f32x4.add(s0, s2);
  s1 = f32x4.add(s1, s3);
  for (; p + 4 <= K; p += 4) {
    const o = <usize>p << 2;
    s0 = f32x4.add(s0, f32x4.mul(v128.load(a + o), v128.load(b + o)));
  }
  putC(C + <usize>i * ldcB + (<usize>j << 2), hsum(f32x4.add(s0, s1)) + tailDot(a, b, p, K), beta);
}
