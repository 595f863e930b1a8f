/**
 * The TCP transport: one rank per process, a full mesh of TCP connections (one socket per pair of
 * ranks), established by `rendezvous()` (src/transport/rendezvous.ts).
 *
 * ALGORITHMS, and how they keep the fixed reduction order. Every reduction in caatnet is computed as
 * ((x0 + x1) + x2) + …, rounded in the element type after every addition, so that every rank and
 * every transport produce the same bits. A classic ring reduce-scatter accumulates chunk c starting
 * at rank c+1 and walking around the ring, i.e. in a different order for every chunk, which gives
 * different bits. Instead:
 *
 * - Large all-reduce (more than `smallBytes` per rank): DIRECT REDUCE-SCATTER + DIRECT ALL-GATHER.
 *   The region is split into N balanced chunks; rank c owns chunk c. Every rank sends its part of
 *   chunk c straight to rank c; rank c sums the N contributions itself, in rank order 0, 1, …, N−1,
 *   and sends the result straight to every other rank, which receives it in place. Each rank sends and
 *   receives (N−1)/N·B bytes in each phase, 2(N−1)/N·B in all: exactly the ring's volume, in 2 steps
 *   instead of 2(N−1), over N−1 links at once. Chunks travel in segments of at most `segmentBytes`,
 *   and an owner reduces and forwards segment s as soon as all contributions of segment s are in, so
 *   the two phases overlap (pipelining).
 * - Small all-reduce (at most `smallBytes` per rank): FULL EXCHANGE. Every rank sends its whole
 *   region to every other rank and every rank sums the N regions itself in rank order: one message
 *   latency (a gather-to-0-and-broadcast needs two, recursive doubling log2 N and a different order).
 *   The sum is computed identically on every rank, so all get the same bits.
 * - reduceScatter: the direct reduce-scatter above (rank c sums segment c in rank order).
 * - allGather: every rank sends its block to every other rank, received in place.
 * - broadcast: the root sends the region to every other rank (received in place); every non-root
 *   sends the root an empty acknowledgement, so a rank that called something else is detected.
 * - barrier: an empty message from every rank to every other rank.
 * Collectives of one rank are serialised: call k+1 starts once call k has finished.
 *
 * FRAMING. Every message is a 40-byte header, the tag (UTF-8) and the body, written with one writev
 * (cork, write header, write body, uncork) so that a small message leaves in one segment: sockets
 * have setNoDelay(true), otherwise small messages wait for a 40 ms delayed ACK. Header (little
 * endian): magic "CAAT", frame type, collective kind, op, element type, sequence number (the index
 * of the collective on the sender), FNV-1a hash of the tag, n (the call's per-rank element count),
 * root, part (index of the message within the collective from that sender to that receiver), body
 * length, tag length, sender rank. Every data message is matched against what the receiver expects
 * (messages from one peer arrive in order, and both sides derive the same message list from the
 * same call): a different kind, op, element type, n, root or tag fails the group with a
 * CommMismatchError naming both ranks and both calls; a header announcing more than
 * `maxMessageBytes` (by default the largest body the algorithms above produce) is refused.
 *
 * COPIES. Sends are zero-copy views of the caller's arrays; a collective resolves only once every
 * write has been handed to the kernel, so the caller may reuse its buffers at once. Back-pressure is
 * respected: when write() returns false, further messages to that peer wait for 'drain'. Received
 * bodies are copied once, from the socket's chunks straight into their destination (the caller's
 * output, or a per-peer staging area for contributions that must be summed); a message that arrives
 * before its collective has started is kept (a view of the socket chunk when it lies in one) and
 * copied when the collective starts.
 *
 * FAILURES. A rank's failure (abort(), a call that cannot take part, a mismatch, a lost connection, a
 * timeout) poisons the group: the rank sends an ABORT frame carrying the failed rank and the message
 * to every peer (each peer relays it once, so an ABORT always precedes a closing socket), and every
 * pending and future call rejects with CommAbortedError(failedRank, message). A connection that closes
 * without a goodbye means the peer died: "rank K failed: connection lost …". A collective that does not
 * complete within `timeoutMs` fails naming the rank(s) it still waits for, preferring ranks that have
 * not reached the collective at all (hung or stopped processes).
 *
 * STATISTICS: payload bytes per rank by tag, counted exactly like the other transports
 * (payloadBytes), calls by tag, and milliseconds spent inside collectives.
 */
import type * as net from 'node:net';
import { performance } from 'node:perf_hooks';
import type { FloatArray } from '../backend/types.js';
import { CommAbortedError, type ReduceOp } from '../tp/comm.js';
import {
  type CollectiveCall,
  type CollectiveKind,
  CommMismatchError,
  describeCall,
  type DType,
  errorMessage,
  payloadBytes,
  reduceRanks,
  SerialCommunicator,
  tagHash,
} from './transport-common.js';

// ---------------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------------

/** "CAAT" as little-endian bytes. */
export const FRAME_MAGIC = 0x54414143;
export const HEADER_BYTES = 40;

/** Frame types. Data frames carry collective payloads; the rest are control frames with JSON bodies. */
export const FRAME = {
  data: 1,
  abort: 2,
  bye: 3,
  hello: 4,
  welcome: 5,
  refuse: 6,
  peerHello: 7,
} as const;

const KIND_CODES: readonly CollectiveKind[] = ['barrier', 'allReduce', 'reduceScatter', 'allGather', 'broadcast'];
const OP_CODES: readonly (ReduceOp | '')[] = ['', 'sum', 'max'];
const DTYPE_CODES: readonly DType[] = ['none', 'float32', 'float64'];

export interface FrameHeader {
  type: number;
  kind: number;
  op: number;
  dtype: number;
  seq: number;
  tagHash: number;
  n: number;
  root: number;
  part: number;
  bodyLen: number;
  from: number;
  tag: string;
}

export class FrameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FrameError';
  }
}


/** Header and tag bytes of one frame (the body is written separately, without a copy). */
export function encodeFrameHead(h: Omit<FrameHeader, 'tagHash'>): Buffer {
  const tagBytes = Buffer.from(h.tag, 'utf8');
  if (tagBytes.length > 0xffff) throw new RangeError(`tag of ${tagBytes.length} bytes is too long`);
  const b = Buffer.allocUnsafe(HEADER_BYTES + tagBytes.length);
  b.writeUInt32LE(FRAME_MAGIC, 0);
  b[4] = h.type;
  b[5] = h.kind;
  b[6] = h.op;
  b[7] = h.dtype;
  b.writeUInt32LE(h.seq >>> 0, 8);
  b.writeUInt32LE(tagHash(h.tag), 12);
  b.writeUInt32LE(h.n >>> 0, 16);
  b.writeInt32LE(h.root | 0, 20);
  b.writeUInt32LE(h.part >>> 0, 24);
  b.writeUInt32LE(h.bodyLen >>> 0, 28);
  b.writeUInt16LE(tagBytes.length, 32);
  b.writeUInt16LE(h.from & 0xffff, 34);
  b.writeUInt32LE(0, 36);
  tagBytes.copy(b, HEADER_BYTES);
  return b;
}

/** A control frame: header plus a JSON body, as one buffer. */
export function encodeControl(type: number, from: number, body: unknown): Buffer {
  const json = Buffer.from(JSON.stringify(body), 'utf8');
  const head = encodeFrameHead({ type, kind: 0, op: 0, dtype: 0, seq: 0, n: 0, root: -1, part: 0, bodyLen: json.length, from, tag: '' });
  return Buffer.concat([head, json]);
}

/** Receives the frames of one connection. */
export interface FrameSink {
  /**
   * The header and tag of a frame are complete. Return where its body goes (exactly bodyLen bytes),
   * or null to have the reader collect it.
   */
  begin(h: FrameHeader): Uint8Array | null;
  /** The body is complete: `body` is the destination `begin` returned, or the collected bytes. */
  end(h: FrameHeader, body: Uint8Array): void;
}

/**
 * Incremental frame parser of one connection. `push` every chunk the socket delivers; it calls the
 * sink once per frame, copying bodies straight into the destination the sink chooses. Throws
 * FrameError on a corrupt header or an oversized body (the connection is then unusable).
 */
export class FrameReader {
  private readonly hdr = Buffer.alloc(HEADER_BYTES);
  private hdrFill = 0;
  private cur: FrameHeader | null = null;
  private tagLen = 0;
  private tagBuf: Buffer | null = null;
  private tagFill = 0;
  private inBody = false;
  private dest: Uint8Array | null = null;
  private destFill = 0;
  private failed = false;
  /** Called with any error thrown while handling a chunk (corrupt frames, or a failing sink). */
  onError: (e: Error) => void = () => {};

  constructor(
    public sink: FrameSink,
    /** Largest body accepted (data frames); control frames are limited to `maxControl`. */
    public maxBody: number,
    /** Who is on the other side, for error messages ("rank 3", "127.0.0.1:4567"). */
    public peerName: string,
    public maxControl = 1 << 20,
  ) {}

  /** Feed the socket's chunks to this reader (errors go to onError). */
  attach(socket: net.Socket): void {
    socket.on('data', (chunk: Buffer) => {
      try {
        this.push(chunk);
      } catch (e) {
        this.onError(e instanceof Error ? e : new Error(String(e)));
      }
    });
  }

  push(chunk: Buffer): void {
    if (this.failed) return;
    let off = 0;
    const len = chunk.length;
    while (off < len) {
      if (this.cur === null) {
        const take = Math.min(HEADER_BYTES - this.hdrFill, len - off);
        chunk.copy(this.hdr, this.hdrFill, off, off + take);
        this.hdrFill += take;
        off += take;
        if (this.hdrFill < HEADER_BYTES) return;
        this.hdrFill = 0;
        this.parseHeader();
        if (this.tagLen === 0) this.startBody();
        else {
          this.tagBuf = Buffer.allocUnsafe(this.tagLen);
          this.tagFill = 0;
        }
        this.finishIfEmpty();
        continue;
      }
      if (!this.inBody) {
        const take = Math.min(this.tagLen - this.tagFill, len - off);
        chunk.copy(this.tagBuf!, this.tagFill, off, off + take);
        this.tagFill += take;
        off += take;
        if (this.tagFill < this.tagLen) return;
        this.cur.tag = this.tagBuf!.toString('utf8');
        this.tagBuf = null;
        this.startBody();
        this.finishIfEmpty();
        continue;
      }
      const h = this.cur;
      const remaining = h.bodyLen - this.destFill;
      if (this.dest === null) {
        // Collect: a view of this chunk when the whole body lies in it, else a buffer of its own.
        if (this.destFill === 0 && len - off >= h.bodyLen) {
          const body = chunk.subarray(off, off + h.bodyLen);
          off += h.bodyLen;
          this.finish(body);
          continue;
        }
        this.dest = Buffer.allocUnsafe(h.bodyLen);
      }
      const take = Math.min(remaining, len - off);
      this.dest.set(chunk.subarray(off, off + take), this.destFill);
      this.destFill += take;
      off += take;
      if (this.destFill === h.bodyLen) this.finish(this.dest);
    }
  }

  private parseHeader(): void {
    const b = this.hdr;
    const magic = b.readUInt32LE(0);
    if (magic !== FRAME_MAGIC) {
      this.failed = true;
      throw new FrameError(`${this.peerName} sent a corrupt frame (bad magic 0x${magic.toString(16)}): not a caatnet peer, or the stream is out of step`);
    }
    const h: FrameHeader = {
      type: b[4]!,
      kind: b[5]!,
      op: b[6]!,
      dtype: b[7]!,
      seq: b.readUInt32LE(8),
      tagHash: b.readUInt32LE(12),
      n: b.readUInt32LE(16),
      root: b.readInt32LE(20),
      part: b.readUInt32LE(24),
      bodyLen: b.readUInt32LE(28),
      from: b.readUInt16LE(34),
      tag: '',
    };
    const max = h.type === FRAME.data ? this.maxBody : this.maxControl;
    if (h.bodyLen > max) {
      this.failed = true;
      throw new FrameError(`${this.peerName} sent a frame announcing ${h.bodyLen} bytes, more than the maximum of ${max} bytes`);
    }
    this.tagLen = b.readUInt16LE(32);
    this.cur = h;
    this.inBody = false;
  }

  private startBody(): void {
    const h = this.cur!;
    this.inBody = true;
    this.destFill = 0;
    const d = this.sink.begin(h);
    if (d !== null && d.byteLength !== h.bodyLen) {
      this.failed = true;
      throw new FrameError(`internal error: destination of ${d.byteLength} bytes for a body of ${h.bodyLen} bytes from ${this.peerName}`);
    }
    this.dest = d;
  }

  private finishIfEmpty(): void {
    if (this.cur !== null && this.inBody && this.cur.bodyLen === 0) this.finish(this.dest ?? new Uint8Array(0));
  }

  private finish(body: Uint8Array): void {
    const h = this.cur!;
    this.cur = null;
    this.inBody = false;
    this.dest = null;
    this.destFill = 0;
    this.sink.end(h, body);
  }
}

// ---------------------------------------------------------------------------------------------------
// Communicator
// ---------------------------------------------------------------------------------------------------

/** Defaults (see the options). */
export const TCP_DEFAULTS = {
  smallBytes: 64 * 1024,
  segmentBytes: 1024 * 1024,
  timeoutMs: 30_000,
} as const;

/** An established connection to one peer, as handed over by the rendezvous. */
export interface PeerConnection {
  socket: net.Socket;
  /** The reader already attached to the socket's 'data' events (its sink is replaced). */
  reader: FrameReader;
  /** Frames that arrived after the handshake, before the communicator existed. */
  early: { h: FrameHeader; body: Uint8Array }[];
}

export interface TcpCommOptions {
  rank: number;
  size: number;
  /** Index = peer rank; null at this rank's own index. */
  peers: (PeerConnection | null)[];
  /** A collective that does not complete within this time fails naming the rank(s) it waits for. */
  timeoutMs?: number;
  /** All-reduces of at most this many bytes per rank use the full exchange (default 64 KiB). */
  smallBytes?: number;
  /** Largest body of one data message of the segmented algorithms (default 1 MiB). */
  segmentBytes?: number;
  /** Headers announcing a larger body are refused (default: the largest the algorithms send). */
  maxMessageBytes?: number;
}

interface Expect {
  seq: number;
  call: CollectiveCall;
  hash: number;
  part: number;
  bytes: number;
}

interface PostedRecv {
  e: Expect;
  dest: Uint8Array;
  done: () => void;
}

interface OutMsg {
  head: Buffer;
  body: Uint8Array | null;
  cb: (err?: Error | null) => void;
}

class PeerLink {
  readonly posted: PostedRecv[] = [];
  postedHead = 0;
  inflight: PostedRecv | null = null;
  /** A data frame whose header did not match: its body is discarded. */
  discarding = false;
  readonly early: { h: FrameHeader; body: Uint8Array }[] = [];
  earlyHead = 0;
  lastSeq = -1;
  gotBye = false;
  closed = false;
  readonly queue: OutMsg[] = [];
  blocked = false;

  constructor(
    readonly rank: number,
    readonly socket: net.Socket,
    readonly reader: FrameReader,
  ) {}

  pendingRecvs(): number {
    return this.posted.length - this.postedHead + (this.inflight ? 1 : 0);
  }
}

/** One collective in progress. */
class Op {
  /** Outstanding work: receives, sends, and one token held while the collective is being set up. */
  pending = 1;
  done = false;
  timer: NodeJS.Timeout | null = null;
  resolve!: () => void;
  reject!: (e: unknown) => void;
  readonly promise: Promise<void>;
  /** Called when pending reaches 0, before resolving (copy-out steps); may add work. */
  finalize: (() => void) | null = null;
  constructor(
    readonly seq: number,
    readonly call: CollectiveCall,
  ) {
    this.promise = new Promise<void>((res, rej) => {
      this.resolve = res;
      this.reject = rej;
    });
  }
}

function bytesOf(a: FloatArray, offset: number, length: number): Uint8Array {
  const bpe = a.BYTES_PER_ELEMENT;
  return new Uint8Array(a.buffer, a.byteOffset + offset * bpe, length * bpe);
}

function chunkBounds(n: number, N: number, c: number): [number, number] {
  return [Math.floor((c * n) / N), Math.floor(((c + 1) * n) / N)];
}

function segmentsOf(len: number, seg: number): number {
  return Math.max(1, Math.ceil(len / seg));
}

function overlaps(a: FloatArray, b: FloatArray): boolean {
  if (a.buffer !== b.buffer) return false;
  return a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

function describeHeader(h: FrameHeader): string {
  const call: CollectiveCall = {
    kind: KIND_CODES[h.kind] ?? 'barrier',
    op: OP_CODES[h.op] ?? '',
    tag: h.tag,
    dtype: DTYPE_CODES[h.dtype] ?? 'none',
    n: h.n,
    root: h.root,
    buf: null,
    offset: 0,
    inp: null,
  };
  return describeCall(call);
}

/**
 * A Communicator over an established mesh of TCP connections (see the module comment). Build one
 * with `rendezvous()`; `close()` says goodbye to every peer and closes the connections.
 */
export class TcpCommunicator extends SerialCommunicator {
  readonly rank: number;
  readonly size: number;
  readonly transport = 'tcp';
  /** Collective timeout (ms); see withTimeout. */
  timeoutMs: number;
  readonly smallBytes: number;
  readonly segmentBytes: number;
  readonly maxMessageBytes: number;
  private readonly links: (PeerLink | null)[];
  private seq = 0;
  private chain: Promise<void> = Promise.resolve();
  private op: Op | null = null;
  private failure: { rank: number; message: string; err: Error | null } | null = null;
  private scratch = new ArrayBuffer(0);
  private closing: Promise<void> | null = null;
  private byeWaiters: (() => void)[] = [];
  private exitHookInstalled = false;

  constructor(o: TcpCommOptions) {
    super();
    this.rank = o.rank;
    this.size = o.size;
    this.timeoutMs = o.timeoutMs ?? TCP_DEFAULTS.timeoutMs;
    this.smallBytes = o.smallBytes ?? TCP_DEFAULTS.smallBytes;
    // Segments are whole float64 elements.
    this.segmentBytes = Math.max(8, Math.floor((o.segmentBytes ?? TCP_DEFAULTS.segmentBytes) / 8) * 8);
    this.maxMessageBytes = o.maxMessageBytes ?? Math.max(this.smallBytes, this.segmentBytes);
    if (o.peers.length !== o.size) throw new RangeError(`TcpCommunicator: ${o.peers.length} peer entries for a group of ${o.size}`);
    this.links = o.peers.map((p, r) => {
      if (r === o.rank) return null;
      if (!p) throw new RangeError(`TcpCommunicator: no connection to rank ${r}`);
      return new PeerLink(r, p.socket, p.reader);
    });
    for (const link of this.links) {
      if (!link) continue;
      const p = o.peers[link.rank]!;
      this.attach(link);
      for (const f of p.early) link.early.push(f);
      p.early.length = 0;
      for (const f of link.early) if (f.h.type !== FRAME.data) this.control(link, f.h, f.body);
      if (p.socket.destroyed) this.lost(link, 'the connection closed during the rendezvous');
    }
  }

  // ---- connection handling -----------------------------------------------------------------------

  private attach(link: PeerLink): void {
    const s = link.socket;
    s.setNoDelay(true);
    s.removeAllListeners('end');
    s.removeAllListeners('close');
    s.removeAllListeners('error');
    s.removeAllListeners('drain');
    s.removeAllListeners('timeout');
    s.setTimeout(0);
    link.reader.maxBody = this.maxMessageBytes;
    link.reader.peerName = `rank ${link.rank}`;
    link.reader.onError = (e) => this.fail(link.rank, `protocol error: ${e.message}`, null, true);
    link.reader.sink = {
      begin: (h) => this.begin(link, h),
      end: (h, body) => this.end(link, h, body),
    };
    s.on('drain', () => this.pump(link));
    s.on('error', (e: Error) => this.lost(link, e.message));
    s.on('end', () => this.lost(link, 'the connection was closed'));
    s.on('close', () => this.lost(link, 'the connection was closed'));
  }

  /** The peer's connection ended. Fatal unless it said goodbye first (or we are already done). */
  private lost(link: PeerLink, why: string): void {
    if (link.closed) return;
    link.closed = true;
    this.wakeByeWaiters();
    if (link.gotBye && link.pendingRecvs() === 0) return;
    this.fail(link.rank, `connection to rank ${link.rank} lost (${why}): the process exited, was killed or its host is unreachable`, null, true);
  }

  /** A collective needs a peer whose connection is already gone. */
  private closedPeer(link: PeerLink): void {
    const how = link.gotBye ? 'closed its connection after saying goodbye' : 'lost its connection';
    this.fail(link.rank, `rank ${link.rank} ${how}, but rank ${this.rank} still needs it for collective #${this.op?.seq ?? this.seq}`, null, true);
  }

  private begin(link: PeerLink, h: FrameHeader): Uint8Array | null {
    if (h.from !== link.rank) {
      this.protocolError(link, `rank ${link.rank}'s connection carried a frame from rank ${h.from}`);
      return null;
    }
    if (h.type !== FRAME.data) return null;
    link.lastSeq = Math.max(link.lastSeq, h.seq);
    if (this.failure) {
      link.discarding = true;
      return null;
    }
    if (link.postedHead < link.posted.length) {
      const r = link.posted[link.postedHead]!;
      link.posted[link.postedHead] = undefined as unknown as PostedRecv;
      link.postedHead++;
      if (link.postedHead === link.posted.length) {
        link.posted.length = 0;
        link.postedHead = 0;
      }
      if (!this.check(link, r.e, h)) {
        link.discarding = true;
        return null;
      }
      link.inflight = r;
      return r.dest;
    }
    return null;
  }

  private end(link: PeerLink, h: FrameHeader, body: Uint8Array): void {
    if (h.type !== FRAME.data) {
      this.control(link, h, body);
      return;
    }
    if (link.discarding) {
      link.discarding = false;
      return;
    }
    const r = link.inflight;
    if (r) {
      link.inflight = null;
      r.done();
      return;
    }
    // Collected because nothing was expected when its header arrived; a collective may have started
    // meanwhile, and this frame comes first for it.
    if (link.postedHead < link.posted.length) {
      const p = link.posted[link.postedHead]!;
      link.posted[link.postedHead] = undefined as unknown as PostedRecv;
      link.postedHead++;
      if (link.postedHead === link.posted.length) {
        link.posted.length = 0;
        link.postedHead = 0;
      }
      if (!this.check(link, p.e, h)) return;
      p.dest.set(body);
      p.done();
      return;
    }
    link.early.push({ h, body });
  }

  private control(link: PeerLink, h: FrameHeader, body: Uint8Array): void {
    if (h.type === FRAME.abort) {
      let info: { rank?: unknown; message?: unknown } = {};
      try {
        info = JSON.parse(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8')) as typeof info;
      } catch {
        // a corrupt abort still means the peer failed
      }
      const rank = typeof info.rank === 'number' ? info.rank : link.rank;
      const message = typeof info.message === 'string' ? info.message : `rank ${link.rank} aborted`;
      this.fail(rank, message, null, true);
      return;
    }
    if (h.type === FRAME.bye) {
      link.gotBye = true;
      this.wakeByeWaiters();
      return;
    }
    this.protocolError(link, `unexpected control frame of type ${h.type} from rank ${link.rank}`);
  }

  private protocolError(link: PeerLink, message: string): void {
    this.fail(link.rank, `protocol error: ${message}`, null, true);
  }

  /** Does a received header match what this rank expects? On a mismatch, fail the group. */
  private check(link: PeerLink, e: Expect, h: FrameHeader): boolean {
    const c = e.call;
    const same =
      h.seq === e.seq &&
      KIND_CODES[h.kind] === c.kind &&
      OP_CODES[h.op] === c.op &&
      DTYPE_CODES[h.dtype] === c.dtype &&
      h.n === c.n &&
      h.root === c.root &&
      h.tagHash === e.hash &&
      h.tag === c.tag;
    if (!same) {
      const theirs = h.seq === e.seq ? describeHeader(h) : `${describeHeader(h)} as its collective #${h.seq}`;
      const msg = `collective #${e.seq} mismatch: rank ${this.rank} called ${describeCall(c)} but rank ${link.rank} called ${theirs}`;
      this.fail(link.rank, msg, new CommMismatchError(e.seq, [this.rank, link.rank], msg), true);
      return false;
    }
    if (h.part !== e.part || h.bodyLen !== e.bytes) {
      this.protocolError(link, `collective #${e.seq}: rank ${link.rank} sent part ${h.part} of ${h.bodyLen} bytes, rank ${this.rank} expected part ${e.part} of ${e.bytes} bytes`);
      return false;
    }
    return true;
  }

  // ---- sending -----------------------------------------------------------------------------------

  private sendRaw(link: PeerLink, msg: OutMsg): void {
    const s = link.socket;
    let ok: boolean;
    if (msg.body && msg.body.byteLength > 0) {
      s.cork();
      s.write(msg.head);
      ok = s.write(msg.body, msg.cb);
      s.uncork();
    } else {
      ok = s.write(msg.head, msg.cb);
    }
    if (!ok) link.blocked = true;
  }

  private pump(link: PeerLink): void {
    link.blocked = false;
    while (!link.blocked && link.queue.length > 0) this.sendRaw(link, link.queue.shift()!);
  }

  /** Queue one data message of the current collective; `op.pending` covers it until written. */
  private send(op: Op, to: number, part: number, body: Uint8Array): void {
    const link = this.links[to]!;
    const c = op.call;
    const head = encodeFrameHead({
      type: FRAME.data,
      kind: KIND_CODES.indexOf(c.kind),
      op: OP_CODES.indexOf(c.op),
      dtype: DTYPE_CODES.indexOf(c.dtype),
      seq: op.seq,
      n: c.n,
      root: c.root,
      part,
      bodyLen: body.byteLength,
      from: this.rank,
      tag: c.tag,
    });
    op.pending++;
    const msg: OutMsg = {
      head,
      body,
      cb: (err) => {
        if (err) {
          this.lost(link, err.message);
          return;
        }
        this.release(op);
      },
    };
    if (link.closed) {
      this.closedPeer(link);
      return;
    }
    if (link.blocked || link.queue.length > 0) link.queue.push(msg);
    else this.sendRaw(link, msg);
  }

  /** Expect one data message of the current collective from `from` into `dest`. */
  private recv(op: Op, from: number, part: number, dest: Uint8Array, done?: () => void): void {
    const link = this.links[from]!;
    const e: Expect = { seq: op.seq, call: op.call, hash: tagHash(op.call.tag), part, bytes: dest.byteLength };
    op.pending++;
    const finish = (): void => {
      if (op.done) return;
      done?.();
      this.release(op);
    };
    // A message that arrived before this collective started.
    while (link.earlyHead < link.early.length) {
      const f = link.early[link.earlyHead]!;
      if (f.h.type !== FRAME.data) {
        link.earlyHead++;
        continue;
      }
      link.early[link.earlyHead] = undefined as unknown as { h: FrameHeader; body: Uint8Array };
      link.earlyHead++;
      if (link.earlyHead === link.early.length) {
        link.early.length = 0;
        link.earlyHead = 0;
      }
      if (!this.check(link, e, f.h)) return;
      dest.set(f.body);
      finish();
      return;
    }
    if (link.closed) {
      this.closedPeer(link);
      return;
    }
    link.posted.push({ e, dest, done: finish });
  }

  private release(op: Op): void {
    if (op.done) return;
    if (--op.pending > 0) return;
    if (op.finalize) {
      const f = op.finalize;
      op.finalize = null;
      op.pending++;
      try {
        f();
      } catch (e) {
        this.fail(this.rank, `tcp transport error: ${errorMessage(e)}`, null, true);
        return;
      }
      this.release(op);
      return;
    }
    op.done = true;
    if (op.timer) clearTimeout(op.timer);
    if (this.op === op) this.op = null;
    op.resolve();
  }

  // ---- failure -----------------------------------------------------------------------------------

  /**
   * Poison the group. `err` is what the current collective rejects with (default CommAbortedError);
   * `tell` sends (or relays) an ABORT frame to every peer.
   */
  private fail(rank: number, message: string, err: Error | null, tell: boolean): void {
    if (this.failure) return;
    this.failure = { rank, message, err };
    if (tell) {
      const frame = encodeControl(FRAME.abort, this.rank, { rank, message: message.slice(0, 16_000) });
      for (const link of this.links) {
        if (!link || link.closed || link.socket.destroyed) continue;
        try {
          link.socket.write(frame);
        } catch {
          // the peer is gone; nothing to tell
        }
      }
    }
    for (const link of this.links) {
      if (!link) continue;
      link.posted.length = 0;
      link.postedHead = 0;
      link.inflight = null;
      link.queue.length = 0;
    }
    const op = this.op;
    this.op = null;
    if (op && !op.done) {
      op.done = true;
      if (op.timer) clearTimeout(op.timer);
      op.reject(err ?? new CommAbortedError(rank, message));
    }
    this.wakeByeWaiters();
  }

  private abortedError(): Error {
    const f = this.failure!;
    return new CommAbortedError(f.rank, f.message);
  }

  private onTimeout(op: Op): void {
    if (op.done) return;
    const missing: number[] = [];
    const notReached: number[] = [];
    for (const link of this.links) {
      if (!link) continue;
      const waits = link.pendingRecvs() > 0 || link.blocked || link.queue.length > 0;
      if (!waits) continue;
      missing.push(link.rank);
      if (link.lastSeq < op.seq) notReached.push(link.rank);
    }
    const secs = `${(this.timeoutMs / 1000).toFixed(this.timeoutMs % 1000 === 0 ? 0 : 1)} s`;
    const what = `collective #${op.seq} ${describeCall(op.call)}`;
    const blame = notReached.length > 0 ? notReached : missing;
    const rank = blame[0] ?? this.rank;
    const list = blame.length > 1 ? `ranks ${blame.join(', ')}` : `rank ${rank}`;
    const message =
      notReached.length > 0
        ? `${list} did not reach ${what} within ${secs} (rank ${this.rank} waited; the process hangs, is stopped, or is far behind)`
        : `${what} did not complete within ${secs}: rank ${this.rank} still waits for ${list}`;
    this.fail(rank, message, null, true);
  }

  // ---- collectives -------------------------------------------------------------------------------

  private scratchOf(dtype: DType, elements: number): FloatArray {
    const bytes = elements * (dtype === 'float64' ? 8 : 4);
    if (this.scratch.byteLength < bytes) this.scratch = new ArrayBuffer(Math.max(bytes, this.scratch.byteLength * 2));
    return dtype === 'float64' ? new Float64Array(this.scratch, 0, elements) : new Float32Array(this.scratch, 0, elements);
  }

  protected issue(t0: number, make: () => CollectiveCall): Promise<void> {
    if (this.failure) return Promise.reject(this.abortedError());
    let call: CollectiveCall;
    try {
      call = make();
    } catch (e) {
      // A call that cannot take part would leave the other ranks waiting: fail the group.
      this.fail(this.rank, `${errorMessage(e)} (rank ${this.rank})`, null, true);
      return Promise.reject(e);
    }
    const seq = this.seq++;
    const run = async (): Promise<void> => {
      if (this.failure) throw this.abortedError();
      await this.execute(seq, call);
      this.counters.record(call.tag, payloadBytes(call, this.size), performance.now() - t0);
    };
    const p = this.chain.then(run);
    this.chain = p.catch(() => {});
    return p;
  }

  private execute(seq: number, c: CollectiveCall): Promise<void> {
    if (this.size === 1) {
      if ((c.kind === 'reduceScatter' || c.kind === 'allGather') && c.n > 0) {
        const out = c.buf!;
        const inp = c.inp!;
        if (out.buffer !== inp.buffer || out.byteOffset !== inp.byteOffset) out.set(inp.subarray(0, c.n), 0);
      }
      return Promise.resolve();
    }
    const op = new Op(seq, c);
    this.op = op;
    op.timer = setTimeout(() => this.onTimeout(op), this.timeoutMs);
    try {
      switch (c.kind) {
        case 'barrier':
          this.barrierOp(op);
          break;
        case 'allReduce':
          if (c.n * (c.dtype === 'float64' ? 8 : 4) <= this.smallBytes) this.allReduceSmall(op);
          else this.allReduceLarge(op);
          break;
        case 'reduceScatter':
          this.reduceScatterOp(op);
          break;
        case 'allGather':
          this.allGatherOp(op);
          break;
        case 'broadcast':
          this.broadcastOp(op);
          break;
      }
    } catch (e) {
      this.fail(this.rank, `tcp transport error: ${errorMessage(e)}`, null, true);
    }
    this.release(op);
    return op.promise;
  }

  private peers(): number[] {
    // Start with the next rank so that not every rank addresses rank 0 first.
    const out: number[] = [];
    for (let k = 1; k < this.size; k++) out.push((this.rank + k) % this.size);
    return out;
  }

  private barrierOp(op: Op): void {
    const empty = new Uint8Array(0);
    for (const p of this.peers()) this.send(op, p, 0, empty);
    for (const p of this.peers()) this.recv(op, p, 0, new Uint8Array(0));
  }

  /** Full exchange; every rank sums the N regions in rank order. */
  private allReduceSmall(op: Op): void {
    const c = op.call;
    const buf = c.buf!;
    const n = c.n;
    const N = this.size;
    const me = this.rank;
    const mine = bytesOf(buf, c.offset, n);
    for (const p of this.peers()) this.send(op, p, 0, mine);
    const all = this.scratchOf(c.dtype, N * n);
    for (const p of this.peers()) this.recv(op, p, 0, bytesOf(all, p * n, n));
    op.finalize = () => {
      if (n === 0) return;
      const srcs: FloatArray[] = [];
      const offs: number[] = [];
      for (let r = 0; r < N; r++) {
        srcs.push(r === me ? buf : all);
        offs.push(r === me ? c.offset : r * n);
      }
      // Rank 0 may reduce in place (dst aliases srcs[0] at the same offset); other ranks reduce into
      // their own (already sent) slot of the staging area, then copy out.
      if (me === 0) reduceRanks(buf, c.offset, srcs, offs, n, c.op === '' ? 'sum' : c.op);
      else {
        reduceRanks(all, me * n, srcs, offs, n, c.op === '' ? 'sum' : c.op);
        buf.set(all.subarray(me * n, (me + 1) * n), c.offset);
      }
    };
  }

  /** Direct reduce-scatter to chunk owners (rank-order sums), then direct all-gather of the results. */
  private allReduceLarge(op: Op): void {
    const c = op.call;
    const buf = c.buf!;
    const n = c.n;
    const N = this.size;
    const me = this.rank;
    const bpe = c.dtype === 'float64' ? 8 : 4;
    const seg = this.segmentBytes / bpe;
    const reduceOp: ReduceOp = c.op === '' ? 'sum' : c.op;
    const [ms, me_] = chunkBounds(n, N, me);
    const myLen = me_ - ms;
    // Messages from p to q: first p's contributions to chunk q (segs[q] parts), then the results of
    // chunk p (parts segs[q] + s).
    const segs: number[] = [];
    for (let r = 0; r < N; r++) {
      const [a, b] = chunkBounds(n, N, r);
      segs.push(segmentsOf(b - a, seg));
    }
    const mySegs = segs[me]!;
    // Staging: N slots of my chunk's length; slot r holds rank r's contribution (my own copied in).
    const stage = this.scratchOf(c.dtype, N * myLen);
    const srcs: FloatArray[] = [];
    const offs: number[] = [];
    for (let r = 0; r < N; r++) {
      srcs.push(stage);
      offs.push(r * myLen);
    }
    // 1. Contributions: my part of chunk p goes to its owner p, segment by segment.
    for (const p of this.peers()) {
      const [ps, pe] = chunkBounds(n, N, p);
      for (let s = 0; s < segs[p]!; s++) {
        const a = ps + s * seg;
        const b = Math.min(pe, a + seg);
        this.send(op, p, s, bytesOf(buf, c.offset + a, b - a));
      }
    }
    // 2. My chunk: once all N−1 contributions of segment s are in, sum in rank order into my region
    //    of buf and send the result to everyone.
    stage.set(buf.subarray(c.offset + ms, c.offset + me_), me * myLen);
    const arrived = new Int32Array(mySegs);
    const onContribution = (s: number): void => {
      if (++arrived[s]! < N - 1) return;
      const a = s * seg;
      const b = Math.min(myLen, a + seg);
      reduceRanks(buf, c.offset + ms + a, srcs, offs.map((o) => o + a), b - a, reduceOp);
      const result = bytesOf(buf, c.offset + ms + a, b - a);
      for (const p of this.peers()) this.send(op, p, segs[p]! + s, result);
    };
    for (const p of this.peers()) {
      for (let s = 0; s < mySegs; s++) {
        const a = s * seg;
        const b = Math.min(myLen, a + seg);
        this.recv(op, p, s, bytesOf(stage, p * myLen + a, b - a), () => onContribution(s));
      }
    }
    // 3. The other chunks' results, received in place. (My contribution to chunk p was fully
    //    received by p before p sends its result, so overwriting it here is safe.)
    for (const p of this.peers()) {
      const [ps, pe] = chunkBounds(n, N, p);
      for (let s = 0; s < segs[p]!; s++) {
        const a = ps + s * seg;
        const b = Math.min(pe, a + seg);
        this.recv(op, p, mySegs + s, bytesOf(buf, c.offset + a, b - a));
      }
    }
  }

  private reduceScatterOp(op: Op): void {
    const c = op.call;
    const out = c.buf!;
    const inp = c.inp!;
    const n = c.n;
    const N = this.size;
    const me = this.rank;
    const bpe = c.dtype === 'float64' ? 8 : 4;
    const seg = this.segmentBytes / bpe;
    const segs = segmentsOf(n, seg);
    for (const p of this.peers()) {
      for (let s = 0; s < segs; s++) {
        const a = s * seg;
        const b = Math.min(n, a + seg);
        this.send(op, p, s, bytesOf(inp, p * n + a, b - a));
      }
    }
    // Staging: N slots of n elements (slot me stays unused: my own block is read from inp), plus the
    // result, copied to out at the end (out may alias inp, which is being sent).
    const stage = this.scratchOf(c.dtype, (N + 1) * n);
    const srcs: FloatArray[] = [];
    const offs: number[] = [];
    for (let r = 0; r < N; r++) {
      srcs.push(r === me ? inp : stage);
      offs.push(r === me ? me * n : r * n);
    }
    const res = N * n;
    const arrived = new Int32Array(segs);
    const onContribution = (s: number): void => {
      if (++arrived[s]! < N - 1) return;
      const a = s * seg;
      const b = Math.min(n, a + seg);
      reduceRanks(stage, res + a, srcs, offs.map((o) => o + a), b - a, 'sum');
    };
    for (const p of this.peers()) {
      for (let s = 0; s < segs; s++) {
        const a = s * seg;
        const b = Math.min(n, a + seg);
        this.recv(op, p, s, bytesOf(stage, p * n + a, b - a), () => onContribution(s));
      }
    }
    op.finalize = () => {
      if (n > 0) out.set(stage.subarray(res, res + n), 0);
    };
  }

  private allGatherOp(op: Op): void {
    const c = op.call;
    const out = c.buf!;
    let inp = c.inp!.subarray(0, c.n);
    const n = c.n;
    const me = this.rank;
    const bpe = c.dtype === 'float64' ? 8 : 4;
    const seg = this.segmentBytes / bpe;
    const segs = segmentsOf(n, seg);
    const own = out.subarray(me * n, (me + 1) * n);
    // The input may lie inside the output: in place (exactly this rank's block) is fine; anywhere else
    // it would be overwritten by incoming blocks while being sent, so send a copy.
    if (overlaps(inp, out) && !(inp.buffer === own.buffer && inp.byteOffset === own.byteOffset)) inp = inp.slice();
    own.set(inp);
    for (const p of this.peers()) {
      for (let s = 0; s < segs; s++) {
        const a = s * seg;
        const b = Math.min(n, a + seg);
        this.send(op, p, s, bytesOf(own, a, b - a));
      }
    }
    for (const p of this.peers()) {
      for (let s = 0; s < segs; s++) {
        const a = s * seg;
        const b = Math.min(n, a + seg);
        this.recv(op, p, s, bytesOf(out, p * n + a, b - a));
      }
    }
  }

  private broadcastOp(op: Op): void {
    const c = op.call;
    const buf = c.buf!;
    const n = c.n;
    const bpe = c.dtype === 'float64' ? 8 : 4;
    const seg = this.segmentBytes / bpe;
    const segs = segmentsOf(n, seg);
    if (this.rank === c.root) {
      for (const p of this.peers()) {
        for (let s = 0; s < segs; s++) {
          const a = s * seg;
          const b = Math.min(n, a + seg);
          this.send(op, p, s, bytesOf(buf, c.offset + a, b - a));
        }
      }
      for (const p of this.peers()) this.recv(op, p, 0, new Uint8Array(0));
    } else {
      this.send(op, c.root, 0, new Uint8Array(0));
      for (let s = 0; s < segs; s++) {
        const a = s * seg;
        const b = Math.min(n, a + seg);
        this.recv(op, c.root, s, bytesOf(buf, c.offset + a, b - a));
      }
    }
  }

  // ---- Communicator ------------------------------------------------------------------------------

  override abort(error: unknown): void {
    if (this.failure) return;
    const rank = error instanceof CommAbortedError ? error.failedRank : this.rank;
    this.fail(rank, errorMessage(error), null, true);
  }

  /** The failure that poisoned the group, if any. */
  get failed(): { rank: number; message: string } | null {
    return this.failure ? { rank: this.failure.rank, message: this.failure.message } : null;
  }

  /** Run `fn` with a different collective timeout (e.g. a long wait for data preparation). */
  async withTimeout<T>(ms: number, fn: () => Promise<T>): Promise<T> {
    await this.chain.catch(() => {});
    const prev = this.timeoutMs;
    this.timeoutMs = ms;
    try {
      return await fn();
    } finally {
      this.timeoutMs = prev;
    }
  }

  // ---- shutdown ----------------------------------------------------------------------------------

  private wakeByeWaiters(): void {
    const w = this.byeWaiters;
    this.byeWaiters = [];
    for (const f of w) f();
  }

  /**
   * Close every connection. After a clean run: send goodbye to every peer and wait (up to the
   * timeout) until every peer said goodbye or closed, so that no rank mistakes the closing sockets
   * for a failure and no unread data turns a close into a reset. After a failure: flush the ABORT
   * frames and close. Idempotent.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closing = (async () => {
      await this.chain.catch(() => {});
      const links = this.links.filter((l): l is PeerLink => l !== null);
      for (const l of links) l.socket.ref();
      if (!this.failure) {
        const bye = encodeControl(FRAME.bye, this.rank, {});
        for (const l of links) if (!l.closed) l.socket.write(bye);
        const deadline = Date.now() + Math.min(this.timeoutMs, 10_000);
        while (!this.failure && links.some((l) => !l.gotBye && !l.closed) && Date.now() < deadline) {
          await new Promise<void>((res) => {
            const t = setTimeout(res, Math.max(1, deadline - Date.now()));
            this.byeWaiters.push(() => {
              clearTimeout(t);
              res();
            });
          });
        }
      }
      for (const l of links) {
        l.closed = true;
        l.socket.end();
        const t = setTimeout(() => l.socket.destroy(), 500);
        t.unref();
        l.socket.once('close', () => clearTimeout(t));
      }
    })();
    return this.closing;
  }

  /**
   * Let the process exit when it has nothing else to do: the connections stop keeping the event loop
   * alive, and just before the process would exit the group is closed cleanly (goodbye to every peer).
   * Used by commands that do not close the communicator themselves (generate, eval).
   */
  closeOnExit(): void {
    if (this.exitHookInstalled) return;
    this.exitHookInstalled = true;
    for (const l of this.links) l?.socket.unref();
    const hook = (): void => {
      process.off('beforeExit', hook);
      void this.close();
    };
    process.on('beforeExit', hook);
  }
}
