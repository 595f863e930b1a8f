/**
 * Where test operands live. Kernels must work on any Float32Array: a plain one, an unaligned
 * `subarray` view into a larger buffer, a view into a SharedArrayBuffer, or the backend's own
 * `alloc` (plain or shared). A `Placement` creates operands in one of these ways; the view placements
 * surround every operand with guard elements holding a marked NaN, so that a kernel reading past an
 * operand produces NaN (caught by the comparisons) and one writing past it is caught by
 * `checkGuards()`.
 */
import assert from 'node:assert/strict';
import type { Backend } from '../../src/backend/types.js';

export type PlacementKind = 'plain' | 'view' | 'shared-view' | 'alloc' | 'alloc-shared';

export const PLACEMENT_KINDS: readonly PlacementKind[] = ['plain', 'view', 'shared-view', 'alloc', 'alloc-shared'];

/** Bit pattern of the guard NaN (a quiet NaN with a recognisable payload). */
export const GUARD_BITS = 0x7fc0dead;
/** Guard elements before an operand: odd, so views start 12 bytes past a 16-byte boundary. */
export const GUARD_BEFORE = 3;
/** Guard elements after an operand. */
export const GUARD_AFTER = 5;

interface Guarded {
  what: string;
  bits: Uint32Array | Int32Array;
  ranges: [number, number][];
  value: number;
}

export class Placement {
  private readonly guarded: Guarded[] = [];

  constructor(
    readonly kind: PlacementKind,
    private readonly be?: Backend,
  ) {}

  /** A zero-filled float32 operand of n elements. */
  zeros(n: number, what = 'operand'): Float32Array {
    switch (this.kind) {
      case 'plain':
        return new Float32Array(n);
      case 'view':
      case 'shared-view': {
        const total = GUARD_BEFORE + n + GUARD_AFTER;
        const buf = this.kind === 'view' ? new ArrayBuffer(total * 4) : new SharedArrayBuffer(total * 4);
        const bits = new Uint32Array(buf);
        bits.fill(GUARD_BITS);
        const arr = new Float32Array(buf).subarray(GUARD_BEFORE, GUARD_BEFORE + n);
        arr.fill(0);
        this.guarded.push({ what, bits, value: GUARD_BITS, ranges: [[0, GUARD_BEFORE], [GUARD_BEFORE + n, total]] });
        return arr;
      }
      case 'alloc':
      case 'alloc-shared': {
        if (!this.be) throw new Error('alloc placements need a backend');
        const a = this.be.alloc(n, this.kind === 'alloc-shared');
        assert.ok(a instanceof Float32Array, `${this.be.name}.alloc(${n}) must return a Float32Array for float32 tests`);
        if (this.kind === 'alloc-shared') assert.ok(a.buffer instanceof SharedArrayBuffer, `${this.be.name}.alloc(${n}, true) must be SharedArrayBuffer-backed`);
        assert.equal(a.length, n, `${this.be.name}.alloc(${n}) length`);
        return a;
      }
    }
  }

  /** A float32 operand holding `values`. */
  make(values: ArrayLike<number>, what = 'operand'): Float32Array {
    const a = this.zeros(values.length, what);
    a.set(values);
    return a;
  }

  /** A float32 operand of n elements all equal to v (e.g. NaN for outputs that must be overwritten). */
  filled(n: number, v: number, what = 'operand'): Float32Array {
    const a = this.zeros(n, what);
    a.fill(v);
    return a;
  }

  /** An Int32Array operand (tokens, targets); views get guards holding a marked value. */
  makeInt(values: ArrayLike<number>, what = 'operand'): Int32Array {
    if (this.kind !== 'view' && this.kind !== 'shared-view') return Int32Array.from(values as ArrayLike<number>);
    const n = values.length;
    const total = GUARD_BEFORE + n + GUARD_AFTER;
    const buf = this.kind === 'view' ? new ArrayBuffer(total * 4) : new SharedArrayBuffer(total * 4);
    const bits = new Int32Array(buf);
    const mark = -0x1eadbeef;
    bits.fill(mark);
    const arr = bits.subarray(GUARD_BEFORE, GUARD_BEFORE + n);
    arr.set(values);
    this.guarded.push({ what, bits, value: mark, ranges: [[0, GUARD_BEFORE], [GUARD_BEFORE + n, total]] });
    return arr;
  }

  /** Assert no guard element of any operand created so far was written. */
  checkGuards(context: string): void {
    for (const g of this.guarded) {
      for (const [lo, hi] of g.ranges) {
        for (let i = lo; i < hi; i++) {
          if ((g.bits[i]! >>> 0) !== (g.value >>> 0)) {
            assert.fail(`${context}: guard element ${i < GUARD_BEFORE ? i - GUARD_BEFORE : i - lo} ${i < GUARD_BEFORE ? 'before' : 'after'} ${g.what} was overwritten`);
          }
        }
      }
    }
  }
}
