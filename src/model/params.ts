/**
 * Parameters: the full logical tensors (Hugging Face Llama names, [out, in] row-major), how each is
 * sharded across the TP group, and the per-rank flat storage with named views (llm.c style).
 *
 * Every parameter carries a tag set here at creation: `shard` = 0 (rows split: column-parallel and
 * vocab-parallel weights), 1 (columns split: row-parallel weights) or null (replicated: every RMSNorm
 * gain). Later phases — gradient finalisation, weight decay, checkpointing, gradient norms — are driven
 * by these tags, never by names.
 */
import type { Backend, FloatArray } from '../backend/types.js';
import type { ResolvedConfig } from './config.js';

export type ShardDim = 0 | 1 | null;

export interface ParamSpec {
  /** Hugging Face Llama tensor name. */
  name: string;
  /** Full logical shape [rows, cols] or [n]. */
  shape: number[];
  /** Sharding tag. */
  shard: ShardDim;
  /** Decoupled weight decay applies (2-D weights only). */
  decay: boolean;
  /** Initialisation: normal with this std, or constant one (norm gains). */
  init: { kind: 'normal'; std: number } | { kind: 'ones' };
}

/** Canonical order: embedding; per layer ln1, q, k, v, o, ln2, gate, up, down; final norm; lm_head. */
export function paramSpecs(cfg: ResolvedConfig): ParamSpec[] {
  const { hidden: h, layers: L, ffn: F } = cfg.model;
  const V = cfg.vocab;
  const qd = cfg.model.heads * cfg.headDim;
  const kvd = cfg.model.kvHeads * cfg.headDim;
  const std = 0.02;
  const resStd = 0.02 / Math.sqrt(2 * L);
  const specs: ParamSpec[] = [{ name: 'model.embed_tokens.weight', shape: [V, h], shard: 0, decay: true, init: { kind: 'normal', std } }];
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    specs.push(
      { name: `${p}input_layernorm.weight`, shape: [h], shard: null, decay: false, init: { kind: 'ones' } },
      { name: `${p}self_attn.q_proj.weight`, shape: [qd, h], shard: 0, decay: true, init: { kind: 'normal', std } },
      { name: `${p}self_attn.k_proj.weight`, shape: [kvd, h], shard: 0, decay: true, init: { kind: 'normal', std } },
      { name: `${p}self_attn.v_proj.weight`, shape: [kvd, h], shard: 0, decay: true, init: { kind: 'normal', std } },
      { name: `${p}self_attn.o_proj.weight`, shape: [h, qd], shard: 1, decay: true, init: { kind: 'normal', std: resStd } },
      { name: `${p}post_attention_layernorm.weight`, shape: [h], shard: null, decay: false, init: { kind: 'ones' } },
      { name: `${p}mlp.gate_proj.weight`, shape: [F, h], shard: 0, decay: true, init: { kind: 'normal', std } },
      { name: `${p}mlp.up_proj.weight`, shape: [F, h], shard: 0, decay: true, init: { kind: 'normal', std } },
      { name: `${p}mlp.down_proj.weight`, shape: [h, F], shard: 1, decay: true, init: { kind: 'normal', std: resStd } },
    );
  }
  specs.push(
    { name: 'model.norm.weight', shape: [h], shard: null, decay: false, init: { kind: 'ones' } },
    { name: 'lm_head.weight', shape: [V, h], shard: 0, decay: true, init: { kind: 'normal', std } },
  );
  return specs;
}

/** Shape of rank r's shard of a parameter (N ranks). */
export function localShape(spec: ParamSpec, N: number): number[] {
  if (spec.shard === null) return spec.shape.slice();
  const s = spec.shape.slice();
  s[spec.shard] = s[spec.shard]! / N;
  return s;
}

const numel = (shape: number[]): number => shape.reduce((a, b) => a * b, 1);

/** Copy rank r's shard out of a full logical tensor. */
export function sliceShard(spec: ParamSpec, full: ArrayLike<number>, N: number, r: number, out: FloatArray): void {
  if (spec.shard === null) {
    for (let i = 0; i < out.length; i++) out[i] = full[i]!;
    return;
  }
  const [rows, cols] = spec.shape as [number, number];
  if (spec.shard === 0) {
    const lr = rows / N;
    const base = r * lr * cols;
    for (let i = 0; i < lr * cols; i++) out[i] = full[base + i]!;
  } else {
    const lc = cols / N;
    for (let i = 0; i < rows; i++) for (let j = 0; j < lc; j++) out[i * lc + j] = full[i * cols + r * lc + j]!;
  }
}

/** Write rank r's shard into a full logical tensor (inverse of sliceShard). */
export function placeShard(spec: ParamSpec, shard: ArrayLike<number>, N: number, r: number, full: FloatArray): void {
  if (spec.shard === null) {
    for (let i = 0; i < shard.length; i++) full[i] = shard[i]!;
    return;
  }
  const [rows, cols] = spec.shape as [number, number];
  if (spec.shard === 0) {
    const lr = rows / N;
    const base = r * lr * cols;
    for (let i = 0; i < lr * cols; i++) full[base + i] = shard[i]!;
  } else {
    const lc = cols / N;
    for (let i = 0; i < rows; i++) for (let j = 0; j < lc; j++) full[i * cols + r * lc + j] = shard[i * lc + j]!;
  }
}

/** One rank's parameters (or gradients, or optimiser moments): one flat buffer, named views. */
export class ParamSet {
  readonly flat: FloatArray;
  readonly views = new Map<string, FloatArray>();
  readonly offsets = new Map<string, number>();

  constructor(
    readonly specs: ParamSpec[],
    readonly N: number,
    backend: Backend,
    shared = false,
  ) {
    let total = 0;
    for (const s of specs) {
      this.offsets.set(s.name, total);
      total += numel(localShape(s, N));
    }
    this.flat = backend.alloc(total, shared);
    for (const s of specs) {
      const off = this.offsets.get(s.name)!;
      this.views.set(s.name, this.flat.subarray(off, off + numel(localShape(s, N))));
    }
  }

  get(name: string): FloatArray {
    const v = this.views.get(name);
    if (!v) throw new Error(`no parameter named ${name}`);
    return v;
  }

  get size(): number {
    return this.flat.length;
  }
}

// -------------------------------------------------------------------------------------------------
// Seeded initialisation of the full logical weights (independent of N, so a TP = N shard equals the
// slice of the TP = 1 weight).
// -------------------------------------------------------------------------------------------------

/** 32-bit counter-based hash (a murmur3-style finaliser over seed, stream and index). */
function hash32(seed: number, stream: number, i: number): number {
  let x = (seed ^ Math.imul(stream + 1, 0x9e3779b1) ^ Math.imul(i + 1, 0x85ebca6b)) >>> 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** Standard normal number k of stream `stream` (Box–Muller on two hashed uniforms). */
export function normalAt(seed: number, stream: number, k: number): number {
  const u1 = (hash32(seed, stream, 2 * k) + 1) / 4294967297; // (0, 1)
  const u2 = hash32(seed, stream, 2 * k + 1) / 4294967296;
  return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
}

/** The full logical tensor of parameter `index` (its position in the canonical order) from `seed`. */
export function initFull(spec: ParamSpec, index: number, seed: number, Ctor: Float32ArrayConstructor | Float64ArrayConstructor = Float32Array): FloatArray {
  const n = numel(spec.shape);
  const out = new Ctor(n);
  if (spec.init.kind === 'ones') {
    out.fill(1);
  } else {
    const std = spec.init.std;
    for (let i = 0; i < n; i++) out[i] = std * normalAt(seed >>> 0, index, i);
  }
  return out;
}
