/**
 * Creating, saving and loading tokenizers of any kind.
 */
import * as fs from 'node:fs';
import { writeFileAtomic } from '../io/atomic.js';
import { BpeTokenizer } from './bpe.js';
import { Gpt2Tokenizer } from './gpt2.js';
import { TokenizerError, type Tokenizer } from './tokenizer.js';

/** Rebuilds a tokenizer from its `toJSON()` form. */
export function tokenizerFromJSON(json: unknown): Tokenizer {
  const kind = (json as { kind?: unknown } | null)?.kind;
  if (kind === 'bpe') return BpeTokenizer.fromJSON(json);
  if (kind === 'gpt2') {
    const version = (json as { version?: unknown }).version;
    if (version !== 1) throw new TokenizerError(`gpt2: unsupported format version ${String(version)}`);
    return new Gpt2Tokenizer();
  }
  throw new TokenizerError(`unknown tokenizer kind ${JSON.stringify(kind)} (expected "bpe" or "gpt2")`);
}

/** Writes a tokenizer as JSON (atomically). */
export function saveTokenizer(filePath: string, tok: Tokenizer): void {
  writeFileAtomic(filePath, JSON.stringify(tok.toJSON()) + '\n');
}

/** Reads a tokenizer JSON file; errors name the file. */
export function loadTokenizer(filePath: string): Tokenizer {
  let text: string;
  try {
    text = fs.readFileSync(filePath, 'utf8');
  } catch (err) {
    throw new TokenizerError(`${filePath}: cannot read tokenizer (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new TokenizerError(`${filePath}: not valid JSON (${(err as Error).message})`);
  }
  try {
    return tokenizerFromJSON(json);
  } catch (err) {
    throw new TokenizerError(`${filePath}: ${(err as Error).message}`);
  }
}
