// The GEMM micro-kernel: a 4×8 tile of C in eight f32x4 accumulators.
//
// Shape of the loop, chosen by measurement with Node 20's V8 (TurboFan, x64):
// - Per k step: two vector loads of the B panel, four broadcast loads (v128.load32_splat) of the A
//   panel, eight mul + eight add (relaxed-simd FMA is behind a flag in Node 20). V8 hoists every load
//   of a loop body to its top, so 8 accumulators + 6 loaded values + 1 temporary is what fits in the
//   15 allocatable xmm registers; unrolling k or a larger tile (6×8, 4×12, 3×16) spills and is slower.
// - One running byte offset `o` addresses both panels (a + o, b + 2·o): separate pointer induction
//   variables cost V8 extra moves and zero-extensions per iteration, and the kernel is bound by
//   instruction issue, not by the FP units (about 63 GFLOP/s against 52 with two pointers, one core).
export const MR: i32 = 4;
export const NR: i32 = 8;

/**
 * C[0:4, 0:8] = alpha · Ap·Bp + beta · C (beta = 0: C is not read), with Ap a packed 4-row panel
 * ([kc][4] floats) and Bp a packed 8-column panel ([kc][8] floats); kc ≥ 1; ldc in bytes.
 */
export function microKernel(kc: i32, a: usize, b: usize, c: usize, ldc: usize, alpha: f32, beta: f32): void {
  let c00 = f32x4.splat(0), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  let b0: v128, b1: v128;
  let av: v128;
  let o: usize = 0;
  const oEnd = <usize>kc << 4;
  do {
    const pa = a + o;
    const pb = b + o * 2;
    b0 = v128.load(pb, 0);
    b1 = v128.load(pb, 16);
    av = v128.load32_splat(pa, 0);
    c00 = f32x4.add(c00, f32x4.mul(av, b0));
    c01 = f32x4.add(c01, f32x4.mul(av, b1));
    av = v128.load32_splat(pa, 4);
    c10 = f32x4.add(c10, f32x4.mul(av, b0));
    c11 = f32x4.add(c11, f32x4.mul(av, b1));
    av = v128.load32_splat(pa, 8);
    c20 = f32x4.add(c20, f32x4.mul(av, b0));
    c21 = f32x4.add(c21, f32x4.mul(av, b1));
    av = v128.load32_splat(pa, 12);
    c30 = f32x4.add(c30, f32x4.mul(av, b0));
    c31 = f32x4.add(c31, f32x4.mul(av, b1));
    o += 16;
  } while (o < oEnd);
  const va = f32x4.splat(alpha);
  if (beta == 0) {
    v128.store(c, f32x4.mul(c00, va), 0);
    v128.store(c, f32x4.mul(c01, va), 16);
    c += ldc;
    v128.store(c, f32x4.mul(c10, va), 0);
    v128.store(c, f32x4.mul(c11, va), 16);
    c += ldc;
    v128.store(c, f32x4.mul(c20, va), 0);
    v128.store(c, f32x4.mul(c21, va), 16);
    c += ldc;
    v128.store(c, f32x4.mul(c30, va), 0);
    v128.store(c, f32x4.mul(c31, va), 16);
  } else {
    const vb = f32x4.splat(beta);
    v128.store(c, f32x4.add(f32x4.mul(c00, va), f32x4.mul(v128.load(c, 0), vb)), 0);
    v128.store(c, f32x4.add(f32x4.mul(c01, va), f32x4.mul(v128.load(c, 16), vb)), 16);
    c += ldc;
    v128.store(c, f32x4.add(f32x4.mul(c10, va), f32x4.mul(v128.load(c, 0), vb)), 0);
    v128.store(c, f32x4.add(f32x4.mul(c11, va), f32x4.mul(v128.load(c, 16), vb)), 16);
    c += ldc;
    v128.store(c, f32x4.add(f32x4.mul(c20, va), f32x4.mul(v128.load(c, 0), vb)), 0);
    v128.store(c, f32x4.add(f32x4.mul(c21, va), f32x4.mul(v128.load(c, 16), vb)), 16);
    c += ldc;
    v128.store(c, f32x4.add(f32x4.mul(c30, va), f32x4.mul(v128.load(c, 0), vb)), 0);
    v128.store(c, f32x4.add(f32x4.mul(c31, va), f32x4.mul(v128.load(c, 16), vb)), 16);
  }
}
