/**
 * Backend selection. `--backend native|wasm|js` or CAAT_BACKEND choose one explicitly (an unavailable
 * explicit choice is an error naming the reason); otherwise the fastest available is used, in the
 * order native, wasm, js. The choice is logged once per process, with the native backend's GEMM choice
 * (src/backend/gemm-choice.ts).
 */
import { takeGemmSummaries } from './gemm-choice.js';
import { createJsBackend } from './js.js';
import { loadNativeBackend } from './native.js';
import { loadWasmBackend } from './wasm.js';
import { type Backend, type BackendName, type BackendOptions, BackendUnavailableError } from './types.js';

export * from './types.js';
export { createJsBackend, ropeTables } from './js.js';

const BACKENDS: readonly BackendName[] = ['native', 'wasm', 'js'];

export function isBackendName(s: string): s is BackendName {
  return (BACKENDS as readonly string[]).includes(s);
}

/** Load one backend by name; throws BackendUnavailableError with the reason if it cannot load. */
export function loadBackend(name: BackendName, opts: BackendOptions = {}): Backend {
  switch (name) {
    case 'js':
      return createJsBackend('f32');
    case 'wasm':
      return loadWasmBackend(opts);
    case 'native':
      return loadNativeBackend(opts);
  }
}

/** Every backend name with either the loaded backend or the reason it is unavailable. */
export function probeBackends(opts: BackendOptions = {}): { name: BackendName; backend?: Backend; reason?: string }[] {
  return BACKENDS.map((name) => {
    try {
      return { name, backend: loadBackend(name, opts) };
    } catch (e) {
      return { name, reason: e instanceof BackendUnavailableError ? e.reason : String(e) };
    }
  });
}

/** The one command that gives a Debian or Ubuntu machine the native backend. */
export const NATIVE_FIX_COMMAND = 'sudo apt-get install -y --no-install-recommends libdnnl-dev libopenblas-dev && npm run build:native';

/** Training speed of each backend next to native (bench train, tiny and small configs, and the default run). */
const SLOWER_THAN_NATIVE: Record<BackendName, string> = { native: '', wasm: 'about 4-5x', js: 'several hundred times' };

/** The line printed when the automatic choice falls back from native: what is used, the cost, the fix. */
export function nativeFallbackNotice(using: BackendName, reason: string): string {
  return `caatnet: the native backend is unavailable (${reason}); using ${using}, ${SLOWER_THAN_NATIVE[using]} slower for training. Fix: ${NATIVE_FIX_COMMAND}`;
}

let logged = false;

/**
 * Resolve the backend for this process: an explicit name (flag), else CAAT_BACKEND, else the fastest
 * available. Logs the choice once (to stderr) unless `quiet`.
 */
export function selectBackend(requested?: string, opts: BackendOptions & { quiet?: boolean } = {}): Backend {
  const want = requested ?? process.env['CAAT_BACKEND'];
  let be: Backend | undefined;
  let nativeReason: string | undefined;
  if (want !== undefined && want !== '' && want !== 'auto') {
    if (!isBackendName(want)) throw new Error(`unknown backend "${want}" (expected native, wasm, js or auto)`);
    be = loadBackend(want, opts);
  } else {
    for (const name of BACKENDS) {
      try {
        be = loadBackend(name, opts);
        break;
      } catch (e) {
        if (!(e instanceof BackendUnavailableError)) throw e;
        if (name === 'native') nativeReason = e.reason;
      }
    }
  }
  if (!be) throw new Error('no backend available');
  if (!logged && !opts.quiet) {
    logged = true;
    process.stderr.write(`caatnet: backend ${be.description}\n`);
    // The GEMM choice of the native backend, once per process (measured, cached, forced or adopted).
    if (be.name === 'native') for (const l of takeGemmSummaries()) process.stderr.write(`caatnet: ${l}\n`);
    if (nativeReason !== undefined) process.stderr.write(`${nativeFallbackNotice(be.name, nativeReason)}\n`);
  }
  return be;
}
