/**
 * RankModel.forwardBatch (many sequences of different lengths in one step, chunked prefill mixed with
 * decoding, per-sequence positions and cache slots) gives the logits of the full forward, at TP 1 and
 * with partial synchronisation at TP 2 (float64 reference backend, and the default backend in float32).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createJsBackend, selectBackend } from '../src/backend/index.js';
import type { Backend } from '../src/backend/types.js';
import { resolveConfig } from '../src/model/config.js';
import { VirtualModel } from '../src/model/harness.js';
import type { BatchSeq } from '../src/model/model.js';

const V = 24;
const seqTokens = (i: number, T: number) => Int32Array.from({ length: T }, (_, t) => (t * 7 + i * 5 + 3) % V);

async function fullLogits(vm: VirtualModel, toks: Int32Array): Promise<(t: number, v: number) => number> {
  const T = toks.length;
  await vm.all((m) => m.forward(toks, toks, 1, T));
  const Vl = vm.cfg.local.vocab;
  const logits = vm.ranks.map((m) => Float64Array.from(m.logitsLocal()));
  return (t, v) => logits[Math.floor(v / Vl)]![t * Vl + (v % Vl)]!;
}

async function check(par: { tp: number; p: number }, be: Backend, tol: number): Promise<void> {
  const cfg = resolveConfig({ vocab: V, hidden: 16, layers: 2, heads: 4, kvHeads: 2, ffn: 24, seqLen: 16 }, par);
  const vm = new VirtualModel(cfg, be);
  for (const m of vm.ranks) m.initFromSeed(5);
  // Three sequences: lengths 11, 6 and 9, in slots 2, 0, 1.
  const lens = [11, 6, 9];
  const slots = [2, 0, 1];
  const seqs = lens.map((T, i) => seqTokens(i, T));
  const ref = [];
  for (const s of seqs) ref.push(await fullLogits(vm, s));
  const caches = vm.ranks.map((m) => m.createCache(3, cfg.model.seqLen));
  const done = [0, 0, 0];
  // Step schedule: prefill chunks of at most 4 tokens, sequence 1 starts one step later; all logits of seq 0.
  let stepNo = 0;
  while (done.some((d, i) => d < lens[i]!)) {
    const plan: BatchSeq[] = [];
    const toks: number[] = [];
    for (let i = 0; i < 3; i++) {
      if (done[i]! >= lens[i]! || (i === 1 && stepNo === 0)) continue;
      const n = Math.min(done[i]! < 5 ? 4 : 1, lens[i]! - done[i]!);
      plan.push({ slot: slots[i]!, pos: done[i]!, n, allLogits: i === 0 });
      for (let t = 0; t < n; t++) toks.push(seqs[i]![done[i]! + t]!);
    }
    const outs = await vm.all((m, r) => m.forwardBatch(Int32Array.from(toks), plan, caches[r]!));
    for (const o of outs.slice(1)) assert.deepEqual(Array.from(o), Array.from(outs[0]!), 'every rank returns the same logits');
    const out = outs[0]!;
    assert.equal(out.length, plan.reduce((a, q) => a + (q.allLogits ? q.n : 1), 0) * cfg.vocab);
    let row = 0;
    for (const q of plan) {
      const i = slots.indexOf(q.slot);
      const positions = q.allLogits ? Array.from({ length: q.n }, (_, k) => q.pos + k) : [q.pos + q.n - 1];
      for (const t of positions) {
        for (let v = 0; v < cfg.vocab; v++) {
          const want = ref[i]!(t, v);
          const got = out[row * cfg.vocab + v]!;
          assert.ok(Math.abs(got - want) <= tol * Math.max(1, Math.abs(want)), `step ${stepNo} seq ${i} t ${t} v ${v}: ${got} vs ${want}`);
        }
        row++;
      }
      done[i]! += q.n;
    }
    stepNo++;
  }
  assert.ok(stepNo >= 5, `took ${stepNo} steps`);
}

describe('batched incremental forward', () => {
  for (const par of [{ tp: 1, p: 1 }, { tp: 2, p: 0.5 }, { tp: 2, p: 0 }]) {
    test(`equals the full forward, float64 (tp=${par.tp}, p=${par.p})`, async () => check(par, createJsBackend('f64'), 1e-12));
    test(`equals the full forward, default backend float32 (tp=${par.tp}, p=${par.p})`, async () => check(par, selectBackend(undefined, { quiet: true }), 1e-4));
  }

  test('rejects a slot outside the cache and a token count that does not match', async () => {
    const cfg = resolveConfig({ vocab: V, hidden: 16, layers: 1, heads: 4, kvHeads: 2, ffn: 24, seqLen: 8 }, { tp: 1, p: 1 });
    const vm = new VirtualModel(cfg, createJsBackend('f64'));
    const m = vm.ranks[0]!;
    const cache = m.createCache(2, 8);
    await assert.rejects(m.forwardBatch(Int32Array.of(1), [{ slot: 2, pos: 0, n: 1, allLogits: false }], cache), /slot 2 outside/);
    await assert.rejects(m.forwardBatch(Int32Array.of(1, 2), [{ slot: 0, pos: 0, n: 1, allLogits: false }], cache), /2 tokens for sequences of 1/);
    await assert.rejects(m.forwardBatch(Int32Array.of(1, 2), [{ slot: 0, pos: 7, n: 2, allLogits: false }], cache), /outside the cache length/);
  });
});
