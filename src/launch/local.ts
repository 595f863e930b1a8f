/**
 * A local launcher (what `caat launch` runs): starts N copies of a command on this host with the
 * torchrun-style variables set (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
 * MASTER_PORT, and TORCHELASTIC_RUN_ID as the job id the job token derives from), prefixes every line
 * of their output with the rank, and ends as soon as one of them fails: the others get SIGTERM, then
 * SIGKILL after a grace period, and the launcher reports the first failure's exit status. SIGINT and
 * SIGTERM received by the launcher are passed on to every child.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';

export interface LocalLaunchOptions {
  nproc: number;
  /** Executable and arguments of every rank. */
  command: string[];
  masterAddr?: string;
  /** 0 or absent: a free port chosen here. */
  masterPort?: number;
  /** Extra environment for every rank. */
  env?: Record<string, string>;
  /** Where prefixed output goes (default: this process's stdout and stderr). */
  stdout?: (line: string) => void;
  stderr?: (line: string) => void;
  /** After the first failure, how long the others get to exit after SIGTERM (default 3000 ms). */
  killGraceMs?: number;
}

export interface LocalLaunchResult {
  /** 0 when every rank succeeded; else the first failing rank's exit code (128 + signal number when killed). */
  code: number;
  /** The first rank that failed, if any. */
  failedRank: number | null;
  /** Per rank: exit code or signal name. */
  exits: (number | string | null)[];
}

/** A TCP port that is free on `host` right now. */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen({ host, port: 0, exclusive: true }, () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15, SIGABRT: 6 };

/** Splits a stream into lines, each passed to `out` with a prefix; a partial last line is flushed at the end. */
function lineWriter(prefix: string, out: (line: string) => void): { push: (chunk: Buffer) => void; flush: () => void } {
  let rest = '';
  return {
    push(chunk: Buffer): void {
      const text = rest + chunk.toString('utf8');
      const lines = text.split('\n');
      rest = lines.pop()!;
      for (const l of lines) out(`${prefix}${l}\n`);
    },
    flush(): void {
      if (rest !== '') out(`${prefix}${rest}\n`);
      rest = '';
    },
  };
}

export async function launchLocal(o: LocalLaunchOptions): Promise<LocalLaunchResult> {
  const N = o.nproc;
  if (!Number.isInteger(N) || N < 1) throw new RangeError(`--nproc must be a positive integer, got ${N}`);
  if (o.command.length === 0) throw new RangeError('no command to launch');
  const masterAddr = o.masterAddr ?? '127.0.0.1';
  const masterPort = o.masterPort && o.masterPort > 0 ? o.masterPort : await freePort(masterAddr);
  const runId = `caat-launch-${process.pid}-${randomBytes(6).toString('hex')}`;
  const out = o.stdout ?? ((l: string) => process.stdout.write(l));
  const err = o.stderr ?? ((l: string) => process.stderr.write(l));
  const width = String(N - 1).length;
  const children: ChildProcess[] = [];
  const exits: (number | string | null)[] = new Array<number | string | null>(N).fill(null);
  let failed: { rank: number; code: number } | null = null;
  let killTimer: NodeJS.Timeout | null = null;

  const killAll = (signal: NodeJS.Signals): void => {
    for (let r = 0; r < N; r++) if (exits[r] === null) children[r]?.kill(signal);
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    if (!failed) failed = { rank: -1, code: 128 + (SIGNALS[sig] ?? 15) };
    killAll(sig);
    if (!killTimer) killTimer = setTimeout(() => killAll('SIGKILL'), o.killGraceMs ?? 3000);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    await new Promise<void>((resolve) => {
      let alive = N;
      for (let r = 0; r < N; r++) {
        const prefix = `[rank ${String(r).padStart(width)}] `;
        const child = spawn(o.command[0]!, o.command.slice(1), {
          stdio: ['ignore', 'pipe', 'pipe'],
          env: {
            ...process.env,
            ...o.env,
            RANK: String(r),
            WORLD_SIZE: String(N),
            LOCAL_RANK: String(r),
            LOCAL_WORLD_SIZE: String(N),
            GROUP_RANK: '0',
            MASTER_ADDR: masterAddr,
            MASTER_PORT: String(masterPort),
            TORCHELASTIC_RUN_ID: runId,
          },
        });
        children.push(child);
        const so = lineWriter(prefix, out);
        const se = lineWriter(prefix, err);
        child.stdout!.on('data', (c: Buffer) => so.push(c));
        child.stderr!.on('data', (c: Buffer) => se.push(c));
        let ended = false;
        const end = (code: number | null, signal: NodeJS.Signals | null, spawnError?: Error): void => {
          if (ended) return;
          ended = true;
          so.flush();
          se.flush();
          exits[r] = signal ?? code ?? 1;
          if (spawnError) err(`${prefix}caat launch: cannot start ${o.command[0]}: ${spawnError.message}\n`);
          const status = spawnError ? 127 : signal ? 128 + (SIGNALS[signal] ?? 15) : (code ?? 1);
          if (status !== 0 && !failed) {
            failed = { rank: r, code: status };
            err(`caat launch: rank ${r} ${signal ? `was killed by ${signal}` : `exited with status ${status}`}; stopping the other ranks\n`);
            killAll('SIGTERM');
            killTimer = setTimeout(() => killAll('SIGKILL'), o.killGraceMs ?? 3000);
          }
          if (--alive === 0) resolve();
        };
        child.on('error', (e) => end(null, null, e));
        child.on('close', (code, signal) => end(code, signal));
      }
    });
  } finally {
    if (killTimer) clearTimeout(killTimer);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  const f = failed as { rank: number; code: number } | null;
  return { code: f ? f.code : 0, failedRank: f && f.rank >= 0 ? f.rank : null, exits };
}
