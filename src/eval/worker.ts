/** Worker-thread entry of the scorer: hosts this worker's share of the TP ranks (see threads.ts). */
import { selectBackend } from '../backend/index.js';
import { RankModel } from '../model/model.js';
import { joinThreadGroup } from '../transport/threads.js';
import { scoreRequests } from './scorer.js';
import type { EvalWorkerInput } from './threads.js';

const member = joinThreadGroup<EvalWorkerInput>();
const input = member.workerData;
const be = selectBackend(input.backend, { quiet: true });

await member.run(async (comm) => {
  const m = new RankModel(input.cfg, be, comm);
  m.loadFull((s) => input.params.get(s.name)!);
  const handle = { ranks: [m], all: async <T>(fn: (x: RankModel, r: number) => Promise<T>) => [await fn(m, 0)] };
  const scores = await scoreRequests(handle, input.requests, {
    ...(input.batchTokens !== undefined ? { batchTokens: input.batchTokens } : {}),
    ...(comm.rank === 0 ? { onProgress: (done: number, total: number) => member.post({ done, total }) } : {}),
  });
  return comm.rank === 0 ? scores : null;
});
