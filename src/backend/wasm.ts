/** WebAssembly SIMD backend. Placeholder until the kernels land. */
import { type Backend, type BackendOptions, BackendUnavailableError } from './types.js';

export function loadWasmBackend(_opts: BackendOptions = {}): Backend {
  throw new BackendUnavailableError('wasm', 'not built yet');
}
