/**
 * Shape and bounds validation shared by every backend. `checked(raw)` wraps an unchecked
 * implementation so that each kernel validates its arguments before any memory is touched, and
 * throws a KernelError naming the kernel and the mismatched dimension or buffer.
 */
import { type Backend, type FloatArray, KernelError } from './types.js';

function dim(kernel: string, name: string, v: number): void {
  if (!Number.isInteger(v) || v < 0) throw new KernelError(kernel, `dimension ${name} must be a non-negative integer, got ${v}`);
}

function pos(kernel: string, name: string, v: number): void {
  if (!Number.isInteger(v) || v <= 0) throw new KernelError(kernel, `dimension ${name} must be a positive integer, got ${v}`);
}

function need(kernel: string, name: string, arr: ArrayLike<number>, n: number, what: string): void {
  if (arr.length < n) throw new KernelError(kernel, `buffer ${name} too short: needs ${n} elements (${what}), has ${arr.length}`);
}

function sameType(kernel: string, arrs: Record<string, FloatArray>): void {
  let first: string | undefined;
  let ctor: unknown;
  for (const [name, a] of Object.entries(arrs)) {
    if (!(a instanceof Float32Array) && !(a instanceof Float64Array)) {
      throw new KernelError(kernel, `buffer ${name} must be a Float32Array or Float64Array`);
    }
    if (first === undefined) {
      first = name;
      ctor = a.constructor;
    } else if (a.constructor !== ctor) {
      throw new KernelError(kernel, `buffer ${name} is a ${a.constructor.name} but ${first} is a ${(ctor as { name: string }).name}`);
    }
  }
}

/** Elements needed for a strided [rows, cols] matrix at `off` with leading dimension ld. */
function span(rows: number, cols: number, ld: number, off: number): number {
  return rows === 0 || cols === 0 ? 0 : off + (rows - 1) * ld + cols;
}

export function checkGemm(
  transA: boolean, transB: boolean, M: number, N: number, K: number,
  A: FloatArray, offA: number, lda: number, B: FloatArray, offB: number, ldb: number,
  C: FloatArray, offC: number, ldc: number,
): void {
  const k = 'gemm';
  dim(k, 'M', M); dim(k, 'N', N); dim(k, 'K', K);
  dim(k, 'offA', offA); dim(k, 'offB', offB); dim(k, 'offC', offC);
  sameType(k, { A, B, C });
  const [ar, ac] = transA ? [K, M] : [M, K];
  const [br, bc] = transB ? [N, K] : [K, N];
  if (!Number.isInteger(lda) || lda < Math.max(1, ac)) throw new KernelError(k, `lda = ${lda} is smaller than A's row length ${ac} (transA = ${transA}, M = ${M}, K = ${K})`);
  if (!Number.isInteger(ldb) || ldb < Math.max(1, bc)) throw new KernelError(k, `ldb = ${ldb} is smaller than B's row length ${bc} (transB = ${transB}, K = ${K}, N = ${N})`);
  if (!Number.isInteger(ldc) || ldc < Math.max(1, N)) throw new KernelError(k, `ldc = ${ldc} is smaller than N = ${N}`);
  if (M > 0 && N > 0) {
    need(k, 'A', A, span(ar, ac, lda, offA), `${ar}x${ac} with lda ${lda} at offset ${offA}; M = ${M}, K = ${K}`);
    need(k, 'B', B, span(br, bc, ldb, offB), `${br}x${bc} with ldb ${ldb} at offset ${offB}; K = ${K}, N = ${N}`);
    need(k, 'C', C, span(M, N, ldc, offC), `${M}x${N} with ldc ${ldc} at offset ${offC}; M = ${M}, N = ${N}`);
  }
}

export function checkAttentionForward(
  out: FloatArray, att: FloatArray, q: FloatArray, k: FloatArray, v: FloatArray,
  B: number, Tq: number, Tk: number, NH: number, NKV: number, HD: number, kvBatchStride: number,
): void {
  const n = 'attentionForward';
  pos(n, 'B', B); pos(n, 'Tq', Tq); pos(n, 'Tk', Tk); pos(n, 'NH', NH); pos(n, 'NKV', NKV); pos(n, 'HD', HD);
  dim(n, 'kvBatchStride', kvBatchStride);
  sameType(n, { out, att, q, k, v });
  if (Tq > Tk) throw new KernelError(n, `Tq = ${Tq} exceeds Tk = ${Tk}`);
  if (NH % NKV !== 0) throw new KernelError(n, `NH = ${NH} is not a multiple of NKV = ${NKV}`);
  if (B > 1 && kvBatchStride < Tk * NKV * HD) throw new KernelError(n, `kvBatchStride = ${kvBatchStride} is smaller than Tk·NKV·HD = ${Tk * NKV * HD}`);
  const qn = B * Tq * NH * HD;
  need(n, 'q', q, qn, `B·Tq·NH·HD`);
  need(n, 'out', out, qn, `B·Tq·NH·HD`);
  need(n, 'att', att, B * NH * Tq * Tk, `B·NH·Tq·Tk`);
  const kvn = (B - 1) * kvBatchStride + Tk * NKV * HD;
  need(n, 'k', k, kvn, `(B−1)·kvBatchStride + Tk·NKV·HD`);
  need(n, 'v', v, kvn, `(B−1)·kvBatchStride + Tk·NKV·HD`);
}

export function checkAttentionBackward(
  dq: FloatArray, dk: FloatArray, dv: FloatArray, scratch: FloatArray, dout: FloatArray,
  q: FloatArray, k: FloatArray, v: FloatArray, att: FloatArray,
  B: number, T: number, NH: number, NKV: number, HD: number,
): void {
  const n = 'attentionBackward';
  pos(n, 'B', B); pos(n, 'T', T); pos(n, 'NH', NH); pos(n, 'NKV', NKV); pos(n, 'HD', HD);
  sameType(n, { dq, dk, dv, scratch, dout, q, k, v, att });
  if (NH % NKV !== 0) throw new KernelError(n, `NH = ${NH} is not a multiple of NKV = ${NKV}`);
  const qn = B * T * NH * HD;
  const kvn = B * T * NKV * HD;
  need(n, 'q', q, qn, 'B·T·NH·HD'); need(n, 'dq', dq, qn, 'B·T·NH·HD'); need(n, 'dout', dout, qn, 'B·T·NH·HD');
  need(n, 'k', k, kvn, 'B·T·NKV·HD'); need(n, 'v', v, kvn, 'B·T·NKV·HD');
  need(n, 'dk', dk, kvn, 'B·T·NKV·HD'); need(n, 'dv', dv, kvn, 'B·T·NKV·HD');
  need(n, 'att', att, B * NH * T * T, 'B·NH·T·T');
  need(n, 'scratch', scratch, T * T, 'T·T');
}

function rowsCols(n: string, rows: number, cols: number): void {
  dim(n, 'rows', rows); dim(n, 'cols', cols);
}

/** `checkGemm` for `gemmBf16`: A and B bf16 bit patterns (Uint16Array), C float32. */
export function checkGemmBf16(
  transA: boolean, transB: boolean, M: number, N: number, K: number,
  A: Uint16Array, offA: number, lda: number, B: Uint16Array, offB: number, ldb: number,
  C: Float32Array, offC: number, ldc: number,
): void {
  const k = 'gemmBf16';
  if (!(A instanceof Uint16Array)) throw new KernelError(k, 'buffer A must be a Uint16Array of bf16 bit patterns');
  if (!(B instanceof Uint16Array)) throw new KernelError(k, 'buffer B must be a Uint16Array of bf16 bit patterns');
  if (!(C instanceof Float32Array)) throw new KernelError(k, 'buffer C must be a Float32Array');
  dim(k, 'M', M); dim(k, 'N', N); dim(k, 'K', K);
  dim(k, 'offA', offA); dim(k, 'offB', offB); dim(k, 'offC', offC);
  const [ar, ac] = transA ? [K, M] : [M, K];
  const [br, bc] = transB ? [N, K] : [K, N];
  if (!Number.isInteger(lda) || lda < Math.max(1, ac)) throw new KernelError(k, `lda = ${lda} is smaller than A's row length ${ac} (transA = ${transA}, M = ${M}, K = ${K})`);
  if (!Number.isInteger(ldb) || ldb < Math.max(1, bc)) throw new KernelError(k, `ldb = ${ldb} is smaller than B's row length ${bc} (transB = ${transB}, K = ${K}, N = ${N})`);
  if (!Number.isInteger(ldc) || ldc < Math.max(1, N)) throw new KernelError(k, `ldc = ${ldc} is smaller than N = ${N}`);
  if (M > 0 && N > 0) {
    need(k, 'A', A, span(ar, ac, lda, offA), `${ar}x${ac} with lda ${lda} at offset ${offA}; M = ${M}, K = ${K}`);
    need(k, 'B', B, span(br, bc, ldb, offB), `${br}x${bc} with ldb ${ldb} at offset ${offB}; K = ${K}, N = ${N}`);
    need(k, 'C', C, span(M, N, ldc, offC), `${M}x${N} with ldc ${ldc} at offset ${offC}; M = ${M}, N = ${N}`);
  }
}

/** The checks of `gemmBf16W`: A float32 [M, K], B bf16 bit patterns [N, K], C float32. */
export function checkGemmBf16W(
  M: number, N: number, K: number, A: Float32Array, offA: number, lda: number,
  B: Uint16Array, offB: number, ldb: number, C: Float32Array, offC: number, ldc: number,
): void {
  const k = 'gemmBf16W';
  if (!(A instanceof Float32Array)) throw new KernelError(k, 'buffer A must be a Float32Array');
  if (!(B instanceof Uint16Array)) throw new KernelError(k, 'buffer B must be a Uint16Array of bf16 bit patterns');
  if (!(C instanceof Float32Array)) throw new KernelError(k, 'buffer C must be a Float32Array');
  dim(k, 'M', M); dim(k, 'N', N); dim(k, 'K', K);
  dim(k, 'offA', offA); dim(k, 'offB', offB); dim(k, 'offC', offC);
  if (!Number.isInteger(lda) || lda < Math.max(1, K)) throw new KernelError(k, `lda = ${lda} is smaller than A's row length K = ${K}`);
  if (!Number.isInteger(ldb) || ldb < Math.max(1, K)) throw new KernelError(k, `ldb = ${ldb} is smaller than B's row length K = ${K}`);
  if (!Number.isInteger(ldc) || ldc < Math.max(1, N)) throw new KernelError(k, `ldc = ${ldc} is smaller than N = ${N}`);
  if (M > 0 && N > 0) {
    need(k, 'A', A, span(M, K, lda, offA), `${M}x${K} with lda ${lda} at offset ${offA}`);
    need(k, 'B', B, span(N, K, ldb, offB), `${N}x${K} with ldb ${ldb} at offset ${offB}`);
    need(k, 'C', C, span(M, N, ldc, offC), `${M}x${N} with ldc ${ldc} at offset ${offC}`);
  }
}

/** Wrap an unchecked backend so that every kernel validates its arguments first. */
export function checked(raw: Backend): Backend {
  return {
    name: raw.name,
    description: raw.description,
    alloc(n, shared) {
      dim('alloc', 'n', n);
      return raw.alloc(n, shared);
    },
    release(arr) {
      raw.release(arr);
    },
    gemm(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc) {
      checkGemm(transA, transB, M, N, K, A, offA, lda, B, offB, ldb, C, offC, ldc);
      raw.gemm(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc);
    },
    toBf16(out, x, n) {
      const k = 'toBf16';
      dim(k, 'n', n);
      if (!(out instanceof Uint16Array)) throw new KernelError(k, 'buffer out must be a Uint16Array of bf16 bit patterns');
      if (!(x instanceof Float32Array)) throw new KernelError(k, 'buffer x must be a Float32Array');
      need(k, 'out', out, n, `n = ${n}`); need(k, 'x', x, n, `n = ${n}`);
      raw.toBf16(out, x, n);
    },
    fromBf16(out, x, n) {
      const k = 'fromBf16';
      dim(k, 'n', n);
      if (!(out instanceof Float32Array)) throw new KernelError(k, 'buffer out must be a Float32Array');
      if (!(x instanceof Uint16Array)) throw new KernelError(k, 'buffer x must be a Uint16Array of bf16 bit patterns');
      need(k, 'out', out, n, `n = ${n}`); need(k, 'x', x, n, `n = ${n}`);
      raw.fromBf16(out, x, n);
    },
    gemmBf16(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc) {
      checkGemmBf16(transA, transB, M, N, K, A, offA, lda, B, offB, ldb, C, offC, ldc);
      raw.gemmBf16(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc);
    },
    gemmBf16W(M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc) {
      checkGemmBf16W(M, N, K, A, offA, lda, B, offB, ldb, C, offC, ldc);
      raw.gemmBf16W(M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc);
    },
    attentionForward(out, att, q, k, v, B, Tq, Tk, NH, NKV, HD, kvBatchStride) {
      checkAttentionForward(out, att, q, k, v, B, Tq, Tk, NH, NKV, HD, kvBatchStride);
      raw.attentionForward(out, att, q, k, v, B, Tq, Tk, NH, NKV, HD, kvBatchStride);
    },
    attentionBackward(dq, dk, dv, scratch, dout, q, k, v, att, B, T, NH, NKV, HD) {
      checkAttentionBackward(dq, dk, dv, scratch, dout, q, k, v, att, B, T, NH, NKV, HD);
      raw.attentionBackward(dq, dk, dv, scratch, dout, q, k, v, att, B, T, NH, NKV, HD);
    },
    softmaxForward(out, inp, rows, cols, scale, causalQ) {
      const n = 'softmaxForward';
      rowsCols(n, rows, cols); dim(n, 'causalQ', causalQ);
      sameType(n, { out, inp });
      if (causalQ > 0 && (rows % causalQ !== 0 || causalQ > cols)) {
        throw new KernelError(n, `causalQ = ${causalQ} must divide rows = ${rows} and not exceed cols = ${cols}`);
      }
      need(n, 'inp', inp, rows * cols, 'rows·cols'); need(n, 'out', out, rows * cols, 'rows·cols');
      raw.softmaxForward(out, inp, rows, cols, scale, causalQ);
    },
    softmaxBackward(dinp, dout, out, rows, cols, scale) {
      const n = 'softmaxBackward';
      rowsCols(n, rows, cols);
      sameType(n, { dinp, dout, out });
      for (const [nm, a] of [['dinp', dinp], ['dout', dout], ['out', out]] as const) need(n, nm, a, rows * cols, 'rows·cols');
      raw.softmaxBackward(dinp, dout, out, rows, cols, scale);
    },
    rmsnormForward(out, rstd, x, w, rows, cols, eps) {
      const n = 'rmsnormForward';
      rowsCols(n, rows, cols);
      sameType(n, { out, rstd, x, w });
      need(n, 'x', x, rows * cols, 'rows·cols'); need(n, 'out', out, rows * cols, 'rows·cols');
      need(n, 'w', w, cols, 'cols'); need(n, 'rstd', rstd, rows, 'rows');
      raw.rmsnormForward(out, rstd, x, w, rows, cols, eps);
    },
    rmsnormBackward(dx, dw, dout, x, w, rstd, rows, cols) {
      const n = 'rmsnormBackward';
      rowsCols(n, rows, cols);
      sameType(n, { dx, dw, dout, x, w, rstd });
      for (const [nm, a] of [['dx', dx], ['dout', dout], ['x', x]] as const) need(n, nm, a, rows * cols, 'rows·cols');
      need(n, 'w', w, cols, 'cols'); need(n, 'dw', dw, cols, 'cols'); need(n, 'rstd', rstd, rows, 'rows');
      raw.rmsnormBackward(dx, dw, dout, x, w, rstd, rows, cols);
    },
    ropeForward(x, cos, sin, B, T, H, HD, pos0) {
      checkRope('ropeForward', x, cos, sin, B, T, H, HD, pos0);
      raw.ropeForward(x, cos, sin, B, T, H, HD, pos0);
    },
    ropeBackward(dx, cos, sin, B, T, H, HD, pos0) {
      checkRope('ropeBackward', dx, cos, sin, B, T, H, HD, pos0);
      raw.ropeBackward(dx, cos, sin, B, T, H, HD, pos0);
    },
    swigluForward(out, a, b, n) {
      const k = 'swigluForward';
      dim(k, 'n', n); sameType(k, { out, a, b });
      need(k, 'a', a, n, 'n'); need(k, 'b', b, n, 'n'); need(k, 'out', out, n, 'n');
      raw.swigluForward(out, a, b, n);
    },
    swigluBackward(da, db, dout, a, b, n) {
      const k = 'swigluBackward';
      dim(k, 'n', n); sameType(k, { da, db, dout, a, b });
      for (const [nm, x] of [['da', da], ['db', db], ['dout', dout], ['a', a], ['b', b]] as const) need(k, nm, x, n, 'n');
      raw.swigluBackward(da, db, dout, a, b, n);
    },
    rowMax(out, x, rows, cols) {
      const k = 'rowMax';
      rowsCols(k, rows, cols); sameType(k, { out, x });
      if (cols === 0 && rows > 0) throw new KernelError(k, 'cols must be positive');
      need(k, 'x', x, rows * cols, 'rows·cols'); need(k, 'out', out, rows, 'rows');
      raw.rowMax(out, x, rows, cols);
    },
    rowSumExp(out, x, shift, rows, cols) {
      const k = 'rowSumExp';
      rowsCols(k, rows, cols); sameType(k, { out, x, shift });
      need(k, 'x', x, rows * cols, 'rows·cols'); need(k, 'out', out, rows, 'rows'); need(k, 'shift', shift, rows, 'rows');
      raw.rowSumExp(out, x, shift, rows, cols);
    },
    pickTarget(out, x, targets, rows, cols, vocabStart) {
      const k = 'pickTarget';
      rowsCols(k, rows, cols); dim(k, 'vocabStart', vocabStart); sameType(k, { out, x });
      need(k, 'x', x, rows * cols, 'rows·cols'); need(k, 'out', out, rows, 'rows'); need(k, 'targets', targets, rows, 'rows');
      raw.pickTarget(out, x, targets, rows, cols, vocabStart);
    },
    crossEntropyBackward(dlogits, logits, targets, lse, rows, cols, vocabStart, gradScale) {
      const k = 'crossEntropyBackward';
      rowsCols(k, rows, cols); dim(k, 'vocabStart', vocabStart); sameType(k, { dlogits, logits, lse });
      need(k, 'logits', logits, rows * cols, 'rows·cols'); need(k, 'dlogits', dlogits, rows * cols, 'rows·cols');
      need(k, 'targets', targets, rows, 'rows'); need(k, 'lse', lse, rows, 'rows');
      raw.crossEntropyBackward(dlogits, logits, targets, lse, rows, cols, vocabStart, gradScale);
    },
    embeddingForward(out, table, tokens, n, C, vocabStart, tableRows) {
      const k = 'embeddingForward';
      dim(k, 'n', n); dim(k, 'C', C); dim(k, 'vocabStart', vocabStart); dim(k, 'tableRows', tableRows); sameType(k, { out, table });
      need(k, 'tokens', tokens, n, 'n'); need(k, 'out', out, n * C, 'n·C'); need(k, 'table', table, tableRows * C, 'tableRows·C');
      raw.embeddingForward(out, table, tokens, n, C, vocabStart, tableRows);
    },
    embeddingBackward(dtable, dout, tokens, n, C, vocabStart, tableRows) {
      const k = 'embeddingBackward';
      dim(k, 'n', n); dim(k, 'C', C); dim(k, 'vocabStart', vocabStart); dim(k, 'tableRows', tableRows); sameType(k, { dtable, dout });
      need(k, 'tokens', tokens, n, 'n'); need(k, 'dout', dout, n * C, 'n·C'); need(k, 'dtable', dtable, tableRows * C, 'tableRows·C');
      raw.embeddingBackward(dtable, dout, tokens, n, C, vocabStart, tableRows);
    },
    add(out, a, b, n) {
      const k = 'add';
      dim(k, 'n', n); sameType(k, { out, a, b });
      need(k, 'a', a, n, 'n'); need(k, 'b', b, n, 'n'); need(k, 'out', out, n, 'n');
      raw.add(out, a, b, n);
    },
    axpy(y, alpha, x, n) {
      const k = 'axpy';
      dim(k, 'n', n); sameType(k, { y, x });
      need(k, 'x', x, n, 'n'); need(k, 'y', y, n, 'n');
      raw.axpy(y, alpha, x, n);
    },
    scale(x, alpha, n) {
      const k = 'scale';
      dim(k, 'n', n); sameType(k, { x });
      need(k, 'x', x, n, 'n');
      raw.scale(x, alpha, n);
    },
    reduceSum(out, srcs, n) {
      const k = 'reduceSum';
      dim(k, 'n', n);
      if (srcs.length === 0) throw new KernelError(k, 'srcs must hold at least one buffer');
      const all: Record<string, FloatArray> = { out };
      srcs.forEach((s, i) => { all[`srcs[${i}]`] = s; });
      sameType(k, all);
      need(k, 'out', out, n, 'n');
      srcs.forEach((s, i) => need(k, `srcs[${i}]`, s, n, 'n'));
      raw.reduceSum(out, srcs, n);
    },
    sumSquares(x, n) {
      const k = 'sumSquares';
      dim(k, 'n', n); sameType(k, { x });
      need(k, 'x', x, n, 'n');
      return raw.sumSquares(x, n);
    },
    adamw(param, grad, m, v, n, lr, beta1, beta2, eps, weightDecay, step, gradScale) {
      const k = 'adamw';
      dim(k, 'n', n); sameType(k, { param, grad, m, v });
      if (!Number.isInteger(step) || step < 1) throw new KernelError(k, `step must be an integer ≥ 1, got ${step}`);
      for (const [nm, a] of [['param', param], ['grad', grad], ['m', m], ['v', v]] as const) need(k, nm, a, n, 'n');
      raw.adamw(param, grad, m, v, n, lr, beta1, beta2, eps, weightDecay, step, gradScale);
    },
  };
}

function checkRope(n: string, x: FloatArray, cos: FloatArray, sin: FloatArray, B: number, T: number, H: number, HD: number, pos0: number): void {
  dim(n, 'B', B); dim(n, 'T', T); dim(n, 'H', H); pos(n, 'HD', HD); dim(n, 'pos0', pos0);
  sameType(n, { x, cos, sin });
  if (HD % 2 !== 0) throw new KernelError(n, `HD = ${HD} must be even`);
  need(n, 'x', x, B * T * H * HD, 'B·T·H·HD');
  const half = HD / 2;
  need(n, 'cos', cos, (pos0 + T) * half, `(pos0 + T)·HD/2 for positions up to ${pos0 + T - 1}`);
  need(n, 'sin', sin, (pos0 + T) * half, `(pos0 + T)·HD/2 for positions up to ${pos0 + T - 1}`);
}
