/**
 * WebAssembly SIMD128 backend. The kernels are AssemblyScript (wasm/assembly/), compiled by
 * `npm run build:wasm` to wasm/build/kernels.wasm with SIMD and an imported shared memory.
 *
 * Memory model:
 * - Each thread compiles the module once and instantiates it on its own shared WebAssembly.Memory
 *   (loadWasmBackend returns the same backend for every call within a thread). The memory starts
 *   small and grows on demand up to 4 GiB; since it is shared, its buffer is a SharedArrayBuffer that
 *   never detaches, so array views into it stay valid across growth.
 * - `alloc(n, shared)` places arrays in that memory (first-fit free list over a bump region, 64-byte
 *   alignment), so kernels run on them without copies. Every array it returns is SharedArrayBuffer-
 *   backed, whatever `shared` says, and can be posted to other workers. `releaseWasmArray(arr)` hands
 *   an allocation back; nothing is freed implicitly.
 * - Kernels also accept arrays that do NOT live in this memory (plain Float32Arrays, another worker's
 *   arrays, …). Those are copied into scratch space in the memory before the kernel runs and the
 *   outputs are copied back afterwards (only the elements the kernel touches; GEMM copies row by
 *   row, so columns outside the addressed ones are never written). That is correct but costs a copy
 *   each way: keep hot tensors in arrays from `alloc`.
 * - Float32 only: a Float64Array argument throws a KernelError (the js backend handles float64).
 * - Single-threaded: `opts.threads` is accepted and ignored.
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { composedAttentionBackward, composedAttentionForward } from './attention.js';
import { fromBf16Ref, gemmBf16ViaF32, gemmBf16WViaF32, toBf16Ref } from './bf16.js';
import { checked } from './check.js';
import { type Backend, type BackendOptions, type FloatArray, BackendUnavailableError, KernelError } from './types.js';

/** The functions the kernels module exports; every pointer is a byte address in the shared memory. */
interface Kernels {
  gemm(
    transA: number, transB: number, M: number, N: number, K: number, alpha: number,
    A: number, lda: number, B: number, ldb: number, beta: number, C: number, ldc: number, work: number,
  ): void;
  gemmWorkBytes(M: number, N: number, K: number): number;
  softmaxForward(out: number, inp: number, rows: number, cols: number, scale: number, causalQ: number): void;
  softmaxBackward(dinp: number, dout: number, out: number, rows: number, cols: number, scale: number): void;
  rmsnormForward(out: number, rstd: number, x: number, w: number, rows: number, cols: number, eps: number): void;
  rmsnormBackward(dx: number, dw: number, dout: number, x: number, w: number, rstd: number, rows: number, cols: number): void;
  rope(x: number, cos: number, sin: number, B: number, T: number, H: number, HD: number, pos0: number, dir: number): void;
  swigluForward(out: number, a: number, b: number, n: number): void;
  swigluBackward(da: number, db: number, dout: number, a: number, b: number, n: number): void;
  rowMax(out: number, x: number, rows: number, cols: number): void;
  rowSumExp(out: number, x: number, shift: number, rows: number, cols: number): void;
  pickTarget(out: number, x: number, targets: number, rows: number, cols: number, vocabStart: number): void;
  crossEntropyBackward(
    dlogits: number, logits: number, targets: number, lse: number, rows: number, cols: number, vocabStart: number, gradScale: number,
  ): void;
  embeddingForward(out: number, table: number, tokens: number, n: number, C: number, vocabStart: number, tableRows: number): void;
  embeddingBackward(dtable: number, dout: number, tokens: number, n: number, C: number, vocabStart: number, tableRows: number): void;
  add(out: number, a: number, b: number, n: number): void;
  axpy(y: number, alpha: number, x: number, n: number): void;
  scale(x: number, alpha: number, n: number): void;
  reduceSum(out: number, srcs: number, k: number, n: number): void;
  sumSquares(x: number, n: number): number;
  adamw(
    param: number, grad: number, m: number, v: number, n: number,
    decay: number, beta1: number, beta2: number, eps: number, stepSize: number, bc2sqrt: number, gradScale: number,
  ): void;
}

// The WebAssembly JS API, typed here because the project's type libraries (ES2022 + @types/node 20)
// do not declare it.
interface WasmMemory {
  readonly buffer: ArrayBufferLike;
  grow(deltaPages: number): number;
}
type WasmModule = object;
interface WasmApi {
  Memory: new (descriptor: { initial: number; maximum?: number; shared?: boolean }) => WasmMemory;
  Module: new (bytes: Uint8Array) => WasmModule;
  Instance: new (module: WasmModule, imports: Record<string, Record<string, unknown>>) => { readonly exports: object };
  validate(bytes: Uint8Array): boolean;
}
const WA = (globalThis as unknown as { WebAssembly?: WasmApi }).WebAssembly;

const PAGE = 65536;
const MAX_PAGES = 65536; // 4 GiB, the module's declared maximum
const INITIAL_PAGES = 32; // the module's declared minimum
const RESERVED = PAGE; // the first page stays unused (no valid array has address 0)
const ALIGN = 64;

type View = FloatArray | Int32Array;

/** A tiny module whose body uses v128.const: compiles only where WebAssembly SIMD128 is supported. */
const SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, // magic, version
  1, 5, 1, 0x60, 0, 1, 0x7b, // type section: () -> v128
  3, 2, 1, 0, // function section
  10, 22, 1, 20, 0, 0xfd, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b, // code: v128.const 0
]);

function kernelsPath(): string | undefined {
  // dist/src/backend/wasm.js → <root>/wasm/build; src/backend/wasm.ts (run from source) likewise.
  for (const rel of ['../../../wasm/build/kernels.wasm', '../../wasm/build/kernels.wasm']) {
    const p = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(p)) return p;
  }
  return undefined;
}

let compiled: WasmModule | undefined;

function compileModule(): WasmModule {
  if (compiled) return compiled;
  if (!WA || typeof SharedArrayBuffer !== 'function') {
    throw new BackendUnavailableError('wasm', 'WebAssembly or SharedArrayBuffer is not available in this runtime');
  }
  if (!WA.validate(SIMD_PROBE)) {
    throw new BackendUnavailableError('wasm', 'this runtime does not support WebAssembly SIMD128');
  }
  const path = kernelsPath();
  if (!path) throw new BackendUnavailableError('wasm', 'wasm/build/kernels.wasm is missing (run `npm run build:wasm`)');
  try {
    compiled = new WA.Module(readFileSync(path));
  } catch (e) {
    throw new BackendUnavailableError('wasm', `cannot compile ${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
  return compiled;
}

const roundUp = (n: number, a: number): number => Math.ceil(n / a) * a;

/**
 * The JS-side allocator of the linear memory: a first-fit, address-ordered free list with
 * coalescing, over a bump region that grows the memory when it runs out.
 */
class Heap {
  /** Free blocks [offset, bytes], sorted by offset, never adjacent (coalesced). */
  private readonly free: [number, number][] = [];
  private top: number;
  /** Memory at or above this address has never been handed out, so it is still zero. */
  private clean: number;

  constructor(
    private readonly memory: WasmMemory,
    base: number,
    private readonly onGrow: () => void,
  ) {
    this.top = base;
    this.clean = base;
  }

  /** A 64-byte-aligned block of at least `bytes` bytes; zero-filled when `zero`. */
  alloc(bytes: number, zero: boolean): number {
    const size = roundUp(Math.max(bytes, 1), ALIGN);
    let off = -1;
    for (let i = 0; i < this.free.length; i++) {
      const blk = this.free[i]!;
      if (blk[1] < size) continue;
      off = blk[0];
      if (blk[1] === size) this.free.splice(i, 1);
      else {
        blk[0] += size;
        blk[1] -= size;
      }
      break;
    }
    if (off < 0) {
      off = this.top;
      this.ensure(off + size);
      this.top = off + size;
    }
    if (zero && off < this.clean) {
      new Uint8Array(this.memory.buffer, off, Math.min(size, this.clean - off)).fill(0);
    }
    this.clean = Math.max(this.clean, off + size);
    return off;
  }

  /** Returns a block from `alloc` (same `bytes`). */
  release(off: number, bytes: number): void {
    const size = roundUp(Math.max(bytes, 1), ALIGN);
    let lo = 0;
    let hi = this.free.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.free[mid]![0] < off) lo = mid + 1;
      else hi = mid;
    }
    let start = off;
    let end = off + size;
    let at = lo;
    const prev = this.free[lo - 1];
    if (prev && prev[0] + prev[1] === start) {
      start = prev[0];
      at = lo - 1;
      this.free.splice(at, 1);
    }
    const next = this.free[at];
    if (next && next[0] === end) {
      end = next[0] + next[1];
      this.free.splice(at, 1);
    }
    if (end === this.top) this.top = start;
    else this.free.splice(at, 0, [start, end - start]);
  }

  private ensure(end: number): void {
    const have = this.memory.buffer.byteLength;
    if (end <= have) return;
    const havePages = have / PAGE;
    const needPages = Math.ceil(end / PAGE);
    if (needPages > MAX_PAGES) throw new Error(`wasm backend: out of memory (needs ${end} bytes, the limit is 4 GiB)`);
    // grow by at least 1/8 of the current size, so that a run of small allocations grows rarely
    const pages = Math.min(MAX_PAGES, Math.max(needPages, havePages + Math.ceil(havePages / 8))) - havePages;
    this.memory.grow(pages);
    this.onGrow();
  }
}

/** One argument of a kernel call: an array, how many elements of it the kernel touches, whether it writes them. */
type Arg = [arr: View, n: number, out: boolean];

class WasmRuntime {
  readonly memory: WasmMemory;
  readonly k: Kernels;
  readonly heap: Heap;
  /** Every SharedArrayBuffer object this memory has had (a shared memory's buffer changes identity on growth). */
  private readonly buffers = new WeakSet<ArrayBufferLike>();
  /** alloc()'d arrays still owned: byteOffset → bytes. */
  private readonly live = new Map<number, number>();
  private work = 0;
  private workBytes = 0;
  /** Kernel calls that had to copy arguments in and out of the memory. */
  foreignCalls = 0;

  constructor(module: WasmModule) {
    this.memory = new WA!.Memory({ initial: INITIAL_PAGES, maximum: MAX_PAGES, shared: true });
    const inst = new WA!.Instance(module, { env: { memory: this.memory } });
    this.k = inst.exports as unknown as Kernels;
    this.buffers.add(this.memory.buffer);
    this.heap = new Heap(this.memory, RESERVED, () => this.buffers.add(this.memory.buffer));
  }

  isLocal(a: ArrayBufferView): boolean {
    return this.buffers.has(a.buffer);
  }

  alloc(n: number): Float32Array {
    const bytes = n * 4;
    const off = this.heap.alloc(bytes, true);
    this.live.set(off, bytes);
    return new Float32Array(this.memory.buffer, off, n);
  }

  release(arr: ArrayBufferView): boolean {
    if (!this.isLocal(arr)) return false;
    const bytes = this.live.get(arr.byteOffset);
    if (bytes === undefined) return false;
    this.live.delete(arr.byteOffset);
    this.heap.release(arr.byteOffset, bytes);
    return true;
  }

  /** The GEMM work area, at least `bytes` long (kept between calls). */
  gemmWork(bytes: number): number {
    if (bytes > this.workBytes) {
      if (this.workBytes > 0) this.heap.release(this.work, this.workBytes);
      this.workBytes = roundUp(bytes, PAGE);
      this.work = this.heap.alloc(this.workBytes, false);
    }
    return this.work;
  }

  /**
   * Byte addresses for a kernel's arguments. Arrays in this memory are used in place; the others
   * are copied into scratch (arrays of one foreign buffer whose touched ranges overlap share one
   * copy, so in-place kernels keep working) and `done()` copies the outputs back and frees the
   * scratch. Throws a KernelError for a Float64Array.
   */
  stage(kernel: string, args: readonly Arg[]): { ptrs: number[]; done: () => void } {
    let foreign = false;
    for (const [a] of args) {
      if (a instanceof Float64Array) float64(kernel);
      if (!this.isLocal(a)) foreign = true;
    }
    if (!foreign) return { ptrs: args.map(([a]) => a.byteOffset), done: noop };
    this.foreignCalls++;
    // Merge the touched byte ranges per foreign buffer.
    type Region = { buf: ArrayBufferLike; start: number; end: number; ptr: number };
    const regions: Region[] = [];
    const spans = args.map(([a, n]) => {
      const start = a.byteOffset;
      return { buf: a.buffer, start, end: start + Math.max(0, Math.min(n, a.length)) * a.BYTES_PER_ELEMENT };
    });
    const order = args.map((_, i) => i).filter((i) => !this.isLocal(args[i]![0]));
    order.sort((i, j) => spans[i]!.start - spans[j]!.start);
    const regionOf = new Map<number, Region>();
    for (const i of order) {
      const s = spans[i]!;
      let r = regions.find((q) => q.buf === s.buf && s.start < q.end && q.start < s.end);
      if (r) r.end = Math.max(r.end, s.end);
      else {
        r = { buf: s.buf, start: s.start, end: s.end, ptr: 0 };
        regions.push(r);
      }
      regionOf.set(i, r);
    }
    let allocated = 0;
    try {
      for (const r of regions) {
        r.ptr = this.heap.alloc(r.end - r.start, false);
        allocated++;
      }
    } catch (e) {
      for (const r of regions.slice(0, allocated)) this.heap.release(r.ptr, r.end - r.start);
      throw e;
    }
    const mem = this.memory.buffer;
    for (const r of regions) {
      if (r.end > r.start) new Uint8Array(mem, r.ptr, r.end - r.start).set(new Uint8Array(r.buf, r.start, r.end - r.start));
    }
    const ptrs = args.map(([a], i) => {
      const r = regionOf.get(i);
      return r ? r.ptr + (a.byteOffset - r.start) : a.byteOffset;
    });
    const done = (): void => {
      const m = this.memory.buffer;
      for (let i = 0; i < args.length; i++) {
        const r = regionOf.get(i);
        if (!r || !args[i]![2]) continue;
        const s = spans[i]!;
        if (s.end > s.start) new Uint8Array(s.buf, s.start, s.end - s.start).set(new Uint8Array(m, ptrs[i]!, s.end - s.start));
      }
      for (const r of regions) this.heap.release(r.ptr, r.end - r.start);
    };
    return { ptrs, done };
  }

  /** Runs `fn` on the staged addresses of `args` (see `stage`), copying outputs back even if it throws. */
  call<T>(kernel: string, args: readonly Arg[], fn: (p: number[]) => T): T {
    const s = this.stage(kernel, args);
    try {
      return fn(s.ptrs);
    } finally {
      s.done();
    }
  }

  liveArrays(): number {
    return this.live.size;
  }

  /** A Float32Array view of `n` elements at byte address `ptr` of the memory. */
  view(ptr: number, n: number): Float32Array {
    return new Float32Array(this.memory.buffer, ptr, n);
  }
}

function noop(): void {}

function float64(kernel: string): never {
  throw new KernelError(kernel, 'the wasm backend computes in float32 and takes Float32Array buffers only (use the js backend for float64)');
}

let runtime: WasmRuntime | undefined;
let backend: Backend | undefined;

/**
 * Hands an array returned by the wasm backend's `alloc` back to its allocator. The array (and every
 * view of its storage) must not be used afterwards. Returns false (and does nothing) for any other array.
 */
export function releaseWasmArray(arr: FloatArray): boolean {
  return runtime ? runtime.release(arr) : false;
}

/** Counters of this thread's wasm backend (for tests and diagnostics); undefined before it loads. */
export function wasmBackendStats(): { memoryBytes: number; liveArrays: number; foreignCalls: number } | undefined {
  if (!runtime) return undefined;
  return { memoryBytes: runtime.memory.buffer.byteLength, liveArrays: runtime.liveArrays(), foreignCalls: runtime.foreignCalls };
}

/** The wasm backend of this thread (compiled and instantiated on first use). */
export function loadWasmBackend(_opts: BackendOptions = {}): Backend {
  if (backend) return backend;
  const module = compileModule();
  let rt: WasmRuntime;
  try {
    rt = new WasmRuntime(module);
  } catch (e) {
    throw new BackendUnavailableError('wasm', `cannot instantiate the kernels: ${e instanceof Error ? e.message : String(e)}`);
  }
  runtime = rt;
  backend = checked(rawWasmBackend(rt));
  return backend;
}

function rawWasmBackend(rt: WasmRuntime): Backend {
  const k = rt.k;
  const F = false;
  const T = true;

  /** Copies a strided [rows, cols] block of a foreign array into compact scratch; returns its address. */
  function gather(src: FloatArray, off: number, ld: number, rows: number, cols: number, copy: boolean): number {
    const p = rt.heap.alloc(rows * cols * 4, false);
    if (copy) {
      const dst = rt.view(p, rows * cols);
      if (ld === cols) dst.set(src.subarray(off, off + rows * cols));
      else for (let r = 0; r < rows; r++) dst.set(src.subarray(off + r * ld, off + r * ld + cols), r * cols);
    }
    return p;
  }

  const be: Backend = {
    name: 'wasm',
    description: 'wasm (SIMD128, AssemblyScript, 1 thread)',

    alloc(n, _shared) {
      return rt.alloc(n);
    },

    release(arr) {
      releaseWasmArray(arr);
    },

    toBf16(out, x, n) {
      toBf16Ref(out, x, n);
    },

    fromBf16(out, x, n) {
      fromBf16Ref(out, x, n);
    },

    gemmBf16(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc) {
      gemmBf16ViaF32(be.gemm, transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc);
    },

    gemmBf16W(M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc) {
      gemmBf16WViaF32(be.gemm, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc);
    },

    gemm(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc) {
      if (A instanceof Float64Array || B instanceof Float64Array || C instanceof Float64Array) float64('gemm');
      if (M === 0 || N === 0) return;
      const [ar, ac] = transA ? [K, M] : [M, K];
      const [br, bc] = transB ? [N, K] : [K, N];
      const work = rt.gemmWork(k.gemmWorkBytes(M, N, K));
      if (!rt.isLocal(A) || !rt.isLocal(B) || !rt.isLocal(C)) rt.foreignCalls++;
      // Operands outside the memory are gathered row by row into compact scratch (C only when it is
      // read, beta ≠ 0) and C is scattered back row by row, so nothing outside the addressed block
      // of a strided C is written.
      const scratch: [number, number][] = [];
      const cLocal = rt.isLocal(C);
      try {
        let pA = A.byteOffset + offA * 4;
        let pB = B.byteOffset + offB * 4;
        let pC = C.byteOffset + offC * 4;
        let la = lda;
        let lb = ldb;
        let lc = ldc;
        if (!rt.isLocal(A)) {
          pA = gather(A, offA, lda, ar, ac, true);
          scratch.push([pA, ar * ac * 4]);
          la = Math.max(1, ac);
        }
        if (!rt.isLocal(B)) {
          pB = gather(B, offB, ldb, br, bc, true);
          scratch.push([pB, br * bc * 4]);
          lb = Math.max(1, bc);
        }
        if (!cLocal) {
          pC = gather(C, offC, ldc, M, N, beta !== 0);
          scratch.push([pC, M * N * 4]);
          lc = N;
        }
        k.gemm(transA ? 1 : 0, transB ? 1 : 0, M, N, K, alpha, pA, la, pB, lb, beta, pC, lc, work);
        if (!cLocal) {
          const res = rt.view(pC, M * N);
          for (let r = 0; r < M; r++) C.set(res.subarray(r * N, r * N + N), offC + r * ldc);
        }
      } finally {
        for (const [p, bytes] of scratch) rt.heap.release(p, bytes);
      }
    },

    attentionForward(out, att, q, k_, v, B, Tq, Tk, NH, NKV, HD, kvBatchStride) {
      const qn = B * Tq * NH * HD;
      const kvn = (B - 1) * kvBatchStride + Tk * NKV * HD;
      const an = B * NH * Tq * Tk;
      rt.call('attentionForward', [[out, qn, T], [att, an, T], [q, qn, F], [k_, kvn, F], [v, kvn, F]], (p) => {
        const [pOut, pAtt, pQ, pK, pV] = p as [number, number, number, number, number];
        composedAttentionForward(
          be, rt.view(pOut, qn), rt.view(pAtt, an), rt.view(pQ, qn), rt.view(pK, kvn), rt.view(pV, kvn),
          B, Tq, Tk, NH, NKV, HD, kvBatchStride,
        );
      });
    },

    attentionBackward(dq, dk, dv, scratch, dout, q, k_, v, att, B, Tt, NH, NKV, HD) {
      const qn = B * Tt * NH * HD;
      const kvn = B * Tt * NKV * HD;
      const an = B * NH * Tt * Tt;
      const sn = Tt * Tt;
      const args: Arg[] = [
        [dq, qn, T], [dk, kvn, T], [dv, kvn, T], [scratch, sn, T], [dout, qn, F], [q, qn, F], [k_, kvn, F], [v, kvn, F], [att, an, F],
      ];
      rt.call('attentionBackward', args, (p) => {
        composedAttentionBackward(
          be, rt.view(p[0]!, qn), rt.view(p[1]!, kvn), rt.view(p[2]!, kvn), rt.view(p[3]!, sn), rt.view(p[4]!, qn),
          rt.view(p[5]!, qn), rt.view(p[6]!, kvn), rt.view(p[7]!, kvn), rt.view(p[8]!, an),
          B, Tt, NH, NKV, HD,
        );
      });
    },

    softmaxForward(out, inp, rows, cols, scale, causalQ) {
      const n = rows * cols;
      rt.call('softmaxForward', [[out, n, T], [inp, n, F]], (p) => {
        k.softmaxForward(p[0]!, p[1]!, rows, cols, scale, causalQ);
      });
    },

    softmaxBackward(dinp, dout, out, rows, cols, scale) {
      const n = rows * cols;
      rt.call('softmaxBackward', [[dinp, n, T], [dout, n, F], [out, n, F]], (p) => {
        k.softmaxBackward(p[0]!, p[1]!, p[2]!, rows, cols, scale);
      });
    },

    rmsnormForward(out, rstd, x, w, rows, cols, eps) {
      const n = rows * cols;
      rt.call('rmsnormForward', [[out, n, T], [rstd, rows, T], [x, n, F], [w, cols, F]], (p) => {
        k.rmsnormForward(p[0]!, p[1]!, p[2]!, p[3]!, rows, cols, eps);
      });
    },

    rmsnormBackward(dx, dw, dout, x, w, rstd, rows, cols) {
      const n = rows * cols;
      rt.call('rmsnormBackward', [[dx, n, T], [dw, cols, T], [dout, n, F], [x, n, F], [w, cols, F], [rstd, rows, F]], (p) => {
        k.rmsnormBackward(p[0]!, p[1]!, p[2]!, p[3]!, p[4]!, p[5]!, rows, cols);
      });
    },

    ropeForward(x, cos, sin, B, Tt, H, HD, pos0) {
      rope('ropeForward', x, cos, sin, B, Tt, H, HD, pos0, 1);
    },

    ropeBackward(dx, cos, sin, B, Tt, H, HD, pos0) {
      rope('ropeBackward', dx, cos, sin, B, Tt, H, HD, pos0, -1);
    },

    swigluForward(out, a, b, n) {
      rt.call('swigluForward', [[out, n, T], [a, n, F], [b, n, F]], (p) => {
        k.swigluForward(p[0]!, p[1]!, p[2]!, n);
      });
    },

    swigluBackward(da, db, dout, a, b, n) {
      rt.call('swigluBackward', [[da, n, T], [db, n, T], [dout, n, F], [a, n, F], [b, n, F]], (p) => {
        k.swigluBackward(p[0]!, p[1]!, p[2]!, p[3]!, p[4]!, n);
      });
    },

    rowMax(out, x, rows, cols) {
      rt.call('rowMax', [[out, rows, T], [x, rows * cols, F]], (p) => {
        k.rowMax(p[0]!, p[1]!, rows, cols);
      });
    },

    rowSumExp(out, x, shift, rows, cols) {
      rt.call('rowSumExp', [[out, rows, T], [x, rows * cols, F], [shift, rows, F]], (p) => {
        k.rowSumExp(p[0]!, p[1]!, p[2]!, rows, cols);
      });
    },

    pickTarget(out, x, targets, rows, cols, vocabStart) {
      rt.call('pickTarget', [[out, rows, T], [x, rows * cols, F], [targets, rows, F]], (p) => {
        k.pickTarget(p[0]!, p[1]!, p[2]!, rows, cols, vocabStart);
      });
    },

    crossEntropyBackward(dlogits, logits, targets, lse, rows, cols, vocabStart, gradScale) {
      const n = rows * cols;
      rt.call('crossEntropyBackward', [[dlogits, n, T], [logits, n, F], [targets, rows, F], [lse, rows, F]], (p) => {
        k.crossEntropyBackward(p[0]!, p[1]!, p[2]!, p[3]!, rows, cols, vocabStart, gradScale);
      });
    },

    embeddingForward(out, table, tokens, n, C, vocabStart, tableRows) {
      rt.call('embeddingForward', [[out, n * C, T], [table, tableRows * C, F], [tokens, n, F]], (p) => {
        k.embeddingForward(p[0]!, p[1]!, p[2]!, n, C, vocabStart, tableRows);
      });
    },

    embeddingBackward(dtable, dout, tokens, n, C, vocabStart, tableRows) {
      rt.call('embeddingBackward', [[dtable, tableRows * C, T], [dout, n * C, F], [tokens, n, F]], (p) => {
        k.embeddingBackward(p[0]!, p[1]!, p[2]!, n, C, vocabStart, tableRows);
      });
    },

    add(out, a, b, n) {
      rt.call('add', [[out, n, T], [a, n, F], [b, n, F]], (p) => {
        k.add(p[0]!, p[1]!, p[2]!, n);
      });
    },

    axpy(y, alpha, x, n) {
      rt.call('axpy', [[y, n, T], [x, n, F]], (p) => {
        k.axpy(p[0]!, alpha, p[1]!, n);
      });
    },

    scale(x, alpha, n) {
      rt.call('scale', [[x, n, T]], (p) => {
        k.scale(p[0]!, alpha, n);
      });
    },

    reduceSum(out, srcs, n) {
      rt.call('reduceSum', [[out, n, T], ...srcs.map((a): Arg => [a, n, F])], (p) => {
        // the source addresses, as a u32 list in the memory
        const list = rt.heap.alloc(srcs.length * 4, false);
        new Uint32Array(rt.memory.buffer, list, srcs.length).set(p.slice(1));
        k.reduceSum(p[0]!, list, srcs.length, n);
        rt.heap.release(list, srcs.length * 4);
      });
    },

    sumSquares(x, n) {
      return rt.call('sumSquares', [[x, n, F]], (p) => k.sumSquares(p[0]!, n));
    },

    adamw(param, grad, m, v, n, lr, beta1, beta2, eps, weightDecay, step, gradScale) {
      const bc1 = 1 - Math.pow(beta1, step);
      const bc2sqrt = Math.sqrt(1 - Math.pow(beta2, step));
      const stepSize = lr / bc1;
      const decay = 1 - lr * weightDecay;
      rt.call('adamw', [[param, n, T], [grad, n, F], [m, n, T], [v, n, T]], (p) => {
        k.adamw(p[0]!, p[1]!, p[2]!, p[3]!, n, decay, beta1, beta2, eps, stepSize, bc2sqrt, gradScale);
      });
    },
  };

  function rope(name: string, x: FloatArray, cos: FloatArray, sin: FloatArray, B: number, Tt: number, H: number, HD: number, pos0: number, dir: number): void {
    const tab = (pos0 + Tt) * (HD / 2);
    rt.call(name, [[x, B * Tt * H * HD, T], [cos, tab, F], [sin, tab, F]], (p) => {
      k.rope(p[0]!, p[1]!, p[2]!, B, Tt, H, HD, pos0, dir);
    });
  }

  return be;
}
