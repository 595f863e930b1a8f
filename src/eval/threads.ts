/**
 * Scoring on worker threads: M workers host the N ranks of a checkpoint (N/M each, collectives over
 * shared memory, as training does); every rank runs the same scorer on the same batches and rank 0's
 * scores come back. Progress reaches the caller as messages from rank 0.
 */
import type { BackendName } from '../backend/types.js';
import type { ResolvedConfig } from '../model/config.js';
import { launchThreadGroup } from '../transport/threads.js';
import type { TokenRequest } from './requests.js';
import type { Scores } from './scorer.js';

export interface EvalWorkerInput {
  cfg: ResolvedConfig;
  backend: BackendName;
  params: Map<string, Float32Array>;
  requests: TokenRequest[];
  batchTokens?: number;
}

const workerModule = new URL('./worker.js', import.meta.url);

export async function scoreOnThreads(
  input: EvalWorkerInput,
  workers: number,
  onProgress?: (done: number, total: number) => void,
): Promise<Scores> {
  const res = await launchThreadGroup<Scores | null, EvalWorkerInput>({
    nRanks: input.cfg.parallel.tp,
    nWorkers: workers,
    workerModule,
    workerData: input,
    onMessage: (m) => {
      const p = m as { done: number; total: number };
      onProgress?.(p.done, p.total);
    },
  });
  return res[0]!;
}
