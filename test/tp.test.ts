/**
 * Tensor-parallel contracts (see docs: parity contracts 2-5): transports agree bit for bit, replicated
 * parameters and the shared prefix stay identical across ranks, block traffic is exactly p of p = 1,
 * every communication op passes its adjoint test, and `caat gradcheck` reproduces the fixtures.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { createJsBackend, selectBackend } from '../src/backend/index.js';
import type { FloatArray } from '../src/backend/types.js';
import { resolveConfig } from '../src/model/config.js';
import { VirtualModel } from '../src/model/harness.js';
import { TAGS } from '../src/model/model.js';
import type { TrainConfig } from '../src/train/config.js';
import { parseTrainConfig } from '../src/train/config.js';
import { allRanks, createRankStates, rankTrainStep, type HostEvent } from '../src/train/loop.js';
import { runThreadHosts } from '../src/train/threads-host.js';
import { runVirtualHost } from '../src/train/trainer.js';
import { createVirtualGroup } from '../src/tp/virtual.js';
import { copyToTPBackward, embeddingReduce, partialAllReduce, reduceFromTPForward } from '../src/tp/ops.js';
import { fixturesDir, repoRoot } from './helpers/paths.js';

const cli = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');

function lcg(seed: number): () => number {
  let x = seed >>> 0;
  return () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x / 4294967296;
  };
}

function tokenStream(n: number, V: number, seed: number): Uint16Array {
  const r = lcg(seed);
  const t = new Uint16Array(n);
  for (let i = 0; i < n; i++) t[i] = Math.floor(r() * V);
  return t;
}

const model = { vocab: 64, hidden: 32, layers: 2, heads: 4, kvHeads: 4, ffn: 64, seqLen: 16 };

function trainCfg(steps: number): TrainConfig {
  return parseTrainConfig({ steps, batchSize: 2, seqLen: 16, warmup: 1, lr: 1e-2, evalEvery: 0, ckptEvery: 0, evalBatches: 1, seed: 5 }, 'test');
}

async function lossesOf(run: (onEvent: (e: HostEvent) => void) => Promise<void>): Promise<number[]> {
  const losses: number[] = [];
  await run((e) => {
    if (e.type === 'step') losses.push(e.loss);
  });
  return losses;
}

describe('transports give identical bits (p < 1)', () => {
  for (const [tp, workers] of [[2, 2], [4, 2], [4, 1]] as const) {
    test(`TP=${tp} p=0.5: virtual ranks vs ${workers} worker thread(s), 3 training steps`, async () => {
      const cfg = resolveConfig(model, { tp, p: 0.5 });
      const train = trainCfg(3);
      const data = { train: tokenStream(4000, 64, 1), val: tokenStream(400, 64, 2) };
      const be = selectBackend(undefined, { quiet: true });
      const start = { step: 0, tokensSeen: 0 };
      const v = await lossesOf((on) => runVirtualHost(cfg, train, be, data, start, on));
      const t = await lossesOf((on) => runThreadHosts({ cfg, train, backend: be.name, workers, data, start, onEvent: on }));
      assert.equal(v.length, 3);
      assert.deepEqual(t, v);
    });
  }
});

describe('replicated state stays identical across ranks', () => {
  test('after 5 steps: every replicated parameter and the shared prefix of every residual stream are bitwise equal on all ranks', async () => {
    const cfg = resolveConfig(model, { tp: 4, p: 0.5 });
    const train = trainCfg(5);
    const comms = createVirtualGroup(4);
    const ranks = createRankStates(cfg, train, selectBackend(undefined, { quiet: true }), comms, { step: 0, tokensSeen: 0 });
    const toks = tokenStream(2 * 17 * 5, 64, 9);
    for (let step = 0; step < 5; step++) {
      const inputs = new Int32Array(32);
      const targets = new Int32Array(32);
      for (let b = 0; b < 2; b++) {
        for (let t = 0; t < 16; t++) {
          inputs[b * 16 + t] = toks[(step * 2 + b) * 17 + t]!;
          targets[b * 16 + t] = toks[(step * 2 + b) * 17 + t + 1]!;
        }
      }
      await allRanks(ranks, (r) => rankTrainStep(r, [{ inputs, targets }], 2, 16, 1e-2, 1));
    }
    const specs = ranks[0]!.model.specs.filter((s) => s.shard === null);
    assert.ok(specs.length === 2 * model.layers + 1);
    for (const spec of specs) {
      const ref = ranks[0]!.model.params.get(spec.name);
      for (const r of ranks.slice(1)) assert.deepEqual(r.model.params.get(spec.name), ref, `${spec.name} differs on rank ${r.model.rank}`);
    }
    // private channels really differ (otherwise the check above would be vacuous)
    const streams = ranks.map((r) => r.model.residualStreams());
    const s = cfg.shared;
    const h = cfg.model.hidden;
    let privateDiffers = false;
    for (let k = 0; k < streams[0]!.length; k++) {
      for (let row = 0; row < 32; row++) {
        const ref = streams[0]![k]!.subarray(row * h, row * h + s);
        for (let r = 1; r < 4; r++) {
          assert.deepEqual(streams[r]![k]!.subarray(row * h, row * h + s), ref, `stream ${k} row ${row}: shared prefix differs on rank ${r}`);
          if (k > 0 && streams[r]![k]![row * h + s] !== streams[0]![k]![row * h + s]) privateDiffers = true;
        }
      }
    }
    assert.ok(privateDiffers, 'private channels should differ between ranks');
  });
});

describe('communication volume', () => {
  test('block collective bytes per step are exactly p (to the channel) of p = 1', async () => {
    const bytes: Record<string, number> = {};
    for (const p of [1, 0.5, 0.25, 0]) {
      const cfg = resolveConfig(model, { tp: 2, p });
      const vm = new VirtualModel(cfg, createJsBackend('f32'));
      for (const m of vm.ranks) m.initFromSeed(1);
      const inp = Int32Array.from(tokenStream(32, 64, 3));
      const tgt = Int32Array.from(tokenStream(32, 64, 4));
      await vm.lossAndGrads(inp, tgt, 2, 16);
      const st = vm.comms[0]!.stats();
      const block = [TAGS.attnFwd, TAGS.mlpFwd, TAGS.attnBwd, TAGS.mlpBwd].reduce((a, t) => a + (st.bytes.get(t) ?? 0), 0);
      bytes[p] = block;
      // 4 partial all-reduces per layer of tokens × s float32 values
      assert.equal(block, 4 * model.layers * 32 * cfg.shared * 4);
      assert.equal(st.bytes.get(TAGS.embedFwd), 32 * model.hidden * 4);
      assert.equal(st.bytes.get(TAGS.embedBwd), 32 * model.hidden * 4);
    }
    assert.equal(bytes[0.5], bytes[1]! / 2);
    assert.equal(bytes[0.25], bytes[1]! / 4);
    assert.equal(bytes[0], 0);
  });
});

function dot(a: FloatArray, b: FloatArray): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

function rand64(n: number, seed: number): Float64Array {
  const r = lcg(seed);
  return Float64Array.from({ length: n }, () => r() * 2 - 1);
}

describe('adjoint tests of the communication ops (Σ_r <A x, y> = Σ_r <x, Aᵀ y>)', () => {
  const be = createJsBackend('f64');
  const N = 3;
  const rows = 5;
  const h = 8;
  const n = rows * h;

  test('partialAllReduce is self-adjoint, for s = 0, 3, h and c = 1, sqrt(N)', async () => {
    for (const s of [0, 3, h]) {
      for (const c of [1, Math.sqrt(N)]) {
        const comms = createVirtualGroup(N);
        const xs = comms.map((_, r) => rand64(n, 10 + r));
        const ys = comms.map((_, r) => rand64(n, 20 + r));
        const Ax = xs.map((x) => Float64Array.from(x));
        const Aty = ys.map((y) => Float64Array.from(y));
        await Promise.all(comms.map((cm, r) => partialAllReduce(cm, be, Ax[r]!, rows, h, s, c, new Float64Array(n), 'fwd')));
        await Promise.all(comms.map((cm, r) => partialAllReduce(cm, be, Aty[r]!, rows, h, s, c, new Float64Array(n), 'bwd')));
        const lhs = comms.reduce((a, _, r) => a + dot(Ax[r]!, ys[r]!), 0);
        const rhs = comms.reduce((a, _, r) => a + dot(xs[r]!, Aty[r]!), 0);
        assert.ok(Math.abs(lhs - rhs) < 1e-12 * Math.max(1, Math.abs(lhs)), `s=${s} c=${c}: ${lhs} vs ${rhs}`);
      }
    }
  });

  test('copyToTP (f) and reduceFromTP (g) are adjoint to each other', async () => {
    // f: replicated x ↦ (x, …, x); fᵀ: (y_r) ↦ Σ_r y_r (its backward). <f x, y> = Σ_r <x, y_r> = <x, fᵀ y>.
    const comms = createVirtualGroup(N);
    const x = rand64(n, 1);
    const ys = comms.map((_, r) => rand64(n, 30 + r));
    const fty = ys.map((y) => Float64Array.from(y));
    await Promise.all(comms.map((cm, r) => copyToTPBackward(cm, fty[r]!, 'f.bwd')));
    const lhs = ys.reduce((a, y) => a + dot(x, y), 0);
    assert.ok(Math.abs(lhs - dot(x, fty[0]!)) < 1e-12 * Math.max(1, Math.abs(lhs)));
    // g: partial (x_r) ↦ replicated Σ_r x_r; gᵀ: y ↦ (y, …, y), its identity backward.
    const xs = comms.map((_, r) => rand64(n, 40 + r));
    const gx = xs.map((v) => Float64Array.from(v));
    await Promise.all(comms.map((cm, r) => reduceFromTPForward(cm, gx[r]!, 'g.fwd')));
    const y = rand64(n, 2);
    const lhs2 = dot(gx[0]!, y);
    const rhs2 = xs.reduce((a, v) => a + dot(v, y), 0);
    assert.ok(Math.abs(lhs2 - rhs2) < 1e-12 * Math.max(1, Math.abs(lhs2)));
  });

  test('embeddingReduce: forward sums vocab-parallel lookups, backward sums rank-partial gradients', async () => {
    // As a map from per-rank partial lookups to the replicated embedding output it is g; its
    // backward must turn rank-partial gradients (whose sum is the true one) into the full gradient.
    const comms = createVirtualGroup(N);
    const xs = comms.map((_, r) => rand64(n, 50 + r));
    const fx = xs.map((v) => Float64Array.from(v));
    await Promise.all(comms.map((cm, r) => embeddingReduce(cm, fx[r]!, n, 'e.fwd')));
    const dys = comms.map((_, r) => rand64(n, 60 + r));
    const bt = dys.map((v) => Float64Array.from(v));
    await Promise.all(comms.map((cm, r) => embeddingReduce(cm, bt[r]!, n, 'e.bwd')));
    // <A x, dy> with dy rank-partial (true gradient Σ_r dy_r) equals Σ_r <x_r, full gradient>
    const trueDy = new Float64Array(n);
    for (const d of dys) for (let i = 0; i < n; i++) trueDy[i]! += d[i]!;
    const lhs = dot(fx[0]!, trueDy);
    const rhs = xs.reduce((a, v, r) => a + dot(v, bt[r]!), 0);
    assert.ok(Math.abs(lhs - rhs) < 1e-12 * Math.max(1, Math.abs(lhs)));
  });
});

describe('caat gradcheck reproduces the fixtures', () => {
  const cases = fs.readdirSync(fixturesDir).filter((d) => fs.existsSync(path.join(fixturesDir, d, 'expected.json'))).sort();
  for (const name of cases) {
    for (const workers of ['0', '2']) {
      test(`${name} (${workers === '0' ? 'virtual ranks' : '2 worker threads'})`, () => {
        const dir = path.join(fixturesDir, name);
        const r = spawnSync(process.execPath, [cli, 'gradcheck', '--model', path.join(dir, 'model.safetensors'), '--tokens', path.join(dir, 'tokens.json'), '--workers', workers, '--json'], { encoding: 'utf8' });
        assert.equal(r.status, 0, r.stderr);
        const got = JSON.parse(r.stdout) as { loss: number; grad_norms: Record<string, number>; shared: number; n_tokens: number };
        const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as typeof got;
        assert.equal(got.shared, exp.shared);
        assert.equal(got.n_tokens, exp.n_tokens);
        assert.ok(Math.abs(got.loss - exp.loss) / exp.loss < 1e-6, `loss ${got.loss} vs ${exp.loss}`);
        assert.deepEqual(Object.keys(got.grad_norms).sort(), Object.keys(exp.grad_norms).sort());
        for (const [k, v] of Object.entries(exp.grad_norms)) {
          assert.ok(Math.abs(got.grad_norms[k]! - v) / v < 1e-5, `${k}: ${got.grad_norms[k]} vs ${v}`);
        }
      });
    }
  }

  test('bad inputs: missing tokens file, ragged rows, token beyond the vocab', () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'caat-gc-'));
    const model = path.join(fixturesDir, 'tp1_p1', 'model.safetensors');
    const run = (tokens: string) => spawnSync(process.execPath, [cli, 'gradcheck', '--model', model, '--tokens', tokens, '--json'], { encoding: 'utf8' });
    let r = run(path.join(tmp, 'none.json'));
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /none\.json: no such file/);
    fs.writeFileSync(path.join(tmp, 'ragged.json'), JSON.stringify({ inputs: [[1, 2], [3]], targets: [[1, 2], [3, 4]] }));
    r = run(path.join(tmp, 'ragged.json'));
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /ragged\.json: "inputs" and "targets" must both be/);
    fs.writeFileSync(path.join(tmp, 'big.json'), JSON.stringify({ inputs: [[1, 2]], targets: [[1, 99]] }));
    r = run(path.join(tmp, 'big.json'));
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /big\.json: "targets" holds token 99 ≥ vocab 64/);
    fs.rmSync(tmp, { recursive: true, force: true });
  });
});
