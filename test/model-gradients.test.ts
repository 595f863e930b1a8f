/**
 * Whole-model gradient checks in float64: analytic gradients of every full logical tensor against
 * central finite differences, at TP = 1 and at TP = 2 with partial synchronisation; and the parity
 * contract that TP = N with p = 1 equals the dense TP = 1 model.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createJsBackend, selectBackend } from '../src/backend/index.js';
import type { Backend } from '../src/backend/types.js';
import { resolveConfig } from '../src/model/config.js';
import { VirtualModel } from '../src/model/harness.js';
import { initFull, paramSpecs } from '../src/model/params.js';

const tiny = { vocab: 16, hidden: 16, layers: 2, heads: 4, kvHeads: 2, ffn: 24, seqLen: 8 };
const B = 2;
const T = 5;

function tokens(seed: number, n: number, V: number): Int32Array {
  const out = new Int32Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = x % V;
  }
  return out;
}

/** Random (non-trivial) norm gains so their gradients are generic. */
function fullWeights(cfg: ReturnType<typeof resolveConfig>, seed: number): Map<string, Float64Array> {
  const specs = paramSpecs(cfg);
  const m = new Map<string, Float64Array>();
  specs.forEach((s, i) => {
    const w = initFull({ ...s, init: { kind: 'normal', std: s.init.kind === 'ones' ? 0.3 : 0.2 } }, i, seed, Float64Array) as Float64Array;
    if (s.init.kind === 'ones') for (let k = 0; k < w.length; k++) w[k]! += 1;
    m.set(s.name, w);
  });
  return m;
}

function build(cfg: ReturnType<typeof resolveConfig>, be: Backend, full: Map<string, Float64Array>): VirtualModel {
  const vm = new VirtualModel(cfg, be);
  for (const m of vm.ranks) m.loadFull((s) => full.get(s.name)!);
  return vm;
}

async function loss(cfg: ReturnType<typeof resolveConfig>, full: Map<string, Float64Array>, inp: Int32Array, tgt: Int32Array): Promise<number> {
  const vm = build(cfg, createJsBackend('f64'), full);
  const l = await vm.all((m) => m.forward(inp, tgt, B, T));
  return l[0]!;
}

describe('model gradients (float64 finite differences)', () => {
  for (const par of [
    { tp: 1, p: 1, privateScale: 'sqrt' as const },
    { tp: 2, p: 0.5, privateScale: 'sqrt' as const },
    { tp: 2, p: 0, privateScale: 'none' as const },
  ]) {
    test(`every tensor, tp=${par.tp} p=${par.p} scale=${par.privateScale}`, async () => {
      const cfg = resolveConfig(tiny, par);
      const full = fullWeights(cfg, 7);
      const inp = tokens(1, B * T, tiny.vocab);
      const tgt = tokens(2, B * T, tiny.vocab);
      const vm = build(cfg, createJsBackend('f64'), full);
      await vm.lossAndGrads(inp, tgt, B, T);
      const h = 1e-5;
      for (const spec of paramSpecs(cfg)) {
        const g = vm.full('grads', spec.name);
        const w = full.get(spec.name)!;
        // three probe entries per tensor, spread over it
        for (const k of [0, Math.floor(w.length / 2) + 1, w.length - 1]) {
          const old = w[k]!;
          w[k] = old + h;
          const lp = await loss(cfg, full, inp, tgt);
          w[k] = old - h;
          const lm = await loss(cfg, full, inp, tgt);
          w[k] = old;
          const fd = (lp - lm) / (2 * h);
          const err = Math.abs(fd - g[k]!) / Math.max(1e-6, Math.abs(fd) + Math.abs(g[k]!));
          assert.ok(err < 1e-6, `${spec.name}[${k}]: analytic ${g[k]} vs finite difference ${fd} (rel ${err.toExponential(2)})`);
        }
      }
    });
  }
});

describe('parity: TP = N with p = 1 equals the dense TP = 1 model', () => {
  for (const prec of [
    { label: 'float64', be: () => createJsBackend('f64'), tol: 1e-12 },
    { label: 'float32', be: () => selectBackend(undefined, { quiet: true }), tol: 2e-5 },
  ]) {
    for (const N of [2, 4]) {
      test(`TP=${N} vs TP=1 (${prec.label})`, async () => {
        const model = { vocab: 32, hidden: 32, layers: 2, heads: 8, kvHeads: 4, ffn: 48, seqLen: 8 };
        const c1 = resolveConfig(model, { tp: 1, p: 1 });
        const cN = resolveConfig(model, { tp: N, p: 1 });
        const full = fullWeights(c1, 11);
        const inp = tokens(3, B * T, model.vocab);
        const tgt = tokens(4, B * T, model.vocab);
        const v1 = build(c1, prec.be(), full);
        const vN = build(cN, prec.be(), full);
        const l1 = await v1.lossAndGrads(inp, tgt, B, T);
        const lN = await vN.lossAndGrads(inp, tgt, B, T);
        assert.ok(Math.abs(l1 - lN) / l1 < prec.tol, `loss ${l1} vs ${lN}`);
        for (const spec of paramSpecs(c1)) {
          const a = v1.full('grads', spec.name);
          const b = vN.full('grads', spec.name);
          let num = 0;
          let den = 0;
          for (let i = 0; i < a.length; i++) {
            num += (a[i]! - b[i]!) ** 2;
            den += a[i]! ** 2;
          }
          const err = Math.sqrt(num / den);
          assert.ok(err < prec.tol * 10, `${spec.name}: relative L2 ${err.toExponential(2)}`);
        }
      });
    }
  }
});
