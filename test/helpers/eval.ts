/**
 * Zero-shot evaluation test helpers: a small greedy longest-match tokenizer whose vocabulary has
 * tokens spanning a space ("ed w"), so a merge across the context/continuation boundary happens, and
 * an independent reference log-likelihood from one full-sequence forward of a TP-1 model.
 */
import type { Tokenizer, TokenizerJSON } from '../../src/data/tokenizer.js';
import type { RankModel } from '../../src/model/model.js';

const CHARS = [...Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)), '\n', 'é', 'è', 'ü', 'ï', 'ö', '日', '本', '語', '—', '’', '😀'];
const MERGES = ['ed w', ' the', 'th', 'he', ' a', 'in', 'er', ' s'];

export class ToyTokenizer implements Tokenizer {
  readonly kind = 'bpe' as const;
  readonly vocab = ['<|endoftext|>', ...CHARS, ...MERGES];
  readonly vocabSize = this.vocab.length;
  readonly eotId = 0;
  private readonly ids = new Map(this.vocab.map((s, i) => [s, i]));

  encode(text: string): number[] {
    const out: number[] = [];
    let i = 0;
    while (i < text.length) {
      let best = '';
      for (const v of this.vocab.slice(1)) if (v.length > best.length && text.startsWith(v, i)) best = v;
      if (best === '') throw new Error(`toy tokenizer: no token for ${JSON.stringify(text[i])}`);
      out.push(this.ids.get(best)!);
      i += best.length;
    }
    return out;
  }
  decode(ids: ArrayLike<number>): string {
    return Array.from(ids, (i) => this.vocab[i]!).join('');
  }
  tokenBytes(id: number): Uint8Array {
    return new TextEncoder().encode(this.vocab[id]!);
  }
  toJSON(): TokenizerJSON {
    return { kind: 'bpe', version: 0 };
  }
}

/**
 * The reference: lm-evaluation-harness's split written out here (trailing spaces of the context move
 * to the continuation; continuation = enc(ctx + cont)[len(enc(ctx)):]; empty context = [EOS]), one
 * forward of the whole left-truncated sequence on a TP-1 model, float64 log-softmax of its logits.
 */
export async function referenceLL(m: RankModel, tok: Tokenizer, context: string, continuation: string): Promise<{ ll: number; greedy: boolean; n: number } | null> {
  let ctxIds: number[];
  let contIds: number[];
  if (context === '') {
    ctxIds = [tok.eotId!];
    contIds = tok.encode(continuation);
  } else {
    const trail = /[ \t\n]*$/.exec(context)![0];
    const c = context.slice(0, context.length - trail.length);
    const whole = tok.encode(c + trail + continuation);
    ctxIds = tok.encode(c);
    contIds = whole.slice(ctxIds.length);
  }
  if (contIds.length === 0) return null;
  const L = m.cfg.model.seqLen;
  const seq = [...ctxIds, ...contIds].slice(-(L + 1));
  return referenceWindow(m, seq, contIds.length);
}

/** Sum of the last `scored` target log-probabilities of `seq` (inputs seq[:-1], targets seq[1:]). */
export async function referenceWindow(m: RankModel, seq: number[], scored: number): Promise<{ ll: number; greedy: boolean; n: number }> {
  const T = seq.length - 1;
  const inputs = Int32Array.from(seq.slice(0, -1));
  const targets = Int32Array.from(seq.slice(1));
  await m.forward(inputs, targets, 1, T);
  const logits = m.logitsLocal();
  const V = m.cfg.vocab;
  let ll = 0;
  let greedy = true;
  for (let t = T - scored; t < T; t++) {
    let max = -Infinity;
    let arg = 0;
    for (let v = 0; v < V; v++) {
      if (logits[t * V + v]! > max) {
        max = logits[t * V + v]!;
        arg = v;
      }
    }
    let s = 0;
    for (let v = 0; v < V; v++) s += Math.exp(logits[t * V + v]! - max);
    ll += logits[t * V + targets[t]!]! - max - Math.log(s);
    if (arg !== targets[t]) greedy = false;
  }
  return { ll, greedy, n: scored };
}
