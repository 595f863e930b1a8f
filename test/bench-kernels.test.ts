/**
 * `caat bench kernels` on tiny shapes (CAAT_BENCH_QUICK=1 / QUICK_SHAPES): the records have the
 * documented fields with positive finite numbers, --json puts exactly one JSON object per line on
 * stdout and nothing else, the human table is printed, and bad arguments fail with a message.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type BenchRecord, formatTable, measure, parseRepeats, QUICK_SHAPES, runKernelBench } from '../src/bench/kernels.js';
import { describeMachine, formatMachine } from '../src/bench/machine.js';
import { loadNativeBackend, nativeGemmResolve, nativeInfo } from '../src/backend/native.js';
import { BackendUnavailableError } from '../src/backend/types.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const OPS = ['gemm', 'gemv', 'softmax', 'rmsnorm', 'swiglu'];
const NATIVE_OPS = [...OPS, 'gemm_impl', 'gemm_bf16'];

function positiveFinite(v: unknown, what: string): void {
  assert.equal(typeof v, 'number', `${what} must be a number, got ${JSON.stringify(v)}`);
  assert.ok(Number.isFinite(v as number) && (v as number) > 0, `${what} must be positive and finite, got ${v}`);
}

function checkRecord(r: Record<string, unknown>, backend: string): void {
  const where = JSON.stringify(r);
  assert.ok((backend === 'native' ? NATIVE_OPS : OPS).includes(r['op'] as string), `op in ${where}`);
  assert.equal(r['backend'], backend, `backend in ${where}`);
  assert.ok(Array.isArray(r['shape']) && (r['shape'] as unknown[]).length >= 2, `shape in ${where}`);
  for (const d of r['shape'] as unknown[]) positiveFinite(d, `shape element in ${where}`);
  const gemmLike = ['gemm', 'gemv', 'gemm_impl', 'gemm_bf16'].includes(r['op'] as string);
  if (gemmLike) {
    positiveFinite(r['gflops'], `gflops in ${where}`);
    assert.equal((r['shape'] as number[]).length, 3, `gemm shape is [M, N, K] in ${where}`);
    if (r['op'] === 'gemv') assert.ok((r['shape'] as number[])[0]! <= 8, `gemv has M ≤ 8 in ${where}`);
  } else {
    positiveFinite(r['gbps'], `gbps in ${where}`);
  }
  positiveFinite(r['median_ms'], `median_ms in ${where}`);
  positiveFinite(r['repeats'], `repeats in ${where}`);
  assert.ok(Number.isInteger(r['repeats']), `repeats is an integer in ${where}`);
  if (r['ratio_vs_c'] !== undefined) {
    positiveFinite(r['ratio_vs_c'], `ratio_vs_c in ${where}`);
    positiveFinite(r['c_gflops'], `c_gflops in ${where}`);
  }
}

test('runKernelBench on js with tiny shapes: every op, positive finite numbers', async () => {
  const streamed: BenchRecord[] = [];
  const { records, skipped } = await runKernelBench({ backends: 'js', repeats: 2, shapes: QUICK_SHAPES, onRecord: (r) => streamed.push(r) });
  assert.deepEqual(skipped, []);
  assert.equal(records.length, QUICK_SHAPES.gemm.length + QUICK_SHAPES.gemv.length + 3);
  assert.deepEqual(streamed, records);
  assert.deepEqual([...new Set(records.map((r) => r.op))].sort(), [...OPS].sort());
  for (const r of records) checkRecord(r as unknown as Record<string, unknown>, 'js');
  const table = formatTable(records);
  assert.match(table[0]!, /backend\s+op\s+shape\s+impl\s+median ms/);
  assert.equal(table.filter((l) => l.startsWith('js ')).length, records.length);
});

const nativeSkip = ((): string | false => {
  try {
    loadNativeBackend();
    return false;
  } catch (e) {
    if (e instanceof BackendUnavailableError) return `native backend unavailable: ${e.reason}`;
    throw e;
  }
})();

test('native: every GEMM implementation per model shape with the chosen one marked, and bf16 rows with the oneDNN path', { skip: nativeSkip }, async () => {
  const { records } = await runKernelBench({ backends: 'native', repeats: 2, shapes: QUICK_SHAPES });
  for (const r of records) checkRecord(r as unknown as Record<string, unknown>, 'native');
  const impls = nativeInfo().gemmImpls;
  const rows = records.filter((r) => r.op === 'gemm_impl');
  for (const [trans, M, N, K] of QUICK_SHAPES.model) {
    const mine = rows.filter((r) => r.trans === trans && r.shape.join() === [M, N, K].join());
    // skinny is a candidate up to 8 rows, and up to 64 rows with op(B) = Bᵀ (the medium-M kernel)
    const want = impls.filter((x) => x !== 'skinny' || M <= 8 || (M <= 64 && trans[1] === 'T'));
    assert.deepEqual(mine.map((r) => r.impl).sort(), [...want].sort(), `${trans} ${M}x${N}x${K}`);
    const chosen = mine.filter((r) => r.chosen);
    assert.equal(chosen.length, 1, `exactly one chosen implementation for ${trans} ${M}x${N}x${K}`);
    assert.equal(chosen[0]!.impl, nativeGemmResolve(trans[0] === 'T', trans[1] === 'T', M, N, K).impl);
    assert.match(String(chosen[0]!.gemm_class), /^(NN|NT|TN|TT)_m/);
  }
  const bf = records.filter((r) => r.op === 'gemm_bf16');
  assert.equal(bf.length, QUICK_SHAPES.model.length);
  const info = nativeInfo().bf16;
  for (const r of bf) {
    assert.equal(r.bf16_path, info.path);
    assert.equal(r.bf16_isa, info.isa);
    positiveFinite(r.ratio_vs_c, 'bf16 ratio_vs_c');
  }
  // the fp32 dispatch rows name the implementation that ran
  for (const r of records.filter((x) => x.op === 'gemm' || x.op === 'gemv')) assert.ok(impls.includes(r.impl as never), JSON.stringify(r));
});

test('caat bench kernels --json: exactly one JSON object per stdout line, nothing else', () => {
  const res = spawnSync(process.execPath, [CLI, 'bench', 'kernels', '--json', '--backend', 'js', '--repeats', '1'], {
    env: { ...process.env, CAAT_BENCH_QUICK: '1' },
    encoding: 'utf8',
    timeout: 20000,
  });
  assert.equal(res.status, 0, `exit status ${res.status}; stderr:\n${res.stderr}`);
  const lines = res.stdout.split('\n');
  assert.equal(lines.pop(), '', 'stdout ends with a newline');
  assert.ok(lines.length >= 7, `expected at least 7 records, got ${lines.length}:\n${res.stdout}`);
  for (const l of lines) {
    let r: unknown;
    assert.doesNotThrow(() => { r = JSON.parse(l); }, `stdout line is not JSON: ${l}`);
    assert.ok(r !== null && typeof r === 'object' && !Array.isArray(r), `stdout line is not an object: ${l}`);
    checkRecord(r as Record<string, unknown>, 'js');
  }
  assert.match(res.stderr, /cpu:/, 'machine description goes to stderr in --json mode');
});

test('caat bench kernels (human): machine description and an aligned table', () => {
  const res = spawnSync(process.execPath, [CLI, 'bench', 'kernels', '--backend', 'js', '--repeats', '1'], {
    env: { ...process.env, CAAT_BENCH_QUICK: '1' },
    encoding: 'utf8',
    timeout: 20000,
  });
  assert.equal(res.status, 0, `exit status ${res.status}; stderr:\n${res.stderr}`);
  assert.match(res.stdout, /^cpu: .*logical cores/m);
  assert.match(res.stdout, /node v\d+/);
  const lines = res.stdout.split('\n');
  const header = lines.findIndex((l) => l.startsWith('backend'));
  assert.ok(header >= 0, `no table header in:\n${res.stdout}`);
  const rows = lines.slice(header + 2).filter((l) => l.startsWith('js '));
  assert.equal(rows.length, 7);
  // aligned: the throughput column ends at the same position on every row
  const ends = rows.map((l) => l.search(/(GFLOP|GB)\/s/) + (l.includes('GFLOP/s') ? 7 : 4));
  assert.equal(new Set(ends).size, 1, `throughput column not aligned:\n${rows.join('\n')}`);
});

test('an unknown backend, a bad --repeats, and an explicitly named unavailable backend are errors', async (t) => {
  const run = (args: string[], env: Record<string, string> = {}): ReturnType<typeof spawnSync> =>
    spawnSync(process.execPath, [CLI, 'bench', 'kernels', ...args], { env: { ...process.env, CAAT_BENCH_QUICK: '1', ...env }, encoding: 'utf8', timeout: 20000 });
  const unknown = run(['--backend', 'cuda']);
  assert.notEqual(unknown.status, 0);
  assert.match(String(unknown.stderr), /unknown backend "cuda"/);
  assert.equal(String(unknown.stdout).includes('{'), false);

  assert.throws(() => parseRepeats('0'), /--repeats must be a positive integer/);
  assert.throws(() => parseRepeats('2.5'), /--repeats/);
  assert.throws(() => parseRepeats('x'), /--repeats/);
  assert.equal(parseRepeats('3'), 3);

  await t.test('named unavailable backend', () => {
    // The native addon made unavailable for this run by pointing its loader at an empty folder.
    const empty = mkdtempSync(join(tmpdir(), 'caat-no-addon-'));
    const res = run(['--backend', 'native', '--json'], { CAAT_NATIVE_ADDON_DIR: empty });
    assert.notEqual(res.status, 0);
    assert.match(String(res.stderr), /backend native is unavailable: .*caat-no-addon-/);
    assert.equal(String(res.stdout), '');
  });
});

test('measure: warm-up then timed repeats; one over-budget call is reported alone', () => {
  let calls = 0;
  const fast = measure(() => { calls++; }, 5, 1000);
  assert.deepEqual([fast.repeats, fast.warmup, calls], [5, 1, 6]);
  const spin = (ms: number) => (): void => {
    const t = performance.now();
    while (performance.now() - t < ms) { /* busy */ }
  };
  const slow = measure(spin(6), 5, 3);
  assert.equal(slow.repeats, 1);
  assert.equal(slow.warmup, 0);
  assert.ok(slow.medianMs >= 6);
  const paired = measure(() => {}, 3, 1000, () => 2.5);
  assert.equal(paired.pairedMedianMs, 2.5);
  assert.equal(paired.repeats, 3);
  const capped = measure(spin(4), 50, 20);
  assert.equal(capped.warmup, 1);
  assert.ok(capped.repeats >= 1 && capped.repeats <= 4, `budget 20 ms, 4 ms calls: ${capped.repeats} repeats`);
});

test('machine description', () => {
  const m = describeMachine();
  assert.ok(m.cores >= 1);
  assert.ok(m.cpuModel.length > 0);
  assert.equal(m.node, process.version);
  const lines = formatMachine(m);
  assert.ok(lines.some((l) => l.includes('OPENBLAS_CORETYPE=')));
});
