/**
 * GEMM chosen by measurement: which float32 GEMM implementation of the native addon runs for each
 * shape class, per machine and thread count.
 *
 * The addon (native/src/addon.cc) defines the shape classes: the transposes (NN, NT, TN, TT) × an M
 * bucket (1 | 2-8 | 9-64 | > 64) × a size bucket of N·K (≤ 65 536 | larger), 32 in all, each with a
 * representative shape (M 1, 8, 32 or 512; N = K = 256 or 1024). The candidates are the
 * implementations built into the addon: `onednn` (dnnl_sgemm), `matmul` (the oneDNN matmul primitive,
 * primitives cached per shape), `openblas` (cblas_sgemm) and `skinny` (the hand-written kernels: for
 * M ≤ 8, and for M ≤ 64 with B transposed, i.e. a weight matrix [N, K] as in a decode step). Every
 * candidate of every class is timed inside C on its representative shape (one warm-up
 * call, then three rounds in turn so they see the same machine load; median), about a second in all,
 * once per machine: the choice is cached in a JSON file. For M ≤ 64 (decoding, where B is a weight
 * matrix read once per step from memory) each call reads another B from a 128 MiB buffer, so B comes
 * from DRAM as it does in a decode step: timed on a B that stays in cache, oneDNN's gemv wins, while
 * streamed the prefetching skinny kernel does (Zen 3, batch-1 decode of the small config: 72-77% →
 * 85-86% of the read-bandwidth limit, batch 8 +30%); at M 32 the skinny kernel's medium-M path, which
 * packs A instead of B, runs at 67-70 GFLOP/s on streamed weights where dnnl_sgemm runs at 50-60.
 *
 * Cache: CAAT_GEMM_CACHE (a file path), else $XDG_CACHE_HOME/caatnet/gemm-choice.json, else
 * ~/.cache/caatnet/gemm-choice.json. One entry per key: CPU model and flags, the addon's kernel ISA,
 * the oneDNN and OpenBLAS versions, OpenBLAS's core type (and OPENBLAS_CORETYPE when set: it is
 * respected, never set here), the thread count and the class list. A file that does not parse or
 * is not a cache of this format is ignored with a one-line notice and rewritten (atomically: a
 * temporary file renamed over it).
 *
 * Override: CAAT_GEMM=onednn|matmul|openblas|auto (CAAT_NATIVE_BLAS=onednn|openblas means the same)
 * puts one implementation in every class, without measuring.
 *
 * Ranks of a job: every process of a multi-process job adopts rank 0's tables
 * (`shareGemmChoices`, called right after the group is joined), so the bits each rank computes do
 * not depend on which host's cache it read; virtual ranks and worker threads share their process's
 * tables.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { describeMachine } from '../bench/machine.js';

export const GEMM_IMPLS = ['onednn', 'matmul', 'openblas', 'skinny'] as const;
export type GemmImpl = (typeof GEMM_IMPLS)[number];
/** What CAAT_GEMM / --gemm may force (the skinny kernels are a choice for up to 64 rows only). */
export type GemmOverride = 'onednn' | 'matmul' | 'openblas';

export interface GemmClass {
  name: string;
  transA: boolean;
  transB: boolean;
  M: number;
  N: number;
  K: number;
  /** Implementation ids that may serve this class. */
  candidates: number[];
}

/** What this module needs from the addon. */
export interface GemmChoiceAddon {
  info(): { isa: string; libraries: { onednn: string | null; openblas: string | null }; corename: string | null };
  setThreads(n: number): void;
  gemmClasses(): GemmClass[];
  gemmImpls(): { id: number; name: string; built: boolean }[];
  setGemmTable(threads: number, table: Int32Array | null): void;
  gemmTables(): Record<string, number[]>;
  gemmTimedInC(tA: boolean, tB: boolean, M: number, N: number, K: number, A: Float32Array, B: Float32Array, C: Float32Array,
    repeats: number, impl?: number): number;
}

export type ChoiceSource = 'measured' | 'cached' | 'override' | 'adopted';

export interface GemmChoice {
  threads: number;
  /** Implementation name per class name. */
  choice: Record<string, GemmImpl>;
  source: ChoiceSource;
  /** The cache file read or written (measured, cached). */
  cachePath?: string;
  /** GFLOP/s per class and candidate, when measured in this process. */
  gflops?: Record<string, Partial<Record<GemmImpl, number>>>;
}

/** The cache key: everything the best choice depends on. */
export interface ChoiceKey {
  cpu: string;
  cpuFlags: string;
  kernels: string;
  onednn: string | null;
  openblas: string | null;
  openblasCore: string | null;
  openblasCoretype: string | null;
  threads: number;
  classes: string;
}

const FORMAT = 'caatnet-gemm-choice';
/** How the classes are measured (part of the key: entries measured otherwise are measured again). */
/** Classes of at most this M (decoding: B a weight matrix) are timed with B read from memory. */
const COLD_B_MAX_M = 64;
const METHOD = `m<=${COLD_B_MAX_M}:cold-b-128MiB`;
/** The buffer the B operands of M ≤ 64 classes rotate through, larger than any last-level cache here. */
const COLD_B_BYTES = 128 << 20;
const VERSION = 1;

const entrySchema = z.object({
  key: z.object({
    cpu: z.string(), cpuFlags: z.string(), kernels: z.string(), onednn: z.string().nullable(), openblas: z.string().nullable(),
    openblasCore: z.string().nullable(), openblasCoretype: z.string().nullable(), threads: z.number().int().positive(), classes: z.string(),
  }),
  choice: z.record(z.string(), z.enum(GEMM_IMPLS)),
  gflops: z.record(z.string(), z.record(z.string(), z.number())).optional(),
  measuredAt: z.string(),
});
const fileSchema = z.object({
  format: z.literal(FORMAT),
  version: z.literal(VERSION),
  entries: z.record(z.string(), entrySchema),
});
type CacheFile = z.infer<typeof fileSchema>;
type CacheEntry = z.infer<typeof entrySchema>;

/** Where the choice is cached (see the module comment). */
export function gemmCachePath(env: NodeJS.ProcessEnv = process.env): string {
  const explicit = env['CAAT_GEMM_CACHE'];
  if (explicit) return explicit;
  const base = env['XDG_CACHE_HOME'] || join(os.homedir(), '.cache');
  return join(base, 'caatnet', 'gemm-choice.json');
}

/** The forced implementation from CAAT_GEMM (or CAAT_NATIVE_BLAS), or undefined for automatic. */
export function gemmOverride(env: NodeJS.ProcessEnv = process.env): GemmOverride | undefined {
  for (const name of ['CAAT_GEMM', 'CAAT_NATIVE_BLAS']) {
    const v = (env[name] ?? '').trim().toLowerCase();
    if (v === '' || v === 'auto') continue;
    if (v === 'onednn' || v === 'openblas' || (name === 'CAAT_GEMM' && v === 'matmul')) return v as GemmOverride;
    throw new Error(`${name}="${env[name]}" is not one of ${name === 'CAAT_GEMM' ? 'onednn, matmul, openblas, auto' : 'onednn, openblas, auto'}`);
  }
  return undefined;
}

export function choiceKey(addon: GemmChoiceAddon, threads: number): ChoiceKey {
  const i = addon.info();
  const m = describeMachine();
  const classes = addon.gemmClasses();
  const built = addon.gemmImpls().filter((x) => x.built).map((x) => x.name).join(',');
  const cls = createHash('sha256').update(`${METHOD};${built};${JSON.stringify(classes)}`).digest('hex').slice(0, 16);
  return {
    cpu: m.cpuModel,
    cpuFlags: m.cpuFlags.join(' '),
    kernels: i.isa,
    onednn: i.libraries.onednn,
    openblas: i.libraries.openblas,
    openblasCore: i.corename,
    openblasCoretype: process.env['OPENBLAS_CORETYPE'] ?? null,
    threads,
    classes: cls,
  };
}

function keyString(k: ChoiceKey): string {
  return JSON.stringify([k.cpu, k.cpuFlags, k.kernels, k.onednn, k.openblas, k.openblasCore, k.openblasCoretype, k.threads, k.classes]);
}

/** Read the cache file: its entries, or a notice saying why it is ignored (absent: no notice). */
export function readGemmCache(path: string): { file?: CacheFile; notice?: string } {
  if (!existsSync(path)) return {};
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    return { notice: `gemm: ignoring the cache ${path} (not JSON: ${(e as Error).message.split('\n')[0]}); it will be rewritten` };
  }
  const r = fileSchema.safeParse(raw);
  if (!r.success) {
    const what = raw !== null && typeof raw === 'object' && (raw as Record<string, unknown>)['format'] === FORMAT
      ? `format version ${String((raw as Record<string, unknown>)['version'])}, or a malformed entry` : 'not a GEMM choice cache';
    return { notice: `gemm: ignoring the cache ${path} (${what}); it will be rewritten` };
  }
  return { file: r.data };
}

/** Write the cache atomically (a temporary file in the same folder, renamed over the old one). */
export function writeGemmCache(path: string, file: CacheFile): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(file, null, 1)}\n`);
  renameSync(tmp, path);
}

/** The entry's choice as an id table, or undefined when it does not fit this addon. */
function tableOf(choice: Record<string, string>, classes: GemmClass[], ids: Map<string, number>): Int32Array | undefined {
  const t = new Int32Array(classes.length);
  for (let c = 0; c < classes.length; c++) {
    const id = ids.get(choice[classes[c]!.name] ?? '');
    if (id === undefined || !classes[c]!.candidates.includes(id)) return undefined;
    t[c] = id;
  }
  return t;
}

/** Time every candidate of every class (see the module comment). GFLOP/s per class and implementation. */
export function measureGemmClasses(addon: GemmChoiceAddon, threads: number, rounds = 3): Record<string, Partial<Record<GemmImpl, number>>> {
  const classes = addon.gemmClasses();
  const names = addon.gemmImpls().map((x) => x.name as GemmImpl);
  const maxA = Math.max(...classes.map((c) => c.M * c.K));
  const maxB = Math.max(...classes.map((c) => c.N * c.K));
  const maxC = Math.max(...classes.map((c) => c.M * c.N));
  const fill = (n: number, seed: number): Float32Array => {
    const a = new Float32Array(n);
    let x = seed;
    for (let i = 0; i < n; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      a[i] = x / 2147483648 - 1;
    }
    return a;
  };
  const A = fill(maxA, 1);
  const B = fill(maxB, 2);
  const C = new Float32Array(maxC);
  // M ≤ 64: every call reads the next B of the cold buffer, wrapping around, so no B is in cache
  const coldB = classes.some((c) => c.M <= COLD_B_MAX_M) ? fill(Math.max(maxB, COLD_B_BYTES / 4), 3) : B;
  let coldAt = 0;
  const bOf = (c: GemmClass): Float32Array => {
    const n = c.N * c.K;
    if (c.M > COLD_B_MAX_M) return B.subarray(0, n);
    if (coldAt + n > coldB.length) coldAt = 0;
    coldAt += n;
    return coldB.subarray(coldAt - n, coldAt);
  };
  addon.setThreads(threads);
  const out: Record<string, Partial<Record<GemmImpl, number>>> = {};
  for (const c of classes) {
    const a = A.subarray(0, c.M * c.K);
    const cc = C.subarray(0, c.M * c.N);
    const times = new Map<number, number[]>(c.candidates.map((id) => [id, []]));
    for (const id of c.candidates) addon.gemmTimedInC(c.transA, c.transB, c.M, c.N, c.K, a, bOf(c), cc, 1, id); // warm-up
    for (let r = 0; r < rounds; r++) {
      for (const id of c.candidates) times.get(id)!.push(addon.gemmTimedInC(c.transA, c.transB, c.M, c.N, c.K, a, bOf(c), cc, 1, id));
    }
    const flops = 2 * c.M * c.N * c.K;
    const g: Partial<Record<GemmImpl, number>> = {};
    for (const [id, ts] of times) {
      const s = [...ts].sort((x, y) => x - y);
      g[names[id]!] = flops / (s[s.length >> 1]! * 1e9);
    }
    out[c.name] = g;
  }
  return out;
}

/** The fastest candidate of each class; ties go to the lower id (a fixed order). */
export function pickFastest(gflops: Record<string, Partial<Record<GemmImpl, number>>>, classes: GemmClass[]): Record<string, GemmImpl> {
  const choice: Record<string, GemmImpl> = {};
  for (const c of classes) {
    let best: GemmImpl | undefined;
    for (const impl of GEMM_IMPLS) {
      const v = gflops[c.name]?.[impl];
      if (v === undefined) continue;
      if (best === undefined || v > gflops[c.name]![best]!) best = impl;
    }
    if (best === undefined) throw new Error(`gemm: no measurement for class ${c.name}`);
    choice[c.name] = best;
  }
  return choice;
}

export interface ResolveOptions {
  env?: NodeJS.ProcessEnv;
  /** Notices (a corrupt cache, a failed write); default stderr. */
  notice?: (line: string) => void;
}

/**
 * The choice for `threads` threads: the override, else the cached entry for this machine's key, else
 * measured now (and cached). Does not install it (see `ensureGemmTable`).
 */
export function resolveGemmChoice(addon: GemmChoiceAddon, threads: number, o: ResolveOptions = {}): GemmChoice {
  const env = o.env ?? process.env;
  const notice = o.notice ?? ((l: string): void => void process.stderr.write(`${l}\n`));
  const classes = addon.gemmClasses();
  const impls = addon.gemmImpls();
  const forced = gemmOverride(env);
  if (forced !== undefined) {
    const impl = impls.find((x) => x.name === forced)!;
    if (!impl.built) throw new Error(`CAAT_GEMM=${forced}: the native addon is built without ${forced === 'openblas' ? 'OpenBLAS' : 'oneDNN'}`);
    return { threads, source: 'override', choice: Object.fromEntries(classes.map((c) => [c.name, forced])) };
  }
  const ids = new Map(impls.filter((x) => x.built).map((x) => [x.name, x.id]));
  const path = gemmCachePath(env);
  const key = choiceKey(addon, threads);
  const ks = keyString(key);
  const { file, notice: bad } = readGemmCache(path);
  if (bad) notice(bad);
  const hit = file?.entries[ks];
  if (hit && tableOf(hit.choice, classes, ids)) {
    return { threads, source: 'cached', cachePath: path, choice: hit.choice as Record<string, GemmImpl> };
  }
  const gflops = measureGemmClasses(addon, threads);
  const choice = pickFastest(gflops, classes);
  const entry: CacheEntry = { key, choice, gflops: gflops as Record<string, Record<string, number>>, measuredAt: new Date().toISOString() };
  // Keep the other valid entries (other thread counts, other library versions on a shared home).
  const latest = readGemmCache(path).file;
  const next: CacheFile = { format: FORMAT, version: VERSION, entries: { ...(latest?.entries ?? {}), [ks]: entry } };
  try {
    writeGemmCache(path, next);
  } catch (e) {
    notice(`gemm: could not write the cache ${path} (${(e as Error).message}); the choice holds for this process only`);
  }
  return { threads, source: 'measured', cachePath: path, choice, gflops };
}

/** The id table of a choice (throws when the choice does not fit this addon). */
export function choiceTable(addon: GemmChoiceAddon, choice: Record<string, string>): Int32Array {
  const classes = addon.gemmClasses();
  const ids = new Map(addon.gemmImpls().filter((x) => x.built).map((x) => [x.name, x.id]));
  const t = tableOf(choice, classes, ids);
  if (!t) throw new Error('gemm: the choice does not fit this addon (unknown class or implementation)');
  return t;
}

// Per addon (module state is per JS thread; the addon's tables are per process).
const resolved = new WeakMap<GemmChoiceAddon, Map<number, GemmChoice>>();
const summaries: string[] = [];

/** "openblas for 12 shape classes, onednn for 3 (measured, cached in …)". */
export function summarizeChoice(c: GemmChoice): string {
  const counts = new Map<string, number>();
  for (const v of Object.values(c.choice)) counts.set(v, (counts.get(v) ?? 0) + 1);
  const parts = [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map(([k, n]) => `${k} for ${n} shape class${n === 1 ? '' : 'es'}`);
  const how = c.source === 'override' ? 'forced by CAAT_GEMM' : c.source === 'adopted' ? "rank 0's choice"
    : c.source === 'measured' ? `measured, cached in ${c.cachePath}` : `cached in ${c.cachePath}`;
  return `gemm: ${parts.join(', ')} (${how}${c.threads === 1 ? '' : `, ${c.threads} threads`})`;
}

/**
 * Make sure the addon has a table for `threads` (resolving and installing it when it has none; a
 * table already installed, by another thread of this process or adopted from rank 0, is kept).
 * Returns the choice in force.
 */
export function ensureGemmTable(addon: GemmChoiceAddon, threads: number, o: ResolveOptions = {}): GemmChoice {
  let mine = resolved.get(addon);
  if (!mine) resolved.set(addon, (mine = new Map()));
  const installed = addon.gemmTables()[String(threads)];
  const known = mine.get(threads);
  if (installed && known && sameTable(installed, choiceTable(addon, known.choice))) return known;
  if (installed) {
    // Installed elsewhere in this process (the main thread, or adopted): describe it.
    const names = addon.gemmImpls().map((x) => x.name as GemmImpl);
    const classes = addon.gemmClasses();
    const c: GemmChoice = { threads, source: known?.source === 'adopted' ? 'adopted' : 'cached', choice: Object.fromEntries(classes.map((k, i) => [k.name, names[installed[i]!]!])) };
    mine.set(threads, c);
    return c;
  }
  const c = resolveGemmChoice(addon, threads, o);
  addon.setGemmTable(threads, choiceTable(addon, c.choice));
  mine.set(threads, c);
  summaries.push(summarizeChoice(c));
  return c;
}

function sameTable(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Summaries of the choices resolved in this JS thread and not yet logged (each returned once). */
export function takeGemmSummaries(): string[] {
  return summaries.splice(0);
}

/** Install `tables` ({ threads: ids }) as this process's choice, replacing what was there. */
export function installGemmTables(addon: GemmChoiceAddon, tables: Record<string, number[]>): boolean {
  let changed = false;
  const mine = resolved.get(addon) ?? new Map<number, GemmChoice>();
  resolved.set(addon, mine);
  const names = addon.gemmImpls().map((x) => x.name as GemmImpl);
  const classes = addon.gemmClasses();
  const have = addon.gemmTables();
  for (const [t, ids] of Object.entries(tables)) {
    if (!have[t] || !sameTable(have[t]!, ids)) changed = true;
    addon.setGemmTable(Number(t), Int32Array.from(ids));
    mine.set(Number(t), { threads: Number(t), source: 'adopted', choice: Object.fromEntries(classes.map((k, i) => [k.name, names[ids[i]!]!])) });
  }
  return changed;
}
