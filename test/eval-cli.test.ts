/**
 * `caat eval --tasks` and `caat train --eval-tasks` end to end on a tiny TP-2, p = 0.5 run: identical
 * results on virtual ranks, worker threads and processes (caat launch, TCP); the JSON line format and
 * sample logs; exported proxy tasks score the same as the built-in ones; the loss-only `caat eval
 * --json` is unchanged; bad task files fail naming the file, line and field.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { writeSmallCorpus } from './helpers/corpus.js';
import { repoRoot } from './helpers/paths.js';

const cli = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
let tmp: string;
let corpus: string;
let cache: string;

function cleanEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined) continue;
    if (/^(RANK|WORLD_SIZE|LOCAL_RANK|LOCAL_WORLD_SIZE|GROUP_RANK|MASTER_ADDR|MASTER_PORT|TORCHELASTIC_.*|OMPI_.*|PMIX_.*|SLURM_.*|CAAT_JOB_TOKEN|CAAT_FAULT_INJECT.*)$/.test(k)) continue;
    env[k] = v;
  }
  return { ...env, CAAT_BACKEND: 'js' };
}

function run(args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: cleanEnv(), timeout: 120_000 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

const trainArgs = (out: string, extra: string[]): string[] => [
  'train', '--data', corpus, '--vocab-size', '300', '--cache-dir', cache, '--out', out,
  '--hidden', '16', '--layers', '1', '--heads', '4', '--kv-heads', '2', '--ffn', '32', '--seq-len', '128',
  '--batch-size', '2', '--warmup', '2', '--eval-every', '2', '--eval-batches', '1', '--ckpt-every', '0',
  '--tp', '2', '--p', '0.5', '--steps', '2', '--eval-tasks', 'proxy_word_order,proxy_cloze', ...extra,
];
const tasks = ['--tasks', 'proxy', '--proxy-items', '12', '--bootstrap-iters', '200', '--json'];

function taskLines(runDir: string): unknown[] {
  return fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { tasks?: unknown }).tasks).filter((t) => t !== undefined);
}

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'caat-evalcli-'));
  cache = path.join(tmp, 'cache');
  corpus = writeSmallCorpus(path.join(tmp, 'corpus'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('caat eval --tasks and train --eval-tasks', () => {
  let runDir: string;

  test('train --eval-tasks: the same task scores in metrics.jsonl on virtual ranks, threads and processes', () => {
    const outs = { virtual: path.join(tmp, 'v'), threads: path.join(tmp, 't'), procs: path.join(tmp, 'p') };
    let r = run(trainArgs(outs.virtual, ['--workers', '0']));
    assert.equal(r.status, 0, r.stderr);
    r = run(trainArgs(outs.threads, ['--workers', '2']));
    assert.equal(r.status, 0, r.stderr);
    r = run(['launch', '--nproc', '2', '--', ...trainArgs(outs.procs, [])]);
    assert.equal(r.status, 0, r.stderr);
    const v = taskLines(outs.virtual);
    assert.equal(v.length, 1);
    const recs = v[0] as { task: string; metric: string; value: number; stderr: number | null; n: number }[];
    assert.deepEqual(recs.map((x) => `${x.task}/${x.metric}`), ['proxy_word_order/acc', 'proxy_word_order/acc_norm', 'proxy_cloze/perplexity', 'proxy_cloze/acc']);
    assert.ok(recs.every((x) => Number.isFinite(x.value) && x.n > 0));
    assert.deepEqual(taskLines(outs.threads), v);
    assert.deepEqual(taskLines(outs.procs), v);
    runDir = outs.virtual;
  });

  test('eval --tasks: identical JSON lines and sample logs on virtual ranks, threads and processes', () => {
    const logs = ['v', 't', 'p'].map((k) => path.join(tmp, `samples-${k}.jsonl`));
    const v = run(['eval', '--run', runDir, ...tasks, '--log-samples', logs[0]!]);
    assert.equal(v.status, 0, v.stderr);
    const t = run(['eval', '--run', runDir, ...tasks, '--workers', '2', '--log-samples', logs[1]!]);
    assert.equal(t.status, 0, t.stderr);
    const p = run(['launch', '--nproc', '2', '--', 'eval', '--run', runDir, ...tasks, '--log-samples', logs[2]!]);
    assert.equal(p.status, 0, p.stderr);
    assert.equal(t.stdout, v.stdout);
    assert.equal(p.stdout.replace(/^\[rank 0\] /gm, ''), v.stdout);
    const lines = v.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(Object.keys(lines[0]!), ['task', 'metric', 'value', 'stderr', 'n']);
    assert.deepEqual([...new Set(lines.map((l) => l['task']))], ['proxy_cloze', 'proxy_next_sentence', 'proxy_word_order', 'proxy_heldout']);
    assert.equal(lines.find((l) => l['metric'] === 'bits_per_byte')!['stderr'], null);
    assert.ok(typeof lines.find((l) => l['metric'] === 'acc_norm')!['stderr'] === 'number');
    const s0 = fs.readFileSync(logs[0]!, 'utf8');
    assert.equal(fs.readFileSync(logs[1]!, 'utf8'), s0);
    assert.equal(fs.readFileSync(logs[2]!, 'utf8'), s0);
    const first = JSON.parse(s0.split('\n')[0]!) as Record<string, unknown>;
    assert.deepEqual(Object.keys(first), ['task', 'doc_id', 'context', 'continuations', 'll', 'n_tokens', 'greedy', 'pred', 'target']);
    const roll = s0.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>).find((x) => x['task'] === 'proxy_heldout')!;
    assert.deepEqual(Object.keys(roll), ['task', 'doc_id', 'll', 'n_tokens', 'words', 'bytes']);
    // A table on the terminal.
    const table = run(['eval', '--run', runDir, '--tasks', 'proxy_word_order', '--proxy-items', '12']);
    assert.equal(table.status, 0, table.stderr);
    assert.match(table.stdout, /\|proxy_word_order\|acc +\| *[01]\.\d{4}\|±\| *0\.\d{4}\|12\|/);
  });

  test('exported proxy tasks score exactly as the built-in ones; the loss-only eval is unchanged', () => {
    const dir = path.join(tmp, 'export');
    const ex = run(['eval', '--run', runDir, '--export-tasks', dir, '--proxy-items', '12']);
    assert.equal(ex.status, 0, ex.stderr);
    assert.deepEqual(fs.readdirSync(dir).sort(), ['proxy_cloze.lambada_openai.jsonl', 'proxy_heldout.wikitext.jsonl', 'proxy_next_sentence.hellaswag.jsonl', 'proxy_word_order.openbookqa.jsonl']);
    const a = run(['eval', '--run', runDir, ...tasks]);
    const b = run(['eval', '--run', runDir, '--task-dir', dir, '--tasks', 'proxy_cloze,proxy_next_sentence,proxy_word_order,proxy_heldout', '--bootstrap-iters', '200', '--json']);
    assert.equal(b.status, 0, b.stderr);
    assert.equal(b.stdout, a.stdout);
    const loss = run(['eval', '--run', runDir, '--json']);
    assert.equal(loss.status, 0, loss.stderr);
    const o = JSON.parse(loss.stdout) as Record<string, unknown>;
    assert.deepEqual(Object.keys(o), ['run', 'step', 'tp', 'p', 'val_tokens', 'val_loss', 'perplexity', 'bits_per_byte', 'unigram_entropy_nats', 'precision']);
    assert.equal(o['precision'], 'fp32');
    // bf16 at load time on a checkpoint trained in fp32: another computation, within bf16 accuracy.
    const b16 = run(['eval', '--run', runDir, '--json', '--precision', 'bf16']);
    assert.equal(b16.status, 0, b16.stderr);
    assert.match(b16.stderr, /precision: bf16 mixed/);
    const o16 = JSON.parse(b16.stdout) as { val_loss: number; precision: string };
    assert.equal(o16.precision, 'bf16');
    const l32 = o['val_loss'] as number;
    assert.notEqual(o16.val_loss, l32);
    assert.ok(Math.abs(o16.val_loss - l32) / l32 < 2 ** -8, `bf16 ${o16.val_loss} vs fp32 ${l32}`);
    const bad = run(['eval', '--run', runDir, '--precision', 'fp16']);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /--precision: expected fp32 or bf16, got "fp16"/);
  });

  test('bad task files and unscorable documents are reported', () => {
    const bad = path.join(tmp, 'bad.jsonl');
    fs.writeFileSync(bad, '{"goal":"g","sol1":"a","sol2":"b","label":0}\n{"goal":"g","sol1":"a","sol2":"b","label":"yes"}\n');
    let r = run(['eval', '--run', runDir, '--task-file', `piqa=${bad}`]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /bad\.jsonl:2: piqa record: field "label"/);
    const empty = path.join(tmp, 'empty.jsonl');
    fs.writeFileSync(empty, '');
    r = run(['eval', '--run', runDir, '--task-file', `boolq=${empty}`]);
    assert.match(r.stderr, /empty\.jsonl: no records/);
    r = run(['eval', '--run', runDir, '--task-file', `squad=${empty}`]);
    assert.match(r.stderr, /unknown task type "squad"/);
    const lam = path.join(tmp, 'lambada.jsonl');
    fs.writeFileSync(lam, `{"text":"the cat sat on the mat"}\n{"text":"a ${'qz'.repeat(200)}"}\n`);
    r = run(['eval', '--run', runDir, '--task-file', `lambada_openai=${lam}`, '--json']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /lambada_openai document 1 cannot be scored: the continuation has \d+ tokens, more than the context window of 128/);
    assert.ok(r.stdout.trim().split('\n').every((l) => (JSON.parse(l) as { n: number }).n === 1));
  });
});
