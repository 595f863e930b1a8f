/**
 * `caat serve` driven by the official openai client (v6, maxRetries 0): models, completions from a
 * string, strings and token ids, n > 1, echo + logprobs read the way lm-evaluation-harness reads them,
 * streaming with the usage chunk and [DONE], chat (streamed and not), stop sequences, seed
 * repeatability, every error class, tokenizer endpoints, and an aborted request freeing its slot.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { serveArgs, startServer, tempDir, tinyRun, type ServerProc } from './helpers/serve.js';

let tmp: string;
let srv: ServerProc;
let small: ServerProc;
let client: OpenAI;
let model: string;
const KEY = 'test-key';

async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name + '{') || l.startsWith(name + ' '));
  return line ? Number(line.split(' ').pop()) : NaN;
}

/** lm-evaluation-harness's parse_logprobs for one choice. */
function lmEvalParse(lp: { token_logprobs: (number | null)[]; top_logprobs: (Record<string, number> | null)[] }, ctxlen: number): { ll: number; greedy: boolean } {
  const lps = lp.token_logprobs.slice(ctxlen, -1) as number[];
  const tops = lp.top_logprobs.slice(ctxlen, -1) as Record<string, number>[];
  let greedy = true;
  lps.forEach((x, i) => {
    if (x !== Math.max(...Object.values(tops[i]!))) greedy = false;
  });
  return { ll: lps.reduce((a, b) => a + b, 0), greedy };
}

before(async () => {
  tmp = tempDir();
  const run = tinyRun(tmp, 1, 1);
  srv = await startServer([{ args: serveArgs(run, ['--api-key', KEY, '--chat-template', 'chatml', '--max-num-seqs', '8']) }]);
  small = await startServer([{ args: serveArgs(run, ['--max-num-seqs', '1', '--max-waiting', '1', '--max-body-bytes', '2000']) }]);
  client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: KEY, maxRetries: 0 });
  model = (await client.models.list()).data[0]!.id;
});

after(async () => {
  await srv?.stop();
  await small?.stop();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('caat serve with the openai client', () => {
  test('models.list names the run', async () => {
    const list = await client.models.list();
    assert.equal(list.data.length, 1);
    assert.equal(list.data[0]!.object, 'model');
    assert.match(list.data[0]!.id, /^run-tp1-p1$/);
  });

  test('completions from a string, a list of strings and token ids; n > 1 indices', async () => {
    const a = await client.completions.create({ model, prompt: 'The whale', max_tokens: 6, temperature: 0 });
    assert.equal(a.object, 'text_completion');
    assert.match(a.id, /^cmpl-/);
    assert.equal(a.choices.length, 1);
    assert.equal(a.usage!.completion_tokens, 6);
    assert.ok(a.choices[0]!.text.length > 0);
    assert.equal(a.choices[0]!.finish_reason, 'length');
    const b = await client.completions.create({ model, prompt: ['The whale', 'She walked'], max_tokens: 6, temperature: 0 });
    assert.deepEqual(b.choices.map((c) => c.index), [0, 1]);
    assert.equal(b.choices[0]!.text, a.choices[0]!.text, 'the same prompt in a batch gives the same greedy text');
    const ids = (await (await fetch(`${srv.url}/tokenize`, { method: 'POST', body: JSON.stringify({ prompt: 'The whale', add_special_tokens: false }) })).json()) as { tokens: number[] };
    const c = await client.completions.create({ model, prompt: ids.tokens, max_tokens: 6, temperature: 0 });
    assert.equal(c.choices[0]!.text, a.choices[0]!.text);
    const d = await client.completions.create({ model, prompt: [ids.tokens, ids.tokens], max_tokens: 4, n: 3, temperature: 1, seed: 5 });
    assert.deepEqual(d.choices.map((x) => x.index).sort((x, y) => x - y), [0, 1, 2, 3, 4, 5]);
    assert.equal(d.usage!.prompt_tokens, 2 * ids.tokens.length);
    const detok = (await (await fetch(`${srv.url}/detokenize`, { method: 'POST', body: JSON.stringify({ tokens: ids.tokens }) })).json()) as { prompt: string };
    assert.equal(detok.prompt, 'The whale');
    const info = (await (await fetch(`${srv.url}/tokenizer_info`)).json()) as { eos_token: string };
    assert.equal(typeof info.eos_token, 'string');
  });

  test('echo + logprobs as lm-evaluation-harness reads them', async () => {
    const ctx = ((await (await fetch(`${srv.url}/tokenize`, { method: 'POST', body: JSON.stringify({ prompt: 'The whale rose' }) })).json()) as { tokens: number[] }).tokens;
    // The greedy continuation of the context, with its logprobs.
    const g = await client.completions.create({ model, prompt: ctx, max_tokens: 2, temperature: 0, logprobs: 1 });
    const cont = ((await (await fetch(`${srv.url}/tokenize`, { method: 'POST', body: JSON.stringify({ prompt: g.choices[0]!.text }) })).json()) as { tokens: number[] }).tokens;
    const greedyLp = g.choices[0]!.logprobs!.token_logprobs!;
    // lm-eval's loglikelihood request: [[ctx + cont]], max_tokens 1, logprobs 1, echo.
    const other = [...ctx, (cont[0]! + 1) % 300];
    const r = await client.completions.create({ model, prompt: [[...ctx, ...cont], other], max_tokens: 1, logprobs: 1, echo: true, temperature: 0, seed: 1234 });
    const [c0, c1] = [...r.choices].sort((a, b) => a.index - b.index);
    const lp0 = c0!.logprobs as unknown as { token_logprobs: (number | null)[]; top_logprobs: (Record<string, number> | null)[]; tokens: string[]; text_offset: number[] };
    assert.equal(lp0.token_logprobs.length, ctx.length + cont.length + 1);
    assert.equal(lp0.token_logprobs[0], null);
    assert.equal(lp0.top_logprobs[0], null);
    assert.equal(lp0.text_offset[0], 0);
    for (let i = 1; i < lp0.text_offset.length; i++) assert.equal(lp0.text_offset[i], lp0.text_offset[i - 1]! + lp0.tokens[i - 1]!.length);
    const parsed = lmEvalParse(lp0, ctx.length);
    if (cont.length === greedyLp.length) {
      assert.equal(parsed.greedy, true, 'the greedy continuation is greedy');
      const want = greedyLp.reduce((a, b) => a + b, 0);
      assert.ok(Math.abs(parsed.ll - want) < 1e-4, `${parsed.ll} vs ${want}`);
    }
    const p1 = lmEvalParse(c1!.logprobs as never, ctx.length);
    assert.equal(p1.greedy, false, 'another token is not greedy');
    assert.ok(p1.ll < 0);
    // echo with max_tokens 0: the prompt entries only (older lm-eval)
    const z = await client.completions.create({ model, prompt: [ctx], max_tokens: 0, logprobs: 1, echo: true });
    assert.equal(z.choices[0]!.logprobs!.token_logprobs!.length, ctx.length);
    assert.equal(z.choices[0]!.text, 'The whale rose');
  });

  test('streaming: chunks, the usage chunk and [DONE]', async () => {
    const s = await client.completions.create({ model, prompt: 'The whale', max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let usage = null;
    let finish = null;
    for await (const ch of s) {
      if (ch.usage) {
        assert.deepEqual(ch.choices, []);
        usage = ch.usage;
      }
      for (const c of ch.choices) {
        text += c.text;
        finish = c.finish_reason ?? finish;
      }
    }
    const plain = await client.completions.create({ model, prompt: 'The whale', max_tokens: 8, temperature: 0 });
    assert.equal(text, plain.choices[0]!.text);
    assert.equal(finish, 'length');
    assert.equal(usage!.completion_tokens, 8);
    const raw = await (await fetch(`${srv.url}/v1/completions`, { method: 'POST', headers: { authorization: `Bearer ${KEY}` }, body: JSON.stringify({ prompt: 'The whale', max_tokens: 3, stream: true }) })).text();
    assert.ok(raw.trimEnd().endsWith('data: [DONE]'), raw);
  });

  test('chat, not streamed and streamed', async () => {
    const a = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'whale' }], max_tokens: 6, temperature: 0 });
    assert.equal(a.object, 'chat.completion');
    assert.equal(a.choices[0]!.message.role, 'assistant');
    const s = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'whale' }], max_tokens: 6, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let role = null;
    let usage = null;
    for await (const ch of s) {
      if (ch.usage) usage = ch.usage;
      for (const c of ch.choices) {
        role ??= c.delta.role ?? null;
        text += c.delta.content ?? '';
      }
    }
    assert.equal(role, 'assistant');
    assert.equal(text, a.choices[0]!.message.content);
    assert.equal(usage!.completion_tokens, a.usage!.completion_tokens);
    const lp = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 3, temperature: 0, logprobs: true, top_logprobs: 2 });
    assert.equal(lp.choices[0]!.logprobs!.content!.length, lp.usage!.completion_tokens);
    assert.equal(lp.choices[0]!.logprobs!.content![0]!.top_logprobs.length, 2);
  });

  test('stop sequences end the text before the stop string', async () => {
    const full = (await client.completions.create({ model, prompt: 'The whale', max_tokens: 20, temperature: 0 })).choices[0]!.text;
    const stop = full.slice(4, 6);
    assert.ok(stop.length === 2, full);
    const cut = full.slice(0, full.indexOf(stop));
    const r = await client.completions.create({ model, prompt: 'The whale', max_tokens: 20, temperature: 0, stop: [stop, 'zzzz'] });
    assert.equal(r.choices[0]!.text, cut);
    assert.equal(r.choices[0]!.finish_reason, 'stop');
    let streamed = '';
    for await (const ch of await client.completions.create({ model, prompt: 'The whale', max_tokens: 20, temperature: 0, stop, stream: true })) streamed += ch.choices[0]?.text ?? '';
    assert.equal(streamed, cut);
  });

  test('a seed repeats a sampled completion', async () => {
    const ask = (seed: number) => client.completions.create({ model, prompt: 'The whale', max_tokens: 12, temperature: 1, top_p: 0.95, seed });
    const [a, b, c] = await Promise.all([ask(7), ask(7), ask(8)]);
    assert.equal(a.choices[0]!.text, b.choices[0]!.text);
    assert.notEqual(a.choices[0]!.text, c.choices[0]!.text);
    const pen = await client.completions.create({ model, prompt: 'The whale', max_tokens: 12, temperature: 0, frequency_penalty: 2, presence_penalty: 2 });
    const plain = await client.completions.create({ model, prompt: 'The whale', max_tokens: 12, temperature: 0 });
    assert.notEqual(pen.choices[0]!.text, plain.choices[0]!.text, 'penalties change a greedy text that repeats tokens');
  });

  test('every error class', async () => {
    await assert.rejects(client.completions.create({ model, prompt: 'x', temperature: 5 }), (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'temperature' && /temperature/.test(e.message));
    await assert.rejects(client.completions.create({ model, prompt: 'x', max_tokens: 60, stream: false, n: 0 }), (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'n');
    await assert.rejects(client.completions.create({ model, prompt: 'The whale rose', max_tokens: 62 }), (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'max_tokens' && /context of 64/.test(e.message));
    await assert.rejects(client.completions.create({ model, prompt: [99999] }), (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'prompt');
    await assert.rejects(client.completions.create({ model, prompt: 'x', stream_options: { include_usage: true } }), (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'stream_options');
    await assert.rejects(client.completions.create({ model: 'nope', prompt: 'x' }), (e: unknown) => e instanceof OpenAI.NotFoundError && /nope/.test(e.message));
    const wrong = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'wrong', maxRetries: 0 });
    await assert.rejects(wrong.models.list(), (e: unknown) => e instanceof OpenAI.AuthenticationError);
    const noKey = new OpenAI({ baseURL: `${small.url}/v1`, apiKey: 'anything', maxRetries: 0 });
    await assert.rejects(noKey.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }] }), (e: unknown) => e instanceof OpenAI.BadRequestError && /--chat-template/.test(e.message));
    const big = await fetch(`${small.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: 'x'.repeat(5000) }) });
    assert.equal(big.status, 413);
    assert.equal(((await big.json()) as { error: { type: string } }).error.type, 'invalid_request_error');
    const malformed = await fetch(`${small.url}/v1/completions`, { method: 'POST', body: '{"prompt": ' });
    assert.equal(malformed.status, 400);
    // 429: one slot and one waiting place; a burst of long requests overflows the queue.
    const burst = await Promise.allSettled(Array.from({ length: 6 }, () => noKey.completions.create({ model, prompt: 'The whale', max_tokens: 40, temperature: 0 })));
    const limited = burst.filter((r) => r.status === 'rejected' && r.reason instanceof OpenAI.RateLimitError);
    assert.ok(limited.length >= 1, 'some requests are refused with 429');
    assert.ok(burst.some((r) => r.status === 'fulfilled'));
    const raw = await Promise.all(Array.from({ length: 4 }, () => fetch(`${small.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: 'The whale', max_tokens: 40 }) })));
    const r429 = raw.find((r) => r.status === 429);
    assert.ok(r429, 'a 429 among the raw burst');
    assert.equal(r429!.headers.get('retry-after'), '1');
    await Promise.all(raw.map((r) => r.text()));
  });

  test('an aborted request frees its slot: running returns to 0', async () => {
    const ac = new AbortController();
    const s = await client.completions.create({ model, prompt: 'The whale', max_tokens: 60, temperature: 0, stream: true }, { signal: ac.signal });
    let n = 0;
    try {
      for await (const _ of s) if (++n === 2) ac.abort();
    } catch (e) {
      assert.match(`${(e as Error).name} ${(e as Error).message}`, /abort/i);
    }
    assert.ok(n >= 2 && n < 60, `${n} chunks before the abort took effect`);
    const ac2 = new AbortController();
    const p = client.completions.create({ model, prompt: 'The whale', max_tokens: 60, temperature: 0 }, { signal: ac2.signal });
    setTimeout(() => ac2.abort(), 5);
    await assert.rejects(p);
    let running = NaN;
    for (let i = 0; i < 50; i++) {
      running = await metric(srv.url, 'caat_num_requests_running');
      if (running === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(running, 0);
    assert.equal(await metric(srv.url, 'caat_kv_cache_slots_used'), 0);
    assert.ok((await metric(srv.url, 'caat_request_failure_total')) >= 1);
    const h = await fetch(`${srv.url}/health`);
    assert.equal(h.status, 200);
  });
});

describe('SIGTERM', () => {
  test('drains the requests in flight, refuses new ones with 503, exits 0', async () => {
    const s = await startServer([{ args: serveArgs(tinyRun(tmp, 1, 1), ['--max-num-seqs', '1']) }]);
    const c = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'x', maxRetries: 0 });
    const inflight = Array.from({ length: 3 }, () => c.completions.create({ model: 'run-tp1-p1', prompt: 'The whale', max_tokens: 58, temperature: 0, ignore_eos: true } as never));
    for (let i = 0; i < 200; i++) {
      if ((await metric(s.url, 'caat_num_requests_running')) + (await metric(s.url, 'caat_num_requests_waiting')) === 3) break;
      await new Promise((r) => setTimeout(r, 2));
    }
    s.procs[0]!.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 30));
    const refused = await fetch(`${s.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: 'x' }) }).catch((e: unknown) => e as Error);
    if (!(refused instanceof Error)) {
      assert.equal(refused.status, 503);
      assert.equal(((await refused.json()) as { error: { type: string } }).error.type, 'unavailable_error');
    }
    const health = await fetch(`${s.url}/health`).catch((e: unknown) => e as Error);
    if (!(health instanceof Error)) assert.equal(health.status, 503);
    const done = await Promise.all(inflight);
    for (const d of done) assert.equal(d.usage!.completion_tokens, 58);
    const [exit] = await s.exits;
    assert.equal(exit!.code, 0);
  });
});
