// AVX2 + FMA build of the kernels, for x86-64 CPUs without AVX-512 (e.g. AMD Zen 2/3, Intel Haswell …
// Alder Lake). Only called when the CPU supports AVX2 and FMA (see selectKernels in kernels_base.cc).
// The 16-float vectors of kernels_impl.inc lower to two ymm registers; fused multiply-adds are real
// FMAs where `fmadd` asks for them, as in the AVX-512 build. On other architectures this file only
// forwards to the baseline build.
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC target("avx2,fma,bmi,bmi2")

#define CAAT_KERNELS_AVX2 1
#define KERNELS_ISA_NAME "avx2"

namespace caat {
namespace k256 {
#include "kernels_impl.inc"
}  // namespace k256
}  // namespace caat

#else

namespace caat {
namespace k256 {
const Kernels& table() { return kbase::table(); }
}  // namespace k256
}  // namespace caat

#endif
