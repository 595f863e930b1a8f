/**
 * Finite-difference checks of every backward kernel, in float64 on the js backend.
 *
 * Each check builds a scalar loss L = Σ G ⊙ f(params) with a fixed random G (so dL/dout = G), computes
 * the analytic gradient with the backward kernel, and compares it with central differences
 * (L(p + h) − L(p − h)) / 2h, h = 1e-6, for every parameter element. In float64 the central
 * difference is accurate to ~h² + eps64·|L|/h ≈ 1e-10 relative, so the bound is
 *   ||fd − analytic||₂ / ||analytic||₂ < 1e-6   and   max_i |fd_i − analytic_i| / max_i |analytic_i| < 1e-6.
 * Cross-entropy is checked as a whole: the vocab-parallel pieces (rowMax, rowSumExp, pickTarget,
 * crossEntropyBackward) over two vocab blocks of unequal width, combined into the mean loss.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createJsBackend, ropeTables } from '../src/backend/index.js';
import { maxAbs, relL2Error } from './helpers/compare.js';
import { type Rng, rngFor } from './helpers/rng.js';

const be = createJsBackend('f64');
const H = 1e-6;
const TOL = 1e-6;

/** Σ g ⊙ y */
function dot(g: Float64Array, y: Float64Array): number {
  let s = 0;
  for (let i = 0; i < g.length; i++) s += g[i]! * y[i]!;
  return s;
}

/** Central differences of `loss` with respect to every element of `p` (restored afterwards). */
function numericGrad(p: Float64Array, loss: () => number): Float64Array {
  const g = new Float64Array(p.length);
  for (let i = 0; i < p.length; i++) {
    const old = p[i]!;
    p[i] = old + H;
    const lp = loss();
    p[i] = old - H;
    const lm = loss();
    p[i] = old;
    g[i] = (lp - lm) / (2 * H);
  }
  return g;
}

function assertGradient(name: string, p: Float64Array, loss: () => number, analytic: Float64Array): void {
  const fd = numericGrad(p, loss);
  const scale = maxAbs(analytic);
  assert.ok(scale > 0, `${name}: analytic gradient is identically zero (test would be vacuous)`);
  const rel = relL2Error(analytic, fd);
  let worst = 0;
  let wi = 0;
  for (let i = 0; i < fd.length; i++) {
    const e = Math.abs(fd[i]! - analytic[i]!);
    if (e > worst) {
      worst = e;
      wi = i;
    }
  }
  assert.ok(
    rel < TOL && worst / scale < TOL,
    `${name}: relative L2 error ${rel.toExponential(2)}, worst element ${wi}: finite difference ${fd[wi]} vs analytic ${analytic[wi]} ` +
      `(${(worst / scale).toExponential(2)} of max |grad|); both must be < ${TOL}`,
  );
}

const normal = (rng: Rng, n: number, std = 1): Float64Array => rng.normalF64(n, std);

test('attentionBackward: dq, dk, dv', () => {
  for (const [B, T, NH, NKV, HD] of [[2, 5, 4, 2, 4], [1, 6, 3, 1, 6], [1, 4, 2, 2, 3]] as const) {
    const rng = rngFor(`grad attention ${B} ${T} ${NH} ${NKV} ${HD}`);
    const qn = B * T * NH * HD;
    const kvn = B * T * NKV * HD;
    const q = normal(rng, qn);
    const k = normal(rng, kvn);
    const v = normal(rng, kvn);
    const G = normal(rng, qn);
    const out = new Float64Array(qn);
    const att = new Float64Array(B * NH * T * T);
    const loss = (): number => {
      be.attentionForward(out, att, q, k, v, B, T, T, NH, NKV, HD, T * NKV * HD);
      return dot(G, out);
    };
    loss();
    const dq = new Float64Array(qn);
    const dk = new Float64Array(kvn);
    const dv = new Float64Array(kvn);
    be.attentionBackward(dq, dk, dv, new Float64Array(T * T), G, q, k, v, att, B, T, NH, NKV, HD);
    const shape = `B=${B} T=${T} NH=${NH} NKV=${NKV} HD=${HD}`;
    assertGradient(`dq ${shape}`, q, loss, dq);
    assertGradient(`dk ${shape}`, k, loss, dk);
    assertGradient(`dv ${shape}`, v, loss, dv);
  }
});

test('softmaxBackward (causalQ 0 and > 0, scale ≠ 1)', () => {
  for (const [rows, cols, scale, causalQ] of [[4, 7, 0.7, 0], [6, 5, 1.3, 3], [4, 4, -0.5, 4]] as const) {
    const rng = rngFor(`grad softmax ${rows} ${cols} ${causalQ}`);
    const x = normal(rng, rows * cols, 2);
    const G = normal(rng, rows * cols);
    const out = new Float64Array(rows * cols);
    const loss = (): number => {
      be.softmaxForward(out, x, rows, cols, scale, causalQ);
      return dot(G, out);
    };
    loss();
    const dx = new Float64Array(rows * cols);
    be.softmaxBackward(dx, G, out, rows, cols, scale);
    assertGradient(`dinp rows=${rows} cols=${cols} scale=${scale} causalQ=${causalQ}`, x, loss, dx);
  }
});

test('rmsnormBackward: dx, dw', () => {
  const rng = rngFor('grad rmsnorm');
  const rows = 5;
  const cols = 9;
  const x = normal(rng, rows * cols, 1.5);
  const w = normal(rng, cols).map((u) => 1 + 0.3 * u);
  const G = normal(rng, rows * cols);
  const out = new Float64Array(rows * cols);
  const rstd = new Float64Array(rows);
  const loss = (): number => {
    be.rmsnormForward(out, rstd, x, w, rows, cols, 1e-5);
    return dot(G, out);
  };
  loss();
  const dx = new Float64Array(rows * cols);
  const dw = new Float64Array(cols);
  be.rmsnormBackward(dx, dw, G, x, w, rstd, rows, cols);
  assertGradient('dx', x, loss, dx);
  assertGradient('dw', w, loss, dw);
});

test('ropeBackward', () => {
  const rng = rngFor('grad rope');
  const [B, T, Hh, HD, pos0] = [2, 3, 2, 8, 5];
  const { cos, sin } = ropeTables(pos0 + T, HD, 10000, Float64Array);
  const x = normal(rng, B * T * Hh * HD);
  const G = normal(rng, x.length);
  const y = new Float64Array(x.length);
  const loss = (): number => {
    y.set(x);
    be.ropeForward(y, cos, sin, B, T, Hh, HD, pos0);
    return dot(G, y);
  };
  const dx = G.slice();
  be.ropeBackward(dx, cos, sin, B, T, Hh, HD, pos0);
  assertGradient('dx', x, loss, dx);
});

test('swigluBackward: da, db (including |a| up to 30)', () => {
  const rng = rngFor('grad swiglu');
  const n = 40;
  const a = normal(rng, n, 3);
  [30, -30, 12, -12, 0, -1.2784645].forEach((s, i) => { a[i * 5] = s; });
  const b = normal(rng, n);
  const G = normal(rng, n);
  const out = new Float64Array(n);
  const loss = (): number => {
    be.swigluForward(out, a, b, n);
    return dot(G, out);
  };
  const da = new Float64Array(n);
  const db = new Float64Array(n);
  be.swigluBackward(da, db, G, a, b, n);
  assertGradient('da', a, loss, da);
  assertGradient('db', b, loss, db);
});

test('cross-entropy from its vocab-parallel pieces (two blocks), crossEntropyBackward', () => {
  const rng = rngFor('grad ce');
  const rows = 4;
  const blocks = [{ start: 0, cols: 5 }, { start: 5, cols: 6 }];
  const V = 11;
  const logits = normal(rng, rows * V, 2);
  const targets = Int32Array.from([0, 4, 5, 10]);
  const gradScale = 1 / rows;
  /** The block's own [rows, cols] logits. */
  const blockOf = (blk: { start: number; cols: number }): Float64Array => {
    const out = new Float64Array(rows * blk.cols);
    for (let r = 0; r < rows; r++) for (let c = 0; c < blk.cols; c++) out[r * blk.cols + c] = logits[r * V + blk.start + c]!;
    return out;
  };
  const lse = new Float64Array(rows);
  const loss = (): number => {
    const xs = blocks.map(blockOf);
    // global max = max of the blocks' row maxima
    const m = new Float64Array(rows).fill(-Infinity);
    const part = new Float64Array(rows);
    xs.forEach((x, i) => {
      be.rowMax(part, x, rows, blocks[i]!.cols);
      for (let r = 0; r < rows; r++) m[r] = Math.max(m[r]!, part[r]!);
    });
    const sum = new Float64Array(rows);
    const picked = new Float64Array(rows);
    xs.forEach((x, i) => {
      be.rowSumExp(part, x, m, rows, blocks[i]!.cols);
      be.add(sum, sum, part, rows);
      be.pickTarget(part, x, targets, rows, blocks[i]!.cols, blocks[i]!.start);
      be.add(picked, picked, part, rows);
    });
    let L = 0;
    for (let r = 0; r < rows; r++) {
      lse[r] = m[r]! + Math.log(sum[r]!);
      L += lse[r]! - picked[r]!;
    }
    return L * gradScale;
  };
  loss();
  const analytic = new Float64Array(rows * V);
  for (const blk of blocks) {
    const d = new Float64Array(rows * blk.cols);
    be.crossEntropyBackward(d, blockOf(blk), targets, lse, rows, blk.cols, blk.start, gradScale);
    for (let r = 0; r < rows; r++) for (let c = 0; c < blk.cols; c++) analytic[r * V + blk.start + c] = d[r * blk.cols + c]!;
  }
  assertGradient('dlogits', logits, loss, analytic);
});

test('embeddingBackward (vocab block, repeated and out-of-block tokens)', () => {
  const rng = rngFor('grad embedding');
  const [n, C, vocabStart, tableRows] = [9, 4, 3, 5];
  const table = normal(rng, tableRows * C);
  const tokens = Int32Array.from([3, 7, 7, 0, 8, 2, 5, 3, 12]);
  const G = normal(rng, n * C);
  const out = new Float64Array(n * C);
  const loss = (): number => {
    be.embeddingForward(out, table, tokens, n, C, vocabStart, tableRows);
    return dot(G, out);
  };
  const dtable = new Float64Array(tableRows * C);
  be.embeddingBackward(dtable, G, tokens, n, C, vocabStart, tableRows);
  assertGradient('dtable', table, loss, dtable);
});
