/**
 * The compute backend contract: every dense kernel a Llama-style decoder needs, forward and backward.
 *
 * Conventions (they hold for every kernel below):
 * - Matrices are row-major. A "[R, C]" buffer holds element (r, c) at index r*C + c unless a leading
 *   dimension is given.
 * - `FloatArray` is Float32Array or Float64Array. The `js` backend accepts both (float64 is used for
 *   finite-difference gradient checks); `native` and `wasm` accept Float32Array only and throw otherwise.
 *   All arrays passed to one call must have the same element type.
 * - Every kernel validates its shapes and buffer lengths first and throws a `KernelError` naming the
 *   kernel and the offending dimension; it never reads or writes out of bounds.
 * - "writes" means the output is overwritten; "accumulates" means `+=` into the output (llm.c style:
 *   parameter gradients are accumulated after an explicit zeroing).
 * - Output buffers must not alias input buffers unless a kernel says "in place".
 * - Views into larger buffers (including SharedArrayBuffer-backed ones) are passed either as
 *   `subarray` views or with the explicit element offsets the GEMM takes; no kernel copies its operands
 *   except where a backend documents it (the wasm backend copies arrays that do not live in its memory).
 */

export type FloatArray = Float32Array | Float64Array;

export type BackendName = 'js' | 'wasm' | 'native';

export class KernelError extends Error {
  constructor(
    readonly kernel: string,
    message: string,
  ) {
    super(`${kernel}: ${message}`);
    this.name = 'KernelError';
  }
}

export class BackendUnavailableError extends Error {
  constructor(readonly backend: BackendName, readonly reason: string) {
    super(`backend ${backend} is unavailable: ${reason}`);
    this.name = 'BackendUnavailableError';
  }
}

export interface BackendOptions {
  /** Threads the backend's library may use (native BLAS). Default 1: one rank per core. */
  threads?: number;
}

export interface Backend {
  /** Which implementation this is. */
  readonly name: BackendName;
  /** One line for logs, e.g. "native (oneDNN 2.6.0, 1 thread)". */
  readonly description: string;
  /**
   * True only where `gemmBf16` runs on bf16 GEMM hardware (AVX512_BF16 or AMX through oneDNN); absent or
   * false where it widens to float32 (then bf16 saves memory and bytes moved, not GEMM time).
   */
  readonly bf16Hardware?: boolean;

  /**
   * A zero-filled array of `n` elements of the backend's working precision, placed where the backend
   * reaches it without copies (the wasm backend allocates in its linear memory). With `shared`, the
   * storage is a SharedArrayBuffer, so worker threads can see it.
   */
  alloc(n: number, shared?: boolean): FloatArray;

  /**
   * Hand back an array obtained from `alloc` (the array itself, not a view of it); it must not be used
   * afterwards. The js and native backends leave it to the garbage collector; the wasm backend returns
   * the block to its linear-memory allocator, which nothing else would reclaim.
   */
  release(arr: FloatArray): void;

  // ---------------------------------------------------------------------------------------------
  // Dense linear algebra
  // ---------------------------------------------------------------------------------------------

  /**
   * C = alpha · op(A) · op(B) + beta · C, with op(A) of shape [M, K], op(B) of shape [K, N], C [M, N].
   * - transA false: A is stored [M, K] with leading dimension lda ≥ K; true: A is stored [K, M], lda ≥ M.
   * - transB false: B is stored [K, N], ldb ≥ N; true: B is stored [N, K], ldb ≥ K.
   * - C is stored [M, N] with ldc ≥ N. Element (i, j) of C is C[offC + i*ldc + j]; likewise A and B.
   * - beta = 0 overwrites C (NaNs in C are not propagated); beta = 1 accumulates.
   * - M, N or K may be 0 (then C = beta·C, or nothing for M or N = 0).
   * The native backend picks its implementation per shape class by measurement (gemm-choice.ts).
   */
  gemm(
    transA: boolean,
    transB: boolean,
    M: number,
    N: number,
    K: number,
    alpha: number,
    A: FloatArray,
    offA: number,
    lda: number,
    B: FloatArray,
    offB: number,
    ldb: number,
    beta: number,
    C: FloatArray,
    offC: number,
    ldc: number,
  ): void;

  /**
   * Causal grouped-query attention forward over already-rotated q and k.
   * - q [B, Tq, NH, HD] (i.e. [B·Tq, NH·HD]); k, v [B, ·, NKV, HD] where batch b's keys start at
   *   b·kvBatchStride elements and key j of batch b sits at b·kvBatchStride + j·NKV·HD (a KV cache of
   *   capacity Tmax has kvBatchStride = Tmax·NKV·HD; plain training tensors have Tk·NKV·HD).
   * - Query i of the Tq queries has absolute position (Tk − Tq) + i and sees keys 0 ..= (Tk − Tq) + i.
   * - Head h uses kv head floor(h / (NH / NKV)); NH must be a multiple of NKV.
   * - att [B, NH, Tq, Tk] receives the softmax probabilities (0 where masked), kept for the backward.
   * - out [B, Tq, NH, HD] is written: out = softmax(q·kᵀ·scale, causal) · v, scale = 1/sqrt(HD).
   */
  attentionForward(
    out: FloatArray,
    att: FloatArray,
    q: FloatArray,
    k: FloatArray,
    v: FloatArray,
    B: number,
    Tq: number,
    Tk: number,
    NH: number,
    NKV: number,
    HD: number,
    kvBatchStride: number,
  ): void;

  /**
   * Backward of `attentionForward` for training (Tq = Tk = T, kvBatchStride = T·NKV·HD).
   * Writes dq [B, T, NH, HD], dk and dv [B, T, NKV, HD] (overwritten, summed over the heads that share
   * a kv head). `scratch` holds at least T·T elements.
   */
  attentionBackward(
    dq: FloatArray,
    dk: FloatArray,
    dv: FloatArray,
    scratch: FloatArray,
    dout: FloatArray,
    q: FloatArray,
    k: FloatArray,
    v: FloatArray,
    att: FloatArray,
    B: number,
    T: number,
    NH: number,
    NKV: number,
    HD: number,
  ): void;

  // ---------------------------------------------------------------------------------------------
  // bfloat16 (see bf16.ts): a bf16 array is a Uint16Array of the upper halves of float32 bit patterns.
  // ---------------------------------------------------------------------------------------------

  /** out[i] = bf16(x[i]) for i < n, round to nearest even (NaN stays NaN). x is float32. Writes out. */
  toBf16(out: Uint16Array, x: Float32Array, n: number): void;

  /** out[i] = float32(x[i]) for i < n, exact. Writes out. */
  fromBf16(out: Float32Array, x: Uint16Array, n: number): void;

  /**
   * C = alpha · op(A) · op(B) + beta · C with bf16 operands and a float32 C, with the layout rules of
   * `gemm`. Products are exact in float32; the sums are float32 (or wider) in an order each backend fixes,
   * so one backend gives the same bits for the same call. A backend without bf16 hardware widens the
   * operands and runs its float32 GEMM (`gemmBf16ViaF32`).
   */
  gemmBf16(
    transA: boolean,
    transB: boolean,
    M: number,
    N: number,
    K: number,
    alpha: number,
    A: Uint16Array,
    offA: number,
    lda: number,
    B: Uint16Array,
    offB: number,
    ldb: number,
    beta: number,
    C: Float32Array,
    offC: number,
    ldc: number,
  ): void;

  /**
   * C = alpha · A · Bᵀ + beta · C with A float32 [M, K] (lda), B bf16 bit patterns stored [N, K] (ldb)
   * and C float32: the GEMM of decoding with weights held in bf16 (half the bytes read per token). Every
   * product is the float32 product of A and the exactly widened weight, so the result is that of `gemm`
   * on float32 weights rounded to bf16, up to the summation order the backend fixes for the call.
   */
  gemmBf16W(
    M: number,
    N: number,
    K: number,
    alpha: number,
    A: Float32Array,
    offA: number,
    lda: number,
    B: Uint16Array,
    offB: number,
    ldb: number,
    beta: number,
    C: Float32Array,
    offC: number,
    ldc: number,
  ): void;

  // ---------------------------------------------------------------------------------------------
  // Row-wise kernels
  // ---------------------------------------------------------------------------------------------

  /**
   * Row-wise softmax of `scale · inp` over [rows, cols], written to out.
   * causalQ = 0: every column is visible. causalQ > 0: rows form groups of causalQ query rows; row r
   * (query i = r mod causalQ) sees columns c ≤ i + (cols − causalQ), and out is 0 beyond.
   * May run in place (out = inp).
   */
  softmaxForward(out: FloatArray, inp: FloatArray, rows: number, cols: number, scale: number, causalQ: number): void;

  /** dinp = scale · out ⊙ (dout − Σ_c dout·out), row-wise over [rows, cols]. Writes dinp; may run in place (dinp = dout). */
  softmaxBackward(dinp: FloatArray, dout: FloatArray, out: FloatArray, rows: number, cols: number, scale: number): void;

  /**
   * RMSNorm over the last dimension: rstd[r] = 1/sqrt(mean_c x[r,c]² + eps); out = x · rstd · w.
   * x, out [rows, cols]; w [cols]; rstd [rows]. Writes out and rstd.
   */
  rmsnormForward(out: FloatArray, rstd: FloatArray, x: FloatArray, w: FloatArray, rows: number, cols: number, eps: number): void;

  /** Backward of RMSNorm. Accumulates dx [rows, cols] and dw [cols]. */
  rmsnormBackward(
    dx: FloatArray,
    dw: FloatArray,
    dout: FloatArray,
    x: FloatArray,
    w: FloatArray,
    rstd: FloatArray,
    rows: number,
    cols: number,
  ): void;

  /**
   * Rotary embedding, in place, "rotate half" pairing (i, i + HD/2) as in Hugging Face Llama.
   * x [B, T, H, HD]; token t of every batch has position pos0 + t; cos, sin [maxPos, HD/2] tables
   * with cos[p, i] = cos(p · theta^(−2i/HD)). For each pair: (a, b) → (a·cos − b·sin, b·cos + a·sin).
   */
  ropeForward(x: FloatArray, cos: FloatArray, sin: FloatArray, B: number, T: number, H: number, HD: number, pos0: number): void;

  /** Backward of `ropeForward`, in place on dx (rotation by the negative angle). */
  ropeBackward(dx: FloatArray, cos: FloatArray, sin: FloatArray, B: number, T: number, H: number, HD: number, pos0: number): void;

  /** out = silu(a) ⊙ b, silu(a) = a / (1 + e^−a), over n elements. Writes out. */
  swigluForward(out: FloatArray, a: FloatArray, b: FloatArray, n: number): void;

  /** da = dout ⊙ b ⊙ silu'(a), db = dout ⊙ silu(a). Writes da and db. */
  swigluBackward(da: FloatArray, db: FloatArray, dout: FloatArray, a: FloatArray, b: FloatArray, n: number): void;

  // ---------------------------------------------------------------------------------------------
  // Cross-entropy, in pieces so that the vocab-parallel version can reduce between them.
  // A rank holding the vocab block [vocabStart, vocabStart + cols) sees logits [rows, cols].
  // ---------------------------------------------------------------------------------------------

  /** out[r] = max_c x[r, c]. Writes out [rows]. */
  rowMax(out: FloatArray, x: FloatArray, rows: number, cols: number): void;

  /** out[r] = Σ_c exp(x[r, c] − shift[r]). Writes out [rows]. */
  rowSumExp(out: FloatArray, x: FloatArray, shift: FloatArray, rows: number, cols: number): void;

  /**
   * out[r] = x[r, targets[r] − vocabStart] when the target lies in this block, else 0. Writes out [rows].
   * targets are global token ids in [0, V).
   */
  pickTarget(out: FloatArray, x: FloatArray, targets: Int32Array, rows: number, cols: number, vocabStart: number): void;

  /**
   * Cross-entropy backward given the global log-sum-exp of every row:
   * dlogits[r, c] = gradScale · (exp(logits[r, c] − lse[r]) − [targets[r] = vocabStart + c]). Writes dlogits.
   */
  crossEntropyBackward(
    dlogits: FloatArray,
    logits: FloatArray,
    targets: Int32Array,
    lse: FloatArray,
    rows: number,
    cols: number,
    vocabStart: number,
    gradScale: number,
  ): void;

  // ---------------------------------------------------------------------------------------------
  // Embedding (vocab-parallel aware)
  // ---------------------------------------------------------------------------------------------

  /**
   * out[i, :] = table[tokens[i] − vocabStart, :] when the token lies in this rank's block of
   * `tableRows` rows, else 0. out [n, C], table [tableRows, C]. Writes out.
   */
  embeddingForward(out: FloatArray, table: FloatArray, tokens: Int32Array, n: number, C: number, vocabStart: number, tableRows: number): void;

  /** dtable[tokens[i] − vocabStart, :] += dout[i, :] for tokens in this block. Accumulates dtable. */
  embeddingBackward(dtable: FloatArray, dout: FloatArray, tokens: Int32Array, n: number, C: number, vocabStart: number, tableRows: number): void;

  // ---------------------------------------------------------------------------------------------
  // Elementwise and reductions
  // ---------------------------------------------------------------------------------------------

  /** out = a + b over n elements. out may alias a or b. */
  add(out: FloatArray, a: FloatArray, b: FloatArray, n: number): void;

  /** y += alpha · x over n elements. */
  axpy(y: FloatArray, alpha: number, x: FloatArray, n: number): void;

  /** x *= alpha over n elements, in place. */
  scale(x: FloatArray, alpha: number, n: number): void;

  /**
   * out = srcs[0] + srcs[1] + … + srcs[k−1], element-wise over n, summed left to right in that fixed
   * order so every rank that calls it with the same inputs gets the same bits. out may alias srcs[0].
   * Used by the collectives.
   */
  reduceSum(out: FloatArray, srcs: readonly FloatArray[], n: number): void;

  /** Σ x[i]² over n elements, accumulated in float64 (for gradient norms). */
  sumSquares(x: FloatArray, n: number): number;

  /**
   * One AdamW step (PyTorch semantics, decoupled weight decay, bias-corrected), element-wise over n:
   *   g = grad · gradScale
   *   param −= lr · weightDecay · param
   *   m = beta1·m + (1−beta1)·g;  v = beta2·v + (1−beta2)·g²
   *   param −= (lr / (1 − beta1^step)) · m / (sqrt(v) / sqrt(1 − beta2^step) + eps)
   * step counts from 1. Updates param, m and v in place.
   */
  adamw(
    param: FloatArray,
    grad: FloatArray,
    m: FloatArray,
    v: FloatArray,
    n: number,
    lr: number,
    beta1: number,
    beta2: number,
    eps: number,
    weightDecay: number,
    step: number,
    gradScale: number,
  ): void;
}
