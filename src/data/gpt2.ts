/**
 * GPT-2's byte-level BPE (the "r50k_base" encoding, 50257 tokens; id 50256 is <|endoftext|>), through the
 * `gpt-tokenizer` package, which ships the ranks offline. The token -> bytes table used for streaming
 * decode comes from the same package's rank list.
 */
import r50k from 'gpt-tokenizer/encoding/r50k_base';
import r50kRanks from 'gpt-tokenizer/bpeRanks/r50k_base';
import { END_OF_TEXT, TokenizerError, type Tokenizer, type TokenizerJSON } from './tokenizer.js';

const GPT2_VOCAB = 50257;
const GPT2_EOT = 50256;
const PLAIN_TEXT = { disallowedSpecial: new Set<string>() };

export interface Gpt2JSON extends TokenizerJSON {
  kind: 'gpt2';
  version: 1;
}

let tokenTable: Uint8Array[] | null = null;

function table(): Uint8Array[] {
  if (tokenTable === null) {
    const enc = new TextEncoder();
    const t: Uint8Array[] = new Array(GPT2_VOCAB);
    (r50kRanks as readonly (string | readonly number[])[]).forEach((v, i) => {
      t[i] = typeof v === 'string' ? enc.encode(v) : Uint8Array.from(v);
    });
    t[GPT2_EOT] = enc.encode(END_OF_TEXT);
    tokenTable = t;
  }
  return tokenTable;
}

export class Gpt2Tokenizer implements Tokenizer {
  readonly kind = 'gpt2' as const;
  readonly vocabSize = GPT2_VOCAB;
  readonly eotId = GPT2_EOT;

  constructor() {
    if (r50k.vocabularySize !== GPT2_VOCAB) {
      throw new TokenizerError(`gpt2: gpt-tokenizer's r50k_base has ${r50k.vocabularySize} tokens, expected ${GPT2_VOCAB}`);
    }
  }

  encode(text: string): number[] {
    return r50k.encode(text, PLAIN_TEXT);
  }

  decode(ids: ArrayLike<number>): string {
    const t = table();
    let len = 0;
    for (let i = 0; i < ids.length; i++) len += this.tokenBytes(ids[i]!).length;
    const buf = new Uint8Array(len);
    let off = 0;
    for (let i = 0; i < ids.length; i++) {
      const b = t[ids[i]!]!;
      buf.set(b, off);
      off += b.length;
    }
    return new TextDecoder('utf-8', { ignoreBOM: true }).decode(buf);
  }

  tokenBytes(id: number): Uint8Array {
    const b = Number.isInteger(id) ? table()[id] : undefined;
    if (b === undefined) throw new TokenizerError(`gpt2: token id ${id} is outside the vocabulary [0, ${GPT2_VOCAB})`);
    return b;
  }

  toJSON(): Gpt2JSON {
    return { kind: 'gpt2', version: 1 };
  }
}
