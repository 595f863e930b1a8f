// Baseline build of the kernels (whatever the compiler's default target is, e.g. SSE2 on x86-64),
// and the run-time choice between it and the AVX-512 build.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels.h"

#define KERNELS_ISA_NAME "baseline"

namespace caat {
namespace kbase {
#include "kernels_impl.inc"
}  // namespace kbase

const Kernels& selectKernels() {
  // CAAT_NATIVE_ISA=baseline (or avx2) caps the choice, to test the portable kernels on a faster CPU.
  const char* force = std::getenv("CAAT_NATIVE_ISA");
  const bool capBaseline = force != nullptr && std::strcmp(force, "baseline") == 0;
  const bool capAvx2 = force != nullptr && std::strcmp(force, "avx2") == 0;
  if (capBaseline) return kbase::table();
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // libgcc's cpu detection also checks that the OS saves the AVX / AVX-512 register state (XCR0).
  if (!capAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma")) {
    return k512::table();
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return k256::table();
#endif
  return kbase::table();
}

}  // namespace caat
