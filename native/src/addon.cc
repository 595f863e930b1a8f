// caatnet native backend: N-API bindings, GEMM dispatch and fused attention.
//
// GEMM implementations (any subset, fixed at build time by which libraries native/build.mjs found):
//   0 onednn    oneDNN dnnl_sgemm                                     (CAAT_HAVE_ONEDNN)
//   1 matmul    oneDNN matmul primitive, fp32, primitives cached by shape (CAAT_HAVE_ONEDNN)
//   2 openblas  OpenBLAS cblas_sgemm                                  (CAAT_HAVE_OPENBLAS)
//   3 skinny    the hand-written kernel for small M (kernels_impl.inc)
// Which one runs for a call is decided by a table per thread count (one entry per shape class, see
// classOf), installed from TypeScript (src/backend/gemm-choice.ts measures and caches it); a call may
// also force one implementation. bf16: toBf16/fromBf16 and gemmBf16, through the oneDNN matmul
// primitive in bf16 where the CPU has bf16 hardware, else widened to fp32 and the fp32 dispatch.
//
// Every function takes typed arrays without copying (the data pointer of the view, byteOffset
// included, so SharedArrayBuffer-backed arrays and subarray views work) and checks that every index it
// touches lies inside the arrays it was given; the TypeScript wrapper (src/backend/native.ts) does the
// full shape validation first and turns misuse into KernelErrors.
#include <napi.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels.h"

#if !defined(CAAT_HAVE_ONEDNN) && !defined(CAAT_HAVE_OPENBLAS)
#error "define CAAT_HAVE_ONEDNN and/or CAAT_HAVE_OPENBLAS"
#endif
#if defined(CAAT_HAVE_ONEDNN)
#include <dnnl.h>
#include <oneapi/dnnl/dnnl.hpp>
#endif
#if defined(CAAT_HAVE_OPENBLAS)
#include <cblas.h>
#endif

namespace {

const caat::Kernels& KT = caat::selectKernels();

// ---------------------------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------------------------

// Threads the libraries and our own parallel loops may use, per calling thread (worker threads each
// set their own). oneDNN (OpenMP runtime) reads the calling thread's OpenMP setting; OpenBLAS has one
// process-wide setting, which the last call to setThreads decides.
thread_local int tThreads = 1;

void setThreadsImpl(int n) {
  if (n < 1) n = 1;
  tThreads = n;
  omp_set_num_threads(n);
#if defined(CAAT_HAVE_OPENBLAS)
  openblas_set_num_threads(n);
#endif
}

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

// oneDNN 2.x's JIT sgemm kernels (behind dnnl_sgemm and the matmul primitive's gemm-based
// implementations) use RSP as a general-purpose register pointing into the heap while they run; a
// signal delivered to the thread then (SIGPROF from `node --cpu-prof`, SIGCHLD, SIGTERM, SIGINT, ...)
// makes the kernel write its signal frame over the heap ("corrupted size vs. prev_size", or silent
// corruption). Every call into such code runs with the asynchronous signals blocked on the calling
// thread; they are delivered when the mask is restored, right after the call. Synchronous faults
// (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP) stay deliverable. OpenMP threads created inside such a
// call inherit the blocked mask, so they never receive asynchronous signals either (the process still
// receives them on its other threads).
class SignalsBlocked {
 public:
  SignalsBlocked() {
    sigset_t all;
    sigfillset(&all);
    for (int s : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT}) sigdelset(&all, s);
    active_ = pthread_sigmask(SIG_BLOCK, &all, &saved_) == 0;
  }
  ~SignalsBlocked() {
    if (active_) pthread_sigmask(SIG_SETMASK, &saved_, nullptr);
  }
  SignalsBlocked(const SignalsBlocked&) = delete;
  SignalsBlocked& operator=(const SignalsBlocked&) = delete;

 private:
  sigset_t saved_;
  bool active_ = false;
};

// ---------------------------------------------------------------------------------------------
// GEMM implementations
// ---------------------------------------------------------------------------------------------

enum Impl : int { kOneDnn = 0, kMatmul = 1, kOpenBlas = 2, kSkinny = 3, kImpls = 4 };
const char* const kImplNames[kImpls] = {"onednn", "matmul", "openblas", "skinny"};

constexpr bool implBuilt(int i) {
#if defined(CAAT_HAVE_ONEDNN)
  if (i == kOneDnn || i == kMatmul) return true;
#endif
#if defined(CAAT_HAVE_OPENBLAS)
  if (i == kOpenBlas) return true;
#endif
  return i == kSkinny;
}

// The library GEMM used where nothing else is said (no table yet; skinny disabled by the test hook).
#if defined(CAAT_HAVE_ONEDNN)
constexpr int kDefaultBlas = kOneDnn;
#else
constexpr int kDefaultBlas = kOpenBlas;
#endif

#if defined(CAAT_HAVE_ONEDNN)
void onednnGemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  dnnl_status_t st;
  {
    SignalsBlocked quiet;
    st = dnnl_sgemm(tA ? 'T' : 'N', tB ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  if (st != dnnl_success) throw std::runtime_error("gemm: dnnl_sgemm failed with status " + std::to_string((int)st));
}

dnnl::engine& cpuEngine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

dnnl::stream& cpuStream() {
  thread_local dnnl::stream s(cpuEngine());
  return s;
}

// One cached matmul primitive: C[M,N] = alpha·op(A)·op(B) + beta·C with the given strides and types.
struct MatmulKey {
  bool tA, tB;
  int64_t M, N, K, lda, ldb, ldc;
  float alpha, beta;
  bool bf16;
  bool operator==(const MatmulKey& o) const {
    return tA == o.tA && tB == o.tB && M == o.M && N == o.N && K == o.K && lda == o.lda && ldb == o.ldb && ldc == o.ldc &&
           alpha == o.alpha && beta == o.beta && bf16 == o.bf16;
  }
};
struct MatmulKeyHash {
  size_t operator()(const MatmulKey& k) const {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    mix(k.tA | (k.tB << 1) | (k.bf16 << 2));
    for (int64_t v : {k.M, k.N, k.K, k.lda, k.ldb, k.ldc}) mix((uint64_t)v);
    uint32_t a, b;
    std::memcpy(&a, &k.alpha, 4);
    std::memcpy(&b, &k.beta, 4);
    mix(a);
    mix(b);
    return (size_t)h;
  }
};
struct MatmulEntry {
  dnnl::matmul prim;
  dnnl::memory a, b, c;
  std::string impl;
};

// Primitives of the calling thread (each worker thread keeps its own), at most kMatmulCache of them.
constexpr size_t kMatmulCache = 512;

MatmulEntry& matmulFor(const MatmulKey& k) {
  thread_local std::unordered_map<MatmulKey, std::unique_ptr<MatmulEntry>, MatmulKeyHash> cache;
  auto it = cache.find(k);
  if (it != cache.end()) return *it->second;
  if (cache.size() >= kMatmulCache) cache.clear();
  using dt = dnnl::memory::data_type;
  const dt in = k.bf16 ? dt::bf16 : dt::f32;
  const dnnl::memory::desc a({k.M, k.K}, in, k.tA ? dnnl::memory::dims{1, k.lda} : dnnl::memory::dims{k.lda, 1});
  const dnnl::memory::desc b({k.K, k.N}, in, k.tB ? dnnl::memory::dims{1, k.ldb} : dnnl::memory::dims{k.ldb, 1});
  const dnnl::memory::desc c({k.M, k.N}, dt::f32, dnnl::memory::dims{k.ldc, 1});
  dnnl::primitive_attr attr;
  if (k.alpha != 1.0f) attr.set_output_scales(0, {k.alpha});
  if (k.beta != 0.0f) {
    dnnl::post_ops po;
    po.append_sum(k.beta);
    attr.set_post_ops(po);
  }
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, cpuEngine());
  auto e = std::make_unique<MatmulEntry>();
  e->prim = dnnl::matmul(pd);
  e->a = dnnl::memory(a, cpuEngine(), DNNL_MEMORY_NONE);
  e->b = dnnl::memory(b, cpuEngine(), DNNL_MEMORY_NONE);
  e->c = dnnl::memory(c, cpuEngine(), DNNL_MEMORY_NONE);
  e->impl = pd.impl_info_str();
  MatmulEntry& ref = *e;
  cache.emplace(k, std::move(e));
  return ref;
}

void matmulRun(const MatmulKey& k, const void* A, const void* B, float* C) {
  MatmulEntry& e = matmulFor(k);
  e.a.set_data_handle(const_cast<void*>(A));
  e.b.set_data_handle(const_cast<void*>(B));
  e.c.set_data_handle(C);
  SignalsBlocked quiet;
  e.prim.execute(cpuStream(), {{DNNL_ARG_SRC, e.a}, {DNNL_ARG_WEIGHTS, e.b}, {DNNL_ARG_DST, e.c}});
  cpuStream().wait();
}

void matmulGemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  matmulRun({tA, tB, M, N, K, lda, ldb, ldc, alpha, beta, false}, A, B, C);
}
#endif

#if defined(CAAT_HAVE_OPENBLAS)
void openblasGemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                  const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const int64_t lim = 0x7fffffff;
  if (M > lim || N > lim || K > lim || lda > lim || ldb > lim || ldc > lim) {
    throw std::runtime_error("gemm: dimensions exceed the 32-bit BLAS interface");
  }
  cblas_sgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans, (blasint)M, (blasint)N,
              (blasint)K, alpha, A, (blasint)lda, B, (blasint)ldb, beta, C, (blasint)ldc);
}
#endif

// Run `cols(j0, j1)` over the columns [0, N) of a skinny GEMM: split in multiples of 16 over the
// backend's threads when N is wide enough, else in this thread.
template <class F>
void overColumns(int64_t N, F&& cols) {
  const int nt = tThreads;
  if (nt > 1 && N >= 256 * nt) {
    SignalsBlocked quiet;  // OpenMP threads first created here must not take signals during oneDNN calls
#pragma omp parallel num_threads(nt)
    {
      const int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t chunk = (((N + T - 1) / T) + 15) & ~int64_t(15);
      const int64_t j0 = t * chunk, j1 = std::min(N, j0 + chunk);
      if (j0 < j1) cols(j0, j1);
    }
  } else {
    cols(0, N);
  }
}

void skinnyGemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
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
  overColumns(N, [&](int64_t j0, int64_t j1) { KT.skinnyGemm(tB, M, N, K, alpha, a, la, B, ldb, beta, C, ldc, j0, j1); });
}

// ---------------------------------------------------------------------------------------------
// Shape classes and the choice table
// ---------------------------------------------------------------------------------------------

// A class is (transposes, M bucket, size bucket of N·K):
//   M: 1 | 2..8 | 9..64 | > 64        N·K: ≤ 65536 | larger
// Each class has a representative shape that the choice is measured on (M 1, 8, 32, 512; N = K = 256
// or 1024; M 32 as a decode step of a batch of sequences). The skinny kernel is a candidate for M ≤ 8
// and, with B transposed (a weight matrix [N, K]), for M ≤ 64 (its medium-M kernel).
constexpr int kMBuckets = 4, kSBuckets = 2, kClasses = 4 * kMBuckets * kSBuckets;
constexpr int64_t kRepM[kMBuckets] = {1, 8, 32, 512};
constexpr int64_t kRepNK[kSBuckets] = {256, 1024};

int classOf(bool tA, bool tB, int64_t M, int64_t N, int64_t K) {
  const int mb = M <= 1 ? 0 : M <= 8 ? 1 : M <= 64 ? 2 : 3;
  const int sb = N * K <= 65536 ? 0 : 1;
  return (((tA ? 2 : 0) + (tB ? 1 : 0)) * kMBuckets + mb) * kSBuckets + sb;
}

// The parts of class c: tr (bit 1 transA, bit 0 transB), mb (M bucket), sb (size bucket).
struct ClassParts {
  int tr, mb, sb;
};
ClassParts classParts(int c) { return {c / (kSBuckets * kMBuckets), (c / kSBuckets) % kMBuckets, c % kSBuckets}; }

std::string className(int c) {
  const auto [tr, mb, sb] = classParts(c);
  static const char* const mName[kMBuckets] = {"m1", "m2-8", "m9-64", "m65+"};
  std::string s;
  s += (tr & 2) ? 'T' : 'N';
  s += (tr & 1) ? 'T' : 'N';
  return s + "_" + mName[mb] + (sb ? "_large" : "_small");
}

bool implEligible(int impl, int cls) {
  if (!implBuilt(impl)) return false;
  if (impl == kSkinny) {
    const auto [tr, mb, sb] = classParts(cls);
    (void)sb;
    return mb <= 1 || (mb == 2 && (tr & 1));
  }
  return true;
}

// Tables per thread count. Readers cache a pointer per OS thread and refresh it when the generation
// changes, so the common path takes no lock.
using Table = std::vector<int8_t>;
std::mutex gTablesMu;
std::map<int, std::shared_ptr<const Table>> gTables;
std::atomic<uint64_t> gTablesGen{1};

std::shared_ptr<const Table> tableFor(int threads) {
  thread_local uint64_t seenGen = 0;
  thread_local int seenThreads = -1;
  thread_local std::shared_ptr<const Table> cached;
  const uint64_t g = gTablesGen.load(std::memory_order_acquire);
  if (g != seenGen || threads != seenThreads) {
    std::lock_guard<std::mutex> lock(gTablesMu);
    auto it = gTables.find(threads);
    cached = it == gTables.end() ? nullptr : it->second;
    seenGen = gTablesGen.load(std::memory_order_relaxed);
    seenThreads = threads;
  }
  return cached;
}

// GEMM path test hook: 0 = as chosen, 1 = never the skinny kernel (the library GEMM instead), 2 = the
// skinny kernel always (any M; for tests and benchmarks).
std::atomic<int> gGemmPath{0};

// The implementation a call runs: `forced` (≥ 0) wins, else the table of the calling thread's thread
// count, else the built-in default (the first library, the skinny kernel for M ≤ 8). `fixedShape`
// false (attention's inner products, whose shapes change with every block and token) never uses the
// matmul primitive, which would build a primitive per shape.
int resolveImpl(int forced, bool tA, bool tB, int64_t M, int64_t N, int64_t K, bool fixedShape) {
  int impl = forced;
  if (impl < 0) {
    const auto t = tableFor(tThreads);
    impl = t ? (*t)[(size_t)classOf(tA, tB, M, N, K)] : (M <= 8 ? kSkinny : kDefaultBlas);
  }
  const int path = gGemmPath.load(std::memory_order_relaxed);
  if (path == 2) return kSkinny;
  if (impl == kSkinny && path == 1) impl = forced >= 0 && forced != kSkinny ? forced : kDefaultBlas;
  if (impl == kMatmul && !fixedShape) impl = kOneDnn;
  return impl;
}

void gemmF32(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
             const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int forced = -1, bool fixedShape = true) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; i++) {
      float* c = C + i * ldc;
      if (beta == 0.0f) std::fill(c, c + N, 0.0f);
      else for (int64_t j = 0; j < N; j++) c[j] *= beta;
    }
    return;
  }
  switch (resolveImpl(forced, tA, tB, M, N, K, fixedShape)) {
#if defined(CAAT_HAVE_ONEDNN)
    case kOneDnn: return onednnGemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    case kMatmul: return matmulGemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
#if defined(CAAT_HAVE_OPENBLAS)
    case kOpenBlas: return openblasGemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
    case kSkinny: return skinnyGemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    default: throw std::runtime_error("gemm: implementation not built into this addon");
  }
}

// ---------------------------------------------------------------------------------------------
// bfloat16
// ---------------------------------------------------------------------------------------------

// Round to nearest even; NaN stays a (quiet) NaN. Branch-free so that the compiler vectorises it
// (AVX2 and baseline clones, picked at load time).
__attribute__((target_clones("avx2", "default"))) void toBf16Impl(uint16_t* out, const float* x, int64_t n) {
  const uint32_t* b = reinterpret_cast<const uint32_t*>(x);
  for (int64_t i = 0; i < n; i++) {
    const uint32_t u = b[i];
    const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
    out[i] = (uint16_t)(nan ? ((u >> 16) | 0x40u) : r);
  }
}

__attribute__((target_clones("avx2", "default"))) void fromBf16Impl(float* out, const uint16_t* x, int64_t n) {
  uint32_t* o = reinterpret_cast<uint32_t*>(out);
  for (int64_t i = 0; i < n; i++) o[i] = (uint32_t)x[i] << 16;
}

// Widen the [rows, cols] block of a strided bf16 matrix into a packed float32 one.
void widenBf16(float* dst, const uint16_t* src, int64_t ld, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++) fromBf16Impl(dst + r * cols, src + r * ld, cols);
}

// C = alpha·A·Bᵀ + beta·C with A float32 [M, K] and B bf16 bit patterns [N, K] (weights kept in bf16
// for decoding): M ≤ 64 through the skinny kernel (its medium-M kernel above 8 rows) reading B at 2
// bytes per element (columns split over the threads as skinnyGemm does); larger M widens B exactly
// into a float32 buffer and runs the float32 dispatch, whose result then equals gemm on the widened
// weights.
void gemmBf16WImpl(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const uint16_t* B,
                   int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (M > 64 || K <= 0) {
    thread_local std::vector<float> wb;
    wb.resize((size_t)std::max<int64_t>(1, N * K));
    if (K > 0) widenBf16(wb.data(), B, ldb, N, K);
    gemmF32(false, true, M, N, K, alpha, A, lda, wb.data(), std::max<int64_t>(1, K), beta, C, ldc);
    return;
  }
  overColumns(N, [&](int64_t j0, int64_t j1) { KT.skinnyGemmBf16(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, j0, j1); });
}

// bf16 path: 0 automatic (the matmul primitive where the CPU has bf16 hardware, else widen to fp32),
// 1 always widen, 2 always the matmul primitive (whatever implementation oneDNN has; for tests).
std::atomic<int> gBf16Path{0};

#if defined(CAAT_HAVE_ONEDNN)
bool bf16Hardware() {
  const int isa = (int)dnnl_get_effective_cpu_isa();
  return (isa & (int)dnnl_cpu_isa_avx512_core_bf16) == (int)dnnl_cpu_isa_avx512_core_bf16 && isa != (int)dnnl_cpu_isa_avx2_vnni;
}
const char* cpuIsaName(int isa) {
  switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    default: return "unknown";
  }
}
#endif

bool bf16UsesMatmul() {
  const int p = gBf16Path.load(std::memory_order_relaxed);
#if defined(CAAT_HAVE_ONEDNN)
  return p == 2 || (p == 0 && bf16Hardware());
#else
  (void)p;
  return false;
#endif
}

void gemmBf16Impl(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A, int64_t lda,
                  const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc, int forced) {
  if (M <= 0 || N <= 0) return;
#if defined(CAAT_HAVE_ONEDNN)
  if (K > 0 && bf16UsesMatmul()) {
    matmulRun({tA, tB, M, N, K, lda, ldb, ldc, alpha, beta, true}, A, B, C);
    return;
  }
#endif
  // Widen exactly (the same packed operands as gemmBf16ViaF32 in src/backend/bf16.ts), then fp32.
  const int64_t ar = tA ? K : M, ac = tA ? M : K, br = tB ? N : K, bc = tB ? K : N;
  thread_local std::vector<float> wa, wb;
  wa.resize((size_t)std::max<int64_t>(1, ar * ac));
  wb.resize((size_t)std::max<int64_t>(1, br * bc));
  widenBf16(wa.data(), A, lda, ar, ac);
  widenBf16(wb.data(), B, ldb, br, bc);
  gemmF32(tA, tB, M, N, K, alpha, wa.data(), std::max<int64_t>(1, ac), wb.data(), std::max<int64_t>(1, bc), beta, C, ldc,
          forced);
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
  if (Tq == 1) {  // decoding: one fused pass over each sequence's keys and values for all heads
    for (int64_t b = 0; b < B; b++)
      KT.attnDecode(out + b * qRow, att + b * NH * Tk, q + b * qRow, k + b * kvBatchStride, v + b * kvBatchStride, Tk, NH,
                    NKV, HD, kvRow, scale);
    return;
  }
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
        gemmF32(false, true, rows, ncols, HD, 1.0f, qb + i0 * qRow, qRow, kb, kvRow, 0.0f, ab, Tk, -1, false);
        // row i0 + r sees keys 0 ..= past + i0 + r; the rest of the row becomes 0.
        KT.softmaxForward(ab, ab, rows, Tk, scale, Tq - i0);
        // out [rows, HD] = P [rows, ncols] · v [ncols, HD]
        gemmF32(false, false, rows, HD, ncols, 1.0f, ab, Tk, vb, kvRow, 0.0f, ob + i0 * qRow, qRow, -1, false);
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
        gemmF32(true, false, n, HD, rows, 1.0f, Pb, T, dOb, qRow, 1.0f, dv + kvOff, kvRow, -1, false);
        // dP[i0:i1, 0:n] = dO[i0:i1] · V[0:n]ᵀ
        gemmF32(false, true, rows, n, HD, 1.0f, dOb, qRow, v + kvOff, kvRow, 0.0f, dSb, T, -1, false);
        // dS = scale · P ⊙ (dP − rowsum(dP ⊙ P)); P is 0 beyond column n.
        for (int64_t r = 0; r < rows; r++) KT.softmaxBackward(dSb + r * T, dSb + r * T, Pb + r * T, 1, n, scale);
        // dQ[i0:i1] = dS[i0:i1, 0:n] · K[0:n]
        gemmF32(false, false, rows, HD, n, 1.0f, dSb, T, k + kvOff, kvRow, 0.0f, dq + qOff + i0 * qRow, qRow, -1, false);
        // dK[0:n] += dS[i0:i1, 0:n]ᵀ · Q[i0:i1]
        gemmF32(true, false, n, HD, rows, 1.0f, dSb, T, qbk, qRow, 1.0f, dk + kvOff, kvRow, -1, false);
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

// ---------------------------------------------------------------------------------------------
// Bindings
// ---------------------------------------------------------------------------------------------


struct U16 {
  uint16_t* p;
  int64_t n;
};

U16 u16(const Napi::CallbackInfo& info, size_t i, const char* kernel, const char* name) {
  napi_typedarray_type type;
  size_t len = 0;
  void* data = nullptr;
  if (i >= info.Length() ||
      napi_get_typedarray_info(info.Env(), info[i], &type, &len, &data, nullptr, nullptr) != napi_ok ||
      type != napi_uint16_array) {
    fail(info.Env(), kernel, std::string(name) + " must be a Uint16Array of bf16 bit patterns");
  }
  return {static_cast<uint16_t*>(data), (int64_t)len};
}

// An implementation id argument: -1 (or absent / undefined) = as the table says.
int implArg(const Napi::CallbackInfo& info, size_t i, const char* kernel) {
  if (i >= info.Length() || info[i].IsUndefined()) return -1;
  const double d = num(info, i, kernel);
  if (d == -1) return -1;
  if (!(d >= 0 && d < kImpls) || d != std::floor(d)) fail(info.Env(), kernel, "implementation id out of range");
  if (!implBuilt((int)d)) fail(info.Env(), kernel, std::string(kImplNames[(int)d]) + " is not built into this addon");
  return (int)d;
}

void checkSpans(const Napi::CallbackInfo& info, const char* k, bool tA, bool tB, int64_t M, int64_t N, int64_t K,
                int64_t nA, int64_t offA, int64_t lda, int64_t nB, int64_t offB, int64_t ldb, int64_t nC, int64_t offC,
                int64_t ldc) {
  const int64_t ar = tA ? K : M, ac = tA ? M : K, br = tB ? N : K, bc = tB ? K : N;
  if (lda < std::max<int64_t>(1, ac) || ldb < std::max<int64_t>(1, bc) || ldc < std::max<int64_t>(1, N)) {
    fail(info.Env(), k, "leading dimension smaller than the row length");
  }
  if (M > 0 && N > 0) {
    need(info, k, "A", nA, span(ar, ac, lda, offA));
    need(info, k, "B", nB, span(br, bc, ldb, offB));
    need(info, k, "C", nC, span(M, N, ldc, offC));
  }
}

// gemm(tA, tB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc, impl?)
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
  const int impl = implArg(info, 16, k);
  checkSpans(info, k, tA, tB, M, N, K, A.n, offA, lda, B.n, offB, ldb, C.n, offC, ldc);
  try {
    gemmF32(tA, tB, M, N, K, alpha, A.p + offA, lda, B.p + offB, ldb, beta, C.p + offC, ldc, impl);
  } catch (const std::exception& e) {
    fail(info.Env(), k, e.what());
  }
  return info.Env().Undefined();
}

// gemmBf16(tA, tB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc, impl?): A and B
// Uint16Arrays of bf16 bits, C a Float32Array. `impl` forces the fp32 GEMM of the widening path.
Napi::Value GemmBf16(const Napi::CallbackInfo& info) {
  const char* k = "gemmBf16";
  const bool tA = flag(info, 0), tB = flag(info, 1);
  const int64_t M = dim(info, 2, k), N = dim(info, 3, k), K = dim(info, 4, k);
  const float alpha = (float)num(info, 5, k);
  const U16 A = u16(info, 6, k, "A");
  const int64_t offA = dim(info, 7, k), lda = dim(info, 8, k);
  const U16 B = u16(info, 9, k, "B");
  const int64_t offB = dim(info, 10, k), ldb = dim(info, 11, k);
  const float beta = (float)num(info, 12, k);
  const F32 C = f32(info, 13, k, "C");
  const int64_t offC = dim(info, 14, k), ldc = dim(info, 15, k);
  const int impl = implArg(info, 16, k);
  checkSpans(info, k, tA, tB, M, N, K, A.n, offA, lda, B.n, offB, ldb, C.n, offC, ldc);
  if (K == 0) {  // C = beta·C, as gemm
    gemmF32(tA, tB, M, N, 0, alpha, nullptr, std::max<int64_t>(1, tA ? M : 0), nullptr, 1, beta, C.p + offC, ldc);
    return info.Env().Undefined();
  }
  try {
    gemmBf16Impl(tA, tB, M, N, K, alpha, A.p + offA, lda, B.p + offB, ldb, beta, C.p + offC, ldc, impl);
  } catch (const std::exception& e) {
    fail(info.Env(), k, e.what());
  }
  return info.Env().Undefined();
}

// gemmBf16W(M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc): C = alpha·A·Bᵀ + beta·C,
// A and C Float32Arrays, B a Uint16Array of bf16 bits stored [N, K] (see gemmBf16WImpl).
Napi::Value GemmBf16W(const Napi::CallbackInfo& info) {
  const char* k = "gemmBf16W";
  const int64_t M = dim(info, 0, k), N = dim(info, 1, k), K = dim(info, 2, k);
  const float alpha = (float)num(info, 3, k);
  const F32 A = f32(info, 4, k, "A");
  const int64_t offA = dim(info, 5, k), lda = dim(info, 6, k);
  const U16 B = u16(info, 7, k, "B");
  const int64_t offB = dim(info, 8, k), ldb = dim(info, 9, k);
  const float beta = (float)num(info, 10, k);
  const F32 C = f32(info, 11, k, "C");
  const int64_t offC = dim(info, 12, k), ldc = dim(info, 13, k);
  checkSpans(info, k, false, true, M, N, K, A.n, offA, lda, B.n, offB, ldb, C.n, offC, ldc);
  try {
    gemmBf16WImpl(M, N, K, alpha, A.p + offA, lda, B.p + offB, ldb, beta, C.p + offC, ldc);
  } catch (const std::exception& e) {
    fail(info.Env(), k, e.what());
  }
  return info.Env().Undefined();
}

double medianOf(std::vector<double>& t) {
  std::sort(t.begin(), t.end());
  const size_t n = t.size();
  return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

// gemmTimedInC(transA, transB, M, N, K, A, B, C, repeats, impl?): C = op(A)·op(B) with packed operands
// (lda, ldb, ldc the stored row lengths), through the same dispatch as gemm (or the forced
// implementation), `repeats` times (no warm-up call: the caller warms up). Returns the median seconds
// of one call, timed with a monotonic clock.
Napi::Value GemmTimedInC(const Napi::CallbackInfo& info) {
  const char* k = "gemmTimedInC";
  const bool tA = flag(info, 0), tB = flag(info, 1);
  const int64_t M = dim(info, 2, k), N = dim(info, 3, k), K = dim(info, 4, k);
  const F32 A = f32(info, 5, k, "A"), B = f32(info, 6, k, "B"), C = f32(info, 7, k, "C");
  const int64_t reps = std::max<int64_t>(1, dim(info, 8, k));
  const int impl = implArg(info, 9, k);
  const int64_t lda = std::max<int64_t>(1, tA ? M : K), ldb = std::max<int64_t>(1, tB ? K : N), ldc = std::max<int64_t>(1, N);
  checkSpans(info, k, tA, tB, M, N, K, A.n, 0, lda, B.n, 0, ldb, C.n, 0, ldc);
  std::vector<double> t((size_t)reps);
  try {
    for (int64_t r = 0; r < reps; r++) {
      const auto t0 = std::chrono::steady_clock::now();
      gemmF32(tA, tB, M, N, K, 1.0f, A.p, lda, B.p, ldb, 0.0f, C.p, ldc, impl);
      const auto t1 = std::chrono::steady_clock::now();
      t[(size_t)r] = std::chrono::duration<double>(t1 - t0).count();
    }
  } catch (const std::exception& e) {
    fail(info.Env(), k, e.what());
  }
  return Napi::Number::New(info.Env(), medianOf(t));
}

// gemmBf16TimedInC(transA, transB, M, N, K, A, B, C, repeats): as gemmTimedInC for gemmBf16.
Napi::Value GemmBf16TimedInC(const Napi::CallbackInfo& info) {
  const char* k = "gemmBf16TimedInC";
  const bool tA = flag(info, 0), tB = flag(info, 1);
  const int64_t M = dim(info, 2, k), N = dim(info, 3, k), K = dim(info, 4, k);
  const U16 A = u16(info, 5, k, "A"), B = u16(info, 6, k, "B");
  const F32 C = f32(info, 7, k, "C");
  const int64_t reps = std::max<int64_t>(1, dim(info, 8, k));
  const int64_t lda = std::max<int64_t>(1, tA ? M : K), ldb = std::max<int64_t>(1, tB ? K : N), ldc = std::max<int64_t>(1, N);
  checkSpans(info, k, tA, tB, M, N, K, A.n, 0, lda, B.n, 0, ldb, C.n, 0, ldc);
  if (K == 0) fail(info.Env(), k, "K must be positive");
  std::vector<double> t((size_t)reps);
  try {
    for (int64_t r = 0; r < reps; r++) {
      const auto t0 = std::chrono::steady_clock::now();
      gemmBf16Impl(tA, tB, M, N, K, 1.0f, A.p, lda, B.p, ldb, 0.0f, C.p, ldc, -1);
      const auto t1 = std::chrono::steady_clock::now();
      t[(size_t)r] = std::chrono::duration<double>(t1 - t0).count();
    }
  } catch (const std::exception& e) {
    fail(info.Env(), k, e.what());
  }
  return Napi::Number::New(info.Env(), medianOf(t));
}

Napi::Value ToBf16(const Napi::CallbackInfo& info) {
  const char* k = "toBf16";
  const U16 out = u16(info, 0, k, "out");
  const F32 x = f32(info, 1, k, "x");
  const int64_t n = dim(info, 2, k);
  need(info, k, "out", out.n, n);
  need(info, k, "x", x.n, n);
  toBf16Impl(out.p, x.p, n);
  return info.Env().Undefined();
}

Napi::Value FromBf16(const Napi::CallbackInfo& info) {
  const char* k = "fromBf16";
  const F32 out = f32(info, 0, k, "out");
  const U16 x = u16(info, 1, k, "x");
  const int64_t n = dim(info, 2, k);
  need(info, k, "out", out.n, n);
  need(info, k, "x", x.n, n);
  fromBf16Impl(out.p, x.p, n);
  return info.Env().Undefined();
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

// setGemmPath(mode): 0 as chosen, 1 never the skinny kernel, 2 the skinny kernel always (tests, benchmarks).
Napi::Value SetGemmPath(const Napi::CallbackInfo& info) {
  const int64_t m = dim(info, 0, "setGemmPath");
  if (m > 2) fail(info.Env(), "setGemmPath", "mode must be 0 (auto), 1 (BLAS) or 2 (skinny)");
  gGemmPath.store((int)m);
  return info.Env().Undefined();
}

// setBf16Path(mode): 0 automatic, 1 always widen to fp32, 2 always the oneDNN matmul primitive (tests).
Napi::Value SetBf16Path(const Napi::CallbackInfo& info) {
  const int64_t m = dim(info, 0, "setBf16Path");
  if (m > 2) fail(info.Env(), "setBf16Path", "mode must be 0 (auto), 1 (widen) or 2 (matmul)");
#if !defined(CAAT_HAVE_ONEDNN)
  if (m == 2) fail(info.Env(), "setBf16Path", "the matmul primitive needs oneDNN, which this addon is built without");
#endif
  gBf16Path.store((int)m);
  return info.Env().Undefined();
}

// gemmClasses(): [{ name, transA, transB, M, N, K, candidates: [impl ids] }] with the representative shape.
Napi::Value GemmClasses(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array arr = Napi::Array::New(env, kClasses);
  for (int c = 0; c < kClasses; c++) {
    const auto [tr, mb, sb] = classParts(c);
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", className(c));
    o.Set("transA", (tr & 2) != 0);
    o.Set("transB", (tr & 1) != 0);
    o.Set("M", (double)kRepM[mb]);
    o.Set("N", (double)kRepNK[sb]);
    o.Set("K", (double)kRepNK[sb]);
    Napi::Array cand = Napi::Array::New(env);
    uint32_t j = 0;
    for (int i = 0; i < kImpls; i++) if (implEligible(i, c)) cand.Set(j++, i);
    o.Set("candidates", cand);
    arr.Set((uint32_t)c, o);
  }
  return arr;
}

// gemmImpls(): the implementation names by id, and which are built into this addon.
Napi::Value GemmImpls(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array arr = Napi::Array::New(env, kImpls);
  for (int i = 0; i < kImpls; i++) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("id", i);
    o.Set("name", kImplNames[i]);
    o.Set("built", implBuilt(i));
    arr.Set((uint32_t)i, o);
  }
  return arr;
}

// setGemmTable(threads, table | null): install (or remove) the choice for `threads` threads, one
// implementation id per class (an Int32Array of gemmClasses().length entries).
Napi::Value SetGemmTable(const Napi::CallbackInfo& info) {
  const char* k = "setGemmTable";
  const int64_t threads = dim(info, 0, k);
  if (threads < 1 || threads > 1024) fail(info.Env(), k, "threads must be between 1 and 1024");
  std::shared_ptr<const Table> t;
  if (info.Length() > 1 && !info[1].IsNull() && !info[1].IsUndefined()) {
    const I32 a = i32(info, 1, k, "table");
    if (a.n != kClasses) fail(info.Env(), k, "table must have " + std::to_string(kClasses) + " entries");
    auto tab = std::make_shared<Table>((size_t)kClasses);
    for (int c = 0; c < kClasses; c++) {
      if (!implEligible(a.p[c], c)) fail(info.Env(), k, "entry " + std::to_string(c) + " (" + className(c) + ") names an implementation that is not a candidate");
      (*tab)[(size_t)c] = (int8_t)a.p[c];
    }
    t = tab;
  }
  {
    std::lock_guard<std::mutex> lock(gTablesMu);
    if (t) gTables[(int)threads] = t;
    else gTables.erase((int)threads);
  }
  gTablesGen.fetch_add(1, std::memory_order_acq_rel);
  return info.Env().Undefined();
}

// gemmTables(): { [threads]: [impl id per class] } of every installed table.
Napi::Value GemmTables(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  std::lock_guard<std::mutex> lock(gTablesMu);
  for (const auto& [threads, t] : gTables) {
    Napi::Array a = Napi::Array::New(env, t->size());
    for (size_t c = 0; c < t->size(); c++) a.Set((uint32_t)c, (int)(*t)[c]);
    o.Set(std::to_string(threads), a);
  }
  return o;
}

// gemmResolve(tA, tB, M, N, K, impl?): [class index, the implementation id a gemm call would run].
Napi::Value GemmResolve(const Napi::CallbackInfo& info) {
  const char* k = "gemmResolve";
  const bool tA = flag(info, 0), tB = flag(info, 1);
  const int64_t M = dim(info, 2, k), N = dim(info, 3, k), K = dim(info, 4, k);
  const int impl = implArg(info, 5, k);
  Napi::Array a = Napi::Array::New(info.Env(), 2);
  a.Set(0u, classOf(tA, tB, M, N, K));
  a.Set(1u, resolveImpl(impl, tA, tB, M, N, K, true));
  return a;
}

// bf16Info(): how gemmBf16 runs here: { path: 'matmul' | 'widen', hardware, isa, impl }. `impl` is the
// implementation oneDNN picks for a bf16 matmul (probed on a 64³ product), or null.
Napi::Value Bf16Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("path", bf16UsesMatmul() ? "matmul" : "widen");
#if defined(CAAT_HAVE_ONEDNN)
  o.Set("hardware", bf16Hardware());
  o.Set("isa", cpuIsaName((int)dnnl_get_effective_cpu_isa()));
  try {
    o.Set("impl", matmulFor({false, true, 64, 64, 64, 64, 64, 64, 1.0f, 0.0f, true}).impl);
  } catch (const std::exception&) {
    o.Set("impl", env.Null());
  }
#else
  o.Set("hardware", false);
  o.Set("isa", env.Null());
  o.Set("impl", env.Null());
#endif
  return o;
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  Napi::Object libs = Napi::Object::New(env);
  std::string primary, version, config;
  Napi::Value corename = env.Null();
#if defined(CAAT_HAVE_OPENBLAS)
  {
    const std::string cfg = openblas_get_config();
    std::string v = cfg;
    const size_t sp = cfg.find(' ');
    if (sp != std::string::npos) {
      const size_t e = cfg.find(' ', sp + 1);
      v = cfg.substr(sp + 1, e == std::string::npos ? std::string::npos : e - sp - 1);
    }
    libs.Set("openblas", v);
    corename = Napi::String::New(env, openblas_get_corename());
    primary = "openblas";
    version = v;
    config = cfg;
  }
#else
  libs.Set("openblas", env.Null());
#endif
#if defined(CAAT_HAVE_ONEDNN)
  {
    const dnnl_version_t* ver = dnnl_version();
    const std::string v = std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." + std::to_string(ver->patch);
    libs.Set("onednn", v);
    const std::string cfg = std::string("oneDNN ") + (ver->hash ? ver->hash : "") + " cpu_runtime=" + std::to_string(ver->cpu_runtime);
    config = config.empty() ? cfg : cfg + "; " + config;
    primary = "onednn";
    version = v;
  }
#else
  libs.Set("onednn", env.Null());
#endif
  o.Set("blas", primary);
  o.Set("version", version);
  o.Set("config", config);
  o.Set("libraries", libs);
  o.Set("corename", corename);
  o.Set("threads", tThreads);
  o.Set("libraryThreads", omp_get_max_threads());
  o.Set("isa", KT.isa);
  o.Set("gemmPath", gGemmPath.load());
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  setThreadsImpl(1);
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("bf16Info", Napi::Function::New(env, Bf16Info, "bf16Info"));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads, "setThreads"));
  exports.Set("setGemmPath", Napi::Function::New(env, SetGemmPath, "setGemmPath"));
  exports.Set("setBf16Path", Napi::Function::New(env, SetBf16Path, "setBf16Path"));
  exports.Set("gemmClasses", Napi::Function::New(env, GemmClasses, "gemmClasses"));
  exports.Set("gemmImpls", Napi::Function::New(env, GemmImpls, "gemmImpls"));
  exports.Set("setGemmTable", Napi::Function::New(env, SetGemmTable, "setGemmTable"));
  exports.Set("gemmTables", Napi::Function::New(env, GemmTables, "gemmTables"));
  exports.Set("gemmResolve", Napi::Function::New(env, GemmResolve, "gemmResolve"));
  exports.Set("gemm", Napi::Function::New(env, Gemm, "gemm"));
  exports.Set("gemmTimedInC", Napi::Function::New(env, GemmTimedInC, "gemmTimedInC"));
  exports.Set("gemmBf16", Napi::Function::New(env, GemmBf16, "gemmBf16"));
  exports.Set("gemmBf16TimedInC", Napi::Function::New(env, GemmBf16TimedInC, "gemmBf16TimedInC"));
  exports.Set("gemmBf16W", Napi::Function::New(env, GemmBf16W, "gemmBf16W"));
  exports.Set("toBf16", Napi::Function::New(env, ToBf16, "toBf16"));
  exports.Set("fromBf16", Napi::Function::New(env, FromBf16, "fromBf16"));
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
