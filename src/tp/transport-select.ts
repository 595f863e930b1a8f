/**
 * Which transport a process uses, decided from how it was started.
 *
 *   started by                                   transport
 *   mpirun / mpiexec / srun --mpi=pmix|pmi2       mpi   (when the MPI addon loads; else tcp, with a notice)
 *   torchrun-style variables, srun (no MPI)       tcp   (one rank per process)
 *   nothing (plain `caat train`)                  threads (worker threads / virtual ranks in this process)
 *
 * `chooseTransport` reads only environment variables; the MPI addon is loaded (through `mpiLoader`)
 * only when an MPI launcher started the process or MPI was asked for, and MPI itself is never
 * initialised here. An explicit request (`requested`, or env CAAT_TRANSPORT) wins; asking for mpi
 * where it cannot work is an error that says why.
 */
import { detectMpiLauncher, loadMpiAddon, type MpiLauncher, type MpiLoader } from './mpi.js';

export type ProcessTransport = 'mpi' | 'tcp' | 'threads';
export type TransportRequest = ProcessTransport | 'auto';

export interface LauncherInfo {
  /** openmpi / pmix / mpich: MPI launchers; torchrun: RANK + WORLD_SIZE; slurm: srun without MPI. */
  kind: MpiLauncher['kind'] | 'torchrun' | 'slurm';
  /** The variable that identified it. */
  variable: string;
  rank: number | null;
  size: number | null;
}

export interface TransportChoice {
  transport: ProcessTransport;
  /** The launcher found in the environment, if any. */
  launcher: LauncherInfo | null;
  /** One line for the log when the choice is a fallback (e.g. under mpirun without the MPI addon); else null. */
  notice: string | null;
  /** Why this transport, in a few words (for logs). */
  reason: string;
}

function intVar(env: NodeJS.ProcessEnv, name: string): number | null {
  const v = env[name];
  if (v === undefined || v.trim() === '') return null;
  const n = Number(v);
  return Number.isInteger(n) && n >= 0 ? n : null;
}

/** The launcher that started this process (MPI launchers first), or null. */
export function detectLauncher(env: NodeJS.ProcessEnv = process.env): LauncherInfo | null {
  const mpi = detectMpiLauncher(env);
  if (mpi) return mpi;
  if (intVar(env, 'WORLD_SIZE') !== null && intVar(env, 'RANK') !== null) {
    return { kind: 'torchrun', variable: 'WORLD_SIZE', rank: intVar(env, 'RANK'), size: intVar(env, 'WORLD_SIZE') };
  }
  // A Slurm job step started by srun (SLURM_STEP_ID distinguishes it from the batch script itself).
  if (intVar(env, 'SLURM_PROCID') !== null && intVar(env, 'SLURM_NTASKS') !== null && (env['SLURM_STEP_ID'] ?? '') !== '') {
    return { kind: 'slurm', variable: 'SLURM_PROCID', rank: intVar(env, 'SLURM_PROCID'), size: intVar(env, 'SLURM_NTASKS') };
  }
  return null;
}

function launcherName(l: LauncherInfo): string {
  switch (l.kind) {
    case 'openmpi':
      return 'Open MPI (mpirun)';
    case 'pmix':
      return 'a PMIx launcher';
    case 'mpich':
      return 'a PMI launcher (MPICH mpiexec)';
    case 'torchrun':
      return 'a torchrun-style launcher';
    case 'slurm':
      return 'srun';
  }
}

function parseRequest(v: string | undefined): TransportRequest {
  if (v === undefined || v === '' || v === 'auto') return 'auto';
  if (v === 'mpi' || v === 'tcp' || v === 'threads') return v;
  throw new Error(`unknown transport "${v}" (expected auto, mpi, tcp or threads)`);
}

export interface ChooseTransportOptions {
  /** Explicit choice (default env CAAT_TRANSPORT, else auto). */
  requested?: TransportRequest;
  /** Loads the MPI addon (default: the real one); called only when MPI is a candidate. */
  mpiLoader?: MpiLoader;
}

export function chooseTransport(env: NodeJS.ProcessEnv = process.env, options: ChooseTransportOptions = {}): TransportChoice {
  const requested = options.requested ?? parseRequest(env['CAAT_TRANSPORT']);
  const loader = options.mpiLoader ?? loadMpiAddon;
  const launcher = detectLauncher(env);
  const mpiLauncher = launcher !== null && (launcher.kind === 'openmpi' || launcher.kind === 'pmix' || launcher.kind === 'mpich');

  if (requested === 'threads') return { transport: 'threads', launcher, notice: null, reason: 'requested' };
  if (requested === 'tcp') return { transport: 'tcp', launcher, notice: null, reason: 'requested' };
  if (requested === 'mpi') {
    if (!mpiLauncher) {
      throw new Error('the mpi transport needs an MPI launcher: start the ranks with mpirun / mpiexec (or srun --mpi=pmix)');
    }
    const st = loader();
    if (!st.ok) throw new Error(`the mpi transport is unavailable: ${st.reason}`);
    return { transport: 'mpi', launcher, notice: null, reason: 'requested' };
  }

  if (launcher === null) return { transport: 'threads', launcher: null, notice: null, reason: 'no launcher: ranks in this process' };
  if (mpiLauncher) {
    const st = loader();
    if (st.ok) return { transport: 'mpi', launcher, notice: null, reason: `started by ${launcherName(launcher)}` };
    return {
      transport: 'tcp',
      launcher,
      notice: `started by ${launcherName(launcher)} but the MPI transport is unavailable (${st.reason}); using tcp`,
      reason: 'MPI launcher without the MPI addon',
    };
  }
  return { transport: 'tcp', launcher, notice: null, reason: `started by ${launcherName(launcher)}` };
}
