/**
 * The external reference fixtures (PyTorch float64 autograd on a virtual-rank model): loss, every full
 * gradient and the 10-step AdamW trajectory, at the fixture's TP degree and p. Checked in float64 on
 * the js backend (tight tolerances), in float32 on the default backend (the fixtures' stated ones) and
 * in bf16 mixed precision on the default backend (bf16 tolerances, justified at `precisions`).
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { createJsBackend, selectBackend } from '../src/backend/index.js';
import type { Backend } from '../src/backend/types.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { VirtualModel } from '../src/model/harness.js';
import { configFromMetadata } from '../src/model/metadata.js';
import { AdamW } from '../src/train/adamw.js';
import { fixturesDir } from './helpers/paths.js';

interface Expected {
  loss: number;
  grad_norms: Record<string, number>;
  shared: number;
  n_tokens: number;
}

function loadCase(name: string) {
  const dir = join(fixturesDir, name);
  const model = readSafetensors(join(dir, 'model.safetensors'));
  const tokens = JSON.parse(readFileSync(join(dir, 'tokens.json'), 'utf8')) as { inputs: number[][]; targets: number[][] };
  const expected = JSON.parse(readFileSync(join(dir, 'expected.json'), 'utf8')) as Expected;
  const grads = readSafetensors(join(dir, 'expected_grads.safetensors'));
  const train10Path = join(dir, 'train10.json');
  const train10 = existsSync(train10Path) ? (JSON.parse(readFileSync(train10Path, 'utf8')) as { losses: number[]; optimizer: Record<string, number> }) : undefined;
  const B = tokens.inputs.length;
  const T = tokens.inputs[0]!.length;
  const cfg = configFromMetadata(model.metadata, join(dir, 'model.safetensors'), { seqLen: T });
  return {
    cfg,
    model,
    inputs: Int32Array.from(tokens.inputs.flat()),
    targets: Int32Array.from(tokens.targets.flat()),
    B,
    T,
    expected,
    grads,
    train10,
  };
}

function build(c: ReturnType<typeof loadCase>, be: Backend): VirtualModel {
  const vm = new VirtualModel(c.cfg, be);
  for (const m of vm.ranks) {
    m.loadFull((spec) => {
      const t = c.model.tensors.get(spec.name);
      assert.ok(t, `fixture lacks ${spec.name}`);
      assert.deepEqual(t.shape, spec.shape, `shape of ${spec.name}`);
      assert.ok(t.dtype === 'F32' || t.dtype === 'F64', `dtype of ${spec.name}`);
      return t.data as Float32Array | Float64Array;
    });
  }
  return vm;
}

function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-300);
}

function l2(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! ** 2;
  return Math.sqrt(s);
}

const cases = readdirSync(fixturesDir).filter((d) => existsSync(join(fixturesDir, d, 'expected.json'))).sort();

const precisions: { label: string; be: () => Backend; bf16?: true; lossTol: number; gradTol: number; trainTol: number }[] = [
  { label: 'float64 js', be: () => createJsBackend('f64'), lossTol: 1e-10, gradTol: 1e-9, trainTol: 1e-9 },
  { label: 'float32 default backend', be: () => selectBackend(undefined, { quiet: true }), lossTol: 1e-6, gradTol: 1e-5, trainTol: 1e-4 },
  // bf16 mode (RankModel.setPrecision): every GEMM and attention operand is rounded to bf16, whose unit
  // roundoff is u = 2^-9 ≈ 2e-3. The mean loss sees each rounding averaged over the batch: 2u = 2^-8
  // (measured ≤ 9e-4). A gradient is a chain of products whose every operand was rounded on the way
  // forward and back: in these 2-layer fixtures the deepest one (layer 0's q/k projections) passes
  // about 16 rounded operands, so 32u = 2^-4 relative L2 (measured ≤ 0.04). Ten AdamW steps on
  // gradients of that accuracy stay within 8u = 2^-6 of the float64 losses (measured ≤ 6.5e-3).
  { label: 'bf16 mixed precision, default backend', be: () => selectBackend(undefined, { quiet: true }), bf16: true, lossTol: 2 ** -8, gradTol: 2 ** -4, trainTol: 2 ** -6 },
];

describe('PyTorch reference fixtures', () => {
  test('all five cases are present', () => {
    assert.deepEqual(cases, ['tp1_p1', 'tp2_p0', 'tp2_p0.5', 'tp2_p0.5_noscale', 'tp2_p1']);
  });

  for (const name of cases) {
    for (const prec of precisions) {
      test(`${name}: loss and every gradient (${prec.label})`, async () => {
        const c = loadCase(name);
        assert.equal(c.cfg.shared, c.expected.shared);
        assert.equal(c.B * c.T, c.expected.n_tokens);
        const vm = build(c, prec.be());
        if (prec.bf16) for (const m of vm.ranks) m.setPrecision('bf16');
        const loss = await vm.lossAndGrads(c.inputs, c.targets, c.B, c.T);
        const lossErr = Math.abs(loss - c.expected.loss) / Math.abs(c.expected.loss);
        assert.ok(lossErr < prec.lossTol, `loss ${loss} vs ${c.expected.loss} (rel ${lossErr})`);
        for (const spec of vm.ranks[0]!.specs) {
          const ref = c.grads.tensors.get(spec.name);
          assert.ok(ref, `expected_grads lacks ${spec.name}`);
          const got = vm.full('grads', spec.name);
          const err = relL2(got, ref.data as Float64Array);
          assert.ok(err < prec.gradTol, `${spec.name}: relative L2 error ${err.toExponential(3)} ≥ ${prec.gradTol}`);
          const normRef = c.expected.grad_norms[spec.name]!;
          const normErr = Math.abs(l2(got) - normRef) / normRef;
          assert.ok(normErr < prec.gradTol, `${spec.name}: grad norm ${l2(got)} vs ${normRef}`);
        }
      });

      if (!existsSync(join(fixturesDir, name, 'train10.json'))) continue;
      test(`${name}: 10 AdamW steps (${prec.label})`, async () => {
        const c = loadCase(name);
        const t10 = c.train10!;
        const o = t10.optimizer;
        const vm = build(c, prec.be());
        if (prec.bf16) for (const m of vm.ranks) m.setPrecision('bf16');
        const opts = vm.ranks.map((m) => new AdamW(m.params, m.grads, { beta1: o['beta1']!, beta2: o['beta2']!, eps: o['eps']!, weightDecay: o['weight_decay']! }, m.be));
        const losses: number[] = [];
        for (let step = 0; step <= 10; step++) {
          const loss = await vm.lossAndGrads(c.inputs, c.targets, c.B, c.T);
          losses.push(loss);
          if (step < 10) for (const opt of opts) opt.update(o['lr']!);
        }
        for (let i = 0; i < 11; i++) {
          const err = Math.abs(losses[i]! - t10.losses[i]!) / Math.abs(t10.losses[i]!);
          assert.ok(err < prec.trainTol, `loss ${i}: ${losses[i]} vs ${t10.losses[i]} (rel ${err})`);
        }
      });
    }
  }
});
