/**
 * bench infer's read bandwidth: the WebAssembly streaming reader really reads every byte (its sum over
 * a known buffer), and ReadBandwidth reports the larger of its two readers' medians.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ReadBandwidth, wasmReader, type WasmMemory } from '../src/bench/infer.js';

const WA = (globalThis as unknown as { WebAssembly: { Memory: new (d: { initial: number }) => WasmMemory } }).WebAssembly;

describe('bench infer read bandwidth', () => {
  test('the wasm reader sums lane 0 of every 16-byte group (every element at an index ≡ 0 mod 4)', () => {
    const mem = new WA.Memory({ initial: 16 });
    const x = new Float32Array(mem.buffer);
    for (let i = 0; i < x.length; i++) x[i] = (i * 13) % 7;
    const read = wasmReader(mem);
    const lane0 = (from: number, to: number): number => {
      let s = 0;
      for (let i = from / 4; i < to / 4; i += 4) s += x[i]!;
      return s;
    };
    assert.equal(read(0, x.length * 4), lane0(0, x.length * 4));
    assert.equal(read(64, 64 * 9), lane0(64, 64 * 9));
    assert.equal(read(0, 0), 0);
    assert.ok(read(0, x.length * 4) > 100_000, 'a sum over the whole buffer, not a piece');
  });

  test('ReadBandwidth: medians of both readers, the larger reported', () => {
    const bw = new ReadBandwidth(undefined, 4 * 1024 * 1024);
    bw.sample(3);
    bw.release();
    const r = bw.result;
    assert.ok(r.wasmBytesPerS > 1e8 && Number.isFinite(r.wasmBytesPerS), `wasm ${r.wasmBytesPerS}`);
    assert.ok(r.nativeBytesPerS !== null && r.nativeBytesPerS > 1e8, `native ${r.nativeBytesPerS}`);
    assert.equal(r.readBytesPerS, Math.max(r.wasmBytesPerS, r.nativeBytesPerS));
    assert.throws(() => new ReadBandwidth(undefined, 1000), /multiple of 64 KiB/);
  });
});
