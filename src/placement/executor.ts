/**
 * What one rank does with a step plan, the same on every placement: run forwardBatch over its KV
 * cache (slots × maxLen) and return the gathered logits (identical on every rank; rank 0's are used).
 */
import type { FloatArray } from '../backend/types.js';
import type { KVCache, RankModel } from '../model/model.js';
import type { StepPlan } from './plan.js';

export class RankExecutor {
  readonly cache: KVCache;

  constructor(
    readonly model: RankModel,
    readonly slots: number,
    readonly maxLen: number,
  ) {
    this.cache = model.createCache(slots, maxLen);
  }

  async run(plan: StepPlan): Promise<FloatArray | null> {
    if (plan.kind !== 'step' || plan.seqs.length === 0) return null;
    return this.model.forwardBatch(plan.tokens, plan.seqs, this.cache);
  }

  /** Collective time (ms) and bytes this rank has spent and moved since the last call. */
  takeCommStats(): { ms: number; bytes: number } {
    const st = this.model.comm.stats();
    let bytes = 0;
    for (const b of st.bytes.values()) bytes += b;
    const out = { ms: st.waitMs, bytes };
    this.model.comm.resetStats();
    return out;
  }

  release(): void {
    this.model.releaseCache(this.cache);
  }
}
