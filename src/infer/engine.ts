/**
 * The inference engine, on the process that drives the ranks: a scheduler (continuous batching with
 * chunked prefill, vLLM-style: every step hands out tokens so that each sequence's computed tokens
 * catch up with its known tokens, running decodes first, then prefill chunks within the step's token
 * budget), the KV cache's slots, the sampler, and the placement (src/placement) that runs each step's
 * plan on every rank.
 *
 * Each step: every running sequence whose tokens are all in the cache but its last decodes that token
 * (1 row); then prefill chunks (partially prefilled sequences first, then waiting ones in arrival
 * order, while slots last) fill the rest of `maxBatchTokens`. One forward runs them all; rows whose
 * logits are needed (each sequence's last new row; every prompt row for `echo` log-probabilities)
 * come back; rank 0 samples. Finished, cancelled and failed sequences give their slot back at once.
 */
import { StreamDecoder, type Tokenizer } from '../data/tokenizer.js';
import type { BatchSeq } from '../model/model.js';
import type { RankHost, StepPlan } from '../placement/index.js';
import { SlotManager } from './kv.js';
import { logSoftmax, SequenceSampler, topIndices, type SamplingParams } from './sampler.js';

export interface GenerationParams extends SamplingParams {
  maxTokens: number;
  stop: string[];
  ignoreEos: boolean;
  /** Top log-probabilities per generated token (null: none; 0: only the chosen token's). */
  logprobs: number | null;
  /** Prompt log-probabilities (completions' echo). */
  echo: boolean;
}

export interface TokenLogprob {
  token: number;
  logprob: number;
  top: { token: number; logprob: number }[];
}

export type FinishReason = 'stop' | 'length';

export type SeqEvent =
  | { type: 'token'; token: number; text: string; logprob: TokenLogprob | null }
  | { type: 'done'; finishReason: FinishReason; text: string; tokens: number[]; promptLogprobs: (TokenLogprob | null)[] | null; promptTokens: number; queueMs: number }
  | { type: 'error'; error: Error };

export class QueueFullError extends Error {}
export class EngineUnavailableError extends Error {}

export interface EngineOptions {
  host: RankHost;
  tokenizer: Tokenizer;
  vocab: number;
  /** Tokens one step may process (decodes + prefill chunks). */
  maxBatchTokens: number;
  /** Sequences waiting for a slot before new ones are refused (429). */
  maxWaiting: number;
  /** Called after every step (metrics). */
  onStep?: (s: { ms: number; commMs: number; commBytes: number; rows: number; seqs: number; prefillTokens: number; decodeTokens: number }) => void;
}

interface Seq {
  id: number;
  prompt: number[];
  tokens: number[];
  /** Tokens in this sequence's cache slot. */
  computed: number;
  slot: number;
  params: GenerationParams;
  sampler: SequenceSampler;
  sink: (e: SeqEvent) => void;
  state: 'waiting' | 'running' | 'done';
  out: number[];
  text: string;
  emitted: number;
  dec: StreamDecoder;
  promptLogprobs: (TokenLogprob | null)[] | null;
  arrival: number;
  admitted?: number;
  stopped?: boolean;
}

export interface SeqHandle {
  readonly id: number;
  cancel(): void;
}

export class Engine {
  private readonly slots: SlotManager;
  private readonly waiting: Seq[] = [];
  private readonly running: Seq[] = [];
  private freed: number[] = [];
  private nextId = 1;
  private wake: (() => void) | null = null;
  private stopped = false;
  private loopDone: Promise<void>;
  dead: Error | null = null;
  /** performance.now() of the last completed step (or of the start). */
  lastStepAt = performance.now();
  busySince: number | null = null;
  readonly maxLen: number;

  constructor(readonly o: EngineOptions) {
    this.slots = new SlotManager(o.host.slots);
    this.maxLen = o.host.maxLen;
    o.host.onFailure((e) => this.failAll(e));
    this.loopDone = this.loop();
  }

  get numRunning(): number {
    return this.running.length;
  }
  get numWaiting(): number {
    return this.waiting.length;
  }
  get slotsUsed(): number {
    return this.slots.used;
  }

  /** Queue one sequence. Throws QueueFullError or EngineUnavailableError. */
  add(prompt: number[], params: GenerationParams, sink: (e: SeqEvent) => void): SeqHandle {
    if (this.dead) throw new EngineUnavailableError(`the engine failed: ${this.dead.message}`);
    if (this.stopped) throw new EngineUnavailableError('the engine is stopping');
    if (prompt.length === 0) throw new Error('empty prompt');
    if (prompt.length + params.maxTokens > this.maxLen) throw new Error(`prompt of ${prompt.length} tokens + max_tokens ${params.maxTokens} exceeds the context of ${this.maxLen}`);
    if (this.waiting.length >= this.o.maxWaiting) throw new QueueFullError(`${this.waiting.length} requests are waiting (the limit)`);
    const s: Seq = {
      id: this.nextId++,
      prompt,
      tokens: prompt.slice(),
      computed: 0,
      slot: -1,
      params,
      sampler: new SequenceSampler(params),
      sink,
      state: 'waiting',
      out: [],
      text: '',
      emitted: 0,
      dec: new StreamDecoder(this.o.tokenizer),
      promptLogprobs: params.echo ? [null] : null,
      arrival: performance.now(),
    };
    this.waiting.push(s);
    this.poke();
    return { id: s.id, cancel: () => this.cancel(s) };
  }

  private poke(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private cancel(s: Seq): void {
    if (s.state === 'done') return;
    this.finish(s);
  }

  private finish(s: Seq): void {
    if (s.state === 'running') {
      this.running.splice(this.running.indexOf(s), 1);
      this.slots.release(s.slot);
      this.freed.push(s.slot);
    } else if (s.state === 'waiting') this.waiting.splice(this.waiting.indexOf(s), 1);
    s.state = 'done';
  }

  private failAll(e: Error): void {
    if (!this.dead) this.dead = e;
    for (const s of [...this.running, ...this.waiting]) {
      this.finish(s);
      s.sink({ type: 'error', error: e });
    }
    this.poke();
  }

  /** Stop taking work; resolves once the loop has ended. Requests still queued are failed. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.failAll(new EngineUnavailableError('the server is shutting down'));
    await this.loopDone;
  }

  private schedule(): { plan: StepPlan; sampled: Seq[]; rowsOf: Map<Seq, { first: number; count: number; all: boolean; n: number }> } {
    let budget = this.o.maxBatchTokens;
    const seqs: BatchSeq[] = [];
    const toks: number[] = [];
    const rowsOf = new Map<Seq, { first: number; count: number; all: boolean; n: number }>();
    let row = 0;
    const sampled: Seq[] = [];
    const push = (s: Seq, n: number): void => {
      const all = s.params.echo && s.computed < s.prompt.length;
      seqs.push({ slot: s.slot, pos: s.computed, n, allLogits: all });
      for (let i = 0; i < n; i++) toks.push(s.tokens[s.computed + i]!);
      const count = all ? n : 1;
      rowsOf.set(s, { first: row, count, all, n });
      row += count;
      budget -= n;
      sampled.push(s);
    };
    // 1. decodes
    for (const s of this.running) if (s.computed === s.tokens.length - 1 && s.computed >= s.prompt.length && budget > 0) push(s, 1);
    // 2. prefill chunks of running sequences
    for (const s of this.running) {
      if (budget <= 0) break;
      if (rowsOf.has(s) || s.computed >= s.prompt.length) continue;
      push(s, Math.min(budget, s.prompt.length - s.computed));
    }
    // 3. admit waiting sequences
    while (budget > 0 && this.waiting.length > 0 && this.slots.available > 0) {
      const s = this.waiting.shift()!;
      s.slot = this.slots.acquire()!;
      s.state = 'running';
      s.admitted = performance.now();
      this.running.push(s);
      push(s, Math.min(budget, s.prompt.length));
    }
    const freed = this.freed;
    this.freed = [];
    return { plan: { kind: 'step', seqs, tokens: Int32Array.from(toks), freed }, sampled, rowsOf };
  }

  private async loop(): Promise<void> {
    for (;;) {
      if (this.dead || this.stopped) return;
      if (this.running.length === 0 && this.waiting.length === 0) {
        this.busySince = null;
        await new Promise<void>((r) => (this.wake = r));
        continue;
      }
      this.busySince ??= performance.now();
      const { plan, sampled, rowsOf } = this.schedule();
      if (plan.seqs.length === 0) {
        // nothing runnable (cannot happen with a positive budget); avoid spinning
        await new Promise((r) => setTimeout(r, 1));
        continue;
      }
      let res;
      try {
        res = await this.o.host.step(plan);
      } catch (e) {
        this.failAll(e instanceof Error ? e : new Error(String(e)));
        return;
      }
      this.lastStepAt = performance.now();
      let prefillTokens = 0;
      let decodeTokens = 0;
      for (const q of plan.seqs) if (q.n > 1 || q.allLogits) prefillTokens += q.n; else decodeTokens += q.n;
      const V = res.logits.length / plan.seqs.reduce((a, q) => a + (q.allLogits ? q.n : 1), 0);
      for (const s of sampled) this.advance(s, rowsOf.get(s)!, res.logits, V);
      this.o.onStep?.({ ms: res.ms, commMs: res.commMs, commBytes: res.commBytes, rows: plan.tokens.length, seqs: plan.seqs.length, prefillTokens, decodeTokens });
      // Let the HTTP side run between steps.
      await new Promise((r) => setImmediate(r));
    }
  }

  private lp(row: Float32Array, token: number, top: number): TokenLogprob {
    const vocab = this.o.vocab;
    const l = logSoftmax(row, vocab);
    const tops = top > 0 ? topIndices(l, vocab, top).map((t) => ({ token: t, logprob: l[t]! })) : [];
    return { token, logprob: l[token]!, top: tops };
  }

  private advance(s: Seq, r: { first: number; count: number; all: boolean; n: number }, logits: Float32Array, V: number): void {
    if (s.state !== 'running') return; // cancelled while the step ran
    const pos0 = s.computed;
    if (r.all) {
      const top = Math.max(1, s.params.logprobs ?? 1);
      for (let i = 0; i < r.count; i++) {
        const p = pos0 + i + 1; // the token this row predicts
        if (p < s.prompt.length) s.promptLogprobs!.push(this.lp(logits.subarray((r.first + i) * V, (r.first + i + 1) * V), s.prompt[p]!, top));
      }
    }
    s.computed += r.n;
    if (s.computed < s.tokens.length) return; // more prefill to do
    const row = logits.subarray((r.first + r.count - 1) * V, (r.first + r.count) * V);
    if (s.out.length >= s.params.maxTokens) return this.complete(s, 'length');
    const id = s.sampler.next(row, this.o.vocab);
    const eot = this.o.tokenizer.eotId;
    if (id === eot && !s.params.ignoreEos) return this.complete(s, 'stop');
    s.sampler.observe(id);
    s.out.push(id);
    s.tokens.push(id);
    s.text += s.dec.push(id);
    const logprob = s.params.logprobs === null ? null : this.lp(row, id, s.params.logprobs);
    // stop strings
    let stopAt = -1;
    for (const st of s.params.stop) {
      const k = s.text.indexOf(st, Math.max(0, s.emitted - st.length));
      if (k >= 0 && (stopAt < 0 || k < stopAt)) stopAt = k;
    }
    if (stopAt >= 0) {
      s.text = s.text.slice(0, stopAt);
      s.stopped = true;
      this.emitText(s, s.text.length, id, logprob);
      return this.complete(s, 'stop');
    }
    // hold back a suffix that may be the start of a stop string
    let hold = 0;
    for (const st of s.params.stop) {
      for (let k = Math.min(st.length - 1, s.text.length); k > hold; k--) if (s.text.endsWith(st.slice(0, k))) { hold = k; break; }
    }
    this.emitText(s, s.text.length - hold, id, logprob);
    if (s.out.length >= s.params.maxTokens || s.tokens.length >= this.maxLen) return this.complete(s, 'length');
  }

  private emitText(s: Seq, upTo: number, token: number, logprob: TokenLogprob | null): void {
    const text = upTo > s.emitted ? s.text.slice(s.emitted, upTo) : '';
    if (upTo > s.emitted) s.emitted = upTo;
    s.sink({ type: 'token', token, text, logprob });
  }

  private complete(s: Seq, reason: FinishReason): void {
    // An incomplete UTF-8 tail becomes U+FFFD (not after a stop string: the text ended there).
    const tail = s.dec.flush();
    if (tail && !s.stopped) s.text += tail;
    if (s.text.length > s.emitted) {
      s.sink({ type: 'token', token: -1, text: s.text.slice(s.emitted), logprob: null });
      s.emitted = s.text.length;
    }
    this.finish(s);
    s.sink({ type: 'done', finishReason: reason, text: s.text, tokens: s.out, promptLogprobs: s.promptLogprobs, promptTokens: s.prompt.length, queueMs: (s.admitted ?? s.arrival) - s.arrival });
  }
}
