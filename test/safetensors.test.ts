import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  parseSafetensors,
  readSafetensors,
  serializeSafetensors,
  writeSafetensors,
  SafetensorsError,
} from '../src/io/safetensors.js';
import { writeFileAtomic } from '../src/io/atomic.js';

const FIXTURES = fileURLToPath(new URL('../../test/fixtures/', import.meta.url));
const CASES = ['tp1_p1', 'tp2_p1', 'tp2_p0.5', 'tp2_p0', 'tp2_p0.5_noscale'];

/** Builds a file from a raw header object and data bytes (for malformed inputs). */
function rawFile(header: unknown, data: Uint8Array, headerText?: string): Uint8Array {
  const h = Buffer.from(headerText ?? JSON.stringify(header), 'utf8');
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

function expectError(buf: Uint8Array, pattern: RegExp, name = 'bad.safetensors'): void {
  assert.throws(
    () => parseSafetensors(buf, name),
    (err: unknown) => {
      assert.ok(err instanceof SafetensorsError, `expected SafetensorsError, got ${String(err)}`);
      assert.ok(err.message.startsWith(`${name}: `), `message should name the file: ${err.message}`);
      assert.match(err.message, pattern);
      return true;
    },
  );
}

test('round trip of every dtype, metadata and an empty tensor', () => {
  const tensors = new Map([
    ['a.f32', { shape: [2, 3], data: new Float32Array([1, -2, 3.5, 4, 5, Math.PI]) }],
    ['b.f64', { shape: [3], data: new Float64Array([1e-300, -0, Number.MAX_VALUE]) }],
    ['c.i32', { shape: [2], data: new Int32Array([-7, 2 ** 31 - 1]) }],
    ['d.i64', { shape: [1], data: new BigInt64Array([-(2n ** 62n)]) }],
    ['e.u8', { shape: [3, 1], data: new Uint8Array([0, 128, 255]) }],
    ['f.empty', { shape: [0, 4], data: new Float32Array(0) }],
    ['g.scalar', { shape: [], data: new Float32Array([42]) }],
  ]);
  const bytes = serializeSafetensors(tensors, { format: 'pt', note: 'ünïcødé ✓' });
  const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal(headerLen % 8, 0, 'header padded to 8 bytes');
  const back = parseSafetensors(bytes, 'rt.safetensors');
  assert.deepEqual(back.metadata, { format: 'pt', note: 'ünïcødé ✓' });
  assert.deepEqual([...back.tensors.keys()], [...tensors.keys()]);
  for (const [name, t] of tensors) {
    const r = back.tensors.get(name)!;
    assert.deepEqual(r.shape, t.shape);
    assert.equal(r.data.constructor, t.data.constructor);
    assert.deepEqual(r.data, t.data);
  }
  assert.equal(back.tensors.get('b.f64')!.dtype, 'F64');
  assert.ok(Object.is(back.tensors.get('b.f64')!.data[1], -0));
  // Deterministic bytes.
  assert.deepEqual(serializeSafetensors(tensors, { format: 'pt', note: 'ünïcødé ✓' }), bytes);
});

test('writeSafetensors/readSafetensors through the file system (atomic write)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'caat-st-'));
  try {
    const file = path.join(dir, 'sub', 'model.safetensors');
    writeSafetensors(file, { w: { shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) } }, { step: '3' });
    writeSafetensors(file, { w: { shape: [2, 2], data: new Float32Array([5, 6, 7, 8]) } }, { step: '4' });
    const r = readSafetensors(file);
    assert.deepEqual([...r.tensors.get('w')!.data], [5, 6, 7, 8]);
    assert.equal(r.metadata.step, '4');
    assert.deepEqual(fs.readdirSync(path.dirname(file)), ['model.safetensors'], 'no temp files left');
    writeFileAtomic(path.join(dir, 'x.txt'), 'hello');
    assert.equal(fs.readFileSync(path.join(dir, 'x.txt'), 'utf8'), 'hello');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('reference fixtures parse', () => {
  for (const c of CASES) {
    const model = readSafetensors(path.join(FIXTURES, c, 'model.safetensors'));
    const emb = model.tensors.get('model.embed_tokens.weight')!;
    assert.equal(emb.dtype, 'F32');
    assert.deepEqual(emb.shape, [64, 32]);
    assert.ok(emb.data instanceof Float32Array);
    assert.deepEqual(model.tensors.get('model.layers.0.self_attn.k_proj.weight')!.shape, [16, 32]);
    assert.deepEqual(model.tensors.get('model.layers.1.mlp.down_proj.weight')!.shape, [32, 64]);
    assert.deepEqual(model.tensors.get('model.norm.weight')!.shape, [32]);
    assert.equal(model.metadata.vocab, '64');
    assert.equal(model.metadata.hidden, '32');
    const grads = readSafetensors(path.join(FIXTURES, c, 'expected_grads.safetensors'));
    assert.equal(grads.tensors.size, model.tensors.size);
    for (const [name, t] of model.tensors) {
      const g = grads.tensors.get(name)!;
      assert.equal(g.dtype, 'F64');
      assert.deepEqual(g.shape, t.shape);
      assert.ok(g.data instanceof Float64Array);
    }
    // Re-serialising the parsed file reproduces the same tensors.
    const again = parseSafetensors(serializeSafetensors(model.tensors, model.metadata), 're');
    assert.deepEqual(again.tensors.get('lm_head.weight')!.data, model.tensors.get('lm_head.weight')!.data);
  }
});

test('a missing file is a SafetensorsError naming it', () => {
  assert.throws(() => readSafetensors('/nonexistent/dir/missing.safetensors'), (e: unknown) => {
    assert.ok(e instanceof SafetensorsError);
    assert.match(e.message, /^missing\.safetensors: cannot read .*ENOENT/);
    return true;
  });
});

test('malformed inputs give SafetensorsError naming the file and the problem', () => {
  const good = serializeSafetensors({
    'model.norm.weight': { shape: [4], data: new Float32Array([1, 2, 3, 4]) },
    'model.x': { shape: [2], data: new Float32Array([5, 6]) },
  });
  const f32 = (n: number) => new Uint8Array(n * 4);

  // Truncations at every interesting length.
  expectError(good.subarray(0, 5), /too short for the 8-byte header length/);
  expectError(good.subarray(0, 20), /longer than the rest of the file/);
  expectError(good.subarray(0, good.length - 3), /outside the data section|data section/);
  // Header length far beyond the file or the limit.
  const huge = new Uint8Array(16);
  new DataView(huge.buffer).setBigUint64(0, 1n << 40n, true);
  expectError(huge, /exceeds the limit/);
  const long = new Uint8Array(16);
  new DataView(long.buffer).setBigUint64(0, 1000n, true);
  expectError(long, /header length 1000 is longer than the rest of the file/);
  // Bad JSON, not an object, invalid UTF-8.
  expectError(rawFile(null, new Uint8Array(0), '{"a": '), /not valid JSON/);
  expectError(rawFile(null, new Uint8Array(0), '[1, 2]'), /does not start with a JSON object/);
  expectError(rawFile(null, new Uint8Array(0), '{"a":\xff}'.replace('\xff', '\u00ff')), /not valid JSON/);
  const badUtf8 = rawFile(null, new Uint8Array(0), '{"a":1}');
  badUtf8[8 + 2] = 0xff;
  expectError(badUtf8, /not valid UTF-8/);
  // Shape / byte length mismatch (the message of the module docs).
  expectError(
    rawFile({ 'model.norm.weight': { dtype: 'F32', shape: [4], data_offsets: [0, 12] } }, f32(3)),
    /^bad\.safetensors: tensor model\.norm\.weight: data_offsets \[0, 12\] do not match shape \[4\] of F32 \(16 bytes\)$/,
  );
  // Offsets out of range.
  expectError(rawFile({ w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, f32(2)), /tensor w: .*outside the data section \(8 bytes\)/);
  expectError(rawFile({ w: { dtype: 'F32', shape: [1], data_offsets: [8, 4] } }, f32(2)), /end before they begin/);
  expectError(rawFile({ w: { dtype: 'F32', shape: [1], data_offsets: [-4, 0] } }, f32(1)), /must be two non-negative integers/);
  expectError(rawFile({ w: { dtype: 'F32', shape: [1], data_offsets: [0] } }, f32(1)), /must be two non-negative integers/);
  // Overlap, gap, uncovered trailing bytes.
  expectError(
    rawFile(
      { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } },
      f32(3),
    ),
    /tensor b: data_offsets \[4, 12\] overlap tensor a \[0, 8\]/,
  );
  expectError(
    rawFile(
      { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] } },
      f32(3),
    ),
    /tensor b: .*leave a gap after byte 4/,
  );
  expectError(rawFile({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, f32(2)), /data section is 8 bytes but the tensors cover 4 bytes/);
  // Unknown dtype, bad shapes, unknown fields, bad metadata.
  expectError(rawFile({ w: { dtype: 'F8_E4M3', shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1)), /tensor w: unknown dtype "F8_E4M3"/);
  expectError(rawFile({ w: { shape: [1], data_offsets: [0, 4] } }, f32(1)), /tensor w: missing dtype/);
  expectError(rawFile({ w: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, f32(1)), /shape \[-1\] must contain non-negative integers/);
  expectError(rawFile({ w: { dtype: 'F32', shape: [1.5], data_offsets: [0, 4] } }, f32(1)), /non-negative integers/);
  expectError(rawFile({ w: { dtype: 'F32', shape: 4, data_offsets: [0, 16] } }, f32(4)), /shape is not an array/);
  expectError(rawFile({ w: { dtype: 'F32', shape: [1], data_offsets: [0, 4], extra: 1 } }, f32(1)), /unknown field "extra"/);
  expectError(rawFile({ w: 7 }, f32(0)), /tensor w: entry is not an object/);
  expectError(rawFile({ __metadata__: { a: 1 } }, f32(0)), /__metadata__ value for "a" is not a string/);
  expectError(rawFile({ __metadata__: ['x'] }, f32(0)), /__metadata__ is not an object/);
});

test('serialize rejects inconsistent tensors', () => {
  assert.throws(() => serializeSafetensors({ w: { shape: [3], data: new Float32Array(2) } }), SafetensorsError);
  assert.throws(() => serializeSafetensors({ w: { dtype: 'F64', shape: [2], data: new Float32Array(2) } }), SafetensorsError);
});
