/**
 * Tensor-parallel communication ops. Each op is a pair (forward, backward) over one rank's buffers;
 * layouts: "replicated" (same value on every rank), "partial" (the true value is the sum over ranks),
 * "shared-prefix + private" (channels [0, s) replicated, [s, h) rank-private).
 *
 * | op                  | forward                                   | backward                                   | where used                        |
 * |---------------------|-------------------------------------------|--------------------------------------------|-----------------------------------|
 * | copyToTP (f)        | identity (replicated in)                  | all-reduce SUM of the gradient             | Megatron column-parallel input; NOT used by CAAT-Net blocks |
 * | reduceFromTP (g)    | all-reduce SUM (partial → replicated)     | identity                                   | Megatron row-parallel output; p = 1 reference              |
 * | partialAllReduce    | y[:, :s] = Σ_r o_r[:, :s]; y[:, s:] = c·o[:, s:] | same map on dy: Σ_r dy_r[:, :s]; c·dy[:, s:] | after o_proj and down_proj       |
 * | embeddingReduce     | all-reduce SUM of vocab-parallel lookups  | all-reduce SUM of the rank-partial dx (all h channels) | embedding output / block-0 entry |
 * | vocabParallelCE     | all-reduce MAX of row maxima; SUM of [Σexp, target logit] | none (local)                 | LM head loss                       |
 *
 * partialAllReduce is its own adjoint: with the inner product summed over ranks, Σ_r ⟨A o, y⟩ =
 * Σ_r ⟨o, A y⟩. That is why its backward all-reduces the shared slice of the gradient instead of
 * passing it through as Megatron's g does; and why the column-parallel input gradient (Megatron's f)
 * is NOT all-reduced: shared-channel gradients stay rank-partial until the block entry.
 * With N = 1 every op is the identity and moves nothing.
 */
import type { Backend, FloatArray } from '../backend/types.js';
import type { Communicator } from './comm.js';

/** f forward: identity. */
export function copyToTPForward(_comm: Communicator, _x: FloatArray): void {}

/** f backward: all-reduce SUM of the gradient, in place. */
export async function copyToTPBackward(comm: Communicator, dx: FloatArray, tag: string): Promise<void> {
  if (comm.size > 1) await comm.allReduce(dx, 'sum', tag);
}

/** g forward: all-reduce SUM, in place. */
export async function reduceFromTPForward(comm: Communicator, x: FloatArray, tag: string): Promise<void> {
  if (comm.size > 1) await comm.allReduce(x, 'sum', tag);
}

/** g backward: identity. */
export function reduceFromTPBackward(_comm: Communicator, _dy: FloatArray): void {}

/**
 * The CAAT-Net partial all-reduce, in place on buf [rows, h]: the shared prefix [0, s) of every row is
 * summed over ranks; the private channels [s, h) are multiplied by c. The same map is the forward and
 * the backward. `pack` is scratch of at least rows·s elements (unused when s is 0 or h).
 */
export async function partialAllReduce(
  comm: Communicator,
  be: Backend,
  buf: FloatArray,
  rows: number,
  h: number,
  s: number,
  c: number,
  pack: FloatArray,
  tag: string,
): Promise<void> {
  if (comm.size === 1) return;
  if (s === h) {
    await comm.allReduce(buf, 'sum', tag, 0, rows * h);
    return;
  }
  if (s > 0) {
    for (let r = 0; r < rows; r++) pack.set(buf.subarray(r * h, r * h + s), r * s);
    await comm.allReduce(pack, 'sum', tag, 0, rows * s);
    for (let r = 0; r < rows; r++) buf.set(pack.subarray(r * s, r * s + s), r * h);
  }
  if (c !== 1) {
    const w = h - s;
    for (let r = 0; r < rows; r++) be.scale(buf.subarray(r * h + s, r * h + h), c, w);
  }
}

/**
 * The forward partial all-reduce of bf16 mode, in place on the float32 buf [rows, h]: each rank rounds
 * its shared prefix [0, s) to bf16, the bf16 contributions are summed in float32 in rank order and
 * rounded once (Communicator.allReduceBf16, 2 bytes per element), and the result is widened back into
 * buf; the private channels are scaled by c in float32 as in `partialAllReduce`. `pack16` is bf16
 * scratch of at least rows·s elements.
 */
export async function partialAllReduceBf16(
  comm: Communicator,
  be: Backend,
  buf: Float32Array,
  rows: number,
  h: number,
  s: number,
  c: number,
  pack: Float32Array,
  pack16: Uint16Array,
  tag: string,
): Promise<void> {
  if (comm.size === 1) return;
  if (s > 0) {
    const n = rows * s;
    if (s === h) be.toBf16(pack16, buf, n);
    else {
      for (let r = 0; r < rows; r++) pack.set(buf.subarray(r * h, r * h + s), r * s);
      be.toBf16(pack16, pack, n);
    }
    await comm.allReduceBf16(pack16, tag, 0, n);
    if (s === h) be.fromBf16(buf, pack16, n);
    else {
      be.fromBf16(pack, pack16, n);
      for (let r = 0; r < rows; r++) buf.set(pack.subarray(r * s, r * s + s), r * h);
    }
  }
  if (c !== 1 && s < h) {
    const w = h - s;
    for (let r = 0; r < rows; r++) be.scale(buf.subarray(r * h + s, r * h + h), c, w);
  }
}

/**
 * Embedding output in bf16 mode: every rank rounds its lookups to bf16, the all-reduce carries bf16
 * (summed in float32 in rank order, rounded once) and the result is widened back into buf. `pack16`
 * is bf16 scratch of at least n elements.
 */
export async function embeddingReduceBf16(comm: Communicator, be: Backend, buf: Float32Array, n: number, pack16: Uint16Array, tag: string): Promise<void> {
  if (comm.size === 1) return;
  be.toBf16(pack16, buf, n);
  await comm.allReduceBf16(pack16, tag, 0, n);
  be.fromBf16(buf, pack16, n);
}

/** Embedding output (forward) and block-0 entry gradient (backward): full all-reduce SUM. */
export async function embeddingReduce(comm: Communicator, buf: FloatArray, n: number, tag: string): Promise<void> {
  if (comm.size > 1) await comm.allReduce(buf, 'sum', tag, 0, n);
}

/**
 * Vocab-parallel cross-entropy forward reductions. On entry `max` holds each row's local max,
 * and after the first reduction the caller computes local Σexp(x − max) into `sums[0, rows)` and the
 * local target logit (0 off-block) into `sums[rows, 2·rows)`; this function performs the two
 * reductions in order. Returns nothing: buffers are updated in place.
 */
export async function vocabParallelMax(comm: Communicator, max: FloatArray, rows: number, tag: string): Promise<void> {
  if (comm.size > 1) await comm.allReduce(max, 'max', tag, 0, rows);
}

export async function vocabParallelSums(comm: Communicator, sums: FloatArray, rows: number, tag: string): Promise<void> {
  if (comm.size > 1) await comm.allReduce(sums, 'sum', tag, 0, 2 * rows);
}

/**
 * Vocab-parallel argmax, in place on `idx` [rows]: on entry each rank holds, per row, the global index
 * of its FIRST logit equal to the row's global maximum, or the vocabulary size V when it has none; on
 * return every rank holds the smallest of those indices (the first global argmax, as numpy/torch break
 * ties). Carried as −index through a MAX all-reduce; exact for V < 2^24 in float32.
 */
export async function vocabParallelArgmax(comm: Communicator, idx: FloatArray, rows: number, tag: string): Promise<void> {
  if (comm.size === 1) return;
  for (let i = 0; i < rows; i++) idx[i] = -idx[i]!;
  await comm.allReduce(idx, 'max', tag, 0, rows);
  for (let i = 0; i < rows; i++) idx[i] = -idx[i]!;
}
