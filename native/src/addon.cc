// caatnet native backend: N-API bindings, GEMM dispatch (BLAS or the skinny kernel) and fused
// attention. Built once per BLAS: CAAT_BLAS_ONEDNN (dnnl_sgemm) or CAAT_BLAS_OPENBLAS (cblas_sgemm).
//
// Every function takes Float32Arrays without copying (the data pointer of the view, byteOffset
// included, so SharedArrayBuffer-backed arrays and subarray views work) and checks that every index it
// touches lies inside the arrays it was given; the TypeScript wrapper (src/backend/native.ts) does the
// full shape validation first and turns misuse into KernelErrors.
#include <napi.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"

#if defined(CAAT_BLAS_ONEDNN)
#include <dnnl.h>
#define CAAT_BLAS_NAME "onednn"
#elif defined(CAAT_BLAS_OPENBLAS)
#include <cblas.h>
#define CAAT_BLAS_NAME "openblas"
#else
#error "define CAAT_BLAS_ONEDNN or CAAT_BLAS_OPENBLAS"
#endif

namespace {

const caat::Kernels& KT = caat::selectKernels();

// GEMM path: 0 = automatic (skinny kernel where it beats the BLAS), 1 = BLAS always, 2 = skinny kernel
// always (any M; for tests and benchmarks).
std::atomic<int> gGemmPath{0};

// Threads the BLAS and our own parallel loops may use, per calling thread (worker threads each set
// their own). oneDNN (OpenMP runtime) reads the calling thread's OpenMP setting; OpenBLAS has one
// process-wide setting, which the last call to setThreads decides.
thread_local int tThreads = 1;

void setThreadsImpl(int n) {
  if (n < 1) n = 1;
  tThreads = n;
#if defined(CAAT_BLAS_ONEDNN)
  omp_set_num_threads(n);
#else
  openblas_set_num_threads(n);
#endif
}

// ---------------------------------------------------------------------------------------------
// GEMM
// ---------------------------------------------------------------------------------------------

void blasGemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
              const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
#if defined(CAAT_BLAS_ONEDNN)
  const dnnl_status_t st = dnnl_sgemm(tA ? 'T' : 'N', tB ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  if (st != dnnl_success) throw std::runtime_error("gemm: dnnl_sgemm failed with status " + std::to_string((int)st));
#else
  const int64_t lim = 0x7fffffff;
  if (M > lim || N > lim || K > lim || lda > lim || ldb > lim || ldc > lim) {
    throw std::runtime_error("gemm: dimensions exceed the 32-bit BLAS interface");
  }
  cblas_sgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans, (blasint)M, (blasint)N,
              (blasint)K, alpha, A, (blasint)lda, B, (blasint)ldb, beta, C, (blasint)ldc);
#endif
}

// Where the hand-written skinny kernel beats the BLAS, from measurements on AMD Zen 5, one core
// (GFLOP/s, BLAS / skinny; N = K = 4096, B read from memory):
//   oneDNN 2.6     NN  M=1 16.6/18.3  M=2 18.7/31.9  M=4 40.0/47.4  M=8 81.1/111
//                  NT  M=1 16.0/22.5  M=2 32.0/39.1  M=4 32.5/47.6  M=8 41.2/73.2
//   OpenBLAS 0.3.21 (OPENBLAS_CORETYPE=Haswell)
//                  NN  M=1 6.1/19.1   M=2 12.1/32.7  M=4 27.3/46.5  M=8 45.5/89.2  M=16 67.5/89.2
//                  NT  M=1 5.7/22.1   M=2 11.2/36.3  M=4 25.4/50.8  M=8 42.3/84.3  M=16 63.6/85.9
// With B resident in cache oneDNN is ahead for some shapes (NN with M = 1 or M > 4; NT with short K).
bool skinnyWins(int64_t M, int64_t N, int64_t K, bool tB) {
#if defined(CAAT_BLAS_ONEDNN)
  if (M > 8) return false;
  if (N * K * (int64_t)sizeof(float) >= (int64_t(1) << 20)) return true;  // B streams from memory
  if (!tB) return M >= 2 && M <= 4;
  return M == 1 || K >= 512 || (M <= 4 && K >= 128);
#else
  (void)N;
  (void)K;
  (void)tB;
  return M <= 16;
#endif
}

void gemmF32(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
             const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; i++) {
      float* c = C + i * ldc;
      if (beta == 0.0f) std::fill(c, c + N, 0.0f);
      else for (int64_t j = 0; j < N; j++) c[j] *= beta;
    }
    return;
  }
  const int path = gGemmPath.load(std::memory_order_relaxed);
  const bool skinny = path == 2 || (path == 0 && skinnyWins(M, N, K, tB));
  if (!skinny) {
    blasGemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const float* a = A;
  int64_t la = lda;
  thread_local std::vector<float> pack;
  if (tA) {  // A is stored [K, M]: gather it into [M, K] (few rows).
    pack.resize((size_t)(M * K));
    for (int64_t p = 0; p < K; p++)
      for (int64_t i = 0; i < M; i++) pack[(size_t)(i * K + p)] = A[p * lda + i];
    a = pack.data();
    la = K;
  }
  const int nt = tThreads;
  if (nt > 1 && N >= 256 * nt) {
#pragma omp parallel num_threads(nt)
    {
      const int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t chunk = (((N + T - 1) / T) + 15) & ~int64_t(15);
      const int64_t j0 = t * chunk, j1 = std::min(N, j0 + chunk);
      if (j0 < j1) KT.skinnyGemm(tB, M, N, K, alpha, a, la, B, ldb, beta, C, ldc, j0, j1);
    }
  } else {
    KT.skinnyGemm(tB, M, N, K, alpha, a, la, B, ldb, beta, C, ldc, 0, N);
  }
}

// ---------------------------------------------------------------------------------------------
// Attention: one (batch, head) at a time, in blocks of query rows so that the masked upper triangle
// is skipped (its probabilities are exactly 0, so the result equals the unblocked composition in
// src/backend/attention.ts up to summation order).
// ---------------------------------------------------------------------------------------------

constexpr int64_t kAttnRows = 128;

void attentionForwardImpl(float* out, float* att, const float* q, const float* k, const float* v, int64_t B, int64_t Tq,
                          int64_t Tk, int64_t NH, int64_t NKV, int64_t HD, int64_t kvBatchStride) {
  const int64_t group = NH / NKV, qRow = NH * HD, kvRow = NKV * HD, past = Tk - Tq;
  const float scale = (float)(1.0 / std::sqrt((double)HD));
  for (int64_t b = 0; b < B; b++) {
    for (int64_t h = 0; h < NH; h++) {
      const int64_t g = h / group;
      const float* qb = q + b * Tq * qRow + h * HD;
      float* ob = out + b * Tq * qRow + h * HD;
      const float* kb = k + b * kvBatchStride + g * HD;
      const float* vb = v + b * kvBatchStride + g * HD;
      float* a = att + (b * NH + h) * Tq * Tk;
      for (int64_t i0 = 0; i0 < Tq; i0 += kAttnRows) {
        const int64_t i1 = std::min(Tq, i0 + kAttnRows), rows = i1 - i0, ncols = past + i1;
        float* ab = a + i0 * Tk;
        // scores [rows, ncols] = q [rows, HD] · kᵀ
        gemmF32(false, true, rows, ncols, HD, 1.0f, qb + i0 * qRow, qRow, kb, kvRow, 0.0f, ab, Tk);
        // row i0 + r sees keys 0 ..= past + i0 + r; the rest of the row becomes 0.
        KT.softmaxForward(ab, ab, rows, Tk, scale, Tq - i0);
        // out [rows, HD] = P [rows, ncols] · v [ncols, HD]
        gemmF32(false, false, rows, HD, ncols, 1.0f, ab, Tk, vb, kvRow, 0.0f, ob + i0 * qRow, qRow);
      }
    }
  }
}

void attentionBackwardImpl(float* dq, float* dk, float* dv, float* dS, const float* dout, const float* q, const float* k,
                           const float* v, const float* att, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HD) {
  const int64_t group = NH / NKV, qRow = NH * HD, kvRow = NKV * HD;
  const float scale = (float)(1.0 / std::sqrt((double)HD));
  std::fill(dk, dk + B * T * kvRow, 0.0f);
  std::fill(dv, dv + B * T * kvRow, 0.0f);
  for (int64_t b = 0; b < B; b++) {
    for (int64_t h = 0; h < NH; h++) {
      const int64_t g = h / group;
      const int64_t qOff = b * T * qRow + h * HD, kvOff = b * T * kvRow + g * HD;
      const float* P = att + (b * NH + h) * T * T;
      for (int64_t i0 = 0; i0 < T; i0 += kAttnRows) {
        const int64_t i1 = std::min(T, i0 + kAttnRows), rows = i1 - i0, n = i1;
        const float* Pb = P + i0 * T;
        const float* dOb = dout + qOff + i0 * qRow;
        const float* qbk = q + qOff + i0 * qRow;
        float* dSb = dS + i0 * T;
        // dV[0:n] += P[i0:i1, 0:n]ᵀ · dO[i0:i1]
        gemmF32(true, false, n, HD, rows, 1.0f, Pb, T, dOb, qRow, 1.0f, dv + kvOff, kvRow);
        // dP[i0:i1, 0:n] = dO[i0:i1] · V[0:n]ᵀ
        gemmF32(false, true, rows, n, HD, 1.0f, dOb, qRow, v + kvOff, kvRow, 0.0f, dSb, T);
        // dS = scale · P ⊙ (dP − rowsum(dP ⊙ P)); P is 0 beyond column n.
        for (int64_t r = 0; r < rows; r++) KT.softmaxBackward(dSb + r * T, dSb + r * T, Pb + r * T, 1, n, scale);
        // dQ[i0:i1] = dS[i0:i1, 0:n] · K[0:n]
        gemmF32(false, false, rows, HD, n, 1.0f, dSb, T, k + kvOff, kvRow, 0.0f, dq + qOff + i0 * qRow, qRow);
        // dK[0:n] += dS[i0:i1, 0:n]ᵀ · Q[i0:i1]
        gemmF32(true, false, n, HD, rows, 1.0f, dSb, T, qbk, qRow, 1.0f, dk + kvOff, kvRow);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Argument helpers
// ---------------------------------------------------------------------------------------------

struct F32 {
  float* p;
  int64_t n;
};
struct I32 {
  int32_t* p;
  int64_t n;
};

[[noreturn]] void fail(Napi::Env env, const char* kernel, const std::string& msg) {
  throw Napi::TypeError::New(env, std::string(kernel) + ": " + msg);
}

F32 f32(const Napi::CallbackInfo& info, size_t i, const char* kernel, const char* name) {
  napi_typedarray_type type;
  size_t len = 0;
  void* data = nullptr;
  if (i >= info.Length() ||
      napi_get_typedarray_info(info.Env(), info[i], &type, &len, &data, nullptr, nullptr) != napi_ok ||
      type != napi_float32_array) {
    fail(info.Env(), kernel, std::string(name) + " must be a Float32Array (the native backend works in float32)");
  }
  return {static_cast<float*>(data), (int64_t)len};
}

I32 i32(const Napi::CallbackInfo& info, size_t i, const char* kernel, const char* name) {
  napi_typedarray_type type;
  size_t len = 0;
  void* data = nullptr;
  if (i >= info.Length() ||
      napi_get_typedarray_info(info.Env(), info[i], &type, &len, &data, nullptr, nullptr) != napi_ok ||
      type != napi_int32_array) {
    fail(info.Env(), kernel, std::string(name) + " must be an Int32Array");
  }
  return {static_cast<int32_t*>(data), (int64_t)len};
}

double num(const Napi::CallbackInfo& info, size_t i, const char* kernel) {
  double d;
  if (i >= info.Length() || napi_get_value_double(info.Env(), info[i], &d) != napi_ok) {
    fail(info.Env(), kernel, "argument " + std::to_string(i) + " must be a number");
  }
  return d;
}

// A non-negative integer argument.
int64_t dim(const Napi::CallbackInfo& info, size_t i, const char* kernel) {
  const double d = num(info, i, kernel);
  if (!(d >= 0) || d != std::floor(d) || d > 9.0e15) {
    fail(info.Env(), kernel, "argument " + std::to_string(i) + " must be a non-negative integer");
  }
  return (int64_t)d;
}

bool flag(const Napi::CallbackInfo& info, size_t i) { return i < info.Length() && info[i].ToBoolean().Value(); }

void need(const Napi::CallbackInfo& info, const char* kernel, const char* name, int64_t have, int64_t want) {
  if (want > have) {
    throw Napi::RangeError::New(info.Env(), std::string(kernel) + ": buffer " + name + " too short: needs " +
                                                std::to_string(want) + " elements, has " + std::to_string(have));
  }
}

int64_t span(int64_t rows, int64_t cols, int64_t ld, int64_t off) {
  return rows == 0 || cols == 0 ? 0 : off + (rows - 1) * ld + cols;
}

void checkGemmSpans(const Napi::CallbackInfo& info, bool tA, bool tB, int64_t M, int64_t N, int64_t K, const F32& A,
                    int64_t offA, int64_t lda, const F32& B, int64_t offB, int64_t ldb, const F32& C, int64_t offC,
                    int64_t ldc) {
  const char* k = "gemm";
  const int64_t ar = tA ? K : M, ac = tA ? M : K, br = tB ? N : K, bc = tB ? K : N;
  if (lda < std::max<int64_t>(1, ac) || ldb < std::max<int64_t>(1, bc) || ldc < std::max<int64_t>(1, N)) {
    fail(info.Env(), k, "leading dimension smaller than the row length");
  }
  if (M > 0 && N > 0) {
    need(info, k, "A", A.n, span(ar, ac, lda, offA));
    need(info, k, "B", B.n, span(br, bc, ldb, offB));
    need(info, k, "C", C.n, span(M, N, ldc, offC));
  }
}

// ---------------------------------------------------------------------------------------------
// Bindings
// ---------------------------------------------------------------------------------------------

Napi::Value Gemm(const Napi::CallbackInfo& info) {
  const char* k = "gemm";
  const bool tA = flag(info, 0), tB = flag(info, 1);
  const int64_t M = dim(info, 2, k), N = dim(info, 3, k), K = dim(info, 4, k);
  const float alpha = (float)num(info, 5, k);
  const F32 A = f32(info, 6, k, "A");
  const int64_t offA = dim(info, 7, k), lda = dim(info, 8, k);
  const F32 B = f32(info, 9, k, "B");
  const int64_t offB = dim(info, 10, k), ldb = dim(info, 11, k);
  const float beta = (float)num(info, 12, k);
  const F32 C = f32(info, 13, k, "C");
  const int64_t offC = dim(info, 14, k), ldc = dim(info, 15, k);
  checkGemmSpans(info, tA, tB, M, N, K, A, offA, lda, B, offB, ldb, C, offC, ldc);
  gemmF32(tA, tB, M, N, K, alpha, A.p + offA, lda, B.p + offB, ldb, beta, C.p + offC, ldc);
  return info.Env().Undefined();
}

// gemmTimedInC(transA, transB, M, N, K, A, B, C, repeats): C = op(A)·op(B) with packed operands (lda,
// ldb, ldc the stored row lengths), through the same dispatch as gemm, `repeats` times (no warm-up
// call: the caller warms up). Returns the median seconds of one call, timed with a monotonic clock.
Napi::Value GemmTimedInC(const Napi::CallbackInfo& info) {
  const char* k = "gemmTimedInC";
  const bool tA = flag(info, 0), tB = flag(info, 1);
  const int64_t M = dim(info, 2, k), N = dim(info, 3, k), K = dim(info, 4, k);
  const F32 A = f32(info, 5, k, "A"), B = f32(info, 6, k, "B"), C = f32(info, 7, k, "C");
  const int64_t reps = std::max<int64_t>(1, dim(info, 8, k));
  const int64_t lda = std::max<int64_t>(1, tA ? M : K), ldb = std::max<int64_t>(1, tB ? K : N), ldc = std::max<int64_t>(1, N);
  checkGemmSpans(info, tA, tB, M, N, K, A, 0, lda, B, 0, ldb, C, 0, ldc);
  std::vector<double> t((size_t)reps);
  for (int64_t r = 0; r < reps; r++) {
    const auto t0 = std::chrono::steady_clock::now();
    gemmF32(tA, tB, M, N, K, 1.0f, A.p, lda, B.p, ldb, 0.0f, C.p, ldc);
    const auto t1 = std::chrono::steady_clock::now();
    t[(size_t)r] = std::chrono::duration<double>(t1 - t0).count();
  }
  std::sort(t.begin(), t.end());
  const double med = reps % 2 ? t[(size_t)(reps / 2)] : 0.5 * (t[(size_t)(reps / 2 - 1)] + t[(size_t)(reps / 2)]);
  return Napi::Number::New(info.Env(), med);
}

Napi::Value AttentionForward(const Napi::CallbackInfo& info) {
  const char* k = "attentionForward";
  const F32 out = f32(info, 0, k, "out"), att = f32(info, 1, k, "att"), q = f32(info, 2, k, "q"),
            kk = f32(info, 3, k, "k"), v = f32(info, 4, k, "v");
  const int64_t B = dim(info, 5, k), Tq = dim(info, 6, k), Tk = dim(info, 7, k), NH = dim(info, 8, k),
                NKV = dim(info, 9, k), HD = dim(info, 10, k), kvs = dim(info, 11, k);
  if (B == 0 || Tq == 0 || Tk == 0 || NH == 0 || NKV == 0 || HD == 0) fail(info.Env(), k, "dimensions must be positive");
  if (Tq > Tk) fail(info.Env(), k, "Tq exceeds Tk");
  if (NH % NKV != 0) fail(info.Env(), k, "NH is not a multiple of NKV");
  if (B > 1 && kvs < Tk * NKV * HD) fail(info.Env(), k, "kvBatchStride is smaller than Tk·NKV·HD");
  need(info, k, "q", q.n, B * Tq * NH * HD);
  need(info, k, "out", out.n, B * Tq * NH * HD);
  need(info, k, "att", att.n, B * NH * Tq * Tk);
  need(info, k, "k", kk.n, (B - 1) * kvs + Tk * NKV * HD);
  need(info, k, "v", v.n, (B - 1) * kvs + Tk * NKV * HD);
  attentionForwardImpl(out.p, att.p, q.p, kk.p, v.p, B, Tq, Tk, NH, NKV, HD, kvs);
  return info.Env().Undefined();
}

Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  const char* k = "attentionBackward";
  const F32 dq = f32(info, 0, k, "dq"), dk = f32(info, 1, k, "dk"), dv = f32(info, 2, k, "dv"),
            scratch = f32(info, 3, k, "scratch"), dout = f32(info, 4, k, "dout"), q = f32(info, 5, k, "q"),
            kk = f32(info, 6, k, "k"), v = f32(info, 7, k, "v"), att = f32(info, 8, k, "att");
  const int64_t B = dim(info, 9, k), T = dim(info, 10, k), NH = dim(info, 11, k), NKV = dim(info, 12, k),
                HD = dim(info, 13, k);
  if (B == 0 || T == 0 || NH == 0 || NKV == 0 || HD == 0) fail(info.Env(), k, "dimensions must be positive");
  if (NH % NKV != 0) fail(info.Env(), k, "NH is not a multiple of NKV");
  const int64_t qn = B * T * NH * HD, kvn = B * T * NKV * HD;
  need(info, k, "q", q.n, qn);
  need(info, k, "dq", dq.n, qn);
  need(info, k, "dout", dout.n, qn);
  need(info, k, "k", kk.n, kvn);
  need(info, k, "v", v.n, kvn);
  need(info, k, "dk", dk.n, kvn);
  need(info, k, "dv", dv.n, kvn);
  need(info, k, "att", att.n, B * NH * T * T);
  need(info, k, "scratch", scratch.n, T * T);
  attentionBackwardImpl(dq.p, dk.p, dv.p, scratch.p, dout.p, q.p, kk.p, v.p, att.p, B, T, NH, NKV, HD);
  return info.Env().Undefined();
}

Napi::Value SoftmaxForward(const Napi::CallbackInfo& info) {
  const char* k = "softmaxForward";
  const F32 out = f32(info, 0, k, "out"), inp = f32(info, 1, k, "inp");
  const int64_t rows = dim(info, 2, k), cols = dim(info, 3, k);
  const float scale = (float)num(info, 4, k);
  const int64_t cq = dim(info, 5, k);
  if (cq > 0 && (rows % cq != 0 || cq > cols)) fail(info.Env(), k, "causalQ must divide rows and not exceed cols");
  need(info, k, "inp", inp.n, rows * cols);
  need(info, k, "out", out.n, rows * cols);
  KT.softmaxForward(out.p, inp.p, rows, cols, scale, cq);
  return info.Env().Undefined();
}

Napi::Value SoftmaxBackward(const Napi::CallbackInfo& info) {
  const char* k = "softmaxBackward";
  const F32 dinp = f32(info, 0, k, "dinp"), dout = f32(info, 1, k, "dout"), out = f32(info, 2, k, "out");
  const int64_t rows = dim(info, 3, k), cols = dim(info, 4, k);
  const float scale = (float)num(info, 5, k);
  need(info, k, "dinp", dinp.n, rows * cols);
  need(info, k, "dout", dout.n, rows * cols);
  need(info, k, "out", out.n, rows * cols);
  KT.softmaxBackward(dinp.p, dout.p, out.p, rows, cols, scale);
  return info.Env().Undefined();
}

Napi::Value RmsnormForward(const Napi::CallbackInfo& info) {
  const char* k = "rmsnormForward";
  const F32 out = f32(info, 0, k, "out"), rstd = f32(info, 1, k, "rstd"), x = f32(info, 2, k, "x"), w = f32(info, 3, k, "w");
  const int64_t rows = dim(info, 4, k), cols = dim(info, 5, k);
  const double eps = num(info, 6, k);
  need(info, k, "x", x.n, rows * cols);
  need(info, k, "out", out.n, rows * cols);
  need(info, k, "w", w.n, cols);
  need(info, k, "rstd", rstd.n, rows);
  KT.rmsnormForward(out.p, rstd.p, x.p, w.p, rows, cols, eps);
  return info.Env().Undefined();
}

Napi::Value RmsnormBackward(const Napi::CallbackInfo& info) {
  const char* k = "rmsnormBackward";
  const F32 dx = f32(info, 0, k, "dx"), dw = f32(info, 1, k, "dw"), dout = f32(info, 2, k, "dout"),
            x = f32(info, 3, k, "x"), w = f32(info, 4, k, "w"), rstd = f32(info, 5, k, "rstd");
  const int64_t rows = dim(info, 6, k), cols = dim(info, 7, k);
  need(info, k, "dx", dx.n, rows * cols);
  need(info, k, "dout", dout.n, rows * cols);
  need(info, k, "x", x.n, rows * cols);
  need(info, k, "w", w.n, cols);
  need(info, k, "dw", dw.n, cols);
  need(info, k, "rstd", rstd.n, rows);
  KT.rmsnormBackward(dx.p, dw.p, dout.p, x.p, w.p, rstd.p, rows, cols);
  return info.Env().Undefined();
}

Napi::Value Rope(const Napi::CallbackInfo& info, const char* k, float dir) {
  const F32 x = f32(info, 0, k, "x"), c = f32(info, 1, k, "cos"), s = f32(info, 2, k, "sin");
  const int64_t B = dim(info, 3, k), T = dim(info, 4, k), H = dim(info, 5, k), HD = dim(info, 6, k), pos0 = dim(info, 7, k);
  if (HD == 0 || HD % 2 != 0) fail(info.Env(), k, "HD must be positive and even");
  need(info, k, "x", x.n, B * T * H * HD);
  need(info, k, "cos", c.n, (pos0 + T) * (HD / 2));
  need(info, k, "sin", s.n, (pos0 + T) * (HD / 2));
  KT.rope(x.p, c.p, s.p, B, T, H, HD, pos0, dir);
  return info.Env().Undefined();
}
Napi::Value RopeForward(const Napi::CallbackInfo& info) { return Rope(info, "ropeForward", 1.0f); }
Napi::Value RopeBackward(const Napi::CallbackInfo& info) { return Rope(info, "ropeBackward", -1.0f); }

Napi::Value SwigluForward(const Napi::CallbackInfo& info) {
  const char* k = "swigluForward";
  const F32 out = f32(info, 0, k, "out"), a = f32(info, 1, k, "a"), b = f32(info, 2, k, "b");
  const int64_t n = dim(info, 3, k);
  need(info, k, "out", out.n, n);
  need(info, k, "a", a.n, n);
  need(info, k, "b", b.n, n);
  KT.swigluForward(out.p, a.p, b.p, n);
  return info.Env().Undefined();
}

Napi::Value SwigluBackward(const Napi::CallbackInfo& info) {
  const char* k = "swigluBackward";
  const F32 da = f32(info, 0, k, "da"), db = f32(info, 1, k, "db"), dout = f32(info, 2, k, "dout"),
            a = f32(info, 3, k, "a"), b = f32(info, 4, k, "b");
  const int64_t n = dim(info, 5, k);
  need(info, k, "da", da.n, n);
  need(info, k, "db", db.n, n);
  need(info, k, "dout", dout.n, n);
  need(info, k, "a", a.n, n);
  need(info, k, "b", b.n, n);
  KT.swigluBackward(da.p, db.p, dout.p, a.p, b.p, n);
  return info.Env().Undefined();
}

Napi::Value RowMax(const Napi::CallbackInfo& info) {
  const char* k = "rowMax";
  const F32 out = f32(info, 0, k, "out"), x = f32(info, 1, k, "x");
  const int64_t rows = dim(info, 2, k), cols = dim(info, 3, k);
  if (cols == 0 && rows > 0) fail(info.Env(), k, "cols must be positive");
  need(info, k, "x", x.n, rows * cols);
  need(info, k, "out", out.n, rows);
  KT.rowMax(out.p, x.p, rows, cols);
  return info.Env().Undefined();
}

Napi::Value RowSumExp(const Napi::CallbackInfo& info) {
  const char* k = "rowSumExp";
  const F32 out = f32(info, 0, k, "out"), x = f32(info, 1, k, "x"), shift = f32(info, 2, k, "shift");
  const int64_t rows = dim(info, 3, k), cols = dim(info, 4, k);
  need(info, k, "x", x.n, rows * cols);
  need(info, k, "out", out.n, rows);
  need(info, k, "shift", shift.n, rows);
  KT.rowSumExp(out.p, x.p, shift.p, rows, cols);
  return info.Env().Undefined();
}

Napi::Value PickTarget(const Napi::CallbackInfo& info) {
  const char* k = "pickTarget";
  const F32 out = f32(info, 0, k, "out"), x = f32(info, 1, k, "x");
  const I32 targets = i32(info, 2, k, "targets");
  const int64_t rows = dim(info, 3, k), cols = dim(info, 4, k), vs = dim(info, 5, k);
  need(info, k, "x", x.n, rows * cols);
  need(info, k, "out", out.n, rows);
  need(info, k, "targets", targets.n, rows);
  for (int64_t r = 0; r < rows; r++) {
    const int64_t t = (int64_t)targets.p[r] - vs;
    out.p[r] = t >= 0 && t < cols ? x.p[r * cols + t] : 0.0f;
  }
  return info.Env().Undefined();
}

Napi::Value CrossEntropyBackward(const Napi::CallbackInfo& info) {
  const char* k = "crossEntropyBackward";
  const F32 dl = f32(info, 0, k, "dlogits"), logits = f32(info, 1, k, "logits");
  const I32 targets = i32(info, 2, k, "targets");
  const F32 lse = f32(info, 3, k, "lse");
  const int64_t rows = dim(info, 4, k), cols = dim(info, 5, k), vs = dim(info, 6, k);
  const double gs = num(info, 7, k);
  need(info, k, "logits", logits.n, rows * cols);
  need(info, k, "dlogits", dl.n, rows * cols);
  need(info, k, "targets", targets.n, rows);
  need(info, k, "lse", lse.n, rows);
  KT.crossEntropyBackward(dl.p, logits.p, targets.p, lse.p, rows, cols, vs, gs);
  return info.Env().Undefined();
}

Napi::Value EmbeddingForward(const Napi::CallbackInfo& info) {
  const char* k = "embeddingForward";
  const F32 out = f32(info, 0, k, "out"), table = f32(info, 1, k, "table");
  const I32 tokens = i32(info, 2, k, "tokens");
  const int64_t n = dim(info, 3, k), C = dim(info, 4, k), vs = dim(info, 5, k), rowsT = dim(info, 6, k);
  need(info, k, "tokens", tokens.n, n);
  need(info, k, "out", out.n, n * C);
  need(info, k, "table", table.n, rowsT * C);
  for (int64_t i = 0; i < n; i++) {
    const int64_t t = (int64_t)tokens.p[i] - vs;
    float* o = out.p + i * C;
    if (t >= 0 && t < rowsT) std::memcpy(o, table.p + t * C, (size_t)C * sizeof(float));
    else std::fill(o, o + C, 0.0f);
  }
  return info.Env().Undefined();
}

Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  const char* k = "embeddingBackward";
  const F32 dtable = f32(info, 0, k, "dtable"), dout = f32(info, 1, k, "dout");
  const I32 tokens = i32(info, 2, k, "tokens");
  const int64_t n = dim(info, 3, k), C = dim(info, 4, k), vs = dim(info, 5, k), rowsT = dim(info, 6, k);
  need(info, k, "tokens", tokens.n, n);
  need(info, k, "dout", dout.n, n * C);
  need(info, k, "dtable", dtable.n, rowsT * C);
  KT.embeddingBackward(dtable.p, dout.p, tokens.p, n, C, vs, rowsT);
  return info.Env().Undefined();
}

Napi::Value Add(const Napi::CallbackInfo& info) {
  const char* k = "add";
  const F32 out = f32(info, 0, k, "out"), a = f32(info, 1, k, "a"), b = f32(info, 2, k, "b");
  const int64_t n = dim(info, 3, k);
  need(info, k, "out", out.n, n);
  need(info, k, "a", a.n, n);
  need(info, k, "b", b.n, n);
  KT.add(out.p, a.p, b.p, n);
  return info.Env().Undefined();
}

Napi::Value Axpy(const Napi::CallbackInfo& info) {
  const char* k = "axpy";
  const F32 y = f32(info, 0, k, "y");
  const double alpha = num(info, 1, k);
  const F32 x = f32(info, 2, k, "x");
  const int64_t n = dim(info, 3, k);
  need(info, k, "y", y.n, n);
  need(info, k, "x", x.n, n);
  KT.axpy(y.p, alpha, x.p, n);
  return info.Env().Undefined();
}

Napi::Value Scale(const Napi::CallbackInfo& info) {
  const char* k = "scale";
  const F32 x = f32(info, 0, k, "x");
  const double alpha = num(info, 1, k);
  const int64_t n = dim(info, 2, k);
  need(info, k, "x", x.n, n);
  KT.scale(x.p, alpha, n);
  return info.Env().Undefined();
}

Napi::Value ReduceSum(const Napi::CallbackInfo& info) {
  const char* k = "reduceSum";
  const F32 out = f32(info, 0, k, "out");
  if (info.Length() < 2 || !info[1].IsArray()) fail(info.Env(), k, "srcs must be an array of Float32Arrays");
  const Napi::Array arr = info[1].As<Napi::Array>();
  const int64_t n = dim(info, 2, k);
  const uint32_t cnt = arr.Length();
  if (cnt == 0) fail(info.Env(), k, "srcs must hold at least one buffer");
  need(info, k, "out", out.n, n);
  std::vector<const float*> srcs(cnt);
  for (uint32_t j = 0; j < cnt; j++) {
    napi_typedarray_type type;
    size_t len = 0;
    void* data = nullptr;
    if (napi_get_typedarray_info(info.Env(), arr.Get(j), &type, &len, &data, nullptr, nullptr) != napi_ok ||
        type != napi_float32_array) {
      fail(info.Env(), k, "srcs[" + std::to_string(j) + "] must be a Float32Array");
    }
    need(info, k, "srcs[]", (int64_t)len, n);
    srcs[j] = static_cast<const float*>(data);
  }
  KT.reduceSum(out.p, srcs.data(), cnt, n);
  return info.Env().Undefined();
}

Napi::Value SumSquares(const Napi::CallbackInfo& info) {
  const char* k = "sumSquares";
  const F32 x = f32(info, 0, k, "x");
  const int64_t n = dim(info, 1, k);
  need(info, k, "x", x.n, n);
  return Napi::Number::New(info.Env(), KT.sumSquares(x.p, n));
}

// adamw(param, grad, m, v, n, beta1, beta2, eps, stepSize, bc2sqrt, decay, gradScale): the step-dependent
// constants are computed by the caller exactly as the js reference computes them.
Napi::Value Adamw(const Napi::CallbackInfo& info) {
  const char* k = "adamw";
  const F32 param = f32(info, 0, k, "param"), grad = f32(info, 1, k, "grad"), m = f32(info, 2, k, "m"),
            v = f32(info, 3, k, "v");
  const int64_t n = dim(info, 4, k);
  const double beta1 = num(info, 5, k), beta2 = num(info, 6, k), eps = num(info, 7, k), stepSize = num(info, 8, k),
               bc2sqrt = num(info, 9, k), decay = num(info, 10, k), gradScale = num(info, 11, k);
  need(info, k, "param", param.n, n);
  need(info, k, "grad", grad.n, n);
  need(info, k, "m", m.n, n);
  need(info, k, "v", v.n, n);
  KT.adamw(param.p, grad.p, m.p, v.p, n, beta1, beta2, eps, stepSize, bc2sqrt, decay, gradScale);
  return info.Env().Undefined();
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  const int64_t n = dim(info, 0, "setThreads");
  if (n < 1 || n > 1024) fail(info.Env(), "setThreads", "threads must be between 1 and 1024");
  setThreadsImpl((int)n);
  return info.Env().Undefined();
}

// setGemmPath(mode): 0 automatic, 1 BLAS always, 2 skinny kernel always (tests and benchmarks).
Napi::Value SetGemmPath(const Napi::CallbackInfo& info) {
  const int64_t m = dim(info, 0, "setGemmPath");
  if (m > 2) fail(info.Env(), "setGemmPath", "mode must be 0 (auto), 1 (BLAS) or 2 (skinny)");
  gGemmPath.store((int)m);
  return info.Env().Undefined();
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("blas", CAAT_BLAS_NAME);
#if defined(CAAT_BLAS_ONEDNN)
  const dnnl_version_t* ver = dnnl_version();
  o.Set("version", std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." + std::to_string(ver->patch));
  o.Set("config", std::string("oneDNN ") + (ver->hash ? ver->hash : "") + " cpu_runtime=" + std::to_string(ver->cpu_runtime));
  o.Set("corename", env.Null());
#else
  const std::string cfg = openblas_get_config();
  std::string version = cfg;
  {
    const size_t sp = cfg.find(' ');
    if (sp != std::string::npos) {
      const size_t e = cfg.find(' ', sp + 1);
      version = cfg.substr(sp + 1, e == std::string::npos ? std::string::npos : e - sp - 1);
    }
  }
  o.Set("version", version);
  o.Set("config", cfg);
  o.Set("corename", std::string(openblas_get_corename()));
#endif
  o.Set("threads", tThreads);
#if defined(CAAT_BLAS_ONEDNN)
  o.Set("libraryThreads", omp_get_max_threads());
#else
  o.Set("libraryThreads", openblas_get_num_threads());
#endif
  o.Set("isa", KT.isa);
  o.Set("gemmPath", gGemmPath.load());
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  setThreadsImpl(1);
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads, "setThreads"));
  exports.Set("setGemmPath", Napi::Function::New(env, SetGemmPath, "setGemmPath"));
  exports.Set("gemm", Napi::Function::New(env, Gemm, "gemm"));
  exports.Set("gemmTimedInC", Napi::Function::New(env, GemmTimedInC, "gemmTimedInC"));
  exports.Set("attentionForward", Napi::Function::New(env, AttentionForward, "attentionForward"));
  exports.Set("attentionBackward", Napi::Function::New(env, AttentionBackward, "attentionBackward"));
  exports.Set("softmaxForward", Napi::Function::New(env, SoftmaxForward, "softmaxForward"));
  exports.Set("softmaxBackward", Napi::Function::New(env, SoftmaxBackward, "softmaxBackward"));
  exports.Set("rmsnormForward", Napi::Function::New(env, RmsnormForward, "rmsnormForward"));
  exports.Set("rmsnormBackward", Napi::Function::New(env, RmsnormBackward, "rmsnormBackward"));
  exports.Set("ropeForward", Napi::Function::New(env, RopeForward, "ropeForward"));
  exports.Set("ropeBackward", Napi::Function::New(env, RopeBackward, "ropeBackward"));
  exports.Set("swigluForward", Napi::Function::New(env, SwigluForward, "swigluForward"));
  exports.Set("swigluBackward", Napi::Function::New(env, SwigluBackward, "swigluBackward"));
  exports.Set("rowMax", Napi::Function::New(env, RowMax, "rowMax"));
  exports.Set("rowSumExp", Napi::Function::New(env, RowSumExp, "rowSumExp"));
  exports.Set("pickTarget", Napi::Function::New(env, PickTarget, "pickTarget"));
  exports.Set("crossEntropyBackward", Napi::Function::New(env, CrossEntropyBackward, "crossEntropyBackward"));
  exports.Set("embeddingForward", Napi::Function::New(env, EmbeddingForward, "embeddingForward"));
  exports.Set("embeddingBackward", Napi::Function::New(env, EmbeddingBackward, "embeddingBackward"));
  exports.Set("add", Napi::Function::New(env, Add, "add"));
  exports.Set("axpy", Napi::Function::New(env, Axpy, "axpy"));
  exports.Set("scale", Napi::Function::New(env, Scale, "scale"));
  exports.Set("reduceSum", Napi::Function::New(env, ReduceSum, "reduceSum"));
  exports.Set("sumSquares", Napi::Function::New(env, SumSquares, "sumSquares"));
  exports.Set("adamw", Napi::Function::New(env, Adamw, "adamw"));
  return exports;
}

}  // namespace

NODE_API_MODULE(caatnet_native, Init)
