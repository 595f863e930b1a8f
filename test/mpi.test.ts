/**
 * The MPI transport (src/transport/mpi.ts, mpi/): transport selection without MPI, then 2 and 4 ranks under
 * mpirun compared bit for bit with the virtual transport, mismatch detection, a failing rank ending
 * the job with "rank K failed: …", and the event loop staying live during a large collective.
 *
 * The mpirun tests skip, with the reason, when mpirun is not installed or the addon is not built
 * (apt-get install openmpi-bin libopenmpi-dev; npm run build:mpi).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createMpiCommunicator, DEFAULT_MPI_SEGMENT_BYTES, DEFAULT_MPI_SYNC_BYTES, detectMpiLauncher, findMpirun, loadMpiAddon, type MpiAddon, type MpiLoader, mpiAvailable, segmentBytesFrom, syncBytesFrom } from '../src/transport/mpi.js';
import { chooseTransport, detectLauncher } from '../src/transport/transport-select.js';
import { createVirtualGroup } from '../src/tp/virtual.js';
import { repoRoot } from './helpers/paths.js';
import { BIG_N, bigInput, fullSequence, type SequenceResult } from './helpers/mpi-sequence.js';

const SCRIPT = fileURLToPath(new URL('./helpers/mpi-collectives.js', import.meta.url));

const mpirun = findMpirun();
const addon = loadMpiAddon();
const skipReason: string | false = mpirun === null
  ? 'mpirun not found (apt-get install openmpi-bin)'
  : !addon.ok
    ? addon.reason
    : false;

/** A loader that records whether it was called. */
function spyLoader(result: ReturnType<MpiLoader>): MpiLoader & { calls: number } {
  const f = (() => {
    f.calls++;
    return result;
  }) as MpiLoader & { calls: number };
  f.calls = 0;
  return f;
}

const absent = { ok: false as const, reason: 'the MPI addon is not built (test)' };
function fakeAddon(): MpiAddon {
  const no = (): never => {
    throw new Error('MPI must not be touched');
  };
  return { info: () => ({ library: 'fake', standard: '3.1', initialized: false, finalized: false }), init: no, collective: no, abort: no, finalize: no };
}

describe('transport selection', () => {
  it('without a launcher: threads, and MPI is never loaded', () => {
    const loader = spyLoader(absent);
    const c = chooseTransport({}, { mpiLoader: loader });
    assert.equal(c.transport, 'threads');
    assert.equal(c.launcher, null);
    assert.equal(c.notice, null);
    assert.equal(loader.calls, 0);
    assert.deepEqual(mpiAvailable({}, loader), {
      ok: false,
      reason: 'not started by an MPI launcher (none of OMPI_COMM_WORLD_SIZE, PMIX_RANK, PMI_SIZE is set)',
    });
    assert.equal(loader.calls, 0);
  });

  it('under mpirun without the addon: tcp with a one-line notice', () => {
    const loader = spyLoader(absent);
    const env = { OMPI_COMM_WORLD_SIZE: '2', OMPI_COMM_WORLD_RANK: '1', PMIX_RANK: '1' };
    const c = chooseTransport(env, { mpiLoader: loader });
    assert.equal(c.transport, 'tcp');
    assert.equal(c.launcher?.kind, 'openmpi');
    assert.equal(c.launcher?.rank, 1);
    assert.equal(c.launcher?.size, 2);
    assert.ok(c.notice !== null && !c.notice.includes('\n'));
    assert.match(c.notice!, /Open MPI \(mpirun\) but the MPI transport is unavailable \(the MPI addon is not built \(test\)\); using tcp/);
    assert.equal(loader.calls, 1);
    assert.equal(mpiAvailable(env, loader).ok, false);
  });

  it('under an MPI launcher with the addon: mpi', () => {
    const ok = spyLoader({ ok: true, addon: fakeAddon(), path: '/fake' });
    for (const [env, kind] of [
      [{ OMPI_COMM_WORLD_SIZE: '4', OMPI_COMM_WORLD_RANK: '0' }, 'openmpi'],
      [{ PMIX_RANK: '3', SLURM_NTASKS: '4' }, 'pmix'],
      [{ PMI_SIZE: '2', PMI_RANK: '1' }, 'mpich'],
    ] as const) {
      const c = chooseTransport(env, { mpiLoader: ok });
      assert.equal(c.transport, 'mpi', JSON.stringify(env));
      assert.equal(c.launcher?.kind, kind);
      assert.equal(c.notice, null);
      assert.equal(detectMpiLauncher(env)?.kind, kind);
    }
    assert.deepEqual(mpiAvailable({ PMI_SIZE: '2' }, ok), { ok: true });
  });

  it('torchrun-style and srun variables: tcp, without loading MPI', () => {
    const loader = spyLoader(absent);
    const t = chooseTransport({ RANK: '1', WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: '29500' }, { mpiLoader: loader });
    assert.equal(t.transport, 'tcp');
    assert.equal(t.launcher?.kind, 'torchrun');
    const slurm = { SLURM_PROCID: '1', SLURM_NTASKS: '2', SLURM_STEP_NUM_TASKS: '2', SLURM_STEP_ID: '0', SLURM_STEP_NODELIST: 'n[1-2]', SLURM_JOB_ID: '7' };
    const s = chooseTransport(slurm, { mpiLoader: loader });
    assert.equal(s.transport, 'tcp');
    assert.deepEqual(s.launcher, { kind: 'slurm', variable: 'SLURM_PROCID', rank: 1, size: 2 });
    // srun with its PMIx plugin (srun --mpi=pmix) is an MPI launcher.
    assert.equal(detectLauncher({ ...slurm, PMIX_RANK: '1' })?.kind, 'pmix');
    assert.equal(loader.calls, 0);
  });

  it('explicit requests: CAAT_TRANSPORT and errors that say why', () => {
    const loader = spyLoader(absent);
    assert.equal(chooseTransport({ CAAT_TRANSPORT: 'threads', OMPI_COMM_WORLD_SIZE: '2' }, { mpiLoader: loader }).transport, 'threads');
    assert.equal(chooseTransport({}, { requested: 'tcp', mpiLoader: loader }).transport, 'tcp');
    assert.throws(() => chooseTransport({ CAAT_TRANSPORT: 'mpi' }, { mpiLoader: loader }), /needs an MPI launcher/);
    assert.throws(() => chooseTransport({ OMPI_COMM_WORLD_SIZE: '2' }, { requested: 'mpi', mpiLoader: loader }), /unavailable: the MPI addon is not built/);
    assert.throws(() => chooseTransport({ CAAT_TRANSPORT: 'carrier-pigeon' }), /unknown transport "carrier-pigeon"/);
  });

  it('CAAT_MPI_SYNC_BYTES and CAAT_MPI_SEGMENT_BYTES: defaults, values, and errors that name the variable', () => {
    assert.equal(syncBytesFrom({}, undefined), DEFAULT_MPI_SYNC_BYTES);
    assert.equal(syncBytesFrom({ CAAT_MPI_SYNC_BYTES: '0' }, undefined), 0);
    assert.equal(syncBytesFrom({ CAAT_MPI_SYNC_BYTES: '0' }, 100), 100);
    assert.throws(() => syncBytesFrom({ CAAT_MPI_SYNC_BYTES: 'lots' }, undefined), /CAAT_MPI_SYNC_BYTES must be a non-negative number, got "lots"/);
    assert.equal(segmentBytesFrom({}, undefined), DEFAULT_MPI_SEGMENT_BYTES);
    assert.equal(DEFAULT_MPI_SEGMENT_BYTES, 1 << 20);
    assert.equal(segmentBytesFrom({ CAAT_MPI_SEGMENT_BYTES: '65536' }, undefined), 65536);
    assert.throws(() => segmentBytesFrom({ CAAT_MPI_SEGMENT_BYTES: '4' }, undefined), /CAAT_MPI_SEGMENT_BYTES must be a number of bytes ≥ 8, got "4"/);
    assert.throws(() => segmentBytesFrom({ CAAT_MPI_SEGMENT_BYTES: '-1' }, undefined), /CAAT_MPI_SEGMENT_BYTES/);
    assert.throws(() => segmentBytesFrom({}, 0), /segmentBytes must be at least 8, got 0/);
  });

  it('createMpiCommunicator never initialises MPI outside a launcher', () => {
    const loader = spyLoader({ ok: true, addon: fakeAddon(), path: '/fake' });
    assert.throws(() => createMpiCommunicator({ env: {}, loader }), /the MPI transport is unavailable: not started by an MPI launcher/);
    assert.equal(loader.calls, 0);
  });
});

interface RunResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  ms: number;
  files: unknown[];
}

/** Runs the helper script on `np` ranks under mpirun; kills the job after `timeoutMs`. */
function runMpi(np: number, scenario: string, extra: string[] = [], timeoutMs = 90_000, addEnv: Record<string, string> = {}): Promise<RunResult> {
  const dir = mkdtempSync(join(tmpdir(), 'caat-mpi-'));
  const env = { ...process.env, ...addEnv };
  delete env['CAAT_TRANSPORT'];
  const args = [...mpirun!.baseArgs, '-np', String(np), process.execPath, SCRIPT, scenario, dir, ...extra];
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(mpirun!.command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 3000).unref();
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const ms = Date.now() - t0;
      const files = readdirSync(dir)
        .filter((f) => f.startsWith('rank-'))
        .sort((a, b) => Number(a.slice(5, -5)) - Number(b.slice(5, -5)))
        .map((f) => JSON.parse(readFileSync(join(dir, f), 'utf8')) as unknown);
      rmSync(dir, { recursive: true, force: true });
      if (ms >= timeoutMs) {
        reject(new Error(`mpirun -np ${np} ${scenario} timed out after ${timeoutMs} ms\nstdout:\n${stdout}\nstderr:\n${stderr}`));
        return;
      }
      resolve({ code, signal, stdout, stderr, ms, files });
    });
  });
}

async function virtualResults(n: number, seed: number): Promise<SequenceResult[]> {
  const comms = createVirtualGroup(n);
  return Promise.all(comms.map((c) => fullSequence(c, seed)));
}

async function compareWithVirtual(np: number, seed: number, addEnv: Record<string, string> = {}): Promise<void> {
  const [run, expected] = await Promise.all([runMpi(np, 'sequence', [String(seed)], 90_000, addEnv), virtualResults(np, seed)]);
  assert.equal(run.code, 0, `mpirun exited with ${run.code}\n${run.stderr}`);
  assert.equal(run.files.length, np, `expected ${np} result files\n${run.stderr}`);
  for (let r = 0; r < np; r++) {
    const got = run.files[r] as SequenceResult & { transport: string; threadLevel: string; waitMs: number };
    const want = expected[r]!;
    assert.equal(got.rank, r);
    assert.equal(got.size, np);
    assert.equal(got.transport, 'mpi');
    assert.equal(got.threadLevel, 'serialized');
    assert.equal(got.hashes.length, want.hashes.length);
    for (let i = 0; i < want.hashes.length; i++) {
      assert.equal(got.hashes[i], want.hashes[i], `rank ${r}: output #${i} differs from the virtual transport (seed ${seed})`);
    }
    assert.deepEqual(new Map(got.bytes), new Map(want.bytes), `rank ${r}: bytes by tag`);
    assert.deepEqual(new Map(got.calls), new Map(want.calls), `rank ${r}: calls by tag`);
    assert.ok(got.waitMs > 0);
  }
}

describe('MPI transport under mpirun', { skip: skipReason }, () => {
  it('2 ranks: every collective bitwise equal to the virtual transport', async () => {
    await compareWithVirtual(2, 11);
  });

  it('4 ranks: every collective bitwise equal to the virtual transport', async () => {
    // The data is order-sensitive: summing in another order gives other bits.
    const xs = [0, 1, 2, 3].map((r) => bigInput(4, r, BIG_N));
    let differs = false;
    for (let i = 0; i < BIG_N && !differs; i++) {
      const fwd = Math.fround(Math.fround(Math.fround(xs[0]![i]! + xs[1]![i]!) + xs[2]![i]!) + xs[3]![i]!);
      const rev = Math.fround(Math.fround(Math.fround(xs[3]![i]! + xs[2]![i]!) + xs[1]![i]!) + xs[0]![i]!);
      if (!Object.is(fwd, rev)) differs = true;
    }
    assert.ok(differs, 'test data should be sensitive to the reduction order');
    await compareWithVirtual(4, 4);
  });

  it('all-reduces in odd-sized pieces (CAAT_MPI_SEGMENT_BYTES=20004): still bitwise equal, 2 and 4 ranks', async () => {
    // The sequence's 4 MB float32 all-reduce (at offset 7) and its float64 one then go in 5001- and
    // 2500-element pieces; the default 1 MiB pieces are covered by the tests above.
    await compareWithVirtual(2, 5, { CAAT_MPI_SEGMENT_BYTES: '20004' });
    await compareWithVirtual(4, 6, { CAAT_MPI_SEGMENT_BYTES: '20004' });
  });

  it('mismatched calls: every rank gets CommMismatchError naming both calls, then CommAbortedError', async () => {
    const run = await runMpi(3, 'mismatch');
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.files.length, 3);
    const msg = 'collective #1 mismatch: rank 0 called allReduce(sum, tag "tag.a", n=4, float32) but rank 1 called allReduce(sum, tag "tag.b", n=6, float32)';
    for (const f of run.files as { first: { name: string; message: string }; later: { name: string; failedRank?: number } }[]) {
      assert.equal(f.first.name, 'CommMismatchError');
      assert.equal(f.first.message, msg);
      assert.equal(f.later.name, 'CommAbortedError');
      assert.equal(f.later.failedRank, 1);
    }
  });

  it('a mismatch that ends the job names the differing rank', async () => {
    const run = await runMpi(2, 'mismatch-abort', [], 60_000);
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /rank 1 failed: collective #0 mismatch: rank 0 called allReduce\(sum, tag "tag.a", n=6, float32\) but rank 1 called allReduce\(sum, tag "tag.b", n=6, float32\)/);
  });

  it('a rank that throws ends the job with "rank 1 failed: <message>"', async () => {
    const run = await runMpi(2, 'abort', [], 60_000);
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /rank 1 failed: boom on rank 1 at step 3/);
  });

  it('a rank that exits with a non-zero code ends the job', async () => {
    const run = await runMpi(2, 'exit-code', [], 60_000);
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /rank 1 failed: process exiting with code 3/);
  });

  it('joinMpiGroup: equal configurations join; a differing rank fails every rank, naming it', async () => {
    const run = await runMpi(3, 'join');
    assert.equal(run.code, 0, run.stderr);
    const files = run.files as { sameOk: boolean; error: string }[];
    assert.equal(files.length, 3);
    for (const [r, f] of files.entries()) {
      assert.equal(f.sameOk, true);
      if (r === 1) assert.equal(f.error, "the configuration of rank 1 differs from rank 0's: seed: 1 (rank 0) vs 2 (rank 1)");
      else assert.equal(f.error, "the configuration of rank 1 differs from rank 0's");
    }
  });

  it('a large collective does not block the event loop', async () => {
    const run = await runMpi(2, 'event-loop');
    assert.equal(run.code, 0, run.stderr);
    const [r0, r1] = run.files as { turns: number; ms: number; first: number; last: number }[];
    assert.equal(r0!.first, 3);
    assert.equal(r1!.last, 3);
    assert.ok(r0!.ms > 150, `rank 0 should wait for rank 1 (${r0!.ms} ms)`);
    assert.ok(r0!.turns > 20, `rank 0's event loop turned only ${r0!.turns} times while waiting ${r0!.ms.toFixed(0)} ms`);
  });
});

describe('caat train under mpirun', { skip: skipReason }, () => {
  const cli = join(repoRoot, 'dist', 'src', 'cli', 'main.js');
  const small = (dir: string, out: string, tp: number): string[] => [
    'train', '--data', join(dir, 'corpus'), '--vocab-size', '300', '--cache-dir', join(dir, 'cache'), '--out', out,
    '--hidden', '16', '--layers', '1', '--heads', '4', '--kv-heads', '4', '--ffn', '32', '--seq-len', '16',
    '--batch-size', '2', '--warmup', '2', '--eval-every', '0', '--eval-batches', '1', '--tp', String(tp), '--p', '0.5', '--steps', '3',
  ];
  const cleanEnv = (): NodeJS.ProcessEnv => {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (!/^(RANK|WORLD_SIZE|LOCAL_RANK|MASTER_ADDR|MASTER_PORT|OMPI_.*|PMIX_.*|PMI_.*|SLURM_.*|CAAT_TRANSPORT|CAAT_JOB_TOKEN)$/.test(k)) env[k] = v;
    }
    return { ...env, CAAT_BACKEND: 'js' };
  };
  const exec = (cmd: string, args: string[]): Promise<{ code: number | null; out: string }> =>
    new Promise((resolve, reject) => {
      const child = spawn(cmd, args, { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
      child.on('error', reject);
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, out });
      });
    });
  const lossesOf = (run: string): [number, number][] =>
    readFileSync(join(run, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => {
      const x = JSON.parse(l) as { step: number; loss: number };
      return [x.step, x.loss];
    });
  const ckpt = (run: string, file: string): Buffer => readFileSync(join(run, 'checkpoints', 'step-00000003', file));

  it('TP 2 (chosen automatically) and TP 4 (--transport mpi): losses and checkpoints equal the virtual-rank run', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'caat-mpi-train-'));
    try {
      mkdirSync(join(dir, 'corpus'));
      const lines = ['The whale rose slowly from the dark water.', 'Congress shall assemble at least once in every year.', 'She walked along the river, counting the boats.'];
      for (let d = 0; d < 8; d++) writeFileSync(join(dir, 'corpus', `d${d}.txt`), Array.from({ length: 50 }, (_, i) => lines[(d + i) % 3]).join('\n'));
      for (const [tp, extra] of [[2, []], [4, ['--transport', 'mpi']]] as const) {
        const virt = join(dir, `virtual${tp}`);
        const mpi = join(dir, `mpi${tp}`);
        const v = await exec(process.execPath, [cli, ...small(dir, virt, tp), '--workers', '0']);
        assert.equal(v.code, 0, v.out);
        const m = await exec(mpirun!.command, [...mpirun!.baseArgs, '-np', String(tp), process.execPath, cli, ...small(dir, mpi, tp), ...extra]);
        assert.equal(m.code, 0, m.out);
        assert.match(m.out, new RegExp(`TP ${tp} on ${tp} processes over MPI`));
        assert.deepEqual(lossesOf(mpi), lossesOf(virt), `TP ${tp}: losses`);
        assert.ok(ckpt(mpi, 'model.safetensors').equals(ckpt(virt, 'model.safetensors')), `TP ${tp}: model checkpoint`);
        assert.ok(ckpt(mpi, 'optimizer.safetensors').equals(ckpt(virt, 'optimizer.safetensors')), `TP ${tp}: optimizer checkpoint`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('caat bench comm', () => {
  it('--json prints one record per transport and size, and skips what is missing with a reason', async () => {
    const main = join(repoRoot, 'dist', 'src', 'cli', 'main.js');
    const env = { ...process.env, CAAT_BENCH_QUICK: '1' };
    const res = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
      const child = spawn(process.execPath, [main, 'bench', 'comm', '--json'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
      child.on('error', reject);
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr });
      });
    });
    assert.equal(res.code, 0, res.stderr);
    const records = res.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const seen = new Set<string>();
    for (const r of records) {
      assert.equal(typeof r['transport'], 'string');
      assert.ok([4096, 1 << 20, 16 << 20].includes(r['bytes'] as number));
      assert.ok((r['median_us'] as number) > 0);
      assert.ok(Math.abs((r['gbps'] as number) - (r['bytes'] as number) / ((r['median_us'] as number) * 1e3)) < 1e-9 * (r['gbps'] as number) + 1e-12);
      seen.add(`${r['transport']}/${r['bytes']}`);
    }
    for (const t of ['threads', 'tcp', 'mpi']) {
      const measured = [4096, 1 << 20, 16 << 20].every((b) => seen.has(`${t}/${b}`));
      const skipped = new RegExp(`^${t}: skipped \\(.+\\)$`, 'm').test(res.stderr);
      assert.ok(measured !== skipped, `${t}: either measured at every size or skipped with a reason\n${res.stderr}`);
    }
    assert.ok(seen.has('threads/4096'));
    if (!skipReason) assert.ok(seen.has('mpi/16777216'), res.stderr);
  });
});
