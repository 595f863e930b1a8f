/**
 * Worker module for benchAllReduce on the threads transport: every rank all-reduces a buffer of the
 * requested size `warmup` times, then `repeats` times after a barrier each, and returns the time of
 * each timed all-reduce in microseconds.
 */
import { performance } from 'node:perf_hooks';
import { joinThreadGroup } from './threads.js';

interface BenchData {
  elements: number;
  repeats: number;
  warmup: number;
}

const member = joinThreadGroup<BenchData>();
const { elements, repeats, warmup } = member.workerData;
await member.run(async (comm) => {
  const buf = new Float32Array(elements).fill(1e-3 * (comm.rank + 1));
  for (let i = 0; i < warmup; i++) await comm.allReduce(buf, 'sum', 'bench');
  const us: number[] = [];
  for (let i = 0; i < repeats; i++) {
    await comm.barrier('bench.sync');
    const t0 = performance.now();
    await comm.allReduce(buf, 'sum', 'bench');
    us.push((performance.now() - t0) * 1000);
  }
  return us;
});
