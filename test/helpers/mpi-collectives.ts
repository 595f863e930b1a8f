/**
 * Script the MPI transport tests start under mpirun (compiled to dist/test/helpers/mpi-collectives.js):
 *
 *   mpirun -np N node dist/test/helpers/mpi-collectives.js <scenario> <outDir> [seed]
 *
 * Each rank writes <outDir>/rank-<r>.json (files, not stdout, so ranks' output never interleaves).
 * Scenarios:
 *   sequence    fullSequence (test/helpers/mpi-sequence.ts): hashes of every output, bytes and calls
 *   mismatch    rank 1 calls a different all-reduce than the others; every rank records its error
 *   mismatch-abort  the same, but the error ends the job (comm.abort)
 *   abort       rank 1 throws at step 3 and calls comm.abort (the others are blocked in a collective)
 *   exit-code   rank 1 leaves with process.exitCode = 3 while the others wait in a collective
 *   event-loop  rank 1 joins a 32 MiB all-reduce 300 ms late; rank 0 counts event-loop turns meanwhile
 *   join        joinMpiGroup with equal configurations, then with rank 1's seed different
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createMpiCommunicator, detectMpiLauncher, joinMpiGroup, type MpiCommunicator } from '../../src/transport/mpi.js';
import { fullSequence } from './mpi-sequence.js';

const [scenario = 'sequence', outDir = '.', seedArg = '1'] = process.argv.slice(2);
// `node --test dist/test/` also loads the helpers: outside an MPI launcher this script does nothing.
const launched = detectMpiLauncher() !== null;
const comm = (launched ? createMpiCommunicator() : null) as MpiCommunicator;

function write(result: unknown): void {
  writeFileSync(join(outDir, `rank-${comm.rank}.json`), JSON.stringify(result));
}

function errInfo(e: unknown): { name: string; message: string; failedRank?: number } {
  if (e instanceof Error) {
    const fr = (e as { failedRank?: unknown }).failedRank;
    return { name: e.name, message: e.message, ...(typeof fr === 'number' ? { failedRank: fr } : {}) };
  }
  return { name: 'non-error', message: String(e) };
}

async function main(): Promise<void> {
  switch (scenario) {
    case 'sequence': {
      const res = await fullSequence(comm, Number(seedArg));
      write({ ...res, transport: comm.transport, threadLevel: comm.info.threadLevel, library: comm.info.library, waitMs: comm.stats().waitMs });
      return;
    }
    case 'mismatch-abort': {
      // The mismatch error reaches the top level, which calls comm.abort with it.
      const buf = new Float32Array(6);
      await comm.allReduce(buf, 'sum', comm.rank === 1 ? 'tag.b' : 'tag.a');
      return;
    }
    case 'mismatch': {
      const buf = new Float32Array(6);
      await comm.allReduce(buf, 'sum', 'ok');
      let first: unknown = null;
      let later: unknown = null;
      try {
        if (comm.rank === 1) await comm.allReduce(buf, 'sum', 'tag.b', 0, 6);
        else await comm.allReduce(buf, 'sum', 'tag.a', 0, 4);
      } catch (e) {
        first = e;
      }
      try {
        await comm.barrier('after');
      } catch (e) {
        later = e;
      }
      write({ first: errInfo(first), later: errInfo(later) });
      return;
    }
    case 'abort':
    case 'exit-code': {
      const buf = new Float32Array(64).fill(comm.rank);
      for (let step = 0; step < 1000; step++) {
        if (comm.rank === 1 && step === 3) {
          if (scenario === 'exit-code') {
            process.exitCode = 3;
            return;
          }
          throw new Error('boom on rank 1 at step 3');
        }
        await comm.allReduce(buf, 'sum', 'loop');
      }
      return;
    }
    case 'event-loop': {
      const buf = new Float32Array(8 * 1024 * 1024).fill(comm.rank + 1);
      await comm.barrier('start');
      if (comm.rank !== 0) await new Promise((r) => setTimeout(r, 300));
      let turns = 0;
      let spinning = true;
      const spin = (): void => {
        turns++;
        if (spinning) setImmediate(spin);
      };
      setImmediate(spin);
      const t0 = performance.now();
      await comm.allReduce(buf, 'sum', 'big');
      const ms = performance.now() - t0;
      spinning = false;
      write({ turns, ms, first: buf[0], last: buf[buf.length - 1] });
      return;
    }
    case 'join': {
      const difference = (a: unknown, b: unknown, whoA: string, whoB: string): string[] => {
        const x = a as { seed: number };
        const y = b as { seed: number };
        return x.seed === y.seed ? [] : [`seed: ${x.seed} (${whoA}) vs ${y.seed} (${whoB})`];
      };
      const same = await joinMpiGroup({ model: { hidden: 64, layers: 2 }, seed: 1 }, { difference });
      let error = '';
      try {
        await joinMpiGroup({ seed: comm.rank === 1 ? 2 : 1, model: { layers: 2, hidden: 64 } }, { difference });
      } catch (e) {
        error = (e as Error).message;
      }
      write({ sameOk: same === comm, error });
      return;
    }
    default:
      throw new Error(`unknown scenario "${scenario}"`);
  }
}

if (launched) {
  try {
    await main();
  } catch (e) {
    comm.abort(e);
  }
}
