/** Helpers shared by the transport tests: bit-exact comparison and running every rank's task. */
import assert from 'node:assert/strict';
import type { Communicator } from '../../src/tp/comm.js';
import type { Floats } from './comm-worker.js';

/** The raw bytes of a typed array (for hashing and bit-exact comparison). */
export function bits(a: Floats): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/** Same element type, length and bits (NaN payloads and signed zeros included). */
export function assertBitwise(actual: Floats, expected: Floats, what: string): void {
  assert.equal(actual.constructor, expected.constructor, `${what}: element type`);
  assert.equal(actual.length, expected.length, `${what}: length`);
  if (!bits(actual).equals(bits(expected))) {
    const i = actual.findIndex((v, k) => !Object.is(v, expected[k]));
    assert.fail(`${what}: differs at ${i}: ${actual[i]} vs ${expected[i]}`);
  }
}

/** Run every rank's task; a task that throws aborts the group (what the launchers do). */
export async function runRanks<T>(comms: Communicator[], fn: (c: Communicator) => Promise<T>): Promise<PromiseSettledResult<T>[]> {
  return Promise.allSettled(
    comms.map(async (c) => {
      try {
        return await fn(c);
      } catch (e) {
        c.abort(e);
        throw e;
      }
    }),
  );
}

/** The values of settled results, rethrowing the first rejection. */
export function values<T>(rs: PromiseSettledResult<T>[]): T[] {
  return rs.map((r) => {
    if (r.status === 'rejected') throw r.reason;
    return r.value;
  });
}
