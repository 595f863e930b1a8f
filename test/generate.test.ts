/**
 * Incremental decoding with the KV cache gives the same logits as the full forward at every position,
 * at TP = 1 and with partial synchronisation at TP = 2 (float64), for a batch of two sequences.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createJsBackend } from '../src/backend/index.js';
import { resolveConfig } from '../src/model/config.js';
import { VirtualModel } from '../src/model/harness.js';
import { sample } from '../src/cli/infer.js';

describe('KV-cache decoding', () => {
  for (const par of [{ tp: 1, p: 1 }, { tp: 2, p: 0.5 }, { tp: 2, p: 0 }]) {
    test(`prefill + token-by-token equals the full forward (tp=${par.tp}, p=${par.p})`, async () => {
      const cfg = resolveConfig({ vocab: 24, hidden: 16, layers: 2, heads: 4, kvHeads: 2, ffn: 24, seqLen: 12 }, par);
      const vm = new VirtualModel(cfg, createJsBackend('f64'));
      for (const m of vm.ranks) m.initFromSeed(3);
      const B = 2;
      const T = 9;
      const tokens = Int32Array.from({ length: B * T }, (_, i) => (i * 7 + 3) % 24);
      await vm.all((m) => m.forward(tokens, tokens, B, T));
      const Vl = cfg.local.vocab;
      const full = (b: number, t: number, v: number) => {
        const r = Math.floor(v / Vl);
        return vm.ranks[r]!.logitsLocal()[(b * T + t) * Vl + (v % Vl)]!;
      };
      const caches = vm.ranks.map((m) => m.createCache(B, cfg.model.seqLen));
      const prefill = 4;
      let step = new Int32Array(B * prefill);
      for (let b = 0; b < B; b++) step.set(tokens.subarray(b * T, b * T + prefill), b * prefill);
      let Tq = prefill;
      for (let t = prefill - 1; t < T; t++) {
        const logits = (await vm.all((m, r) => m.forwardIncremental(step, Tq, caches[r]!)))[0]!;
        for (let b = 0; b < B; b++) {
          for (let v = 0; v < cfg.vocab; v++) {
            const want = full(b, t, v);
            assert.ok(Math.abs(logits[b * cfg.vocab + v]! - want) < 1e-12 * Math.max(1, Math.abs(want)), `b ${b} t ${t} v ${v}: ${logits[b * cfg.vocab + v]} vs ${want}`);
          }
        }
        if (t + 1 < T) {
          step = Int32Array.from({ length: B }, (_, b) => tokens[b * T + t + 1]!);
          Tq = 1;
        }
      }
      // all ranks return identical logits
      const all = await vm.all((m, r) => m.forwardIncremental(Int32Array.of(1, 2), 1, caches[r]!));
      for (const l of all.slice(1)) assert.deepEqual(l, all[0]);
    });
  }
});

describe('sampling', () => {
  const rand = () => 0.5;
  test('greedy picks the arg max and never a padding id', () => {
    assert.equal(sample([0, 5, 1, 9], 3, { temperature: 0, topK: 0, topP: 1 }, rand), 1);
  });
  test('top-k 1 is greedy; top-p keeps the smallest prefix reaching the mass', () => {
    assert.equal(sample([0, 5, 1, 2], 4, { temperature: 1, topK: 1, topP: 1 }, () => 0.99), 1);
    // probabilities ∝ e^[3, 2, 0]: top-p 0.5 keeps only the first
    assert.equal(sample([3, 2, 0], 3, { temperature: 1, topK: 0, topP: 0.5 }, () => 0.99), 0);
  });
  test('sampling follows the distribution', () => {
    let x = 1;
    const r = () => ((x = (x * 16807) % 2147483647) / 2147483647);
    const counts = [0, 0];
    for (let i = 0; i < 4000; i++) counts[sample([Math.log(3), 0], 2, { temperature: 1, topK: 0, topP: 1 }, r)]!++;
    assert.ok(Math.abs(counts[0]! / 4000 - 0.75) < 0.03, `${counts}`);
  });
});
