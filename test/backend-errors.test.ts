/**
 * Argument validation on every available backend: inconsistent shapes and too-short buffers throw a
 * KernelError whose message starts with the kernel's name and names the offending dimension or
 * buffer, and a call that throws leaves every buffer untouched. Unavailable backends are reported as
 * skipped with the reason.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createJsBackend } from '../src/backend/index.js';
import { type Backend, KernelError } from '../src/backend/types.js';
import { allBackends, skipUnless } from './helpers/backends.js';

type AnyArray = Float32Array | Float64Array | Int32Array;

interface ErrorCase {
  kernel: keyof Backend & string;
  /** What is wrong, for the test name. */
  desc: string;
  /** Words the message must contain (whole words: "k" does not match "kvBatchStride"). */
  mentions: string[];
  /** The arguments; F is the float array type the backend works in. */
  args: (F: Float32ArrayConstructor | Float64ArrayConstructor) => unknown[];
}

const i32 = (n: number): Int32Array => new Int32Array(n);

const CASES: ErrorCase[] = [
  // gemm(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc)
  { kernel: 'gemm', desc: 'lda < K', mentions: ['lda'], args: (F) => [false, false, 4, 5, 6, 1, new F(24), 0, 5, new F(30), 0, 5, 0, new F(20), 0, 5] },
  { kernel: 'gemm', desc: 'lda < M with transA', mentions: ['lda'], args: (F) => [true, false, 4, 5, 6, 1, new F(24), 0, 3, new F(30), 0, 5, 0, new F(20), 0, 5] },
  { kernel: 'gemm', desc: 'ldb < N', mentions: ['ldb'], args: (F) => [false, false, 4, 5, 6, 1, new F(24), 0, 6, new F(30), 0, 4, 0, new F(20), 0, 5] },
  { kernel: 'gemm', desc: 'ldb < K with transB', mentions: ['ldb'], args: (F) => [false, true, 4, 5, 6, 1, new F(24), 0, 6, new F(30), 0, 5, 0, new F(20), 0, 5] },
  { kernel: 'gemm', desc: 'ldc < N', mentions: ['ldc'], args: (F) => [false, false, 4, 5, 6, 1, new F(24), 0, 6, new F(30), 0, 5, 0, new F(20), 0, 4] },
  { kernel: 'gemm', desc: 'C too short', mentions: ['C'], args: (F) => [false, false, 4, 5, 6, 1, new F(24), 0, 6, new F(30), 0, 5, 0, new F(19), 0, 5] },
  { kernel: 'gemm', desc: 'C too short for its offset', mentions: ['C'], args: (F) => [false, false, 4, 5, 6, 1, new F(24), 0, 6, new F(30), 0, 5, 0, new F(20), 1, 5] },
  { kernel: 'gemm', desc: 'C too short for ldc', mentions: ['C'], args: (F) => [false, false, 4, 5, 6, 1, new F(24), 0, 6, new F(30), 0, 5, 0, new F(20), 0, 6] },
  { kernel: 'gemm', desc: 'A too short for its offset', mentions: ['A'], args: (F) => [false, false, 4, 5, 6, 1, new F(24), 2, 6, new F(30), 0, 5, 0, new F(20), 0, 5] },
  { kernel: 'gemm', desc: 'B too short (transB)', mentions: ['B'], args: (F) => [false, true, 4, 5, 6, 1, new F(24), 0, 6, new F(29), 0, 6, 0, new F(20), 0, 5] },
  { kernel: 'gemm', desc: 'negative M', mentions: ['M'], args: (F) => [false, false, -1, 5, 6, 1, new F(24), 0, 6, new F(30), 0, 5, 0, new F(20), 0, 5] },
  { kernel: 'gemm', desc: 'non-integer K', mentions: ['K'], args: (F) => [false, false, 4, 5, 2.5, 1, new F(24), 0, 6, new F(30), 0, 5, 0, new F(20), 0, 5] },
  { kernel: 'gemm', desc: 'negative offC', mentions: ['offC'], args: (F) => [false, false, 4, 5, 6, 1, new F(24), 0, 6, new F(30), 0, 5, 0, new F(20), -1, 5] },
  { kernel: 'gemm', desc: 'mixed element types (B)', mentions: ['B'], args: (F) => [false, false, 4, 5, 6, 1, new F(24), 0, 6, other(F, 30), 0, 5, 0, new F(20), 0, 5] },

  // attentionForward(out, att, q, k, v, B, Tq, Tk, NH, NKV, HD, kvBatchStride)
  { kernel: 'attentionForward', desc: 'NH not a multiple of NKV', mentions: ['NH', 'NKV'], args: (F) => [new F(1 * 4 * 6 * 2), new F(6 * 16), new F(4 * 6 * 2), new F(4 * 4 * 2), new F(4 * 4 * 2), 1, 4, 4, 6, 4, 2, 32] },
  { kernel: 'attentionForward', desc: 'Tq > Tk', mentions: ['Tq', 'Tk'], args: (F) => [new F(64), new F(64), new F(64), new F(64), new F(64), 1, 4, 3, 2, 2, 2, 12] },
  { kernel: 'attentionForward', desc: 'kvBatchStride < Tk·NKV·HD', mentions: ['kvBatchStride'], args: (F) => [new F(64), new F(64), new F(64), new F(64), new F(64), 2, 2, 2, 2, 2, 2, 7] },
  { kernel: 'attentionForward', desc: 'k too short for the KV cache stride', mentions: ['k'], args: (F) => [new F(2 * 2 * 4), new F(2 * 2 * 2 * 4), new F(2 * 2 * 4), new F(40 + 7), new F(48), 2, 2, 4, 2, 1, 2, 40] },
  { kernel: 'attentionForward', desc: 'v too short', mentions: ['v'], args: (F) => [new F(16), new F(32), new F(16), new F(16), new F(15), 1, 4, 4, 2, 2, 2, 16] },
  { kernel: 'attentionForward', desc: 'att too short', mentions: ['att'], args: (F) => [new F(16), new F(31), new F(16), new F(16), new F(16), 1, 4, 4, 2, 2, 2, 16] },
  { kernel: 'attentionForward', desc: 'out too short', mentions: ['out'], args: (F) => [new F(15), new F(32), new F(16), new F(16), new F(16), 1, 4, 4, 2, 2, 2, 16] },
  { kernel: 'attentionForward', desc: 'HD = 0', mentions: ['HD'], args: (F) => [new F(16), new F(32), new F(16), new F(16), new F(16), 1, 4, 4, 2, 2, 0, 16] },
  { kernel: 'attentionForward', desc: 'mixed element types (v)', mentions: ['v'], args: (F) => [new F(16), new F(32), new F(16), new F(16), other(F, 16), 1, 4, 4, 2, 2, 2, 16] },

  // attentionBackward(dq, dk, dv, scratch, dout, q, k, v, att, B, T, NH, NKV, HD)
  { kernel: 'attentionBackward', desc: 'scratch shorter than T·T', mentions: ['scratch'], args: (F) => [new F(16), new F(16), new F(16), new F(15), new F(16), new F(16), new F(16), new F(16), new F(32), 1, 4, 2, 2, 2] },
  { kernel: 'attentionBackward', desc: 'NH not a multiple of NKV', mentions: ['NH', 'NKV'], args: (F) => [new F(64), new F(64), new F(64), new F(64), new F(64), new F(64), new F(64), new F(64), new F(64), 1, 2, 3, 2, 2] },
  { kernel: 'attentionBackward', desc: 'dv too short', mentions: ['dv'], args: (F) => [new F(16), new F(16), new F(15), new F(16), new F(16), new F(16), new F(16), new F(16), new F(32), 1, 4, 2, 2, 2] },
  { kernel: 'attentionBackward', desc: 'att too short', mentions: ['att'], args: (F) => [new F(16), new F(16), new F(16), new F(16), new F(16), new F(16), new F(16), new F(16), new F(31), 1, 4, 2, 2, 2] },

  // softmax
  { kernel: 'softmaxForward', desc: 'causalQ does not divide rows', mentions: ['causalQ'], args: (F) => [new F(30), new F(30), 6, 5, 1, 4] },
  { kernel: 'softmaxForward', desc: 'causalQ > cols', mentions: ['causalQ'], args: (F) => [new F(30), new F(30), 6, 5, 1, 6] },
  { kernel: 'softmaxForward', desc: 'out too short', mentions: ['out'], args: (F) => [new F(29), new F(30), 6, 5, 1, 0] },
  { kernel: 'softmaxForward', desc: 'mixed element types (out)', mentions: ['out'], args: (F) => [other(F, 30), new F(30), 6, 5, 1, 0] },
  { kernel: 'softmaxBackward', desc: 'dout too short', mentions: ['dout'], args: (F) => [new F(30), new F(29), new F(30), 6, 5, 1] },

  // rmsnorm
  { kernel: 'rmsnormForward', desc: 'w shorter than cols', mentions: ['w'], args: (F) => [new F(30), new F(6), new F(30), new F(4), 6, 5, 1e-5] },
  { kernel: 'rmsnormForward', desc: 'rstd shorter than rows', mentions: ['rstd'], args: (F) => [new F(30), new F(5), new F(30), new F(5), 6, 5, 1e-5] },
  { kernel: 'rmsnormForward', desc: 'mixed element types (w)', mentions: ['w'], args: (F) => [new F(30), new F(6), new F(30), other(F, 5), 6, 5, 1e-5] },
  { kernel: 'rmsnormBackward', desc: 'dw shorter than cols', mentions: ['dw'], args: (F) => [new F(30), new F(4), new F(30), new F(30), new F(5), new F(6), 6, 5] },
  { kernel: 'rmsnormBackward', desc: 'x too short', mentions: ['x'], args: (F) => [new F(30), new F(5), new F(30), new F(29), new F(5), new F(6), 6, 5] },

  // rope(x, cos, sin, B, T, H, HD, pos0)
  { kernel: 'ropeForward', desc: 'odd HD', mentions: ['HD'], args: (F) => [new F(30), new F(30), new F(30), 1, 2, 3, 5, 0] },
  { kernel: 'ropeForward', desc: 'cos too short for pos0 + T', mentions: ['cos'], args: (F) => [new F(2 * 3 * 4), new F(8), new F(20), 1, 2, 3, 4, 3] },
  { kernel: 'ropeForward', desc: 'x too short', mentions: ['x'], args: (F) => [new F(23), new F(20), new F(20), 1, 2, 3, 4, 0] },
  { kernel: 'ropeBackward', desc: 'sin too short for pos0 + T', mentions: ['sin'], args: (F) => [new F(2 * 3 * 4), new F(20), new F(9), 1, 2, 3, 4, 3] },

  // swiglu
  { kernel: 'swigluForward', desc: 'b too short', mentions: ['b'], args: (F) => [new F(10), new F(10), new F(9), 10] },
  { kernel: 'swigluBackward', desc: 'db too short', mentions: ['db'], args: (F) => [new F(10), new F(9), new F(10), new F(10), new F(10), 10] },
  { kernel: 'swigluBackward', desc: 'negative n', mentions: ['n'], args: (F) => [new F(10), new F(10), new F(10), new F(10), new F(10), -3] },

  // cross-entropy pieces
  { kernel: 'rowMax', desc: 'out shorter than rows', mentions: ['out'], args: (F) => [new F(3), new F(20), 4, 5] },
  { kernel: 'rowMax', desc: 'cols = 0', mentions: ['cols'], args: (F) => [new F(4), new F(20), 4, 0] },
  { kernel: 'rowSumExp', desc: 'shift shorter than rows', mentions: ['shift'], args: (F) => [new F(4), new F(20), new F(3), 4, 5] },
  { kernel: 'pickTarget', desc: 'targets shorter than rows', mentions: ['targets'], args: (F) => [new F(4), new F(20), i32(3), 4, 5, 0] },
  { kernel: 'pickTarget', desc: 'negative vocabStart', mentions: ['vocabStart'], args: (F) => [new F(4), new F(20), i32(4), 4, 5, -1] },
  { kernel: 'crossEntropyBackward', desc: 'lse shorter than rows', mentions: ['lse'], args: (F) => [new F(20), new F(20), i32(4), new F(3), 4, 5, 0, 1] },
  { kernel: 'crossEntropyBackward', desc: 'dlogits too short', mentions: ['dlogits'], args: (F) => [new F(19), new F(20), i32(4), new F(4), 4, 5, 0, 1] },

  // embedding(out|dtable, table|dout, tokens, n, C, vocabStart, tableRows)
  { kernel: 'embeddingForward', desc: 'table shorter than tableRows·C', mentions: ['table'], args: (F) => [new F(12), new F(29), i32(4), 4, 3, 0, 10] },
  { kernel: 'embeddingForward', desc: 'tokens shorter than n', mentions: ['tokens'], args: (F) => [new F(12), new F(30), i32(3), 4, 3, 0, 10] },
  { kernel: 'embeddingBackward', desc: 'dtable shorter than tableRows·C', mentions: ['dtable'], args: (F) => [new F(29), new F(12), i32(4), 4, 3, 0, 10] },

  // element-wise and reductions
  { kernel: 'add', desc: 'out too short', mentions: ['out'], args: (F) => [new F(9), new F(10), new F(10), 10] },
  { kernel: 'axpy', desc: 'x too short', mentions: ['x'], args: (F) => [new F(10), 2, new F(9), 10] },
  { kernel: 'scale', desc: 'x too short', mentions: ['x'], args: (F) => [new F(9), 2, 10] },
  { kernel: 'reduceSum', desc: 'no sources', mentions: ['srcs'], args: (F) => [new F(10), [], 10] },
  { kernel: 'reduceSum', desc: 'srcs[2] too short', mentions: ['srcs[2]'], args: (F) => [new F(10), [new F(10), new F(10), new F(9)], 10] },
  { kernel: 'reduceSum', desc: 'mixed element types (srcs[1])', mentions: ['srcs[1]'], args: (F) => [new F(10), [new F(10), other(F, 10)], 10] },
  { kernel: 'sumSquares', desc: 'x too short', mentions: ['x'], args: (F) => [new F(9), 10] },
  { kernel: 'adamw', desc: 'v too short', mentions: ['v'], args: (F) => [new F(10), new F(10), new F(10), new F(9), 10, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1, 1] },
  { kernel: 'adamw', desc: 'step 0', mentions: ['step'], args: (F) => [new F(10), new F(10), new F(10), new F(10), 10, 1e-3, 0.9, 0.95, 1e-8, 0.1, 0, 1] },
  { kernel: 'alloc', desc: 'negative n', mentions: ['n'], args: () => [-1] },
];

/** An array of the other float type (for mixed-type errors). */
function other(F: Float32ArrayConstructor | Float64ArrayConstructor, n: number): Float32Array | Float64Array {
  return F === Float32Array ? new Float64Array(n) : new Float32Array(n);
}

function wordRegex(w: string): RegExp {
  const esc = w.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`(?<![\\w\\[\\]])${esc}(?![\\w\\[])`);
}

/** Every typed array among the arguments (one level into arrays, for reduceSum's srcs). */
function typedArgs(args: unknown[]): AnyArray[] {
  const out: AnyArray[] = [];
  for (const a of args) {
    if (a instanceof Float32Array || a instanceof Float64Array || a instanceof Int32Array) out.push(a);
    else if (Array.isArray(a)) out.push(...typedArgs(a));
  }
  return out;
}

function expectKernelError(be: Backend, c: ErrorCase, F: Float32ArrayConstructor | Float64ArrayConstructor): void {
  const args = c.args(F);
  const arrays = typedArgs(args);
  // recognisable contents, to check nothing is written before the error is thrown
  arrays.forEach((a, j) => a.forEach((_, i) => { a[i] = ((i * 7 + j) % 13) - 6; }));
  const before = arrays.map((a) => a.slice());
  const fn = (be as unknown as Record<string, (...a: unknown[]) => unknown>)[c.kernel]!;
  assert.throws(
    () => fn.apply(be, args),
    (e: unknown) => {
      assert.ok(e instanceof KernelError, `${be.name}.${c.kernel} (${c.desc}) threw ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}, expected a KernelError`);
      assert.equal(e.kernel, c.kernel, `KernelError.kernel for ${c.desc}`);
      assert.ok(e.message.startsWith(`${c.kernel}:`), `message "${e.message}" must start with "${c.kernel}:"`);
      for (const m of c.mentions) assert.match(e.message, wordRegex(m), `${be.name}.${c.kernel} (${c.desc}): message "${e.message}" must mention ${m}`);
      return true;
    },
    `${be.name}.${c.kernel} must throw for ${c.desc}`,
  );
  arrays.forEach((a, j) => assert.deepEqual(a, before[j], `${be.name}.${c.kernel} (${c.desc}) wrote to argument ${j} before throwing`));
}

function defineErrorSuite(be: Backend, F: Float32ArrayConstructor | Float64ArrayConstructor): void {
  for (const c of CASES) {
    test(`${c.kernel}: ${c.desc} → KernelError naming ${c.mentions.join(', ')}`, () => expectKernelError(be, c, F));
  }
  test('the same calls with consistent arguments succeed (the cases above fail for the stated reason only)', () => {
    const n = 10;
    be.gemm(false, false, 4, 5, 6, 1, new F(24), 0, 6, new F(30), 0, 5, 0, new F(20), 0, 5);
    be.gemm(true, true, 4, 5, 6, 1, new F(24), 0, 4, new F(30), 0, 6, 0, new F(20), 0, 5);
    be.attentionForward(new F(16), new F(32), new F(16), new F(16), new F(16), 1, 4, 4, 2, 2, 2, 16);
    be.attentionForward(new F(2 * 2 * 4), new F(2 * 2 * 2 * 4), new F(2 * 2 * 4), new F(40 + 8), new F(48), 2, 2, 4, 2, 1, 2, 40);
    be.attentionBackward(new F(16), new F(16), new F(16), new F(16), new F(16), new F(16), new F(16), new F(16), new F(32), 1, 4, 2, 2, 2);
    be.softmaxForward(new F(30), new F(30), 6, 5, 1, 3);
    be.rmsnormForward(new F(30), new F(6), new F(30), new F(5), 6, 5, 1e-5);
    be.ropeForward(new F(2 * 3 * 4), new F(10), new F(10), 1, 2, 3, 4, 3);
    be.swigluBackward(new F(n), new F(n), new F(n), new F(n), new F(n), n);
    be.crossEntropyBackward(new F(20), new F(20), i32(4), new F(4), 4, 5, 0, 1);
    be.embeddingForward(new F(12), new F(30), i32(4), 4, 3, 0, 10);
    be.reduceSum(new F(n), [new F(n), new F(n), new F(n)], n);
    be.adamw(new F(n), new F(n), new F(n), new F(n), n, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1, 1);
  });
}

describe('js (float32) argument validation', () => defineErrorSuite(createJsBackend('f32'), Float32Array));
describe('js (float64) argument validation', () => defineErrorSuite(createJsBackend('f64'), Float64Array));

for (const entry of allBackends()) {
  if (entry.name === 'js') continue;
  const skip = skipUnless(entry);
  if (skip !== false || !entry.backend) {
    test(`${entry.name} argument validation`, { skip: skip || 'unavailable' }, () => {});
    continue;
  }
  const be = entry.backend;
  describe(`${entry.name} argument validation`, () => {
    defineErrorSuite(be, Float32Array);
    test('Float64Array operands are rejected with a KernelError (float32-only backend)', () => {
      for (const [kernel, call] of [
        ['gemm', () => be.gemm(false, false, 2, 2, 2, 1, new Float64Array(4), 0, 2, new Float64Array(4), 0, 2, 0, new Float64Array(4), 0, 2)],
        ['softmaxForward', () => be.softmaxForward(new Float64Array(4), new Float64Array(4), 2, 2, 1, 0)],
        ['add', () => be.add(new Float64Array(4), new Float64Array(4), new Float64Array(4), 4)],
        ['sumSquares', () => be.sumSquares(new Float64Array(4), 4)],
      ] as const) {
        assert.throws(call, (e: unknown) => e instanceof KernelError && e.kernel === kernel, `${be.name}.${kernel} must reject Float64Array with a KernelError`);
      }
    });
  });
}
