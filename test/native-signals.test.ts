/**
 * Signals during native GEMMs. oneDNN 2.x's JIT sgemm kernels use RSP as a data pointer while they
 * run, so a signal taken on that thread writes its frame over the heap; the addon blocks the
 * asynchronous signals around every oneDNN call (SignalsBlocked in native/src/addon.cc). Each case
 * runs a child that does GEMMs with one implementation forced while it is hit by signals: SIGPROF
 * from `node --cpu-prof` at a 100 µs interval (thread-directed, at the GEMM thread) and SIGUSR2 sent
 * to the process from a worker thread in a loop (process-directed). Without the guard the oneDNN
 * cases abort with "corrupted size vs. prev_size" within a few hundred calls; the test requires every
 * child to exit 0 with the right result, the handler to have run, and a CPU profile written.
 * Skipped, with the reason, when the addon is not built.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { loadNativeBackend, nativeInfo } from '../src/backend/native.js';
import { BackendUnavailableError } from '../src/backend/types.js';

function unavailable(): string | false {
  try {
    loadNativeBackend();
    return false;
  } catch (e) {
    if (e instanceof BackendUnavailableError) return `native backend unavailable: ${e.reason}`;
    throw e;
  }
}
const skip = unavailable();
const indexUrl = JSON.stringify(new URL('../src/backend/index.js', import.meta.url).href);

// The child: a worker thread signals the process while the main thread runs R GEMMs of 256³ (ones),
// each of which must give C = K everywhere.
const child = `
import { Worker } from 'node:worker_threads';
import { loadBackend } from ${indexUrl};
let got = 0;
process.on('SIGUSR2', () => { got++; });
const stop = new Int32Array(new SharedArrayBuffer(4));
const w = new Worker(\`
  const { workerData } = require('node:worker_threads');
  const stop = workerData;
  while (Atomics.load(stop, 0) === 0) { process.kill(process.pid, 'SIGUSR2'); Atomics.wait(stop, 0, 0, 1); }
\`, { eval: true, workerData: stop, execArgv: [] });
const be = loadBackend('native', { threads: Number(process.env.THREADS) });
const M = 256, N = 256, K = 256;
const A = new Float32Array(M * K).fill(1), B = new Float32Array(K * N).fill(1), C = new Float32Array(M * N);
let bad = 0;
for (let i = 0; i < 300; i++) {
  C.fill(0);
  be.gemm(false, i % 2 === 1, M, N, K, 1, A, 0, K, B, 0, i % 2 === 1 ? K : N, 0, C, 0, N);
  for (let j = 0; j < C.length; j += 97) if (C[j] !== K) bad++;
}
Atomics.store(stop, 0, 1);
await w.terminate();
await new Promise((r) => setTimeout(r, 20));
console.log(JSON.stringify({ bad, got }));
`;

describe('native GEMMs under signals', { skip }, () => {
  const built = skip ? [] : nativeInfo().gemmImpls.filter((i) => i !== 'skinny');
  for (const impl of built) {
    for (const threads of [1, 2]) {
      test(`${impl}, ${threads} thread(s): SIGPROF (--cpu-prof) and SIGUSR2 during GEMMs`, () => {
        const dir = mkdtempSync(join(tmpdir(), 'caat-sig-'));
        const r = spawnSync(
          process.execPath,
          ['--cpu-prof', '--cpu-prof-dir', dir, '--cpu-prof-interval', '100', '--input-type=module', '-e', child],
          {
            encoding: 'utf8',
            timeout: 120_000,
            env: { ...process.env, CAAT_GEMM: impl, CAAT_GEMM_CACHE: join(dir, 'gemm.json'), THREADS: String(threads) },
          },
        );
        assert.equal(r.signal, null, `child killed by ${r.signal}: ${r.stderr}`);
        assert.equal(r.status, 0, `child failed: ${r.stderr}`);
        const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { bad: number; got: number };
        assert.equal(out.bad, 0, 'GEMM results corrupted');
        assert.ok(out.got > 0, 'the SIGUSR2 handler never ran');
        assert.ok(readdirSync(dir).some((f) => f.endsWith('.cpuprofile')), 'no CPU profile written');
      });
    }
  }
});
