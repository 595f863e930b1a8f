/**
 * End-to-end training through the `caat` command line on a small text corpus: exact resume (bitwise
 * identical losses, at TP = 1 and at TP = 2 p = 0.5 on worker threads), generation and evaluation on
 * the run folder, and every kind of bad input giving a clear error, a non-zero exit and no lost data.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadCheckpoint } from '../src/io/checkpoint.js';
import { parseSafetensors, serializeSafetensors } from '../src/io/safetensors.js';
import { writeSmallCorpus } from './helpers/corpus.js';
import { repoRoot } from './helpers/paths.js';

const cli = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
let tmp: string;
let corpus: string;
let cache: string;

function run(args: string[], env: Record<string, string> = {}): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, CAAT_BACKEND: 'js', ...env }, timeout: 120_000 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

const small = (out: string, extra: string[] = []) => [
  'train', '--data', corpus, '--vocab-size', '300', '--cache-dir', cache, '--out', out,
  '--hidden', '16', '--layers', '1', '--heads', '2', '--kv-heads', '2', '--ffn', '32', '--seq-len', '16',
  '--batch-size', '2', '--warmup', '2', '--eval-every', '0', '--eval-batches', '1', ...extra,
];

function losses(runDir: string): { step: number; loss: number }[] {
  return fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; loss: number });
}

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'caat-train-'));
  cache = path.join(tmp, 'cache');
  corpus = writeSmallCorpus(path.join(tmp, 'corpus'));
});

after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Interrupt a finished run at `step`: make that checkpoint the latest and drop later ones. */
function rewindTo(src: string, dst: string, step: number): void {
  fs.cpSync(src, dst, { recursive: true });
  const name = `step-${String(step).padStart(8, '0')}`;
  for (const d of fs.readdirSync(path.join(dst, 'checkpoints'))) if (d !== name) fs.rmSync(path.join(dst, 'checkpoints', d), { recursive: true });
  fs.writeFileSync(path.join(dst, 'latest'), `${name}\n`);
}

describe('exact resume', () => {
  for (const par of [[], ['--tp', '2', '--p', '0.5', '--workers', '2']]) {
    test(`6 steps in one go equal 3 + checkpoint + resume + 3, bitwise ${par.join(' ') || '(TP 1)'}`, () => {
      const a = path.join(tmp, `full${par.length}`);
      const r = run(small(a, ['--steps', '6', '--ckpt-every', '3', ...par]));
      assert.equal(r.status, 0, r.stderr);
      const b = path.join(tmp, `resumed${par.length}`);
      rewindTo(a, b, 3);
      const r2 = run(['train', '--resume', b]);
      assert.equal(r2.status, 0, r2.stderr);
      assert.match(r2.stderr, /resuming .* from step-00000003/);
      const la = losses(a);
      const lb = losses(b);
      assert.equal(la.length, 6);
      assert.equal(lb.length, 9); // steps 1-6 copied, then 4-6 again
      assert.deepEqual(lb.slice(6).map((x) => x.step), [4, 5, 6]);
      for (let i = 0; i < 3; i++) assert.equal(lb[6 + i]!.loss, la[3 + i]!.loss, `step ${4 + i}: losses differ`);
      // and the final weights are identical
      const ca = loadCheckpoint(a);
      const cb = loadCheckpoint(b);
      for (const [name, t] of ca.params) assert.deepEqual(cb.params.get(name), t, name);
    });
  }

  test('generate and eval work on the run folder', () => {
    const a = path.join(tmp, 'full0');
    const g = run(['generate', '--run', a, '--prompt', 'The whale', '--max-tokens', '8', '--seed', '3']);
    assert.equal(g.status, 0, g.stderr);
    assert.ok(g.stdout.startsWith('The whale'), g.stdout);
    assert.match(g.stderr, /generated \d+ tokens/);
    const e = run(['eval', '--run', a, '--json']);
    assert.equal(e.status, 0, e.stderr);
    const res = JSON.parse(e.stdout) as { val_loss: number; perplexity: number; bits_per_byte: number; step: number };
    assert.equal(res.step, 6);
    assert.ok(Number.isFinite(res.val_loss) && res.val_loss > 0);
    assert.ok(Math.abs(res.perplexity - Math.exp(res.val_loss)) < 1e-9 * res.perplexity);
    assert.ok(res.bits_per_byte > 0);
  });
});

describe('TP degree of a trained model', () => {
  test('a p = 1 checkpoint reshards to another TP degree; a p < 1 one is refused with the reason', () => {
    const a = path.join(tmp, 'reshard');
    let r = run(small(a, ['--steps', '2', '--tp', '2', '--p', '1', '--workers', '0']));
    assert.equal(r.status, 0, r.stderr);
    const at2 = run(['eval', '--run', a, '--json']);
    const at1 = run(['eval', '--run', a, '--json', '--tp', '1']);
    assert.equal(at2.status, 0, at2.stderr);
    assert.equal(at1.status, 0, at1.stderr);
    const l2 = (JSON.parse(at2.stdout) as { val_loss: number; tp: number });
    const l1 = (JSON.parse(at1.stdout) as { val_loss: number; tp: number });
    assert.equal(l1.tp, 1);
    assert.ok(Math.abs(l1.val_loss - l2.val_loss) < 1e-5 * l2.val_loss, `${l1.val_loss} vs ${l2.val_loss}`);
    const b = path.join(tmp, 'noreshard');
    r = run(small(b, ['--steps', '2', '--tp', '2', '--p', '0.5', '--workers', '0']));
    assert.equal(r.status, 0, r.stderr);
    const refused = run(['generate', '--run', b, '--tp', '1', '--prompt', 'x']);
    assert.notEqual(refused.status, 0);
    assert.match(refused.stderr, /trained with TP = 2 and p = 0\.5 < 1; it cannot run at TP = 1, because .* private residual stream/);
  });
});

describe('bad input gives a clear error and a non-zero exit', () => {
  test('malformed config field names the file and the field', () => {
    const cfg = path.join(tmp, 'bad.json');
    fs.writeFileSync(cfg, JSON.stringify({ train: { lr: 'fast' } }));
    const r = run(['train', '--config', cfg, '--out', path.join(tmp, 'x1')]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /bad\.json: field "lr"/);
    const r2 = run(['train', '--heads', '3', '--hidden', '16', '--out', path.join(tmp, 'x2'), '--data', corpus]);
    assert.notEqual(r2.status, 0);
    assert.match(r2.stderr, /hidden \(16\) must be divisible by heads \(3\)/);
    const r3 = run(['train', '--lr', 'abc']);
    assert.notEqual(r3.status, 0);
    assert.match(r3.stderr, /--lr: expected a number/);
    const r4 = run(['train', '--tp', '2', '--kv-heads', '1', '--heads', '2', '--data', corpus]);
    assert.notEqual(r4.status, 0);
    assert.match(r4.stderr, /kvHeads \(1\) must be divisible by the TP degree 2/);
  });

  test('missing, empty and binary data files are refused by name', () => {
    const missing = run(small(path.join(tmp, 'd1')).map((a) => (a === corpus ? path.join(tmp, 'nope.txt') : a)));
    assert.notEqual(missing.status, 0);
    assert.match(missing.stderr, /nope\.txt/);
    const empty = path.join(tmp, 'empty.txt');
    fs.writeFileSync(empty, '');
    const e = run(small(path.join(tmp, 'd2')).map((a) => (a === corpus ? empty : a)));
    assert.notEqual(e.status, 0);
    assert.match(e.stderr, /empty\.txt.*empty/);
    const bin = path.join(tmp, 'binary.txt');
    fs.writeFileSync(bin, Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0, 0, 1, 2, 3]));
    const b = run(small(path.join(tmp, 'd3')).map((a) => (a === corpus ? bin : a)));
    assert.notEqual(b.status, 0);
    assert.match(b.stderr, /binary\.txt.*binary/);
  });

  test('truncated, corrupted and inconsistent checkpoints are refused by name; nothing saved is lost', () => {
    const base = path.join(tmp, 'full0');
    const ck = path.join(base, 'checkpoints', 'step-00000006');
    // truncated
    const t = path.join(tmp, 'trunc');
    fs.cpSync(base, t, { recursive: true });
    const tm = path.join(t, 'checkpoints', 'step-00000006', 'model.safetensors');
    fs.truncateSync(tm, fs.statSync(tm).size - 10);
    let r = run(['eval', '--run', t]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /model\.safetensors: is \d+ bytes but state\.json records \d+/);
    // corrupted (same size, one byte flipped)
    const c = path.join(tmp, 'corrupt');
    fs.cpSync(base, c, { recursive: true });
    const cm = path.join(c, 'checkpoints', 'step-00000006', 'optimizer.safetensors');
    const buf = fs.readFileSync(cm);
    buf[buf.length - 3] ^= 0xff;
    fs.writeFileSync(cm, buf);
    r = run(['generate', '--run', c, '--prompt', 'x']);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /optimizer\.safetensors: checksum mismatch/);
    // metadata that does not match the tensors (consistent checksums)
    const m = path.join(tmp, 'meta');
    fs.cpSync(base, m, { recursive: true });
    const mdir = path.join(m, 'checkpoints', 'step-00000006');
    const st = parseSafetensors(fs.readFileSync(path.join(mdir, 'model.safetensors')), 'model.safetensors');
    const bytes = serializeSafetensors(st.tensors, { ...st.metadata, hidden: '32', n_heads: '4', shared: '32' });
    fs.writeFileSync(path.join(mdir, 'model.safetensors'), bytes);
    const state = JSON.parse(fs.readFileSync(path.join(mdir, 'state.json'), 'utf8'));
    state.files.model = { bytes: bytes.byteLength, sha256: createHash('sha256').update(bytes).digest('hex') };
    fs.writeFileSync(path.join(mdir, 'state.json'), JSON.stringify(state));
    r = run(['eval', '--run', m]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /model\.safetensors: tensor model\.embed_tokens\.weight has shape \[300,16\] but the metadata implies \[300,32\]/);
    // the original run is untouched and still loads
    assert.equal(loadCheckpoint(base).state.step, 6);
    assert.ok(fs.existsSync(ck));
  });

  test('an interrupted checkpoint write leaves the previous checkpoint as the latest, loadable', () => {
    const out = path.join(tmp, 'interrupted');
    const r = run(small(out, ['--steps', '4', '--ckpt-every', '2']), { CAAT_FAULT_INJECT_CHECKPOINT: '4' });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /injected failure while writing checkpoint step-00000004/);
    assert.equal(fs.readFileSync(path.join(out, 'latest'), 'utf8').trim(), 'step-00000002');
    assert.deepEqual(fs.readdirSync(path.join(out, 'checkpoints')), ['step-00000002']); // no partial folder left
    assert.equal(loadCheckpoint(out).state.step, 2);
    const resumed = run(['train', '--resume', out]);
    assert.equal(resumed.status, 0, resumed.stderr);
    assert.equal(loadCheckpoint(out).state.step, 4);
  });

  test('a rank failing mid-run stops the whole job promptly, naming the rank; no partial checkpoint', () => {
    const out = path.join(tmp, 'fault');
    const t0 = Date.now();
    const r = run(small(out, ['--steps', '6', '--ckpt-every', '2', '--tp', '2', '--p', '0.5', '--workers', '2']), { CAAT_FAULT_INJECT: 'rank=1,step=3' });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /rank 1 failed: injected fault at step 3/);
    assert.ok(Date.now() - t0 < 30_000);
    assert.equal(loadCheckpoint(out).state.step, 2);
  });
});
