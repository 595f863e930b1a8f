/**
 * Causal grouped-query attention composed from a backend's strided GEMM and softmax kernels, one
 * (batch, head) at a time. Backends without a fused attention use these directly; a fused kernel is
 * tested against them.
 */
import type { Backend, FloatArray } from './types.js';

type Kernels = Pick<Backend, 'gemm' | 'softmaxForward' | 'softmaxBackward'>;

export function composedAttentionForward(
  be: Kernels,
  out: FloatArray, att: FloatArray, q: FloatArray, k: FloatArray, v: FloatArray,
  B: number, Tq: number, Tk: number, NH: number, NKV: number, HD: number, kvBatchStride: number,
): void {
  const group = NH / NKV;
  const qRow = NH * HD; // stride between consecutive tokens in q / out
  const kvRow = NKV * HD; // stride between consecutive keys
  const scale = 1 / Math.sqrt(HD);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < NH; h++) {
      const g = Math.floor(h / group);
      const qOff = b * Tq * qRow + h * HD;
      const kvOff = b * kvBatchStride + g * HD;
      const aOff = (b * NH + h) * Tq * Tk;
      const a = att.subarray(aOff, aOff + Tq * Tk);
      // scores [Tq, Tk] = q_bh [Tq, HD] · k_bg^T
      be.gemm(false, true, Tq, Tk, HD, 1, q, qOff, qRow, k, kvOff, kvRow, 0, a, 0, Tk);
      be.softmaxForward(a, a, Tq, Tk, scale, Tq);
      // out_bh [Tq, HD] = P [Tq, Tk] · v_bg [Tk, HD]
      be.gemm(false, false, Tq, HD, Tk, 1, a, 0, Tk, v, kvOff, kvRow, 0, out, qOff, qRow);
    }
  }
}

export function composedAttentionBackward(
  be: Kernels,
  dq: FloatArray, dk: FloatArray, dv: FloatArray, scratch: FloatArray, dout: FloatArray,
  q: FloatArray, k: FloatArray, v: FloatArray, att: FloatArray,
  B: number, T: number, NH: number, NKV: number, HD: number,
): void {
  const group = NH / NKV;
  const qRow = NH * HD;
  const kvRow = NKV * HD;
  const scale = 1 / Math.sqrt(HD);
  dk.fill(0, 0, B * T * kvRow);
  dv.fill(0, 0, B * T * kvRow);
  const dS = scratch.subarray(0, T * T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < NH; h++) {
      const g = Math.floor(h / group);
      const qOff = b * T * qRow + h * HD;
      const kvOff = b * T * kvRow + g * HD;
      const aOff = (b * NH + h) * T * T;
      const P = att.subarray(aOff, aOff + T * T);
      // dV_bg += P^T [T, T] · dO_bh [T, HD]
      be.gemm(true, false, T, HD, T, 1, P, 0, T, dout, qOff, qRow, 1, dv, kvOff, kvRow);
      // dP [T, T] = dO_bh · V_bg^T
      be.gemm(false, true, T, T, HD, 1, dout, qOff, qRow, v, kvOff, kvRow, 0, dS, 0, T);
      // dS = scale · P ⊙ (dP − rowsum(dP ⊙ P))
      be.softmaxBackward(dS, dS, P, T, T, scale);
      // dQ_bh = dS · K_bg
      be.gemm(false, false, T, HD, T, 1, dS, 0, T, k, kvOff, kvRow, 0, dq, qOff, qRow);
      // dK_bg += dS^T · Q_bh
      be.gemm(true, false, T, HD, T, 1, dS, 0, T, q, qOff, qRow, 1, dk, kvOff, kvRow);
    }
  }
}
