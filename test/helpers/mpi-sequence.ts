/**
 * Collective sequences for the MPI transport tests, run both under mpirun (one rank per process,
 * test/helpers/mpi-collectives.ts) and on the virtual transport (all ranks in one thread) so the
 * results can be compared bit for bit. Every output is reduced to a SHA-256 of its bytes.
 *
 * `mpiSequence` adds to the shared `mixedSequence` (test/helpers/comm-worker.ts) what the MPI
 * transport does differently: payloads above the synchronous threshold (run on a pool thread), sizes
 * not divisible by the group size, max over NaN and ±0, in-place reduce-scatter and all-gather,
 * broadcasts from every root, empty collectives, and collectives issued without awaiting the previous
 * one (queued, in call order).
 */
import { createHash } from 'node:crypto';
import type { Communicator } from '../../src/tp/comm.js';
import { fillTricky, type Floats, mixedSequence, mulberry32 } from './comm-worker.js';

export interface SequenceResult {
  rank: number;
  size: number;
  /** SHA-256 (hex) of every output's bytes, in order. */
  hashes: string[];
  bytes: [string, number][];
  calls: [string, number][];
}

export function hashOf(a: Floats): string {
  return createHash('sha256').update(Buffer.from(a.buffer, a.byteOffset, a.byteLength)).digest('hex');
}

/** Rank r's input values for the large all-reduce (exported so the test can check order sensitivity). */
export function bigInput(seed: number, rank: number, n: number): Float32Array {
  const a = new Float32Array(n);
  fillTricky(a, mulberry32(seed * 31337 + rank * 7 + 11));
  return a;
}

export const BIG_N = 1_000_003;

export async function mpiSequence(comm: Communicator, seed: number): Promise<Floats[]> {
  const N = comm.size;
  const r = comm.rank;
  const rnd = mulberry32(seed * 6007 + r * 1009 + 3);
  const outs: Floats[] = [];
  const f32 = (n: number): Float32Array => {
    const a = new Float32Array(n);
    fillTricky(a, rnd);
    return a;
  };
  const f64 = (n: number): Float64Array => {
    const a = new Float64Array(n);
    fillTricky(a, rnd);
    return a;
  };

  // Large sum (pool-thread path), size not divisible by N, with a region offset.
  const big = new Float32Array(BIG_N + 7);
  big.set(bigInput(seed, r, BIG_N), 7);
  await comm.allReduce(big, 'sum', 'big.sum', 7, BIG_N);
  outs.push(big);

  const big64 = f64(300_001);
  await comm.allReduce(big64, 'sum', 'big.sum.f64');
  outs.push(big64);

  // Max over NaN, +0 and -0 (Math.max semantics), small and large.
  for (const n of [61, 20_011]) {
    const m = f32(n);
    for (let i = 0; i < n; i += 7) m[i] = (i + r) % 3 === 0 ? -0 : 0;
    for (let i = 3; i < n; i += 101) if ((i + r) % 5 === 0) m[i] = NaN;
    await comm.allReduce(m, 'max', `max.${n}`);
    outs.push(m);
  }
  const m64 = f64(4099);
  for (let i = 0; i < m64.length; i += 5) m64[i] = (i + r) % 2 === 0 ? -0 : 0;
  await comm.allReduce(m64, 'max', 'max.f64');
  outs.push(m64);

  // Reduce-scatter: large, f64, and in place (the output is this rank's block of the input).
  const rsN = 250_001;
  const rsIn = f32(N * rsN);
  const rsOut = new Float32Array(rsN);
  await comm.reduceScatter(rsOut, rsIn, 'rs.big');
  outs.push(rsOut);
  const rs64In = f64(N * 1_001);
  const rs64Out = new Float64Array(1_001);
  await comm.reduceScatter(rs64Out, rs64In, 'rs.f64');
  outs.push(rs64Out);
  const rsIp = f32(N * 40_000);
  await comm.reduceScatter(rsIp.subarray(r * 40_000, (r + 1) * 40_000), rsIp, 'rs.inplace');
  outs.push(rsIp.subarray(r * 40_000, (r + 1) * 40_000));

  // All-gather: large f64, and large in place.
  const agIn = f64(70_001);
  const agOut = new Float64Array(N * 70_001);
  await comm.allGather(agOut, agIn, 'ag.big.f64');
  outs.push(agOut);
  const agIp = f32(N * 33_333);
  await comm.allGather(agIp, agIp.subarray(r * 33_333, (r + 1) * 33_333), 'ag.inplace');
  outs.push(agIp);

  // Broadcast from every root, small and large.
  for (let root = 0; root < N; root++) {
    const s = f32(100);
    await comm.broadcast(s, root, `bc.small.${root}`, 1, 98);
    const l = f32(500_000);
    await comm.broadcast(l, root, `bc.large.${root}`);
    outs.push(s, l);
  }

  // Empty collectives.
  const e = f32(4);
  await comm.reduceScatter(e, f32(4 * N), 'rs.empty', 0);
  await comm.allGather(e, e, 'ag.empty', 0);
  await comm.broadcast(e, 0, 'bc.empty', 4, 0);
  outs.push(e);

  // Issued without awaiting: small, large, small, barrier, large (queued in call order).
  const q1 = f32(10);
  const q2 = f32(200_000);
  const q3 = f32(300);
  const q4 = f32(N * 50_000);
  const q4out = new Float32Array(50_000);
  await Promise.all([
    comm.allReduce(q1, 'sum', 'q.1'),
    comm.allReduce(q2, 'max', 'q.2'),
    comm.allReduce(q3, 'sum', 'q.3'),
    comm.barrier('q.sync'),
    comm.reduceScatter(q4out, q4, 'q.4'),
  ]);
  outs.push(q1, q2, q3, q4out);

  await comm.barrier('end');
  return outs;
}

/** mixedSequence (shared with the other transports' tests) followed by mpiSequence. */
export async function fullSequence(comm: Communicator, seed: number): Promise<SequenceResult> {
  const mixed = await mixedSequence(comm, seed);
  const outs = await mpiSequence(comm, seed);
  const st = comm.stats();
  return {
    rank: comm.rank,
    size: comm.size,
    hashes: [...mixed.outs, ...outs].map(hashOf),
    bytes: [...st.bytes],
    calls: [...st.calls],
  };
}
