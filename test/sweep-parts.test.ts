/**
 * The pieces of `caat sweep` without training: the task lines of `caat eval --tasks … --json` (through
 * an injected runner standing in for the caat child processes, since that command's tasks live
 * elsewhere), the core scheduler, metrics.jsonl read back after a resume, and the flag form of a grid.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { sweepSpecOf } from '../src/cli/sweep.js';
import { curveOf, parseEvalOutput, parseTaskOutput, readMetrics } from '../src/experiments/results.js';
import { CoreScheduler } from '../src/experiments/scheduler.js';
import { expandCells, parseSweepSpec } from '../src/experiments/sweep-config.js';
import { runSweep, type CaatRunner } from '../src/experiments/sweep.js';
import { running } from './helpers/procs.js';

let tmp: string;

before(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'caat-sweep-parts-'))));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const TASK_LINES = [
  'loading …',
  '{"task":"hellaswag","metric":"acc","value":0.25,"stderr":0.0125,"n":1200}',
  '{"task":"hellaswag","metric":"acc_norm","value":0.3,"stderr":0.013,"n":1200}',
  '{"task":"wikitext","metric":"word_perplexity","value":812.5,"stderr":null,"n":62}',
  '',
].join('\n');

describe('caat eval output', () => {
  test('task lines are parsed, stderr null kept, other lines ignored', () => {
    assert.deepEqual(parseTaskOutput(TASK_LINES), [
      { task: 'hellaswag', metric: 'acc', value: 0.25, stderr: 0.0125, n: 1200 },
      { task: 'hellaswag', metric: 'acc_norm', value: 0.3, stderr: 0.013, n: 1200 },
      { task: 'wikitext', metric: 'word_perplexity', value: 812.5, stderr: null, n: 62 },
    ]);
  });
  test('bad task lines are refused naming the line and field', () => {
    assert.throws(() => parseTaskOutput('{"task":"a","metric":"acc","value":"x","stderr":null,"n":1}'), /line 1: field "value" must be a finite number/);
    assert.throws(() => parseTaskOutput('{"task":"a","metric":"acc","value":1,"n":1}'), /line 1: field "stderr" must be a number or null/);
    assert.throws(() => parseTaskOutput('\n{"task":"a","metric":"","value":1,"stderr":null,"n":1}'), /line 2: field "metric"/);
    assert.throws(() => parseTaskOutput('{"task":"a","metric":"m","value":1,"stderr":null,"n":-1}'), /field "n"/);
    assert.throws(() => parseTaskOutput('nothing here'), /no task line/);
  });
  test('the loss object of caat eval --json', () => {
    const o = parseEvalOutput('note\n{"step":3,"val_loss":2.5,"perplexity":12.18,"bits_per_byte":1.1}\n');
    assert.equal(o.val_loss, 2.5);
    assert.throws(() => parseEvalOutput('{"step":3,"val_loss":2.5}'), /field "perplexity" missing/);
    assert.throws(() => parseEvalOutput(''), /printed no JSON object/);
  });
});

describe('a sweep with eval_tasks, through an injected runner', () => {
  test('runs train, eval and eval --tasks per cell and stores the task lines in the row', async () => {
    const calls: string[][] = [];
    const runner: CaatRunner = async (args) => {
      calls.push(args);
      const runDir = args[args.indexOf(args[0] === 'train' ? '--out' : '--run') + 1]!;
      if (args[0] === 'train') {
        const ck = path.join(runDir, 'checkpoints', 'step-00000003');
        fs.mkdirSync(ck, { recursive: true });
        fs.writeFileSync(path.join(ck, 'state.json'), '{"step":3}');
        fs.writeFileSync(path.join(runDir, 'latest'), 'step-00000003\n');
        fs.writeFileSync(path.join(runDir, 'metrics.jsonl'), [1, 2, 3].map((s) => JSON.stringify({ step: s, loss: 5 - s, ms_per_step: 10, comm_bytes: 100, comm_bytes_fwd_shared: 40 })).join('\n') + '\n');
        return { code: 0, signal: null, stdout: '' };
      }
      if (args.includes('--tasks')) return { code: 0, signal: null, stdout: TASK_LINES };
      return { code: 0, signal: null, stdout: '{"step":3,"val_loss":2.5,"perplexity":12.182493960703473,"bits_per_byte":1.1}\n' };
    };
    const spec = parseSweepSpec({ base: { data: 'unused.txt', steps: 3 }, grid: { seed: [1, 2] }, eval_tasks: ['hellaswag', 'wikitext'] }, 'test.json');
    const out = path.join(tmp, 'tasks');
    const r = await runSweep({ spec, out, runner, cores: 1, log: () => {} });
    assert.deepEqual(calls.map((c) => c[0] + (c.includes('--tasks') ? ' --tasks' : '')), ['train', 'eval', 'eval --tasks', 'train', 'eval', 'eval --tasks']);
    assert.deepEqual(calls[2]!.slice(-3), ['--tasks', 'hellaswag,wikitext', '--json']);
    assert.equal(r.rows.length, 2);
    assert.deepEqual(r.rows[0]!.tasks, parseTaskOutput(TASK_LINES));
    assert.equal(r.rows[0]!.metrics['val_loss'], 2.5);
    assert.equal(r.rows[0]!.metrics['final_train_loss'], 2);
    assert.equal(r.rows[0]!.comm_bytes_per_step!.fwd_shared, 40);
    assert.equal(r.rows[0]!.wall_s.steps, 0.03);
    // a second run does nothing
    calls.length = 0;
    const r2 = await runSweep({ spec, out, runner, log: () => {} });
    assert.equal(calls.length, 0);
    assert.equal(r2.skipped, 2);
    // a task command that fails marks the cell failed and keeps going
    const failing: CaatRunner = async (args, o) => {
      if (args.includes('--tasks')) {
        fs.appendFileSync(o.log, 'caat: error: unknown task "nope"\n');
        return { code: 1, signal: null, stdout: '' };
      }
      return runner(args, o);
    };
    const spec2 = parseSweepSpec({ base: { data: 'unused.txt', steps: 3 }, grid: { seed: [1, 2] }, eval_tasks: ['nope'] }, 'test.json');
    const r3 = await runSweep({ spec: spec2, out: path.join(tmp, 'tasks-fail'), runner: failing, log: () => {} });
    assert.deepEqual(r3.failed, ['seed1', 'seed2']);
    assert.match(r3.rows[0]!.error!, /caat eval --tasks failed \(exit status 1\): caat: error: unknown task "nope"/);
  });
});

describe('CoreScheduler', () => {
  test('keeps within the cores, runs a wide job alone, and a failure does not stop the rest', async () => {
    const sched = new CoreScheduler(2);
    let used = 0;
    let maxUsed = 0;
    const log: string[] = [];
    const job = (name: string, cores: number, fail = false) => ({
      cores,
      run: async () => {
        used += Math.min(cores, 2);
        maxUsed = Math.max(maxUsed, used);
        log.push(`start ${name} (${used})`);
        await new Promise((r) => setTimeout(r, 20));
        used -= Math.min(cores, 2);
        if (fail) throw new Error(`${name} failed`);
        return name;
      },
    });
    const res = await sched.runAll([job('a', 1), job('b', 1, true), job('wide', 4), job('c', 1), job('d', 1)]);
    assert.equal(maxUsed, 2);
    assert.deepEqual(log, ['start a (1)', 'start b (2)', 'start wide (2)', 'start c (1)', 'start d (2)']);
    assert.deepEqual(res.map((r) => r.ok), [true, false, true, true, true]);
  });
});

describe('the curve a sweep keeps of a cell', () => {
  test('training loss thinned to about 400 points, every validation point kept, the last step kept', () => {
    const m = Array.from({ length: 2148 }, (_, i) => ({ step: i + 1, loss: 10 - i / 1000, ms_per_step: 1, ...((i + 1) % 100 === 0 || i === 2147 ? { val_loss: 9 - i / 1000 } : {}) }));
    const c = curveOf(m);
    assert.ok(c.length <= 400 + 22 && c.length >= 350, `${c.length} points`);
    assert.deepEqual(c.filter((x) => x.val_loss !== undefined).map((x) => x.step), [...Array.from({ length: 21 }, (_, i) => (i + 1) * 100), 2148]);
    assert.equal(c.at(-1)!.step, 2148);
    assert.equal(c[0]!.step, 1);
    for (const x of c) assert.equal(x.loss, m[x.step - 1]!.loss);
  });
});

describe('metrics.jsonl after a resume', () => {
  test('one record per step, the last one winning; a line cut short at the end is ignored', () => {
    const dir = path.join(tmp, 'm');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'metrics.jsonl'), '{"step":1,"loss":3}\n{"step":2,"loss":2}\n{"step":3,"loss":1.5}\n{"step":2,"loss":2.1}\n{"step":3,"loss":1.6}\n{"step":4,"lo');
    assert.deepEqual(readMetrics(dir).map((m) => [m.step, m.loss]), [[1, 3], [2, 2.1], [3, 1.6]]);
  });
});

describe('grid from flags', () => {
  test('--grid and --set make the same cells as a file', () => {
    const spec = sweepSpecOf({ grid: ['tp=2,4', 'p=1,0.5'], set: ['steps=7', 'heads=4', 'kv-heads=4', 'data=x.txt'] });
    const cells = expandCells(spec);
    assert.deepEqual(cells.map((c) => c.name), ['tp2-p1', 'tp2-p0.5', 'tp4-p1', 'tp4-p0.5']);
    assert.deepEqual(cells[3]!.trainConfig, { model: { heads: 4, kvHeads: 4 }, parallel: { tp: 4, p: 0.5 }, train: { steps: 7 }, data: { corpus: 'x.txt' }, workers: 0 });
    assert.throws(() => sweepSpecOf({ grid: ['tp'] }), /--grid "tp": expected SETTING=VALUE/);
  });
  test('a "model" setting varies the model size as one setting', () => {
    const spec = parseSweepSpec({ base: { data: 'x.txt', tp: 2 }, grid: { model: [{ name: 'small', hidden: 32, heads: 4, kvHeads: 2 }, { name: 'big', hidden: 64, heads: 8, 'kv-heads': 4 }] } }, 'm.json');
    const cells = expandCells(spec);
    assert.deepEqual(cells.map((c) => c.name), ['small', 'big']);
    assert.equal(cells[1]!.settings['hidden'], 64);
    assert.equal(cells[1]!.trainConfig.model['kvHeads'], 4);
    assert.ok(cells[1]!.work > cells[0]!.work);
    assert.throws(() => parseSweepSpec({ grid: { model: [{ widht: 3 }] } }, 'm.json'), /field "grid\.model\[0\]\.widht": unknown model setting/);
  });
});

describe('child guard', () => {
  test('a child started by a sweep ends when the sweep is killed with SIGKILL', async () => {
    const { spawn } = await import('node:child_process');
    const guard = new URL('../src/experiments/child-guard.js', import.meta.url).href;
    // a stand-in sweep: starts a child that would run for a minute, prints its pid once it is up, waits
    const parentCode = `
      const { spawn } = require('node:child_process');
      const c = spawn(process.execPath, ['--import', ${JSON.stringify(guard)}, '-e', 'process.send("up"); setTimeout(() => {}, 60000)'],
        { stdio: ['ignore', 'ignore', 'ignore', 'ipc'], env: { ...process.env, CAAT_SWEEP_PID: String(process.pid) } });
      c.once('message', () => console.log(c.pid));
      setTimeout(() => {}, 60000);`;
    const parent = spawn(process.execPath, ['-e', parentCode], { stdio: ['ignore', 'pipe', 'inherit'] });
    const pid = await new Promise<number>((res) => parent.stdout!.once('data', (d: Buffer) => res(Number(d.toString().trim()))));
    assert.ok(pid > 0);
    assert.ok(running(pid));
    parent.kill('SIGKILL');
    parent.stdout!.destroy();
    for (let i = 0; i < 200 && running(pid); i++) await new Promise((r) => setTimeout(r, 25));
    assert.equal(running(pid), false, 'the child outlived its parent');
  });
});
