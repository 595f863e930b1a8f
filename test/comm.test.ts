import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Worker } from 'node:worker_threads';
import { benchAllReduce } from '../src/transport/bench-comm.js';
import { CommAbortedError, type Communicator } from '../src/tp/comm.js';
import { launchThreadGroup } from '../src/transport/threads.js';
import { CommMismatchError } from '../src/transport/transport-common.js';
import { createVirtualGroup } from '../src/tp/virtual.js';
import { fillTricky, type MixedResult, mixedSequence, mulberry32, type ScenarioData } from './helpers/comm-worker.js';
import { assertBitwise, runRanks, values } from './helpers/ranks.js';

const WORKER = new URL('./helpers/comm-worker.js', import.meta.url);


/** Fixed-order reference: out = x0; out = fround(out + x1); … */
function refSum32(xs: Float32Array[], n: number, offs: number[] = xs.map(() => 0)): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let acc = xs[0]![offs[0]! + i]!;
    for (let r = 1; r < xs.length; r++) acc = Math.fround(acc + xs[r]![offs[r]! + i]!);
    out[i] = acc;
  }
  return out;
}

function rand32(n: number, rnd: () => number): Float32Array {
  const a = new Float32Array(n);
  fillTricky(a, rnd);
  return a;
}

describe('virtual transport: collectives against a direct computation', () => {
  for (const N of [1, 2, 3, 4, 8]) {
    it(`N = ${N}: allReduce (sum, max, region), reduceScatter, allGather, broadcast, barrier`, async () => {
      const rnd = mulberry32(1000 + N);
      const comms = createVirtualGroup(N);
      assert.equal(comms.length, N);
      comms.forEach((c, r) => {
        assert.equal(c.rank, r);
        assert.equal(c.size, N);
        assert.equal(c.transport, 'virtual');
      });

      // allReduce sum over a region; elements outside the region untouched.
      const len = 257;
      const ins = comms.map(() => rand32(len + 9, rnd));
      const bufs = ins.map((a) => a.slice());
      await Promise.all(comms.map((c, r) => c.allReduce(bufs[r]!, 'sum', 'ar', 4, len)));
      const want = refSum32(ins, len, ins.map(() => 4));
      for (let r = 0; r < N; r++) {
        assertBitwise(bufs[r]!.subarray(4, 4 + len), want, `allReduce sum rank ${r}`);
        assertBitwise(bufs[r]!.subarray(0, 4), ins[r]!.subarray(0, 4), 'before region');
        assertBitwise(bufs[r]!.subarray(4 + len), ins[r]!.subarray(4 + len), 'after region');
      }

      // allReduce max
      const mins = comms.map(() => rand32(100, rnd));
      const mbufs = mins.map((a) => a.slice());
      await Promise.all(comms.map((c, r) => c.allReduce(mbufs[r]!, 'max', 'max')));
      const mwant = new Float32Array(100).map((_, i) => Math.max(...mins.map((a) => a[i]!)));
      for (let r = 0; r < N; r++) assertBitwise(mbufs[r]!, mwant, `allReduce max rank ${r}`);

      // reduceScatter
      const n = 33;
      const rsIn = comms.map(() => rand32(N * n, rnd));
      const rsOut = comms.map(() => new Float32Array(n));
      await Promise.all(comms.map((c, r) => c.reduceScatter(rsOut[r]!, rsIn[r]!, 'rs')));
      for (let r = 0; r < N; r++) {
        assertBitwise(rsOut[r]!, refSum32(rsIn, n, rsIn.map(() => r * n)), `reduceScatter rank ${r}`);
      }

      // allGather
      const agIn = comms.map(() => rand32(n, rnd));
      const agOut = comms.map(() => new Float32Array(N * n));
      await Promise.all(comms.map((c, r) => c.allGather(agOut[r]!, agIn[r]!, 'ag')));
      for (let r = 0; r < N; r++) for (let k = 0; k < N; k++) assertBitwise(agOut[r]!.subarray(k * n, (k + 1) * n), agIn[k]!, `allGather ${r}/${k}`);

      // broadcast from every root
      for (let root = 0; root < N; root++) {
        const bIn = comms.map(() => rand32(50, rnd));
        const bBuf = bIn.map((a) => a.slice());
        await Promise.all(comms.map((c, r) => c.broadcast(bBuf[r]!, root, 'bc', 10, 30)));
        for (let r = 0; r < N; r++) {
          assertBitwise(bBuf[r]!.subarray(10, 40), bIn[root]!.subarray(10, 40), `broadcast root ${root} rank ${r}`);
          assertBitwise(bBuf[r]!.subarray(0, 10), bIn[r]!.subarray(0, 10), 'broadcast outside region');
        }
      }

      await Promise.all(comms.map((c) => c.barrier()));
    });
  }

  it('the sum is the fixed-order float32 sum, rank 0 first (order-sensitive data)', async () => {
    const comms = createVirtualGroup(3);
    // Per element, the three ranks' values; float32: (1e8 + 1) rounds to 1e8.
    const cols = [
      [1e8, 1, -1e8], // fixed order gives 0; exact sum 1
      [1, 1e8, -1e8], // 0
      [1e8, -1e8, 1], // 1
      [16777216, 1, 1], // 2^24: +1 is lost twice
      [1, 1, 16777216], // 16777218
    ];
    const bufs = [0, 1, 2].map((r) => new Float32Array(cols.map((c) => c[r]!)));
    await Promise.all(comms.map((c, r) => c.allReduce(bufs[r]!, 'sum', 'order')));
    const want = new Float32Array([0, 0, 1, 16777216, 16777218]);
    for (const b of bufs) assertBitwise(b, want, 'fixed-order sum');
  });

  it('Float64 buffers: fixed-order double sum, reduceScatter, allGather, broadcast', async () => {
    const N = 3;
    const comms = createVirtualGroup(N);
    const bufs = [new Float64Array([1e16, 0.5]), new Float64Array([1, 0.25]), new Float64Array([-1e16, 0.125])];
    await Promise.all(comms.map((c, r) => c.allReduce(bufs[r]!, 'sum', 'f64')));
    for (const b of bufs) assertBitwise(b, new Float64Array([0, 0.875]), 'f64 sum');

    const rnd = mulberry32(64);
    const rsIn = comms.map(() => Float64Array.from({ length: N * 5 }, () => rnd() * 2 - 1));
    const rsOut = comms.map(() => new Float64Array(5));
    await Promise.all(comms.map((c, r) => c.reduceScatter(rsOut[r]!, rsIn[r]!, 'rs64')));
    for (let r = 0; r < N; r++) {
      const want = new Float64Array(5).map((_, i) => rsIn[0]![r * 5 + i]! + rsIn[1]![r * 5 + i]! + rsIn[2]![r * 5 + i]!);
      assertBitwise(rsOut[r]!, want, 'f64 reduceScatter');
    }
    const agOut = comms.map(() => new Float64Array(N * 2));
    await Promise.all(comms.map((c, r) => c.allGather(agOut[r]!, new Float64Array([r, r + 0.5]), 'ag64')));
    for (const o of agOut) assertBitwise(o, new Float64Array([0, 0.5, 1, 1.5, 2, 2.5]), 'f64 allGather');
    const bc = comms.map((c) => new Float64Array([c.rank + 0.1]));
    await Promise.all(comms.map((c, r) => c.broadcast(bc[r]!, 2, 'bc64')));
    for (const o of bc) assertBitwise(o, new Float64Array([2.1]), 'f64 broadcast');
  });

  it('in-place allGather and reduceScatter', async () => {
    const N = 4;
    const n = 6;
    const comms = createVirtualGroup(N);
    const rnd = mulberry32(5);
    const ins = comms.map(() => rand32(N * n, rnd));
    const bufs = ins.map((a) => a.slice());
    await Promise.all(comms.map((c, r) => c.reduceScatter(bufs[r]!.subarray(r * n, (r + 1) * n), bufs[r]!, 'rs.ip')));
    for (let r = 0; r < N; r++) assertBitwise(bufs[r]!.subarray(r * n, (r + 1) * n), refSum32(ins, n, ins.map(() => r * n)), 'rs in place');
    const full = bufs.map((b) => b.slice());
    await Promise.all(comms.map((c, r) => c.allGather(bufs[r]!, bufs[r]!.subarray(r * n, (r + 1) * n), 'ag.ip')));
    for (let r = 0; r < N; r++) for (let k = 0; k < N; k++) assertBitwise(bufs[r]!.subarray(k * n, (k + 1) * n), full[k]!.subarray(k * n, (k + 1) * n), 'ag in place');
  });

  it('byte and call counters by tag are exact; resetStats clears; waitMs measures waiting', async () => {
    const N = 4;
    const comms = createVirtualGroup(N);
    await Promise.all(
      comms.map(async (c) => {
        await c.allReduce(new Float32Array(20), 'sum', 'ar', 5, 10); // 10·4
        await c.allReduce(new Float32Array(10), 'max', 'ar'); // 10·4
        await c.reduceScatter(new Float32Array(5), new Float32Array(N * 5), 'rs'); // N·5·4
        await c.allGather(new Float32Array(N * 3), new Float32Array(3), 'ag'); // N·3·4
        await c.broadcast(new Float64Array(7), 1, 'bc'); // 7·8
        await c.barrier(); // 0, tag "barrier"
        await c.barrier('b2');
      }),
    );
    for (const c of comms) {
      const s = c.stats();
      assert.deepEqual(
        [...s.bytes].sort(),
        [
          ['ag', N * 12],
          ['ar', 80],
          ['b2', 0],
          ['barrier', 0],
          ['bc', 56],
          ['rs', N * 20],
        ],
      );
      assert.deepEqual([...s.calls].sort(), [['ag', 1], ['ar', 2], ['b2', 1], ['barrier', 1], ['bc', 1], ['rs', 1]]);
      assert.ok(s.waitMs >= 0);
      c.resetStats();
      assert.equal(c.stats().bytes.size, 0);
      assert.equal(c.stats().calls.size, 0);
      assert.equal(c.stats().waitMs, 0);
    }
    // A rank that arrives first waits for the late one.
    await Promise.all(
      comms.map(async (c) => {
        if (c.rank === 3) await new Promise((r) => setTimeout(r, 40));
        await c.allReduce(new Float32Array(4), 'sum', 'late');
      }),
    );
    assert.ok(comms[0]!.stats().waitMs >= 30, `waitMs ${comms[0]!.stats().waitMs}`);
    assert.ok(comms[3]!.stats().waitMs < 30);
  });

  it('a group of one moves nothing and counts 0 bytes', async () => {
    const [c] = createVirtualGroup(1);
    const buf = new Float32Array([1, 2, 3]);
    await c!.allReduce(buf, 'sum', 'ar');
    await c!.broadcast(buf, 0, 'bc');
    const out = new Float32Array(3);
    await c!.allGather(out, buf, 'ag');
    assertBitwise(out, buf, 'allGather copies');
    const rs = new Float32Array(3);
    await c!.reduceScatter(rs, buf, 'rs');
    assertBitwise(rs, buf, 'reduceScatter copies');
    assertBitwise(buf, new Float32Array([1, 2, 3]), 'unchanged');
    const s = c!.stats();
    assert.deepEqual([...s.bytes.values()], [0, 0, 0, 0]);
    assert.equal(s.calls.get('ar'), 1);
  });

  it('mismatched collectives fail every rank with an error naming the ranks and the calls', async () => {
    const cases: [string, (c: Communicator) => Promise<void>][] = [
      ['tag', (c) => c.allReduce(new Float32Array(4), 'sum', c.rank === 2 ? 'other' : 'x')],
      ['size', (c) => c.allReduce(new Float32Array(c.rank === 1 ? 5 : 4), 'sum', 'x')],
      ['op', (c) => c.allReduce(new Float32Array(4), c.rank === 0 ? 'max' : 'sum', 'x')],
      ['kind', (c) => (c.rank === 2 ? c.barrier('x') : c.allReduce(new Float32Array(4), 'sum', 'x'))],
      ['dtype', (c) => c.allReduce(c.rank === 1 ? new Float64Array(4) : new Float32Array(4), 'sum', 'x')],
      ['root', (c) => c.broadcast(new Float32Array(4), c.rank === 2 ? 1 : 0, 'x')],
    ];
    for (const [what, call] of cases) {
      const comms = createVirtualGroup(3);
      const rs = await Promise.allSettled(comms.map((c) => call(c)));
      for (const r of rs) {
        assert.equal(r.status, 'rejected', what);
        const e = (r as PromiseRejectedResult).reason as Error;
        assert.ok(e instanceof CommMismatchError, `${what}: ${String(e)}`);
        assert.match(e.message, /collective #0 mismatch: rank \d called .* but rank \d called /);
      }
      // The group is poisoned afterwards.
      await assert.rejects(comms[0]!.barrier(), CommAbortedError);
    }
    const comms = createVirtualGroup(2);
    const rs = await Promise.allSettled(comms.map((c) => c.allReduce(new Float32Array(2), 'sum', c.rank === 0 ? 'attn.fwd' : 'mlp.fwd')));
    const msg = ((rs[0] as PromiseRejectedResult).reason as Error).message;
    assert.match(msg, /rank 0 called allReduce\(sum, tag "attn\.fwd", n=2, float32\) but rank 1 called allReduce\(sum, tag "mlp\.fwd"/);
  });

  it('abort: a rank throwing rejects every pending and future call with CommAbortedError naming it', async () => {
    const comms = createVirtualGroup(4);
    const seen: unknown[] = [];
    const rs = await runRanks(comms, async (c) => {
      const buf = new Float32Array(8);
      await c.allReduce(buf, 'sum', 'a');
      if (c.rank === 1) {
        await new Promise((r) => setTimeout(r, 10));
        throw new Error('boom in rank 1');
      }
      try {
        await c.allReduce(buf, 'sum', 'b');
      } catch (e) {
        seen.push(e);
        throw e;
      }
    });
    assert.equal(seen.length, 3);
    for (const e of seen) {
      assert.ok(e instanceof CommAbortedError);
      assert.equal(e.failedRank, 1);
      assert.equal(e.original, 'boom in rank 1');
      assert.equal(e.message, 'rank 1 failed: boom in rank 1');
    }
    assert.ok(rs.every((r) => r.status === 'rejected'));
    for (const c of comms) {
      const e = await c.allGather(new Float32Array(8), new Float32Array(2), 'later').then(
        () => null,
        (x: unknown) => x,
      );
      assert.ok(e instanceof CommAbortedError && e.failedRank === 1);
    }
    comms[3]!.abort(new Error('second failure')); // safe, first failure wins
    await assert.rejects(comms[2]!.barrier(), /rank 1 failed: boom in rank 1/);
  });

  it('invalid arguments reject the caller and poison the group instead of hanging it', async () => {
    const comms = createVirtualGroup(2);
    const rs = await Promise.allSettled([
      comms[0]!.allReduce(new Float32Array(4), 'sum', 'x', 2, 5),
      comms[1]!.allReduce(new Float32Array(4), 'sum', 'x'),
    ]);
    assert.equal(rs[0]!.status, 'rejected');
    assert.ok((rs[0] as PromiseRejectedResult).reason instanceof RangeError);
    const e1 = (rs[1] as PromiseRejectedResult).reason as CommAbortedError;
    assert.ok(e1 instanceof CommAbortedError);
    assert.equal(e1.failedRank, 0);
    assert.match(e1.original, /exceeds buffer length/);
    assert.throws(() => createVirtualGroup(0), RangeError);
  });

  it('a rank may issue several calls before awaiting them', async () => {
    const comms = createVirtualGroup(3);
    const bufs = comms.map((c) => [new Float32Array([c.rank]), new Float32Array([10 * c.rank])]);
    await Promise.all(comms.flatMap((c, r) => [c.allReduce(bufs[r]![0]!, 'sum', 'p'), c.allReduce(bufs[r]![1]!, 'max', 'q')]));
    for (const b of bufs) {
      assert.equal(b[0]![0], 3);
      assert.equal(b[1]![0], 20);
    }
  });
});

// ---------------------------------------------------------------------------------------------------
// Threads transport
// ---------------------------------------------------------------------------------------------------

async function virtualMixed(N: number, seed: number): Promise<MixedResult[]> {
  return values(await runRanks(createVirtualGroup(N), (c) => mixedSequence(c, seed)));
}

function assertSameMixed(got: MixedResult[], want: MixedResult[], what: string): void {
  assert.equal(got.length, want.length);
  for (let r = 0; r < want.length; r++) {
    assert.equal(got[r]!.outs.length, want[r]!.outs.length);
    for (let k = 0; k < want[r]!.outs.length; k++) assertBitwise(got[r]!.outs[k]!, want[r]!.outs[k]!, `${what} rank ${r} output ${k}`);
    assert.deepEqual(got[r]!.bytes, want[r]!.bytes, `${what} rank ${r} bytes`);
    assert.deepEqual(got[r]!.calls, want[r]!.calls, `${what} rank ${r} calls`);
  }
}

/** Track the workers a launch spawns and their exits. */
function watch(): { workers: Worker[]; exited: number[]; onWorker: (w: Worker) => void } {
  const workers: Worker[] = [];
  const exited: number[] = [];
  return {
    workers,
    exited,
    onWorker: (worker: Worker) => {
      workers.push(worker);
      worker.once('exit', (code: number) => exited.push(code));
    },
  };
}

describe('threads transport', () => {
  const placements: [number, number, number | undefined][] = [
    [2, 2, undefined], // 2 workers × 1 rank
    [4, 2, 4096], // 2 workers × 2 ranks, small slots: many rounds
    [4, 1, undefined], // 1 worker × 4 ranks
    [8, 4, 2048], // 4 workers × 2 ranks
    [3, 3, 1024], // 3 workers × 1 rank
  ];
  for (const [N, M, slotBytes] of placements) {
    it(`${M} workers × ${N / M} ranks${slotBytes ? `, ${slotBytes}-byte slots` : ''}: bitwise identical to virtual ranks`, async () => {
      const seed = 17 + N * 3 + M;
      const want = await virtualMixed(N, seed);
      const data: ScenarioData = { scenario: 'mixed', seed };
      const got = await launchThreadGroup<MixedResult>({
        nRanks: N,
        nWorkers: M,
        workerModule: WORKER,
        workerData: data,
        ...(slotBytes ? { slotBytes } : {}),
      });
      assertSameMixed(got, want, `${M}x${N / M}`);
    });
  }

  it('a group of one rank in one worker', async () => {
    const got = await launchThreadGroup<MixedResult>({ nRanks: 1, nWorkers: 1, workerModule: WORKER, workerData: { scenario: 'mixed', seed: 3 } });
    assertSameMixed(got, await virtualMixed(1, 3), '1x1');
    assert.ok(got[0]!.bytes.every(([, b]) => b === 0));
  });

  it('results come back by rank; placement is consecutive ranks per worker', async () => {
    const msgs: [unknown, number][] = [];
    const got = await launchThreadGroup<{ rank: number; size: number; transport: string }>({
      nRanks: 6,
      nWorkers: 3,
      workerModule: WORKER,
      workerData: { scenario: 'echo' },
      onMessage: (m, w) => msgs.push([m, w]),
    });
    assert.deepEqual(
      got.map((g) => [g.rank, g.size, g.transport]),
      [0, 1, 2, 3, 4, 5].map((r) => [r, 6, 'threads']),
    );
    await assert.rejects(launchThreadGroup({ nRanks: 6, nWorkers: 4, workerModule: WORKER }), /nWorkers \(4\) must be a positive divisor of nRanks \(6\)/);
  });

  it('a rank throwing: other ranks get CommAbortedError naming it; launch rejects fast and terminates every worker', async () => {
    const verdicts = new SharedArrayBuffer(4 * 4);
    const w = watch();
    const t0 = Date.now();
    const err = await launchThreadGroup({
      nRanks: 4,
      nWorkers: 2,
      workerModule: WORKER,
      workerData: { scenario: 'throw', failRank: 3, failAt: 5, verdicts } satisfies ScenarioData,
      onWorker: w.onWorker,
    }).then(
      () => null,
      (e: unknown) => e,
    );
    const elapsed = Date.now() - t0;
    assert.ok(err instanceof CommAbortedError, String(err));
    assert.equal(err.failedRank, 3);
    assert.equal(err.original, 'boom on rank 3 at step 5');
    assert.match(err.message, /rank 3 failed: boom on rank 3 at step 5/);
    assert.ok(elapsed < 5000, `${elapsed} ms`);
    assert.equal(w.exited.length, 2, 'every worker has exited');
    const v = new Int32Array(verdicts);
    for (const r of [0, 1, 2]) assert.equal(v[r], 1, `rank ${r} got CommAbortedError naming rank 3 (verdict ${v[r]})`);
  });

  it('ranks that hang after the failure are terminated too', async () => {
    const w = watch();
    const t0 = Date.now();
    await assert.rejects(
      launchThreadGroup({
        nRanks: 4,
        nWorkers: 4,
        workerModule: WORKER,
        workerData: { scenario: 'throw', failRank: 0, failAt: 3, hangOthers: true } satisfies ScenarioData,
        onWorker: w.onWorker,
      }),
      (e: unknown) => e instanceof CommAbortedError && e.failedRank === 0 && /boom on rank 0 at step 3/.test(e.message),
    );
    assert.ok(Date.now() - t0 < 5000);
    assert.equal(w.exited.length, 4);
  });

  it('a worker calling process.exit is detected', async () => {
    const w = watch();
    const t0 = Date.now();
    await assert.rejects(
      launchThreadGroup({
        nRanks: 4,
        nWorkers: 2,
        workerModule: WORKER,
        workerData: { scenario: 'exit', failRank: 2, failAt: 4 } satisfies ScenarioData,
        onWorker: w.onWorker,
      }),
      (e: unknown) => e instanceof CommAbortedError && e.failedRank === 2 && /worker 1 \(ranks 2–3\) exited with code 3/.test(e.message),
    );
    assert.ok(Date.now() - t0 < 5000);
    assert.equal(w.exited.length, 2);
  });

  it('a worker crashing outside any rank is detected', async () => {
    const w = watch();
    const t0 = Date.now();
    await assert.rejects(
      launchThreadGroup({
        nRanks: 2,
        nWorkers: 2,
        workerModule: WORKER,
        workerData: { scenario: 'crash', failRank: 1 } satisfies ScenarioData,
        onWorker: w.onWorker,
      }),
      (e: unknown) => e instanceof CommAbortedError && e.failedRank === 1 && /worker 1 \(rank 1\) crashed: kaboom outside any rank/.test(e.message),
    );
    assert.ok(Date.now() - t0 < 5000);
    assert.equal(w.exited.length, 2);
  });

  it('mismatched collectives across workers fail the group', async () => {
    await assert.rejects(
      launchThreadGroup({ nRanks: 4, nWorkers: 2, workerModule: WORKER, workerData: { scenario: 'mismatch' } satisfies ScenarioData }),
      /collective #1 mismatch: ranks 0–1 called allReduce\(sum, tag "tag\.a", n=4, float32\) but ranks 2–3 called allReduce\(sum, tag "tag\.b"/,
    );
    // Within one worker the local check names single ranks.
    await assert.rejects(
      launchThreadGroup({ nRanks: 4, nWorkers: 1, workerModule: WORKER, workerData: { scenario: 'mismatch' } satisfies ScenarioData }),
      /collective #1 mismatch: rank \d called allReduce\(sum, tag "tag\.a".* but rank \d called allReduce\(sum, tag "tag\.b"/,
    );
  });

  it('a missing worker module rejects', async () => {
    await assert.rejects(launchThreadGroup({ nRanks: 2, workerModule: new URL('./helpers/no-such-worker.js', import.meta.url) }), /crashed/);
  });
});

describe('benchAllReduce', () => {
  it('returns a positive median for both transports', async () => {
    const v = await benchAllReduce('virtual', 4096, 5);
    const t = await benchAllReduce('threads', 4096, 5);
    assert.ok(v > 0 && Number.isFinite(v));
    assert.ok(t > 0 && Number.isFinite(t));
  });
});
