/**
 * Communication micro-benchmarks (used by `caat bench comm`).
 *
 * benchAllReduce times an in-place float32 sum all-reduce of `bytes` bytes per rank. Each repetition
 * starts after a barrier; a repetition's time is the slowest rank's, and the median over repetitions
 * is returned in microseconds.
 */
import { performance } from 'node:perf_hooks';
import { createVirtualGroup } from '../tp/virtual.js';
import { launchThreadGroup } from './threads.js';

export type BenchTransport = 'virtual' | 'threads';

export interface BenchCommOptions {
  /** Logical ranks (default 2). */
  nRanks?: number;
  /** threads: workers hosting the ranks (default nRanks: one rank per worker). */
  nWorkers?: number;
  /** Untimed repetitions first (default min(repeats, 20), at least 3). */
  warmup?: number;
  /** threads: staging slot size per rank (default the transport's). */
  slotBytes?: number;
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Median microseconds of one all-reduce of `bytes` bytes (float32, rounded down to whole elements). */
export async function benchAllReduce(transport: BenchTransport, bytes: number, repeats: number, options: BenchCommOptions = {}): Promise<number> {
  const nRanks = options.nRanks ?? 2;
  const warmup = options.warmup ?? Math.max(3, Math.min(repeats, 20));
  const elements = Math.max(1, Math.floor(bytes / 4));
  if (!Number.isInteger(repeats) || repeats < 1) throw new RangeError(`benchAllReduce: repeats must be a positive integer, got ${repeats}`);
  if (transport === 'virtual') {
    const comms = createVirtualGroup(nRanks);
    const bufs = comms.map((c) => new Float32Array(elements).fill(1e-3 * (c.rank + 1)));
    const step = (): Promise<void[]> => Promise.all(comms.map((c, r) => c.allReduce(bufs[r]!, 'sum', 'bench')));
    for (let i = 0; i < warmup; i++) await step();
    const us: number[] = [];
    for (let i = 0; i < repeats; i++) {
      const t0 = performance.now();
      await step();
      us.push((performance.now() - t0) * 1000);
    }
    return median(us);
  }
  if (transport === 'threads') {
    const perRank = await launchThreadGroup<number[]>({
      nRanks,
      nWorkers: options.nWorkers ?? nRanks,
      workerModule: new URL('./transport-bench-worker.js', import.meta.url),
      workerData: { elements, repeats, warmup },
      ...(options.slotBytes !== undefined ? { slotBytes: options.slotBytes } : {}),
    });
    const slowest = Array.from({ length: repeats }, (_, i) => Math.max(...perRank.map((t) => t[i]!)));
    return median(slowest);
  }
  throw new RangeError(`benchAllReduce: unknown transport "${String(transport)}" (expected virtual or threads)`);
}
