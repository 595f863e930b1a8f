# Built by native/build.mjs, which detects the libraries and sets the variables below through GYP_DEFINES:
#   caat_onednn             0 | 1   link oneDNN (dnnl_sgemm, matmul primitive, bf16 matmul)
#   caat_openblas           0 | 1   link OpenBLAS (cblas_sgemm)
#   caat_blas_include       extra include directory for the library headers (may be empty)
#   caat_blas_libdir        extra library directory for the libraries (may be empty; also set as rpath)
# One addon, caatnet_native.node, holds every GEMM implementation that was found; at least one library
# must be enabled.
{
  'variables': {
    'caat_onednn%': 1,
    'caat_openblas%': 0,
    'caat_blas_include%': '',
    'caat_blas_libdir%': '',
  },
  'targets': [
    {
      'target_name': 'caatnet_native',
      'sources': ['src/addon.cc', 'src/kernels_base.cc', 'src/kernels_avx512.cc', 'src/kernels_avx2.cc'],
      'include_dirs': [
        "<!(node -p \"require('node-addon-api').include_dir\")",
      ],
      'defines': ['NAPI_VERSION=8', 'NAPI_CPP_EXCEPTIONS', 'NODE_ADDON_API_CPP_EXCEPTIONS_ALL', 'NODE_ADDON_API_DISABLE_DEPRECATED'],
      'cflags!': ['-fno-exceptions', '-O2', '-O0'],
      'cflags_cc!': ['-fno-exceptions', '-fno-rtti'],
      'cflags': ['-O3', '-fopenmp', '-ffp-contract=off', '-fno-math-errno', '-fvisibility=hidden', '-Wno-psabi', '-Wno-maybe-uninitialized'],
      'cflags_cc': ['-fexceptions', '-std=gnu++17'],
      'ldflags': ['-fopenmp'],
      'conditions': [
        ['caat_blas_include!=""', {'include_dirs': ['<(caat_blas_include)']}],
        ['caat_blas_libdir!=""', {'ldflags': ['-L<(caat_blas_libdir)', '-Wl,-rpath,<(caat_blas_libdir)']}],
        ['caat_onednn==1', {'defines': ['CAAT_HAVE_ONEDNN'], 'libraries': ['-ldnnl']}],
        ['caat_openblas==1', {'defines': ['CAAT_HAVE_OPENBLAS'], 'libraries': ['-lopenblas']}],
      ],
    },
  ],
}
