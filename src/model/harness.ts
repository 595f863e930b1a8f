/**
 * In-process harness: N virtual ranks of one model in this thread. Used by `caat gradcheck`, the
 * fixture tests and the parity tests; a run with worker threads must agree with it bit for bit.
 */
import type { Backend, FloatArray } from '../backend/types.js';
import { runOnRanks, type Communicator } from '../tp/comm.js';
import { createVirtualGroup } from '../tp/virtual.js';
import type { ResolvedConfig } from './config.js';
import { RankModel } from './model.js';
import { placeShard } from './params.js';

export class VirtualModel {
  readonly comms: Communicator[];
  readonly ranks: RankModel[];

  constructor(readonly cfg: ResolvedConfig, readonly be: Backend) {
    this.comms = createVirtualGroup(cfg.parallel.tp);
    this.ranks = this.comms.map((c) => new RankModel(cfg, be, c));
  }

  /** Run fn on every rank concurrently; rejects (after all ranks settle) with the first error. */
  async all<T>(fn: (m: RankModel, r: number) => Promise<T>): Promise<T[]> {
    return runOnRanks(this.comms, (_, r) => fn(this.ranks[r]!, r));
  }

  /** One forward + backward of the mean loss with finalised gradients. Returns the loss. */
  async lossAndGrads(inputs: Int32Array, targets: Int32Array, B: number, T: number): Promise<number> {
    const losses = await this.all(async (m) => {
      m.zeroGrad();
      const loss = await m.forward(inputs, targets, B, T);
      await m.backward(inputs, targets, 1 / (B * T));
      await m.finalizeGrads();
      return loss;
    });
    return losses[0]!;
  }

  /** Assemble the full logical tensor of a parameter set (params or grads) by name. */
  full(kind: 'params' | 'grads', name: string): FloatArray {
    const m0 = this.ranks[0]!;
    const spec = m0.specs.find((s) => s.name === name);
    if (!spec) throw new Error(`no parameter named ${name}`);
    const n = spec.shape.reduce((a, b) => a * b, 1);
    const out = m0.params.flat instanceof Float64Array ? new Float64Array(n) : new Float32Array(n);
    this.ranks.forEach((m, r) => placeShard(spec, (kind === 'params' ? m.params : m.grads).get(name), this.cfg.parallel.tp, r, out));
    return out;
  }
}
