/**
 * Which backends a test file runs against. Unavailable backends are returned with the reason so the
 * test can be reported as skipped (node:test `{ skip: reason }`), never silently passed.
 */
import { probeBackends } from '../../src/backend/index.js';
import type { Backend, BackendName } from '../../src/backend/types.js';

export interface BackendEntry {
  name: BackendName;
  backend?: Backend;
  /** Why the backend is unavailable (set exactly when `backend` is not). */
  reason?: string;
}

let cache: BackendEntry[] | undefined;

/** Threads the backends are loaded with: CAAT_TEST_THREADS, default 1 (the backends' default). */
export function testThreads(): number {
  const s = process.env['CAAT_TEST_THREADS'];
  const n = s === undefined || s === '' ? 1 : Number(s);
  if (!Number.isInteger(n) || n < 1) throw new Error(`CAAT_TEST_THREADS must be a positive integer, got "${s}"`);
  return n;
}

/**
 * Every backend `probeBackends()` knows, loaded once per process with `testThreads()` threads.
 * (CAAT_NATIVE_BLAS=openblas|onednn picks the native build, as it does everywhere.)
 */
export function allBackends(): BackendEntry[] {
  if (!cache) {
    cache = probeBackends({ threads: testThreads() });
    // CI names the backends it installed the prerequisites for; losing one must fail, not skip.
    const required = (process.env['CAAT_REQUIRE_BACKENDS'] ?? '').split(',').map((x) => x.trim()).filter(Boolean);
    for (const name of required) {
      const e = cache.find((b) => b.name === name);
      if (!e) throw new Error(`CAAT_REQUIRE_BACKENDS names an unknown backend "${name}"`);
      if (!e.backend) throw new Error(`CAAT_REQUIRE_BACKENDS requires backend ${name}, which is unavailable: ${e.reason}`);
    }
  }
  return cache;
}

/** The skip option for node:test: false when available, else the reason, prefixed. */
export function skipUnless(entry: BackendEntry): false | string {
  return entry.backend ? false : `backend ${entry.name} unavailable: ${entry.reason ?? 'unknown reason'}`;
}
