/** Worker-thread entry of the threads placement (see index.ts): runs the plans the driving thread posts. */
import { parentPort } from 'node:worker_threads';
import { selectBackend } from '../backend/index.js';
import { RankModel } from '../model/model.js';
import { joinThreadGroup } from '../transport/threads.js';
import { RankExecutor } from './executor.js';
import type { ThreadsInput, WorkerReply } from './index.js';
import { decodePlan, type StepPlan } from './plan.js';

const member = joinThreadGroup<ThreadsInput>();
const input = member.workerData;
const be = selectBackend(input.backend, { quiet: true });

/** One queue of plans per local rank. */
class PlanQueue {
  private readonly items: { plan: StepPlan; id: number }[] = [];
  private waiter: ((x: { plan: StepPlan; id: number }) => void) | null = null;
  push(x: { plan: StepPlan; id: number }): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w(x);
    } else this.items.push(x);
  }
  next(): Promise<{ plan: StepPlan; id: number }> {
    const x = this.items.shift();
    if (x) return Promise.resolve(x);
    return new Promise((resolve) => (this.waiter = resolve));
  }
}

const queues = member.ranks.map(() => new PlanQueue());
parentPort!.on('message', (m: { caatPlan?: Float32Array; id?: number }) => {
  if (!m || !(m.caatPlan instanceof Float32Array)) return;
  const plan = decodePlan(m.caatPlan);
  for (const q of queues) q.push({ plan, id: m.id ?? 0 });
});

await member.run(async (comm) => {
  const model = new RankModel(input.cfg, be, comm);
  model.loadFull((s) => input.params.get(s.name)!);
  model.setBatchWeights(input.weights);
  const ex = new RankExecutor(model, input.slots, input.maxLen);
  const q = queues[member.ranks.indexOf(comm.rank)]!;
  for (;;) {
    const { plan, id } = await q.next();
    if (plan.kind === 'stop') break;
    const logits = await ex.run(plan);
    if (comm.rank === 0) {
      const st = ex.takeCommStats();
      const reply: WorkerReply = { caatStep: id, logits: logits === null ? new Float32Array(0) : Float32Array.from(logits), commMs: st.ms, commBytes: st.bytes };
      member.post(reply);
    }
  }
  ex.release();
  parentPort!.removeAllListeners('message');
  return null;
});
