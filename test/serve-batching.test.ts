/**
 * Batching is invisible: 16 concurrent greedy requests give the tokens of the same requests run one
 * at a time (logprobs within 1e-4), at TP 1, and at TP 2 p = 0.5 on worker threads, over 2 TCP
 * processes (`caat launch --nproc 2 -- serve`) and under `mpirun -np 2` (skipped without mpirun or the
 * MPI addon), all equal to the threads' outputs. Killing rank 1 mid-stream ends the requests in
 * flight with an error, turns /health to 503, and every process exits non-zero within 30 s.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { findMpirun, loadMpiAddon } from '../src/transport/mpi.js';
import { cli, serveArgs, startServer, tempDir, tinyRun, type ServerProc } from './helpers/serve.js';

let tmp: string;
let run1: string;
let run2: string;

interface Out {
  text: string;
  lps: number[];
}

const REQUESTS = Array.from({ length: 16 }, (_, i) => ({
  prompt: Array.from({ length: 3 + ((i * 5) % 18) }, (_, t) => (t * 11 + i * 7 + 40) % 300),
  max_tokens: 5 + ((i * 7) % 26),
}));

async function ask(url: string, r: (typeof REQUESTS)[number]): Promise<Out> {
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0 });
  const c = await client.completions.create({ model: undefined as unknown as string, prompt: r.prompt, max_tokens: r.max_tokens, temperature: 0, logprobs: 1 });
  return { text: c.choices[0]!.text, lps: c.choices[0]!.logprobs!.token_logprobs as number[] };
}

async function sequential(url: string): Promise<Out[]> {
  const out: Out[] = [];
  for (const r of REQUESTS) out.push(await ask(url, r));
  return out;
}

const concurrent = (url: string): Promise<Out[]> => Promise.all(REQUESTS.map((r) => ask(url, r)));

function assertSame(got: Out[], want: Out[], what: string): void {
  got.forEach((g, i) => {
    assert.equal(g.text, want[i]!.text, `${what}: request ${i}`);
    assert.equal(g.lps.length, want[i]!.lps.length);
    g.lps.forEach((x, k) => assert.ok(Math.abs(x - want[i]!.lps[k]!) <= 1e-4, `${what}: request ${i} token ${k}: ${x} vs ${want[i]!.lps[k]}`));
  });
}

before(() => {
  tmp = tempDir();
  run1 = tinyRun(tmp, 1, 1);
  run2 = tinyRun(tmp, 2, 0.5);
});
after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

let threadsRef: Out[];
const mpirun = findMpirun();
const mpiAddon = loadMpiAddon();
const mpiSkip = mpirun === null ? 'mpirun not found' : !mpiAddon.ok ? mpiAddon.reason : false;

describe('batching is invisible', () => {
  test('TP 1: 16 concurrent greedy requests equal one at a time', async () => {
    const s = await startServer([{ args: serveArgs(run1, ['--max-num-seqs', '16', '--max-batch-tokens', '64']) }]);
    try {
      const want = await sequential(s.url);
      assertSame(await concurrent(s.url), want, 'tp1');
      assert.ok(want.some((w) => w.text.length > 0));
    } finally {
      await s.stop();
    }
  });

  test('TP 2 p 0.5 on worker threads: concurrent equals one at a time', async () => {
    const s = await startServer([{ args: serveArgs(run2, ['--workers', '2', '--max-num-seqs', '16', '--max-batch-tokens', '64']) }]);
    try {
      threadsRef = await sequential(s.url);
      assertSame(await concurrent(s.url), threadsRef, 'tp2 threads');
    } finally {
      await s.stop();
    }
  });

  test('TP 2 p 0.5 over 2 TCP processes (caat launch): one at a time and concurrent equal the threads', async () => {
    const s = await startServer([{ args: ['launch', '--nproc', '2', '--', ...serveArgs(run2, ['--max-num-seqs', '16', '--max-batch-tokens', '64'])] }]);
    try {
      assertSame(await sequential(s.url), threadsRef, 'tp2 tcp sequential');
      assertSame(await concurrent(s.url), threadsRef, 'tp2 tcp concurrent');
    } finally {
      await s.stop();
    }
  });

  test('TP 2 p 0.5 under mpirun -np 2: concurrent equals the threads', { skip: mpiSkip }, async () => {
    const s = await startServer([{ exec: [mpirun!.command, ...mpirun!.baseArgs, '-np', '2', process.execPath, cli], args: serveArgs(run2, ['--max-num-seqs', '16', '--max-batch-tokens', '64']), env: { CAAT_MPI: '1' } }]);
    try {
      assert.match(s.stderr(), /mpi,/);
      assertSame(await concurrent(s.url), threadsRef, 'tp2 mpi');
    } finally {
      await s.stop();
    }
  });

  test('killing rank 1 mid-stream: errors for the requests in flight, /health 503, every process exits non-zero within 30 s', async () => {
    const port = 23000 + Math.floor(Math.random() * 5000);
    const env = (r: number) => ({ RANK: String(r), WORLD_SIZE: '2', LOCAL_RANK: String(r), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) });
    const s: ServerProc = await startServer([0, 1].map((r) => ({ args: serveArgs(run2, ['--max-num-seqs', '8']), env: env(r) })));
    try {
      const client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'none', maxRetries: 0 });
      let killedAt = 0;
      const streams = Array.from({ length: 4 }, async (_, i) => {
        const st = await client.completions.create({ model: 'run-tp2-p0.5', prompt: REQUESTS[i]!.prompt, max_tokens: 60 - REQUESTS[i]!.prompt.length, temperature: 0, stream: true });
        let n = 0;
        try {
          for await (const _ of st) {
            if (++n === 2 && i === 0) {
              killedAt = Date.now();
              s.procs[1]!.kill('SIGKILL');
            }
          }
          return 'completed';
        } catch (e) {
          return `error: ${(e as Error).message}`;
        }
      });
      const results = await Promise.all(streams);
      assert.ok(results[0]!.startsWith('error:'), `the stream that saw the kill ends with an error: ${results[0]}`);
      assert.match(results[0]!, /rank 1|connection|failed/i);
      const h = await fetch(`${s.url}/health`).catch((e: unknown) => e as Error);
      if (!(h instanceof Error)) assert.equal(h.status, 503);
      const exits = await s.exits;
      for (const e of exits) assert.ok(e.code !== 0 || e.signal !== null, `exit ${e.code} ${e.signal}`);
      assert.notEqual(exits[0]!.code, 0);
      assert.ok(exits[0]!.at - killedAt < 30_000, `rank 0 exited ${exits[0]!.at - killedAt} ms after the kill`);
    } finally {
      await s.stop();
    }
  });

  test('under mpirun: killing rank 1 mid-stream ends the stream with an error and the job exits non-zero within 30 s', { skip: mpiSkip }, async () => {
    const s = await startServer([{ exec: [mpirun!.command, ...mpirun!.baseArgs, '-np', '2', process.execPath, cli], args: serveArgs(run2, ['--max-num-seqs', '8']), env: { CAAT_MPI: '1' } }]);
    try {
      // mpirun's children: the rank whose environment says OMPI_COMM_WORLD_RANK=1.
      const kids = execFileSync('pgrep', ['-P', String(s.procs[0]!.pid)], { encoding: 'utf8' }).trim().split('\n').map(Number);
      const rank1 = kids.find((pid) => fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes('OMPI_COMM_WORLD_RANK=1'));
      assert.ok(rank1, `rank 1 among ${kids}`);
      const client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'none', maxRetries: 0 });
      const st = await client.completions.create({ model: 'run-tp2-p0.5', prompt: [1, 2], max_tokens: 60, temperature: 0, stream: true, ignore_eos: true } as never);
      let killedAt = 0;
      let result = 'completed';
      try {
        for await (const _ of st as unknown as AsyncIterable<unknown>) {
          if (!killedAt) {
            killedAt = Date.now();
            process.kill(rank1!, 'SIGKILL');
          }
        }
      } catch (e) {
        result = `error: ${(e as Error).message}`;
      }
      assert.match(result, /^error:/);
      const [exit] = await s.exits;
      assert.notEqual(exit!.code, 0);
      assert.ok(exit!.at - killedAt < 30_000, `mpirun exited ${exit!.at - killedAt} ms after the kill`);
    } finally {
      await s.stop();
    }
  });

  test('a hung rank (stopped) over TCP: the stream fails after --comm-timeout, /health 503, both processes exit non-zero', async () => {
    const port = 23000 + Math.floor(Math.random() * 5000);
    const env = (r: number) => ({ RANK: String(r), WORLD_SIZE: '2', LOCAL_RANK: String(r), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) });
    const s: ServerProc = await startServer([0, 1].map((r) => ({ args: serveArgs(run2, ['--max-num-seqs', '8', '--comm-timeout', '2']), env: env(r) })));
    try {
      const client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'none', maxRetries: 0 });
      const st = await client.completions.create({ model: 'run-tp2-p0.5', prompt: [1, 2], max_tokens: 60, temperature: 0, stream: true, ignore_eos: true } as never);
      let stoppedAt = 0;
      let result = 'completed';
      try {
        for await (const _ of st as unknown as AsyncIterable<unknown>) {
          if (!stoppedAt) {
            stoppedAt = Date.now();
            s.procs[1]!.kill('SIGSTOP');
          }
        }
      } catch (e) {
        result = `error: ${(e as Error).message}`;
      }
      const failedAfter = Date.now() - stoppedAt;
      assert.match(result, /^error: .*rank 1/);
      assert.ok(failedAfter >= 1500 && failedAfter < 15_000, `failed ${failedAfter} ms after the stop`);
      const h = await fetch(`${s.url}/health`).catch((e: unknown) => e as Error);
      if (!(h instanceof Error)) assert.equal(h.status, 503);
      s.procs[1]!.kill('SIGCONT');
      const exits = await s.exits;
      for (const e of exits) assert.ok(e.code !== 0, `exit ${e.code} ${e.signal}`);
    } finally {
      s.procs[1]!.kill('SIGCONT');
      await s.stop();
    }
  });
});
