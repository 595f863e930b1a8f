/** Tiny trained runs and `caat serve` child processes for the server tests. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeSmallCorpus } from './corpus.js';
import { repoRoot } from './paths.js';

export const cli = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');

/** The environment without launcher variables. */
export function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined) continue;
    if (/^(RANK|WORLD_SIZE|LOCAL_RANK|LOCAL_WORLD_SIZE|GROUP_RANK|MASTER_ADDR|MASTER_PORT|TORCHELASTIC_.*|OMPI_.*|PMIX_.*|SLURM_.*|CAAT_JOB_TOKEN|CAAT_FAULT_INJECT.*)$/.test(k)) continue;
    env[k] = v;
  }
  return { ...env, ...extra };
}

/** Train a tiny run (context 64, vocabulary 300) once per (tp, p) into a temporary folder. */
export function tinyRun(tmp: string, tp: number, p: number): string {
  const out = path.join(tmp, `run-tp${tp}-p${p}`);
  if (fs.existsSync(path.join(out, 'latest'))) return out;
  const corpus = writeSmallCorpus(path.join(tmp, 'corpus'));
  const r = spawnSync(process.execPath, [cli, 'train', '--data', corpus, '--vocab-size', '300', '--cache-dir', path.join(tmp, 'cache'), '--out', out,
    '--hidden', '32', '--layers', '2', '--heads', '4', '--kv-heads', '2', '--ffn', '64', '--seq-len', '64', '--batch-size', '4', '--warmup', '2',
    '--eval-every', '0', '--eval-batches', '1', '--tp', String(tp), '--p', String(p), '--steps', '40', '--workers', '0'], { encoding: 'utf8', env: cleanEnv(), timeout: 120_000 });
  if (r.status !== 0) throw new Error(`training the test run failed: ${r.stderr}`);
  return out;
}

export function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'caat-serve-'));
}

export interface ServerProc {
  url: string;
  port: number;
  procs: ChildProcess[];
  stderr: () => string;
  /** Every process's exit (code, signal, time). */
  exits: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }[]>;
  stop(): Promise<void>;
}

/**
 * Start a server: `cmds` are the argument lists of each process (one for a plain server), `envs`
 * their extra environment, `exec` the executable of each (node + cli unless given).
 */
export async function startServer(cmds: { args: string[]; env?: Record<string, string>; exec?: string[] }[], timeoutMs = 60_000): Promise<ServerProc> {
  let err = '';
  const procs = cmds.map((c) => {
    const exec = c.exec ?? [process.execPath, cli];
    const p = spawn(exec[0]!, [...exec.slice(1), ...c.args], { env: cleanEnv(c.env), stdio: ['ignore', 'pipe', 'pipe'] });
    p.stdout!.on('data', (d: Buffer) => (err += d.toString()));
    p.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    return p;
  });
  const exits = Promise.all(procs.map((p) => new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) => {
    if (p.exitCode !== null) resolve({ code: p.exitCode, signal: null, at: Date.now() });
    p.on('exit', (code, signal) => resolve({ code, signal, at: Date.now() }));
  })));
  const t0 = Date.now();
  let port = 0;
  while (Date.now() - t0 < timeoutMs) {
    const m = /on http:\/\/[\d.]+:(\d+)\/v1/.exec(err);
    if (m) {
      port = Number(m[1]);
      break;
    }
    if (procs.some((p) => p.exitCode !== null)) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!port) {
    for (const p of procs) p.kill('SIGKILL');
    throw new Error(`the server did not start:\n${err}`);
  }
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    procs,
    stderr: () => err,
    exits,
    async stop() {
      for (const p of procs) if (p.exitCode === null) p.kill('SIGTERM');
      const timer = setTimeout(() => procs.forEach((p) => p.exitCode === null && p.kill('SIGKILL')), 15_000);
      await exits;
      clearTimeout(timer);
    },
  };
}

export const serveArgs = (run: string, extra: string[] = []): string[] => ['serve', '--run', run, '--port', '0', ...extra];
