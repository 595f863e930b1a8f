# Built by native/build.mjs, which detects the BLAS and sets the variables below through GYP_DEFINES:
#   caat_primary            onednn | openblas   BLAS of caatnet_native.node
#   caat_secondary_openblas 0 | 1               also build caatnet_native_openblas.node
#   caat_blas_include       extra include directory for the BLAS headers (may be empty)
#   caat_blas_libdir        extra library directory for the BLAS (may be empty; also set as rpath)
{
  'variables': {
    'caat_primary%': 'onednn',
    'caat_secondary_openblas%': 0,
    'caat_blas_include%': '',
    'caat_blas_libdir%': '',
  },
  'target_defaults': {
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
    ],
  },
  'targets': [
    {
      'target_name': 'caatnet_native',
      'conditions': [
        ['caat_primary=="onednn"', {
          'defines': ['CAAT_BLAS_ONEDNN'],
          'libraries': ['-ldnnl'],
        }, {
          'defines': ['CAAT_BLAS_OPENBLAS'],
          'libraries': ['-lopenblas'],
        }],
      ],
    },
  ],
  'conditions': [
    ['caat_secondary_openblas==1', {
      'targets': [
        {
          'target_name': 'caatnet_native_openblas',
          'defines': ['CAAT_BLAS_OPENBLAS'],
          'libraries': ['-lopenblas'],
        },
      ],
    }],
  ],
}
