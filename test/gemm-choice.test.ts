/**
 * GEMM chosen by measurement (src/backend/gemm-choice.ts) and the native bf16 kernels:
 * - every float32 GEMM implementation built into the addon agrees with the js reference;
 * - the choice is a pure function of the cache: a cached entry is used as it is, and not rewritten;
 * - a corrupt or foreign cache file is ignored with a one-line notice and rewritten;
 * - CAAT_GEMM forces one implementation everywhere (and bad values are errors);
 * - two ranks whose hosts' caches disagree compute identical bits (rank 0's choice is adopted);
 * - native toBf16/fromBf16/gemmBf16 against the reference (bitwise on the widening path).
 * Skipped, with the reason, when the addon is not built.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { bf16Bits, bf16Value, gemmBf16ViaF32 } from '../src/backend/bf16.js';
import { gemmCachePath, gemmOverride, pickFastest, readGemmCache } from '../src/backend/gemm-choice.js';
import { createJsBackend } from '../src/backend/js.js';
import { loadNativeBackend, nativeGemmResolve, nativeInfo, setNativeBf16Path, setNativeGemmPath } from '../src/backend/native.js';
import { type Backend, BackendUnavailableError } from '../src/backend/types.js';

function tryLoad(): Backend | string {
  try {
    return loadNativeBackend();
  } catch (e) {
    if (e instanceof BackendUnavailableError) return e.reason;
    throw e;
  }
}
const native = tryLoad();
const skip = typeof native === 'string' ? `native backend unavailable: ${native}` : false;
const js = createJsBackend('f32');
const url = (p: string): string => JSON.stringify(new URL(p, import.meta.url).href);

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = (n: number, r: () => number): Float32Array => Float32Array.from({ length: n }, () => r() * 2 - 1);

function normErr(a: Float32Array, b: Float32Array): number {
  let m = 0;
  let d = 0;
  for (let i = 0; i < b.length; i++) {
    assert.equal(Number.isNaN(a[i]), Number.isNaN(b[i]), `NaN mismatch at ${i}`);
    if (Number.isNaN(b[i])) continue;
    m = Math.max(m, Math.abs(b[i]!));
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
  }
  return m === 0 ? d : d / m;
}

/** Run a module snippet in a child with `env` added; returns its parsed last stdout line and stderr. */
function child(code: string, env: Record<string, string | undefined>): { out: Record<string, unknown>; stderr: string } {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60000 });
  assert.equal(r.status, 0, `child failed (${r.status}):\n${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  return { out: JSON.parse(lines[lines.length - 1]!) as Record<string, unknown>, stderr: r.stderr };
}

const CHOICE_CHILD = `
  import { nativeGemmChoice, nativeGemmTables } from ${url('../src/backend/native.js')};
  const c = nativeGemmChoice(1);
  console.log(JSON.stringify({ source: c.source, choice: c.choice, summary: c.summary, tables: nativeGemmTables() }));`;

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'caat-gemm-'));
}

describe('GEMM implementations', { skip }, () => {
  const impls = typeof native === 'string' ? [] : nativeInfo().gemmImpls;

  test('the addon has a skinny kernel and at least one library GEMM; oneDNN brings dnnl_sgemm and the matmul primitive', () => {
    assert.ok(impls.includes('skinny'));
    const libs = nativeInfo().libraries;
    assert.equal(impls.includes('onednn'), libs.onednn !== null);
    assert.equal(impls.includes('matmul'), libs.onednn !== null);
    assert.equal(impls.includes('openblas'), libs.openblas !== null);
  });

  for (const impl of ['onednn', 'matmul', 'openblas', 'skinny'] as const) {
    test(`${impl}: agrees with js on every transpose, strides, offsets, alpha, beta 0 (NaN in C) and 1`, { skip: impls.includes(impl) ? false : `${impl} not built in` }, () => {
      const be = loadNativeBackend({ gemm: impl });
      assert.match(be.description, new RegExp(`gemm ${impl}`));
      const r = rng(0x5eed);
      for (const [M, N, K] of [[1, 37, 19], [2, 300, 70], [8, 1030, 530], [9, 64, 65], [40, 50, 60], [130, 257, 300], [3, 5, 0]] as const) {
        for (const tA of [false, true]) {
          for (const tB of [false, true]) {
            for (const [alpha, beta] of [[1, 0], [0.5, 1], [-2, 0.25]] as const) {
              const [offA, offB, offC] = [3, 1, 2];
              const lda = (tA ? M : K) + 2;
              const ldb = (tB ? K : N) + 1;
              const ldc = N + 3;
              const A = rand(offA + (tA ? K : M) * lda, r);
              const B = rand(offB + (tB ? N : K) * ldb, r);
              const C0 = rand(offC + M * ldc + 4, r);
              if (beta === 0) for (let i = 0; i < C0.length; i += 2) C0[i] = NaN;
              const want = C0.slice();
              const got = C0.slice();
              js.gemm(tA, tB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, want, offC, ldc);
              be.gemm(tA, tB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, got, offC, ldc);
              const e = normErr(got, want);
              assert.ok(e < 3e-6, `${impl}: M=${M} N=${N} K=${K} tA=${tA} tB=${tB} alpha=${alpha} beta=${beta}: error ${e}`);
            }
          }
        }
      }
    });
  }

  test('a forced implementation runs for every shape class; the default follows the table', () => {
    for (const impl of impls.filter((x) => x !== 'skinny')) {
      for (const [M, N, K] of [[1, 512, 512], [8, 64, 64], [2048, 1376, 512]] as const) {
        assert.equal(nativeGemmResolve(false, true, M, N, K, { impl }).impl, impl);
      }
    }
    const r = nativeGemmResolve(false, true, 2048, 1376, 512);
    assert.equal(r.cls, 'NT_m65+_large');
    assert.ok(impls.includes(r.impl));
    assert.equal(nativeGemmResolve(true, false, 4, 10, 10).cls, 'TN_m2-8_small');
    try {
      setNativeGemmPath('skinny');
      assert.equal(nativeGemmResolve(false, false, 500, 500, 500).impl, 'skinny');
    } finally {
      setNativeGemmPath('auto');
    }
  });
});

describe('GEMM choice: cache, override, log', { skip }, () => {
  test('no cache: measured once, written, then read back unchanged (the choice is a function of the cache)', () => {
    const dir = tmp();
    const path = join(dir, 'sub', 'gemm.json');
    const first = child(CHOICE_CHILD, { CAAT_GEMM_CACHE: path, CAAT_GEMM: undefined, CAAT_NATIVE_BLAS: undefined });
    assert.equal(first.out['source'], 'measured');
    assert.match(String(first.out['summary']), /^gemm: \w+ for \d+ shape class(es)?.*\(measured, cached in .*gemm\.json\)$/);
    const { file, notice } = readGemmCache(path);
    assert.equal(notice, undefined);
    const entries = Object.values(file!.entries);
    assert.equal(entries.length, 1);
    assert.deepEqual(entries[0]!.choice, first.out['choice']);
    // every class has GFLOP/s for each candidate, and the choice is the fastest of them
    const gf = entries[0]!.gflops!;
    for (const [cls, impl] of Object.entries(entries[0]!.choice)) {
      const best = Math.max(...Object.values(gf[cls]!));
      assert.equal(gf[cls]![impl], best, `${cls}: ${impl} is not the fastest of ${JSON.stringify(gf[cls])}`);
    }
    // a hand-edited entry (every class on another candidate where one exists) is used as it is
    const edited = JSON.parse(readFileSync(path, 'utf8')) as { entries: Record<string, { choice: Record<string, string>; gflops: Record<string, Record<string, number>> }> };
    const e = Object.values(edited.entries)[0]!;
    for (const cls of Object.keys(e.choice)) {
      const others = Object.keys(e.gflops[cls]!).filter((x) => x !== e.choice[cls]).sort();
      if (others.length) e.choice[cls] = others[0]!;
    }
    writeFileSync(path, JSON.stringify(edited));
    const before = readFileSync(path, 'utf8');
    const mtime = statSync(path).mtimeMs;
    for (let i = 0; i < 2; i++) {
      const again = child(CHOICE_CHILD, { CAAT_GEMM_CACHE: path, CAAT_GEMM: undefined, CAAT_NATIVE_BLAS: undefined });
      assert.equal(again.out['source'], 'cached');
      assert.deepEqual(again.out['choice'], e.choice);
      assert.doesNotMatch(again.stderr, /ignoring/);
    }
    assert.equal(readFileSync(path, 'utf8'), before);
    assert.equal(statSync(path).mtimeMs, mtime);
  });

  test('a corrupt, foreign or unfitting cache file is ignored with one notice and rewritten', () => {
    const dir = tmp();
    for (const [label, content] of [
      ['not JSON', '{"format": "caatnet-gemm-ch'],
      ['foreign', JSON.stringify({ hello: 'world' })],
      ['newer format', JSON.stringify({ format: 'caatnet-gemm-choice', version: 99, entries: {} })],
    ] as const) {
      const path = join(dir, `${label.replace(/ /g, '-')}.json`);
      writeFileSync(path, content);
      const r = child(CHOICE_CHILD, { CAAT_GEMM_CACHE: path, CAAT_GEMM: undefined, CAAT_NATIVE_BLAS: undefined });
      assert.equal(r.out['source'], 'measured', label);
      const notices = r.stderr.split('\n').filter((l) => /ignoring the cache/.test(l));
      assert.equal(notices.length, 1, `${label}: ${r.stderr}`);
      assert.ok(notices[0]!.includes(path), notices[0]);
      const back = readGemmCache(path);
      assert.equal(back.notice, undefined, `${label}: rewritten file is valid`);
      assert.equal(Object.keys(back.file!.entries).length, 1);
      assert.ok(!existsSync(`${path}.tmp`));
    }
    // an entry naming an implementation this addon lacks is a miss: measured again, no notice
    const path = join(dir, 'unfit.json');
    child(CHOICE_CHILD, { CAAT_GEMM_CACHE: path, CAAT_GEMM: undefined, CAAT_NATIVE_BLAS: undefined });
    const f = JSON.parse(readFileSync(path, 'utf8')) as { entries: Record<string, { choice: Record<string, string> }> };
    const ent = Object.values(f.entries)[0]!;
    ent.choice['NN_m65+_large'] = 'skinny'; // not a candidate for M > 8
    writeFileSync(path, JSON.stringify(f));
    const r = child(CHOICE_CHILD, { CAAT_GEMM_CACHE: path, CAAT_GEMM: undefined, CAAT_NATIVE_BLAS: undefined });
    assert.equal(r.out['source'], 'measured');
    assert.notEqual((Object.values(readGemmCache(path).file!.entries)[0]!.choice)['NN_m65+_large'], 'skinny');
  });

  test('CAAT_GEMM forces one implementation without measuring; bad values are errors', () => {
    const impls = nativeInfo().gemmImpls.filter((x) => x !== 'skinny');
    const dir = tmp();
    for (const impl of impls) {
      const path = join(dir, `${impl}.json`);
      const r = child(CHOICE_CHILD, { CAAT_GEMM_CACHE: path, CAAT_GEMM: impl, CAAT_NATIVE_BLAS: undefined });
      assert.equal(r.out['source'], 'override');
      assert.ok(Object.values(r.out['choice'] as Record<string, string>).every((v) => v === impl));
      assert.match(String(r.out['summary']), new RegExp(`^gemm: ${impl} for 32 shape classes \\(forced by CAAT_GEMM\\)`));
      assert.equal(existsSync(path), false, 'an override measures nothing and writes no cache');
    }
    assert.equal(gemmOverride({ CAAT_GEMM: 'auto' }), undefined);
    assert.equal(gemmOverride({ CAAT_GEMM: ' OpenBLAS ' }), 'openblas');
    assert.equal(gemmOverride({ CAAT_NATIVE_BLAS: 'onednn' }), 'onednn');
    assert.throws(() => gemmOverride({ CAAT_GEMM: 'mkl' }), /CAAT_GEMM="mkl" is not one of onednn, matmul, openblas, auto/);
    assert.throws(() => gemmOverride({ CAAT_NATIVE_BLAS: 'matmul' }), /CAAT_NATIVE_BLAS="matmul"/);
  });

  test('the cache folder: CAAT_GEMM_CACHE, else XDG_CACHE_HOME, else ~/.cache', () => {
    assert.equal(gemmCachePath({ CAAT_GEMM_CACHE: '/x/y.json', XDG_CACHE_HOME: '/c' }), '/x/y.json');
    assert.equal(gemmCachePath({ XDG_CACHE_HOME: '/c' }), '/c/caatnet/gemm-choice.json');
    assert.match(gemmCachePath({}), /\/\.cache\/caatnet\/gemm-choice\.json$/);
  });

  test('pickFastest takes the highest GFLOP/s, ties to the first in the fixed order', () => {
    const classes = [{ name: 'a', transA: false, transB: false, M: 1, N: 1, K: 1, candidates: [] }, { name: 'b', transA: false, transB: false, M: 1, N: 1, K: 1, candidates: [] }];
    assert.deepEqual(pickFastest({ a: { openblas: 5, onednn: 4, skinny: 6 }, b: { matmul: 3, onednn: 3 } }, classes), { a: 'skinny', b: 'onednn' });
  });

  test('caat bench kernels logs the choice once (backend line, then the gemm line)', () => {
    const dir = tmp();
    const code = `
      import { selectBackend } from ${url('../src/backend/index.js')};
      selectBackend('native'); selectBackend('native');
      console.log('{}');`;
    const r = child(code, { CAAT_GEMM_CACHE: join(dir, 'g.json'), CAAT_GEMM: 'openblas', CAAT_NATIVE_BLAS: undefined });
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.filter((l) => l.startsWith('caatnet: gemm: ')).length, 1, r.stderr);
    assert.match(r.stderr, /caatnet: backend native .*\ncaatnet: gemm: openblas for 32 shape classes \(forced by CAAT_GEMM\)/);
  });
});

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

describe('GEMM choice across the ranks of a job', { skip }, () => {
  test('two TCP ranks whose caches disagree adopt rank 0 choice and compute identical bits', async () => {
    const dir = tmp();
    const cacheA = join(dir, 'a.json');
    const cacheB = join(dir, 'b.json');
    child(CHOICE_CHILD, { CAAT_GEMM_CACHE: cacheA, CAAT_GEMM: undefined, CAAT_NATIVE_BLAS: undefined });
    // B: same key, every class on another candidate where there is one
    const f = JSON.parse(readFileSync(cacheA, 'utf8')) as { entries: Record<string, { choice: Record<string, string>; gflops: Record<string, Record<string, number>> }> };
    const e = Object.values(f.entries)[0]!;
    let changed = 0;
    for (const cls of Object.keys(e.choice)) {
      const others = Object.keys(e.gflops[cls]!).filter((x) => x !== e.choice[cls] && x !== 'skinny').sort();
      if (others.length) {
        e.choice[cls] = others[0]!;
        changed++;
      }
    }
    assert.ok(changed >= 8, `only ${changed} classes have a second candidate`);
    writeFileSync(cacheB, JSON.stringify(f));
    const port = await freePort();
    const code = (rank: number): string => `
      import { createHash } from 'node:crypto';
      import { joinRanks } from ${url('../src/train/process-host.js')};
      import { loadNativeBackend, nativeGemmTables } from ${url('../src/backend/native.js')};
      const be = loadNativeBackend();
      let s = 7;
      const rand = (n) => Float32Array.from({ length: n }, () => { s = (Math.imul(s, 1103515245) + 12345) >>> 0; return s / 2 ** 31 - 1; });
      const bits = () => {
        const h = createHash('sha256');
        s = 7;
        for (const [tA, tB, M, N, K] of [[false, true, 256, 1376, 512], [false, false, 256, 512, 1376], [true, false, 512, 1376, 256], [false, true, 8, 1376, 512], [false, true, 1, 8192, 512], [false, true, 40, 300, 500]]) {
          const A = rand(M * K), B = rand(N * K), C = new Float32Array(M * N);
          be.gemm(tA, tB, M, N, K, 1, A, 0, tA ? M : K, B, 0, tB ? K : N, 0, C, 0, N);
          h.update(Buffer.from(C.buffer));
        }
        return h.digest('hex');
      };
      const before = { tables: nativeGemmTables(), bits: bits() };
      const p = { launch: { launcher: 'torchrun', rank: ${rank}, worldSize: 2, localRank: ${rank}, masterAddr: '127.0.0.1', masterPort: ${port}, masterSource: 'test', token: 'gemm-test', tokenLabel: 'test' }, timeoutMs: 30000 };
      const comms = await joinRanks(p, [${rank}], 2, { test: 'gemm-choice' }, () => {});
      const after = { tables: nativeGemmTables(), bits: bits() };
      await Promise.all(comms.map((c) => c.close()));
      console.log(JSON.stringify({ before, after }));`;
    const run = (rank: number, cache: string): Promise<{ before: { tables: unknown; bits: string }; after: { tables: unknown; bits: string } }> =>
      new Promise((resolve, reject) => {
        const env: NodeJS.ProcessEnv = { ...process.env, CAAT_GEMM_CACHE: cache };
        delete env['CAAT_GEMM'];
        delete env['CAAT_NATIVE_BLAS'];
        const c = spawn(process.execPath, ['--input-type=module', '-e', code(rank)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        c.stdout.on('data', (d: Buffer) => (out += d.toString()));
        c.stderr.on('data', (d: Buffer) => (err += d.toString()));
        const timer = setTimeout(() => c.kill('SIGKILL'), 60000);
        c.on('close', (status) => {
          clearTimeout(timer);
          if (status !== 0) reject(new Error(`rank ${rank} exited ${status}:\n${err}`));
          else resolve(JSON.parse(out.trim().split('\n').pop()!));
        });
      });
    const [r0, r1] = await Promise.all([run(0, cacheA), run(1, cacheB)]);
    assert.notDeepEqual(r1.before.tables, r0.before.tables, 'the two hosts start from different choices');
    assert.notEqual(r1.before.bits, r0.before.bits, 'and those choices give different bits');
    assert.deepEqual(r0.after.tables, r0.before.tables, 'rank 0 keeps its own choice');
    assert.deepEqual(r1.after.tables, r0.before.tables, "rank 1 adopts rank 0's");
    assert.equal(r1.after.bits, r0.after.bits, 'identical bits after joining');
    assert.equal(r0.after.bits, r0.before.bits);
  });
});

describe('native bf16 kernels', { skip }, () => {
  test('toBf16 matches the reference on every kind of bit pattern (ties, NaN payloads, Inf, subnormals)', () => {
    const be = native as Backend;
    const r = rng(99);
    const n = 100003;
    const u = new Uint32Array(n).map(() => Math.floor(r() * 2 ** 32));
    const special = [0x3f808000, 0x3f818000, 0x3f807fff, 0x7f7fffff, 0x7f800000, 0xff800000, 0x7f800001, 0xffc00001, 0x7fffffff, 0x00000001, 0x80008000, 0x00018000, 0, 0x80000000];
    u.set(special);
    for (let i = special.length; i < n; i += 7) u[i] = (u[i]! & 0xffff0000) | 0x8000; // exact ties
    const x = new Float32Array(u.buffer);
    const h = new Uint16Array(n);
    be.toBf16(h, x, n);
    for (let i = 0; i < n; i++) {
      if (Number.isNaN(x[i]!)) assert.ok(Number.isNaN(bf16Value(h[i]!)), `NaN at ${i} became ${h[i]!.toString(16)}`);
      else assert.equal(h[i], bf16Bits(x[i]!), `element ${i} (bits ${u[i]!.toString(16)})`);
    }
    const w = new Float32Array(n);
    be.fromBf16(w, h, n);
    const wu = new Uint32Array(w.buffer);
    for (let i = 0; i < n; i++) assert.equal(wu[i], (h[i]! << 16) >>> 0);
  });

  test('bf16Hardware and nativeInfo().bf16 describe the path', () => {
    const be = native as Backend;
    const b = nativeInfo().bf16;
    assert.ok(b.path === 'matmul' || b.path === 'widen');
    assert.equal(be.bf16Hardware, b.path === 'matmul' && b.hardware);
    if (nativeInfo().libraries.onednn) assert.match(String(b.isa), /^(sse41|avx|avx2|avx2_vnni|avx512_\w+)$/);
    if (b.hardware) assert.match(String(b.impl), /./);
  });

  test('gemmBf16 on the widening path: the same bits as gemmBf16ViaF32 over the same backend gemm', () => {
    // The library GEMMs give the same bits wherever the operands sit; the skinny kernel's sums depend
    // on the 64-byte alignment of B (it peels to it), which JS cannot control, so it is kept out here.
    const be = native as Backend;
    const r = rng(12);
    try {
      setNativeBf16Path('widen');
      setNativeGemmPath('blas');
      for (const [tA, tB] of [[false, false], [false, true], [true, false], [true, true]] as const) {
        for (const [M, N, K] of [[1, 300, 512], [8, 64, 48], [37, 19, 70], [256, 1376, 512]] as const) {
          const lda = (tA ? M : K) + 3;
          const ldb = (tB ? K : N) + 2;
          const ldc = N + 1;
          const A = new Uint16Array(2 + (tA ? K : M) * lda).map(() => bf16Bits(r() * 2 - 1));
          const B = new Uint16Array(1 + (tB ? N : K) * ldb).map(() => bf16Bits(r() * 2 - 1));
          const C0 = rand(M * ldc, r);
          const got = C0.slice();
          const want = C0.slice();
          be.gemmBf16(tA, tB, M, N, K, 0.5, A, 2, lda, B, 1, ldb, 1, got, 0, ldc);
          gemmBf16ViaF32(be.gemm, tA, tB, M, N, K, 0.5, A, 2, lda, B, 1, ldb, 1, want, 0, ldc);
          assert.deepEqual(new Uint32Array(got.buffer), new Uint32Array(want.buffer), `${tA}${tB} ${M}x${N}x${K}`);
        }
      }
    } finally {
      setNativeBf16Path('auto');
      setNativeGemmPath('auto');
    }
  });

  test('gemmBf16 through the oneDNN bf16 matmul primitive: within the float32 summation bound of the exact result', {
    skip: typeof native === 'string' || nativeInfo().bf16.impl === null ? 'oneDNN has no bf16 matmul on this CPU' : false,
  }, () => {
    const be = native as Backend;
    const r = rng(13);
    try {
      setNativeBf16Path('matmul');
      for (const [tA, tB] of [[false, false], [false, true], [true, false]] as const) {
        for (const [M, N, K] of [[1, 300, 512], [8, 64, 48], [64, 128, 256]] as const) {
          const A = new Uint16Array(M * K).map(() => bf16Bits(r() * 2 - 1));
          const B = new Uint16Array(N * K).map(() => bf16Bits(r() * 2 - 1));
          const C = new Float32Array(M * N);
          be.gemmBf16(tA, tB, M, N, K, 1, A, 0, tA ? M : K, B, 0, tB ? K : N, 0, C, 0, N);
          // |error| ≤ K·2⁻²³·Σ|a·b| (float32 sums in any order; products are exact)
          for (let i = 0; i < M; i++) {
            for (let j = 0; j < N; j++) {
              let exact = 0;
              let abs = 0;
              for (let p = 0; p < K; p++) {
                const a = bf16Value(A[tA ? p * M + i : i * K + p]!);
                const b = bf16Value(B[tB ? j * K + p : p * N + j]!);
                exact += a * b;
                abs += Math.abs(a * b);
              }
              assert.ok(Math.abs(C[i * N + j]! - exact) <= K * 2 ** -23 * abs, `${tA}${tB} ${M}x${N}x${K} (${i},${j})`);
            }
          }
        }
      }
    } finally {
      setNativeBf16Path('auto');
    }
  });
});

