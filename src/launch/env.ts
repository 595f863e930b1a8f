/**
 * Where this process stands in a multi-process job, from the launcher's environment variables.
 *
 * Checked in this order (the first that is present wins):
 * 1. torchrun style (also what `caat launch` sets): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
 *    MASTER_PORT. MASTER_ADDR defaults to 127.0.0.1; MASTER_PORT is required when WORLD_SIZE > 1.
 *    Job id: TORCHELASTIC_RUN_ID.
 * 2. Open MPI (mpirun): OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK.
 *    Open MPI exports no master address: MASTER_ADDR if given (mpirun -x MASTER_ADDR=host), else
 *    127.0.0.1, which is right for a single host; a job spanning several hosts (local size < world
 *    size) without MASTER_ADDR is refused with an explanation. Port: MASTER_PORT, else derived from
 *    the job id OMPI_MCA_ess_base_jobid.
 * 3. Slurm (srun): SLURM_PROCID, SLURM_STEP_NUM_TASKS (or SLURM_NTASKS with SLURM_STEP_ID: a batch
 *    script outside srun is not a rank), SLURM_LOCALID. Master: the
 *    first host of SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST), bracket ranges expanded, unless
 *    MASTER_ADDR is given. Port: MASTER_PORT, else derived from SLURM_JOB_ID and SLURM_STEP_ID (so
 *    that consecutive steps of one job do not collide).
 *
 * The job token, presented by every rank at the rendezvous, is CAAT_JOB_TOKEN when set, else the
 * launcher's job id (TORCHELASTIC_RUN_ID, OMPI_MCA_ess_base_jobid, SLURM_JOB_ID.SLURM_STEP_ID), else
 * empty (processes started by hand without a token all match).
 */
import { createHash } from 'node:crypto';
import { firstHost } from './hostlist.js';

export type LauncherKind = 'torchrun' | 'openmpi' | 'slurm';

export interface LaunchInfo {
  launcher: LauncherKind;
  rank: number;
  worldSize: number;
  localRank: number;
  masterAddr: string;
  masterPort: number;
  /** Where the master address and port came from, for messages. */
  masterSource: string;
  token: string;
  /** Where the token came from, shown when tokens differ (never the secret itself). */
  tokenLabel: string;
}

export class LaunchEnvError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LaunchEnvError';
  }
}

type Env = Record<string, string | undefined>;

/** Derived ports fall in [PORT_BASE, PORT_BASE + PORT_SPAN): below Linux's ephemeral range. */
const PORT_BASE = 20000;
const PORT_SPAN = 12000;

/** A port derived from a job id: the same on every rank of the job, spread across jobs. */
export function portFromJobId(jobId: string): number {
  const h = createHash('sha256').update(`caatnet-port:${jobId}`).digest();
  return PORT_BASE + (h.readUInt32BE(0) % PORT_SPAN);
}

function int(env: Env, name: string, min = 0): number {
  const v = env[name];
  const x = Number(v);
  if (v === undefined || v.trim() === '' || !Number.isInteger(x) || x < min) {
    throw new LaunchEnvError(`${name}=${JSON.stringify(v)}: expected an integer ≥ ${min}`);
  }
  return x;
}

function port(env: Env, name: string): number {
  const p = int(env, name, 1);
  if (p > 65535) throw new LaunchEnvError(`${name}=${p}: not a TCP port`);
  return p;
}

function fingerprint(s: string): string {
  return createHash('sha256').update(s).digest('hex').slice(0, 12);
}

function token(env: Env, jobIdName: string | null, jobId: string | undefined): { token: string; tokenLabel: string } {
  const t = env['CAAT_JOB_TOKEN'];
  if (t !== undefined && t !== '') return { token: t, tokenLabel: `CAAT_JOB_TOKEN (sha256 ${fingerprint(t)})` };
  if (jobIdName && jobId !== undefined && jobId !== '') return { token: `${jobIdName}=${jobId}`, tokenLabel: `${jobIdName}=${jobId}` };
  return { token: '', tokenLabel: 'no job token (neither CAAT_JOB_TOKEN nor a launcher job id is set)' };
}

function check(i: LaunchInfo): LaunchInfo {
  if (i.worldSize < 1) throw new LaunchEnvError(`world size ${i.worldSize} from ${i.launcher} must be at least 1`);
  if (i.rank >= i.worldSize) throw new LaunchEnvError(`rank ${i.rank} from ${i.launcher} is not below the world size ${i.worldSize}`);
  return i;
}

/**
 * The launch this process is part of, or null when no launcher variables are present. Throws
 * LaunchEnvError for variables that are present but unusable (naming the variable).
 */
export function detectLaunch(env: Env = process.env): LaunchInfo | null {
  if (env['RANK'] !== undefined && env['WORLD_SIZE'] !== undefined) {
    const worldSize = int(env, 'WORLD_SIZE', 1);
    const rank = int(env, 'RANK');
    const localRank = env['LOCAL_RANK'] !== undefined ? int(env, 'LOCAL_RANK') : rank;
    if (worldSize > 1 && env['MASTER_PORT'] === undefined) throw new LaunchEnvError('RANK and WORLD_SIZE are set but MASTER_PORT is not (torchrun-style launch needs MASTER_ADDR and MASTER_PORT)');
    const masterAddr = env['MASTER_ADDR'] || '127.0.0.1';
    const masterPort = env['MASTER_PORT'] !== undefined ? port(env, 'MASTER_PORT') : 0;
    return check({
      launcher: 'torchrun',
      rank,
      worldSize,
      localRank,
      masterAddr,
      masterPort,
      masterSource: `MASTER_ADDR${env['MASTER_ADDR'] ? '' : ' (unset: 127.0.0.1)'}, MASTER_PORT`,
      ...token(env, 'TORCHELASTIC_RUN_ID', env['TORCHELASTIC_RUN_ID']),
    });
  }
  if (env['OMPI_COMM_WORLD_RANK'] !== undefined && env['OMPI_COMM_WORLD_SIZE'] !== undefined) {
    const worldSize = int(env, 'OMPI_COMM_WORLD_SIZE', 1);
    const rank = int(env, 'OMPI_COMM_WORLD_RANK');
    const localRank = env['OMPI_COMM_WORLD_LOCAL_RANK'] !== undefined ? int(env, 'OMPI_COMM_WORLD_LOCAL_RANK') : rank;
    const localSize = env['OMPI_COMM_WORLD_LOCAL_SIZE'] !== undefined ? int(env, 'OMPI_COMM_WORLD_LOCAL_SIZE', 1) : worldSize;
    const jobId = env['OMPI_MCA_ess_base_jobid'];
    let masterAddr = env['MASTER_ADDR'];
    if (!masterAddr) {
      if (localSize < worldSize) {
        throw new LaunchEnvError(
          `this Open MPI job spans several hosts (${localSize} of ${worldSize} ranks on this one) but MASTER_ADDR is not set: ` +
            'pass the first host\'s address with "mpirun -x MASTER_ADDR=<host> ..."',
        );
      }
      masterAddr = '127.0.0.1';
    }
    let masterPort: number;
    if (env['MASTER_PORT'] !== undefined) masterPort = port(env, 'MASTER_PORT');
    else if (jobId) masterPort = portFromJobId(`ompi:${jobId}`);
    else throw new LaunchEnvError('Open MPI launch without MASTER_PORT nor OMPI_MCA_ess_base_jobid: set MASTER_PORT (mpirun -x MASTER_PORT=<port>)');
    return check({
      launcher: 'openmpi',
      rank,
      worldSize,
      localRank,
      masterAddr,
      masterPort,
      masterSource: `${env['MASTER_ADDR'] ? 'MASTER_ADDR' : '127.0.0.1 (single host, MASTER_ADDR unset)'}, ${env['MASTER_PORT'] !== undefined ? 'MASTER_PORT' : `port derived from OMPI_MCA_ess_base_jobid=${jobId}`}`,
      ...token(env, 'OMPI_MCA_ess_base_jobid', jobId),
    });
  }
  // A task of an srun job step (a batch script itself also has SLURM_PROCID and SLURM_NTASKS, but no
  // step variables: it is not a rank).
  if (env['SLURM_PROCID'] !== undefined && (env['SLURM_STEP_NUM_TASKS'] !== undefined || (env['SLURM_NTASKS'] !== undefined && env['SLURM_STEP_ID'] !== undefined))) {
    const sizeVar = env['SLURM_STEP_NUM_TASKS'] !== undefined ? 'SLURM_STEP_NUM_TASKS' : 'SLURM_NTASKS';
    const worldSize = int(env, sizeVar, 1);
    const rank = int(env, 'SLURM_PROCID');
    const localRank = env['SLURM_LOCALID'] !== undefined ? int(env, 'SLURM_LOCALID') : rank;
    const jobId = env['SLURM_JOB_ID'] ?? env['SLURM_JOBID'];
    const stepId = env['SLURM_STEP_ID'] ?? env['SLURM_STEPID'] ?? '0';
    let masterAddr = env['MASTER_ADDR'];
    let addrSource = 'MASTER_ADDR';
    if (!masterAddr) {
      const listVar = env['SLURM_STEP_NODELIST'] ? 'SLURM_STEP_NODELIST' : env['SLURM_JOB_NODELIST'] ? 'SLURM_JOB_NODELIST' : env['SLURM_NODELIST'] ? 'SLURM_NODELIST' : null;
      if (!listVar) throw new LaunchEnvError('Slurm launch without SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST): cannot tell the master host; set MASTER_ADDR');
      masterAddr = firstHost(env[listVar]!);
      addrSource = `first host of ${listVar}=${env[listVar]}`;
    }
    let masterPort: number;
    if (env['MASTER_PORT'] !== undefined) masterPort = port(env, 'MASTER_PORT');
    else if (jobId) masterPort = portFromJobId(`slurm:${jobId}.${stepId}`);
    else throw new LaunchEnvError('Slurm launch without MASTER_PORT nor SLURM_JOB_ID: set MASTER_PORT');
    return check({
      launcher: 'slurm',
      rank,
      worldSize,
      localRank,
      masterAddr,
      masterPort,
      masterSource: `${addrSource}, ${env['MASTER_PORT'] !== undefined ? 'MASTER_PORT' : `port derived from SLURM_JOB_ID=${jobId}.${stepId}`}`,
      ...token(env, 'SLURM_JOB_ID', jobId === undefined ? undefined : `${jobId}.${stepId}`),
    });
  }
  return null;
}
