/** Paths of the repository's test data, resolved from the compiled test location (dist/test/helpers). */
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

export const repoRoot = fileURLToPath(new URL('../../../', import.meta.url));
export const fixturesDir = join(repoRoot, 'test', 'fixtures');
