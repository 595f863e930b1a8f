// AVX-512 build of the kernels (AVX-512F/DQ/BW/VL with FMA). Only called when the CPU and the OS
// support AVX-512 (see selectKernels in kernels_base.cc). On other architectures this file only
// forwards to the baseline build.
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi,bmi2")

#define CAAT_KERNELS_AVX512 1
#define KERNELS_ISA_NAME "avx512"

namespace caat {
namespace k512 {
#include "kernels_impl.inc"
}  // namespace k512
}  // namespace caat

#else

namespace caat {
namespace k512 {
const Kernels& table() { return kbase::table(); }
}  // namespace k512
}  // namespace caat

#endif
