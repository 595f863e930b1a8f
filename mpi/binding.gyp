# The optional MPI addon (caatnet_mpi.node). Built by mpi/build.mjs, which finds the MPI library
# (pkg-config ompi-c / mpich, or the mpicc wrapper) and passes what it found in the environment:
#   CAAT_MPI_CFLAGS   compiler flags (include directories)
#   CAAT_MPI_LIBS     linker flags (-L… -lmpi)
#   CAAT_MPI_LIBDIR   library directory, added as an rpath so the addon loads without LD_LIBRARY_PATH
{
  'targets': [
    {
      'target_name': 'caatnet_mpi',
      'sources': ['src/mpi_addon.cc'],
      'include_dirs': [
        "<!(node -p \"require('node-addon-api').include_dir\")",
      ],
      'defines': ['NAPI_VERSION=8', 'NAPI_CPP_EXCEPTIONS', 'NODE_ADDON_API_DISABLE_DEPRECATED'],
      'cflags!': ['-fno-exceptions', '-O2', '-O0'],
      'cflags_cc!': ['-fno-exceptions', '-fno-rtti'],
      'cflags': ['-O3', '-ffp-contract=off', '-fno-fast-math', '-fvisibility=hidden',
                 "<!@(node -p \"process.env.CAAT_MPI_CFLAGS || ''\")"],
      'cflags_cc': ['-fexceptions', '-std=gnu++17'],
      'libraries': [
        "<!@(node -p \"process.env.CAAT_MPI_LIBS || '-lmpi'\")",
        "<!@(node -p \"process.env.CAAT_MPI_LIBDIR ? '-Wl,-rpath,' + process.env.CAAT_MPI_LIBDIR : ''\")",
        '-ldl',
      ],
    },
  ],
}
