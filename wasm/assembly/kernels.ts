// Row-wise, elementwise and optimiser kernels. Semantics are those of the Backend interface
// (src/backend/types.ts); pointers are byte addresses, counts are elements. Bodies work on four
// float32 lanes at a time with scalar tails.
import { expf, hmax, hsum, hsum64, vexp, vmax, widen } from './simd';

// @ts-ignore: decorator
@inline
function at(p: usize, i: i32): usize {
  return p + (<usize>i << 2);
}

// ------------------------------------------------------------------------------------------------
// Softmax
// ------------------------------------------------------------------------------------------------

export function softmaxForward(out: usize, inp: usize, rows: i32, cols: i32, scale: f32, causalQ: i32): void {
  const vs = f32x4.splat(scale);
  for (let r = 0; r < rows; r++) {
    const x = at(inp, r * cols);
    const y = at(out, r * cols);
    const visible = causalQ > 0 ? (r % causalQ) + (cols - causalQ) + 1 : cols;
    const nv = visible & ~3;
    // max of scale·x (NaNs skipped here; they still turn the row into NaN through the sum)
    let m0 = f32x4.splat(-Infinity), m1 = m0;
    let c = 0;
    for (; c + 8 <= visible; c += 8) {
      m0 = vmax(m0, f32x4.mul(v128.load(at(x, c)), vs));
      m1 = vmax(m1, f32x4.mul(v128.load(at(x, c), 16), vs));
    }
    for (; c < nv; c += 4) m0 = vmax(m0, f32x4.mul(v128.load(at(x, c)), vs));
    let m = hmax(f32x4.max(m0, m1));
    for (; c < visible; c++) m = max<f32>(m, scale * load<f32>(at(x, c)));
    // e = exp(scale·x − max), sum
    const vm = f32x4.splat(m);
    let s0 = f32x4.splat(0), s1 = s0;
    c = 0;
    for (; c + 8 <= visible; c += 8) {
      const e0 = vexp(f32x4.sub(f32x4.mul(v128.load(at(x, c)), vs), vm));
      const e1 = vexp(f32x4.sub(f32x4.mul(v128.load(at(x, c), 16), vs), vm));
      v128.store(at(y, c), e0);
      v128.store(at(y, c), e1, 16);
      s0 = f32x4.add(s0, e0);
      s1 = f32x4.add(s1, e1);
    }
    for (; c < nv; c += 4) {
      const e0 = vexp(f32x4.sub(f32x4.mul(v128.load(at(x, c)), vs), vm));
      v128.store(at(y, c), e0);
      s0 = f32x4.add(s0, e0);
    }
    let sum = hsum(f32x4.add(s0, s1));
    for (; c < visible; c++) {
      const e = expf(scale * load<f32>(at(x, c)) - m);
      store<f32>(at(y, c), e);
      sum += e;
    }
    // normalise, zero the masked tail
    const inv: f32 = <f32>(1.0 / <f64>sum);
    const vi = f32x4.splat(inv);
    c = 0;
    for (; c < nv; c += 4) v128.store(at(y, c), f32x4.mul(v128.load(at(y, c)), vi));
    for (; c < visible; c++) store<f32>(at(y, c), load<f32>(at(y, c)) * inv);
    if (visible < cols) memory.fill(at(y, visible), 0, <usize>(cols - visible) << 2);
  }
}

export function softmaxBackward(dinp: usize, dout: usize, out: usize, rows: i32, cols: i32, scale: f32): void {
  const cv = cols & ~3;
  const vs = f32x4.splat(scale);
  for (let r = 0; r < rows; r++) {
    const g = at(dout, r * cols);
    const y = at(out, r * cols);
    const d = at(dinp, r * cols);
    let a0 = f32x4.splat(0), a1 = a0;
    let c = 0;
    for (; c + 8 <= cols; c += 8) {
      a0 = f32x4.add(a0, f32x4.mul(v128.load(at(g, c)), v128.load(at(y, c))));
      a1 = f32x4.add(a1, f32x4.mul(v128.load(at(g, c), 16), v128.load(at(y, c), 16)));
    }
    for (; c < cv; c += 4) a0 = f32x4.add(a0, f32x4.mul(v128.load(at(g, c)), v128.load(at(y, c))));
    let dot = hsum(f32x4.add(a0, a1));
    for (; c < cols; c++) dot += load<f32>(at(g, c)) * load<f32>(at(y, c));
    const vd = f32x4.splat(dot);
    c = 0;
    for (; c < cv; c += 4) {
      v128.store(at(d, c), f32x4.mul(f32x4.mul(vs, v128.load(at(y, c))), f32x4.sub(v128.load(at(g, c)), vd)));
    }
    for (; c < cols; c++) store<f32>(at(d, c), scale * load<f32>(at(y, c)) * (load<f32>(at(g, c)) - dot));
  }
}

// ------------------------------------------------------------------------------------------------
// RMSNorm
// ------------------------------------------------------------------------------------------------

export function rmsnormForward(out: usize, rstd: usize, x: usize, w: usize, rows: i32, cols: i32, eps: f64): void {
  const cv = cols & ~3;
  for (let r = 0; r < rows; r++) {
    const xr = at(x, r * cols);
    const yr = at(out, r * cols);
    let a0 = f32x4.splat(0), a1 = a0;
    let c = 0;
    for (; c + 8 <= cols; c += 8) {
      const v0 = v128.load(at(xr, c)), v1 = v128.load(at(xr, c), 16);
      a0 = f32x4.add(a0, f32x4.mul(v0, v0));
      a1 = f32x4.add(a1, f32x4.mul(v1, v1));
    }
    for (; c < cv; c += 4) {
      const v0 = v128.load(at(xr, c));
      a0 = f32x4.add(a0, f32x4.mul(v0, v0));
    }
    let ss = <f64>hsum(f32x4.add(a0, a1));
    for (; c < cols; c++) {
      const v = <f64>load<f32>(at(xr, c));
      ss += v * v;
    }
    const s = <f32>(1.0 / Math.sqrt(ss / <f64>cols + eps));
    store<f32>(at(rstd, r), s);
    const vs = f32x4.splat(s);
    c = 0;
    for (; c < cv; c += 4) v128.store(at(yr, c), f32x4.mul(f32x4.mul(v128.load(at(xr, c)), vs), v128.load(at(w, c))));
    for (; c < cols; c++) store<f32>(at(yr, c), load<f32>(at(xr, c)) * s * load<f32>(at(w, c)));
  }
}

export function rmsnormBackward(dx: usize, dw: usize, dout: usize, x: usize, w: usize, rstd: usize, rows: i32, cols: i32): void {
  const cv = cols & ~3;
  for (let r = 0; r < rows; r++) {
    const xr = at(x, r * cols);
    const gr = at(dout, r * cols);
    const dr = at(dx, r * cols);
    const s = load<f32>(at(rstd, r));
    const vs = f32x4.splat(s);
    let a0 = f32x4.splat(0);
    let c = 0;
    for (; c < cv; c += 4) {
      const g = v128.load(at(gr, c)), xv = v128.load(at(xr, c));
      a0 = f32x4.add(a0, f32x4.mul(f32x4.mul(g, v128.load(at(w, c))), xv));
      const dwp = at(dw, c);
      v128.store(dwp, f32x4.add(v128.load(dwp), f32x4.mul(f32x4.mul(g, xv), vs)));
    }
    let dot = hsum(a0);
    for (; c < cols; c++) {
      const g = load<f32>(at(gr, c)), xv = load<f32>(at(xr, c));
      dot += g * load<f32>(at(w, c)) * xv;
      store<f32>(at(dw, c), load<f32>(at(dw, c)) + g * xv * s);
    }
    const k: f32 = <f32>((<f64>dot / <f64>cols) * <f64>s * <f64>s * <f64>s);
    const vk = f32x4.splat(k);
    c = 0;
    for (; c < cv; c += 4) {
      const p = at(dr, c);
      const t = f32x4.sub(f32x4.mul(f32x4.mul(vs, v128.load(at(w, c))), v128.load(at(gr, c))), f32x4.mul(vk, v128.load(at(xr, c))));
      v128.store(p, f32x4.add(v128.load(p), t));
    }
    for (; c < cols; c++) {
      const p = at(dr, c);
      store<f32>(p, load<f32>(p) + (s * load<f32>(at(w, c)) * load<f32>(at(gr, c)) - k * load<f32>(at(xr, c))));
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Rotary embedding (rotate-half pairing), in place; dir = 1 forward, −1 backward.
// ------------------------------------------------------------------------------------------------

export function rope(x: usize, cos: usize, sin: usize, B: i32, T: i32, H: i32, HD: i32, pos0: i32, dir: i32): void {
  const half = HD >> 1;
  const hv = half & ~3;
  const halfB = <usize>half << 2;
  const sgn: f32 = dir < 0 ? -1 : 1;
  const vsg = f32x4.splat(sgn);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const cp = at(cos, (pos0 + t) * half);
      const sp = at(sin, (pos0 + t) * half);
      for (let h = 0; h < H; h++) {
        const o = at(x, ((b * T + t) * H + h) * HD);
        let i = 0;
        for (; i < hv; i += 4) {
          const pa = at(o, i);
          const pb = pa + halfB;
          const c = v128.load(at(cp, i));
          const s = f32x4.mul(v128.load(at(sp, i)), vsg);
          const a = v128.load(pa), bb = v128.load(pb);
          v128.store(pa, f32x4.sub(f32x4.mul(a, c), f32x4.mul(bb, s)));
          v128.store(pb, f32x4.add(f32x4.mul(bb, c), f32x4.mul(a, s)));
        }
        for (; i < half; i++) {
          const pa = at(o, i);
          const pb = pa + halfB;
          const c = load<f32>(at(cp, i));
          const s = sgn * load<f32>(at(sp, i));
          const a = load<f32>(pa), bb = load<f32>(pb);
          store<f32>(pa, a * c - bb * s);
          store<f32>(pb, bb * c + a * s);
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// SwiGLU
// ------------------------------------------------------------------------------------------------

export function swigluForward(out: usize, a: usize, b: usize, n: i32): void {
  const one = f32x4.splat(1);
  const nv = n & ~3;
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    const pa = at(a, i), pb = at(b, i), po = at(out, i);
    const x0 = v128.load(pa), x1 = v128.load(pa, 16);
    const s0 = f32x4.div(x0, f32x4.add(one, vexp(f32x4.neg(x0))));
    const s1 = f32x4.div(x1, f32x4.add(one, vexp(f32x4.neg(x1))));
    v128.store(po, f32x4.mul(s0, v128.load(pb)));
    v128.store(po, f32x4.mul(s1, v128.load(pb, 16)), 16);
  }
  for (; i < nv; i += 4) {
    const x = v128.load(at(a, i));
    const silu = f32x4.div(x, f32x4.add(one, vexp(f32x4.neg(x))));
    v128.store(at(out, i), f32x4.mul(silu, v128.load(at(b, i))));
  }
  for (; i < n; i++) {
    const x = load<f32>(at(a, i));
    store<f32>(at(out, i), (x / (1 + expf(-x))) * load<f32>(at(b, i)));
  }
}

export function swigluBackward(da: usize, db: usize, dout: usize, a: usize, b: usize, n: i32): void {
  const one = f32x4.splat(1);
  const nv = n & ~3;
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    const pa = at(a, i), pb = at(b, i), pg = at(dout, i), pda = at(da, i), pdb = at(db, i);
    const x0 = v128.load(pa), x1 = v128.load(pa, 16);
    const sig0 = f32x4.div(one, f32x4.add(one, vexp(f32x4.neg(x0))));
    const sig1 = f32x4.div(one, f32x4.add(one, vexp(f32x4.neg(x1))));
    const silu0 = f32x4.mul(x0, sig0), silu1 = f32x4.mul(x1, sig1);
    const g0 = v128.load(pg), g1 = v128.load(pg, 16);
    const d0 = f32x4.add(sig0, f32x4.mul(silu0, f32x4.sub(one, sig0)));
    const d1 = f32x4.add(sig1, f32x4.mul(silu1, f32x4.sub(one, sig1)));
    v128.store(pda, f32x4.mul(f32x4.mul(g0, v128.load(pb)), d0));
    v128.store(pda, f32x4.mul(f32x4.mul(g1, v128.load(pb, 16)), d1), 16);
    v128.store(pdb, f32x4.mul(g0, silu0));
    v128.store(pdb, f32x4.mul(g1, silu1), 16);
  }
  for (; i < nv; i += 4) {
    const x = v128.load(at(a, i));
    const sig = f32x4.div(one, f32x4.add(one, vexp(f32x4.neg(x))));
    const silu = f32x4.mul(x, sig);
    const g = v128.load(at(dout, i));
    const dsilu = f32x4.add(sig, f32x4.mul(silu, f32x4.sub(one, sig)));
    v128.store(at(da, i), f32x4.mul(f32x4.mul(g, v128.load(at(b, i))), dsilu));
    v128.store(at(db, i), f32x4.mul(g, silu));
  }
  for (; i < n; i++) {
    const x = load<f32>(at(a, i));
    const sig: f32 = 1 / (1 + expf(-x));
    const silu = x * sig;
    const g = load<f32>(at(dout, i));
    store<f32>(at(da, i), g * load<f32>(at(b, i)) * (sig + silu * (1 - sig)));
    store<f32>(at(db, i), g * silu);
  }
}

// ------------------------------------------------------------------------------------------------
// Cross-entropy pieces
// ------------------------------------------------------------------------------------------------

export function rowMax(out: usize, x: usize, rows: i32, cols: i32): void {
  const cv = cols & ~3;
  for (let r = 0; r < rows; r++) {
    const xr = at(x, r * cols);
    let m0 = f32x4.splat(-Infinity), m1 = m0;
    let nan = f32x4.splat(0);
    let c = 0;
    for (; c + 8 <= cols; c += 8) {
      const x0 = v128.load(at(xr, c)), x1 = v128.load(at(xr, c), 16);
      m0 = vmax(m0, x0);
      m1 = vmax(m1, x1);
      nan = v128.or(nan, v128.or(f32x4.ne(x0, x0), f32x4.ne(x1, x1)));
    }
    for (; c < cv; c += 4) {
      const x0 = v128.load(at(xr, c));
      m0 = vmax(m0, x0);
      nan = v128.or(nan, f32x4.ne(x0, x0));
    }
    let m = hmax(vmax(m0, m1));
    for (; c < cols; c++) m = max<f32>(m, load<f32>(at(xr, c)));
    store<f32>(at(out, r), v128.any_true(nan) ? <f32>NaN : m);
  }
}

/** Σ exp(x − shift) per row; exponentials in float32, the sum in float64. */
export function rowSumExp(out: usize, x: usize, shift: usize, rows: i32, cols: i32): void {
  const cv = cols & ~3;
  for (let r = 0; r < rows; r++) {
    const xr = at(x, r * cols);
    const m = load<f32>(at(shift, r));
    const vm = f32x4.splat(m);
    let s0 = f64x2.splat(0), s1 = s0;
    let c = 0;
    for (; c + 8 <= cols; c += 8) {
      s0 = f64x2.add(s0, widen(vexp(f32x4.sub(v128.load(at(xr, c)), vm))));
      s1 = f64x2.add(s1, widen(vexp(f32x4.sub(v128.load(at(xr, c), 16), vm))));
    }
    for (; c < cv; c += 4) s0 = f64x2.add(s0, widen(vexp(f32x4.sub(v128.load(at(xr, c)), vm))));
    let s = hsum64(f64x2.add(s0, s1));
    for (; c < cols; c++) s += <f64>expf(load<f32>(at(xr, c)) - m);
    store<f32>(at(out, r), <f32>s);
  }
}

export function pickTarget(out: usize, x: usize, targets: usize, rows: i32, cols: i32, vocabStart: i32): void {
  for (let r = 0; r < rows; r++) {
    const t = load<i32>(at(targets, r)) - vocabStart;
    store<f32>(at(out, r), t >= 0 && t < cols ? load<f32>(at(x, r * cols + t)) : 0);
  }
}

export function crossEntropyBackward(
  dlogits: usize, logits: usize, targets: usize, lse: usize, rows: i32, cols: i32, vocabStart: i32, gradScale: f32,
): void {
  const cv = cols & ~3;
  const vg = f32x4.splat(gradScale);
  for (let r = 0; r < rows; r++) {
    const xr = at(logits, r * cols);
    const dr = at(dlogits, r * cols);
    const l = load<f32>(at(lse, r));
    const vl = f32x4.splat(l);
    let c = 0;
    for (; c < cv; c += 4) v128.store(at(dr, c), f32x4.mul(vg, vexp(f32x4.sub(v128.load(at(xr, c)), vl))));
    for (; c < cols; c++) store<f32>(at(dr, c), gradScale * expf(load<f32>(at(xr, c)) - l));
    const t = load<i32>(at(targets, r)) - vocabStart;
    if (t >= 0 && t < cols) store<f32>(at(dr, t), gradScale * (expf(load<f32>(at(xr, t)) - l) - 1));
  }
}

// ------------------------------------------------------------------------------------------------
// Embedding
// ------------------------------------------------------------------------------------------------

export function embeddingForward(out: usize, table: usize, tokens: usize, n: i32, C: i32, vocabStart: i32, tableRows: i32): void {
  const rowB = <usize>C << 2;
  for (let i = 0; i < n; i++) {
    const t = load<i32>(at(tokens, i)) - vocabStart;
    const dst = out + <usize>i * rowB;
    if (t >= 0 && t < tableRows) memory.copy(dst, table + <usize>t * rowB, rowB);
    else memory.fill(dst, 0, rowB);
  }
}

export function embeddingBackward(dtable: usize, dout: usize, tokens: usize, n: i32, C: i32, vocabStart: i32, tableRows: i32): void {
  const rowB = <usize>C << 2;
  for (let i = 0; i < n; i++) {
    const t = load<i32>(at(tokens, i)) - vocabStart;
    if (t < 0 || t >= tableRows) continue;
    addInto(dtable + <usize>t * rowB, dtable + <usize>t * rowB, dout + <usize>i * rowB, C);
  }
}

// ------------------------------------------------------------------------------------------------
// Elementwise and reductions
// ------------------------------------------------------------------------------------------------

function addInto(out: usize, a: usize, b: usize, n: i32): void {
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    const x0 = f32x4.add(v128.load(at(a, i)), v128.load(at(b, i)));
    const x1 = f32x4.add(v128.load(at(a, i), 16), v128.load(at(b, i), 16));
    v128.store(at(out, i), x0);
    v128.store(at(out, i), x1, 16);
  }
  for (; i + 4 <= n; i += 4) v128.store(at(out, i), f32x4.add(v128.load(at(a, i)), v128.load(at(b, i))));
  for (; i < n; i++) store<f32>(at(out, i), load<f32>(at(a, i)) + load<f32>(at(b, i)));
}

export function add(out: usize, a: usize, b: usize, n: i32): void {
  addInto(out, a, b, n);
}

/**
 * y += alpha·x with the product and sum formed in float64 and rounded once to float32, exactly as
 * the js reference (JS numbers are doubles), so both give the same bits.
 */
export function axpy(y: usize, alpha: f64, x: usize, n: i32): void {
  const va = f64x2.splat(alpha);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const xv = v128.load(at(x, i)), yv = v128.load(at(y, i));
    const lo = f64x2.add(f64x2.promote_low_f32x4(yv), f64x2.mul(va, f64x2.promote_low_f32x4(xv)));
    const hi = f64x2.add(
      f64x2.promote_low_f32x4(f32x4.shuffle(yv, yv, 2, 3, 2, 3)),
      f64x2.mul(va, f64x2.promote_low_f32x4(f32x4.shuffle(xv, xv, 2, 3, 2, 3))),
    );
    v128.store(at(y, i), f32x4.shuffle(f32x4.demote_f64x2_zero(lo), f32x4.demote_f64x2_zero(hi), 0, 1, 4, 5));
  }
  for (; i < n; i++) store<f32>(at(y, i), <f32>(<f64>load<f32>(at(y, i)) + alpha * <f64>load<f32>(at(x, i))));
}

/** x *= alpha, the product formed in float64 and rounded once (same bits as the js reference). */
export function scale(x: usize, alpha: f64, n: i32): void {
  const va = f64x2.splat(alpha);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const xv = v128.load(at(x, i));
    const lo = f64x2.mul(f64x2.promote_low_f32x4(xv), va);
    const hi = f64x2.mul(f64x2.promote_low_f32x4(f32x4.shuffle(xv, xv, 2, 3, 2, 3)), va);
    v128.store(at(x, i), f32x4.shuffle(f32x4.demote_f64x2_zero(lo), f32x4.demote_f64x2_zero(hi), 0, 1, 4, 5));
  }
  for (; i < n; i++) store<f32>(at(x, i), <f32>(<f64>load<f32>(at(x, i)) * alpha));
}

/**
 * out = srcs[0] + srcs[1] + … + srcs[k−1], left to right with float32 rounding after every addition
 * (the js reference's order, hence the same bits). `srcs` points at k u32 byte addresses. Works in
 * blocks so that the running sum stays in L1. out may alias srcs[0].
 */
export function reduceSum(out: usize, srcs: usize, k: i32, n: i32): void {
  const BLOCK = 2048;
  for (let i0 = 0; i0 < n; i0 += BLOCK) {
    const len = min(BLOCK, n - i0);
    const o = at(out, i0);
    const s0 = at(load<u32>(srcs), i0);
    if (s0 != o) memory.copy(o, s0, <usize>len << 2);
    for (let q = 1; q < k; q++) addInto(o, o, at(load<u32>(srcs + (<usize>q << 2)), i0), len);
  }
}

/** Σ x² in float64 (each square is exact in float64). */
export function sumSquares(x: usize, n: i32): f64 {
  let s0 = f64x2.splat(0), s1 = s0;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const v = v128.load(at(x, i));
    const lo = f64x2.promote_low_f32x4(v);
    const hi = f64x2.promote_low_f32x4(f32x4.shuffle(v, v, 2, 3, 2, 3));
    s0 = f64x2.add(s0, f64x2.mul(lo, lo));
    s1 = f64x2.add(s1, f64x2.mul(hi, hi));
  }
  let s = hsum64(f64x2.add(s0, s1));
  for (; i < n; i++) {
    const v = <f64>load<f32>(at(x, i));
    s += v * v;
  }
  return s;
}

/**
 * One AdamW step in float64 arithmetic with float32 storage, operation for operation as the js
 * reference (same bits). decay = 1 − lr·wd, stepSize = lr / (1 − beta1^step),
 * bc2sqrt = sqrt(1 − beta2^step) are computed by the caller.
 */
export function adamw(
  param: usize, grad: usize, m: usize, v: usize, n: i32,
  decay: f64, beta1: f64, beta2: f64, eps: f64, stepSize: f64, bc2sqrt: f64, gradScale: f64,
): void {
  const omb1 = 1 - beta1;
  const omb2 = 1 - beta2;
  const vDecay = f64x2.splat(decay), vB1 = f64x2.splat(beta1), vB2 = f64x2.splat(beta2);
  const vO1 = f64x2.splat(omb1), vO2 = f64x2.splat(omb2), vEps = f64x2.splat(eps);
  const vStep = f64x2.splat(stepSize), vBc2 = f64x2.splat(bc2sqrt), vGs = f64x2.splat(gradScale);
  let i = 0;
  for (; i + 2 <= n; i += 2) {
    // two lanes at a time in float64
    const pp = at(param, i), gp = at(grad, i), mp = at(m, i), vp = at(v, i);
    const g = f64x2.mul(f64x2.promote_low_f32x4(v128.load64_zero(gp)), vGs);
    const p0 = f32x4.demote_f64x2_zero(f64x2.mul(f64x2.promote_low_f32x4(v128.load64_zero(pp)), vDecay));
    const mi = f64x2.add(f64x2.mul(vB1, f64x2.promote_low_f32x4(v128.load64_zero(mp))), f64x2.mul(vO1, g));
    const vi = f64x2.add(f64x2.mul(vB2, f64x2.promote_low_f32x4(v128.load64_zero(vp))), f64x2.mul(f64x2.mul(vO2, g), g));
    v128.store64_lane(mp, f32x4.demote_f64x2_zero(mi), 0);
    v128.store64_lane(vp, f32x4.demote_f64x2_zero(vi), 0);
    const upd = f64x2.div(f64x2.mul(vStep, mi), f64x2.add(f64x2.div(f64x2.sqrt(vi), vBc2), vEps));
    v128.store64_lane(pp, f32x4.demote_f64x2_zero(f64x2.sub(f64x2.promote_low_f32x4(p0), upd)), 0);
  }
  for (; i < n; i++) {
    const pp = at(param, i), mp = at(m, i), vp = at(v, i);
    const g = <f64>load<f32>(at(grad, i)) * gradScale;
    const p0 = <f32>(<f64>load<f32>(pp) * decay);
    const mi = beta1 * <f64>load<f32>(mp) + omb1 * g;
    const vi = beta2 * <f64>load<f32>(vp) + omb2 * g * g;
    store<f32>(mp, <f32>mi);
    store<f32>(vp, <f32>vi);
    store<f32>(pp, <f32>(<f64>p0 - (stepSize * mi) / (Math.sqrt(vi) / bc2sqrt + eps)));
  }
}
