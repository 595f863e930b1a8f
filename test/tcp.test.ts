/**
 * The TCP transport: every collective bitwise equal to the virtual transport (N = 2, 3, 4; sizes
 * around the small/large threshold, odd sizes, several segments, float32 and float64, regions,
 * in-place), across processes too; framing (arbitrary chunking, oversized headers refused); the
 * rendezvous refusing a different configuration or job token with the difference; and failures:
 * aborts, mismatched calls, timeouts and lost connections reach every rank, naming the rank.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { CommAbortedError, type Communicator } from '../src/tp/comm.js';
import { encodeFrameHead, FRAME, type FrameHeader, FrameReader, type TcpCommunicator } from '../src/transport/tcp.js';
import { tagHash } from '../src/transport/transport-common.js';
import { configDifference } from '../src/transport/rendezvous.js';
import { CommMismatchError } from '../src/transport/transport-common.js';
import { createVirtualGroup } from '../src/tp/virtual.js';
import { fillTricky, type Floats, type MixedResult, mixedSequence, mulberry32 } from './helpers/comm-worker.js';
import { assertBitwise, bits, runRanks, values } from './helpers/ranks.js';
import { repoRoot } from './helpers/paths.js';
import { closeAll, localTcpGroup, startLocalTcpGroup } from './helpers/tcp-group.js';


function assertSameMixed(got: MixedResult[], want: MixedResult[], what: string): void {
  assert.equal(got.length, want.length);
  for (let r = 0; r < want.length; r++) {
    want[r]!.outs.forEach((w, i) => assertBitwise(got[r]!.outs[i]!, w, `${what} rank ${r} output ${i}`));
    assert.deepEqual(got[r]!.bytes, want[r]!.bytes, `${what} rank ${r}: bytes by tag`);
    assert.deepEqual(got[r]!.calls, want[r]!.calls, `${what} rank ${r}: calls by tag`);
  }
}

/**
 * A sequence of collectives at the given sizes (elements), on data that depends only on the seed and
 * the rank: every output is returned for comparison across transports.
 */
async function sizedSequence(comm: Communicator, sizes: number[], seed: number): Promise<Floats[]> {
  const N = comm.size;
  const rnd = mulberry32(seed * 31 + comm.rank * 7919 + 5);
  const outs: Floats[] = [];
  const mk = (n: number, f64 = false): Floats => {
    const a = f64 ? new Float64Array(n) : new Float32Array(n);
    fillTricky(a, rnd);
    return a;
  };
  for (const n of sizes) {
    const a = mk(n + 3);
    await comm.allReduce(a, 'sum', `ar.${n}`, 1, n);
    outs.push(a);
    const m = mk(n);
    await comm.allReduce(m, 'max', `max.${n}`);
    outs.push(m);
    const d = mk(n, true);
    await comm.allReduce(d, 'sum', `ar64.${n}`);
    outs.push(d);
    const k = Math.max(1, Math.floor(n / N));
    const rsIn = mk(N * k);
    const rsOut = mk(k);
    await comm.reduceScatter(rsOut, rsIn, `rs.${n}`);
    outs.push(rsOut);
    const agOut = mk(N * k);
    await comm.allGather(agOut, mk(k), `ag.${n}`);
    outs.push(agOut);
    const b = mk(n);
    await comm.broadcast(b, n % N, `bc.${n}`);
    outs.push(b);
  }
  // In-place reduce-scatter (output aliases the start of the input) and all-gather.
  const ipIn = mk(N * 1001);
  await comm.reduceScatter(ipIn.subarray(0, 1001), ipIn, 'rs.inplace');
  outs.push(ipIn.slice(0, 1001));
  const ip = mk(N * 999);
  await comm.allGather(ip, ip.subarray(comm.rank * 999, (comm.rank + 1) * 999), 'ag.inplace');
  outs.push(ip);
  return outs;
}

describe('tcp transport: bitwise equal to virtual ranks', () => {
  for (const N of [2, 3, 4]) {
    it(`N = ${N}: the mixed sequence, default settings and tiny segments`, async () => {
      const want = await Promise.all(createVirtualGroup(N).map((c) => mixedSequence(c, 40 + N)));
      for (const comm of [{}, { smallBytes: 256, segmentBytes: 1024 }]) {
        const comms = await localTcpGroup(N, { comm });
        try {
          const got = values(await runRanks(comms, (c) => mixedSequence(c, 40 + N)));
          assertSameMixed(got, want, `N=${N} ${JSON.stringify(comm)}`);
          assert.equal(comms[0]!.transport, 'tcp');
        } finally {
          await closeAll(comms);
        }
      }
    });

    it(`N = ${N}: sizes around the small/large threshold, odd sizes, several segments`, async () => {
      const small = 4096; // bytes: 1024 float32 elements
      const sizes = [0, 1, 7, N - 1, 1023, 1024, 1025, 2047, 4099, 20011];
      const want = await Promise.all(createVirtualGroup(N).map((c) => sizedSequence(c, sizes, N)));
      const comms = await localTcpGroup(N, { comm: { smallBytes: small, segmentBytes: 8192 } });
      try {
        const got = values(await runRanks(comms, (c) => sizedSequence(c, sizes, N)));
        for (let r = 0; r < N; r++) want[r]!.forEach((w, i) => assertBitwise(got[r]![i]!, w, `rank ${r} output ${i}`));
      } finally {
        await closeAll(comms);
      }
    });
  }

  it('N = 3: 4 MiB all-reduce in 64 KiB segments (back-pressure), bitwise', async () => {
    const n = 1 << 20;
    const mk = (r: number): Float32Array => {
      const a = new Float32Array(n);
      fillTricky(a, mulberry32(900 + r));
      return a;
    };
    const want = createVirtualGroup(3).map((_, r) => mk(r));
    const vc = createVirtualGroup(3);
    await Promise.all(vc.map((c, r) => c.allReduce(want[r]!, 'sum', 'big')));
    const comms = await localTcpGroup(3, { comm: { segmentBytes: 65536 } });
    try {
      const got = comms.map((_, r) => mk(r));
      values(await runRanks(comms, (c) => c.allReduce(got[c.rank]!, 'sum', 'big')));
      for (let r = 0; r < 3; r++) assertBitwise(got[r]!, want[r]!, `rank ${r}`);
      assert.equal(comms[1]!.stats().bytes.get('big'), 4 * n);
    } finally {
      await closeAll(comms);
    }
  });

  it('three processes over loopback (RANK/WORLD_SIZE/MASTER_*): the same bits as virtual ranks', async () => {
    const N = 3;
    const seed = 11;
    const want = await Promise.all(createVirtualGroup(N).map((c) => mixedSequence(c, seed)));
    const { createHash } = await import('node:crypto');
    const hashes = want.map((w) => w.outs.map((a) => createHash('sha256').update(bits(a)).digest('hex')));
    const port = 20000 + Math.floor(Math.random() * 10000);
    const script = path.join(repoRoot, 'dist', 'test', 'helpers', 'tcp-rank.js');
    const runs = Array.from({ length: N }, (_, r) =>
      new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
        const p = spawn(process.execPath, [script], {
          env: { ...process.env, RANK: String(r), WORLD_SIZE: String(N), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), TCP_SCENARIO: 'mixed', TCP_SEED: String(seed) },
        });
        let out = '';
        let err = '';
        p.stdout.on('data', (c: Buffer) => (out += c.toString()));
        p.stderr.on('data', (c: Buffer) => (err += c.toString()));
        p.on('close', (code) => resolve({ code, out, err }));
      }),
    );
    const res = await Promise.all(runs);
    for (let r = 0; r < N; r++) {
      assert.equal(res[r]!.code, 0, res[r]!.err);
      const got = JSON.parse(res[r]!.out) as { rank: number; hashes: string[]; bytes: [string, number][] };
      assert.equal(got.rank, r);
      assert.deepEqual(got.hashes, hashes[r], `rank ${r}: outputs differ from virtual ranks`);
      assert.deepEqual(got.bytes, want[r]!.bytes);
    }
  });
});

describe('tcp framing', () => {
  it('frames split at every byte boundary are reassembled; bodies land in the chosen destination', () => {
    const body = Buffer.from(Array.from({ length: 37 }, (_, i) => i * 7));
    const h = { type: FRAME.data, kind: 1, op: 1, dtype: 1, seq: 5, n: 9, root: -1, part: 2, bodyLen: body.length, from: 3, tag: 'attn.fwd.shared' };
    const wire = Buffer.concat([encodeFrameHead(h), body, encodeFrameHead({ ...h, seq: 6, bodyLen: 0, tag: '' })]);
    for (const step of [1, 2, 3, 7, 40, wire.length]) {
      const seen: { h: FrameHeader; body: Buffer }[] = [];
      const dest = new Uint8Array(37);
      let first = true;
      const reader = new FrameReader(
        {
          begin: (hh) => {
            if (first) {
              first = false;
              return dest;
            }
            return hh.bodyLen === 0 ? null : null;
          },
          end: (hh, b) => seen.push({ h: hh, body: Buffer.from(b) }),
        },
        1 << 20,
        'test',
      );
      for (let i = 0; i < wire.length; i += step) reader.push(wire.subarray(i, Math.min(wire.length, i + step)));
      assert.equal(seen.length, 2, `step ${step}`);
      assert.equal(seen[0]!.h.tag, 'attn.fwd.shared');
      assert.equal(seen[0]!.h.tagHash, tagHash('attn.fwd.shared'));
      assert.deepEqual([seen[0]!.h.seq, seen[0]!.h.part, seen[0]!.h.from, seen[0]!.h.root], [5, 2, 3, -1]);
      assert.ok(Buffer.from(dest).equals(body));
      assert.equal(seen[1]!.h.seq, 6);
      assert.equal(seen[1]!.body.length, 0);
    }
  });

  it('a header announcing more than the maximum is refused; a corrupt magic is refused', () => {
    const sink = { begin: () => null, end: () => {} };
    const big = encodeFrameHead({ type: FRAME.data, kind: 1, op: 1, dtype: 1, seq: 0, n: 1, root: -1, part: 0, bodyLen: 1 << 30, from: 1, tag: 'x' });
    assert.throws(() => new FrameReader(sink, 1 << 20, 'rank 1').push(big), /rank 1 sent a frame announcing 1073741824 bytes, more than the maximum of 1048576 bytes/);
    const bad = Buffer.from(big);
    bad.writeUInt32LE(0xdeadbeef, 0);
    assert.throws(() => new FrameReader(sink, 1 << 20, 'rank 1').push(bad), /rank 1 sent a corrupt frame \(bad magic/);
  });

  it('in a group: a peer sending more than this rank accepts fails the group, naming the peer', async () => {
    // Rank 0 sends a 256 KiB all-reduce as one message; rank 1 accepts at most 64 KiB per message.
    const pending = await startLocalTcpGroup(2, { perRank: (r) => ({ comm: r === 0 ? { smallBytes: 1 << 20 } : { smallBytes: 1 << 20, maxMessageBytes: 65536 } }) });
    const comms = await Promise.all(pending);
    try {
      const res = await runRanks(comms, (c) => c.allReduce(new Float32Array(65536), 'sum', 'big'));
      assert.equal(res[1]!.status, 'rejected');
      assert.match(String((res[1] as PromiseRejectedResult).reason), /rank 0 sent a frame announcing 262144 bytes, more than the maximum of 65536 bytes/);
      // Rank 0 may have completed its part already; its next call learns of the failure.
      if (res[0]!.status === 'fulfilled') await assert.rejects(comms[0]!.barrier(), /rank 0 sent a frame announcing 262144 bytes/);
      else assert.match(String((res[0] as PromiseRejectedResult).reason), /rank 0 sent a frame announcing/);
    } finally {
      await closeAll(comms);
    }
  });
});

describe('tcp failures reach every rank', () => {
  it('a rank that aborts: every other rank rejects with CommAbortedError naming it; later calls too', async () => {
    const comms = await localTcpGroup(4);
    try {
      const res = await runRanks(comms, async (c) => {
        const buf = new Float32Array(100).fill(c.rank);
        for (let step = 0; step < 20; step++) {
          if (c.rank === 2 && step === 5) throw new Error('boom on rank 2');
          await c.allReduce(buf, 'sum', 'loop');
        }
      });
      for (const r of [0, 1, 3]) {
        const e = (res[r] as PromiseRejectedResult).reason as unknown;
        assert.ok(e instanceof CommAbortedError, String(e));
        assert.equal(e.failedRank, 2);
        assert.equal(e.message, 'rank 2 failed: boom on rank 2');
      }
      await assert.rejects(comms[0]!.barrier(), /rank 2 failed: boom on rank 2/);
    } finally {
      await closeAll(comms);
    }
  });

  it('mismatched calls fail with a message naming both ranks and both calls', async () => {
    const comms = await localTcpGroup(2);
    try {
      const res = await runRanks(comms, async (c) => {
        const buf = new Float32Array(4);
        await c.allReduce(buf, 'sum', 'ok');
        await c.allReduce(buf, 'sum', c.rank === 0 ? 'tag.a' : 'tag.b');
      });
      const errs = res.map((r) => (r as PromiseRejectedResult).reason as Error);
      assert.ok(errs.some((e) => e instanceof CommMismatchError), errs.map(String).join('\n'));
      for (const e of errs) {
        assert.match(e.message, /collective #1 mismatch: rank \d called allReduce\(sum, tag "tag\.[ab]", n=4, float32\) but rank \d called allReduce\(sum, tag "tag\.[ab]", n=4, float32\)/);
      }
    } finally {
      await closeAll(comms);
    }
  });

  it('a rank that never reaches a collective: the others fail after the timeout, naming it', async () => {
    const comms = await localTcpGroup(3, { timeoutMs: 400 });
    try {
      const t0 = Date.now();
      const res = await Promise.allSettled([comms[0]!.allReduce(new Float32Array(8), 'sum', 'x'), comms[2]!.allReduce(new Float32Array(8), 'sum', 'x')]);
      const elapsed = Date.now() - t0;
      for (const r of res) {
        const e = (r as PromiseRejectedResult).reason as unknown;
        assert.ok(e instanceof CommAbortedError, String(e));
        assert.equal(e.failedRank, 1);
        assert.match(e.message, /rank 1 failed: rank 1 did not reach collective #0 allReduce\(sum, tag "x", n=8, float32\) within 0\.4 s/);
      }
      assert.ok(elapsed < 3000, `${elapsed} ms`);
      // Rank 1 learns of it too (the ABORT reaches it).
      for (let i = 0; i < 200 && !comms[1]!.failed; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(comms[1]!.failed?.rank, 1);
      assert.match(comms[1]!.failed?.message ?? '', /rank 1 did not reach collective #0/);
    } finally {
      await closeAll(comms);
    }
  });

  it('a rank whose connections drop (process death): the others fail at once, naming it', async () => {
    const comms = await localTcpGroup(3, { timeoutMs: 20_000 });
    try {
      const t0 = Date.now();
      const waiting = Promise.allSettled([comms[0]!.allReduce(new Float32Array(8), 'sum', 'x'), comms[1]!.allReduce(new Float32Array(8), 'sum', 'x')]);
      // Simulate rank 2 dying: its sockets close without a goodbye.
      const links = (comms[2] as unknown as { links: ({ socket: { destroy(): void } } | null)[] }).links;
      for (const l of links) l?.socket.destroy();
      const res = await waiting;
      for (const r of res) {
        const e = (r as PromiseRejectedResult).reason as unknown;
        assert.ok(e instanceof CommAbortedError, String(e));
        assert.equal(e.failedRank, 2);
        assert.match(e.message, /rank 2 failed: connection to rank 2 lost/);
      }
      assert.ok(Date.now() - t0 < 5000);
    } finally {
      await closeAll(comms);
    }
  });

  for (const scenario of ['exit', 'hang'] as const) {
    it(`processes: a rank that ${scenario === 'exit' ? 'exits' : 'hangs'} makes the others exit non-zero, naming it`, async () => {
      const N = 3;
      const port = 20000 + Math.floor(Math.random() * 10000);
      const script = path.join(repoRoot, 'dist', 'test', 'helpers', 'tcp-rank.js');
      const t0 = Date.now();
      const procs = Array.from({ length: N }, (_, r) => {
        const p = spawn(process.execPath, [script], {
          env: { ...process.env, RANK: String(r), WORLD_SIZE: String(N), MASTER_PORT: String(port), TCP_SCENARIO: scenario, TCP_FAIL_RANK: '1', TCP_TIMEOUT_MS: '1500' },
        });
        let err = '';
        p.stderr.on('data', (c: Buffer) => (err += c.toString()));
        return { p, done: new Promise<{ code: number | null; err: string }>((resolve) => p.on('close', (code) => resolve({ code, err }))) };
      });
      try {
        for (const r of [0, 2]) {
          const res = await procs[r]!.done;
          assert.equal(res.code, 1, res.err);
          const why = scenario === 'exit' ? /rank 1 failed: connection to rank 1 lost/ : /rank 1 failed: rank 1 did not reach collective #\d+ .* within 1\.5 s/;
          assert.match(res.err, why);
        }
        assert.ok(Date.now() - t0 < 15_000, `${Date.now() - t0} ms`);
      } finally {
        procs[1]!.p.kill('SIGKILL');
        await procs[1]!.done;
      }
    });
  }
});

describe('tcp rendezvous', () => {
  it('a rank with a different configuration is refused, with the difference on both sides', async () => {
    const pending = await startLocalTcpGroup(3, {
      perRank: (r) => ({ config: { model: { hidden: 16, layers: 1 }, parallel: { tp: 3, p: r === 2 ? 0.25 : 0.5 } } }),
    });
    const res = await Promise.allSettled(pending);
    const e0 = (res[0] as PromiseRejectedResult).reason as Error;
    const e2 = (res[2] as PromiseRejectedResult).reason as Error;
    assert.match(e0.message, /rank 2 was refused: its configuration differs from rank 0's: parallel\.p: 0\.25 \(rank 2\) vs 0\.5 \(rank 0\)/);
    assert.match(e2.message, /rank 0 refused rank 2: configuration differs from rank 0's: parallel\.p: 0\.25 \(rank 2\) vs 0\.5 \(rank 0\)/);
    // Rank 1 does not hang: it is told (or learns when rank 0 goes away).
    assert.equal(res[1]!.status, 'rejected');
    for (const r of res) if (r.status === 'fulfilled') await r.value.close();
  });

  it('a process with another job token is refused and the job waits for the genuine rank', async () => {
    const logs: string[] = [];
    const pending = await startLocalTcpGroup(2, {
      timeoutMs: 1500,
      log: (m) => logs.push(m),
      perRank: (r) => (r === 1 ? { token: 'other-job', tokenLabel: 'SLURM_JOB_ID=77.0' } : { tokenLabel: 'SLURM_JOB_ID=42.0' }),
    });
    const res = await Promise.allSettled(pending);
    const e1 = (res[1] as PromiseRejectedResult).reason as Error;
    assert.match(e1.message, /rank 0 refused rank 1: job token differs: this process presented SLURM_JOB_ID=77\.0, rank 0 of the job on 127\.0\.0\.1:\d+ has SLURM_JOB_ID=42\.0/);
    const e0 = (res[0] as PromiseRejectedResult).reason as Error;
    assert.match(e0.message, /rendezvous on 127\.0\.0\.1:\d+ timed out after 1\.5 s: rank 1 \(a connection claiming rank 1 was refused: job token differs \(SLURM_JOB_ID=77\.0 vs SLURM_JOB_ID=42\.0\)\) did not join/);
    assert.ok(logs.some((l) => /refused a connection from 127\.0\.0\.1:\d+ claiming rank 1: job token differs/.test(l)), logs.join('\n'));
  });

  it('configuration differences are listed field by field', () => {
    assert.deepEqual(configDifference({ a: 1, b: { c: 2, d: [1, 2] } }, { a: 1, b: { c: 3, d: [1, 2] }, e: 'x' }, 'rank 1', 'rank 0'), [
      'b.c: 2 (rank 1) vs 3 (rank 0)',
      'e: (absent) (rank 1) vs "x" (rank 0)',
    ]);
    assert.deepEqual(configDifference({ a: 1, b: 2 }, { b: 2, a: 1 }, 'x', 'y'), []);
  });

  it('a group of one needs no connections; stats count 0 bytes', async () => {
    const [c] = (await localTcpGroup(1)) as [TcpCommunicator];
    const out = new Float32Array(3);
    await c.allGather(out, Float32Array.of(1, 2, 3), 'ag');
    assert.deepEqual([...out], [1, 2, 3]);
    assert.equal(c.stats().bytes.get('ag'), 0);
    await c.close();
  });
});
