/**
 * `caat sweep` end to end on a 2 × 2 × 2 grid of tiny cells (TP 2/4, p 1/0.5, seeds 1/2): every row in
 * results.jsonl, a second invocation doing no work, a crashed grid and a killed sweep (SIGKILL of the
 * sweep process and its child, and SIGTERM) finishing on restart with the same numbers, bit for bit,
 * as the uninterrupted sweep; and bad sweep files refused before any cell starts, naming the field.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadReportData } from '../src/experiments/report.js';
import { curveFile, readCurve, readMetrics, type ResultRow } from '../src/experiments/results.js';
import { writeSmallCorpus } from './helpers/corpus.js';
import { repoRoot } from './helpers/paths.js';
import { running } from './helpers/procs.js';

const cli = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
let tmp: string;

let sweepFile: string;
const STEPS = 24;

function run(args: string[], env: Record<string, string> = {}): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, CAAT_BACKEND: 'js', ...env }, timeout: 240_000 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function writeJson(name: string, o: unknown): string {
  const f = path.join(tmp, name);
  fs.writeFileSync(f, JSON.stringify(o));
  return f;
}

const rows = (dir: string): ResultRow[] => fs.readFileSync(path.join(dir, 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as ResultRow);
/** Everything of a row except the wall-clock times. */
const numbers = (r: ResultRow) => ({ ...r, wall_s: undefined });
/** Each cell's per-step training and validation losses. */
const curves = (dir: string) => Object.fromEntries(rows(dir).map((r) => [r.cell, readMetrics(path.join(dir, r.dir)).map((m) => [m.step, m.loss, m.val_loss ?? null])]));

function sameAsReference(dir: string): void {
  const a = rows(path.join(tmp, 'ref'));
  const b = rows(dir);
  assert.equal(b.length, 8);
  assert.deepEqual(b.map(numbers), a.map(numbers));
  assert.deepEqual(curves(dir), curves(path.join(tmp, 'ref')));
}

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'caat-sweep-'));
  const corpus = writeSmallCorpus(path.join(tmp, 'corpus'));
  sweepFile = writeJson('sweep.json', {
    base: {
      data: corpus, 'vocab-size': 300, 'cache-dir': path.join(tmp, 'cache'),
      hidden: 16, layers: 1, heads: 4, 'kv-heads': 4, ffn: 32, 'seq-len': 16,
      'batch-size': 2, warmup: 2, 'eval-every': 8, 'eval-batches': 1, steps: STEPS, 'ckpt-every': 4,
    },
    grid: { tp: [2, 4], p: [1, 0.5], seed: [1, 2] },
    eval: { 'max-batches': 4 },
  });
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('caat sweep', () => {
  test('a 2 × 2 × 2 grid runs end to end; a second invocation does no work', () => {
    const out = path.join(tmp, 'ref');
    const r = run(['sweep', '--config', sweepFile, '--out', out]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /8 cells \(tp × 2, p × 2, seed × 2\), 0 complete, 8 to run/);
    const rs = rows(out);
    assert.deepEqual(rs.map((x) => x.cell), ['tp2-p1-seed1', 'tp2-p1-seed2', 'tp2-p0.5-seed1', 'tp2-p0.5-seed2', 'tp4-p1-seed1', 'tp4-p1-seed2', 'tp4-p0.5-seed1', 'tp4-p0.5-seed2']);
    for (const x of rs) {
      assert.equal(x.status, 'ok', x.error);
      assert.equal(x.step, STEPS);
      assert.equal(x.settings['steps'], STEPS);
      const v = x.metrics['val_loss']!;
      assert.ok(v > 1 && v < Math.log(300), `${x.cell}: validation loss ${v}`);
      assert.equal(x.metrics['perplexity'], Math.exp(v));
      assert.equal(x.metrics['val_tokens'], 4 * 16 * 16);
      assert.ok(x.metrics['final_train_loss']! < Math.log(300));
      assert.ok(x.wall_s.train > 0 && x.wall_s.eval > 0 && x.wall_s.steps > 0);
      // every training step's metrics line is there, once
      assert.deepEqual(readMetrics(path.join(out, x.dir)).map((m) => m.step), Array.from({ length: STEPS }, (_, i) => i + 1));
    }
    // bytes per step: the blocks' shared all-reduces move exactly p of p = 1's; the embedding's does not shrink
    for (const tp of [2, 4]) {
      const full = rs.find((x) => x.cell === `tp${tp}-p1-seed1`)!.comm_bytes_per_step!;
      const half = rs.find((x) => x.cell === `tp${tp}-p0.5-seed1`)!.comm_bytes_per_step!;
      assert.equal(half.fwd_shared * 2, full.fwd_shared);
      assert.equal(half.bwd_shared * 2, full.bwd_shared);
      assert.equal(half.embedding, full.embedding);
      assert.ok(half.private_kept_local > 0 && full.private_kept_local === 0);
    }
    // different seeds give different models; the same seed at p = 1 gives the same loss at TP 2 and 4 (to float rounding)
    assert.notEqual(rs[0]!.metrics['val_loss'], rs[1]!.metrics['val_loss']);
    assert.ok(Math.abs(rs[0]!.metrics['val_loss']! - rs[4]!.metrics['val_loss']!) < 1e-4);

    const before = fs.readFileSync(path.join(out, 'results.jsonl'));
    const logs = fs.readdirSync(path.join(out, 'state')).map((c) => fs.statSync(path.join(out, 'state', c, 'train.log')).mtimeMs);
    const r2 = run(['sweep', '--config', sweepFile, '--out', out]);
    assert.equal(r2.status, 0, r2.stderr);
    assert.match(r2.stderr, /8 complete, 0 to run/);
    assert.deepEqual(fs.readFileSync(path.join(out, 'results.jsonl')), before);
    assert.deepEqual(fs.readdirSync(path.join(out, 'state')).map((c) => fs.statSync(path.join(out, 'state', c, 'train.log')).mtimeMs), logs);
  });

  test("the sweep's record alone (sweep.json, results.jsonl, curves/) continues: only the cells it lacks run, to the same numbers", () => {
    const ref = path.join(tmp, 'ref');
    const out = path.join(tmp, 'record');
    fs.mkdirSync(out);
    fs.copyFileSync(path.join(ref, 'sweep.json'), path.join(out, 'sweep.json'));
    fs.cpSync(path.join(ref, 'curves'), path.join(out, 'curves'), { recursive: true });
    const all = rows(ref);
    assert.equal(fs.readdirSync(path.join(ref, 'curves')).length, 8);
    const missing = ['tp2-p0.5-seed2', 'tp4-p1-seed1'];
    const write = (rs: ResultRow[]) => fs.writeFileSync(path.join(out, 'results.jsonl'), rs.map((x) => `${JSON.stringify(x)}\n`).join(''));
    write(all.filter((x) => !missing.includes(x.cell)));
    for (const c of missing) fs.rmSync(curveFile(out, c));
    const r = run(['sweep', '--config', sweepFile, '--out', out]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /6 cells complete in .*results\.jsonl without their folders/);
    assert.match(r.stderr, /6 complete, 2 to run/);
    assert.deepEqual(fs.readdirSync(path.join(out, 'cells')).sort(), [...missing].sort());
    // the two cells run alone give the numbers and curves of the whole sweep
    assert.deepEqual(rows(out).map(numbers), all.map(numbers));
    for (const x of all) assert.deepEqual(readCurve(curveFile(out, x.cell)), readCurve(curveFile(ref, x.cell)), x.cell);
    // the report draws every cell's curve, from the run folder or from curves/
    fs.rmSync(path.join(out, 'cells'), { recursive: true });
    fs.rmSync(path.join(out, 'state'), { recursive: true });
    const fromRecord = loadReportData([out]).rows;
    const fromRef = loadReportData([ref]).rows;
    assert.equal(fromRecord.length, 8);
    assert.deepEqual(fromRecord.map((x) => x.curve), fromRef.map((x) => x.curve));
    assert.ok(fromRecord.every((x) => x.curve.length > 0 && x.curve.at(-1)!.step === STEPS));
    // a recorded row made with other settings is refused, naming the cell, before anything runs
    write(all.map((x) => (x.cell === 'tp2-p1-seed1' ? { ...x, settings: { ...x.settings, lr: 0.5 } } : x)));
    const bad = run(['sweep', '--config', sweepFile, '--out', out]);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /cell tp2-p1-seed1 was recorded with other settings/);
    assert.ok(!fs.existsSync(path.join(out, 'cells')));
  });

  test('cells that crash are recorded, the others go on, and a restart resumes them to the same bits', () => {
    const out = path.join(tmp, 'crash');
    // every TP cell's rank 1 throws at step 6, after the checkpoint at step 4
    const r = run(['sweep', '--config', sweepFile, '--out', out], { CAAT_FAULT_INJECT: 'rank=1,step=6' });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /8 cell\(s\) failed: tp2-p1-seed1, /);
    const failed = rows(out);
    assert.equal(failed.length, 8);
    for (const x of failed) {
      assert.equal(x.status, 'failed');
      assert.match(x.error!, /caat train failed \(exit status 1\).*injected fault at step 6/);
    }
    const r2 = run(['sweep', '--config', sweepFile, '--out', out]);
    assert.equal(r2.status, 0, r2.stderr);
    assert.match(r2.stderr, /this run started 0 trainings, 8 resumes, 8 evaluations/);
    assert.match(fs.readFileSync(path.join(out, 'state', 'tp4-p0.5-seed2', 'train.log'), 'utf8'), /resuming .* from step-00000004/);
    sameAsReference(out);
  });

  for (const how of ['SIGKILL of the sweep and its child', 'SIGTERM of the sweep'] as const) {
    test(`${how} mid-cell, then a restart, gives the same numbers as the uninterrupted sweep`, async () => {
      const out = path.join(tmp, how.startsWith('SIGKILL') ? 'killed' : 'terminated');
      // its own process group, so that the sweep and its children can be killed together
      const child = spawn(process.execPath, [cli, 'sweep', '--config', sweepFile, '--out', out], { env: { ...process.env, CAAT_BACKEND: 'js' }, detached: true, stdio: 'ignore' });
      const exited = new Promise<number | null>((res) => child.on('exit', (code, sig) => res(code ?? (sig ? -1 : null))));
      // wait until a cell has a checkpoint short of the end while its training process runs
      const deadline = Date.now() + 120_000;
      let victim: string | undefined;
      while (!victim && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 25));
        const st = path.join(out, 'state');
        if (!fs.existsSync(st)) continue;
        for (const c of fs.readdirSync(st)) {
          const running = path.join(st, c, 'running.json');
          const latest = path.join(out, 'cells', c, 'latest');
          if (!fs.existsSync(running) || !fs.existsSync(latest)) continue;
          const step = Number(/step-(\d+)/.exec(fs.readFileSync(latest, 'utf8'))?.[1]);
          if (step >= 4 && step < STEPS) victim = c;
        }
      }
      assert.ok(victim, 'no cell was caught mid-training');
      const trainPid = (JSON.parse(fs.readFileSync(path.join(out, 'state', victim, 'running.json'), 'utf8')) as { pid: number }).pid;
      if (how.startsWith('SIGKILL')) process.kill(-child.pid!, 'SIGKILL');
      else process.kill(child.pid!, 'SIGTERM');
      const code = await exited;
      assert.notEqual(code, 0);
      // the training child is gone too (killed with its group, or ended by the sweep)
      for (let i = 0; i < 200 && running(trainPid); i++) await new Promise((r) => setTimeout(r, 25));
      assert.equal(running(trainPid), false, 'the training process outlived the sweep');
      const partial = fs.existsSync(path.join(out, 'results.jsonl')) ? fs.readFileSync(path.join(out, 'results.jsonl'), 'utf8').trim().split('\n').filter(Boolean).length : 0;
      assert.ok(partial < 8, 'the sweep was not interrupted');
      const r = run(['sweep', '--config', sweepFile, '--out', out]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, new RegExp(`${victim}: resuming from step \\d+`));
      sameAsReference(out);
    });
  }
});

describe('bad sweep files are refused before any cell starts, naming the field', () => {
  const base = () => ({ data: path.join(tmp, 'corpus'), hidden: 16, layers: 1, heads: 4, 'kv-heads': 2, ffn: 32, 'seq-len': 16, steps: 2 });
  const cases: [string, () => unknown, RegExp][] = [
    ['unknown setting in base', () => ({ base: { ...base(), widht: 3 }, grid: { seed: [1] } }), /field "base\.widht": unknown setting "widht"/],
    ['unknown setting in the grid', () => ({ base: base(), grid: { precision: ['bf16'] } }), /field "grid\.precision": unknown setting "precision"/],
    ['unknown top-level field', () => ({ base: base(), grid: { seed: [1] }, cels: 3 }), /unknown field "cels"/],
    ['a value of the wrong type', () => ({ base: base(), grid: { p: [1, 'half'] } }), /field "grid\.p\[1\]": expected a number, got "half"/],
    ['a value train refuses', () => ({ base: base(), grid: { p: [1, 1.5] } }), /cell p1\.5: field "parallel\.p"/],
    ['impossible TP/heads combination', () => ({ base: base(), grid: { tp: [2, 4], p: [1, 0.5] } }), /cell tp4-p1: kvHeads \(2\) must be divisible by the TP degree 4.*"grid\.tp".*"base\.kv-heads"/],
    ['an empty grid', () => ({ base: base(), grid: {} }), /field "grid": empty grid/],
    ['an empty list of values', () => ({ base: base(), grid: { seed: [1, 2], p: [] } }), /field "grid\.p": empty list of values/],
    ['a repeated value', () => ({ base: base(), grid: { seed: [1, 1] } }), /field "grid\.seed\[1\]": value 1 appears twice/],
  ];
  for (const [name, make, re] of cases) {
    test(name, () => {
      const f = writeJson(`bad-${name.replace(/\W+/g, '-')}.json`, make());
      const out = path.join(tmp, `bad-out-${name.replace(/\W+/g, '-')}`);
      const r = run(['sweep', '--config', f, '--out', out]);
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, re);
      assert.ok(r.stderr.includes(f), `the message names the file: ${r.stderr}`);
      assert.equal(fs.existsSync(out), false, 'nothing may start');
    });
  }

  test('not JSON, and no grid at all', () => {
    const f = path.join(tmp, 'notjson.json');
    fs.writeFileSync(f, '{"grid": ');
    const r = run(['sweep', '--config', f]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /notjson\.json: not valid JSON/);
    const r2 = run(['sweep', '--config', writeJson('nogrid.json', { base: base() })]);
    assert.equal(r2.status, 1);
    assert.match(r2.stderr, /field "grid"/);
  });

  test('a sweep folder made with other settings is refused', () => {
    // a folder whose first cell was made from another train config
    const out = path.join(tmp, 'other');
    fs.mkdirSync(path.join(out, 'state', 'tp2-p1-seed1'), { recursive: true });
    fs.writeFileSync(path.join(out, 'state', 'tp2-p1-seed1', 'config.json'), '{"model": {"hidden": 32}}');
    const f = sweepFile;
    const r = run(['sweep', '--config', f, '--out', out]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /cell tp2-p1-seed1 was made with other settings/);
  });
});
