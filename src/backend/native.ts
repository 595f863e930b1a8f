/** Native backend (N-API addon over oneDNN / CBLAS). Placeholder until the addon lands. */
import { type Backend, type BackendOptions, BackendUnavailableError } from './types.js';

export function loadNativeBackend(_opts: BackendOptions = {}): Backend {
  throw new BackendUnavailableError('native', 'not built yet');
}
