// caatnet MPI addon: the collectives of the MPI transport (src/tp/mpi.ts), one rank per process.
//
// THREADS. MPI is initialised with MPI_Init_thread(MPI_THREAD_SERIALIZED) on the JavaScript main
// thread. A large collective runs on a libuv pool thread (Napi::AsyncWorker, so the event loop keeps
// running while MPI blocks), a small one synchronously on the main thread: MPI is therefore called from
// more than one thread, which MPI_THREAD_FUNNELED (only the thread that initialised MPI may call it)
// does not allow. The calls are never concurrent (the TypeScript side keeps at most one collective in
// flight, and this file refuses a second one), which is exactly what MPI_THREAD_SERIALIZED promises;
// MPI_THREAD_MULTIPLE is not needed and costs locking inside the library. If the library provides less
// than SERIALIZED, `init` reports it and the TypeScript side runs every collective synchronously on the
// main thread (FUNNELED semantics). The one exception is `abort` (MPI_Abort), an emergency exit that
// may be called while a collective is blocked on a pool thread.
//
// FIXED REDUCTION ORDER. MPI_Allreduce and MPI_Reduce_scatter combine contributions in an order of the
// library's choosing, so their sums may differ between ranks, runs and MPI implementations. Nothing
// here uses MPI's arithmetic: data moves as raw values (MPI_Alltoallv / MPI_Allgatherv / MPI_Bcast)
// and every sum or maximum is computed here in rank order, ((x0 + x1) + x2) + …, rounded in the element
// type after every addition, which gives the same bits as the virtual and threads transports
// (src/tp/transport-common.ts). Max follows JavaScript's Math.max: NaN if any input is NaN, +0 over -0.
// - all-reduce of fewer than 4 KiB per rank: MPI_Allgather of the whole region, then every rank
//   reduces the N copies in rank order itself (the same computation on every rank: the same bits).
// - larger all-reduce of n elements: chunk c (of N near-equal chunks, 16-element aligned) of every rank is
//   sent to rank c with MPI_Alltoallv; rank c reduces its chunk in rank order; MPI_Allgatherv (in
//   place) returns every reduced chunk to every rank. Per rank this moves 2·(N−1)/N·n elements, the
//   same as a ring all-reduce.
// - reduce-scatter: MPI_Alltoallv of the N input blocks, then the rank-order sum of the received blocks.
// - all-gather: MPI_Allgather (MPI_IN_PLACE when the input is this rank's block of the output).
// - broadcast: MPI_Bcast.
//
// MISMATCH CHECK. Every collective starts with an MPI_Allgather of a 128-byte header (sequence number,
// kind, op, element type, count, root, tag) written by the TypeScript side. If any rank's header
// differs from rank 0's, every rank returns status 1 without moving data, and the TypeScript side names
// the ranks and both calls. That all-gather completes only once every rank has entered it, so it is
// also the barrier.
//
// ERRORS. MPI_COMM_WORLD gets MPI_ERRORS_RETURN; the collectives use a duplicate of it (which inherits
// the handler). A failing MPI call becomes a JavaScript Error "<MPI function> failed: <MPI_Error_string>"
// (thrown, or the rejection of the returned promise).
#include <dlfcn.h>
#include <stdlib.h>

// The C API only (Open MPI and MPICH otherwise pull in their deprecated C++ bindings).
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <napi.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace {

// Codes shared with src/tp/mpi.ts.
enum Kind { KIND_BARRIER = 0, KIND_ALLREDUCE = 1, KIND_REDUCESCATTER = 2, KIND_ALLGATHER = 3, KIND_BROADCAST = 4 };
enum Op { OP_SUM = 0, OP_MAX = 1 };
enum Status { STATUS_OK = 0, STATUS_MISMATCH = 1 };
constexpr size_t kHeaderBytes = 128;

struct Global {
  bool initialized = false;
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0;
  int size = 1;
  int provided = MPI_THREAD_SINGLE;
  // Receive buffer of the all-to-all steps, reused across calls (one collective at a time).
  std::vector<unsigned char> scratch;
  std::atomic<bool> busy{false};
};
Global g;

struct MpiFailure {
  std::string message;
};

std::string mpiErrorText(const char* fn, int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS || len <= 0) {
    return std::string(fn) + " failed with MPI error code " + std::to_string(code);
  }
  return std::string(fn) + " failed: " + std::string(text, static_cast<size_t>(len));
}

inline void check(int rc, const char* fn) {
  if (rc != MPI_SUCCESS) throw MpiFailure{mpiErrorText(fn, rc)};
}

const char* threadLevelName(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "single";
    case MPI_THREAD_FUNNELED: return "funneled";
    case MPI_THREAD_SERIALIZED: return "serialized";
    case MPI_THREAD_MULTIPLE: return "multiple";
    default: return "unknown";
  }
}

std::string libraryVersion() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  if (MPI_Get_library_version(text, &len) != MPI_SUCCESS || len <= 0) return "unknown MPI library";
  std::string s(text, static_cast<size_t>(len));
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\0')) s.pop_back();
  const size_t nl = s.find('\n');  // keep the first line (Open MPI appends build details)
  if (nl != std::string::npos) s.resize(nl);
  const size_t comma = s.find(", package:");
  if (comma != std::string::npos) s.resize(comma);
  return s;
}

// Node loads addons with RTLD_LOCAL, so libmpi's symbols are not visible to the plugins Open MPI
// dlopen()s during MPI_Init. Re-open the already loaded library with RTLD_GLOBAL (no-op for MPICH).
void promoteLibmpiToGlobal() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&MPI_Init_thread), &info) != 0 && info.dli_fname != nullptr) {
    dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
  }
}

// ---------------------------------------------------------------------------------------------
// Rank-order reductions
// ---------------------------------------------------------------------------------------------

// The NaN the FPU produces for an invalid operation (x86: the negative quiet NaN, 0xFFC00000 /
// 0xFFF8000000000000), which is what V8's Math.max returns for a NaN operand; computed at run time so
// it matches the machine.
template <typename T>
T defaultNaN() {
  volatile T zero = 0;
  return zero / zero;
}
const float kNaN32 = defaultNaN<float>();
const double kNaN64 = defaultNaN<double>();
template <typename T>
inline T nanOf();
template <>
inline float nanOf<float>() {
  return kNaN32;
}
template <>
inline double nanOf<double>() {
  return kNaN64;
}

// Math.max semantics: NaN if either is NaN; +0 over -0; otherwise the larger.
template <typename T>
inline T jsMax(T a, T b) {
  if (a != a || b != b) return nanOf<T>();
  if (a == b) return std::signbit(a) ? b : a;
  return a > b ? a : b;
}

// dst[i] = op over r = 0 … nsrc−1 (in that order) of srcs[r][i], i in [0, len). Works in blocks through
// a local accumulator, so dst may alias any one source exactly (same address).
template <typename T>
void reduceRankOrder(T* dst, const std::vector<const T*>& srcs, int64_t len, int op) {
  constexpr int64_t B = 1024;
  alignas(64) T acc[B];
  const size_t nsrc = srcs.size();
  for (int64_t i0 = 0; i0 < len; i0 += B) {
    const int64_t m = std::min(B, len - i0);
    const T* a = srcs[0] + i0;
    if (nsrc == 1) {
      std::memcpy(acc, a, static_cast<size_t>(m) * sizeof(T));
    } else {
      const T* b = srcs[1] + i0;
      if (op == OP_SUM) {
        for (int64_t i = 0; i < m; i++) acc[i] = a[i] + b[i];
        for (size_t r = 2; r < nsrc; r++) {
          const T* s = srcs[r] + i0;
          for (int64_t i = 0; i < m; i++) acc[i] = acc[i] + s[i];
        }
      } else {
        for (int64_t i = 0; i < m; i++) acc[i] = jsMax(a[i], b[i]);
        for (size_t r = 2; r < nsrc; r++) {
          const T* s = srcs[r] + i0;
          for (int64_t i = 0; i < m; i++) acc[i] = jsMax(acc[i], s[i]);
        }
      }
    }
    std::memcpy(dst + i0, acc, static_cast<size_t>(m) * sizeof(T));
  }
}

unsigned char* scratchBytes(size_t bytes) {
  if (g.scratch.size() < bytes) {
    g.scratch.clear();
    g.scratch.shrink_to_fit();
    g.scratch.resize(bytes);
  }
  return g.scratch.data();
}

bool overlaps(const void* a, size_t aBytes, const void* b, size_t bBytes) {
  const auto pa = reinterpret_cast<uintptr_t>(a);
  const auto pb = reinterpret_cast<uintptr_t>(b);
  return aBytes > 0 && bBytes > 0 && pa < pb + bBytes && pb < pa + aBytes;
}

// ---------------------------------------------------------------------------------------------
// Collectives
// ---------------------------------------------------------------------------------------------

struct Job {
  int kind = KIND_BARRIER;
  int op = OP_SUM;
  bool f64 = false;
  int64_t n = 0;  // per-rank element count (region length, reduce-scatter output, all-gather input)
  int root = 0;
  unsigned char* buf = nullptr;  // allReduce/broadcast: the region; reduceScatter/allGather: the output
  unsigned char* inp = nullptr;  // reduceScatter/allGather: the input
  const unsigned char* header = nullptr;  // this rank's header (kHeaderBytes)
  unsigned char* headers = nullptr;       // every rank's header (size · kHeaderBytes)
};

// All-reduces of fewer than this many bytes per rank use one MPI_Allgather of the whole region and a
// local rank-order reduction on every rank: one message latency instead of two. Measured with Open
// MPI's shared-memory transport (vader), whose eager limit is 4 KiB: below it the all-gather wins
// (2.0-2.9 us vs 2.7-3.8 us for 16 B-2 KiB); at 4 KiB a whole-region message no longer goes eagerly
// and the two-step algorithm, with half-size messages, wins (4.5 us vs 6.0 us).
constexpr size_t kSmallAllReduceBytes = 4096;

template <typename T>
void allReduceT(const Job& j, MPI_Datatype dt) {
  const int N = g.size;
  const int me = g.rank;
  const int64_t n = j.n;
  T* buf = reinterpret_cast<T*>(j.buf);
  if (static_cast<size_t>(n) * sizeof(T) < kSmallAllReduceBytes) {
    T* all = reinterpret_cast<T*>(scratchBytes(static_cast<size_t>(N) * static_cast<size_t>(n) * sizeof(T)));
    check(MPI_Allgather(buf, static_cast<int>(n), dt, all, static_cast<int>(n), dt, g.comm), "MPI_Allgather");
    std::vector<const T*> srcs(N);
    for (int r = 0; r < N; r++) srcs[r] = all + static_cast<int64_t>(r) * n;
    reduceRankOrder<T>(buf, srcs, n, j.op);
    return;
  }
  int64_t chunk = (n + N - 1) / N;
  chunk = (chunk + 15) & ~int64_t{15};
  std::vector<int> cnt(N), dsp(N), scnt(N), rcnt(N), rdsp(N);
  for (int r = 0; r < N; r++) {
    const int64_t start = std::min(n, r * chunk);
    const int64_t end = std::min(n, start + chunk);
    cnt[r] = static_cast<int>(end - start);
    dsp[r] = static_cast<int>(start);
  }
  const int mine = cnt[me];
  for (int r = 0; r < N; r++) {
    scnt[r] = r == me ? 0 : cnt[r];  // this rank's own chunk stays in place
    rcnt[r] = r == me ? 0 : mine;
    rdsp[r] = r * mine;
  }
  T* recv = reinterpret_cast<T*>(scratchBytes(static_cast<size_t>(N) * static_cast<size_t>(mine) * sizeof(T) + sizeof(T)));
  check(MPI_Alltoallv(buf, scnt.data(), dsp.data(), dt, recv, rcnt.data(), rdsp.data(), dt, g.comm), "MPI_Alltoallv");
  if (mine > 0) {
    std::vector<const T*> srcs(N);
    for (int r = 0; r < N; r++) srcs[r] = r == me ? buf + dsp[me] : recv + static_cast<int64_t>(r) * mine;
    reduceRankOrder<T>(buf + dsp[me], srcs, mine, j.op);
  }
  check(MPI_Allgatherv(MPI_IN_PLACE, 0, dt, buf, cnt.data(), dsp.data(), dt, g.comm), "MPI_Allgatherv");
}

template <typename T>
void reduceScatterT(const Job& j, MPI_Datatype dt) {
  const int N = g.size;
  const int me = g.rank;
  const int n = static_cast<int>(j.n);
  T* out = reinterpret_cast<T*>(j.buf);
  const T* inp = reinterpret_cast<const T*>(j.inp);
  const T* own = inp + static_cast<int64_t>(me) * n;
  const size_t blockBytes = static_cast<size_t>(n) * sizeof(T);
  // The own block is read in place unless the output partially overlaps it.
  const bool ownInPlace = !(overlaps(out, blockBytes, own, blockBytes) && static_cast<const T*>(out) != own);
  std::vector<int> cnt(N), sdsp(N), rdsp(N);
  for (int r = 0; r < N; r++) {
    cnt[r] = (r == me && ownInPlace) ? 0 : n;
    sdsp[r] = r * n;
    rdsp[r] = r * n;
  }
  T* recv = reinterpret_cast<T*>(scratchBytes(static_cast<size_t>(N) * blockBytes + sizeof(T)));
  check(MPI_Alltoallv(inp, cnt.data(), sdsp.data(), dt, recv, cnt.data(), rdsp.data(), dt, g.comm), "MPI_Alltoallv");
  std::vector<const T*> srcs(N);
  for (int r = 0; r < N; r++) srcs[r] = (r == me && ownInPlace) ? own : recv + static_cast<int64_t>(r) * n;
  reduceRankOrder<T>(out, srcs, n, OP_SUM);
}

void allGather(const Job& j, MPI_Datatype dt, size_t esize) {
  const int N = g.size;
  const int n = static_cast<int>(j.n);
  const size_t blockBytes = static_cast<size_t>(n) * esize;
  unsigned char* out = j.buf;
  const unsigned char* own = out + static_cast<size_t>(g.rank) * blockBytes;
  if (j.inp == own) {
    check(MPI_Allgather(MPI_IN_PLACE, 0, dt, out, n, dt, g.comm), "MPI_Allgather");
    return;
  }
  const void* src = j.inp;
  if (overlaps(j.inp, blockBytes, out, static_cast<size_t>(N) * blockBytes)) {
    unsigned char* tmp = scratchBytes(blockBytes);
    std::memcpy(tmp, j.inp, blockBytes);
    src = tmp;
  }
  check(MPI_Allgather(src, n, dt, out, n, dt, g.comm), "MPI_Allgather");
}

// Runs one collective (header exchange first). Returns a Status; throws MpiFailure.
int runJob(const Job& j) {
  check(MPI_Allgather(j.header, static_cast<int>(kHeaderBytes), MPI_BYTE, j.headers, static_cast<int>(kHeaderBytes), MPI_BYTE,
                      g.comm),
        "MPI_Allgather (collective header)");
  for (int r = 1; r < g.size; r++) {
    if (std::memcmp(j.headers, j.headers + static_cast<size_t>(r) * kHeaderBytes, kHeaderBytes) != 0) return STATUS_MISMATCH;
  }
  if (j.kind == KIND_BARRIER || j.n == 0) return STATUS_OK;
  const MPI_Datatype dt = j.f64 ? MPI_DOUBLE : MPI_FLOAT;
  switch (j.kind) {
    case KIND_ALLREDUCE:
      if (j.f64) allReduceT<double>(j, dt);
      else allReduceT<float>(j, dt);
      break;
    case KIND_REDUCESCATTER:
      if (j.f64) reduceScatterT<double>(j, dt);
      else reduceScatterT<float>(j, dt);
      break;
    case KIND_ALLGATHER:
      allGather(j, dt, j.f64 ? 8 : 4);
      break;
    case KIND_BROADCAST:
      check(MPI_Bcast(j.buf, static_cast<int>(j.n), dt, j.root, g.comm), "MPI_Bcast");
      break;
    default:
      throw MpiFailure{"unknown collective kind " + std::to_string(j.kind)};
  }
  return STATUS_OK;
}

// ---------------------------------------------------------------------------------------------
// N-API
// ---------------------------------------------------------------------------------------------

struct View {
  unsigned char* data = nullptr;
  size_t bytes = 0;
  napi_typedarray_type type = napi_uint8_array;
};

View viewOf(const Napi::Env& env, const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray()) throw Napi::TypeError::New(env, std::string(what) + " must be a typed array");
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  napi_value ab;
  size_t off = 0;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, &ab, &off) != napi_ok) {
    throw Napi::TypeError::New(env, std::string(what) + ": cannot read the typed array");
  }
  size_t esize = 1;
  if (type == napi_float32_array) esize = 4;
  else if (type == napi_float64_array) esize = 8;
  View out;
  out.data = static_cast<unsigned char*>(data);
  out.bytes = length * esize;
  out.type = type;
  return out;
}

void requireInit(const Napi::Env& env) {
  int fin = 0;
  MPI_Finalized(&fin);
  if (!g.initialized || fin) throw Napi::Error::New(env, fin ? "MPI is finalized" : "MPI is not initialized (call init first)");
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int inited = 0;
  int fin = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&fin);
  int major = 0;
  int minor = 0;
  MPI_Get_version(&major, &minor);
  Napi::Object o = Napi::Object::New(env);
  o.Set("library", libraryVersion());
  o.Set("standard", std::to_string(major) + "." + std::to_string(minor));
  o.Set("initialized", inited != 0);
  o.Set("finalized", fin != 0);
  return o;
}

Napi::Value Init(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fin = 0;
  MPI_Finalized(&fin);
  if (fin) throw Napi::Error::New(env, "MPI was already finalized in this process; it cannot be initialized again");
  if (!g.initialized) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      promoteLibmpiToGlobal();
      // Open MPI's shared-memory transport (vader) copies large messages with CMA
      // (process_vm_readv) by default. That needs ptrace permission between the ranks, which
      // containers often deny, and on the machines measured here the plain copy through the shared
      // segment was faster anyway (16 MiB all-reduce, 2 ranks: ~5.8-9.7 GB/s vs ~4.3-5.8 GB/s).
      // Only a default: a value set by the user or by mpirun (--mca) wins.
      setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 0);
      int provided = MPI_THREAD_SINGLE;
      const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
      if (rc != MPI_SUCCESS) throw Napi::Error::New(env, mpiErrorText("MPI_Init_thread", rc));
      g.provided = provided;
    } else {
      MPI_Query_thread(&g.provided);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &g.comm);
    if (rc != MPI_SUCCESS) throw Napi::Error::New(env, mpiErrorText("MPI_Comm_dup", rc));
    MPI_Comm_set_errhandler(g.comm, MPI_ERRORS_RETURN);
    rc = MPI_Comm_rank(g.comm, &g.rank);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_size(g.comm, &g.size);
    if (rc != MPI_SUCCESS) throw Napi::Error::New(env, mpiErrorText("MPI_Comm_rank/size", rc));
    g.initialized = true;
  }
  char host[MPI_MAX_PROCESSOR_NAME];
  int hostLen = 0;
  if (MPI_Get_processor_name(host, &hostLen) != MPI_SUCCESS) hostLen = 0;
  Napi::Object o = Napi::Object::New(env);
  o.Set("rank", g.rank);
  o.Set("size", g.size);
  o.Set("threadLevel", threadLevelName(g.provided));
  o.Set("library", libraryVersion());
  o.Set("host", std::string(host, static_cast<size_t>(hostLen)));
  return o;
}

class CollectiveWorker : public Napi::AsyncWorker {
 public:
  CollectiveWorker(Napi::Env env, const Job& job, const std::vector<Napi::Value>& keep)
      : Napi::AsyncWorker(env, "caatnet:mpi-collective"), deferred_(Napi::Promise::Deferred::New(env)), job_(job) {
    for (const auto& v : keep) {
      if (v.IsObject()) refs_.push_back(Napi::Persistent(v.As<Napi::Object>()));
    }
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      status_ = runJob(job_);
    } catch (const MpiFailure& f) {
      SetError(f.message);
    }
  }
  void OnOK() override {
    g.busy.store(false);
    deferred_.Resolve(Napi::Number::New(Env(), status_));
  }
  void OnError(const Napi::Error& e) override {
    g.busy.store(false);
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Job job_;
  int status_ = STATUS_OK;
  std::vector<Napi::ObjectReference> refs_;
};

// collective(async, kind, op, header, headers, buf, inp, n, root) → status | Promise<status>
//   buf: the region (allReduce, broadcast) or the output (reduceScatter, allGather), or null (barrier)
//   inp: the input (reduceScatter, allGather) or null
// The TypeScript side validates everything; the checks here only keep memory access in bounds.
Napi::Value Collective(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  requireInit(env);
  if (info.Length() < 9) throw Napi::TypeError::New(env, "collective: expected 9 arguments");
  const bool async = info[0].ToBoolean().Value();
  Job j;
  j.kind = info[1].As<Napi::Number>().Int32Value();
  j.op = info[2].As<Napi::Number>().Int32Value();
  const View hdr = viewOf(env, info[3], "header");
  const View hdrs = viewOf(env, info[4], "headers");
  if (hdr.bytes != kHeaderBytes || hdrs.bytes != kHeaderBytes * static_cast<size_t>(g.size)) {
    throw Napi::RangeError::New(env, "collective: header buffers have the wrong size");
  }
  j.header = hdr.data;
  j.headers = hdrs.data;
  const double nD = info[7].As<Napi::Number>().DoubleValue();
  if (!(nD >= 0) || nD * g.size > static_cast<double>(std::numeric_limits<int>::max())) {
    throw Napi::RangeError::New(env, "collective: element count out of range for MPI (size·n must be below 2^31)");
  }
  j.n = static_cast<int64_t>(nD);
  j.root = info[8].As<Napi::Number>().Int32Value();
  const size_t N = static_cast<size_t>(g.size);
  if (j.kind != KIND_BARRIER) {
    const View b = viewOf(env, info[5], "buf");
    if (b.type != napi_float32_array && b.type != napi_float64_array) throw Napi::TypeError::New(env, "buf must be a Float32Array or Float64Array");
    j.f64 = b.type == napi_float64_array;
    const size_t es = j.f64 ? 8 : 4;
    j.buf = b.data;
    const size_t n = static_cast<size_t>(j.n);
    size_t needBuf = n * es;
    if (j.kind == KIND_ALLGATHER) needBuf = N * n * es;
    if (b.bytes < needBuf) throw Napi::RangeError::New(env, "collective: buf is too small");
    if (j.kind == KIND_REDUCESCATTER || j.kind == KIND_ALLGATHER) {
      const View in = viewOf(env, info[6], "inp");
      if (in.type != b.type) throw Napi::TypeError::New(env, "inp and buf must have the same element type");
      const size_t needInp = j.kind == KIND_REDUCESCATTER ? N * n * es : n * es;
      if (in.bytes < needInp) throw Napi::RangeError::New(env, "collective: inp is too small");
      j.inp = in.data;
    }
    if (j.kind == KIND_BROADCAST && (j.root < 0 || j.root >= g.size)) throw Napi::RangeError::New(env, "collective: bad root");
  }
  bool expected = false;
  if (!g.busy.compare_exchange_strong(expected, true)) {
    throw Napi::Error::New(env, "collective: another MPI collective is still in flight in this process");
  }
  if (async) {
    std::vector<Napi::Value> keep{info[3], info[4], info[5], info[6]};
    auto* w = new CollectiveWorker(env, j, keep);
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }
  int status = STATUS_OK;
  try {
    status = runJob(j);
  } catch (const MpiFailure& f) {
    g.busy.store(false);
    throw Napi::Error::New(env, f.message);
  }
  g.busy.store(false);
  return Napi::Number::New(env, status);
}

Napi::Value Abort(const Napi::CallbackInfo& info) {
  const int code = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 1;
  int inited = 0;
  int fin = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&fin);
  if (inited && !fin) MPI_Abort(MPI_COMM_WORLD, code);
  return info.Env().Undefined();
}

Napi::Value Finalize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int inited = 0;
  int fin = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&fin);
  if (!inited || fin) return Napi::Boolean::New(env, false);
  if (g.busy.load()) throw Napi::Error::New(env, "finalize: an MPI collective is still in flight");
  if (g.comm != MPI_COMM_NULL) MPI_Comm_free(&g.comm);
  const int rc = MPI_Finalize();
  if (rc != MPI_SUCCESS) throw Napi::Error::New(env, mpiErrorText("MPI_Finalize", rc));
  return Napi::Boolean::New(env, true);
}

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("init", Napi::Function::New(env, Init, "init"));
  exports.Set("collective", Napi::Function::New(env, Collective, "collective"));
  exports.Set("abort", Napi::Function::New(env, Abort, "abort"));
  exports.Set("finalize", Napi::Function::New(env, Finalize, "finalize"));
  return exports;
}

}  // namespace

NODE_API_MODULE(caatnet_mpi, InitModule)
