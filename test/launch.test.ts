/**
 * Multiple processes: launcher detection (torchrun-style variables, Open MPI, Slurm with host lists),
 * and `caat train` / `generate` / `eval` / `gradcheck` with one rank per process over TCP, started by
 * `caat launch`, by hand with torchrun-style variables, by mpirun and by srun (those two are skipped
 * when not installed): the loss sequence and the checkpoint equal the virtual-rank run's bit for bit.
 * Also: a different configuration or job token is refused with the difference; a rank killed mid-run
 * or stopped makes the others exit non-zero promptly, naming it; the run resumes from its last
 * checkpoint.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadCheckpoint } from '../src/io/checkpoint.js';
import { detectLaunch, portFromJobId } from '../src/launch/env.js';
import { expandHostlist, firstHost } from '../src/launch/hostlist.js';
import { writeSmallCorpus } from './helpers/corpus.js';
import { fixturesDir, repoRoot } from './helpers/paths.js';

const cli = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
let tmp: string;
let corpus: string;
let cache: string;

/** The test's environment without any launcher variables (the tests set their own). */
function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined) continue;
    if (/^(RANK|WORLD_SIZE|LOCAL_RANK|LOCAL_WORLD_SIZE|GROUP_RANK|MASTER_ADDR|MASTER_PORT|TORCHELASTIC_.*|OMPI_.*|PMIX_.*|SLURM_.*|CAAT_JOB_TOKEN|CAAT_FAULT_INJECT.*)$/.test(k)) continue;
    env[k] = v;
  }
  return { ...env, CAAT_BACKEND: 'js', ...extra };
}

function run(args: string[], env: Record<string, string> = {}, cmd: string[] = [process.execPath, cli]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd[0]!, [...cmd.slice(1), ...args], { encoding: 'utf8', env: cleanEnv(env), timeout: 90_000 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

interface Proc {
  pid: number;
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string; stdout: string; at: number }>;
  kill(sig: NodeJS.Signals): void;
}

function start(args: string[], env: Record<string, string>): Proc {
  const p = spawn(process.execPath, [cli, ...args], { env: cleanEnv(env) });
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string; stdout: string; at: number }>((resolve) =>
    p.on('close', (code, signal) => resolve({ code, signal, stderr, stdout, at: Date.now() })),
  );
  return { pid: p.pid!, done, kill: (sig) => p.kill(sig) };
}

/** Is this executable on the PATH? */
function onPath(exe: string): boolean {
  return (process.env['PATH'] ?? '').split(path.delimiter).some((d) => {
    try {
      fs.accessSync(path.join(d, exe), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

let nextPort = 21000 + Math.floor(Math.random() * 8000);

/** N processes with torchrun-style variables on 127.0.0.1. */
function startRanks(N: number, args: string[] | ((r: number) => string[]), env: (r: number) => Record<string, string> = () => ({})): Proc[] {
  const port = nextPort++;
  return Array.from({ length: N }, (_, r) => start(typeof args === 'function' ? args(r) : args, { RANK: String(r), WORLD_SIZE: String(N), LOCAL_RANK: String(r), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), ...env(r) }));
}

const small = (out: string, tp: number, extra: string[] = []): string[] => [
  'train', '--data', corpus, '--vocab-size', '300', '--cache-dir', cache, '--out', out,
  '--hidden', '16', '--layers', '1', '--heads', '4', '--kv-heads', '4', '--ffn', '32', '--seq-len', '16',
  '--batch-size', '2', '--warmup', '2', '--eval-every', '0', '--eval-batches', '1',
  '--tp', String(tp), '--p', '0.5', '--steps', '3', ...extra,
];

function losses(runDir: string): { step: number; loss: number }[] {
  return fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; loss: number });
}

function modelBytes(runDir: string, step: number): Buffer {
  return fs.readFileSync(path.join(runDir, 'checkpoints', `step-${String(step).padStart(8, '0')}`, 'model.safetensors'));
}

/** The virtual-rank reference runs (TP 2 and TP 4, 3 steps), made once. */
const reference: Record<number, string> = {};

function assertSameRun(got: string, tp: number, what: string): void {
  const want = reference[tp]!;
  assert.deepEqual(losses(got).map((x) => [x.step, x.loss]), losses(want).map((x) => [x.step, x.loss]), `${what}: losses differ from the virtual-rank run`);
  assert.ok(modelBytes(got, 3).equals(modelBytes(want, 3)), `${what}: checkpoint differs from the virtual-rank run`);
  assert.ok(fs.readFileSync(path.join(got, 'checkpoints', 'step-00000003', 'optimizer.safetensors')).equals(fs.readFileSync(path.join(want, 'checkpoints', 'step-00000003', 'optimizer.safetensors'))));
}

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'caat-launch-'));
  cache = path.join(tmp, 'cache');
  corpus = writeSmallCorpus(path.join(tmp, 'corpus'));
  for (const tp of [2, 4]) {
    const out = path.join(tmp, `virtual${tp}`);
    const r = run(small(out, tp, ['--workers', '0']));
    assert.equal(r.status, 0, r.stderr);
    reference[tp] = out;
  }
});

after(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('launcher detection', () => {
  test('torchrun-style variables come first; Open MPI; Slurm with the first host of the step', () => {
    assert.equal(detectLaunch({}), null);
    const t = detectLaunch({ RANK: '1', WORLD_SIZE: '4', LOCAL_RANK: '1', MASTER_ADDR: 'node7', MASTER_PORT: '29500', TORCHELASTIC_RUN_ID: 'abc', OMPI_COMM_WORLD_RANK: '3', OMPI_COMM_WORLD_SIZE: '8' })!;
    assert.deepEqual([t.launcher, t.rank, t.worldSize, t.localRank, t.masterAddr, t.masterPort, t.tokenLabel], ['torchrun', 1, 4, 1, 'node7', 29500, 'TORCHELASTIC_RUN_ID=abc']);
    const o = detectLaunch({ OMPI_COMM_WORLD_RANK: '2', OMPI_COMM_WORLD_SIZE: '4', OMPI_COMM_WORLD_LOCAL_RANK: '2', OMPI_COMM_WORLD_LOCAL_SIZE: '4', OMPI_MCA_ess_base_jobid: '3735879681' })!;
    assert.deepEqual([o.launcher, o.rank, o.worldSize, o.localRank, o.masterAddr, o.masterPort], ['openmpi', 2, 4, 2, '127.0.0.1', portFromJobId('ompi:3735879681')]);
    assert.equal(detectLaunch({ OMPI_COMM_WORLD_RANK: '0', OMPI_COMM_WORLD_SIZE: '2', MASTER_PORT: '1234', MASTER_ADDR: 'h1' })!.masterPort, 1234);
    assert.throws(() => detectLaunch({ OMPI_COMM_WORLD_RANK: '0', OMPI_COMM_WORLD_SIZE: '8', OMPI_COMM_WORLD_LOCAL_SIZE: '4', OMPI_MCA_ess_base_jobid: '1' }), /spans several hosts.*MASTER_ADDR/);
    const s = detectLaunch({ SLURM_PROCID: '5', SLURM_NTASKS: '8', SLURM_STEP_NUM_TASKS: '8', SLURM_LOCALID: '1', SLURM_STEP_NODELIST: 'gpu[07-09,12],cpu1', SLURM_JOB_ID: '4242', SLURM_STEP_ID: '3' })!;
    assert.deepEqual([s.launcher, s.rank, s.worldSize, s.localRank, s.masterAddr, s.masterPort, s.tokenLabel], ['slurm', 5, 8, 1, 'gpu07', portFromJobId('slurm:4242.3'), 'SLURM_JOB_ID=4242.3']);
    assert.equal(detectLaunch({ SLURM_PROCID: '0', SLURM_NTASKS: '2', SLURM_STEP_ID: '0', SLURM_STEP_NODELIST: 'a', SLURM_JOB_ID: '1', MASTER_PORT: '999' })!.masterPort, 999);
    // An sbatch script itself (no job step) is not a rank.
    assert.equal(detectLaunch({ SLURM_PROCID: '0', SLURM_NTASKS: '4', SLURM_JOB_NODELIST: 'n[1-2]', SLURM_JOB_ID: '5' }), null);
    const tok = detectLaunch({ RANK: '0', WORLD_SIZE: '2', MASTER_PORT: '1', CAAT_JOB_TOKEN: 'secret' })!;
    assert.equal(tok.token, 'secret');
    assert.match(tok.tokenLabel, /^CAAT_JOB_TOKEN \(sha256 [0-9a-f]{12}\)$/);
    assert.ok(!tok.tokenLabel.includes('secret'));
    assert.throws(() => detectLaunch({ RANK: '0', WORLD_SIZE: '2' }), /MASTER_PORT is not/);
    assert.throws(() => detectLaunch({ RANK: 'x', WORLD_SIZE: '2', MASTER_PORT: '1' }), /RANK="x"/);
    assert.throws(() => detectLaunch({ RANK: '2', WORLD_SIZE: '2', MASTER_PORT: '1' }), /rank 2 from torchrun is not below the world size 2/);
    const p1 = portFromJobId('slurm:1.0');
    assert.ok(p1 >= 20000 && p1 < 32000);
  });

  test('Slurm host lists expand with ranges, padding and products', () => {
    assert.deepEqual(expandHostlist('node[01-04,07]'), ['node01', 'node02', 'node03', 'node04', 'node07']);
    assert.deepEqual(expandHostlist('a,b[8-10],c'), ['a', 'b8', 'b9', 'b10', 'c']);
    assert.deepEqual(expandHostlist('r[1-2]-n[1,3]'), ['r1-n1', 'r1-n3', 'r2-n1', 'r2-n3']);
    assert.deepEqual(expandHostlist('x[098-101]'), ['x098', 'x099', 'x100', 'x101']);
    assert.equal(firstHost('gpu[12-13],cpu[1-2]'), 'gpu12');
    assert.throws(() => expandHostlist('n[1-'), /unbalanced/);
    assert.throws(() => expandHostlist('n[3-1]'), /runs backwards/);
  });
});

describe('training across processes equals virtual ranks bitwise', () => {
  test('caat launch --nproc 2 -- train --tp 2 --p 0.5; generate, eval and gradcheck under caat launch', () => {
    const out = path.join(tmp, 'launch2');
    const r = run(['launch', '--nproc', '2', '--', ...small(out, 2)]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /\[rank 0\] done: 3 steps/);
    assert.doesNotMatch(r.stderr + r.stdout, /\[rank 1\]/, 'rank 1 stays quiet');
    assertSameRun(out, 2, 'caat launch');
    // generate and eval: the same output as one process hosting both ranks.
    const gen = ['generate', '--run', out, '--prompt', 'The whale', '--max-tokens', '6', '--seed', '3'];
    const g1 = run(gen);
    const g2 = run(['launch', '--nproc', '2', '--', ...gen]);
    assert.equal(g2.status, 0, g2.stderr);
    assert.equal(g2.stdout, g1.stdout.split('\n').filter((l) => l !== '').map((l) => `[rank 0] ${l}\n`).join(''));
    const e1 = run(['eval', '--run', out, '--json']);
    const e2 = run(['launch', '--nproc', '2', '--', 'eval', '--run', out, '--json']);
    assert.equal(e2.status, 0, e2.stderr);
    assert.equal(e2.stdout, `[rank 0] ${e1.stdout}`);
    // gradcheck on a reference fixture: the same JSON as virtual ranks.
    const fx = path.join(fixturesDir, 'tp2_p0.5');
    const gc = ['gradcheck', '--model', path.join(fx, 'model.safetensors'), '--tokens', path.join(fx, 'tokens.json'), '--json'];
    const c1 = run(gc);
    const c2 = run(['launch', '--nproc', '2', '--', ...gc]);
    assert.equal(c2.status, 0, c2.stderr);
    assert.deepEqual(JSON.parse(c2.stdout.replace(/^\[rank 0\] /, '')), JSON.parse(c1.stdout));
  });

  test('caat launch --nproc 2 -- train --tp 4: two ranks per process', () => {
    const out = path.join(tmp, 'launch2x2');
    const r = run(['launch', '--nproc', '2', '--', ...small(out, 4)]);
    assert.equal(r.status, 0, r.stderr);
    assertSameRun(out, 4, '2 processes × 2 ranks');
  });

  test('4 processes with torchrun-style variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), preparing the data concurrently from a cold cache', async () => {
    const out = path.join(tmp, 'torchrun4');
    // A fresh cache folder: all 4 processes train the BPE and write the token cache at the same time.
    const cold = path.join(tmp, 'cache-cold');
    const res = await Promise.all(startRanks(4, small(out, 4, ['--cache-dir', cold])).map((p) => p.done));
    res.forEach((x, r) => assert.equal(x.code, 0, `rank ${r}: ${x.stderr}`));
    assert.match(res[0]!.stderr, /done: 3 steps/);
    for (const r of [1, 2, 3]) assert.equal(res[r]!.stderr + res[r]!.stdout, '', `rank ${r} prints nothing`);
    assertSameRun(out, 4, 'torchrun-style');
    const files = fs.readdirSync(cold, { recursive: true }).map(String);
    assert.ok(!files.some((f) => f.includes('.tmp-')), `no temporary files left: ${files.join(', ')}`);
  });

  test('4 processes under mpirun (Open MPI)', { skip: onPath('mpirun') ? false : 'mpirun not installed (apt-get install openmpi-bin)' }, () => {
    const out = path.join(tmp, 'mpirun4');
    const r = run(small(out, 4), {}, ['mpirun', '--allow-run-as-root', '--oversubscribe', '-np', '4', '-x', 'CAAT_BACKEND', process.execPath, cli]);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assertSameRun(out, 4, 'mpirun');
  });

  let slurm: { conf?: string; skip: string | false } = { skip: 'srun not installed (apt-get install slurm-wlm munge)' };
  if (onPath('srun')) {
    const setup = spawnSync(path.join(repoRoot, 'scripts', 'slurm-local.sh'), { encoding: 'utf8', timeout: 60_000 });
    const conf = /SLURM_CONF=(\S+)/.exec(setup.stdout ?? '')?.[1];
    slurm = setup.status === 0 && conf ? { conf, skip: false } : { skip: `the one-node Slurm cluster did not start (scripts/slurm-local.sh: ${(setup.stderr || setup.stdout || String(setup.error)).trim()})` };
  }
  test('4 processes under srun (Slurm, one-node cluster from scripts/slurm-local.sh)', { skip: slurm.skip }, () => {
    const out = path.join(tmp, 'srun4');
    const r = run(small(out, 4), { SLURM_CONF: slurm.conf! }, ['srun', '-n', '4', '--kill-on-bad-exit=1', process.execPath, cli]);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assertSameRun(out, 4, 'srun');
  });
});

describe('bf16 mode across transports equals virtual ranks bitwise', () => {
  const bf = ['--precision', 'bf16'];
  const ref16: Record<number, string> = {};
  const refOf = (tp: number): string => {
    if (!ref16[tp]) {
      const out = path.join(tmp, `virtual${tp}-bf16`);
      const r = run(small(out, tp, ['--workers', '0', ...bf]));
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /precision: bf16 mixed/);
      ref16[tp] = out;
    }
    return ref16[tp]!;
  };
  const same = (got: string, tp: number, what: string): void => {
    const want = refOf(tp);
    assert.deepEqual(losses(got).map((x) => [x.step, x.loss]), losses(want).map((x) => [x.step, x.loss]), `${what}: losses differ from the bf16 virtual-rank run`);
    assert.ok(modelBytes(got, 3).equals(modelBytes(want, 3)), `${what}: checkpoint differs from the bf16 virtual-rank run`);
  };

  test('TP 2 and 4, p 0.5: worker threads, caat launch (TCP) and mpirun give the bits of virtual ranks', () => {
    for (const tp of [2, 4]) {
      // bf16 really is another computation, and its forward block traffic is half of fp32's.
      const want = refOf(tp);
      assert.notDeepEqual(losses(want).map((x) => x.loss), losses(reference[tp]!).map((x) => x.loss), `TP ${tp}: bf16 losses equal fp32's`);
      const m16 = JSON.parse(fs.readFileSync(path.join(want, 'metrics.jsonl'), 'utf8').split('\n')[0]!) as Record<string, number>;
      const m32 = JSON.parse(fs.readFileSync(path.join(reference[tp]!, 'metrics.jsonl'), 'utf8').split('\n')[0]!) as Record<string, number>;
      assert.equal(m16['comm_bytes_fwd_shared']! * 2, m32['comm_bytes_fwd_shared']!, `TP ${tp}: forward block bytes`);
      assert.equal(m16['comm_bytes_bwd_shared'], m32['comm_bytes_bwd_shared'], `TP ${tp}: backward block bytes stay fp32`);
      const runJson = JSON.parse(fs.readFileSync(path.join(want, 'run.json'), 'utf8')) as { train: { precision: string } };
      assert.equal(runJson.train.precision, 'bf16');

      const threads = path.join(tmp, `threads${tp}-bf16`);
      const t = run(small(threads, tp, ['--workers', '2', ...bf]));
      assert.equal(t.status, 0, t.stderr);
      same(threads, tp, `TP ${tp} worker threads`);

      const launch = path.join(tmp, `launch${tp}-bf16`);
      const l = run(['launch', '--nproc', '2', '--', ...small(launch, tp, bf)]);
      assert.equal(l.status, 0, l.stderr);
      same(launch, tp, `TP ${tp} caat launch --nproc 2 (TCP)`);

      if (onPath('mpirun')) {
        const mpi = path.join(tmp, `mpirun${tp}-bf16`);
        const m = run(small(mpi, tp, bf), {}, ['mpirun', '--allow-run-as-root', '--oversubscribe', '-np', String(tp), '-x', 'CAAT_BACKEND', process.execPath, cli]);
        assert.equal(m.status, 0, m.stdout + m.stderr);
        same(mpi, tp, `TP ${tp} mpirun -np ${tp}`);
      }
    }
  });
});

describe('refusals and failures', () => {
  test('a rank with a different configuration is refused: both sides show the difference and exit non-zero', async () => {
    const out = path.join(tmp, 'mismatch');
    // Rank 1 asks for another p (the later --p wins).
    const ps = startRanks(2, (r) => small(out, 2, r === 1 ? ['--p', '0.25'] : []));
    const [a, b] = await Promise.all(ps.map((p) => p.done));
    assert.equal(a.code, 1, a.stderr);
    assert.equal(b.code, 1, b.stderr);
    assert.match(a.stderr, /rank 1 was refused: its configuration differs from rank 0's: parallel\.p: 0\.25 \(rank 1\) vs 0\.5 \(rank 0\)/);
    assert.match(b.stderr, /caat: error: rank 0 refused rank 1: configuration differs from rank 0's: parallel\.p: 0\.25 \(rank 1\) vs 0\.5 \(rank 0\)/);
  });

  test('a process of another job (different token) is refused; rank 0 gives up after the timeout, saying why', async () => {
    const out = path.join(tmp, 'token');
    const ps = startRanks(2, small(out, 2, ['--comm-timeout', '2']), (r) => ({ CAAT_JOB_TOKEN: r === 0 ? 'job-a' : 'job-b' }));
    const [a, b] = await Promise.all(ps.map((p) => p.done));
    assert.equal(b.code, 1);
    assert.match(b.stderr, /caat: error: rank 0 refused rank 1: job token differs: this process presented CAAT_JOB_TOKEN \(sha256 [0-9a-f]+\), rank 0 of the job on 127\.0\.0\.1:\d+ has CAAT_JOB_TOKEN \(sha256 [0-9a-f]+\)/);
    assert.equal(a.code, 1);
    assert.match(a.stderr, /refused a connection from .* claiming rank 1: job token differs/);
    assert.match(a.stderr, /caat: error: rendezvous on 127\.0\.0\.1:\d+ timed out after 2 s: rank 1 \(a connection claiming rank 1 was refused: job token differs/);
    assert.ok(!fs.existsSync(path.join(out, 'metrics.jsonl')));
  });

  test('a rank failing mid-run under caat launch: "rank 1 failed: <message>", non-zero exit, last checkpoint loadable', () => {
    const out = path.join(tmp, 'inject');
    const t0 = Date.now();
    const r = run(['launch', '--nproc', '2', '--', ...small(out, 2, ['--steps', '6', '--ckpt-every', '2'])], { CAAT_FAULT_INJECT: 'rank=1,step=3' });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /\[rank 0\] caat: error: rank 1 failed: injected fault at step 3/);
    assert.match(r.stderr, /\[rank 1\] caat: error: injected fault at step 3/);
    assert.ok(Date.now() - t0 < 30_000);
    assert.equal(loadCheckpoint(out).state.step, 2);
  });

  test('SIGKILL of one of 4 ranks mid-run: the others exit non-zero at once naming it; --resume continues to the same bits', async () => {
    const steps = ['--steps', '300', '--ckpt-every', '4'];
    const want = path.join(tmp, 'kill-ref');
    const rr = run(small(want, 4, [...steps, '--workers', '0']));
    assert.equal(rr.status, 0, rr.stderr);
    const out = path.join(tmp, 'killed');
    const ps = startRanks(4, small(out, 4, steps));
    const latest = path.join(out, 'latest');
    const deadline = Date.now() + 30_000;
    while (!fs.existsSync(latest) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    const killedAt = Date.now();
    ps[2]!.kill('SIGKILL');
    const res = await Promise.all(ps.map((p) => p.done));
    assert.equal(res[2]!.signal, 'SIGKILL');
    for (const r of [0, 1, 3]) {
      assert.equal(res[r]!.code, 1, `rank ${r}: ${res[r]!.stderr}`);
      assert.match(res[r]!.stderr, /caat: error: rank 2 failed: connection to rank 2 lost/);
      assert.ok(res[r]!.at - killedAt < 10_000, `rank ${r} took ${res[r]!.at - killedAt} ms`);
    }
    const saved = loadCheckpoint(out).state.step;
    assert.ok(saved >= 4 && saved < 300, `killed after the run finished (checkpoint ${saved})`);
    const resumed = run(['launch', '--nproc', '4', '--', 'train', '--resume', out]);
    assert.equal(resumed.status, 0, resumed.stderr);
    assert.match(resumed.stderr, new RegExp(`resuming .* from step-${String(saved).padStart(8, '0')}`));
    assert.ok(modelBytes(out, 300).equals(modelBytes(want, 300)), 'the resumed run ends with the uninterrupted run\'s weights');
    const tail = losses(out).slice(-(300 - saved));
    assert.deepEqual(tail.map((x) => x.loss), losses(want).slice(saved).map((x) => x.loss));
  });

  test('a stopped (hung) rank: the others exit non-zero after --comm-timeout, naming it', async () => {
    const out = path.join(tmp, 'stopped');
    const ps = startRanks(2, small(out, 2, ['--steps', '100000', '--ckpt-every', '4', '--comm-timeout', '2']));
    const latest = path.join(out, 'latest');
    const deadline = Date.now() + 30_000;
    while (!fs.existsSync(latest) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    const stoppedAt = Date.now();
    ps[1]!.kill('SIGSTOP');
    try {
      const r0 = await ps[0]!.done;
      assert.equal(r0.code, 1, r0.stderr);
      assert.match(r0.stderr, /caat: error: rank 1 failed: rank 1 did not reach collective #\d+ .* within 2 s/);
      assert.ok(r0.at - stoppedAt < 10_000, `${r0.at - stoppedAt} ms`);
    } finally {
      ps[1]!.kill('SIGKILL');
      await ps[1]!.done;
    }
    assert.ok(loadCheckpoint(out).state.step >= 4);
  });

  test('process mode needs the number of processes to divide --tp; --transport tcp needs a launcher', () => {
    const r = run(['launch', '--nproc', '3', '--', ...small(path.join(tmp, 'w'), 4)]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /the torchrun launch has 3 processes but the TP degree is 4: the number of processes must divide it/);
    const t = run([...small(path.join(tmp, 'w2'), 2), '--transport', 'tcp']);
    assert.notEqual(t.status, 0);
    assert.match(t.stderr, /--transport tcp needs a launcher/);
  });
});
