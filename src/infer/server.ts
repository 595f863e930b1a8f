/**
 * The OpenAI-compatible HTTP server (node:http) in front of the engine: /v1/models, /v1/completions,
 * /v1/chat/completions (JSON or Server-Sent Events), /tokenize, /detokenize, /tokenizer_info, /health,
 * /metrics. Errors have OpenAI's shape {"error": {message, type, param, code}}; one JSON log line per
 * request. A client that disconnects cancels its sequences at once.
 */
import { randomUUID } from 'node:crypto';
import * as http from 'node:http';
import type { Tokenizer } from '../data/tokenizer.js';
import type { ChatMessage, ChatTemplate } from './chat.js';
import { EngineUnavailableError, QueueFullError, type Engine, type FinishReason, type GenerationParams, type SeqEvent, type SeqHandle, type TokenLogprob } from './engine.js';
import { ServerMetrics } from './metrics.js';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

const bad = (message: string, param: string | null): ApiError => new ApiError(400, message, 'invalid_request_error', param);

/** What the server needs of the loaded model (ServerOptions or InferenceServer.ready). */
export interface LoadedModel {
  engine: Engine;
  tokenizer: Tokenizer;
  chatTemplate: ChatTemplate | null;
}

export interface ServerOptions extends Partial<LoadedModel> {
  model: string;
  /** Accepted API keys (none: no authentication). */
  apiKeys: string[];
  /** Access-Control-Allow-Origin value, or null for no CORS headers. */
  cors: string | null;
  maxBodyBytes: number;
  /** Ceiling on max_tokens. */
  maxTokensLimit: number;
  /** Most prompts in one completions request and most choices (n). */
  maxPrompts: number;
  maxN: number;
  /** /health turns 503 when the engine has had work but no step for this long. */
  stuckMs: number;
  log: (line: string) => void;
}

interface Choice {
  index: number;
  prompt: number[];
  promptText: string;
  handle?: SeqHandle;
  done?: Extract<SeqEvent, { type: 'done' }>;
  tokens: number[];
  logprobs: (TokenLogprob | null)[];
  text: string;
  firstAt?: number;
  lastAt?: number;
}

/** Everything a request asks the engine for. */
interface Job {
  kind: 'completion' | 'chat';
  prompts: number[][];
  promptTexts: string[];
  n: number;
  params: GenerationParams;
  stream: boolean;
  includeUsage: boolean;
  echo: boolean;
  /** Chat: logprobs requested. */
  chatLogprobs: boolean;
}

export class InferenceServer {
  readonly metrics: ServerMetrics;
  readonly server: http.Server;
  draining = false;
  private loaded: LoadedModel | null = null;
  private inflight = 0;
  private readonly idleWaiters: (() => void)[] = [];

  /**
   * Without engine and tokenizer in the options the server starts out loading: /health answers 503
   * and every API route 503 until ready() hands them over (listen first, load after).
   */
  constructor(readonly o: ServerOptions) {
    if (o.engine && o.tokenizer) this.loaded = { engine: o.engine, tokenizer: o.tokenizer, chatTemplate: o.chatTemplate ?? null };
    this.metrics = new ServerMetrics(o.model, { running: () => this.loaded?.engine.numRunning ?? 0, waiting: () => this.loaded?.engine.numWaiting ?? 0, slots: () => this.loaded?.engine.slotsUsed ?? 0 });
    this.server = http.createServer((req, res) => void this.handle(req, res));
    this.server.keepAliveTimeout = 5000;
  }

  get loading(): boolean {
    return this.loaded === null;
  }

  /** The model is loaded: start serving it. */
  ready(m: LoadedModel): void {
    this.loaded = m;
  }

  private get engine(): Engine {
    if (!this.loaded) throw new ApiError(503, 'the model is loading', 'unavailable_error');
    return this.loaded.engine;
  }

  private get tokenizer(): Tokenizer {
    if (!this.loaded) throw new ApiError(503, 'the model is loading', 'unavailable_error');
    return this.loaded.tokenizer;
  }

  private get chatTemplate(): ChatTemplate | null {
    return this.loaded?.chatTemplate ?? null;
  }

  listen(port: number, host: string): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve((this.server.address() as { port: number }).port);
      });
    });
  }

  /** Engine step hook (metrics). */
  onStep(s: { ms: number; commMs: number; commBytes: number }): void {
    this.metrics.step.observe(s.ms / 1000);
    this.metrics.collective.inc(s.commMs / 1000);
    this.metrics.commBytes.inc(s.commBytes);
    this.metrics.steps.inc();
  }

  healthy(): { ok: boolean; reason: string } {
    if (!this.loaded) return { ok: false, reason: 'loading' };
    const e = this.loaded.engine;
    if (e.dead) return { ok: false, reason: `engine failed: ${e.dead.message}` };
    if (this.draining) return { ok: false, reason: 'draining' };
    if (e.busySince !== null && performance.now() - Math.max(e.lastStepAt, e.busySince) > this.o.stuckMs) return { ok: false, reason: `no engine step for ${Math.round((performance.now() - e.lastStepAt) / 1000)} s` };
    return { ok: true, reason: 'ok' };
  }

  /** Refuse new requests; resolve once the ones in flight are done or after timeoutMs. */
  async drain(timeoutMs: number): Promise<boolean> {
    this.draining = true;
    if (this.inflight === 0) return true;
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), timeoutMs);
      this.idleWaiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    const h: Record<string, string> = { ...extra };
    if (this.o.cors !== null) {
      h['access-control-allow-origin'] = this.o.cors;
      h['access-control-allow-headers'] = 'authorization, content-type';
      h['access-control-allow-methods'] = 'GET, POST, OPTIONS';
    }
    return h;
  }

  private sendJson(res: http.ServerResponse, status: number, body: unknown, extra: Record<string, string> = {}): void {
    if (res.headersSent) return void res.end();
    const s = JSON.stringify(body);
    res.writeHead(status, this.headers({ 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(s)), ...extra }));
    res.end(s);
  }

  private errorBody(e: ApiError): unknown {
    return { error: { message: e.message, type: e.type, param: e.param, code: e.status } };
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const t0 = performance.now();
    const id = randomUUID().replace(/-/g, '').slice(0, 24);
    const url = new URL(req.url ?? '/', 'http://x');
    const path = url.pathname;
    const entry: Record<string, unknown> = { time: new Date().toISOString(), request_id: id, method: req.method, path };
    res.setHeader('x-request-id', id);
    this.inflight++;
    res.on('close', () => {
      this.inflight--;
      entry['status'] = res.statusCode;
      entry['ms'] = Math.round((performance.now() - t0) * 10) / 10;
      if (!res.writableFinished) entry['client_disconnected'] = true;
      const route = ['/v1/models', '/v1/completions', '/v1/chat/completions', '/health', '/metrics', '/tokenize', '/detokenize', '/tokenizer_info'].includes(path) ? path : 'other';
      this.metrics.http.inc({ path: route, status: String(res.statusCode) });
      if (path !== '/metrics' && path !== '/health') this.o.log(JSON.stringify(entry));
      if (this.inflight === 0) for (const w of this.idleWaiters.splice(0)) w();
    });
    try {
      if (req.method === 'OPTIONS') {
        res.writeHead(204, this.headers());
        return void res.end();
      }
      if (path === '/health') {
        const h = this.healthy();
        return this.sendJson(res, h.ok ? 200 : 503, h.ok ? { status: 'ok' } : { status: 'unavailable', reason: h.reason });
      }
      if (path === '/metrics') {
        const text = await this.metrics.registry.metrics();
        res.writeHead(200, this.headers({ 'content-type': this.metrics.registry.contentType }));
        return void res.end(text);
      }
      if (path.startsWith('/v1/') && this.o.apiKeys.length > 0) {
        const auth = req.headers['authorization'] ?? '';
        const key = auth.startsWith('Bearer ') ? auth.slice(7).trim() : '';
        if (!this.o.apiKeys.includes(key)) throw new ApiError(401, 'invalid API key: send Authorization: Bearer <key>', 'authentication_error');
      }
      if (path === '/v1/models' && req.method === 'GET') {
        return this.sendJson(res, 200, { object: 'list', data: [{ id: this.o.model, object: 'model', created: Math.floor(Date.now() / 1000), owned_by: 'caatnet', max_model_len: this.engine.maxLen }] });
      }
      if (path === '/tokenizer_info' && req.method === 'GET') {
        const eot = this.tokenizer.eotId;
        return this.sendJson(res, 200, { eos_token: eot === null ? null : this.tokenizer.decode([eot]), eos_token_id: eot, vocab_size: this.tokenizer.vocabSize, model_max_length: this.engine.maxLen });
      }
      const known = ['/v1/completions', '/v1/chat/completions', '/tokenize', '/detokenize'];
      if (!known.includes(path)) throw new ApiError(404, `no route ${req.method} ${path}`, 'not_found_error');
      if (req.method !== 'POST') throw new ApiError(405, `${path} takes POST`, 'invalid_request_error');
      if (this.draining) throw new ApiError(503, 'the server is shutting down', 'unavailable_error');
      const body = await this.readBody(req);
      if (path === '/tokenize') {
        const text = body['prompt'] ?? body['text'];
        if (typeof text !== 'string') throw bad('prompt must be a string', 'prompt');
        const tokens = this.tokenizer.encode(text);
        return this.sendJson(res, 200, { tokens, count: tokens.length, max_model_len: this.engine.maxLen });
      }
      if (path === '/detokenize') {
        const tokens = this.tokenIds(body['tokens'], 'tokens');
        return this.sendJson(res, 200, { prompt: this.tokenizer.decode(tokens) });
      }
      const health = this.healthy();
      if (!health.ok) throw new ApiError(503, `the server is unavailable: ${health.reason}`, 'unavailable_error');
      const job = path === '/v1/completions' ? this.completionJob(body) : this.chatJob(body);
      entry['prompt_tokens'] = job.prompts.reduce((a, p) => a + p.length, 0);
      entry['n'] = job.n;
      entry['stream'] = job.stream;
      await this.run(job, req, res, entry, t0);
    } catch (e) {
      const err = e instanceof ApiError ? e : e instanceof QueueFullError ? new ApiError(429, `the server is busy: ${e.message}; retry later`, 'rate_limit_error', null, { 'retry-after': '1' }) : e instanceof EngineUnavailableError ? new ApiError(503, e.message, 'unavailable_error') : new ApiError(500, (e as Error).message ?? String(e), 'internal_error');
      entry['error'] = err.message;
      if (res.headersSent) {
        if (!res.writableEnded) {
          res.write(`data: ${JSON.stringify(this.errorBody(err))}\n\ndata: [DONE]\n\n`);
          res.end();
        }
      } else this.sendJson(res, err.status, this.errorBody(err), err.headers);
    }
  }

  private readBody(req: http.IncomingMessage): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const declared = Number(req.headers['content-length'] ?? 0);
      if (declared > this.o.maxBodyBytes) {
        req.resume();
        return reject(new ApiError(413, `request body of ${declared} bytes exceeds the limit of ${this.o.maxBodyBytes}`, 'invalid_request_error'));
      }
      const chunks: Buffer[] = [];
      let size = 0;
      let failed = false;
      req.on('data', (c: Buffer) => {
        size += c.length;
        if (size > this.o.maxBodyBytes && !failed) {
          failed = true;
          reject(new ApiError(413, `request body exceeds the limit of ${this.o.maxBodyBytes} bytes`, 'invalid_request_error'));
        }
        if (!failed) chunks.push(c);
      });
      req.on('error', (e) => reject(e));
      req.on('end', () => {
        if (failed) return;
        let v: unknown;
        try {
          v = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch (e) {
          return reject(bad(`the body is not valid JSON: ${(e as Error).message}`, null));
        }
        if (typeof v !== 'object' || v === null || Array.isArray(v)) return reject(bad('the body must be a JSON object', null));
        resolve(v as Record<string, unknown>);
      });
    });
  }

  // ---- validation ---------------------------------------------------------------------------------

  private tokenIds(v: unknown, param: string): number[] {
    if (!Array.isArray(v) || v.length === 0) throw bad(`${param} must be a non-empty list of token ids`, param);
    const V = this.tokenizer.vocabSize;
    for (const t of v) if (!(Number.isInteger(t) && t >= 0 && t < V)) throw bad(`${param}: token id ${JSON.stringify(t)} is not an integer in [0, ${V})`, param);
    return v as number[];
  }

  private num(b: Record<string, unknown>, name: string, def: number, lo: number, hi: number, int = false): number {
    const v = b[name];
    if (v === undefined || v === null) return def;
    if (typeof v !== 'number' || !Number.isFinite(v) || (int && !Number.isInteger(v))) throw bad(`${name} must be ${int ? 'an integer' : 'a number'}, got ${JSON.stringify(v)}`, name);
    if (v < lo || v > hi) throw bad(`${name} must be between ${lo} and ${hi}, got ${v}`, name);
    return v;
  }

  private bool(b: Record<string, unknown>, name: string, def: boolean): boolean {
    const v = b[name];
    if (v === undefined || v === null) return def;
    if (typeof v !== 'boolean') throw bad(`${name} must be true or false, got ${JSON.stringify(v)}`, name);
    return v;
  }

  private common(b: Record<string, unknown>, defaultMax: number | null): Omit<Job, 'kind' | 'prompts' | 'promptTexts' | 'echo' | 'chatLogprobs'> & { logprobs: number | null } {
    if (b['model'] !== undefined && b['model'] !== null) {
      if (typeof b['model'] !== 'string') throw bad('model must be a string', 'model');
      if (b['model'] !== this.o.model) throw new ApiError(404, `The model \`${b['model']}\` does not exist.`, 'not_found_error', 'model');
    }
    const stream = this.bool(b, 'stream', false);
    const so = b['stream_options'];
    let includeUsage = false;
    if (so !== undefined && so !== null) {
      if (!stream) throw bad('stream_options needs stream: true', 'stream_options');
      if (typeof so !== 'object' || Array.isArray(so)) throw bad('stream_options must be an object', 'stream_options');
      const iu = (so as Record<string, unknown>)['include_usage'];
      if (iu !== undefined && typeof iu !== 'boolean') throw bad('stream_options.include_usage must be true or false', 'stream_options.include_usage');
      includeUsage = iu === true;
    }
    let stop: string[] = [];
    const st = b['stop'];
    if (typeof st === 'string') stop = [st];
    else if (Array.isArray(st)) {
      if (!st.every((x) => typeof x === 'string' && x.length > 0)) throw bad('stop must be a string or a list of non-empty strings', 'stop');
      stop = st as string[];
    } else if (st !== undefined && st !== null) throw bad('stop must be a string or a list of strings', 'stop');
    const seedV = b['seed'];
    if (seedV !== undefined && seedV !== null && !(Number.isInteger(seedV) && typeof seedV === 'number')) throw bad(`seed must be an integer, got ${JSON.stringify(seedV)}`, 'seed');
    const lb = b['logit_bias'];
    if (lb !== undefined && lb !== null && (typeof lb !== 'object' || Object.keys(lb).length > 0)) throw bad('logit_bias is not supported', 'logit_bias');
    const n = this.num(b, 'n', 1, 1, this.o.maxN, true);
    const bestOf = b['best_of'];
    if (bestOf !== undefined && bestOf !== null && bestOf !== n && bestOf !== 1) throw bad('best_of other than n is not supported', 'best_of');
    const maxKey = b['max_completion_tokens'] !== undefined && b['max_completion_tokens'] !== null ? 'max_completion_tokens' : 'max_tokens';
    const maxTokens = this.num(b, maxKey, defaultMax ?? -1, 0, this.o.maxTokensLimit, true);
    const topK = this.num(b, 'top_k', 0, -1, this.tokenizer.vocabSize, true);
    return {
      n,
      stream,
      includeUsage,
      logprobs: null,
      params: {
        temperature: this.num(b, 'temperature', 1, 0, 2),
        topP: this.num(b, 'top_p', 1, Number.MIN_VALUE, 1),
        topK: topK < 0 ? 0 : topK,
        seed: seedV === undefined || seedV === null ? undefined : (seedV as number),
        presencePenalty: this.num(b, 'presence_penalty', 0, -2, 2),
        frequencyPenalty: this.num(b, 'frequency_penalty', 0, -2, 2),
        maxTokens,
        stop,
        ignoreEos: this.bool(b, 'ignore_eos', false),
        logprobs: null,
        echo: false,
      },
    };
  }

  private checkContext(job: Job, param: string): void {
    const ctx = this.engine.maxLen;
    for (const p of job.prompts) {
      if (job.params.maxTokens < 0) {
        if (p.length >= ctx) throw bad(`the prompt has ${p.length} tokens; this model's context is ${ctx}`, param);
        continue;
      }
      if (p.length + job.params.maxTokens > ctx) throw bad(`the prompt has ${p.length} tokens and max_tokens is ${job.params.maxTokens}: together they exceed this model's context of ${ctx} tokens`, 'max_tokens');
    }
  }

  private completionJob(b: Record<string, unknown>): Job {
    const c = this.common(b, 16);
    const pr = b['prompt'];
    let prompts: number[][];
    let texts: string[];
    const tok = this.tokenizer;
    const fromText = (s: string): number[] => {
      const ids = tok.encode(s);
      if (ids.length === 0) {
        if (tok.eotId === null) throw bad('the prompt is empty', 'prompt');
        return [tok.eotId];
      }
      return ids;
    };
    if (typeof pr === 'string') {
      if (pr.length === 0) throw bad('the prompt is empty', 'prompt');
      prompts = [fromText(pr)];
      texts = [pr];
    } else if (Array.isArray(pr) && pr.length > 0 && pr.every((x) => typeof x === 'string')) {
      if (pr.some((x) => (x as string).length === 0)) throw bad('the prompt list contains an empty string', 'prompt');
      prompts = (pr as string[]).map(fromText);
      texts = pr as string[];
    } else if (Array.isArray(pr) && pr.length > 0 && pr.every((x) => typeof x === 'number')) {
      prompts = [this.tokenIds(pr, 'prompt')];
      texts = [tok.decode(prompts[0]!)];
    } else if (Array.isArray(pr) && pr.length > 0 && pr.every((x) => Array.isArray(x))) {
      prompts = (pr as unknown[]).map((x) => this.tokenIds(x, 'prompt'));
      texts = prompts.map((p) => tok.decode(p));
    } else throw bad('prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids', 'prompt');
    if (prompts.length > this.o.maxPrompts) throw bad(`at most ${this.o.maxPrompts} prompts per request, got ${prompts.length}`, 'prompt');
    if (b['suffix'] !== undefined && b['suffix'] !== null) throw bad('suffix is not supported', 'suffix');
    const lp = b['logprobs'];
    let logprobs: number | null = null;
    if (lp !== undefined && lp !== null) {
      if (!(typeof lp === 'number' && Number.isInteger(lp) && lp >= 0 && lp <= 20)) throw bad(`logprobs must be an integer from 0 to 20, got ${JSON.stringify(lp)}`, 'logprobs');
      logprobs = lp;
    }
    const echo = this.bool(b, 'echo', false);
    const job: Job = { kind: 'completion', prompts, promptTexts: texts, n: c.n, stream: c.stream, includeUsage: c.includeUsage, echo, chatLogprobs: false, params: { ...c.params, logprobs, echo: echo && logprobs !== null } };
    this.checkContext(job, 'prompt');
    return job;
  }

  private chatJob(b: Record<string, unknown>): Job {
    const c = this.common(b, null);
    const ms = b['messages'];
    if (!Array.isArray(ms) || ms.length === 0) throw bad('messages must be a non-empty list', 'messages');
    const messages: ChatMessage[] = ms.map((m, i) => {
      if (typeof m !== 'object' || m === null) throw bad(`messages[${i}] must be an object`, `messages[${i}]`);
      const r = (m as Record<string, unknown>)['role'];
      if (typeof r !== 'string' || !['system', 'developer', 'user', 'assistant', 'tool'].includes(r)) throw bad(`messages[${i}].role must be system, developer, user, assistant or tool`, `messages[${i}].role`);
      let content = (m as Record<string, unknown>)['content'];
      if (Array.isArray(content)) {
        content = content.map((p, k) => {
          const part = p as Record<string, unknown>;
          if (part?.['type'] !== 'text' || typeof part['text'] !== 'string') throw bad(`messages[${i}].content[${k}]: only text parts are supported`, `messages[${i}].content`);
          return part['text'];
        }).join('');
      }
      if (typeof content !== 'string') throw bad(`messages[${i}].content must be a string or a list of text parts`, `messages[${i}].content`);
      return { role: r, content };
    });
    if (!this.chatTemplate) throw bad('this model has no chat template (the run has no chat_template.jinja or tokenizer_config.json chat_template): start the server with --chat-template chatml|llama3|FILE (a Jinja template), or use /v1/completions', 'messages');
    const text = this.chatTemplate.render(messages);
    const prompt = this.tokenizer.encode(text);
    const lp = this.bool(b, 'logprobs', false);
    const top = this.num(b, 'top_logprobs', 0, 0, 20, true);
    if (b['top_logprobs'] !== undefined && b['top_logprobs'] !== null && !lp) throw bad('top_logprobs needs logprobs: true', 'top_logprobs');
    const params = { ...c.params, stop: [...c.params.stop, ...this.chatTemplate.stop], logprobs: lp ? top : null };
    const job: Job = { kind: 'chat', prompts: [prompt], promptTexts: [text], n: c.n, stream: c.stream, includeUsage: c.includeUsage, echo: false, chatLogprobs: lp, params };
    this.checkContext(job, 'messages');
    if (params.maxTokens < 0) params.maxTokens = Math.min(this.o.maxTokensLimit, this.engine.maxLen - prompt.length);
    return job;
  }

  // ---- running a job --------------------------------------------------------------------------------

  private tokenText(id: number): string {
    return Buffer.from(this.tokenizer.tokenBytes(id)).toString('utf8');
  }

  private clamp(x: number): number {
    return Number.isFinite(x) ? x : -9999;
  }

  private legacyLogprobs(ch: Choice, echo: boolean, promptLps: (TokenLogprob | null)[] | null): unknown {
    const tokens: string[] = [];
    const tokenLps: (number | null)[] = [];
    const tops: (Record<string, number> | null)[] = [];
    const offsets: number[] = [];
    let off = 0;
    const add = (id: number, lp: TokenLogprob | null): void => {
      const s = this.tokenText(id);
      tokens.push(s);
      offsets.push(off);
      off += s.length;
      if (!lp) {
        tokenLps.push(null);
        tops.push(null);
        return;
      }
      tokenLps.push(this.clamp(lp.logprob));
      const d: Record<string, number> = {};
      for (const t of lp.top) d[this.tokenText(t.token)] = this.clamp(t.logprob);
      d[s] = this.clamp(lp.logprob);
      tops.push(d);
    };
    if (echo) ch.prompt.forEach((id, i) => add(id, promptLps?.[i] ?? null));
    ch.tokens.forEach((id, i) => add(id, ch.logprobs[i] ?? null));
    return { tokens, token_logprobs: tokenLps, top_logprobs: tops, text_offset: offsets };
  }

  private chatLogprobs(ch: Choice): unknown {
    return {
      content: ch.tokens.map((id, i) => {
        const lp = ch.logprobs[i]!;
        const s = this.tokenText(id);
        return {
          token: s,
          logprob: this.clamp(lp.logprob),
          bytes: Array.from(Buffer.from(s, 'utf8')),
          top_logprobs: lp.top.map((t) => ({ token: this.tokenText(t.token), logprob: this.clamp(t.logprob), bytes: Array.from(this.tokenizer.tokenBytes(t.token)) })),
        };
      }),
    };
  }

  private async run(job: Job, req: http.IncomingMessage, res: http.ServerResponse, entry: Record<string, unknown>, t0: number): Promise<void> {
    const e = this.engine;
    const created = Math.floor(Date.now() / 1000);
    const rid = `${job.kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replace(/-/g, '')}`;
    const object = job.kind === 'chat' ? 'chat.completion' : 'text_completion';
    const choices: Choice[] = [];
    job.prompts.forEach((p, i) => {
      for (let j = 0; j < job.n; j++) choices.push({ index: i * job.n + j, prompt: p, promptText: job.promptTexts[i]!, tokens: [], logprobs: [], text: '' });
    });
    let finished = 0;
    let failed: Error | null = null;
    let settle!: () => void;
    const allDone = new Promise<void>((r) => (settle = r));
    let closed = false;
    const cancelAll = (): void => {
      for (const c of choices) c.handle?.cancel();
    };
    res.on('close', () => {
      if (!res.writableFinished) {
        closed = true;
        cancelAll();
        if (finished < choices.length) this.metrics.failure.inc({ reason: 'aborted' });
        settle();
      }
    });
    const write = (obj: unknown): void => {
      if (!closed && !res.writableEnded) res.write(`data: ${JSON.stringify(obj)}\n\n`);
    };
    const chunk = (c: Choice, text: string | null, finish: FinishReason | null, lp: TokenLogprob | null, first: boolean): unknown => {
      if (job.kind === 'chat') {
        const delta: Record<string, unknown> = {};
        if (first) delta['role'] = 'assistant';
        if (text !== null) delta['content'] = text;
        const logprobs = job.chatLogprobs && lp ? this.chatLogprobs({ ...c, tokens: [lp.token], logprobs: [lp] }) : null;
        return { id: rid, object: 'chat.completion.chunk', created, model: this.o.model, choices: [{ index: c.index, delta, logprobs, finish_reason: finish }], usage: null };
      }
      const logprobs = lp && job.params.logprobs !== null ? this.legacyLogprobs({ ...c, tokens: [lp.token], logprobs: [lp] }, false, null) : null;
      return { id: rid, object: 'text_completion', created, model: this.o.model, choices: [{ index: c.index, text: text ?? '', logprobs, finish_reason: finish }], usage: null };
    };
    if (job.stream) {
      res.writeHead(200, this.headers({ 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' }));
      res.flushHeaders();
    }
    const ping = job.stream ? setInterval(() => !closed && res.write(': ping\n\n'), 10_000) : null;
    const sentFirst = new Set<Choice>();
    for (const c of choices) {
      const params: GenerationParams = { ...job.params, seed: job.params.seed === undefined ? undefined : job.params.seed + (c.index % job.n) };
      const arrival = t0;
      try {
        c.handle = e.add(c.prompt, params, (ev) => {
          if (ev.type === 'token') {
            const now = performance.now();
            if (ev.token >= 0) {
              if (c.firstAt === undefined) {
                c.firstAt = now;
                this.metrics.ttft.observe((now - arrival) / 1000);
              } else this.metrics.itl.observe((now - c.lastAt!) / 1000);
              c.lastAt = now;
              c.tokens.push(ev.token);
              if (ev.logprob) c.logprobs.push(ev.logprob);
              this.metrics.generationTokens.inc();
            }
            c.text += ev.text;
            if (job.stream && (ev.text !== '' || ev.logprob)) {
              const first = !sentFirst.has(c);
              sentFirst.add(c);
              write(chunk(c, ev.text, null, ev.logprob, first));
            }
          } else if (ev.type === 'done') {
            c.done = ev;
            c.text = ev.text;
            this.metrics.queue.observe(ev.queueMs / 1000);
            if (job.stream) write(chunk(c, job.kind === 'chat' && sentFirst.has(c) ? null : job.kind === 'chat' ? '' : '', ev.finishReason, null, !sentFirst.has(c)));
            if (++finished === choices.length) settle();
          } else {
            failed ??= ev.error;
            if (++finished === choices.length) settle();
          }
        });
        this.metrics.promptTokens.inc(c.prompt.length);
      } catch (err) {
        cancelAll();
        if (ping) clearInterval(ping);
        if (err instanceof QueueFullError || err instanceof EngineUnavailableError) throw err;
        throw bad((err as Error).message, 'prompt');
      }
      if (job.stream && job.echo && job.kind === 'completion') {
        sentFirst.add(c);
        write(chunk(c, c.promptText, null, null, false));
      }
    }
    await allDone;
    if (ping) clearInterval(ping);
    if (closed) {
      entry['finish_reason'] = 'aborted';
      return;
    }
    const completionTokens = choices.reduce((a, c) => a + c.tokens.length, 0);
    const promptTokens = job.prompts.reduce((a, p) => a + p.length, 0);
    const usage = { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
    entry['completion_tokens'] = completionTokens;
    const firsts = choices.map((c) => c.firstAt).filter((x): x is number => x !== undefined);
    if (firsts.length) entry['ttft_ms'] = Math.round((Math.min(...firsts) - t0) * 10) / 10;
    this.metrics.e2e.observe((performance.now() - t0) / 1000);
    const failure = failed as Error | null;
    if (failure) {
      this.metrics.failure.inc({ reason: 'engine_error' });
      throw failure instanceof EngineUnavailableError ? new ApiError(503, failure.message, 'unavailable_error') : new ApiError(500, `generation failed: ${failure.message}`, 'internal_error');
    }
    const reasons = choices.map((c) => c.done!.finishReason);
    entry['finish_reason'] = reasons.join(',');
    this.metrics.success.inc({ finished_reason: reasons[reasons.length - 1]! });
    if (job.stream) {
      if (job.includeUsage) write({ id: rid, object: job.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', created, model: this.o.model, choices: [], usage });
      res.end('data: [DONE]\n\n');
      return;
    }
    const out = choices.map((c) => {
      if (job.kind === 'chat') {
        return { index: c.index, message: { role: 'assistant', content: c.text }, logprobs: job.chatLogprobs ? this.chatLogprobs(c) : null, finish_reason: c.done!.finishReason };
      }
      const text = job.echo ? c.promptText + c.text : c.text;
      const logprobs = job.params.logprobs === null ? null : this.legacyLogprobs(c, job.echo, c.done!.promptLogprobs);
      return { index: c.index, text, logprobs, finish_reason: c.done!.finishReason };
    });
    this.sendJson(res, 200, { id: rid, object, created, model: this.o.model, choices: out, usage });
  }
}
