/**
 * The tokenizer contract shared by caatnet's own byte-level BPE (`bpe.ts`) and GPT-2's BPE (`gpt2.ts`).
 *
 * Conventions:
 * - `encode(text)` treats its whole input as plain text: the literal string "<|endoftext|>" in a document
 *   is encoded as ordinary bytes, never as the special token. The special token only enters a token
 *   stream where the data pipeline puts it (as the document separator), so `decode(encode(s)) === s` for
 *   every well-formed string `s` (any string without unpaired surrogates, i.e. any valid UTF-8 text).
 * - `decode(ids)` concatenates the tokens' bytes and decodes them as UTF-8; byte sequences that are not
 *   valid UTF-8 (possible for arbitrary model output) become U+FFFD. The special token decodes to its
 *   literal text "<|endoftext|>".
 * - `tokenBytes(id)` is the exact byte string of one token (used by `StreamDecoder` and for byte counts).
 */
import { createHash } from 'node:crypto';

export const END_OF_TEXT = '<|endoftext|>';

export type TokenizerKind = 'bpe' | 'gpt2';

/** The serialised form of a tokenizer; `kind` selects the implementation. */
export interface TokenizerJSON {
  kind: TokenizerKind;
  version: number;
  [key: string]: unknown;
}

export interface Tokenizer {
  readonly kind: TokenizerKind;
  /** Number of token ids (all ids are in [0, vocabSize)). */
  readonly vocabSize: number;
  /** Id of the <|endoftext|> document separator, or null when the tokenizer has none. */
  readonly eotId: number | null;
  encode(text: string): number[];
  decode(ids: ArrayLike<number>): string;
  /** The bytes one token stands for (a copy is not guaranteed: do not modify). */
  tokenBytes(id: number): Uint8Array;
  toJSON(): TokenizerJSON;
}

export class TokenizerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TokenizerError';
  }
}

/** A stable content hash of a tokenizer (hex, 16 chars), for cache keys. */
export function tokenizerHash(tok: Tokenizer): string {
  return createHash('sha256').update(JSON.stringify(tok.toJSON())).digest('hex').slice(0, 16);
}

/**
 * Incremental decoder for generation: feed token ids one at a time and get back only text whose UTF-8
 * sequences are complete. A multi-byte character split across tokens is held back until its last byte
 * arrives; bytes that can never form a valid character are emitted as U+FFFD.
 */
export class StreamDecoder {
  private decoder = new TextDecoder('utf-8', { ignoreBOM: true });

  constructor(private readonly tokenizer: Tokenizer) {}

  /** Adds one token and returns the newly completed text (possibly ""). */
  push(id: number): string {
    return this.decoder.decode(this.tokenizer.tokenBytes(id), { stream: true });
  }

  /** Adds several tokens. */
  pushAll(ids: Iterable<number>): string {
    let out = '';
    for (const id of ids) out += this.push(id);
    return out;
  }

  /** Ends the stream: returns what is left (an incomplete trailing sequence becomes U+FFFD). */
  flush(): string {
    const rest = this.decoder.decode();
    this.decoder = new TextDecoder('utf-8', { ignoreBOM: true });
    return rest;
  }
}

/** UTF-8 byte length of a string (what bits-per-byte is measured against). */
export function utf8Length(text: string): number {
  return Buffer.byteLength(text, 'utf8');
}
