/**
 * Collective sequences shared by the communicator tests, and the worker module the threads-transport
 * tests launch (compiled to dist/test/helpers/comm-worker.js). Imported in the main thread it only
 * exports helpers; started by launchThreadGroup it runs the scenario named in its workerData.
 */
import { CommAbortedError, type Communicator } from '../../src/tp/comm.js';
import { isThreadGroupWorker, joinThreadGroup } from '../../src/transport/threads.js';
import { mulberry32 } from '../../src/util/random.js';

export { mulberry32 };

/**
 * Values whose float32 sum depends on the order: wide magnitudes, both signs, and the cancelling
 * triple 1e8, 1, −1e8.
 */
export function fillTricky(a: Float32Array | Float64Array, rnd: () => number): void {
  const special = [1e8, 1, -1e8, 3.25, -0.5, 1e-7, 16777216, 1.5];
  for (let i = 0; i < a.length; i++) {
    const u = rnd();
    if (u < 0.25) a[i] = special[Math.floor(rnd() * special.length)]!;
    else a[i] = (rnd() - 0.5) * 2 ** Math.floor(rnd() * 48 - 24);
  }
}

export type Floats = Float32Array | Float64Array;

export interface MixedResult {
  outs: Floats[];
  bytes: [string, number][];
  calls: [string, number][];
}

/**
 * A fixed sequence of mixed collectives on rank-dependent data (same seed → same inputs on every
 * transport). Sizes exceed small staging slots so the threads transport runs several rounds.
 */
export async function mixedSequence(comm: Communicator, seed: number): Promise<MixedResult> {
  const N = comm.size;
  const r = comm.rank;
  const rnd = mulberry32(seed * 7919 + r * 104729 + 1);
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

  const a = f32(37);
  await comm.allReduce(a, 'sum', 'ar.full');
  outs.push(a);

  const b = f32(3010);
  await comm.allReduce(b, 'sum', 'ar.region', 5, 3001);
  outs.push(b);

  const c = f32(100);
  await comm.allReduce(c, 'max', 'ar.max');
  outs.push(c);

  const rsIn = f32(N * 129 + 3);
  const rsOut = f32(130);
  await comm.reduceScatter(rsOut, rsIn, 'rs', 129);
  outs.push(rsOut, rsIn);

  const agIn = f32(77);
  const agOut = f32(N * 77 + 1);
  await comm.allGather(agOut, agIn, 'ag');
  outs.push(agOut);

  const bc = f32(1510);
  await comm.broadcast(bc, N - 1, 'bc', 2, 1500);
  outs.push(bc);

  await comm.barrier('sync');

  const d = f64(513);
  await comm.allReduce(d, 'sum', 'ar.f64');
  outs.push(d);

  // In-place all-gather: the input is this rank's block of the output.
  const ip = f32(N * 50);
  await comm.allGather(ip, ip.subarray(r * 50, (r + 1) * 50), 'ag.inplace');
  outs.push(ip);

  const rs2In = f32(N * 1000);
  const rs2Out = new Float32Array(1000);
  await comm.reduceScatter(rs2Out, rs2In, 'rs.big');
  outs.push(rs2Out);

  const e = f32(8);
  await comm.allReduce(e, 'sum', 'ar.empty', 3, 0);
  outs.push(e);

  const g = f64(700);
  await comm.broadcast(g, 0, 'bc.f64');
  outs.push(g);

  const h = f32(5000);
  await comm.allReduce(h, 'max', 'ar.max.big');
  await comm.allReduce(h, 'sum', 'ar.sum.big');
  outs.push(h);

  const st = comm.stats();
  return { outs, bytes: [...st.bytes], calls: [...st.calls] };
}

export interface ScenarioData {
  scenario: 'mixed' | 'throw' | 'exit' | 'crash' | 'mismatch' | 'echo';
  seed?: number;
  /** throw / exit: the rank that fails, and at which step. */
  failRank?: number;
  failAt?: number;
  /** throw: after their CommAbortedError, the other ranks hang forever instead of rethrowing. */
  hangOthers?: boolean;
  /** throw: per rank, 1 when it received CommAbortedError naming failRank with the original message. */
  verdicts?: SharedArrayBuffer;
}

function hangForever(): Promise<never> {
  setInterval(() => {}, 1000);
  return new Promise<never>(() => {});
}

async function scenarioRank(comm: Communicator, d: ScenarioData): Promise<unknown> {
  switch (d.scenario) {
    case 'mixed':
      return mixedSequence(comm, d.seed ?? 1);
    case 'echo':
      return { rank: comm.rank, size: comm.size, transport: comm.transport };
    case 'mismatch': {
      const buf = new Float32Array(4);
      await comm.allReduce(buf, 'sum', 'ok');
      await comm.allReduce(buf, 'sum', comm.rank < comm.size / 2 ? 'tag.a' : 'tag.b');
      return 'unreachable';
    }
    case 'throw':
    case 'exit': {
      const failRank = d.failRank ?? 0;
      const failAt = d.failAt ?? 2;
      const original = `boom on rank ${failRank} at step ${failAt}`;
      const buf = new Float32Array(64).fill(comm.rank);
      for (let step = 0; step < 1000; step++) {
        if (comm.rank === failRank && step === failAt) {
          if (d.scenario === 'exit') process.exit(3);
          throw new Error(original);
        }
        try {
          await comm.allReduce(buf, 'sum', 'loop');
          if (step % 2 === 1) await comm.barrier('loop.sync');
        } catch (e) {
          if (d.verdicts) {
            const ok = e instanceof CommAbortedError && e.failedRank === failRank && e.original === original;
            Atomics.store(new Int32Array(d.verdicts), comm.rank, ok ? 1 : 2);
          }
          if (d.hangOthers) await hangForever();
          throw e;
        }
      }
      return 'finished';
    }
    case 'crash': {
      const buf = new Float32Array(8);
      await comm.allReduce(buf, 'sum', 'before.crash');
      if (comm.rank === (d.failRank ?? 0)) {
        setTimeout(() => {
          throw new Error('kaboom outside any rank');
        }, 10);
        await hangForever();
      }
      await comm.allReduce(buf, 'sum', 'after.crash');
      return 'unreachable';
    }
  }
}

if (isThreadGroupWorker()) {
  const member = joinThreadGroup<ScenarioData>();
  await member.run((comm) => scenarioRank(comm, member.workerData));
}
