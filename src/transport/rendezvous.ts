/**
 * Rendezvous: turns N processes that know their rank, the world size and the master's address into a
 * TcpCommunicator over a full mesh of TCP connections.
 *
 * 1. Rank 0 listens on the master address and port, and ONLY there (no wildcard address).
 * 2. Every other rank connects to rank 0 (retrying while rank 0 is not up yet), opens a listener of
 *    its own on the local address of that connection (the interface that reaches the master; port
 *    chosen by the system), and sends HELLO: protocol version, rank, world size, the job token (as a
 *    SHA-256 digest, with a label saying where it came from), and the configuration with its digest.
 * 3. Rank 0 checks every HELLO against its own:
 *    - a different job token: the connection is refused (REFUSE with the reason; the refused process
 *      exits with it) and rank 0 keeps waiting for the genuine rank: a process of another job, or a
 *      stale one, must not join or break this job;
 *    - a different world size, a rank out of range or already present, or a different configuration
 *      (the same job, misconfigured): the rank is refused with the difference, every rank that joined
 *      gets an ABORT, and rank 0 fails with the same difference;
 *    Once every rank has joined, rank 0 sends WELCOME with every rank's listening address.
 * 4. Rank r connects to the listeners of ranks 1 … r−1 (PEER_HELLO: rank and token digest) and
 *    accepts ranks r+1 … N−1 on its own listener, then closes it. The connection with rank 0 is the
 *    one from step 2.
 * Every step is bounded by `timeoutMs` (the rendezvous as a whole); errors name the ranks involved.
 */
import { createHash } from 'node:crypto';
import * as net from 'node:net';
import * as os from 'node:os';
import { canonicalJson } from './transport-common.js';
import { encodeControl, FRAME, type FrameHeader, FrameReader, type PeerConnection, TcpCommunicator, type TcpCommOptions } from './tcp.js';

const PROTOCOL_VERSION = 1;
/** Control frames during the rendezvous are small JSON documents. */
const MAX_CONTROL_BYTES = 4 << 20;

export class RendezvousError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RendezvousError';
  }
}

export interface RendezvousOptions {
  rank: number;
  size: number;
  /** Address (host name or IP) rank 0 listens on and every rank connects to. */
  masterAddr: string;
  /** Port; 0 lets rank 0 choose (then `onListening` tells which; for tests). */
  masterPort: number;
  /** The job token (shared secret of the job); compared by digest. */
  token: string;
  /** Where the token came from, shown when tokens differ (e.g. "SLURM_JOB_ID=42"). */
  tokenLabel: string;
  /** The configuration every rank must share (JSON-serialisable); compared by digest, shown as a diff. */
  config: unknown;
  /** Bound of the whole rendezvous, and the communicator's collective timeout. */
  timeoutMs: number;
  /** Transport tuning. */
  comm?: Omit<TcpCommOptions, 'rank' | 'size' | 'peers' | 'timeoutMs'>;
  /** Rank 0's messages about refused connections (default: stderr). */
  log?: (message: string) => void;
  onListening?: (port: number) => void;
}

interface Hello {
  version: number;
  rank: number;
  size: number;
  tokenHash: string;
  tokenLabel: string;
  configHash: string;
  config: unknown;
  listen: { host: string; port: number } | null;
  host: string;
  pid: number;
}

const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');

export function configDigest(config: unknown): string {
  return sha256(canonicalJson(config));
}

function flatten(v: unknown, prefix: string, out: Map<string, string>): void {
  if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
    const o = v as Record<string, unknown>;
    for (const k of Object.keys(o)) if (o[k] !== undefined) flatten(o[k], prefix ? `${prefix}.${k}` : k, out);
    return;
  }
  out.set(prefix || '(root)', canonicalJson(v));
}

/**
 * The fields where two configurations differ, as "field: A (who A) vs B (who B)" (at most `max`,
 * then a count). Empty when they are equal.
 */
export function configDifference(a: unknown, b: unknown, whoA: string, whoB: string, max = 8): string[] {
  const fa = new Map<string, string>();
  const fb = new Map<string, string>();
  flatten(a, '', fa);
  flatten(b, '', fb);
  const keys = [...new Set([...fa.keys(), ...fb.keys()])].sort();
  const diffs: string[] = [];
  for (const k of keys) {
    const va = fa.get(k);
    const vb = fb.get(k);
    if (va === vb) continue;
    diffs.push(`${k}: ${va ?? '(absent)'} (${whoA}) vs ${vb ?? '(absent)'} (${whoB})`);
  }
  if (diffs.length > max) return [...diffs.slice(0, max), `… and ${diffs.length - max} more`];
  return diffs;
}

function parseJson(body: Uint8Array): unknown {
  return JSON.parse(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8'));
}

function addrOf(s: net.Socket): string {
  const a = s.remoteAddress ?? '?';
  return `${a.includes(':') ? `[${a}]` : a}:${s.remotePort ?? '?'}`;
}

function hostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** Listen on exactly this host and port. */
function listen(server: net.Server, host: string, port: number, who: string): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException): void => {
      const hint = e.code === 'EADDRINUSE' ? ' (in use: another job on this port? set MASTER_PORT)' : e.code === 'EADDRNOTAVAIL' ? ' (not an address of this host)' : '';
      reject(new RendezvousError(`${who} cannot listen on ${hostPort(host, port)}: ${e.code ?? e.message}${hint}`));
    };
    server.once('error', onError);
    server.listen({ host, port, exclusive: true }, () => {
      server.off('error', onError);
      const a = server.address();
      resolve(typeof a === 'object' && a ? a.port : port);
    });
  });
}

/** A socket with a frame reader whose handler can change from handshake to "keep for later". */
class Conn {
  readonly reader: FrameReader;
  readonly early: { h: FrameHeader; body: Uint8Array }[] = [];
  handshake: ((h: FrameHeader, body: Uint8Array) => void) | null;

  constructor(
    readonly socket: net.Socket,
    name: string,
    handshake: (h: FrameHeader, body: Uint8Array) => void,
    onError: (e: Error) => void,
  ) {
    socket.setNoDelay(true);
    this.handshake = handshake;
    this.reader = new FrameReader(
      {
        begin: () => null,
        end: (h, body) => {
          if (this.handshake) this.handshake(h, body);
          else this.early.push({ h, body: body.slice() });
        },
      },
      0,
      name,
      MAX_CONTROL_BYTES,
    );
    this.reader.onError = onError;
    this.reader.attach(socket);
  }

  send(type: number, from: number, body: unknown): void {
    if (!this.socket.destroyed) this.socket.write(encodeControl(type, from, body));
  }

  /**
   * The peer is validated: later frames (data, aborts) are kept for the communicator, which applies
   * its own size limit when it takes over.
   */
  accept(): void {
    this.handshake = null;
    this.reader.maxBody = 0xffffffff;
  }

  done(): PeerConnection {
    this.accept();
    return { socket: this.socket, reader: this.reader, early: this.early };
  }
}

/**
 * Join the group: returns this rank's communicator once the full mesh is up. Rejects with a
 * RendezvousError naming the problem (and, for differences, both sides' values).
 */
export async function rendezvous(o: RendezvousOptions): Promise<TcpCommunicator> {
  if (!Number.isInteger(o.size) || o.size < 1) throw new RendezvousError(`world size must be a positive integer, got ${o.size}`);
  if (!Number.isInteger(o.rank) || o.rank < 0 || o.rank >= o.size) throw new RendezvousError(`rank ${o.rank} is not in [0, ${o.size})`);
  const commOpts = (peers: (PeerConnection | null)[]): TcpCommOptions => ({ ...o.comm, rank: o.rank, size: o.size, peers, timeoutMs: o.timeoutMs });
  if (o.size === 1) return new TcpCommunicator(commOpts([null]));
  const hello: Hello = {
    version: PROTOCOL_VERSION,
    rank: o.rank,
    size: o.size,
    tokenHash: sha256(`caatnet-job-token:${o.token}`),
    tokenLabel: o.tokenLabel,
    configHash: configDigest(o.config),
    config: o.config,
    listen: null,
    host: os.hostname(),
    pid: process.pid,
  };
  return o.rank === 0 ? master(o, hello, commOpts) : worker(o, hello, commOpts);
}

function secs(ms: number): string {
  return `${(ms / 1000).toFixed(ms % 1000 === 0 ? 0 : 1)} s`;
}

async function master(o: RendezvousOptions, mine: Hello, commOpts: (p: (PeerConnection | null)[]) => TcpCommOptions): Promise<TcpCommunicator> {
  const log = o.log ?? ((m: string) => process.stderr.write(`${m}\n`));
  const server = net.createServer({ noDelay: true });
  const port = await listen(server, o.masterAddr, o.masterPort, 'rank 0');
  o.onListening?.(port);
  const joined: (Conn | null)[] = new Array<Conn | null>(o.size).fill(null);
  const hellos: (Hello | null)[] = new Array<Hello | null>(o.size).fill(null);
  const refusals = new Map<number, string>();
  const pending = new Set<Conn>();
  let count = 1;
  let settled = false;

  return new Promise<TcpCommunicator>((resolve, reject) => {
    const timer = setTimeout(() => {
      const missing: number[] = [];
      for (let r = 1; r < o.size; r++) if (!joined[r]) missing.push(r);
      const why = missing.map((r) => (refusals.has(r) ? `rank ${r} (a connection claiming rank ${r} was refused: ${refusals.get(r)})` : `rank ${r}`));
      fatal(`rendezvous on ${hostPort(o.masterAddr, port)} timed out after ${secs(o.timeoutMs)}: ${missing.length === 1 ? '' : 'ranks '}${why.join(', ')} did not join`);
    }, o.timeoutMs);

    const cleanup = (): void => {
      settled = true;
      clearTimeout(timer);
      server.close();
      for (const c of pending) c.socket.destroy();
      pending.clear();
    };

    /** A problem of the job as a whole: tell everyone who joined, then fail. */
    const fatal = (message: string, offender?: { conn: Conn; reason: string }): void => {
      if (settled) return;
      cleanup();
      if (offender) {
        offender.conn.send(FRAME.refuse, 0, { reason: offender.reason });
        offender.conn.socket.end();
      }
      for (const c of joined) {
        if (!c || c === offender?.conn) continue;
        c.send(FRAME.abort, 0, { rank: 0, message });
        c.socket.end();
      }
      reject(new RendezvousError(message));
    };

    const onHello = (conn: Conn, h: FrameHeader, body: Uint8Array): void => {
      if (settled) return;
      if (h.type !== FRAME.hello) {
        conn.socket.destroy();
        pending.delete(conn);
        return;
      }
      let m: Hello;
      try {
        m = parseJson(body) as Hello;
      } catch {
        conn.socket.destroy();
        pending.delete(conn);
        return;
      }
      pending.delete(conn);
      const from = addrOf(conn.socket);
      const claim = `rank ${m.rank} (${m.host} pid ${m.pid}, ${from})`;
      if (m.version !== PROTOCOL_VERSION) {
        const reason = `protocol version ${m.version} differs from rank 0's ${PROTOCOL_VERSION} (different caatnet versions)`;
        fatal(`${claim} was refused: ${reason}`, { conn, reason });
        return;
      }
      if (m.tokenHash !== mine.tokenHash) {
        // Not this job: refuse and keep waiting for the genuine rank.
        const reason = `job token differs: this process presented ${m.tokenLabel}, rank 0 of the job on ${hostPort(o.masterAddr, port)} has ${mine.tokenLabel}`;
        log(`rank 0: refused a connection from ${from} claiming rank ${m.rank}: job token differs (it presented ${m.tokenLabel}, this job has ${mine.tokenLabel})`);
        refusals.set(m.rank, `job token differs (${m.tokenLabel} vs ${mine.tokenLabel})`);
        conn.send(FRAME.refuse, 0, { reason });
        conn.socket.end();
        return;
      }
      if (m.size !== o.size) {
        const reason = `world size ${m.size} differs from rank 0's ${o.size}`;
        fatal(`${claim} was refused: ${reason}`, { conn, reason });
        return;
      }
      if (!Number.isInteger(m.rank) || m.rank < 1 || m.rank >= o.size) {
        const reason = `rank ${m.rank} is not a valid rank of a group of ${o.size} other than 0 (two processes with RANK=0?)`;
        fatal(`a connection from ${from} was refused: ${reason}`, { conn, reason });
        return;
      }
      if (joined[m.rank]) {
        const first = hellos[m.rank]!;
        const reason = `rank ${m.rank} already joined from ${first.host} pid ${first.pid} (two processes with the same RANK?)`;
        fatal(`${claim} was refused: ${reason}`, { conn, reason });
        return;
      }
      if (m.configHash !== mine.configHash) {
        const diff = configDifference(m.config, mine.config, `rank ${m.rank}`, 'rank 0');
        const reason = `configuration differs from rank 0's: ${diff.join('; ')}`;
        fatal(`rank ${m.rank} was refused: its configuration differs from rank 0's: ${diff.join('; ')}`, { conn, reason });
        return;
      }
      joined[m.rank] = conn;
      hellos[m.rank] = m;
      conn.handshake = (h2) => {
        // Nothing may arrive before WELCOME except an abort (the rank failed while waiting).
        if (h2.type === FRAME.abort) fatal(`rank ${m.rank} failed during the rendezvous`);
      };
      conn.socket.on('close', () => {
        if (!settled) fatal(`rank ${m.rank} (${m.host} pid ${m.pid}) disconnected during the rendezvous`);
      });
      if (++count < o.size) return;
      // Everyone is here.
      const addrs = hellos.map((x) => x?.listen ?? null);
      const peers: (PeerConnection | null)[] = joined.map((c) => (c ? c.done() : null));
      for (let r = 1; r < o.size; r++) joined[r]!.send(FRAME.welcome, 0, { addrs });
      cleanup();
      for (const c of joined) c?.socket.removeAllListeners('close');
      try {
        resolve(new TcpCommunicator(commOpts(peers)));
      } catch (e) {
        reject(e);
      }
    };

    server.on('connection', (socket) => {
      if (settled) {
        socket.destroy();
        return;
      }
      const conn: Conn = new Conn(
        socket,
        addrOf(socket),
        (h, body) => onHello(conn, h, body),
        () => {
          socket.destroy();
          pending.delete(conn);
        },
      );
      pending.add(conn);
      socket.on('error', () => {});
    });
  });
}

function connectOnce(host: string, port: number): Promise<net.Socket> {
  return new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ host, port, noDelay: true });
    const onErr = (e: Error): void => {
      s.destroy();
      reject(e);
    };
    s.once('error', onErr);
    s.once('connect', () => {
      s.off('error', onErr);
      resolve(s);
    });
  });
}

/** Connect, retrying refused or unreachable attempts until the deadline. */
async function connectRetry(host: string, port: number, deadline: number, what: string): Promise<net.Socket> {
  let last: NodeJS.ErrnoException | null = null;
  let wait = 50;
  for (;;) {
    try {
      return await connectOnce(host, port);
    } catch (e) {
      last = e as NodeJS.ErrnoException;
      const retry = ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ENOTFOUND'].includes(last.code ?? '');
      if (!retry || Date.now() + wait > deadline) break;
      await new Promise((r) => setTimeout(r, wait));
      wait = Math.min(500, wait * 2);
    }
  }
  throw new RendezvousError(`cannot connect to ${what} at ${hostPort(host, port)}: ${last?.code ?? last?.message ?? 'timed out'}`);
}

async function worker(o: RendezvousOptions, mine: Hello, commOpts: (p: (PeerConnection | null)[]) => TcpCommOptions): Promise<TcpCommunicator> {
  const t0 = Date.now();
  const deadline = t0 + o.timeoutMs;
  const r = o.rank;
  const N = o.size;
  const toMaster = await connectRetry(o.masterAddr, o.masterPort, deadline, 'rank 0 (the master)');
  const peers: (Conn | null)[] = new Array<Conn | null>(N).fill(null);
  const sockets: net.Socket[] = [toMaster];
  let server: net.Server | null = null;
  let settled = false;

  return new Promise<TcpCommunicator>((resolve, reject) => {
    const timer = setTimeout(() => {
      const missing: number[] = [];
      for (let p = 0; p < N; p++) if (p !== r && !peers[p]) missing.push(p);
      fail(`rendezvous timed out after ${secs(o.timeoutMs)} on rank ${r}: no connection with ${missing.length > 1 ? 'ranks' : 'rank'} ${missing.join(', ')}`);
    }, Math.max(1, deadline - Date.now()));

    const fail = (message: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      server?.close();
      for (const s of sockets) {
        if (!s.destroyed) s.write(encodeControl(FRAME.abort, r, { rank: r, message }));
        s.end();
        setTimeout(() => s.destroy(), 200).unref();
      }
      reject(new RendezvousError(message));
    };

    const complete = (): void => {
      for (let p = 0; p < N; p++) if (p !== r && !peers[p]) return;
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      server?.close();
      const conns = peers.map((c) => (c ? c.done() : null));
      for (const s of sockets) s.removeAllListeners('close');
      try {
        resolve(new TcpCommunicator(commOpts(conns)));
      } catch (e) {
        reject(e);
      }
    };

    const start = async (): Promise<void> => {
      // 1. Own listener, on the interface that reaches the master, for ranks above this one.
      if (r < N - 1) {
        server = net.createServer({ noDelay: true });
        const host = toMaster.localAddress ?? '127.0.0.1';
        const port = await listen(server, host, 0, `rank ${r}`);
        mine.listen = { host, port };
        server.on('connection', (socket) => {
          socket.on('error', () => {});
          if (settled) {
            socket.destroy();
            return;
          }
          const conn: Conn = new Conn(
            socket,
            addrOf(socket),
            (h, body) => {
              let m: { rank?: unknown; tokenHash?: unknown } = {};
              try {
                m = h.type === FRAME.peerHello ? (parseJson(body) as typeof m) : {};
              } catch {
                // refused below
              }
              const pr = m.rank;
              if (typeof pr !== 'number' || pr <= r || pr >= N || m.tokenHash !== mine.tokenHash || peers[pr]) {
                socket.destroy();
                return;
              }
              peers[pr] = conn;
              sockets.push(socket);
              socket.on('close', () => fail(`rank ${pr} disconnected during the rendezvous`));
              conn.accept();
              complete();
            },
            () => socket.destroy(),
          );
        });
      }
      // 2. HELLO to the master; wait for WELCOME or REFUSE.
      const mconn = new Conn(
        toMaster,
        'rank 0',
        (h, body) => {
          let m: Record<string, unknown> = {};
          try {
            m = parseJson(body) as Record<string, unknown>;
          } catch {
            // handled below
          }
          if (h.type === FRAME.refuse) fail(`rank 0 refused rank ${r}: ${String(m['reason'])}`);
          else if (h.type === FRAME.abort) fail(`rank ${String(m['rank'])} failed: ${String(m['message'])}`);
          else if (h.type === FRAME.welcome) {
            mconn.accept();
            peers[0] = mconn;
            void connectLower((m['addrs'] as ({ host: string; port: number } | null)[]) ?? []).catch((e: unknown) => fail((e as Error).message));
            complete();
          } else fail(`protocol error: unexpected frame of type ${h.type} from rank 0 during the rendezvous`);
        },
        (e) => fail(`protocol error on the connection to rank 0: ${e.message}`),
      );
      toMaster.on('error', () => {});
      toMaster.on('close', () => fail(`rank 0 closed the connection during the rendezvous (it failed or refused this rank)`));
      mconn.send(FRAME.hello, r, mine);
    };

    const connectLower = async (addrs: ({ host: string; port: number } | null)[]): Promise<void> => {
      for (let p = 1; p < r; p++) {
        const a = addrs[p];
        if (!a) throw new RendezvousError(`rank 0 sent no address for rank ${p}`);
        const s = await connectRetry(a.host, a.port, deadline, `rank ${p}`);
        if (settled) {
          s.destroy();
          return;
        }
        sockets.push(s);
        s.on('error', () => {});
        s.on('close', () => fail(`rank ${p} disconnected during the rendezvous`));
        const conn = new Conn(s, `rank ${p}`, () => {}, (e) => fail(`protocol error on the connection to rank ${p}: ${e.message}`));
        conn.accept();
        conn.send(FRAME.peerHello, r, { rank: r, tokenHash: mine.tokenHash });
        peers[p] = conn;
      }
      complete();
    };

    start().catch((e: unknown) => fail(e instanceof Error ? e.message : String(e)));
  });
}
