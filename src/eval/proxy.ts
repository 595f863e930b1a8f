/**
 * Proxy tasks built from a run's held-out documents (never trained on), each in the JSONL schema of
 * the real task it imitates so the same scorer runs it. Deterministic for a seed.
 *
 * | task                | schema         | item                                                                          | chance |
 * |---------------------|----------------|-------------------------------------------------------------------------------|--------|
 * | proxy_cloze         | lambada_openai | a held-out passage ending in a sentence's last word (final punctuation cut)   | ~0     |
 * | proxy_next_sentence | hellaswag      | a passage and its true next sentence vs 3 sentences of other documents        | 0.25   |
 * | proxy_word_order    | openbookqa     | a sentence's rest vs the same rest with two adjacent words swapped            | 0.5    |
 * | proxy_heldout       | wikitext       | held-out documents as pages (seeded order, up to 200 000 characters in all)   | -      |
 *
 * Sentences: a document's whitespace runs collapse to one space, and it is cut after ".", "!" or "?"
 * (optionally followed by a closing quote or bracket) before a space and an upper-case letter or an
 * opening quote.
 */
import type { Document } from '../data/corpus.js';
import { mulberry32 } from '../util/random.js';
import type { TaskType } from './tasks.js';

export const PROXY_TASKS = ['proxy_cloze', 'proxy_next_sentence', 'proxy_word_order', 'proxy_heldout'] as const;
export type ProxyName = (typeof PROXY_TASKS)[number];
export const PROXY_TYPES: Record<ProxyName, TaskType> = {
  proxy_cloze: 'lambada_openai',
  proxy_next_sentence: 'hellaswag',
  proxy_word_order: 'openbookqa',
  proxy_heldout: 'wikitext',
};

export const DEFAULT_PROXY_ITEMS = 1000;
export const DEFAULT_PROXY_SEED = 1234;
export const DEFAULT_HELDOUT_CHARS = 200_000;

export interface ProxyOptions {
  items?: number;
  seed?: number;
  /** proxy_heldout: whole documents in a seeded order up to this many characters in all (default 200 000). */
  heldoutChars?: number;
  /** Keep only items whose text (context and longest continuation) passes: e.g. fits the context window. */
  fits?: (text: string) => boolean;
}

function sentencesOf(text: string): string[] {
  const flat = text.replace(/\s+/gu, ' ').trim();
  if (flat === '') return [];
  return flat.split(/(?<=[.!?]["'\u201d\u2019)\]]?) (?=["'\u201c\u2018(]?[A-Z])/u).filter((s) => s.length > 0);
}

/** Seeded Fisher–Yates. */
function shuffle<T>(xs: T[], rand: () => number): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [xs[i], xs[j]] = [xs[j]!, xs[i]!];
  }
  return xs;
}

/** Up to `n` items made from candidates in a seeded random order (`make` may refuse one), kept in corpus order. */
function pick<T, U>(cands: T[], n: number, rand: () => number, make: (c: T) => U | undefined): U[] {
  const chosen: [number, U][] = [];
  for (const i of shuffle(cands.map((_, i) => i), rand)) {
    if (chosen.length >= n) break;
    const u = make(cands[i]!);
    if (u !== undefined) chosen.push([i, u]);
  }
  chosen.sort((a, b) => a[0] - b[0]);
  return chosen.map((c) => c[1]);
}

const words = (s: string): string[] => s.split(' ');

/** The preceding sentences of sentence k up to `maxWords` words (whole sentences, at least one). */
function contextBefore(sents: string[], k: number, maxWords: number): string {
  const parts: string[] = [];
  let n = 0;
  for (let j = k - 1; j >= 0; j--) {
    const w = words(sents[j]!).length;
    if (parts.length > 0 && n + w > maxWords) break;
    parts.unshift(sents[j]!);
    n += w;
  }
  return parts.join(' ');
}

/** The longest context before sentence k (at most `maxWords` words, shrinking) for which `ok` holds. */
function fittingContext(sents: string[], k: number, maxWords: number, ok: (ctx: string) => boolean): string | undefined {
  let prev = '';
  for (let m = maxWords; m >= 1; m = Math.floor(m / 2)) {
    const ctx = contextBefore(sents, k, m);
    if (ctx === prev) continue;
    prev = ctx;
    if (ok(ctx)) return ctx;
  }
  return undefined;
}

export function proxyRecords(name: ProxyName, docs: readonly Document[], o: ProxyOptions = {}): Record<string, unknown>[] {
  const items = o.items ?? DEFAULT_PROXY_ITEMS;
  const fits = o.fits ?? (() => true);
  const seed = (o.seed ?? DEFAULT_PROXY_SEED) + PROXY_TASKS.indexOf(name) * 0x9e3779b1;
  const rand = mulberry32(seed >>> 0);
  const sents = docs.map((d) => sentencesOf(d.text));
  if (name === 'proxy_heldout') {
    const budget = o.heldoutChars ?? DEFAULT_HELDOUT_CHARS;
    let used = 0;
    return pick(docs.filter((d) => d.text.length > 0), Infinity, rand, (d) => {
      if (used > 0 && used + d.text.length > budget) return undefined;
      used += d.text.length;
      return { page: d.text };
    });
  }
  if (name === 'proxy_cloze') {
    const cands: { d: number; k: number; body: string }[] = [];
    sents.forEach((ss, d) => {
      for (let k = 1; k < ss.length; k++) {
        const m = /^(.* )([A-Za-z]{2,})[.!?]["'\u201d\u2019)\]]?$/u.exec(ss[k]!);
        if (!m || words(ss[k]!).length < 6) continue;
        cands.push({ d, k, body: `${m[1]}${m[2]}` });
      }
    });
    return pick(cands, items, rand, (c) => {
      const ctx = fittingContext(sents[c.d]!, c.k, 50, (x) => fits(`${x} ${c.body}`));
      return ctx === undefined ? undefined : { text: `${ctx} ${c.body}` };
    });
  }
  if (name === 'proxy_next_sentence') {
    const pool: { d: number; k: number; s: string }[] = [];
    sents.forEach((ss, d) => ss.forEach((s, k) => words(s).length >= 4 && words(s).length <= 40 && pool.push({ d, k, s })));
    // Distractors come from other documents; with a single held-out document, from its sentences at
    // least 10 sentences away.
    const single = new Set(pool.map((p) => p.d)).size < 2;
    const cands: { d: number; k: number; next: string }[] = [];
    sents.forEach((ss, d) => {
      for (let k = 1; k < ss.length; k++) {
        const n = words(ss[k]!).length;
        if (n < 4 || n > 40) continue;
        cands.push({ d, k, next: ss[k]! });
      }
    });
    const byDoc = new Map<number, typeof pool>();
    for (const p of pool) byDoc.set(p.d, [...(byDoc.get(p.d) ?? []), p]);
    const made = pick(cands, items, rand, (c) => {
      // Draw from the whole pool until three distinct sentences of other documents come up.
      const endings: string[] = [];
      for (let tries = 0; endings.length < 3 && tries < 1000; tries++) {
        const p = pool[Math.floor(rand() * pool.length)]!;
        if ((single ? Math.abs(p.k - c.k) > 10 : p.d !== c.d) && p.s !== c.next && !endings.includes(p.s)) endings.push(p.s);
      }
      if (endings.length < 3) return undefined;
      const label = Math.floor(rand() * 4);
      endings.splice(label, 0, c.next);
      const longest = endings.reduce((a, b) => (b.length > a.length ? b : a));
      const ctx = fittingContext(sents[c.d]!, c.k, 30, (x) => fits(`Passage: ${x} ${longest}`));
      if (ctx === undefined) return undefined;
      return { activity_label: 'Passage', ctx_a: ctx, ctx_b: '', ctx, endings, source_id: `proxy-${docs[c.d]!.id}`, split: 'val', split_type: 'indomain', label: String(label) };
    });
    return made.map((r, i) => ({ ind: i, ...r }));
  }
  // proxy_word_order
  const cands: { d: number; k: number; w: string[] }[] = [];
  sents.forEach((ss, d) => {
    for (let k = 0; k < ss.length; k++) {
      const w = words(ss[k]!);
      if (w.length < 6 || w.length > 30) continue;
      cands.push({ d, k, w });
    }
  });
  const made = pick(cands, items, rand, (c) => {
    const w = c.w;
    // Swap w[j] and w[j+1] with 1 ≤ j and j + 1 ≤ n − 2 (the final word keeps its punctuation).
    let j = 1 + Math.floor(rand() * (w.length - 3));
    for (let tries = 0; w[j] === w[j + 1] && tries < w.length; tries++) j = 1 + (j % (w.length - 3));
    if (w[j] === w[j + 1]) return undefined;
    const rest = w.slice(j).join(' ');
    const swapped = [w[j + 1]!, w[j]!, ...w.slice(j + 2)].join(' ');
    const own = w.slice(0, j).join(' ');
    if (!fits(`${own} ${rest}`)) return undefined;
    const ctx = c.k > 0 ? (fittingContext(sents[c.d]!, c.k, 30, (x) => fits(`${x} ${own} ${rest}`)) ?? '') : '';
    const stem = (ctx ? `${ctx} ` : '') + own;
    const goldFirst = rand() < 0.5;
    return { question_stem: stem, choices: { text: goldFirst ? [rest, swapped] : [swapped, rest], label: ['A', 'B'] }, answerKey: goldFirst ? 'A' : 'B' };
  });
  return made.map((r, i) => ({ id: `proxy-word-order-${i}`, ...r }));
}
