/**
 * Proxy tasks built from a run's held-out documents (never trained on), each in the JSONL schema of
 * the real task it imitates so the same scorer runs it. Deterministic for a seed.
 *
 * | task                | schema         | item                                                                          | chance |
 * |---------------------|----------------|-------------------------------------------------------------------------------|--------|
 * | proxy_cloze         | lambada_openai | a held-out passage ending in a sentence's last word (final punctuation cut)   | ~0     |
 * | proxy_next_sentence | hellaswag      | a passage and its true next sentence vs 3 sentences of other documents        | 0.25   |
 * | proxy_word_order    | openbookqa     | a sentence's rest vs the same rest with two adjacent words swapped            | 0.5    |
 * | proxy_heldout       | wikitext       | every held-out document as one page (rolling perplexity)                      | -      |
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

export interface ProxyOptions {
  items?: number;
  seed?: number;
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

/** Up to `n` items in a seeded random selection, kept in corpus order. */
function pick<T>(cands: T[], n: number, rand: () => number): T[] {
  const idx = shuffle(cands.map((_, i) => i), rand).slice(0, n);
  idx.sort((a, b) => a - b);
  return idx.map((i) => cands[i]!);
}

const words = (s: string): string[] => s.split(' ');

/** The preceding sentences of document d up to `maxWords` words (whole sentences, at least one). */
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

export function proxyRecords(name: ProxyName, docs: readonly Document[], o: ProxyOptions = {}): Record<string, unknown>[] {
  const items = o.items ?? DEFAULT_PROXY_ITEMS;
  const seed = (o.seed ?? DEFAULT_PROXY_SEED) + PROXY_TASKS.indexOf(name) * 0x9e3779b1;
  const rand = mulberry32(seed >>> 0);
  const sents = docs.map((d) => sentencesOf(d.text));
  if (name === 'proxy_heldout') return docs.filter((d) => d.text.length > 0).map((d) => ({ page: d.text }));
  if (name === 'proxy_cloze') {
    const cands: string[] = [];
    sents.forEach((ss) => {
      for (let k = 1; k < ss.length; k++) {
        const m = /^(.* )([A-Za-z]{2,})[.!?]["'\u201d\u2019)\]]?$/u.exec(ss[k]!);
        if (!m || words(ss[k]!).length < 6) continue;
        const ctx = contextBefore(ss, k, 50);
        cands.push(`${ctx} ${m[1]}${m[2]}`);
      }
    });
    return pick(cands, items, rand).map((text) => ({ text }));
  }
  if (name === 'proxy_next_sentence') {
    const pool: { d: number; s: string }[] = [];
    sents.forEach((ss, d) => ss.forEach((s) => words(s).length >= 4 && words(s).length <= 40 && pool.push({ d, s })));
    const cands: { d: number; ctx: string; next: string }[] = [];
    sents.forEach((ss, d) => {
      for (let k = 1; k < ss.length; k++) {
        const n = words(ss[k]!).length;
        if (n < 4 || n > 40) continue;
        cands.push({ d, ctx: contextBefore(ss, k, 50), next: ss[k]! });
      }
    });
    if (new Set(pool.map((p) => p.d)).size < 2) return [];
    return pick(cands, items, rand).map((c, i) => {
      const endings: string[] = [];
      while (endings.length < 3) {
        const p = pool[Math.floor(rand() * pool.length)]!;
        if (p.d !== c.d && !endings.includes(p.s) && p.s !== c.next) endings.push(p.s);
      }
      const label = Math.floor(rand() * 4);
      endings.splice(label, 0, c.next);
      return { ind: i, activity_label: 'Passage', ctx_a: c.ctx, ctx_b: '', ctx: c.ctx, endings, source_id: `proxy-${docs[c.d]!.id}`, split: 'val', split_type: 'indomain', label: String(label) };
    });
  }
  // proxy_word_order
  const cands: { ctx: string; w: string[] }[] = [];
  sents.forEach((ss, _d) => {
    for (let k = 0; k < ss.length; k++) {
      const w = words(ss[k]!);
      if (w.length < 6 || w.length > 30) continue;
      cands.push({ ctx: k > 0 ? contextBefore(ss, k, 30) : '', w });
    }
  });
  const out: Record<string, unknown>[] = [];
  for (const c of pick(cands, items, rand)) {
    const w = c.w;
    // Swap w[j] and w[j+1] with 1 ≤ j and j + 1 ≤ n − 2 (the final word keeps its punctuation).
    let j = 1 + Math.floor(rand() * (w.length - 3));
    let tries = 0;
    while (w[j] === w[j + 1] && tries++ < w.length) j = 1 + ((j - 1 + 1) % (w.length - 3));
    if (w[j] === w[j + 1]) continue;
    const rest = w.slice(j).join(' ');
    const swapped = [w[j + 1]!, w[j]!, ...w.slice(j + 2)].join(' ');
    const stem = (c.ctx ? `${c.ctx} ` : '') + w.slice(0, j).join(' ');
    const goldFirst = rand() < 0.5;
    out.push({
      id: `proxy-word-order-${out.length}`,
      question_stem: stem,
      choices: { text: goldFirst ? [rest, swapped] : [swapped, rest], label: ['A', 'B'] },
      answerKey: goldFirst ? 'A' : 'B',
    });
  }
  return out;
}
