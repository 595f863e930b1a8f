/**
 * A TCP group inside one process, for transport tests: N ranks, each with its own TcpCommunicator,
 * joined by the real rendezvous over 127.0.0.1 (rank 0 on a port the system chooses).
 */
import { rendezvous, type RendezvousOptions } from '../../src/transport/rendezvous.js';
import type { TcpCommOptions, TcpCommunicator } from '../../src/transport/tcp.js';

export interface LocalTcpGroupOptions {
  comm?: Omit<TcpCommOptions, 'rank' | 'size' | 'peers' | 'timeoutMs'>;
  timeoutMs?: number;
  /** Per-rank overrides of the rendezvous options (token, config, …). */
  perRank?: (rank: number) => Partial<RendezvousOptions>;
  log?: (message: string) => void;
}

/** Start the rendezvous of every rank; settles per rank (a refused rank rejects on its own). */
export async function startLocalTcpGroup(N: number, o: LocalTcpGroupOptions = {}): Promise<Promise<TcpCommunicator>[]> {
  const base = (rank: number): RendezvousOptions => ({
    rank,
    size: N,
    masterAddr: '127.0.0.1',
    masterPort: 0,
    token: 'test-token',
    tokenLabel: 'CAAT_JOB_TOKEN (test)',
    config: { test: true },
    timeoutMs: o.timeoutMs ?? 10_000,
    ...(o.comm ? { comm: o.comm } : {}),
    log: o.log ?? (() => {}),
    ...(o.perRank?.(rank) ?? {}),
  });
  if (N === 1) return [rendezvous(base(0))];
  let setPort!: (p: number) => void;
  const port = new Promise<number>((res) => (setPort = res));
  const p0 = rendezvous({ ...base(0), onListening: setPort });
  p0.catch(() => setPort(-1));
  const masterPort = await port;
  const out = [p0];
  for (let r = 1; r < N; r++) out.push(rendezvous({ ...base(r), masterPort }));
  return out;
}

/** N connected communicators (index = rank). */
export async function localTcpGroup(N: number, o: LocalTcpGroupOptions = {}): Promise<TcpCommunicator[]> {
  return Promise.all(await startLocalTcpGroup(N, o));
}

export async function closeAll(comms: TcpCommunicator[]): Promise<void> {
  await Promise.all(comms.map((c) => c.close()));
}
