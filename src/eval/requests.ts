/**
 * The two request types of lm-evaluation-harness as token sequences for a causal model with a context
 * window of L tokens:
 *
 * - loglikelihood(context, continuation) (`api/model.py _encode_pair`, `models/huggingface.py`):
 *   trailing whitespace of the context moves to the front of the continuation; the continuation's
 *   tokens are `enc(context + continuation)[len(enc(context)):]` (never encoded on its own); an empty
 *   context becomes the prefix token; the sequence is left-truncated to its last L + 1 tokens.
 * - loglikelihood_rolling(text) (`utils.get_rolling_token_windows` with context_len 1 and
 *   `make_disjoint_window`): window 1 is [prefix] + T[0 : L−1] predicting T[0 : L]; every later window
 *   predicts the next w ≤ L tokens from the L tokens just before its last one, so full windows carry
 *   one token of context and the last window the most.
 *
 * BOS convention: no BOS token is added to contexts (lm-evaluation-harness's HF default up to v0.4.9.1
 * and every API model). The prefix token of empty contexts and rolling windows is the tokenizer's
 * BOS, else its EOS: caatnet's tokenizers have no BOS, so it is <|endoftext|>, the document separator
 * the model saw before every training document (GPT-2's convention in lm-evaluation-harness).
 *
 * A `TokenRequest` is `seq` (at most L + 1 tokens): the model reads seq[0 : n−1] and the last `scored`
 * targets seq[n−scored : n] are summed.
 */
import type { Tokenizer } from '../data/tokenizer.js';
import { isPySpace } from './pytext.js';

export interface TokenRequest {
  seq: number[];
  scored: number;
}

/** A request that cannot be scored, with the reason. */
export interface Unscorable {
  error: string;
}

export function prefixToken(tok: Tokenizer): number {
  if (tok.eotId === null) throw new Error('the tokenizer has no <|endoftext|> token to use as the prefix of empty contexts and rolling windows');
  return tok.eotId;
}

/** Context and continuation token ids exactly as lm-evaluation-harness splits them. */
export function encodePair(tok: Tokenizer, context: string, continuation: string, prefix: number): { ctx: number[]; cont: number[] } {
  if (context === '') return { ctx: [prefix], cont: tok.encode(continuation) };
  let n = context.length;
  while (n > 0 && isPySpace(context[n - 1]!)) n--;
  const ctxText = context.slice(0, n);
  const contText = context.slice(n) + continuation;
  const whole = tok.encode(ctxText + contText);
  let ctx = tok.encode(ctxText);
  const cont = whole.slice(ctx.length);
  // A context of whitespace only: lm-evaluation-harness would read past the sequence's start; the
  // prefix token stands in for the empty context, as it does for context "".
  if (ctx.length === 0) ctx = [prefix];
  return { ctx, cont };
}

/** One loglikelihood request as a token request, or why it cannot be scored. */
export function loglikelihoodRequest(tok: Tokenizer, context: string, continuation: string, L: number, prefix: number): TokenRequest | Unscorable {
  const { ctx, cont } = encodePair(tok, context, continuation, prefix);
  if (cont.length === 0) {
    return { error: continuation === '' ? 'the continuation is empty' : `the continuation ${JSON.stringify(continuation)} has no tokens of its own after joint tokenisation (a merge across the context/continuation boundary)` };
  }
  if (cont.length > L) return { error: `the continuation has ${cont.length} tokens, more than the context window of ${L}` };
  const full = ctx.concat(cont);
  return { seq: full.slice(Math.max(0, full.length - (L + 1))), scored: cont.length };
}

/** The disjoint rolling windows of one document's tokens. */
export function rollingRequests(tokens: readonly number[], L: number, prefix: number): TokenRequest[] {
  const N = tokens.length;
  if (N === 0) return [];
  const out: TokenRequest[] = [];
  const first = Math.min(L, N);
  out.push({ seq: [prefix, ...tokens.slice(0, first)], scored: first });
  let done = first;
  while (done < N) {
    const w = Math.min(N - done, L);
    const end = done + w;
    out.push({ seq: tokens.slice(end - L - 1, end), scored: w });
    done = end;
  }
  return out;
}
