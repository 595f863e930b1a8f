/**
 * One rank of a Llama-style decoder with CAAT-Net tensor parallelism. With N = 1 it is the plain dense
 * model. The forward is a straight list of layer calls; the backward walks it in reverse (llm.c style).
 * Parameter gradients ACCUMULATE after an explicit `zeroGrad()`.
 *
 * Layouts on rank r of N (see ../tp/ops.ts for the op table):
 *   x (residual stream) [B·T, h]   shared prefix [0, s) identical on all ranks; [s, h) private to r
 *   q [B·T, NH/N·HD], k, v [B·T, NKV/N·HD]   column-parallel, this rank's heads
 *   gate, up, swiglu [B·T, F/N]               column-parallel
 *   o (row-parallel output) [B·T, h]          partial sum, then partialAllReduce
 *   logits [B·T, V/N]                         vocab block r, computed from rank r's own final hidden
 */
import type { Backend, FloatArray } from '../backend/types.js';
import { ropeTables } from '../backend/js.js';
import type { Communicator } from '../tp/comm.js';
import { attentionBackwardBf16, attentionForwardBf16 } from '../backend/bf16.js';
import { embeddingReduce, embeddingReduceBf16, partialAllReduce, partialAllReduceBf16, vocabParallelArgmax, vocabParallelMax, vocabParallelSums } from '../tp/ops.js';
import type { ResolvedConfig } from './config.js';
import { initFull, localShape, ParamSet, type ParamSpec, paramSpecs, sliceShard } from './params.js';

/** The buffers one block reads and writes (see RankModel.block). */
interface BlockBuffers {
  x: FloatArray; xMid: FloatArray; xOut: FloatArray;
  ln1: FloatArray; rstd1: FloatArray; q: FloatArray; k: FloatArray; v: FloatArray; att: FloatArray; attnOut: FloatArray;
  ln2: FloatArray; rstd2: FloatArray; gate: FloatArray; up: FloatArray; sw: FloatArray; o: FloatArray; pack: FloatArray;
}

interface LayerViews {
  ln1: FloatArray; wq: FloatArray; wk: FloatArray; wv: FloatArray; wo: FloatArray;
  ln2: FloatArray; wgate: FloatArray; wup: FloatArray; wdown: FloatArray;
}

interface Views {
  embed: FloatArray; layers: LayerViews[]; norm: FloatArray; lmHead: FloatArray;
}

function views(ps: ParamSet, L: number): Views {
  const layers: LayerViews[] = [];
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    layers.push({
      ln1: ps.get(`${p}input_layernorm.weight`),
      wq: ps.get(`${p}self_attn.q_proj.weight`),
      wk: ps.get(`${p}self_attn.k_proj.weight`),
      wv: ps.get(`${p}self_attn.v_proj.weight`),
      wo: ps.get(`${p}self_attn.o_proj.weight`),
      ln2: ps.get(`${p}post_attention_layernorm.weight`),
      wgate: ps.get(`${p}mlp.gate_proj.weight`),
      wup: ps.get(`${p}mlp.up_proj.weight`),
      wdown: ps.get(`${p}mlp.down_proj.weight`),
    });
  }
  return { embed: ps.get('model.embed_tokens.weight'), layers, norm: ps.get('model.norm.weight'), lmHead: ps.get('lm_head.weight') };
}

/** Activations saved by the forward for the backward, for one (B, T). */
class Acts {
  readonly resid: FloatArray[]; // L+1 entries: input of layer l; resid[L] = final stream
  readonly residMid: FloatArray[]; // after attention, input of the MLP half
  readonly ln1: FloatArray[]; readonly rstd1: FloatArray[];
  readonly q: FloatArray[]; readonly k: FloatArray[]; readonly v: FloatArray[];
  readonly att: FloatArray[]; readonly attnOut: FloatArray[];
  readonly ln2: FloatArray[]; readonly rstd2: FloatArray[];
  readonly gate: FloatArray[]; readonly up: FloatArray[]; readonly sw: FloatArray[];
  readonly lnf: FloatArray; readonly rstdf: FloatArray;
  readonly logits: FloatArray;
  readonly rowMax: FloatArray; readonly sums: FloatArray; readonly lse: FloatArray;
  readonly o: FloatArray; readonly pack: FloatArray;
  // backward scratch
  readonly dresid: FloatArray; readonly dln: FloatArray; readonly dO: FloatArray;
  readonly dq: FloatArray; readonly dk: FloatArray; readonly dv: FloatArray; readonly dAttnOut: FloatArray;
  readonly dAttScratch: FloatArray;
  readonly dgate: FloatArray; readonly dup: FloatArray; readonly dsw: FloatArray;
  readonly dlogits: FloatArray;

  constructor(be: Backend, cfg: ResolvedConfig, readonly B: number, readonly T: number) {
    const BT = B * T;
    const h = cfg.model.hidden;
    const L = cfg.model.layers;
    const HD = cfg.headDim;
    const qd = cfg.local.heads * HD;
    const kvd = cfg.local.kvHeads * HD;
    const F = cfg.local.ffn;
    const a = (n: number) => be.alloc(n);
    const per = (n: number, count = L) => Array.from({ length: count }, () => a(n));
    this.resid = per(BT * h, L + 1);
    this.residMid = per(BT * h);
    this.ln1 = per(BT * h); this.rstd1 = per(BT);
    this.q = per(BT * qd); this.k = per(BT * kvd); this.v = per(BT * kvd);
    this.att = per(B * cfg.local.heads * T * T); this.attnOut = per(BT * qd);
    this.ln2 = per(BT * h); this.rstd2 = per(BT);
    this.gate = per(BT * F); this.up = per(BT * F); this.sw = per(BT * F);
    this.lnf = a(BT * h); this.rstdf = a(BT);
    this.logits = a(BT * cfg.local.vocab);
    this.rowMax = a(BT); this.sums = a(2 * BT); this.lse = a(BT);
    this.o = a(BT * h); this.pack = a(BT * h);
    this.dresid = a(BT * h); this.dln = a(BT * h); this.dO = a(BT * h);
    this.dq = a(BT * qd); this.dk = a(BT * kvd); this.dv = a(BT * kvd); this.dAttnOut = a(BT * qd);
    this.dAttScratch = a(T * T);
    this.dgate = a(BT * F); this.dup = a(BT * F); this.dsw = a(BT * F);
    this.dlogits = a(BT * cfg.local.vocab);
  }

  /** Hand every buffer back to the backend. */
  release(be: Backend): void {
    for (const v of Object.values(this) as unknown[]) {
      if (Array.isArray(v)) for (const x of v) be.release(x as FloatArray);
      else if (v instanceof Float32Array || v instanceof Float64Array) be.release(v);
    }
  }
}

/** Training precision: fp32 everywhere, or bf16 mixed precision (see RankModel.setPrecision). */
export type Precision = 'fp32' | 'bf16';

export const PRECISIONS: readonly Precision[] = ['fp32', 'bf16'];

/** bf16 copies of the GEMM weights (the embedding table and the norm gains stay float32 only). */
interface Views16 {
  layers: { wq: Uint16Array; wk: Uint16Array; wv: Uint16Array; wo: Uint16Array; wgate: Uint16Array; wup: Uint16Array; wdown: Uint16Array }[];
  lmHead: Uint16Array;
}

/** Rows per piece where bf16 mode widens or rounds through a small float32 scratch. */
const BF16_CHUNK_ROWS = 64;

/** Rows per piece of the bf16 LM-head backward (its logit gradients exist one piece at a time). */
const LM_CHUNK_ROWS = 256;

/**
 * Activations of a bf16-mode forward, kept for the backward: every GEMM input in bf16 (the normalised
 * streams, q, k, v, the attention probabilities and output, gate, up and the SwiGLU output), the
 * residual stream, the RMSNorm statistics and the logits in float32. The float32 backward scratch
 * doubles as the forward's scratch for GEMM outputs before they are rounded.
 */
class Acts16 {
  readonly resid: Float32Array[]; readonly residMid: Float32Array[];
  readonly rstd1: Float32Array[]; readonly rstd2: Float32Array[];
  readonly ln1: Uint16Array[]; readonly ln2: Uint16Array[];
  readonly q: Uint16Array[]; readonly k: Uint16Array[]; readonly v: Uint16Array[];
  readonly att: Uint16Array[]; readonly attnOut: Uint16Array[];
  readonly gate: Uint16Array[]; readonly up: Uint16Array[]; readonly sw: Uint16Array[];
  readonly lnf: Uint16Array; readonly rstdf: Float32Array;
  readonly logits: Float32Array;
  readonly rowMax: Float32Array; readonly sums: Float32Array; readonly lse: Float32Array;
  readonly o: Float32Array; readonly pack: Float32Array; readonly pack16: Uint16Array;
  // backward scratch (float32), also the forward's GEMM-output scratch; gTmp and uTmp hold
  // BF16_CHUNK_ROWS rows, dlogits and dlogits16 LM_CHUNK_ROWS rows
  readonly dresid: Float32Array; readonly dln: Float32Array; readonly dO: Float32Array;
  readonly dq: Float32Array; readonly dk: Float32Array; readonly dv: Float32Array; readonly dAttnOut: Float32Array;
  readonly scores: Float32Array; readonly p32: Float32Array;
  readonly gTmp: Float32Array; readonly uTmp: Float32Array;
  readonly dgate: Float32Array; readonly dup: Float32Array; readonly dsw: Float32Array;
  readonly dlogits: Float32Array;
  // backward scratch (bf16): gradients rounded for the GEMMs
  readonly dO16: Uint16Array; readonly dAttnOut16: Uint16Array; readonly dS16: Uint16Array;
  readonly dq16: Uint16Array; readonly dk16: Uint16Array; readonly dv16: Uint16Array;
  readonly dgate16: Uint16Array; readonly dup16: Uint16Array; readonly dlogits16: Uint16Array;

  constructor(a: (n: number) => Float32Array, b: (n: number) => Uint16Array, cfg: ResolvedConfig, readonly B: number, readonly T: number) {
    const BT = B * T;
    const h = cfg.model.hidden;
    const L = cfg.model.layers;
    const HD = cfg.headDim;
    const qd = cfg.local.heads * HD;
    const kvd = cfg.local.kvHeads * HD;
    const F = cfg.local.ffn;
    const Vl = cfg.local.vocab;
    const per = <X>(f: (n: number) => X, n: number, count = L) => Array.from({ length: count }, () => f(n));
    this.resid = per(a, BT * h, L + 1); this.residMid = per(a, BT * h);
    this.rstd1 = per(a, BT); this.rstd2 = per(a, BT);
    this.ln1 = per(b, BT * h); this.ln2 = per(b, BT * h);
    this.q = per(b, BT * qd); this.k = per(b, BT * kvd); this.v = per(b, BT * kvd);
    this.att = per(b, B * cfg.local.heads * T * T); this.attnOut = per(b, BT * qd);
    this.gate = per(b, BT * F); this.up = per(b, BT * F); this.sw = per(b, BT * F);
    this.lnf = b(BT * h); this.rstdf = a(BT);
    this.logits = a(BT * Vl);
    this.rowMax = a(BT); this.sums = a(2 * BT); this.lse = a(BT);
    this.o = a(BT * h); this.pack = a(BT * h); this.pack16 = b(BT * h);
    this.dresid = a(BT * h); this.dln = a(BT * h); this.dO = a(BT * h);
    this.dq = a(BT * qd); this.dk = a(BT * kvd); this.dv = a(BT * kvd); this.dAttnOut = a(BT * qd);
    this.scores = a(T * T); this.p32 = a(T * T);
    const chunk = Math.min(BT, BF16_CHUNK_ROWS);
    this.gTmp = a(chunk * F); this.uTmp = a(chunk * F);
    this.dgate = a(BT * F); this.dup = a(BT * F); this.dsw = a(BT * F);
    const lmChunk = Math.min(BT, LM_CHUNK_ROWS);
    this.dlogits = a(lmChunk * Vl);
    this.dO16 = b(BT * h); this.dAttnOut16 = b(BT * qd); this.dS16 = b(T * T);
    this.dq16 = b(BT * qd); this.dk16 = b(BT * kvd); this.dv16 = b(BT * kvd);
    this.dgate16 = b(BT * F); this.dup16 = b(BT * F); this.dlogits16 = b(lmChunk * Vl);
  }

  /** Hand the float32 buffers back to the backend (the bf16 ones belong to the garbage collector). */
  release(be: Backend): void {
    for (const v of Object.values(this) as unknown[]) {
      if (Array.isArray(v)) {
        for (const x of v) if (x instanceof Float32Array) be.release(x);
      } else if (v instanceof Float32Array) be.release(v);
    }
  }
}

/** Communication tags (bytes are counted per tag). */
export const TAGS = {
  embedFwd: 'embed.fwd',
  embedBwd: 'embed.bwd',
  attnFwd: 'attn.fwd.shared',
  mlpFwd: 'mlp.fwd.shared',
  attnBwd: 'attn.bwd.shared',
  mlpBwd: 'mlp.bwd.shared',
  ceMax: 'ce.fwd.max',
  ceSum: 'ce.fwd.sum',
  gradSync: 'grad.replicated',
  gradNorm: 'grad.norm',
  scoreArgmax: 'score.argmax',
} as const;

export interface KVCache {
  B: number;
  maxLen: number;
  /** Tokens already in the cache. */
  len: number;
  /** Per layer: [B, maxLen, NKV/N, HD]. */
  k: FloatArray[];
  v: FloatArray[];
  /** Work buffers by number of new tokens per call (prefill length, then 1). */
  scratch: Map<number, Record<string, FloatArray>>;
}

/** One sequence of a forwardBatch step. */
export interface BatchSeq {
  /** Cache slot (batch row of the KV cache). */
  slot: number;
  /** Position of the first new token (tokens already in this slot's cache). */
  pos: number;
  /** New tokens this step. */
  n: number;
  /** Return the logits of every new row (prompt logprobs), not only the last. */
  allLogits: boolean;
}

export class RankModel {
  readonly specs: ParamSpec[];
  readonly params: ParamSet;
  readonly grads: ParamSet;
  readonly w: Views;
  readonly g: Views;
  readonly N: number;
  readonly rank: number;
  readonly vocabStart: number;
  private readonly cos: FloatArray;
  private readonly sin: FloatArray;
  private acts?: Acts;
  private acts16?: Acts16;
  /** The GEMM and activation precision of forward/backward (master weights and gradients stay float32). */
  private prec: Precision = 'fp32';
  private w16?: Views16;
  /** The weights forwardBatch multiplies with (see setBatchWeights). */
  private batchWeights: 'fp32' | 'bf16' = 'fp32';

  constructor(
    readonly cfg: ResolvedConfig,
    readonly be: Backend,
    readonly comm: Communicator,
  ) {
    if (comm.size !== cfg.parallel.tp) {
      throw new Error(`communicator has ${comm.size} ranks but the model's TP degree is ${cfg.parallel.tp}`);
    }
    this.N = comm.size;
    this.rank = comm.rank;
    this.vocabStart = this.rank * cfg.local.vocab;
    this.specs = paramSpecs(cfg);
    this.params = new ParamSet(this.specs, this.N, be);
    this.grads = new ParamSet(this.specs, this.N, be);
    this.w = views(this.params, cfg.model.layers);
    this.g = views(this.grads, cfg.model.layers);
    const probe = be.alloc(1);
    const tables = ropeTables(cfg.model.seqLen, cfg.headDim, cfg.model.ropeTheta, probe instanceof Float64Array ? Float64Array : Float32Array);
    this.cos = be.alloc(tables.cos.length);
    this.cos.set(tables.cos);
    this.sin = be.alloc(tables.sin.length);
    this.sin.set(tables.sin);
  }

  /** This rank's dimensions (names as in the file comment). */
  private get dims() {
    const cfg = this.cfg;
    const HD = cfg.headDim;
    return {
      h: cfg.model.hidden,
      HD,
      NHl: cfg.local.heads,
      NKVl: cfg.local.kvHeads,
      qd: cfg.local.heads * HD,
      kvd: cfg.local.kvHeads * HD,
      F: cfg.local.ffn,
      Vl: cfg.local.vocab,
      s: cfg.shared,
      c: cfg.privateScaleValue,
      eps: cfg.model.normEps,
    };
  }

  /** Seeded initialisation: each full logical weight from the seed, then this rank's slice. */
  initFromSeed(seed: number): void {
    const Ctor = this.params.flat instanceof Float64Array ? Float64Array : Float32Array;
    this.specs.forEach((spec, i) => {
      const full = initFull(spec, i, seed, Ctor);
      sliceShard(spec, full, this.N, this.rank, this.params.get(spec.name));
    });
  }

  /** Load full logical tensors (by name) into this rank's shards. */
  loadFull(get: (spec: ParamSpec) => ArrayLike<number>): void {
    for (const spec of this.specs) sliceShard(spec, get(spec), this.N, this.rank, this.params.get(spec.name));
  }

  get precision(): Precision {
    return this.prec;
  }

  /**
   * Choose the precision of forward and backward. bf16 (mixed precision, the reference's recipe):
   * float32 master weights, gradients and optimiser state; bf16 copies of the GEMM weights, rounded
   * from the masters at the start of every forward (so after each optimiser step); every GEMM on bf16
   * operands with float32 output (`Backend.gemmBf16`); the activations the backward needs kept in bf16
   * except the residual stream, RMSNorm statistics and logits (float32); RMSNorm, softmax,
   * cross-entropy and RoPE computed in float32; attention's products on bf16 q, k, v and probabilities;
   * the forward partial all-reduces and the embedding all-reduce carry bf16, the backward reductions
   * float32. Needs a float32 backend.
   */
  setPrecision(p: Precision): void {
    if (p !== 'fp32' && p !== 'bf16') throw new Error(`unknown precision ${JSON.stringify(p)} (expected fp32 or bf16)`);
    if (p === 'bf16' && !(this.params.flat instanceof Float32Array)) throw new Error('bf16 precision needs a float32 backend (float64 is for finite-difference gradient checks)');
    if (p === this.prec) return;
    this.acts?.release(this.be);
    this.acts = undefined;
    this.acts16?.release(this.be);
    this.acts16 = undefined;
    this.prec = p;
  }

  /**
   * Round the float32 master GEMM weights into their bf16 copies. Every bf16 forward starts with it, so
   * the copies always follow the masters (after each optimiser step, load or edit) and the backward
   * uses exactly the weights its forward used.
   */
  private refreshBf16Weights(): Views16 {
    const w = this.w;
    const conv = (src: FloatArray, dst?: Uint16Array): Uint16Array => {
      const out = dst ?? new Uint16Array(src.length);
      this.be.toBf16(out, src as Float32Array, src.length);
      return out;
    };
    if (!this.w16) {
      this.w16 = {
        layers: w.layers.map((lw) => ({ wq: conv(lw.wq), wk: conv(lw.wk), wv: conv(lw.wv), wo: conv(lw.wo), wgate: conv(lw.wgate), wup: conv(lw.wup), wdown: conv(lw.wdown) })),
        lmHead: conv(w.lmHead),
      };
    } else {
      w.layers.forEach((lw, l) => {
        const d = this.w16!.layers[l]!;
        conv(lw.wq, d.wq); conv(lw.wk, d.wk); conv(lw.wv, d.wv); conv(lw.wo, d.wo);
        conv(lw.wgate, d.wgate); conv(lw.wup, d.wup); conv(lw.wdown, d.wdown);
      });
      conv(w.lmHead, this.w16.lmHead);
    }
    return this.w16;
  }

  /**
   * The weights of forwardBatch (the inference engine's step): 'fp32', the float32 masters; or 'bf16',
   * copies of every GEMM weight rounded to bf16 now (call it after loading), which `gemmBf16W` reads at
   * 2 bytes per weight. Activations, the KV cache, norms and the embedding stay float32.
   */
  setBatchWeights(p: 'fp32' | 'bf16'): void {
    if (p !== 'fp32' && p !== 'bf16') throw new Error(`unknown weight precision ${JSON.stringify(p)} (expected fp32 or bf16)`);
    if (p === 'bf16') {
      if (!(this.params.flat instanceof Float32Array)) throw new Error('bf16 weights need a float32 backend');
      this.refreshBf16Weights();
    }
    this.batchWeights = p;
  }

  zeroGrad(): void {
    this.grads.flat.fill(0);
  }

  private actsFor(B: number, T: number): Acts {
    if (T > this.cfg.model.seqLen) throw new Error(`sequence length ${T} exceeds the model's seqLen ${this.cfg.model.seqLen}`);
    if (!this.acts || this.acts.B !== B || this.acts.T !== T) {
      this.acts?.release(this.be);
      this.acts = undefined;
      this.acts = new Acts(this.be, this.cfg, B, T);
    }
    return this.acts;
  }

  /**
   * Forward pass over tokens [B, T] with targets [B, T]; returns the mean cross-entropy over the
   * B·T positions (identical on every rank). Saves activations for `backward`.
   */
  async forward(inputs: Int32Array, targets: Int32Array, B: number, T: number): Promise<number> {
    if (this.prec === 'bf16') return this.forwardBf16(inputs, targets, B, T);
    const { be, comm, cfg, w } = this;
    const a = this.actsFor(B, T);
    const BT = B * T;
    const h = cfg.model.hidden;
    const Vl = cfg.local.vocab;
    const eps = cfg.model.normEps;

    be.embeddingForward(a.resid[0]!, w.embed, inputs, BT, h, this.vocabStart, Vl);
    await embeddingReduce(comm, a.resid[0]!, BT * h, TAGS.embedFwd);

    for (let l = 0; l < cfg.model.layers; l++) {
      await this.block(l, B, T, 0, T, {
        x: a.resid[l]!, xMid: a.residMid[l]!, xOut: a.resid[l + 1]!,
        ln1: a.ln1[l]!, rstd1: a.rstd1[l]!, q: a.q[l]!, k: a.k[l]!, v: a.v[l]!, att: a.att[l]!, attnOut: a.attnOut[l]!,
        ln2: a.ln2[l]!, rstd2: a.rstd2[l]!, gate: a.gate[l]!, up: a.up[l]!, sw: a.sw[l]!, o: a.o, pack: a.pack,
      });
    }

    const xL = a.resid[cfg.model.layers]!;
    be.rmsnormForward(a.lnf, a.rstdf, xL, w.norm, BT, h, eps);
    be.gemm(false, true, BT, Vl, h, 1, a.lnf, 0, h, w.lmHead, 0, h, 0, a.logits, 0, Vl);
    return this.crossEntropy(a, targets, BT, Vl);
  }

  /**
   * One transformer block on Tq new tokens per sequence at positions pos0 …, in place of the caller's
   * buffers: xMid = x + attn(x), xOut = xMid + mlp(xMid) (x, xMid and xOut may be the same buffer).
   * k and v are the key/value store [B, kvLen, NKV/N, HD]: the new keys are written at positions
   * pos0 … pos0+Tq−1 and attention reads positions 0 … pos0+Tq−1 (training: kvLen = Tq, pos0 = 0).
   */
  private async block(l: number, B: number, Tq: number, pos0: number, kvLen: number, b: BlockBuffers): Promise<void> {
    const { be, comm } = this;
    const lw = this.w.layers[l]!;
    const BT = B * Tq;
    const { h, HD, NHl, NKVl, qd, kvd, F, s, c, eps } = this.dims;
    // --- attention half ---
    be.rmsnormForward(b.ln1, b.rstd1, b.x, lw.ln1, BT, h, eps);
    be.gemm(false, true, BT, qd, h, 1, b.ln1, 0, h, lw.wq, 0, h, 0, b.q, 0, qd);
    be.ropeForward(b.q, this.cos, this.sin, B, Tq, NHl, HD, pos0);
    for (const [w, store] of [[lw.wk, b.k], [lw.wv, b.v]] as const) {
      if (kvLen === Tq) {
        be.gemm(false, true, BT, kvd, h, 1, b.ln1, 0, h, w, 0, h, 0, store, 0, kvd);
      } else {
        for (let bi = 0; bi < B; bi++) be.gemm(false, true, Tq, kvd, h, 1, b.ln1, bi * Tq * h, h, w, 0, h, 0, store, (bi * kvLen + pos0) * kvd, kvd);
      }
    }
    if (kvLen === Tq) be.ropeForward(b.k, this.cos, this.sin, B, Tq, NKVl, HD, pos0);
    else for (let bi = 0; bi < B; bi++) be.ropeForward(b.k.subarray((bi * kvLen + pos0) * kvd), this.cos, this.sin, 1, Tq, NKVl, HD, pos0);
    be.attentionForward(b.attnOut, b.att, b.q, b.k, b.v, B, Tq, pos0 + Tq, NHl, NKVl, HD, kvLen * kvd);
    be.gemm(false, true, BT, h, qd, 1, b.attnOut, 0, qd, lw.wo, 0, qd, 0, b.o, 0, h);
    await partialAllReduce(comm, be, b.o, BT, h, s, c, b.pack, TAGS.attnFwd);
    be.add(b.xMid, b.x, b.o, BT * h);
    // --- MLP half ---
    be.rmsnormForward(b.ln2, b.rstd2, b.xMid, lw.ln2, BT, h, eps);
    be.gemm(false, true, BT, F, h, 1, b.ln2, 0, h, lw.wgate, 0, h, 0, b.gate, 0, F);
    be.gemm(false, true, BT, F, h, 1, b.ln2, 0, h, lw.wup, 0, h, 0, b.up, 0, F);
    be.swigluForward(b.sw, b.gate, b.up, BT * F);
    be.gemm(false, true, BT, h, F, 1, b.sw, 0, F, lw.wdown, 0, F, 0, b.o, 0, h);
    await partialAllReduce(comm, be, b.o, BT, h, s, c, b.pack, TAGS.mlpFwd);
    be.add(b.xOut, b.xMid, b.o, BT * h);
  }

  private actsFor16(B: number, T: number): Acts16 {
    if (T > this.cfg.model.seqLen) throw new Error(`sequence length ${T} exceeds the model's seqLen ${this.cfg.model.seqLen}`);
    if (!this.acts16 || this.acts16.B !== B || this.acts16.T !== T) {
      this.acts16?.release(this.be);
      this.acts16 = undefined;
      this.acts16 = new Acts16((n) => this.be.alloc(n) as Float32Array, (n) => new Uint16Array(n), this.cfg, B, T);
    }
    return this.acts16;
  }

  /** `forward` in bf16 mode (see setPrecision). */
  private async forwardBf16(inputs: Int32Array, targets: Int32Array, B: number, T: number): Promise<number> {
    const { be, comm, cfg } = this;
    const w = this.w;
    const w16 = this.refreshBf16Weights();
    const a = this.actsFor16(B, T);
    const BT = B * T;
    const { h, HD, NHl, NKVl, qd, kvd, F, Vl, s, c, eps } = this.dims;
    const cos = this.cos as Float32Array;
    const sin = this.sin as Float32Array;

    be.embeddingForward(a.resid[0]!, w.embed, inputs, BT, h, this.vocabStart, Vl);
    await embeddingReduceBf16(comm, be, a.resid[0]!, BT * h, a.pack16, TAGS.embedFwd);

    for (let l = 0; l < cfg.model.layers; l++) {
      const lw = w.layers[l]!;
      const l16 = w16.layers[l]!;
      const x = a.resid[l]!;
      const xMid = a.residMid[l]!;
      // --- attention half (float32 scratch: dln, dq, dk, dv, dAttnOut) ---
      be.rmsnormForward(a.dln, a.rstd1[l]!, x, lw.ln1, BT, h, eps);
      be.toBf16(a.ln1[l]!, a.dln, BT * h);
      be.gemmBf16(false, true, BT, qd, h, 1, a.ln1[l]!, 0, h, l16.wq, 0, h, 0, a.dq, 0, qd);
      be.ropeForward(a.dq, cos, sin, B, T, NHl, HD, 0);
      be.toBf16(a.q[l]!, a.dq, BT * qd);
      be.gemmBf16(false, true, BT, kvd, h, 1, a.ln1[l]!, 0, h, l16.wk, 0, h, 0, a.dk, 0, kvd);
      be.ropeForward(a.dk, cos, sin, B, T, NKVl, HD, 0);
      be.toBf16(a.k[l]!, a.dk, BT * kvd);
      be.gemmBf16(false, true, BT, kvd, h, 1, a.ln1[l]!, 0, h, l16.wv, 0, h, 0, a.dv, 0, kvd);
      be.toBf16(a.v[l]!, a.dv, BT * kvd);
      attentionForwardBf16(be, a.dAttnOut, a.att[l]!, a.q[l]!, a.k[l]!, a.v[l]!, a.scores, B, T, T, NHl, NKVl, HD, T * kvd);
      be.toBf16(a.attnOut[l]!, a.dAttnOut, BT * qd);
      be.gemmBf16(false, true, BT, h, qd, 1, a.attnOut[l]!, 0, qd, l16.wo, 0, qd, 0, a.o, 0, h);
      await partialAllReduceBf16(comm, be, a.o, BT, h, s, c, a.pack, a.pack16, TAGS.attnFwd);
      be.add(xMid, x, a.o, BT * h);
      // --- MLP half: gate and up rounded to bf16 first, so the backward sees what the forward used ---
      be.rmsnormForward(a.dln, a.rstd2[l]!, xMid, lw.ln2, BT, h, eps);
      be.toBf16(a.ln2[l]!, a.dln, BT * h);
      be.gemmBf16(false, true, BT, F, h, 1, a.ln2[l]!, 0, h, l16.wgate, 0, h, 0, a.dgate, 0, F);
      be.toBf16(a.gate[l]!, a.dgate, BT * F);
      be.fromBf16(a.dgate, a.gate[l]!, BT * F);
      be.gemmBf16(false, true, BT, F, h, 1, a.ln2[l]!, 0, h, l16.wup, 0, h, 0, a.dup, 0, F);
      be.toBf16(a.up[l]!, a.dup, BT * F);
      be.fromBf16(a.dup, a.up[l]!, BT * F);
      be.swigluForward(a.dsw, a.dgate, a.dup, BT * F);
      be.toBf16(a.sw[l]!, a.dsw, BT * F);
      be.gemmBf16(false, true, BT, h, F, 1, a.sw[l]!, 0, F, l16.wdown, 0, F, 0, a.o, 0, h);
      await partialAllReduceBf16(comm, be, a.o, BT, h, s, c, a.pack, a.pack16, TAGS.mlpFwd);
      be.add(a.resid[l + 1]!, xMid, a.o, BT * h);
    }

    const xL = a.resid[cfg.model.layers]!;
    be.rmsnormForward(a.dln, a.rstdf, xL, w.norm, BT, h, eps);
    be.toBf16(a.lnf, a.dln, BT * h);
    be.gemmBf16(false, true, BT, Vl, h, 1, a.lnf, 0, h, w16.lmHead, 0, h, 0, a.logits, 0, Vl);
    return this.crossEntropy(a, targets, BT, Vl);
  }

  /** `backward` in bf16 mode: GEMMs on bf16 operands (gradients rounded first), reductions in float32. */
  private async backwardBf16(inputs: Int32Array, targets: Int32Array, lossScale: number): Promise<void> {
    const { be, comm, cfg, w, g } = this;
    const a = this.acts16;
    const w16 = this.w16;
    if (!a || !w16) throw new Error('backward called before forward');
    const { B, T } = a;
    const BT = B * T;
    const { h, HD, NHl, NKVl, qd, kvd, F, Vl, s, c } = this.dims;
    const L = cfg.model.layers;
    const cos = this.cos as Float32Array;
    const sin = this.sin as Float32Array;
    const gf = (x: FloatArray) => x as Float32Array;

    // Cross-entropy and LM head, LM_CHUNK_ROWS rows at a time: the float32 logit gradients of a piece,
    // rounded to bf16, feed both GEMMs (the weight gradient accumulates over the pieces in order).
    for (let r0 = 0; r0 < BT; r0 += LM_CHUNK_ROWS) {
      const rows = Math.min(BT, r0 + LM_CHUNK_ROWS) - r0;
      const o = r0 * Vl;
      be.crossEntropyBackward(a.dlogits, a.logits.subarray(o, o + rows * Vl), targets.subarray(r0, r0 + rows), a.lse.subarray(r0, r0 + rows), rows, Vl, this.vocabStart, lossScale);
      be.toBf16(a.dlogits16, a.dlogits, rows * Vl);
      be.gemmBf16(true, false, Vl, h, rows, 1, a.dlogits16, 0, Vl, a.lnf, r0 * h, h, 1, gf(g.lmHead), 0, h);
      be.gemmBf16(false, false, rows, h, Vl, 1, a.dlogits16, 0, Vl, w16.lmHead, 0, h, 0, a.dln, r0 * h, h);
    }
    a.dresid.fill(0);
    be.rmsnormBackward(a.dresid, g.norm, a.dln, a.resid[L]!, w.norm, a.rstdf, BT, h);

    for (let l = L - 1; l >= 0; l--) {
      const lw = w.layers[l]!;
      const l16 = w16.layers[l]!;
      const lg = g.layers[l]!;
      // --- MLP half ---
      a.dO.set(a.dresid.subarray(0, BT * h));
      await partialAllReduce(comm, be, a.dO, BT, h, s, c, a.pack, TAGS.mlpBwd);
      be.toBf16(a.dO16, a.dO, BT * h);
      be.gemmBf16(true, false, h, F, BT, 1, a.dO16, 0, h, a.sw[l]!, 0, F, 1, gf(lg.wdown), 0, F);
      be.gemmBf16(false, false, BT, F, h, 1, a.dO16, 0, h, l16.wdown, 0, F, 0, a.dsw, 0, F);
      for (let r0 = 0; r0 < BT; r0 += BF16_CHUNK_ROWS) {
        const n = (Math.min(BT, r0 + BF16_CHUNK_ROWS) - r0) * F;
        const o = r0 * F;
        be.fromBf16(a.gTmp, a.gate[l]!.subarray(o, o + n), n);
        be.fromBf16(a.uTmp, a.up[l]!.subarray(o, o + n), n);
        be.swigluBackward(a.dgate.subarray(o, o + n), a.dup.subarray(o, o + n), a.dsw.subarray(o, o + n), a.gTmp, a.uTmp, n);
      }
      be.toBf16(a.dgate16, a.dgate, BT * F);
      be.toBf16(a.dup16, a.dup, BT * F);
      be.gemmBf16(true, false, F, h, BT, 1, a.dgate16, 0, F, a.ln2[l]!, 0, h, 1, gf(lg.wgate), 0, h);
      be.gemmBf16(true, false, F, h, BT, 1, a.dup16, 0, F, a.ln2[l]!, 0, h, 1, gf(lg.wup), 0, h);
      be.gemmBf16(false, false, BT, h, F, 1, a.dgate16, 0, F, l16.wgate, 0, h, 0, a.dln, 0, h);
      be.gemmBf16(false, false, BT, h, F, 1, a.dup16, 0, F, l16.wup, 0, h, 1, a.dln, 0, h);
      be.rmsnormBackward(a.dresid, lg.ln2, a.dln, a.residMid[l]!, lw.ln2, a.rstd2[l]!, BT, h);

      // --- attention half ---
      a.dO.set(a.dresid.subarray(0, BT * h));
      await partialAllReduce(comm, be, a.dO, BT, h, s, c, a.pack, TAGS.attnBwd);
      be.toBf16(a.dO16, a.dO, BT * h);
      be.gemmBf16(true, false, h, qd, BT, 1, a.dO16, 0, h, a.attnOut[l]!, 0, qd, 1, gf(lg.wo), 0, qd);
      be.gemmBf16(false, false, BT, qd, h, 1, a.dO16, 0, h, l16.wo, 0, qd, 0, a.dAttnOut, 0, qd);
      be.toBf16(a.dAttnOut16, a.dAttnOut, BT * qd);
      attentionBackwardBf16(be, a.dq, a.dk, a.dv, a.dAttnOut16, a.q[l]!, a.k[l]!, a.v[l]!, a.att[l]!, a.p32, a.scores, a.dS16, B, T, NHl, NKVl, HD);
      be.ropeBackward(a.dq, cos, sin, B, T, NHl, HD, 0);
      be.ropeBackward(a.dk, cos, sin, B, T, NKVl, HD, 0);
      be.toBf16(a.dq16, a.dq, BT * qd);
      be.toBf16(a.dk16, a.dk, BT * kvd);
      be.toBf16(a.dv16, a.dv, BT * kvd);
      be.gemmBf16(true, false, qd, h, BT, 1, a.dq16, 0, qd, a.ln1[l]!, 0, h, 1, gf(lg.wq), 0, h);
      be.gemmBf16(true, false, kvd, h, BT, 1, a.dk16, 0, kvd, a.ln1[l]!, 0, h, 1, gf(lg.wk), 0, h);
      be.gemmBf16(true, false, kvd, h, BT, 1, a.dv16, 0, kvd, a.ln1[l]!, 0, h, 1, gf(lg.wv), 0, h);
      be.gemmBf16(false, false, BT, h, qd, 1, a.dq16, 0, qd, l16.wq, 0, h, 0, a.dln, 0, h);
      be.gemmBf16(false, false, BT, h, kvd, 1, a.dk16, 0, kvd, l16.wk, 0, h, 1, a.dln, 0, h);
      be.gemmBf16(false, false, BT, h, kvd, 1, a.dv16, 0, kvd, l16.wv, 0, h, 1, a.dln, 0, h);
      be.rmsnormBackward(a.dresid, lg.ln1, a.dln, a.resid[l]!, lw.ln1, a.rstd1[l]!, BT, h);
    }

    await embeddingReduce(comm, a.dresid, BT * h, TAGS.embedBwd);
    be.embeddingBackward(g.embed, a.dresid, inputs, BT, h, this.vocabStart, Vl);
  }

  private async crossEntropy(a: { rowMax: FloatArray; sums: FloatArray; logits: FloatArray; lse: FloatArray }, targets: Int32Array, BT: number, Vl: number): Promise<number> {
    const { be, comm } = this;
    be.rowMax(a.rowMax, a.logits, BT, Vl);
    await vocabParallelMax(comm, a.rowMax, BT, TAGS.ceMax);
    be.rowSumExp(a.sums, a.logits, a.rowMax, BT, Vl);
    be.pickTarget(a.sums.subarray(BT), a.logits, targets, BT, Vl, this.vocabStart);
    await vocabParallelSums(comm, a.sums, BT, TAGS.ceSum);
    let loss = 0;
    for (let i = 0; i < BT; i++) {
      const lse = Math.log(a.sums[i]!) + a.rowMax[i]!;
      a.lse[i] = lse;
      loss += lse - a.sums[BT + i]!;
    }
    return loss / BT;
  }

  /**
   * Backward of the last `forward`, accumulating parameter gradients. `lossScale` multiplies the
   * gradient of the summed per-token loss: pass 1/(total tokens) so that gradient accumulation over
   * micro-batches yields the gradient of the mean loss.
   */
  async backward(inputs: Int32Array, targets: Int32Array, lossScale: number): Promise<void> {
    if (this.prec === 'bf16') return this.backwardBf16(inputs, targets, lossScale);
    const { be, comm, cfg, w, g } = this;
    const a = this.acts;
    if (!a) throw new Error('backward called before forward');
    const { B, T } = a;
    const BT = B * T;
    const { h, HD, NHl, NKVl, qd, kvd, F, Vl, s, c } = this.dims;
    const L = cfg.model.layers;

    // Cross-entropy and LM head (no communication: each rank's logits come from its own stream).
    be.crossEntropyBackward(a.dlogits, a.logits, targets, a.lse, BT, Vl, this.vocabStart, lossScale);
    be.gemm(true, false, Vl, h, BT, 1, a.dlogits, 0, Vl, a.lnf, 0, h, 1, g.lmHead, 0, h);
    be.gemm(false, false, BT, h, Vl, 1, a.dlogits, 0, Vl, w.lmHead, 0, h, 0, a.dln, 0, h);
    a.dresid.fill(0);
    be.rmsnormBackward(a.dresid, g.norm, a.dln, a.resid[L]!, w.norm, a.rstdf, BT, h);

    for (let l = L - 1; l >= 0; l--) {
      const lw = w.layers[l]!;
      const lg = g.layers[l]!;
      // --- MLP half: resid[l+1] = residMid + partialAllReduce(down(swiglu(gate, up)(ln2(residMid)))) ---
      a.dO.set(a.dresid.subarray(0, BT * h));
      await partialAllReduce(comm, be, a.dO, BT, h, s, c, a.pack, TAGS.mlpBwd);
      be.gemm(true, false, h, F, BT, 1, a.dO, 0, h, a.sw[l]!, 0, F, 1, lg.wdown, 0, F);
      be.gemm(false, false, BT, F, h, 1, a.dO, 0, h, lw.wdown, 0, F, 0, a.dsw, 0, F);
      be.swigluBackward(a.dgate, a.dup, a.dsw, a.gate[l]!, a.up[l]!, BT * F);
      be.gemm(true, false, F, h, BT, 1, a.dgate, 0, F, a.ln2[l]!, 0, h, 1, lg.wgate, 0, h);
      be.gemm(true, false, F, h, BT, 1, a.dup, 0, F, a.ln2[l]!, 0, h, 1, lg.wup, 0, h);
      be.gemm(false, false, BT, h, F, 1, a.dgate, 0, F, lw.wgate, 0, h, 0, a.dln, 0, h);
      be.gemm(false, false, BT, h, F, 1, a.dup, 0, F, lw.wup, 0, h, 1, a.dln, 0, h);
      // Column-parallel input gradient stays rank-local (no all-reduce: Megatron's f is removed).
      be.rmsnormBackward(a.dresid, lg.ln2, a.dln, a.residMid[l]!, lw.ln2, a.rstd2[l]!, BT, h);

      // --- attention half ---
      a.dO.set(a.dresid.subarray(0, BT * h));
      await partialAllReduce(comm, be, a.dO, BT, h, s, c, a.pack, TAGS.attnBwd);
      be.gemm(true, false, h, qd, BT, 1, a.dO, 0, h, a.attnOut[l]!, 0, qd, 1, lg.wo, 0, qd);
      be.gemm(false, false, BT, qd, h, 1, a.dO, 0, h, lw.wo, 0, qd, 0, a.dAttnOut, 0, qd);
      be.attentionBackward(a.dq, a.dk, a.dv, a.dAttScratch, a.dAttnOut, a.q[l]!, a.k[l]!, a.v[l]!, a.att[l]!, B, T, NHl, NKVl, HD);
      be.ropeBackward(a.dq, this.cos, this.sin, B, T, NHl, HD, 0);
      be.ropeBackward(a.dk, this.cos, this.sin, B, T, NKVl, HD, 0);
      be.gemm(true, false, qd, h, BT, 1, a.dq, 0, qd, a.ln1[l]!, 0, h, 1, lg.wq, 0, h);
      be.gemm(true, false, kvd, h, BT, 1, a.dk, 0, kvd, a.ln1[l]!, 0, h, 1, lg.wk, 0, h);
      be.gemm(true, false, kvd, h, BT, 1, a.dv, 0, kvd, a.ln1[l]!, 0, h, 1, lg.wv, 0, h);
      be.gemm(false, false, BT, h, qd, 1, a.dq, 0, qd, lw.wq, 0, h, 0, a.dln, 0, h);
      be.gemm(false, false, BT, h, kvd, 1, a.dk, 0, kvd, lw.wk, 0, h, 1, a.dln, 0, h);
      be.gemm(false, false, BT, h, kvd, 1, a.dv, 0, kvd, lw.wv, 0, h, 1, a.dln, 0, h);
      be.rmsnormBackward(a.dresid, lg.ln1, a.dln, a.resid[l]!, lw.ln1, a.rstd1[l]!, BT, h);
    }

    // Block-0 entry: the embedding output is one replicated tensor; its gradient is the sum of the
    // rank-partial gradients over all h channels.
    await embeddingReduce(comm, a.dresid, BT * h, TAGS.embedBwd);
    be.embeddingBackward(g.embed, a.dresid, inputs, BT, h, this.vocabStart, Vl);
  }

  /**
   * Gradient finalisation, before the optimiser step: every replicated parameter's gradient (tag
   * shard = null) is summed over the TP group. Driven by the tags, not by names.
   */
  async finalizeGrads(): Promise<void> {
    if (this.N === 1) return;
    for (const spec of this.specs) {
      if (spec.shard !== null) continue;
      const gv = this.grads.get(spec.name);
      await this.comm.allReduce(gv, 'sum', TAGS.gradSync);
    }
  }

  /**
   * Global L2 norm of the full logical gradient (call after finalizeGrads): sharded tensors are summed
   * over ranks, replicated ones counted once. Identical on every rank.
   */
  async gradNorm(): Promise<number> {
    let shardedSq = 0;
    let replSq = 0;
    for (const spec of this.specs) {
      const gv = this.grads.get(spec.name);
      const sq = this.be.sumSquares(gv, gv.length);
      if (spec.shard === null) replSq += sq;
      else shardedSq += sq;
    }
    if (this.N > 1) {
      const buf = this.params.flat instanceof Float64Array ? new Float64Array([shardedSq]) : new Float32Array([shardedSq]);
      await this.comm.allReduce(buf, 'sum', TAGS.gradNorm);
      shardedSq = buf[0]!;
    }
    return Math.sqrt(shardedSq + replSq);
  }

  /** Hand a KV cache's buffers back to the backend. */
  releaseCache(cache: KVCache): void {
    for (const x of [...cache.k, ...cache.v]) this.be.release(x);
    for (const sc of cache.scratch.values()) for (const x of Object.values(sc)) this.be.release(x);
    cache.scratch.clear();
  }

  /** A KV cache for incremental decoding of B sequences of up to `maxLen` tokens. */
  createCache(B: number, maxLen: number): KVCache {
    if (maxLen > this.cfg.model.seqLen) throw new Error(`cache length ${maxLen} exceeds the model's seqLen ${this.cfg.model.seqLen}`);
    const kvd = this.cfg.local.kvHeads * this.cfg.headDim;
    const L = this.cfg.model.layers;
    return {
      B,
      maxLen,
      len: 0,
      k: Array.from({ length: L }, () => this.be.alloc(B * maxLen * kvd)),
      v: Array.from({ length: L }, () => this.be.alloc(B * maxLen * kvd)),
      scratch: new Map(),
    };
  }

  /**
   * Incremental forward for generation: appends tokens [B, Tq] at positions cache.len … to the cache
   * and returns the logits of the LAST new position of each sequence, gathered over the vocab-parallel
   * ranks: [B, V] (identical on every rank).
   */
  async forwardIncremental(tokens: Int32Array, Tq: number, cache: KVCache): Promise<FloatArray> {
    const { be, comm, cfg, w } = this;
    const B = cache.B;
    const pos0 = cache.len;
    if (pos0 + Tq > cache.maxLen) throw new Error(`sequence of ${pos0 + Tq} tokens exceeds the cache length ${cache.maxLen}`);
    const BT = B * Tq;
    const h = cfg.model.hidden;
    const NHl = cfg.local.heads;
    const qd = NHl * cfg.headDim;
    const F = cfg.local.ffn;
    const Vl = cfg.local.vocab;
    const Tk = pos0 + Tq;
    const eps = cfg.model.normEps;
    let sc = cache.scratch.get(Tq);
    if (!sc) {
      const a = (n: number) => be.alloc(n);
      sc = {
        x: a(BT * h), xn: a(BT * h), rstd: a(BT), q: a(BT * qd),
        att: a(B * NHl * Tq * cache.maxLen), ao: a(BT * qd), o: a(BT * h), pack: a(BT * h),
        gate: a(BT * F), up: a(BT * F), sw: a(BT * F),
        last: a(B * h), lastN: a(B * h), local: a(B * Vl), gathered: a(this.N * B * Vl), out: a(B * cfg.vocab),
      };
      cache.scratch.set(Tq, sc);
    }
    const { x, xn, rstd, q, att, ao, o, pack, gate, up, sw } = sc;
    be.embeddingForward(x, w.embed, tokens, BT, h, this.vocabStart, Vl);
    await embeddingReduce(comm, x, BT * h, TAGS.embedFwd);
    for (let l = 0; l < cfg.model.layers; l++) {
      await this.block(l, B, Tq, pos0, cache.maxLen, {
        x, xMid: x, xOut: x, ln1: xn, rstd1: rstd, q, k: cache.k[l]!, v: cache.v[l]!, att, attnOut: ao,
        ln2: xn, rstd2: rstd, gate, up, sw, o, pack,
      });
    }
    cache.len = Tk;
    // Final norm and LM head on the last position of each sequence only.
    const { last, lastN, local, gathered, out } = sc;
    for (let b = 0; b < B; b++) last.set(x.subarray(((b + 1) * Tq - 1) * h, (b + 1) * Tq * h), b * h);
    be.rmsnormForward(lastN, rstd, last, w.norm, B, h, eps);
    be.gemm(false, true, B, Vl, h, 1, lastN, 0, h, w.lmHead, 0, h, 0, local, 0, Vl);
    if (this.N === 1) return local;
    await comm.allGather(gathered, local, 'gen.logits');
    for (let r = 0; r < this.N; r++) {
      for (let b = 0; b < B; b++) out.set(gathered.subarray((r * B + b) * Vl, (r * B + b + 1) * Vl), b * cfg.vocab + r * Vl);
    }
    return out;
  }

  /**
   * After `forward`: per position i of the B·T, the natural-log probability of targets[i] under the
   * softmax over the whole (padded) vocabulary, and whether targets[i] is the argmax (the first index
   * on ties), i.e. what a greedy decoder would pick. Identical on every rank (one MAX all-reduce).
   */
  async targetLogProbs(targets: Int32Array): Promise<{ logp: Float64Array; greedy: Uint8Array }> {
    const a = this.prec === 'bf16' ? this.acts16 : this.acts;
    if (!a) throw new Error('targetLogProbs called before forward');
    const BT = a.B * a.T;
    const Vl = this.cfg.local.vocab;
    const logp = new Float64Array(BT);
    // From crossEntropy: a.rowMax (global maxima), a.sums[i] (global Σexp(x − max)) and a.sums[BT + i]
    // (the target logit); the log-sum-exp is formed again in float64.
    for (let i = 0; i < BT; i++) logp[i] = a.sums[BT + i]! - (Math.log(a.sums[i]!) + a.rowMax[i]!);
    const idx = new Float32Array(BT);
    const logits = a.logits;
    for (let i = 0; i < BT; i++) {
      const max = a.rowMax[i]!;
      let j = 0;
      const o = i * Vl;
      while (j < Vl && logits[o + j]! !== max) j++;
      idx[i] = j < Vl ? this.vocabStart + j : this.cfg.vocab;
    }
    await vocabParallelArgmax(this.comm, idx, BT, TAGS.scoreArgmax);
    const greedy = new Uint8Array(BT);
    for (let i = 0; i < BT; i++) greedy[i] = idx[i] === targets[i] ? 1 : 0;
    return { logp, greedy };
  }

  // -------------------------------------------------------------------------------------------------
  // Batched incremental forward (the inference engine's step; src/infer/)
  // -------------------------------------------------------------------------------------------------

  /**
   * One step of many sequences of different lengths in one forward: sequence i appends its `n` new
   * tokens (a prefill chunk, or 1 when decoding) at positions pos … pos+n−1 of cache slot `slot`
   * (createCache(slots, maxLen): slot b is batch row b), reading the keys of positions 0 … pos+n−1.
   * `tokens` holds every sequence's new tokens one after another (R = Σ n rows). Every GEMM and both
   * partial all-reduces of each block run once over all R rows; rotary embedding and attention run per
   * sequence. Returns the logits, gathered over the vocab-parallel ranks ([rows, V], identical on every
   * rank), of each sequence's last new row, or of all its new rows when `allLogits` is set, in order.
   */
  async forwardBatch(tokens: Int32Array, seqs: readonly BatchSeq[], cache: KVCache): Promise<FloatArray> {
    const { be, comm, cfg, w } = this;
    const R = tokens.length;
    const { h, HD, NHl, NKVl, qd, kvd, F, Vl, s, c, eps } = this.dims;
    const maxLen = cache.maxLen;
    let rows = 0;
    let outRows = 0;
    let maxN = 0;
    for (const q of seqs) {
      if (!(Number.isInteger(q.slot) && q.slot >= 0 && q.slot < cache.B)) throw new Error(`forwardBatch: slot ${q.slot} outside the cache's ${cache.B} slots`);
      if (!(q.n >= 1 && q.pos >= 0 && q.pos + q.n <= maxLen)) throw new Error(`forwardBatch: positions ${q.pos}…${q.pos + q.n - 1} outside the cache length ${maxLen}`);
      rows += q.n;
      outRows += q.allLogits ? q.n : 1;
      maxN = Math.max(maxN, q.n);
    }
    if (rows !== R) throw new Error(`forwardBatch: ${R} tokens for sequences of ${rows} new tokens`);
    const sc = this.batchScratch(cache, R, maxN, outRows);
    const { x, xn, rstd, q, kn, vn, ao, o, pack, gate, up, sw, att } = sc;
    const w16 = this.batchWeights === 'bf16' ? this.w16! : null;
    // C[M, N] = A[M, K] · Wᵀ, W [N, K] in float32 or (bf16 weights) its bf16 copy
    const mm = (M: number, N: number, K: number, A: FloatArray, Wt: FloatArray, W16: Uint16Array | undefined, C: FloatArray): void => {
      if (W16) be.gemmBf16W(M, N, K, 1, A as Float32Array, 0, K, W16, 0, K, 0, C as Float32Array, 0, N);
      else be.gemm(false, true, M, N, K, 1, A, 0, K, Wt, 0, K, 0, C, 0, N);
    };
    be.embeddingForward(x, w.embed, tokens, R, h, this.vocabStart, Vl);
    await embeddingReduce(comm, x, R * h, TAGS.embedFwd);
    for (let l = 0; l < cfg.model.layers; l++) {
      const lw = w.layers[l]!;
      const l16 = w16?.layers[l];
      const K = cache.k[l]!;
      const V = cache.v[l]!;
      be.rmsnormForward(xn, rstd, x, lw.ln1, R, h, eps);
      mm(R, qd, h, xn, lw.wq, l16?.wq, q);
      mm(R, kvd, h, xn, lw.wk, l16?.wk, kn);
      mm(R, kvd, h, xn, lw.wv, l16?.wv, vn);
      let r0 = 0;
      for (const sq of seqs) {
        be.ropeForward(q.subarray(r0 * qd), this.cos, this.sin, 1, sq.n, NHl, HD, sq.pos);
        be.ropeForward(kn.subarray(r0 * kvd), this.cos, this.sin, 1, sq.n, NKVl, HD, sq.pos);
        const at = (sq.slot * maxLen + sq.pos) * kvd;
        K.set(kn.subarray(r0 * kvd, (r0 + sq.n) * kvd), at);
        V.set(vn.subarray(r0 * kvd, (r0 + sq.n) * kvd), at);
        const base = sq.slot * maxLen * kvd;
        be.attentionForward(ao.subarray(r0 * qd), att, q.subarray(r0 * qd), K.subarray(base), V.subarray(base), 1, sq.n, sq.pos + sq.n, NHl, NKVl, HD, maxLen * kvd);
        r0 += sq.n;
      }
      mm(R, h, qd, ao, lw.wo, l16?.wo, o);
      await partialAllReduce(comm, be, o, R, h, s, c, pack, TAGS.attnFwd);
      be.add(x, x, o, R * h);
      be.rmsnormForward(xn, rstd, x, lw.ln2, R, h, eps);
      mm(R, F, h, xn, lw.wgate, l16?.wgate, gate);
      mm(R, F, h, xn, lw.wup, l16?.wup, up);
      be.swigluForward(sw, gate, up, R * F);
      mm(R, h, F, sw, lw.wdown, l16?.wdown, o);
      await partialAllReduce(comm, be, o, R, h, s, c, pack, TAGS.mlpFwd);
      be.add(x, x, o, R * h);
    }
    const { last, lastN, local, gathered, out } = sc;
    let r0 = 0;
    let k = 0;
    for (const sq of seqs) {
      const from = sq.allLogits ? r0 : r0 + sq.n - 1;
      const cnt = sq.allLogits ? sq.n : 1;
      last.set(x.subarray(from * h, (from + cnt) * h), k * h);
      k += cnt;
      r0 += sq.n;
    }
    be.rmsnormForward(lastN, rstd, last, w.norm, outRows, h, eps);
    mm(outRows, Vl, h, lastN, w.lmHead, w16?.lmHead, local);
    if (this.N === 1) return local.subarray(0, outRows * Vl);
    await comm.allGather(gathered, local, 'gen.logits', outRows * Vl);
    const n = outRows * Vl;
    for (let r = 0; r < this.N; r++) {
      for (let b = 0; b < outRows; b++) out.set(gathered.subarray(r * n + b * Vl, r * n + (b + 1) * Vl), b * cfg.vocab + r * Vl);
    }
    return out.subarray(0, outRows * cfg.vocab);
  }

  private readonly batchCaps = new WeakMap<Record<string, FloatArray>, [number, number, number]>();

  /** forwardBatch's work buffers, kept on the cache and grown to the next power of two when a step needs more. */
  private batchScratch(cache: KVCache, R: number, maxN: number, outRows: number): Record<string, FloatArray> {
    const key = -1;
    let sc = cache.scratch.get(key);
    const [cap, capN, capOut] = (sc && this.batchCaps.get(sc)) ?? [0, 0, 0];
    if (!sc || R > cap || maxN > capN || outRows > capOut) {
      if (sc) for (const b of Object.values(sc)) this.be.release(b);
      const up2 = (n: number, have: number) => Math.max(have, 2 ** Math.ceil(Math.log2(Math.max(1, n))));
      const Rc = up2(R, cap);
      const Nc = Math.min(cache.maxLen, up2(maxN, capN));
      const Oc = up2(outRows, capOut);
      const { h, qd, kvd, F, Vl, NHl } = this.dims;
      const a = (n: number) => this.be.alloc(n);
      sc = {
        x: a(Rc * h), xn: a(Rc * h), rstd: a(Math.max(Rc, Oc)), q: a(Rc * qd), kn: a(Rc * kvd), vn: a(Rc * kvd),
        ao: a(Rc * qd), o: a(Rc * h), pack: a(Rc * h), gate: a(Rc * F), up: a(Rc * F), sw: a(Rc * F),
        att: a(NHl * Nc * cache.maxLen),
        last: a(Oc * h), lastN: a(Oc * h), local: a(Oc * Vl), gathered: a(this.N * Oc * Vl), out: a(Oc * this.cfg.vocab),
      };
      cache.scratch.set(key, sc);
      this.batchCaps.set(sc, [Rc, Nc, Oc]);
    }
    return sc;
  }

  /** This rank's logits [B·T, V/N] (vocab block r) from the last training forward. */
  logitsLocal(): FloatArray {
    const a = this.prec === 'bf16' ? this.acts16 : this.acts;
    if (!a) throw new Error('logitsLocal called before forward');
    return a.logits;
  }

  /** The residual stream saved by the last forward: entry l is the input of layer l, entry L the output. */
  residualStreams(): FloatArray[] {
    const a = this.prec === 'bf16' ? this.acts16 : this.acts;
    if (!a) throw new Error('residualStreams called before forward');
    return [...a.resid, ...a.residMid];
  }

  /** Bytes this rank holds for parameters and gradients (optimiser moments add 2× params). */
  memoryBytes(): { params: number; grads: number } {
    const bpe = this.params.flat.BYTES_PER_ELEMENT;
    return { params: this.params.size * bpe, grads: this.grads.size * bpe };
  }
}

/** The Acts/Acts16 fields that the forward saves for the backward (the rest are work buffers). */
const SAVED = new Set(['resid', 'residMid', 'ln1', 'rstd1', 'q', 'k', 'v', 'att', 'attnOut', 'ln2', 'rstd2', 'gate', 'up', 'sw', 'lnf', 'rstdf', 'logits', 'rowMax', 'sums', 'lse']);

export interface RankMemory {
  params: number;
  grads: number;
  optimizer: number;
  /** Every training buffer for (B, T): saved activations plus work buffers. */
  activations: number;
  /** Of those, the tensors the forward keeps for the backward. */
  activationsSaved: number;
  /** Of the saved ones, the logits (float32 in both precisions: cross-entropy runs in float32). */
  logits: number;
  /** The bf16 copies of the GEMM weights (bf16 mode only). */
  bf16Weights: number;
}

/**
 * Bytes one rank of this config holds: parameters, gradients and AdamW moments (float32), the training
 * buffers for (B, T) in the given precision, and in bf16 mode the bf16 GEMM weights. Counted by running
 * the real allocation code against a counting allocator.
 */
export function rankMemoryBytes(cfg: ResolvedConfig, B: number, T: number, precision: Precision = 'fp32'): RankMemory {
  const sizes = new Map<object, number>();
  const f32 = (n: number): Float32Array => {
    const x = new Float32Array(0);
    sizes.set(x, 4 * n);
    return x;
  };
  const u16 = (n: number): Uint16Array => {
    const x = new Uint16Array(0);
    sizes.set(x, 2 * n);
    return x;
  };
  const counter = { alloc: f32 } as unknown as Backend;
  const acts: object = precision === 'bf16' ? new Acts16(f32, u16, cfg, B, T) : new Acts(counter, cfg, B, T);
  let all = 0;
  let saved = 0;
  let logits = 0;
  for (const [name, v] of Object.entries(acts)) {
    const bytes = (Array.isArray(v) ? v : [v]).reduce((t: number, x: unknown) => t + (sizes.get(x as object) ?? 0), 0);
    all += bytes;
    if (SAVED.has(name)) saved += bytes;
    if (name === 'logits') logits = bytes;
  }
  const specs = paramSpecs(cfg);
  let params = 0;
  let gemmWeights = 0;
  for (const sp of specs) {
    const n = localShape(sp, cfg.parallel.tp).reduce((x, y) => x * y, 1);
    params += n;
    // bf16 mode adds a bf16 copy of every GEMM weight (all 2-D weights but the embedding table).
    if (sp.shape.length === 2 && sp.name !== 'model.embed_tokens.weight') gemmWeights += n;
  }
  return { params: params * 4, grads: params * 4, optimizer: 2 * params * 4, activations: all, activationsSaved: saved, logits, bf16Weights: precision === 'bf16' ? gemmWeights * 2 : 0 };
}
