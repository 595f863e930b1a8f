// Entry point of the kernels module (wasm/build/kernels.wasm). Everything exported here is called by
// src/backend/wasm.ts with byte addresses into the shared memory it owns.
export { gemm, gemmWorkBytes } from './gemm';
export {
  softmaxForward, softmaxBackward, rmsnormForward, rmsnormBackward, rope, swigluForward, swigluBackward,
  rowMax, rowSumExp, pickTarget, crossEntropyBackward, embeddingForward, embeddingBackward,
  add, axpy, scale, reduceSum, sumSquares, adamw,
} from './kernels';
