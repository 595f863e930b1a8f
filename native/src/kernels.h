// Row-wise, elementwise and skinny-GEMM kernels of the native backend, independent of any BLAS.
//
// The same source (kernels_impl.inc) is compiled twice: once for AVX-512 (kernels_avx512.cc) and once
// for the baseline x86-64 / other CPUs (kernels_base.cc). `selectKernels()` picks the table that the
// running CPU supports. All pointers are float32 and already bounds-checked by the caller.
#pragma once

#include <cstddef>
#include <cstdint>

namespace caat {

struct Kernels {
  const char* isa;

  void (*softmaxForward)(float* out, const float* inp, int64_t rows, int64_t cols, float scale, int64_t causalQ);
  void (*softmaxBackward)(float* dinp, const float* dout, const float* out, int64_t rows, int64_t cols, float scale);
  void (*rmsnormForward)(float* out, float* rstd, const float* x, const float* w, int64_t rows, int64_t cols, double eps);
  void (*rmsnormBackward)(float* dx, float* dw, const float* dout, const float* x, const float* w, const float* rstd,
                          int64_t rows, int64_t cols);
  // dir = +1 forward, -1 backward (rotation by the negative angle).
  void (*rope)(float* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H, int64_t HD, int64_t pos0,
               float dir);
  void (*swigluForward)(float* out, const float* a, const float* b, int64_t n);
  void (*swigluBackward)(float* da, float* db, const float* dout, const float* a, const float* b, int64_t n);
  void (*rowMax)(float* out, const float* x, int64_t rows, int64_t cols);
  void (*rowSumExp)(float* out, const float* x, const float* shift, int64_t rows, int64_t cols);
  void (*crossEntropyBackward)(float* dlogits, const float* logits, const int32_t* targets, const float* lse,
                               int64_t rows, int64_t cols, int64_t vocabStart, double gradScale);
  void (*add)(float* out, const float* a, const float* b, int64_t n);
  void (*axpy)(float* y, double alpha, const float* x, int64_t n);
  void (*scale)(float* x, double alpha, int64_t n);
  // out = srcs[0] + srcs[1] + ... + srcs[k-1], left to right, float rounding after every addition.
  void (*reduceSum)(float* out, const float* const* srcs, int64_t k, int64_t n);
  double (*sumSquares)(const float* x, int64_t n);
  // stepSize = lr / (1 - beta1^step), bc2sqrt = sqrt(1 - beta2^step), decay = 1 - lr * weightDecay.
  void (*adamw)(float* param, const float* grad, float* m, float* v, int64_t n, double beta1, double beta2, double eps,
                double stepSize, double bc2sqrt, double decay, double gradScale);
  void (*embeddingBackward)(float* dtable, const float* dout, const int32_t* tokens, int64_t n, int64_t C,
                            int64_t vocabStart, int64_t tableRows);

  // Skinny GEMM for small M (decoding): columns [j0, j1) of
  //   C[M, N] = alpha * A[M, K] * op(B) + beta * C
  // with A stored untransposed ([M, K], leading dimension lda); op(B) = B ([K, N], ldb) or, with
  // transB, B stored [N, K]. beta = 0 overwrites C. Any M works; it is meant for M <= 8, and with
  // transB for M <= 64 (above 8 rows the medium-M kernel, mediumNT).
  void (*skinnyGemm)(bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                     const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t j0, int64_t j1);
  // The same with transB and B held as bf16 bit patterns ([N, K], widened exactly in registers): the
  // float32 kernel's products and loop order, so the result is skinnyGemm's on the widened B.
  void (*skinnyGemmBf16)(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                         const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t j0, int64_t j1);
  // Attention of one query row of NH heads over Tk keys (decoding): att [NH, Tk] (scores, then
  // probabilities), out [NH·HD]; key and value rows of NKV·HD floats at stride kvRow.
  void (*attnDecode)(float* out, float* att, const float* q, const float* k, const float* v, int64_t Tk, int64_t NH,
                     int64_t NKV, int64_t HD, int64_t kvRow, float scale);
};

namespace k512 { const Kernels& table(); }
namespace k256 { const Kernels& table(); }
namespace kbase { const Kernels& table(); }

// The fastest table the running CPU supports (AVX-512F/DQ/BW/VL with OS support, else AVX2 + FMA, else
// baseline). CAAT_NATIVE_ISA=baseline or avx2 caps the choice.
const Kernels& selectKernels();

}  // namespace caat
