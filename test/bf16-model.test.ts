/**
 * bf16 mixed precision above the kernels: the bf16 all-reduce (exact against a reference that sums the
 * bf16 contributions in float32 in rank order and rounds once), the partial and embedding all-reduces
 * of bf16 mode, the bf16 attention (exact on js against a reference with the same rounding points, a
 * stated bound on the other backends), the bf16 forward/backward of RankModel against fp32 and across
 * backends, and the activation memory of bf16 mode.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { attentionBackwardBf16, attentionForwardBf16, bf16Bits, bf16Value, roundBf16 } from '../src/backend/bf16.js';
import { composedAttentionBackward } from '../src/backend/attention.js';
import { createJsBackend } from '../src/backend/js.js';
import type { Backend } from '../src/backend/types.js';
import { resolveConfig } from '../src/model/config.js';
import { RankModel, rankMemoryBytes } from '../src/model/model.js';
import { describePrecision, resolvePrecision } from '../src/model/precision.js';
import { CommAbortedError } from '../src/tp/comm.js';
import { embeddingReduceBf16, partialAllReduceBf16 } from '../src/tp/ops.js';
import { createVirtualGroup } from '../src/tp/virtual.js';
import { allBackends } from './helpers/backends.js';

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** bf16(Σ_r float32(x_r)) with float32 rounding after every addition, in rank order. */
function refSum(xs: Uint16Array[], i: number): number {
  let acc = bf16Value(xs[0]![i]!);
  for (let r = 1; r < xs.length; r++) acc = Math.fround(acc + bf16Value(xs[r]![i]!));
  return bf16Bits(acc);
}

describe('Communicator.allReduceBf16 (virtual ranks)', () => {
  for (const N of [2, 3, 4]) {
    test(`N = ${N}: equals the float32 rank-order sum rounded once, odd length, offset region; counts 2 bytes per element`, async () => {
      const r = rng(N);
      const n = 1001;
      const off = 3;
      // Values that make the order matter: large and small magnitudes of both signs.
      const xs = Array.from({ length: N }, () => Uint16Array.from({ length: n + off + 2 }, () => bf16Bits((r() - 0.5) * 2 ** Math.floor(r() * 24 - 12))));
      const bufs = xs.map((x) => x.slice());
      const comms = createVirtualGroup(N);
      await Promise.all(comms.map((c, k) => c.allReduceBf16(bufs[k]!, 'fwd', off, n)));
      let roundedTwice = 0;
      for (let i = 0; i < n; i++) {
        const want = refSum(xs, off + i);
        for (let k = 0; k < N; k++) assert.equal(bufs[k]![off + i], want, `rank ${k} element ${i}`);
        // summing in bf16 (rounding after every addition) would differ somewhere
        let b = bf16Value(xs[0]![off + i]!);
        for (let k = 1; k < N; k++) b = roundBf16(b + bf16Value(xs[k]![off + i]!));
        if (bf16Bits(b) !== want) roundedTwice++;
      }
      if (N > 2) assert.ok(roundedTwice > 0, 'the data should tell one rounding from several');
      for (let k = 0; k < N; k++) {
        assert.deepEqual(bufs[k]!.subarray(0, off), xs[k]!.subarray(0, off), 'outside the region is untouched');
        assert.equal(comms[k]!.stats().bytes.get('fwd'), 2 * n);
      }
    });
  }

  test('a bad region fails every rank instead of leaving them waiting', async () => {
    const comms = createVirtualGroup(2);
    const res = await Promise.allSettled([comms[0]!.allReduceBf16(new Uint16Array(4), 't', 2, 4), comms[1]!.allReduceBf16(new Uint16Array(8), 't', 2, 4)]);
    assert.equal(res[0]!.status, 'rejected');
    assert.match(String((res[0] as PromiseRejectedResult).reason), /allReduceBf16: region \[2, 6\) exceeds buffer length 4/);
    assert.equal(res[1]!.status, 'rejected');
    assert.ok((res[1] as PromiseRejectedResult).reason instanceof CommAbortedError);
  });
});

describe('bf16 communication ops', () => {
  test('partialAllReduceBf16: shared prefix = bf16 rank-order sum of bf16 contributions, private channels scaled in float32', async () => {
    const be = createJsBackend('f32');
    const N = 4;
    const rows = 5;
    const h = 12;
    const s = 6;
    const c = 2;
    const r = rng(9);
    const os = Array.from({ length: N }, () => Float32Array.from({ length: rows * h }, () => r() * 4 - 2));
    const bufs = os.map((o) => o.slice());
    const comms = createVirtualGroup(N);
    await Promise.all(comms.map((cm, k) => partialAllReduceBf16(cm, be, bufs[k]!, rows, h, s, c, be.alloc(rows * h) as Float32Array, new Uint16Array(rows * h), 'attn.fwd.shared')));
    const rounded = os.map((o) => Uint16Array.from(o, (x) => bf16Bits(x)));
    for (let k = 0; k < N; k++) {
      for (let i = 0; i < rows; i++) {
        for (let j = 0; j < h; j++) {
          const got = bufs[k]![i * h + j]!;
          if (j < s) assert.equal(got, bf16Value(refSum(rounded, i * h + j)), `rank ${k} (${i}, ${j})`);
          else assert.equal(got, Math.fround(os[k]![i * h + j]! * c), `rank ${k} private (${i}, ${j})`);
        }
      }
      assert.equal(comms[k]!.stats().bytes.get('attn.fwd.shared'), rows * s * 2);
    }
  });

  test('embeddingReduceBf16: every rank gets the bf16 sum of its rounded lookups', async () => {
    const be = createJsBackend('f32');
    const comms = createVirtualGroup(2);
    const n = 37;
    const r = rng(3);
    const xs = [0, 1].map(() => Float32Array.from({ length: n }, () => r() - 0.5));
    const bufs = xs.map((x) => x.slice());
    await Promise.all(comms.map((cm, k) => embeddingReduceBf16(cm, be, bufs[k]!, n, new Uint16Array(n), 'embed.fwd')));
    for (let i = 0; i < n; i++) {
      const want = roundBf16(Math.fround(roundBf16(xs[0]![i]!) + roundBf16(xs[1]![i]!)));
      assert.equal(bufs[0]![i], want);
      assert.equal(bufs[1]![i], want);
    }
  });
});

/** Attention with bf16 products, written out directly (the rounding points of attentionForwardBf16). */
function refAttention(js: Backend, q: Uint16Array, k: Uint16Array, v: Uint16Array, B: number, T: number, NH: number, NKV: number, HD: number) {
  const out = new Float32Array(B * T * NH * HD);
  const att = new Uint16Array(B * NH * T * T);
  const S = new Float32Array(T * T);
  const qd = NH * HD;
  const kvd = NKV * HD;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < NH; h++) {
      const g = Math.floor(h / (NH / NKV));
      for (let i = 0; i < T; i++) {
        for (let j = 0; j < T; j++) {
          let acc = 0;
          for (let d = 0; d < HD; d++) acc += bf16Value(q[(b * T + i) * qd + h * HD + d]!) * bf16Value(k[(b * T + j) * kvd + g * HD + d]!);
          S[i * T + j] = acc;
        }
      }
      js.softmaxForward(S, S, T, T, 1 / Math.sqrt(HD), T);
      for (let x = 0; x < T * T; x++) att[(b * NH + h) * T * T + x] = bf16Bits(S[x]!);
      for (let i = 0; i < T; i++) {
        for (let d = 0; d < HD; d++) {
          let acc = 0;
          for (let j = 0; j < T; j++) acc += bf16Value(att[(b * NH + h) * T * T + i * T + j]!) * bf16Value(v[(b * T + j) * kvd + g * HD + d]!);
          out[(b * T + i) * qd + h * HD + d] = acc;
        }
      }
    }
  }
  return { out, att };
}

describe('bf16 attention', () => {
  const B = 2;
  const T = 9;
  const NH = 4;
  const NKV = 2;
  const HD = 8;
  const r = rng(21);
  const mk = (n: number) => Uint16Array.from({ length: n }, () => bf16Bits(r() * 2 - 1));
  const q = mk(B * T * NH * HD);
  const k = mk(B * T * NKV * HD);
  const v = mk(B * T * NKV * HD);
  const dout = mk(B * T * NH * HD);
  const js = createJsBackend('f32');
  const ref = refAttention(js, q, k, v, B, T, NH, NKV, HD);

  test('js: forward equals the written-out reference exactly (probabilities rounded to bf16 before P·v)', () => {
    const out = new Float32Array(B * T * NH * HD);
    const att = new Uint16Array(B * NH * T * T);
    attentionForwardBf16(js, out, att, q, k, v, new Float32Array(T * T), B, T, T, NH, NKV, HD, T * NKV * HD);
    assert.deepEqual(att, ref.att);
    assert.deepEqual(out, ref.out);
  });

  for (const e of allBackends()) {
    test(`${e.name}: forward within 2^-7·max|v| of the js result, backward within 2^-5 relative L2 of the float32 attention backward`, { skip: e.backend ? false : e.reason! }, () => {
      const be = e.backend!;
      const out = new Float32Array(B * T * NH * HD);
      const att = new Uint16Array(B * NH * T * T);
      attentionForwardBf16(be, out, att, q, k, v, new Float32Array(T * T), B, T, T, NH, NKV, HD, T * NKV * HD);
      // The score sums may round differently in float32 (another order), which can move a probability
      // to the neighbouring bf16 value (2^-8 relative); |v| ≤ 1, so each output moves by at most 2^-7.
      for (let i = 0; i < out.length; i++) assert.ok(Math.abs(out[i]! - ref.out[i]!) <= 2 ** -7, `out[${i}]: ${out[i]} vs ${ref.out[i]}`);
      let differ = 0;
      for (let i = 0; i < att.length; i++) {
        if (att[i] !== ref.att[i]) {
          differ++;
          assert.ok(Math.abs(att[i]! - ref.att[i]!) <= 1, `probability ${i} is more than one bf16 step away`);
        }
      }
      assert.ok(differ <= att.length / 20, `${differ} of ${att.length} probabilities differ`);
      // Backward: against the float32 composed backward on the widened bf16 inputs; bf16 rounds dout's
      // products and dS (u = 2^-9 each), so 2^-5 relative L2 is ample, and the errors are not zero.
      const w = (x: Uint16Array) => Float32Array.from(x, (b) => bf16Value(b));
      const [dq, dk, dv] = [new Float32Array(q.length), new Float32Array(k.length), new Float32Array(v.length)];
      attentionBackwardBf16(be, dq, dk, dv, dout, q, k, v, att, new Float32Array(T * T), new Float32Array(T * T), new Uint16Array(T * T), B, T, NH, NKV, HD);
      const [rq, rk, rv] = [new Float32Array(q.length), new Float32Array(k.length), new Float32Array(v.length)];
      composedAttentionBackward(js, rq, rk, rv, new Float32Array(T * T), w(dout), w(q), w(k), w(v), w(att), B, T, NH, NKV, HD);
      for (const [name, got, want] of [['dq', dq, rq], ['dk', dk, rk], ['dv', dv, rv]] as const) {
        const err = relL2(got, want);
        assert.ok(err < 2 ** -5, `${name}: relative L2 ${err}`);
        if (name !== 'dv') assert.ok(err > 0, `${name}: bf16 rounding of dS should show`);
      }
    });
  }
});

function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-300));
}

const tiny = { vocab: 64, hidden: 32, layers: 2, heads: 4, kvHeads: 2, ffn: 64, seqLen: 16 };

async function lossAndGrads(be: Backend, precision: 'fp32' | 'bf16', tp: number, p: number) {
  const cfg = resolveConfig(tiny, { tp, p });
  const B = 2;
  const T = 16;
  const r = rng(5);
  const inputs = Int32Array.from({ length: B * T }, () => Math.floor(r() * 64));
  const targets = Int32Array.from({ length: B * T }, () => Math.floor(r() * 64));
  const comms = createVirtualGroup(tp);
  const ms = comms.map((c) => {
    const m = new RankModel(cfg, be, c);
    m.initFromSeed(3);
    m.setPrecision(precision);
    return m;
  });
  const losses = await Promise.all(ms.map(async (m) => {
    m.zeroGrad();
    const l = await m.forward(inputs, targets, B, T);
    await m.backward(inputs, targets, 1 / (B * T));
    return l;
  }));
  return { loss: losses[0]!, grads: ms.map((m) => Float32Array.from(m.grads.flat)), bytes: comms[0]!.stats().bytes, models: ms };
}

describe('RankModel in bf16 mode', () => {
  test('refuses a float64 backend with a clear message', () => {
    const m = new RankModel(resolveConfig(tiny, { tp: 1, p: 1 }), createJsBackend('f64'), createVirtualGroup(1)[0]!);
    assert.throws(() => m.setPrecision('bf16'), /bf16 precision needs a float32 backend/);
  });

  test('js, TP 1 and TP 2 p 0.5: close to fp32 (loss 2^-8, gradients 2^-4 relative L2) but not equal; forward block bytes halved', async () => {
    const js = createJsBackend('f32');
    for (const tp of [1, 2]) {
      const a = await lossAndGrads(js, 'fp32', tp, 0.5);
      const b = await lossAndGrads(js, 'bf16', tp, 0.5);
      assert.notEqual(a.loss, b.loss);
      assert.ok(Math.abs(a.loss - b.loss) / a.loss < 2 ** -8, `TP ${tp}: loss ${b.loss} vs ${a.loss}`);
      for (let k = 0; k < tp; k++) {
        const err = relL2(b.grads[k]!, a.grads[k]!);
        assert.ok(err < 2 ** -4 && err > 1e-5, `TP ${tp} rank ${k}: gradient relative L2 ${err}`);
      }
      if (tp > 1) {
        for (const t of ['attn.fwd.shared', 'mlp.fwd.shared', 'embed.fwd']) assert.equal(b.bytes.get(t)! * 2, a.bytes.get(t), t);
        for (const t of ['attn.bwd.shared', 'mlp.bwd.shared', 'embed.bwd']) assert.equal(b.bytes.get(t), a.bytes.get(t), t);
      }
    }
  });

  test('the saved activations are bf16 (GEMM inputs) and the weights used are the rounded masters', async () => {
    const js = createJsBackend('f32');
    const b = await lossAndGrads(js, 'bf16', 1, 1);
    // Changing a master weight below bf16 resolution leaves the bf16 forward unchanged; above it, not.
    const m = b.models[0]!;
    const r = rng(5);
    const inputs = Int32Array.from({ length: 32 }, () => Math.floor(r() * 64));
    const targets = Int32Array.from({ length: 32 }, () => Math.floor(r() * 64));
    const wq = m.w.layers[0]!.wq;
    const l0 = await m.forward(inputs, targets, 2, 16);
    const orig = wq[0]!;
    wq[0] = roundBf16(orig) === orig ? orig : roundBf16(orig); // same bf16 value
    assert.equal(await m.forward(inputs, targets, 2, 16), l0);
    wq[0] = orig * 1.5 + 0.1;
    assert.notEqual(await m.forward(inputs, targets, 2, 16), l0, 'the bf16 copies follow the masters at every forward');
    wq[0] = orig;
    assert.equal(await m.forward(inputs, targets, 2, 16), l0);
  });

  for (const e of allBackends()) {
    if (e.name === 'js') continue;
    test(`${e.name} bf16 vs js bf16, TP 2 p 0.5: loss within 1e-4, gradients within 2^-6 relative L2`, { skip: e.backend ? false : e.reason! }, async () => {
      // Both round the same values to bf16; only the float32 sum order of the GEMMs differs, which
      // moves an occasional rounding to the neighbouring bf16 value.
      const a = await lossAndGrads(createJsBackend('f32'), 'bf16', 2, 0.5);
      const b = await lossAndGrads(e.backend!, 'bf16', 2, 0.5);
      assert.ok(Math.abs(a.loss - b.loss) / a.loss < 1e-4, `loss ${b.loss} vs ${a.loss}`);
      for (let k = 0; k < 2; k++) assert.ok(relL2(b.grads[k]!, a.grads[k]!) < 2 ** -6, `rank ${k}: ${relL2(b.grads[k]!, a.grads[k]!)}`);
    });
  }

  test('bf16 mode gives the same bits on every run (virtual ranks, TP 4 p 0.5)', async () => {
    const js = createJsBackend('f32');
    const cfg = { ...tiny, kvHeads: 4 };
    const run = async () => {
      const c = resolveConfig(cfg, { tp: 4, p: 0.5 });
      const comms = createVirtualGroup(4);
      const ms = comms.map((cm) => { const m = new RankModel(c, js, cm); m.initFromSeed(1); m.setPrecision('bf16'); return m; });
      const inputs = Int32Array.from({ length: 32 }, (_, i) => (i * 11) % 64);
      const l = await Promise.all(ms.map(async (m) => { m.zeroGrad(); const x = await m.forward(inputs, inputs, 2, 16); await m.backward(inputs, inputs, 1 / 32); return x; }));
      return { l, g: ms.map((m) => Float32Array.from(m.grads.flat)) };
    };
    const x = await run();
    const y = await run();
    assert.deepEqual(x, y);
    assert.ok(x.l.every((v) => v === x.l[0]), 'the loss is identical on every rank');
  });
});

describe('bf16 memory and precision choice', () => {
  test('activations per rank: the blocks\' saved activations halve in bf16; the float32 logits and residual stream stay', () => {
    for (const [model, tp, p, B, T] of [
      [{ vocab: 4096, hidden: 128, layers: 4, heads: 8, kvHeads: 4, ffn: 384, seqLen: 128 }, 1, 1, 16, 128],
      [{ vocab: 8192, hidden: 256, layers: 4, heads: 8, kvHeads: 8, ffn: 688, seqLen: 256 }, 2, 0.5, 8, 256],
    ] as const) {
      const cfg = resolveConfig(model, { tp, p });
      const f = rankMemoryBytes(cfg, B, T, 'fp32');
      const h = rankMemoryBytes(cfg, B, T, 'bf16');
      assert.equal(h.logits, f.logits);
      assert.equal(f.logits, B * T * cfg.local.vocab * 4);
      // Per block, fp32 saves 2 residual-width float32 tensors more than bf16 does out of ~3 h + 2 kvd
      // + qd + NH·T + 3 F values per token; everything else is saved in bf16 (half).
      const blocks = (h.activationsSaved - h.logits) / (f.activationsSaved - f.logits);
      assert.ok(blocks > 0.5 && blocks < 0.6, `block activation ratio ${blocks}`);
      const ratio = h.activations / f.activations;
      assert.ok(ratio > 0.5 && ratio < 0.7, `activation ratio ${ratio}`);
      assert.equal(h.params, f.params);
      assert.equal(h.optimizer, f.optimizer);
      assert.equal(f.bf16Weights, 0);
      assert.ok(h.bf16Weights > 0 && h.bf16Weights < h.params / 2);
    }
  });

  test('auto picks bf16 only on bf16 GEMM hardware; a notice says when bf16 runs without it', () => {
    const js = createJsBackend('f32');
    assert.equal(resolvePrecision('auto', js), 'fp32');
    assert.equal(resolvePrecision(undefined, js), 'fp32');
    assert.equal(resolvePrecision('bf16', js), 'bf16');
    const hw = { ...js, bf16Hardware: true } as Backend;
    assert.equal(resolvePrecision('auto', hw), 'bf16');
    assert.match(describePrecision('bf16', js), /no bf16 GEMM hardware/);
    assert.doesNotMatch(describePrecision('bf16', hw), /no bf16 GEMM hardware/);
    assert.equal(describePrecision('fp32', js, 'auto'), 'precision: fp32 (auto: no bf16 GEMM hardware)');
  });
});

describe('generate --precision bf16', () => {
  test('bf16RoundedWeights rounds exactly the GEMM weights', async () => {
    const { bf16RoundedWeights } = await import('../src/cli/infer.js');
    const x = Float32Array.from([0.1, 1 / 3, -2.7182817]);
    const params = new Map([
      ['model.embed_tokens.weight', x], ['model.norm.weight', x], ['lm_head.weight', x],
      ['model.layers.0.self_attn.q_proj.weight', x], ['model.layers.0.mlp.down_proj.weight', x], ['model.layers.0.input_layernorm.weight', x],
    ]);
    const r = bf16RoundedWeights(params);
    for (const [name, v] of r) {
      const gemm = /proj|lm_head/.test(name);
      assert.deepEqual(Array.from(v), Array.from(x, (e) => (gemm ? roundBf16(e) : e)), name);
    }
    assert.notDeepEqual(Array.from(r.get('lm_head.weight')!), Array.from(x));
  });
});

describe('caat gradcheck --precision bf16', () => {
  test('reports the bf16 loss and norms with their difference to fp32 (within bf16 accuracy, not zero); refuses worker threads', async () => {
    const { spawnSync } = await import('node:child_process');
    const path = await import('node:path');
    const { fixturesDir, repoRoot } = await import('./helpers/paths.js');
    const cli = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
    const fx = path.join(fixturesDir, 'tp2_p0.5');
    const args = ['gradcheck', '--model', path.join(fx, 'model.safetensors'), '--tokens', path.join(fx, 'tokens.json'), '--precision', 'bf16'];
    const r = spawnSync(process.execPath, [cli, ...args, '--json'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const o = JSON.parse(r.stdout) as { loss: number; config: { precision: string }; fp32: { loss: number; loss_rel_diff: number; grad_norm_rel_diff: Record<string, number> } };
    assert.equal(o.config.precision, 'bf16');
    assert.ok(o.fp32.loss_rel_diff > 0 && o.fp32.loss_rel_diff < 2 ** -8, `loss difference ${o.fp32.loss_rel_diff}`);
    assert.ok(Math.abs(o.loss - o.fp32.loss) / o.fp32.loss === o.fp32.loss_rel_diff);
    const diffs = Object.values(o.fp32.grad_norm_rel_diff);
    assert.equal(diffs.length, 2 + 2 * 9 + 1);
    assert.ok(diffs.every((d) => d < 2 ** -4), JSON.stringify(o.fp32.grad_norm_rel_diff));
    const w = spawnSync(process.execPath, [cli, ...args, '--workers', '2'], { encoding: 'utf8' });
    assert.notEqual(w.status, 0);
    assert.match(w.stderr, /gradcheck --precision bf16 runs on virtual ranks in one process/);
  });
});
