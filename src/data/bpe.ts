/**
 * caatnet's byte-level BPE: trained here with a chosen vocabulary size.
 *
 * Vocabulary: ids 0..255 are the 256 bytes; id 256 + r is the token made by merge r (merges are applied
 * in rank order, like GPT-2); when enabled, the special token <|endoftext|> takes the last id
 * (vocabSize - 1). Text is first split into pre-tokens with GPT-2's regex (contractions, words with an
 * optional leading space, numbers, punctuation runs, whitespace), so merges never cross those
 * boundaries, and each pre-token's UTF-8 bytes are merged independently. Any well-formed string
 * round-trips exactly.
 *
 * Training (`trainBpe`): unique pre-tokens are counted with their frequencies; pair counts are kept in a
 * map with a max-heap of candidates (lazy deletion), and each merge rewrites only the words that contain
 * the merged pair (found through a pair -> words index), updating pair counts incrementally. The most
 * frequent pair is merged next; ties are broken by the smaller (left id, right id). Training stops at
 * the requested vocabulary size or when no pair occurs at least `minFrequency` times, so `vocabSize` can
 * come out smaller than requested on tiny corpora. If the training texts exceed `maxTrainBytes` a
 * deterministic subset of whole texts is used (each text is kept when a hash of its index falls below
 * the sampling ratio).
 *
 * Encoding: each pre-token is merged by rank (the adjacent pair with the lowest merge rank first,
 * leftmost on ties) and the result is cached per pre-token.
 */
import { END_OF_TEXT, TokenizerError, type Tokenizer, type TokenizerJSON } from './tokenizer.js';

/** GPT-2's pre-tokenisation pattern. Its alternatives cover every code point, so pieces tile the text. */
export const GPT2_SPLIT_PATTERN = String.raw`'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;

const BPE_FORMAT_VERSION = 1;
/** Ids must stay below 2^20 so that a pair of ids packs into one safe integer key. */
const MAX_VOCAB = 1 << 20;
const PAIR_SHIFT = 1 << 20;

function pairKey(a: number, b: number): number {
  return a * PAIR_SHIFT + b;
}

/** Splits `text` into pre-tokens (their concatenation is exactly `text`). */
export function preTokenize(text: string): string[] {
  const re = new RegExp(GPT2_SPLIT_PATTERN, 'gu');
  const out: string[] = [];
  let last = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(text)) !== null) {
    if (m.index > last) out.push(text.slice(last, m.index));
    out.push(m[0]);
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

const utf8Encoder = new TextEncoder();

/** UTF-8 bytes of a pre-token as an id array (fast path for ASCII). */
function bytesOf(piece: string): number[] {
  const n = piece.length;
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const c = piece.charCodeAt(i);
    if (c >= 128) return Array.from(utf8Encoder.encode(piece));
    out[i] = c;
  }
  return out;
}

export interface BpeTrainOptions {
  /** Total vocabulary size including the 256 byte tokens and <|endoftext|> (default 4096). */
  vocabSize?: number;
  /** Reserve <|endoftext|> as the last id (default true). */
  endOfText?: boolean;
  /** Stop when the most frequent pair occurs fewer times than this (default 2). */
  minFrequency?: number;
  /** Train on a deterministic subset of the texts when they are larger than this (default 64 MB). */
  maxTrainBytes?: number;
  /** Called every 256 merges and at the end. */
  onProgress?: (merges: number, target: number) => void;
}

/** Max-heap of (count, pair key): larger count first, then smaller key. */
class PairHeap {
  private counts: number[] = [];
  private keys: number[] = [];

  get size(): number {
    return this.counts.length;
  }

  private before(i: number, j: number): boolean {
    const ci = this.counts[i]!;
    const cj = this.counts[j]!;
    return ci > cj || (ci === cj && this.keys[i]! < this.keys[j]!);
  }

  private swap(i: number, j: number): void {
    const c = this.counts[i]!;
    this.counts[i] = this.counts[j]!;
    this.counts[j] = c;
    const k = this.keys[i]!;
    this.keys[i] = this.keys[j]!;
    this.keys[j] = k;
  }

  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    let i = this.counts.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }

  /** Removes the top; returns [count, key]. */
  pop(): [number, number] {
    const top: [number, number] = [this.counts[0]!, this.keys[0]!];
    const lastC = this.counts.pop()!;
    const lastK = this.keys.pop()!;
    const n = this.counts.length;
    if (n > 0) {
      this.counts[0] = lastC;
      this.keys[0] = lastK;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < n && this.before(l, m)) m = l;
        if (r < n && this.before(r, m)) m = r;
        if (m === i) break;
        this.swap(i, m);
        i = m;
      }
    }
    return top;
  }
}

function hash32(x: number): number {
  let h = (x ^ 0x9e3779b9) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** Counts pre-tokens of the given texts (a deterministic subset when larger than `maxBytes`). */
export function countPreTokens(texts: readonly string[], maxBytes = Infinity): Map<string, number> {
  let total = 0;
  if (Number.isFinite(maxBytes)) for (const t of texts) total += Buffer.byteLength(t);
  const ratio = total > maxBytes ? maxBytes / total : 1;
  const counts = new Map<string, number>();
  const re = new RegExp(GPT2_SPLIT_PATTERN, 'gu');
  for (let i = 0; i < texts.length; i++) {
    if (ratio < 1 && hash32(i) / 2 ** 32 >= ratio) continue;
    const text = texts[i]!;
    re.lastIndex = 0;
    let last = 0;
    let m: RegExpExecArray | null;
    while ((m = re.exec(text)) !== null) {
      if (m.index > last) {
        const gap = text.slice(last, m.index);
        counts.set(gap, (counts.get(gap) ?? 0) + 1);
      }
      const s = m[0];
      counts.set(s, (counts.get(s) ?? 0) + 1);
      last = m.index + s.length;
    }
    if (last < text.length) {
      const gap = text.slice(last);
      counts.set(gap, (counts.get(gap) ?? 0) + 1);
    }
  }
  return counts;
}

/** Trains a byte-level BPE on `texts` (each text is one document; order matters only for sampling). */
export function trainBpe(texts: readonly string[], options: BpeTrainOptions = {}): BpeTokenizer {
  const vocabSize = options.vocabSize ?? 4096;
  const endOfText = options.endOfText ?? true;
  const minFrequency = Math.max(1, options.minFrequency ?? 2);
  const reserved = 256 + (endOfText ? 1 : 0);
  if (!Number.isInteger(vocabSize) || vocabSize < reserved || vocabSize > MAX_VOCAB) {
    throw new TokenizerError(`bpe: vocabSize must be an integer in [${reserved}, ${MAX_VOCAB}], got ${vocabSize}`);
  }
  const targetMerges = vocabSize - reserved;
  const counts = countPreTokens(texts, options.maxTrainBytes ?? 64e6);

  // Unique words in a deterministic order (sorted pre-tokens), as byte-id arrays.
  const keys = [...counts.keys()].sort();
  const words: number[][] = new Array(keys.length);
  const freq = new Float64Array(keys.length);
  for (let w = 0; w < keys.length; w++) {
    words[w] = bytesOf(keys[w]!);
    freq[w] = counts.get(keys[w]!)!;
  }

  const pairCount = new Map<number, number>();
  const pairWords = new Map<number, number[]>();
  for (let w = 0; w < words.length; w++) {
    const s = words[w]!;
    const f = freq[w]!;
    for (let i = 0; i + 1 < s.length; i++) {
      const k = pairKey(s[i]!, s[i + 1]!);
      pairCount.set(k, (pairCount.get(k) ?? 0) + f);
      let list = pairWords.get(k);
      if (list === undefined) pairWords.set(k, (list = []));
      if (list[list.length - 1] !== w) list.push(w);
    }
  }
  const heap = new PairHeap();
  for (const [k, c] of pairCount) heap.push(c, k);

  const merges: number[] = [];
  const touched = new Int32Array(words.length).fill(-1);
  const created = new Set<number>();
  while (merges.length / 2 < targetMerges && heap.size > 0) {
    const [count, key] = heap.pop();
    const current = pairCount.get(key) ?? 0;
    if (current !== count) {
      if (current > 0) heap.push(current, key); // stale entry: re-queue with the true count
      continue;
    }
    if (count < minFrequency) break;
    const a = Math.floor(key / PAIR_SHIFT);
    const b = key - a * PAIR_SHIFT;
    const rank = merges.length / 2;
    const c = 256 + rank;
    merges.push(a, b);
    created.clear();
    const list = pairWords.get(key) ?? [];
    pairWords.delete(key);
    for (const w of list) {
      if (touched[w] === rank) continue;
      touched[w] = rank;
      const s = words[w]!;
      let has = false;
      for (let i = 0; i + 1 < s.length; i++) {
        if (s[i] === a && s[i + 1] === b) {
          has = true;
          break;
        }
      }
      if (!has) continue;
      const f = freq[w]!;
      for (let i = 0; i + 1 < s.length; i++) {
        const k = pairKey(s[i]!, s[i + 1]!);
        const v = pairCount.get(k)! - f;
        if (v === 0) pairCount.delete(k);
        else pairCount.set(k, v);
      }
      const out: number[] = [];
      for (let i = 0; i < s.length; ) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          out.push(c);
          i += 2;
        } else {
          out.push(s[i]!);
          i += 1;
        }
      }
      words[w] = out;
      for (let i = 0; i + 1 < out.length; i++) {
        const x = out[i]!;
        const y = out[i + 1]!;
        const k = pairKey(x, y);
        pairCount.set(k, (pairCount.get(k) ?? 0) + f);
        if (x === c || y === c) {
          created.add(k);
          let pl = pairWords.get(k);
          if (pl === undefined) pairWords.set(k, (pl = []));
          if (pl[pl.length - 1] !== w) pl.push(w);
        }
      }
    }
    for (const k of created) heap.push(pairCount.get(k)!, k);
    if (options.onProgress && (merges.length / 2) % 256 === 0) options.onProgress(merges.length / 2, targetMerges);
  }
  options.onProgress?.(merges.length / 2, targetMerges);
  return new BpeTokenizer(Int32Array.from(merges), { endOfText });
}

export interface BpeJSON extends TokenizerJSON {
  kind: 'bpe';
  version: number;
  vocabSize: number;
  pattern: string;
  specialTokens: Record<string, number>;
  /** Flattened merge pairs: merge r joins ids merges[2r] and merges[2r+1] into id 256 + r. */
  merges: number[];
}

const CACHE_LIMIT = 200_000;

export class BpeTokenizer implements Tokenizer {
  readonly kind = 'bpe' as const;
  readonly vocabSize: number;
  readonly eotId: number | null;
  /** Number of merges. */
  readonly nMerges: number;
  private readonly merges: Int32Array;
  private readonly ranks = new Map<number, number>();
  private readonly bytes: Uint8Array[] = [];
  private readonly cache = new Map<string, number[]>();
  private readonly re = new RegExp(GPT2_SPLIT_PATTERN, 'gu');
  private readonly decoder = new TextDecoder('utf-8', { ignoreBOM: true });

  /** `merges` is the flattened pair list; ids must refer to bytes or earlier merges. */
  constructor(merges: Int32Array, options: { endOfText?: boolean } = {}) {
    if (merges.length % 2 !== 0) throw new TokenizerError('bpe: merges must hold an even number of ids');
    this.merges = merges;
    this.nMerges = merges.length / 2;
    const endOfText = options.endOfText ?? true;
    this.vocabSize = 256 + this.nMerges + (endOfText ? 1 : 0);
    if (this.vocabSize > MAX_VOCAB) throw new TokenizerError(`bpe: vocabulary of ${this.vocabSize} exceeds ${MAX_VOCAB}`);
    this.eotId = endOfText ? this.vocabSize - 1 : null;
    for (let i = 0; i < 256; i++) this.bytes.push(Uint8Array.of(i));
    for (let r = 0; r < this.nMerges; r++) {
      const a = merges[2 * r]!;
      const b = merges[2 * r + 1]!;
      const limit = 256 + r;
      if (!(a >= 0 && a < limit && b >= 0 && b < limit)) {
        throw new TokenizerError(`bpe: merge ${r} = [${a}, ${b}] refers to a token that does not exist yet (ids < ${limit})`);
      }
      const k = pairKey(a, b);
      if (this.ranks.has(k)) throw new TokenizerError(`bpe: merge ${r} = [${a}, ${b}] is a duplicate`);
      this.ranks.set(k, r);
      const ba = this.bytes[a]!;
      const bb = this.bytes[b]!;
      const joined = new Uint8Array(ba.length + bb.length);
      joined.set(ba, 0);
      joined.set(bb, ba.length);
      this.bytes.push(joined);
    }
    if (this.eotId !== null) this.bytes.push(utf8Encoder.encode(END_OF_TEXT));
  }

  /** The merge pair of rank r. */
  merge(r: number): [number, number] {
    return [this.merges[2 * r]!, this.merges[2 * r + 1]!];
  }

  tokenBytes(id: number): Uint8Array {
    const b = this.bytes[id];
    if (b === undefined) throw new TokenizerError(`bpe: token id ${id} is outside the vocabulary [0, ${this.vocabSize})`);
    return b;
  }

  /** Merges one pre-token's byte ids by rank. */
  encodeWord(symbols: number[]): number[] {
    return symbols.length > 48 ? this.mergeLong(symbols) : this.mergeShort(symbols);
  }

  /** Quadratic rank merge: fastest for ordinary short words. */
  mergeShort(symbols: number[]): number[] {
    const s = symbols.slice();
    for (;;) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i + 1 < s.length; i++) {
        const r = this.ranks.get(pairKey(s[i]!, s[i + 1]!));
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) return s;
      s.splice(best, 2, 256 + bestRank);
    }
  }

  /**
   * Rank merge with a heap over a linked list, O(n log n): for long pre-tokens (long whitespace or
   * punctuation runs). Gives the same result as `mergeShort` (lowest rank first, leftmost on ties).
   */
  mergeLong(symbols: number[]): number[] {
    const n = symbols.length;
    const sym = Int32Array.from(symbols);
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    // Heap of (rank, position), smallest rank then smallest position first.
    const hr: number[] = [];
    const hp: number[] = [];
    const less = (i: number, j: number) => hr[i]! < hr[j]! || (hr[i] === hr[j] && hp[i]! < hp[j]!);
    const swap = (i: number, j: number) => {
      const r = hr[i]!;
      hr[i] = hr[j]!;
      hr[j] = r;
      const p = hp[i]!;
      hp[i] = hp[j]!;
      hp[j] = p;
    };
    const push = (rank: number, pos: number) => {
      hr.push(rank);
      hp.push(pos);
      let i = hr.length - 1;
      while (i > 0) {
        const p = (i - 1) >> 1;
        if (!less(i, p)) break;
        swap(i, p);
        i = p;
      }
    };
    const pop = (): [number, number] => {
      const top: [number, number] = [hr[0]!, hp[0]!];
      const lr = hr.pop()!;
      const lp = hp.pop()!;
      const m = hr.length;
      if (m > 0) {
        hr[0] = lr;
        hp[0] = lp;
        let i = 0;
        for (;;) {
          const l = 2 * i + 1;
          let b = i;
          if (l < m && less(l, b)) b = l;
          if (l + 1 < m && less(l + 1, b)) b = l + 1;
          if (b === i) break;
          swap(i, b);
          i = b;
        }
      }
      return top;
    };
    const alive = new Uint8Array(n).fill(1);
    const tryPush = (i: number) => {
      const j = next[i]!;
      if (j < 0) return;
      const r = this.ranks.get(pairKey(sym[i]!, sym[j]!));
      if (r !== undefined) push(r, i);
    };
    for (let i = 0; i + 1 < n; i++) tryPush(i);
    while (hr.length > 0) {
      const [rank, i] = pop();
      if (!alive[i]) continue;
      const j = next[i]!;
      if (j < 0) continue;
      if (this.ranks.get(pairKey(sym[i]!, sym[j]!)) !== rank) continue; // stale
      sym[i] = 256 + rank;
      alive[j] = 0;
      const k = next[j]!;
      next[i] = k;
      if (k >= 0) prev[k] = i;
      const p = prev[i]!;
      if (p >= 0) tryPush(p);
      tryPush(i);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0; i = next[i]!) out.push(sym[i]!);
    return n === 0 ? [] : out;
  }

  encode(text: string): number[] {
    const out: number[] = [];
    const re = this.re;
    re.lastIndex = 0;
    let last = 0;
    let m: RegExpExecArray | null;
    while ((m = re.exec(text)) !== null) {
      if (m.index > last) this.encodePiece(text.slice(last, m.index), out);
      this.encodePiece(m[0], out);
      last = m.index + m[0].length;
    }
    if (last < text.length) this.encodePiece(text.slice(last), out);
    return out;
  }

  private encodePiece(piece: string, out: number[]): void {
    let ids = this.cache.get(piece);
    if (ids === undefined) {
      ids = this.encodeWord(bytesOf(piece));
      if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
      this.cache.set(piece, ids);
    }
    for (let i = 0; i < ids.length; i++) out.push(ids[i]!);
  }

  decode(ids: ArrayLike<number>): string {
    let len = 0;
    for (let i = 0; i < ids.length; i++) len += this.tokenBytes(ids[i]!).length;
    const buf = new Uint8Array(len);
    let off = 0;
    for (let i = 0; i < ids.length; i++) {
      const b = this.bytes[ids[i]!]!;
      buf.set(b, off);
      off += b.length;
    }
    return this.decoder.decode(buf);
  }

  toJSON(): BpeJSON {
    return {
      kind: 'bpe',
      version: BPE_FORMAT_VERSION,
      vocabSize: this.vocabSize,
      pattern: 'gpt2',
      specialTokens: this.eotId === null ? {} : { [END_OF_TEXT]: this.eotId },
      merges: Array.from(this.merges),
    };
  }

  /** Loads a tokenizer saved with `toJSON`, validating it. */
  static fromJSON(json: unknown): BpeTokenizer {
    const o = json as Partial<BpeJSON> | null;
    if (o === null || typeof o !== 'object' || o.kind !== 'bpe') throw new TokenizerError('bpe: not a bpe tokenizer file (kind must be "bpe")');
    if (o.version !== BPE_FORMAT_VERSION) throw new TokenizerError(`bpe: unsupported format version ${String(o.version)} (expected ${BPE_FORMAT_VERSION})`);
    if (o.pattern !== 'gpt2') throw new TokenizerError(`bpe: unknown pre-tokenisation pattern ${JSON.stringify(o.pattern)}`);
    if (!Array.isArray(o.merges) || !o.merges.every((x) => Number.isInteger(x))) throw new TokenizerError('bpe: merges must be an array of integers');
    const special = o.specialTokens ?? {};
    if (typeof special !== 'object' || Array.isArray(special)) throw new TokenizerError('bpe: specialTokens must be an object');
    const names = Object.keys(special);
    if (names.some((n) => n !== END_OF_TEXT)) throw new TokenizerError(`bpe: unknown special tokens ${JSON.stringify(names)}`);
    const tok = new BpeTokenizer(Int32Array.from(o.merges), { endOfText: names.length === 1 });
    if (o.vocabSize !== tok.vocabSize) throw new TokenizerError(`bpe: vocabSize ${String(o.vocabSize)} does not match ${tok.nMerges} merges (${tok.vocabSize})`);
    if (tok.eotId !== null && special[END_OF_TEXT] !== tok.eotId) throw new TokenizerError(`bpe: ${END_OF_TEXT} must have id ${tok.eotId}`);
    return tok;
  }
}
