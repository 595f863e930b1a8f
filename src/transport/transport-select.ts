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
import { detectLaunch } from '../launch/env.js';
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

/**
 * The launcher that started this process, or null: MPI launchers first (src/transport/mpi.ts), then the
 * torchrun-style and Slurm variables as src/launch/env.ts reads them (which throws LaunchEnvError for
 * variables that are present but unusable).
 */
export function detectLauncher(env: NodeJS.ProcessEnv = process.env): LauncherInfo | null {
  const mpi = detectMpiLauncher(env);
  if (mpi) return mpi;
  const l = detectLaunch(env);
  if (l === null) return null;
  if (l.launcher === 'openmpi') return { kind: 'openmpi', variable: 'OMPI_COMM_WORLD_RANK', rank: l.rank, size: l.worldSize };
  return { kind: l.launcher, variable: l.launcher === 'torchrun' ? 'WORLD_SIZE' : 'SLURM_PROCID', rank: l.rank, size: l.worldSize };
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
