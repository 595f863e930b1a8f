/**
 * The placement layer: the same step plans on virtual ranks and on worker threads give the same
 * logits bit for bit (TP 2, p = 0.5), the plan's wire format round-trips, bad placements are refused,
 * and `caat generate --workers 2` prints what the virtual ranks print.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { resolveConfig } from '../src/model/config.js';
import { initFull, paramSpecs } from '../src/model/params.js';
import { controlPlan, decodePlan, encodePlan, placeRanks, type StepPlan } from '../src/placement/index.js';
import { cleanEnv, cli, tempDir, tinyRun } from './helpers/serve.js';

let tmp: string;
before(() => {
  tmp = tempDir();
});
after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('placement', () => {
  test('the plan wire format round-trips; ids beyond float32 precision are refused', () => {
    const p: StepPlan = { kind: 'step', seqs: [{ slot: 3, pos: 17, n: 2, allLogits: true }, { slot: 0, pos: 4, n: 1, allLogits: false }], tokens: Int32Array.of(5, 299, 7), freed: [1, 2] };
    assert.deepEqual(decodePlan(encodePlan(p)), p);
    assert.deepEqual(decodePlan(encodePlan(controlPlan('stop'))).kind, 'stop');
    assert.throws(() => encodePlan({ ...p, tokens: Int32Array.of(1, 2, 1 << 24) }), /token id 16777216/);
    assert.throws(() => decodePlan(Float32Array.of(0, 1, 0, 0)), /malformed/);
  });

  test('virtual ranks and worker threads give the same logits bit for bit (TP 2, p = 0.5)', async () => {
    const cfg = resolveConfig({ vocab: 64, hidden: 32, layers: 2, heads: 4, kvHeads: 2, ffn: 48, seqLen: 32 }, { tp: 2, p: 0.5 });
    const params = new Map<string, Float32Array>();
    paramSpecs(cfg).forEach((s, i) => params.set(s.name, initFull(s, i, 9) as Float32Array));
    const plans: StepPlan[] = [
      { kind: 'step', seqs: [{ slot: 0, pos: 0, n: 5, allLogits: true }, { slot: 1, pos: 0, n: 3, allLogits: false }], tokens: Int32Array.of(1, 2, 3, 4, 5, 9, 8, 7), freed: [] },
      { kind: 'step', seqs: [{ slot: 0, pos: 5, n: 1, allLogits: false }, { slot: 1, pos: 3, n: 1, allLogits: false }], tokens: Int32Array.of(11, 12), freed: [] },
    ];
    const results: Float32Array[][] = [];
    for (const workers of [0, 2, 1]) {
      const host = placeRanks({ cfg, params, workers, launched: null, slots: 2, maxLen: 32, config: {} });
      assert.equal(host.placement, workers === 0 ? 'virtual' : 'threads');
      const out: Float32Array[] = [];
      for (const p of plans) {
        const r = await host.step(p);
        out.push(r.logits);
        if (workers === 0) assert.ok(r.commBytes > 0);
      }
      await host.close();
      results.push(out);
    }
    assert.equal(results[0]![0]!.length, 6 * 64);
    for (const r of results.slice(1)) r.forEach((x, i) => assert.deepEqual(Array.from(x), Array.from(results[0]![i]!)));
  });

  test('bf16 weights: the fp32 engine on bf16-rounded weights exactly (js), within float32 summation (native); threads = virtual bit for bit', async () => {
    const { bf16RoundedWeights } = await import('../src/cli/infer.js');
    const cfg = resolveConfig({ vocab: 64, hidden: 32, layers: 2, heads: 4, kvHeads: 2, ffn: 48, seqLen: 32 }, { tp: 2, p: 0.5 });
    const params = new Map<string, Float32Array>();
    paramSpecs(cfg).forEach((s, i) => params.set(s.name, initFull(s, i, 9) as Float32Array));
    const rounded = bf16RoundedWeights(params);
    const plans: StepPlan[] = [
      { kind: 'step', seqs: [{ slot: 0, pos: 0, n: 5, allLogits: true }, { slot: 1, pos: 0, n: 3, allLogits: false }], tokens: Int32Array.of(1, 2, 3, 4, 5, 9, 8, 7), freed: [] },
      { kind: 'step', seqs: [{ slot: 0, pos: 5, n: 1, allLogits: false }, { slot: 1, pos: 3, n: 1, allLogits: false }], tokens: Int32Array.of(11, 12), freed: [] },
      { kind: 'step', seqs: [{ slot: 0, pos: 6, n: 10, allLogits: true }, { slot: 1, pos: 4, n: 1, allLogits: false }], tokens: Int32Array.from({ length: 11 }, (_, i) => (i * 7) % 64), freed: [] },
    ];
    const run = async (o: { backend: string; weights: 'fp32' | 'bf16'; p: Map<string, Float32Array>; workers: number }): Promise<Float32Array[]> => {
      const host = placeRanks({ cfg, params: o.p, weights: o.weights, backend: o.backend, workers: o.workers, launched: null, slots: 2, maxLen: 32, config: {} });
      const out: Float32Array[] = [];
      for (const p of plans) out.push(Float32Array.from((await host.step(p)).logits));
      await host.close();
      return out;
    };
    const same = (a: Float32Array[], b: Float32Array[]) => a.forEach((x, i) => assert.deepEqual(Array.from(x), Array.from(b[i]!), `step ${i}`));
    // js: gemmBf16W widens the weights and runs the same float32 GEMM, so the bits are those of the rounded model
    const js16 = await run({ backend: 'js', weights: 'bf16', p: params, workers: 0 });
    same(js16, await run({ backend: 'js', weights: 'fp32', p: rounded, workers: 0 }));
    // and bf16 weights are not the float32 ones
    const js32 = await run({ backend: 'js', weights: 'fp32', p: params, workers: 0 });
    assert.ok(js16[0]!.some((x, i) => x !== js32[0]![i]));
    const { probeBackends } = await import('../src/backend/index.js');
    if (!probeBackends().find((b) => b.name === 'native')?.backend) return; // CI builds native (CAAT_REQUIRE_BACKENDS)
    const n16 = await run({ backend: 'native', weights: 'bf16', p: params, workers: 0 });
    same(await run({ backend: 'native', weights: 'bf16', p: params, workers: 2 }), n16);
    const n32 = await run({ backend: 'native', weights: 'fp32', p: rounded, workers: 0 });
    n16.forEach((x, s) => {
      const m = Math.max(...Array.from(n32[s]!, Math.abs));
      x.forEach((v, i) => assert.ok(Math.abs(v - n32[s]![i]!) <= 1e-5 * m, `step ${s} logit ${i}: ${v} vs ${n32[s]![i]}`));
    });
  });

  test('bad placements are refused with the reason', () => {
    const cfg = resolveConfig({ vocab: 64, hidden: 32, layers: 1, heads: 4, kvHeads: 2, ffn: 48, seqLen: 32 }, { tp: 2, p: 0.5 });
    const params = new Map<string, Float32Array>();
    paramSpecs(cfg).forEach((s, i) => params.set(s.name, initFull(s, i, 9) as Float32Array));
    assert.throws(() => placeRanks({ cfg, params, workers: 3, launched: null, slots: 2, maxLen: 32, config: {} }), /--workers 3 must divide the TP degree 2/);
    assert.throws(() => placeRanks({ cfg, params, workers: 0, launched: null, slots: 0, maxLen: 32, config: {} }), /at least 1 slot/);
  });

  test('caat generate --workers 2 prints what the virtual ranks print', () => {
    const run = tinyRun(tmp, 2, 0.5);
    const gen = (w: string) => spawnSync(process.execPath, [cli, 'generate', '--run', run, '--prompt', 'The whale', '--max-tokens', '12', '--temperature', '0.8', '--seed', '4', '--workers', w], { encoding: 'utf8', env: cleanEnv() });
    const a = gen('0');
    const b = gen('2');
    assert.equal(a.status, 0, a.stderr);
    assert.equal(b.status, 0, b.stderr);
    assert.ok(a.stdout.length > 'The whale'.length + 1);
    assert.equal(b.stdout, a.stdout);
    assert.match(b.stderr, /threads/);
    const bad = gen('3');
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /--workers 3 must divide the TP degree 2/);
    // bf16 weights: said on stderr, the same text on threads as on virtual ranks; a bad precision is refused
    const gen16 = (w: string, prec = 'bf16') => spawnSync(process.execPath, [cli, 'generate', '--run', run, '--prompt', 'The whale', '--max-tokens', '12', '--temperature', '0', '--workers', w, '--precision', prec], { encoding: 'utf8', env: cleanEnv() });
    const c = gen16('0');
    assert.equal(c.status, 0, c.stderr);
    assert.match(c.stderr, /precision: bf16 weights/);
    assert.equal(gen16('2').stdout, c.stdout);
    const bad16 = gen16('0', 'fp16');
    assert.notEqual(bad16.status, 0);
    assert.match(bad16.stderr, /--precision: expected fp32 or bf16, got "fp16"/);
  });
});
