/**
 * Placement of the N logical ranks on M worker threads (M divides N), each worker hosting N/M ranks,
 * with collectives over SharedArrayBuffer. Every rank runs the same loop as the virtual host; events
 * come back to the coordinator as messages.
 */
import type { BackendName } from '../backend/types.js';
import type { ResolvedConfig } from '../model/config.js';
import { paramSpecs, placeShard } from '../model/params.js';
import { launchThreadGroup } from '../transport/threads.js';
import type { TaskSet } from '../eval/run.js';
import type { TrainConfig } from './config.js';
import type { HostEvent, StartState } from './loop.js';
import type { HostData } from './trainer.js';

export type WorkerInput =
  | { mode: 'train'; cfg: ResolvedConfig; train: TrainConfig; backend: BackendName; data: HostData; start: StartState; tasks?: TaskSet }
  | {
      mode: 'gradcheck';
      cfg: ResolvedConfig;
      backend: BackendName;
      params: Map<string, Float32Array>;
      inputs: Int32Array;
      targets: Int32Array;
      B: number;
      T: number;
    };

const workerModule = new URL('./worker.js', import.meta.url);

export async function runThreadHosts(o: {
  cfg: ResolvedConfig;
  train: TrainConfig;
  backend: BackendName;
  workers: number;
  data: HostData;
  start: StartState;
  onEvent: (e: HostEvent) => void;
  tasks?: TaskSet;
}): Promise<void> {
  const input: WorkerInput = { mode: 'train', cfg: o.cfg, train: o.train, backend: o.backend, data: o.data, start: o.start, ...(o.tasks ? { tasks: o.tasks } : {}) };
  await launchThreadGroup<null, WorkerInput>({
    nRanks: o.cfg.parallel.tp,
    nWorkers: o.workers,
    workerModule,
    workerData: input,
    onMessage: (m) => o.onEvent(m as HostEvent),
  });
}

export async function gradcheckThreads(
  cfg: ResolvedConfig,
  backend: BackendName,
  workers: number,
  params: Map<string, Float32Array>,
  inputs: Int32Array,
  targets: Int32Array,
  B: number,
  T: number,
): Promise<{ loss: number; norms: Record<string, number> }> {
  const input: WorkerInput = { mode: 'gradcheck', cfg, backend, params, inputs, targets, B, T };
  const res = await launchThreadGroup<{ loss: number; grads: Record<string, Float32Array> }, WorkerInput>({
    nRanks: cfg.parallel.tp,
    nWorkers: workers,
    workerModule,
    workerData: input,
  });
  const norms: Record<string, number> = {};
  for (const spec of paramSpecs(cfg)) {
    const full = new Float32Array(spec.shape.reduce((a, b) => a * b, 1));
    res.forEach((r, rank) => placeShard(spec, r.grads[spec.name]!, cfg.parallel.tp, rank, full));
    let s = 0;
    for (let i = 0; i < full.length; i++) s += full[i]! * full[i]!;
    norms[spec.name] = Math.sqrt(s);
  }
  return { loss: res[0]!.loss, norms };
}
