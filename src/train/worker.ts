/** Worker-thread entry: hosts this worker's share of the TP ranks (see threads-host.ts). */
import { selectBackend } from '../backend/index.js';
import { RankModel } from '../model/model.js';
import { joinThreadGroup } from '../transport/threads.js';
import { createRankStates, runHost } from './loop.js';
import type { WorkerInput } from './threads-host.js';
import { makeBatchSource, makeValBatches } from './trainer.js';

const member = joinThreadGroup<WorkerInput>();
const input = member.workerData;
const be = selectBackend(input.backend, { quiet: true });

if (input.mode === 'train') {
  const { cfg, train, data, start, tasks } = input;
  await member.run(async (comm) => {
    const ranks = createRankStates(cfg, train, be, [comm], start);
    await runHost({
      ranks,
      train,
      data: makeBatchSource(data.train, train),
      val: makeValBatches(data.val, train),
      start,
      emit: (e) => member.post(e),
      ...(tasks ? { tasks } : {}),
    });
    return null;
  });
} else {
  const { cfg, params, inputs, targets, B, T } = input;
  await member.run(async (comm) => {
    const m = new RankModel(cfg, be, comm);
    m.loadFull((s) => params.get(s.name)!);
    m.zeroGrad();
    const loss = await m.forward(inputs, targets, B, T);
    await m.backward(inputs, targets, 1 / (B * T));
    await m.finalizeGrads();
    const grads: Record<string, Float32Array> = {};
    for (const s of m.specs) grads[s.name] = Float32Array.from(m.grads.get(s.name));
    return { loss, grads };
  });
}
