/**
 * Token streams for training: tokenisation with an on-disk cache, a resumable shuffled batch loader,
 * sequential validation batches, and the statistics used to report bits per byte.
 *
 * Token stream layout: for each document (in split order) the <|endoftext|> id followed by the
 * document's tokens, so every document starts after a separator (a tokenizer without <|endoftext|> just
 * concatenates documents).
 *
 * Cache: `prepareDataset` stores each split as a binary token file under
 * `<cacheDir>/tokens-<key>/{train,val}.bin`, where key = hash(corpus fingerprint, split options,
 * tokenizer hash, format version). File layout (little-endian):
 *
 *   offset  size  field
 *   0       8     magic "CAATTOK\0"
 *   8       4     format version (1)
 *   12      4     bytes per token: 2 (Uint16, vocabSize <= 65535) or 4 (Uint32)
 *   16      8     token count
 *   24      8     UTF-8 bytes of the documents' text (separators excluded)
 *   32      8     number of documents
 *   40      4     vocabulary size
 *   44      4     reserved (0)
 *   48      32    sha256 of the token data
 *   80      ...   token data
 *
 * A file that fails any check (magic, version, sizes, checksum) is ignored and rebuilt.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { writeFileAtomic } from '../io/atomic.js';
import { mulberry32 } from '../util/random.js';
import { DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, loadCorpus, splitCorpus, type Corpus, type Document, type SplitOptions } from './corpus.js';
import { trainBpe, BpeTokenizer } from './bpe.js';
import { Gpt2Tokenizer } from './gpt2.js';
import { loadTokenizer, saveTokenizer } from './tokenizers.js';
import { tokenizerHash, type Tokenizer } from './tokenizer.js';

export type TokenArray = Uint16Array | Uint32Array;

export interface TokenStream {
  tokens: TokenArray;
  /** UTF-8 bytes of the documents' text (separators excluded). */
  textBytes: number;
  documents: number;
}

export class DatasetError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DatasetError';
  }
}

const DATASET_FORMAT_VERSION = 1;
const MAGIC = Buffer.from('CAATTOK\0', 'latin1');
const HEADER_BYTES = 80;

/** The default cache directory: `.cache/caatnet` under the current directory. */
export function defaultCacheDir(): string {
  return path.resolve('.cache', 'caatnet');
}

/** Tokenises documents into one stream (each document preceded by <|endoftext|> when available). */
export function tokenizeDocuments(documents: readonly Document[], tokenizer: Tokenizer): TokenStream {
  let buf = new Uint32Array(1 << 16);
  let n = 0;
  let textBytes = 0;
  const push = (id: number) => {
    if (n === buf.length) {
      const bigger = new Uint32Array(buf.length * 2);
      bigger.set(buf);
      buf = bigger;
    }
    buf[n++] = id;
  };
  for (const d of documents) {
    if (tokenizer.eotId !== null) push(tokenizer.eotId);
    const ids = tokenizer.encode(d.text);
    for (let i = 0; i < ids.length; i++) push(ids[i]!);
    textBytes += Buffer.byteLength(d.text);
  }
  const tokens = tokenizer.vocabSize <= 65535 ? Uint16Array.from(buf.subarray(0, n)) : buf.slice(0, n);
  return { tokens, textBytes, documents: documents.length };
}

/** Serialises a token stream in the cache file format. */
export function encodeTokenFile(stream: TokenStream, vocabSize: number): Uint8Array {
  const { tokens } = stream;
  const width = tokens.BYTES_PER_ELEMENT;
  if (width === 2 && vocabSize > 65535) throw new DatasetError(`vocabulary of ${vocabSize} does not fit Uint16 tokens`);
  const data = new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength);
  const out = new Uint8Array(HEADER_BYTES + data.byteLength);
  const dv = new DataView(out.buffer);
  out.set(MAGIC, 0);
  dv.setUint32(8, DATASET_FORMAT_VERSION, true);
  dv.setUint32(12, width, true);
  dv.setBigUint64(16, BigInt(tokens.length), true);
  dv.setBigUint64(24, BigInt(stream.textBytes), true);
  dv.setBigUint64(32, BigInt(stream.documents), true);
  dv.setUint32(40, vocabSize, true);
  out.set(createHash('sha256').update(data).digest(), 48);
  out.set(data, HEADER_BYTES);
  return out;
}

/** Parses a token file; throws `DatasetError` naming the file and the problem. */
export function decodeTokenFile(buf: Uint8Array, name: string): TokenStream & { vocabSize: number } {
  const fail = (why: string): never => {
    throw new DatasetError(`${name}: ${why}`);
  };
  if (buf.byteLength < HEADER_BYTES) fail(`too short (${buf.byteLength} bytes) for the ${HEADER_BYTES}-byte header`);
  if (!Buffer.from(buf.buffer, buf.byteOffset, 8).equals(MAGIC)) fail('not a caatnet token file (bad magic)');
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const version = dv.getUint32(8, true);
  if (version !== DATASET_FORMAT_VERSION) fail(`unsupported version ${version}`);
  const width = dv.getUint32(12, true);
  if (width !== 2 && width !== 4) fail(`bad token width ${width}`);
  const count = Number(dv.getBigUint64(16, true));
  if (HEADER_BYTES + count * width !== buf.byteLength) {
    fail(`header says ${count} tokens of ${width} bytes but the file holds ${buf.byteLength - HEADER_BYTES} data bytes`);
  }
  const data = buf.subarray(HEADER_BYTES);
  const sum = createHash('sha256').update(data).digest();
  if (!sum.equals(Buffer.from(buf.buffer, buf.byteOffset + 48, 32))) fail('checksum mismatch (file corrupt)');
  const copy = new ArrayBuffer(data.byteLength);
  new Uint8Array(copy).set(data);
  const tokens = width === 2 ? new Uint16Array(copy) : new Uint32Array(copy);
  const vocabSize = dv.getUint32(40, true);
  for (let i = 0; i < tokens.length; i++) {
    if (tokens[i]! >= vocabSize) fail(`token ${tokens[i]} at index ${i} is outside the vocabulary (${vocabSize})`);
  }
  return {
    tokens,
    textBytes: Number(dv.getBigUint64(24, true)),
    documents: Number(dv.getBigUint64(32, true)),
    vocabSize,
  };
}

export function writeTokenFile(filePath: string, stream: TokenStream, vocabSize: number): void {
  writeFileAtomic(filePath, encodeTokenFile(stream, vocabSize));
}

export function readTokenFile(filePath: string): TokenStream & { vocabSize: number } {
  return decodeTokenFile(fs.readFileSync(filePath), filePath);
}

export interface PrepareDatasetOptions extends SplitOptions {
  corpus: Corpus;
  tokenizer: Tokenizer;
  /** Cache directory (default `defaultCacheDir()`); `false` disables the cache. */
  cacheDir?: string | false;
  log?: (message: string) => void;
}

export interface PreparedDataset {
  tokenizer: Tokenizer;
  train: TokenStream;
  val: TokenStream;
  /** Cache key of this corpus + split + tokenizer. */
  key: string;
  /** True when both splits came from the cache (no tokenisation happened). */
  cacheHit: boolean;
  /** Where the token files live (null without a cache). */
  cachePath: string | null;
}

/** Cache key for a corpus, split and tokenizer. */
export function datasetKey(corpus: Corpus, split: SplitOptions, tokenizer: Tokenizer): string {
  return createHash('sha256')
    .update(
      JSON.stringify({
        format: DATASET_FORMAT_VERSION,
        corpus: corpus.fingerprint,
        valFraction: split.valFraction ?? DEFAULT_VAL_FRACTION,
        seed: split.seed ?? DEFAULT_SPLIT_SEED,
        tokenizer: tokenizerHash(tokenizer),
      }),
    )
    .digest('hex')
    .slice(0, 24);
}

/** Splits the corpus, tokenises both splits, and caches the token files (or loads them from the cache). */
export function prepareDataset(options: PrepareDatasetOptions): PreparedDataset {
  const { corpus, tokenizer } = options;
  const split: SplitOptions = { valFraction: options.valFraction, seed: options.seed };
  const key = datasetKey(corpus, split, tokenizer);
  const log = options.log ?? (() => {});
  const cacheRoot = options.cacheDir === false ? null : (options.cacheDir ?? defaultCacheDir());
  const dir = cacheRoot === null ? null : path.join(cacheRoot, `tokens-${key}`);
  if (dir !== null) {
    const trainFile = path.join(dir, 'train.bin');
    const valFile = path.join(dir, 'val.bin');
    if (fs.existsSync(trainFile) && fs.existsSync(valFile)) {
      try {
        const train = readTokenFile(trainFile);
        const val = readTokenFile(valFile);
        if (train.vocabSize === tokenizer.vocabSize && val.vocabSize === tokenizer.vocabSize) {
          log(`tokens: cache hit ${dir} (train ${train.tokens.length}, val ${val.tokens.length} tokens)`);
          return { tokenizer, train, val, key, cacheHit: true, cachePath: dir };
        }
        log(`tokens: cached vocabulary size differs; re-tokenising`);
      } catch (err) {
        log(`tokens: ignoring unreadable cache (${(err as Error).message}); re-tokenising`);
      }
    }
  }
  const { train: trainDocs, val: valDocs } = splitCorpus(corpus.documents, split);
  const t0 = performance.now();
  const train = tokenizeDocuments(trainDocs, tokenizer);
  const val = tokenizeDocuments(valDocs, tokenizer);
  const secs = (performance.now() - t0) / 1000;
  log(
    `tokens: tokenised ${trainDocs.length} train / ${valDocs.length} val documents ` +
      `into ${train.tokens.length} / ${val.tokens.length} tokens in ${secs.toFixed(1)} s`,
  );
  if (dir !== null) {
    writeTokenFile(path.join(dir, 'train.bin'), train, tokenizer.vocabSize);
    writeTokenFile(path.join(dir, 'val.bin'), val, tokenizer.vocabSize);
    writeFileAtomic(
      path.join(dir, 'meta.json'),
      JSON.stringify(
        {
          corpus: corpus.name,
          corpusFingerprint: corpus.fingerprint,
          split,
          tokenizer: tokenizer.kind,
          tokenizerHash: tokenizerHash(tokenizer),
          vocabSize: tokenizer.vocabSize,
          train: { documents: train.documents, tokens: train.tokens.length, textBytes: train.textBytes },
          val: { documents: val.documents, tokens: val.tokens.length, textBytes: val.textBytes },
        },
        null,
        2,
      ) + '\n',
    );
  }
  return { tokenizer, train, val, key, cacheHit: false, cachePath: dir };
}

export interface PrepareDataOptions extends SplitOptions {
  /** "default" (or undefined) for the default corpus, a path to user data, or a loaded corpus. */
  corpus?: string | Corpus;
  /** "bpe" (train caatnet's BPE, cached; default), "gpt2", a path to a tokenizer JSON, or a tokenizer. */
  tokenizer?: 'bpe' | 'gpt2' | string | Tokenizer;
  /** Vocabulary size for a trained BPE (default 4096). */
  vocabSize?: number;
  cacheDir?: string | false;
  log?: (message: string) => void;
}

/**
 * Everything `caat train` needs: loads the corpus, gets the tokenizer (a BPE is trained on the TRAIN
 * split only and cached as `<cacheDir>/bpe-<hash>.json`), and prepares the cached token streams.
 */
export function prepareData(options: PrepareDataOptions = {}): PreparedDataset & { corpus: Corpus } {
  const log = options.log ?? (() => {});
  const corpus = typeof options.corpus === 'object' ? options.corpus : loadCorpus(options.corpus);
  log(`corpus: ${corpus.name}: ${corpus.documents.length} documents, ${corpus.bytes} bytes`);
  const split: SplitOptions = { valFraction: options.valFraction, seed: options.seed };
  const cacheRoot = options.cacheDir === false ? null : (options.cacheDir ?? defaultCacheDir());
  let tokenizer: Tokenizer;
  const spec = options.tokenizer ?? 'bpe';
  if (typeof spec === 'object') tokenizer = spec;
  else if (spec === 'gpt2') tokenizer = new Gpt2Tokenizer();
  else if (spec === 'bpe') tokenizer = trainedBpe(corpus, split, options.vocabSize ?? 4096, cacheRoot, log);
  else tokenizer = loadTokenizer(spec);
  const prepared = prepareDataset({ corpus, tokenizer, ...split, cacheDir: options.cacheDir, log });
  return { ...prepared, corpus };
}

/** Trains (or loads from the cache) a BPE on the train split of a corpus. */
export function trainedBpe(
  corpus: Corpus,
  split: SplitOptions,
  vocabSize: number,
  cacheRoot: string | null,
  log: (message: string) => void = () => {},
): BpeTokenizer {
  const key = createHash('sha256')
    .update(JSON.stringify({ corpus: corpus.fingerprint, valFraction: split.valFraction ?? DEFAULT_VAL_FRACTION, seed: split.seed ?? DEFAULT_SPLIT_SEED, vocabSize, v: 1 }))
    .digest('hex')
    .slice(0, 24);
  const file = cacheRoot === null ? null : path.join(cacheRoot, `bpe-${key}.json`);
  if (file !== null && fs.existsSync(file)) {
    try {
      const tok = loadTokenizer(file);
      if (tok instanceof BpeTokenizer) {
        log(`tokenizer: cache hit ${file} (vocab ${tok.vocabSize})`);
        return tok;
      }
    } catch (err) {
      log(`tokenizer: ignoring unreadable cache (${(err as Error).message})`);
    }
  }
  const { train } = splitCorpus(corpus.documents, split);
  const t0 = performance.now();
  const tok = trainBpe(
    train.map((d) => d.text),
    { vocabSize },
  );
  log(`tokenizer: trained BPE with ${tok.vocabSize} tokens on ${train.length} documents in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  if (file !== null) saveTokenizer(file, tok);
  return tok;
}

// ---------------------------------------------------------------------------------------------------
// Batches

export interface Batch {
  /** [rows, seqLen] row-major token ids. */
  inputs: Int32Array;
  /** [rows, seqLen]: inputs shifted by one. */
  targets: Int32Array;
  rows: number;
  seqLen: number;
}

/** The loader cursor: the next window is position `index` of epoch `epoch`'s order. */
export interface LoaderState {
  epoch: number;
  index: number;
  seed: number;
}

function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d);
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b);
  return (x ^ (x >>> 16)) >>> 0;
}

/** A 32-bit seed from an arbitrary safe integer seed and an epoch. */
function epochSeed(seed: number, epoch: number, salt: number): number {
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 2 ** 32) >>> 0;
  return mix32(mix32(mix32(lo ^ salt) ^ hi) ^ mix32(epoch + 0x9e3779b9));
}

export interface TokenLoaderOptions {
  batchSize: number;
  seqLen: number;
  /** Seed of the window order (default 0). */
  seed?: number;
  /** Shuffle windows each epoch (default true); false gives sequential windows with no offset. */
  shuffle?: boolean;
}

/**
 * Training batches of B x T windows. Epoch e cuts the stream into windows of T + 1 tokens starting at
 * offset_e + k*T (offset_e a seeded value in [0, T) when shuffling, so epochs see different cuts) and
 * visits them in a seeded random order; rows of a batch are consecutive windows of that order and batches
 * run on across epoch boundaries. The cursor {epoch, index, seed} fully determines what comes next, so
 * `restore(state())` resumes exactly.
 */
export class TokenLoader {
  readonly batchSize: number;
  readonly seqLen: number;
  private readonly shuffle: boolean;
  private epoch = 0;
  private index = 0;
  private seed: number;
  private orderEpoch = -1;
  private order: Uint32Array = new Uint32Array(0);
  private offset = 0;

  constructor(
    private readonly tokens: ArrayLike<number>,
    options: TokenLoaderOptions,
  ) {
    const { batchSize, seqLen } = options;
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new DatasetError(`batchSize must be a positive integer, got ${batchSize}`);
    if (!Number.isInteger(seqLen) || seqLen < 1) throw new DatasetError(`seqLen must be a positive integer, got ${seqLen}`);
    if (tokens.length < seqLen + 1) {
      throw new DatasetError(`need at least seqLen + 1 = ${seqLen + 1} tokens for one training window, have ${tokens.length}`);
    }
    this.batchSize = batchSize;
    this.seqLen = seqLen;
    this.shuffle = options.shuffle ?? true;
    this.seed = options.seed ?? 0;
    if (!Number.isSafeInteger(this.seed)) throw new DatasetError(`seed must be a safe integer, got ${this.seed}`);
  }

  /** Windows in the current epoch. */
  get windowsPerEpoch(): number {
    this.prepareEpoch();
    return this.order.length;
  }

  private prepareEpoch(): void {
    if (this.orderEpoch === this.epoch) return;
    const T = this.seqLen;
    const N = this.tokens.length;
    let offset = 0;
    if (this.shuffle && N >= 2 * T + 1) offset = epochSeed(this.seed, this.epoch, 0x0ff5e7) % T;
    const n = Math.floor((N - 1 - offset) / T);
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    if (this.shuffle) {
      const rand = mulberry32(epochSeed(this.seed, this.epoch, 0x5f1e));
      for (let i = n - 1; i > 0; i--) {
        const j = Math.floor(rand() * (i + 1));
        const t = order[i]!;
        order[i] = order[j]!;
        order[j] = t;
      }
    }
    this.order = order;
    this.offset = offset;
    this.orderEpoch = this.epoch;
  }

  /** The next batch; advances the cursor. */
  next(): Batch {
    const B = this.batchSize;
    const T = this.seqLen;
    const inputs = new Int32Array(B * T);
    const targets = new Int32Array(B * T);
    const tok = this.tokens;
    for (let r = 0; r < B; r++) {
      this.prepareEpoch();
      const start = this.offset + this.order[this.index]! * T;
      const o = r * T;
      for (let t = 0; t < T; t++) {
        inputs[o + t] = tok[start + t]!;
        targets[o + t] = tok[start + t + 1]!;
      }
      this.index++;
      if (this.index >= this.order.length) {
        this.epoch++;
        this.index = 0;
      }
    }
    return { inputs, targets, rows: B, seqLen: T };
  }

  state(): LoaderState {
    return { epoch: this.epoch, index: this.index, seed: this.seed };
  }

  restore(state: LoaderState): void {
    const { epoch, index, seed } = state;
    if (!Number.isSafeInteger(epoch) || epoch < 0) throw new DatasetError(`loader state: bad epoch ${epoch}`);
    if (!Number.isSafeInteger(index) || index < 0) throw new DatasetError(`loader state: bad index ${index}`);
    if (!Number.isSafeInteger(seed)) throw new DatasetError(`loader state: bad seed ${seed}`);
    this.epoch = epoch;
    this.seed = seed;
    this.orderEpoch = -1;
    this.prepareEpoch();
    if (index >= this.order.length) {
      throw new DatasetError(`loader state: index ${index} is past the ${this.order.length} windows of epoch ${epoch} (different data?)`);
    }
    this.index = index;
  }
}

/** Number of sequential validation windows of T + 1 tokens. */
export function validationWindows(nTokens: number, seqLen: number): number {
  return nTokens < seqLen + 1 ? 0 : Math.floor((nTokens - 1) / seqLen);
}

/**
 * Deterministic validation batches: windows starting at 0, T, 2T, ... in order, B rows per batch (the
 * last batch may have fewer rows), at most `maxBatches` batches.
 */
export function* validationBatches(tokens: ArrayLike<number>, batchSize: number, seqLen: number, maxBatches = Infinity): Generator<Batch> {
  const T = seqLen;
  const nWin = validationWindows(tokens.length, T);
  let produced = 0;
  for (let w0 = 0; w0 < nWin && produced < maxBatches; w0 += batchSize, produced++) {
    const rows = Math.min(batchSize, nWin - w0);
    const inputs = new Int32Array(rows * T);
    const targets = new Int32Array(rows * T);
    for (let r = 0; r < rows; r++) {
      const start = (w0 + r) * T;
      for (let t = 0; t < T; t++) {
        inputs[r * T + t] = tokens[start + t]!;
        targets[r * T + t] = tokens[start + t + 1]!;
      }
    }
    yield { inputs, targets, rows, seqLen: T };
  }
}

// ---------------------------------------------------------------------------------------------------
// Statistics

/** Entropy of the unigram token distribution of a stream (what a model that ignores context achieves). */
export function unigramEntropy(tokens: ArrayLike<number>): { bitsPerToken: number; natsPerToken: number } {
  const counts = new Map<number, number>();
  for (let i = 0; i < tokens.length; i++) counts.set(tokens[i]!, (counts.get(tokens[i]!) ?? 0) + 1);
  const n = tokens.length;
  let nats = 0;
  for (const c of counts.values()) {
    const p = c / n;
    nats -= p * Math.log(p);
  }
  return { natsPerToken: nats, bitsPerToken: nats / Math.LN2 };
}

/**
 * UTF-8 text bytes per token of a stream (separator tokens count as tokens but add no bytes). A mean
 * cross-entropy of L nats per token is L / ln 2 / bytesPerToken bits per byte.
 */
export function bytesPerToken(stream: TokenStream): number {
  return stream.tokens.length === 0 ? 0 : stream.textBytes / stream.tokens.length;
}

/** Bits per byte from a mean loss in nats per token. */
export function bitsPerByte(lossNatsPerToken: number, stream: TokenStream): number {
  return lossNatsPerToken / Math.LN2 / bytesPerToken(stream);
}
