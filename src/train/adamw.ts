/**
 * AdamW over one rank's ParamSet: moments sharded exactly like the parameters; decoupled weight decay
 * only on parameters tagged `decay` (2-D weights), never on norm gains.
 */
import type { Backend } from '../backend/types.js';
import { ParamSet } from '../model/params.js';

export interface AdamWConfig {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export class AdamW {
  readonly m: ParamSet;
  readonly v: ParamSet;
  /** Number of steps taken (the next step is step + 1). */
  step = 0;

  constructor(
    readonly params: ParamSet,
    readonly grads: ParamSet,
    readonly cfg: AdamWConfig,
    readonly be: Backend,
  ) {
    this.m = new ParamSet(params.specs, params.N, be);
    this.v = new ParamSet(params.specs, params.N, be);
  }

  /** One update with learning rate lr; gradients are multiplied by gradScale first (clipping). */
  update(lr: number, gradScale = 1): void {
    this.step += 1;
    const { beta1, beta2, eps, weightDecay } = this.cfg;
    for (const spec of this.params.specs) {
      const p = this.params.get(spec.name);
      this.be.adamw(p, this.grads.get(spec.name), this.m.get(spec.name), this.v.get(spec.name), p.length, lr, beta1, beta2, eps, spec.decay ? weightDecay : 0, this.step, gradScale);
    }
  }
}
