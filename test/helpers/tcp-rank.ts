/**
 * One rank of a TCP group in its own process, for the transport tests and measurements. Reads
 * RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT, joins, runs the scenario named by TCP_SCENARIO and
 * prints one JSON line with its result on stdout. Without TCP_SCENARIO it does nothing.
 *
 *   mixed          the mixed collective sequence (seed TCP_SEED); prints the SHA-256 of every output
 *   bench          all-reduce timings: TCP_BENCH_BYTES (comma-separated sizes), TCP_BENCH_REPEATS
 *   hang           rank TCP_FAIL_RANK stops taking part after 3 all-reduces (the process stays alive)
 *   throw          rank TCP_FAIL_RANK throws after 3 all-reduces
 *   exit           rank TCP_FAIL_RANK exits (code 7) after 3 all-reduces, without a goodbye
 */
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { rendezvous } from '../../src/transport/rendezvous.js';
import type { TcpCommunicator } from '../../src/transport/tcp.js';
import { mixedSequence } from './comm-worker.js';

const env = process.env;
const rank = Number(env['RANK']);
const size = Number(env['WORLD_SIZE']);
const scenario = env['TCP_SCENARIO'];
const failRank = Number(env['TCP_FAIL_RANK'] ?? '1');

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1]! : 0.5 * (s[s.length / 2 - 1]! + s[s.length / 2]!);
}

async function main(): Promise<void> {
  let comm: TcpCommunicator;
  try {
    comm = await rendezvous({
      rank,
      size,
      masterAddr: env['MASTER_ADDR'] ?? '127.0.0.1',
      masterPort: Number(env['MASTER_PORT']),
      token: env['CAAT_JOB_TOKEN'] ?? 'tcp-test',
      tokenLabel: 'CAAT_JOB_TOKEN',
      config: { scenario, extra: env['TCP_CONFIG'] ?? '' },
      timeoutMs: Number(env['TCP_TIMEOUT_MS'] ?? '10000'),
      ...(env['TCP_SMALL_BYTES'] ? { comm: { smallBytes: Number(env['TCP_SMALL_BYTES']) } } : {}),
    });
  } catch (e) {
    process.stderr.write(`rank ${rank}: ${(e as Error).message}\n`);
    process.exitCode = 2;
    return;
  }
  try {
    if (scenario === 'mixed') {
      const r = await mixedSequence(comm, Number(env['TCP_SEED'] ?? '1'));
      const hashes = r.outs.map((a) => createHash('sha256').update(Buffer.from(a.buffer, a.byteOffset, a.byteLength)).digest('hex'));
      process.stdout.write(`${JSON.stringify({ rank, hashes, bytes: r.bytes, calls: r.calls })}\n`);
    } else if (scenario === 'bench') {
      const sizes = (env['TCP_BENCH_BYTES'] ?? '4096,16777216').split(',').map(Number);
      const repeats = Number(env['TCP_BENCH_REPEATS'] ?? '20');
      const out: Record<string, number> = {};
      for (const bytes of sizes) {
        const buf = new Float32Array(bytes / 4).fill(1e-3 * (rank + 1));
        const reps = bytes >= 1 << 20 ? Math.max(5, Math.floor(repeats / 4)) : repeats;
        for (let i = 0; i < 3; i++) await comm.allReduce(buf, 'sum', 'bench');
        const us: number[] = [];
        for (let i = 0; i < reps; i++) {
          await comm.barrier('bench.sync');
          const t0 = performance.now();
          await comm.allReduce(buf, 'sum', 'bench');
          us.push((performance.now() - t0) * 1000);
        }
        out[String(bytes)] = median(us);
      }
      process.stdout.write(`${JSON.stringify({ rank, us: out })}\n`);
    } else {
      const buf = new Float32Array(256).fill(rank);
      for (let step = 0; ; step++) {
        if (rank === failRank && step === 3) {
          if (scenario === 'hang') {
            setInterval(() => {}, 1000);
            await new Promise(() => {});
          }
          if (scenario === 'exit') process.exit(7);
          throw new Error(`boom on rank ${rank}`);
        }
        await comm.allReduce(buf, 'sum', 'loop');
      }
    }
  } catch (e) {
    comm.abort(e);
    process.stderr.write(`rank ${rank}: ${(e as Error).message}\n`);
    process.exitCode = 1;
  }
  await comm.close();
}

// Only when started as a rank (the test runner also loads every module under dist/test).
if (scenario !== undefined) await main();
