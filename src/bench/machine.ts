/**
 * A description of the machine a benchmark ran on: CPU model and core count, the SIMD features that
 * matter to the kernels, memory, OS, Node version, and the environment variables that configure the
 * BLAS libraries and the backend choice. Benchmarks print it so their numbers can be compared.
 */
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';

/** Environment variables that change kernel performance (BLAS threading and CPU dispatch, backend choice). */
export const PERF_ENV_VARS: readonly string[] = [
  'CAAT_BACKEND',
  'CAAT_THREADS',
  'CAAT_NATIVE_BLAS',
  'OPENBLAS_CORETYPE',
  'OPENBLAS_NUM_THREADS',
  'OPENBLAS_VERBOSE',
  'GOTO_NUM_THREADS',
  'OMP_NUM_THREADS',
  'OMP_PROC_BIND',
  'OMP_PLACES',
  'MKL_NUM_THREADS',
  'ONEDNN_MAX_CPU_ISA',
  'DNNL_MAX_CPU_ISA',
  'ONEDNN_VERBOSE',
  'DNNL_VERBOSE',
  'UV_THREADPOOL_SIZE',
];

/** CPU flags worth reporting (x86 SIMD levels, AMX, Arm NEON/SVE). */
const INTERESTING_FLAGS: readonly string[] = [
  'sse4_2', 'avx', 'avx2', 'fma', 'f16c',
  'avx512f', 'avx512bw', 'avx512vl', 'avx512_vnni', 'avx512_bf16', 'avx512_fp16',
  'amx_tile', 'amx_bf16',
  'asimd', 'asimdhp', 'sve', 'sve2',
];

export interface MachineInfo {
  /** e.g. "AMD EPYC 7B13" (from os.cpus()). */
  cpuModel: string;
  /** Logical CPUs visible to this process. */
  cores: number;
  /** The subset of INTERESTING_FLAGS the CPU reports (Linux /proc/cpuinfo; empty elsewhere). */
  cpuFlags: string[];
  platform: string;
  arch: string;
  osRelease: string;
  totalMemGiB: number;
  /** 1-minute load average when described (0 where the OS does not report it): other work skews timings. */
  loadAverage: number;
  node: string;
  v8: string;
  /** Values of PERF_ENV_VARS that are set. */
  env: Record<string, string>;
}

function cpuFlags(): string[] {
  if (process.platform !== 'linux' || !existsSync('/proc/cpuinfo')) return [];
  try {
    const text = readFileSync('/proc/cpuinfo', 'utf8');
    const line = text.split('\n').find((l) => /^(flags|Features)\s*:/.test(l));
    if (!line) return [];
    const have = new Set(line.slice(line.indexOf(':') + 1).trim().split(/\s+/));
    return INTERESTING_FLAGS.filter((f) => have.has(f));
  } catch {
    return [];
  }
}

export function describeMachine(): MachineInfo {
  const cpus = os.cpus();
  const env: Record<string, string> = {};
  for (const k of PERF_ENV_VARS) {
    const v = process.env[k];
    if (v !== undefined) env[k] = v;
  }
  const avail = (os as { availableParallelism?: () => number }).availableParallelism;
  return {
    cpuModel: cpus[0]?.model.trim() || 'unknown CPU',
    cores: typeof avail === 'function' ? avail() : cpus.length,
    cpuFlags: cpuFlags(),
    platform: process.platform,
    arch: process.arch,
    osRelease: os.release(),
    totalMemGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    loadAverage: Math.round(os.loadavg()[0]! * 100) / 100,
    node: process.version,
    v8: process.versions.v8,
    env,
  };
}

/** Human-readable lines, e.g. for the header of a benchmark table. */
export function formatMachine(m: MachineInfo = describeMachine()): string[] {
  const envText = PERF_ENV_VARS.filter((k) => k.startsWith('OPENBLAS') || k.startsWith('OMP') || k.includes('ISA') || k.startsWith('CAAT_'))
    .map((k) => `${k}=${m.env[k] ?? '(unset)'}`);
  const others = Object.entries(m.env).filter(([k]) => !envText.some((t) => t.startsWith(`${k}=`))).map(([k, v]) => `${k}=${v}`);
  return [
    `cpu:  ${m.cpuModel}, ${m.cores} logical cores${m.cpuFlags.length ? ` (${m.cpuFlags.join(' ')})` : ''}`,
    `host: ${m.platform} ${m.arch} ${m.osRelease}, ${m.totalMemGiB} GiB RAM, load average ${m.loadAverage}, node ${m.node} (V8 ${m.v8})`,
    `env:  ${[...envText, ...others].join(' ')}`,
  ];
}
