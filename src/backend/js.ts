/**
 * The reference backend: plain TypeScript, written to be obviously correct rather than fast. Every
 * other backend is tested against it. It works in float32 (default) or float64 (for finite-difference
 * gradient checks); reductions accumulate in float64 (JS numbers) either way.
 */
import { composedAttentionBackward, composedAttentionForward } from './attention.js';
import { fromBf16Ref, gemmBf16ViaF32, gemmBf16WViaF32, toBf16Ref } from './bf16.js';
import { checked } from './check.js';
import type { Backend, FloatArray } from './types.js';

export type JsPrecision = 'f32' | 'f64';

export function createJsBackend(precision: JsPrecision = 'f32'): Backend {
  return checked(rawJsBackend(precision));
}

export function rawJsBackend(precision: JsPrecision = 'f32'): Backend {
  const Ctor = precision === 'f64' ? Float64Array : Float32Array;
  const be: Backend = {
    name: 'js',
    description: `js (reference TypeScript, ${precision === 'f64' ? 'float64' : 'float32'})`,

    alloc(n, shared) {
      if (!shared) return new Ctor(n);
      const sab = new SharedArrayBuffer(n * Ctor.BYTES_PER_ELEMENT);
      return precision === 'f64' ? new Float64Array(sab) : new Float32Array(sab);
    },

    release() {},

    toBf16(out, x, n) {
      toBf16Ref(out, x, n);
    },

    fromBf16(out, x, n) {
      fromBf16Ref(out, x, n);
    },

    gemmBf16(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc) {
      gemmBf16ViaF32(be.gemm, transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc);
    },

    gemmBf16W(M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc) {
      gemmBf16WViaF32(be.gemm, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc);
    },

    gemm(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc) {
      for (let i = 0; i < M; i++) {
        for (let j = 0; j < N; j++) {
          let acc = 0;
          for (let p = 0; p < K; p++) {
            const a = transA ? A[offA + p * lda + i]! : A[offA + i * lda + p]!;
            const b = transB ? B[offB + j * ldb + p]! : B[offB + p * ldb + j]!;
            acc += a * b;
          }
          const ci = offC + i * ldc + j;
          C[ci] = beta === 0 ? alpha * acc : alpha * acc + beta * C[ci]!;
        }
      }
    },

    attentionForward(out, att, q, k, v, B, Tq, Tk, NH, NKV, HD, kvBatchStride) {
      composedAttentionForward(be, out, att, q, k, v, B, Tq, Tk, NH, NKV, HD, kvBatchStride);
    },

    attentionBackward(dq, dk, dv, scratch, dout, q, k, v, att, B, T, NH, NKV, HD) {
      composedAttentionBackward(be, dq, dk, dv, scratch, dout, q, k, v, att, B, T, NH, NKV, HD);
    },

    softmaxForward(out, inp, rows, cols, scale, causalQ) {
      for (let r = 0; r < rows; r++) {
        const o = r * cols;
        const visible = causalQ > 0 ? (r % causalQ) + (cols - causalQ) + 1 : cols;
        let max = -Infinity;
        for (let c = 0; c < visible; c++) max = Math.max(max, scale * inp[o + c]!);
        let sum = 0;
        for (let c = 0; c < visible; c++) {
          const e = Math.exp(scale * inp[o + c]! - max);
          out[o + c] = e;
          sum += e;
        }
        const inv = 1 / sum;
        for (let c = 0; c < visible; c++) out[o + c]! *= inv;
        for (let c = visible; c < cols; c++) out[o + c] = 0;
      }
    },

    softmaxBackward(dinp, dout, out, rows, cols, scale) {
      for (let r = 0; r < rows; r++) {
        const o = r * cols;
        let dot = 0;
        for (let c = 0; c < cols; c++) dot += dout[o + c]! * out[o + c]!;
        for (let c = 0; c < cols; c++) dinp[o + c] = scale * out[o + c]! * (dout[o + c]! - dot);
      }
    },

    rmsnormForward(out, rstd, x, w, rows, cols, eps) {
      for (let r = 0; r < rows; r++) {
        const o = r * cols;
        let ss = 0;
        for (let c = 0; c < cols; c++) ss += x[o + c]! * x[o + c]!;
        const s = 1 / Math.sqrt(ss / cols + eps);
        rstd[r] = s;
        for (let c = 0; c < cols; c++) out[o + c] = x[o + c]! * s * w[c]!;
      }
    },

    rmsnormBackward(dx, dw, dout, x, w, rstd, rows, cols) {
      // y = x·s·w with s = (mean x² + eps)^(-1/2); dx = s·(w⊙dy) − x·s³·mean(x⊙w⊙dy)
      for (let r = 0; r < rows; r++) {
        const o = r * cols;
        const s = rstd[r]!;
        let dot = 0;
        for (let c = 0; c < cols; c++) {
          dot += dout[o + c]! * w[c]! * x[o + c]!;
          dw[c]! += dout[o + c]! * x[o + c]! * s;
        }
        const k = (dot / cols) * s * s * s;
        for (let c = 0; c < cols; c++) dx[o + c]! += s * w[c]! * dout[o + c]! - k * x[o + c]!;
      }
    },

    ropeForward(x, cos, sin, B, T, H, HD, pos0) {
      rope(x, cos, sin, B, T, H, HD, pos0, 1);
    },

    ropeBackward(dx, cos, sin, B, T, H, HD, pos0) {
      rope(dx, cos, sin, B, T, H, HD, pos0, -1);
    },

    swigluForward(out, a, b, n) {
      for (let i = 0; i < n; i++) {
        const x = a[i]!;
        out[i] = (x / (1 + Math.exp(-x))) * b[i]!;
      }
    },

    swigluBackward(da, db, dout, a, b, n) {
      for (let i = 0; i < n; i++) {
        const x = a[i]!;
        const sig = 1 / (1 + Math.exp(-x));
        const silu = x * sig;
        const g = dout[i]!;
        da[i] = g * b[i]! * (sig + silu * (1 - sig));
        db[i] = g * silu;
      }
    },

    rowMax(out, x, rows, cols) {
      for (let r = 0; r < rows; r++) {
        let m = -Infinity;
        for (let c = 0; c < cols; c++) m = Math.max(m, x[r * cols + c]!);
        out[r] = m;
      }
    },

    rowSumExp(out, x, shift, rows, cols) {
      for (let r = 0; r < rows; r++) {
        let s = 0;
        const m = shift[r]!;
        for (let c = 0; c < cols; c++) s += Math.exp(x[r * cols + c]! - m);
        out[r] = s;
      }
    },

    pickTarget(out, x, targets, rows, cols, vocabStart) {
      for (let r = 0; r < rows; r++) {
        const t = targets[r]! - vocabStart;
        out[r] = t >= 0 && t < cols ? x[r * cols + t]! : 0;
      }
    },

    crossEntropyBackward(dlogits, logits, targets, lse, rows, cols, vocabStart, gradScale) {
      for (let r = 0; r < rows; r++) {
        const o = r * cols;
        const l = lse[r]!;
        const t = targets[r]! - vocabStart;
        for (let c = 0; c < cols; c++) {
          dlogits[o + c] = gradScale * (Math.exp(logits[o + c]! - l) - (c === t ? 1 : 0));
        }
      }
    },

    embeddingForward(out, table, tokens, n, C, vocabStart, tableRows) {
      for (let i = 0; i < n; i++) {
        const t = tokens[i]! - vocabStart;
        if (t >= 0 && t < tableRows) out.set(table.subarray(t * C, t * C + C), i * C);
        else out.fill(0, i * C, i * C + C);
      }
    },

    embeddingBackward(dtable, dout, tokens, n, C, vocabStart, tableRows) {
      for (let i = 0; i < n; i++) {
        const t = tokens[i]! - vocabStart;
        if (t < 0 || t >= tableRows) continue;
        for (let c = 0; c < C; c++) dtable[t * C + c]! += dout[i * C + c]!;
      }
    },

    add(out, a, b, n) {
      for (let i = 0; i < n; i++) out[i] = a[i]! + b[i]!;
    },

    axpy(y, alpha, x, n) {
      for (let i = 0; i < n; i++) y[i]! += alpha * x[i]!;
    },

    scale(x, alpha, n) {
      for (let i = 0; i < n; i++) x[i]! *= alpha;
    },

    reduceSum(out, srcs, n) {
      // Left to right in the element type: (s0 + s1) + s2 …, rounded after every addition, so that
      // a fast backend summing in the same order gets the same bits.
      const first = srcs[0]!;
      if (out !== first) out.set(first.subarray(0, n));
      for (let k = 1; k < srcs.length; k++) {
        const s = srcs[k]!;
        for (let i = 0; i < n; i++) out[i]! += s[i]!;
      }
    },

    sumSquares(x, n) {
      let s = 0;
      for (let i = 0; i < n; i++) s += x[i]! * x[i]!;
      return s;
    },

    adamw(param, grad, m, v, n, lr, beta1, beta2, eps, weightDecay, step, gradScale) {
      const bc1 = 1 - Math.pow(beta1, step);
      const bc2sqrt = Math.sqrt(1 - Math.pow(beta2, step));
      const stepSize = lr / bc1;
      const decay = 1 - lr * weightDecay;
      for (let i = 0; i < n; i++) {
        const g = grad[i]! * gradScale;
        param[i]! *= decay;
        const mi = beta1 * m[i]! + (1 - beta1) * g;
        const vi = beta2 * v[i]! + (1 - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i]! -= (stepSize * mi) / (Math.sqrt(vi) / bc2sqrt + eps);
      }
    },
  };
  return be;
}

function rope(x: FloatArray, cos: FloatArray, sin: FloatArray, B: number, T: number, H: number, HD: number, pos0: number, dir: 1 | -1): void {
  const half = HD / 2;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const p = (pos0 + t) * half;
      for (let h = 0; h < H; h++) {
        const o = ((b * T + t) * H + h) * HD;
        for (let i = 0; i < half; i++) {
          const c = cos[p + i]!;
          const s = dir * sin[p + i]!;
          const a = x[o + i]!;
          const bb = x[o + i + half]!;
          x[o + i] = a * c - bb * s;
          x[o + i + half] = bb * c + a * s;
        }
      }
    }
  }
}

/** cos/sin tables [maxPos, HD/2] for `ropeForward`: angle(p, i) = p · theta^(−2i/HD). */
export function ropeTables(maxPos: number, HD: number, theta: number, Ctor: Float32ArrayConstructor | Float64ArrayConstructor = Float32Array): { cos: FloatArray; sin: FloatArray } {
  const half = HD / 2;
  const cos = new Ctor(maxPos * half);
  const sin = new Ctor(maxPos * half);
  for (let p = 0; p < maxPos; p++) {
    for (let i = 0; i < half; i++) {
      const invFreq = 1 / Math.pow(theta, (2 * i) / HD);
      const ang = p * invFreq;
      cos[p * half + i] = Math.cos(ang);
      sin[p * half + i] = Math.sin(ang);
    }
  }
  return { cos, sin };
}
