/**
 * A bounded load loop on 127.0.0.1: 200 requests, 32 at a time, random prompt and output lengths,
 * streamed and not, 10% aborted mid-stream, malformed bodies mixed in. Every request gets a
 * completion or a clear error, no slot leaks, and /metrics matches the counts.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { after, before, test } from 'node:test';
import { serveArgs, startServer, tempDir, tinyRun, type ServerProc } from './helpers/serve.js';

let tmp: string;
let srv: ServerProc;

before(async () => {
  tmp = tempDir();
  srv = await startServer([{ args: serveArgs(tinyRun(tmp, 1, 1), ['--max-num-seqs', '4', '--max-batch-tokens', '96', '--no-log-requests']) }]);
});
after(async () => {
  await srv?.stop();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

function metrics(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) sum += Number(line.split(' ').pop());
  }
  return sum;
}

test('200 requests, 32 concurrent, aborts and malformed bodies: every request answered, no leak, metrics match', async () => {
  let x = 12345;
  const rnd = () => ((x = (x * 1103515245 + 12345) % 2147483648) / 2147483648);
  const kinds: ('ok' | 'stream' | 'abort' | 'bad')[] = Array.from({ length: 200 }, (_, i) => (i % 10 === 3 ? 'abort' : i % 10 === 7 ? 'bad' : rnd() < 0.5 ? 'stream' : 'ok'));
  const tally = { completed: 0, aborted: 0, bad: 0, completionTokens: 0, promptTokens: 0 };
  const one = async (kind: (typeof kinds)[number]): Promise<void> => {
    const promptLen = kind === "abort" ? 2 : 1 + Math.floor(rnd() * 30);
    const prompt = Array.from({ length: promptLen }, () => Math.floor(rnd() * 300));
    const maxTokens = kind === 'abort' ? 60 : 1 + Math.floor(rnd() * 30);
    if (kind === 'bad') {
      const bodies = ['{"prompt": [1, 2', '{"prompt": "x", "max_tokens": "many"}', '[]', '{"prompt": [], "max_tokens": 2}', '{"prompt": "x", "temperature": -1}'];
      const r = await fetch(`${srv.url}/v1/completions`, { method: 'POST', body: bodies[Math.floor(rnd() * bodies.length)]! });
      assert.equal(r.status, 400);
      const e = (await r.json()) as { error: { message: string; type: string } };
      assert.equal(e.error.type, 'invalid_request_error');
      assert.ok(e.error.message.length > 0);
      tally.bad++;
      return;
    }
    const stream = kind !== 'ok';
    const ac = new AbortController();
    const r = await fetch(`${srv.url}/v1/completions`, { method: 'POST', signal: ac.signal, body: JSON.stringify({ prompt, max_tokens: maxTokens, temperature: 0.8, seed: 3, stream, ...(stream ? { stream_options: { include_usage: true } } : {}), ignore_eos: true }) });
    if (r.status !== 200) assert.fail(`status ${r.status}: ${await r.text()}`);
    if (!stream) {
      const j = (await r.json()) as { usage: { completion_tokens: number; prompt_tokens: number } };
      assert.equal(j.usage.completion_tokens, maxTokens);
      tally.completed++;
      tally.completionTokens += j.usage.completion_tokens;
      tally.promptTokens += promptLen;
      return;
    }
    const reader = r.body!.getReader();
    if (kind === 'abort') {
      // The headers come before the first token: abort now, while the request waits for a slot or runs.
      ac.abort();
      tally.aborted++;
      tally.promptTokens += promptLen;
      await reader.cancel().catch(() => {});
      return;
    }
    let text = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += Buffer.from(value).toString();
    }
    assert.ok(text.trimEnd().endsWith('data: [DONE]'));
    const usage = text.split('\n\n').map((l) => l.replace(/^data: /, '')).filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { usage: { completion_tokens: number } | null }).find((c) => c.usage)!.usage!;
    assert.equal(usage.completion_tokens, maxTokens);
    tally.completed++;
    tally.completionTokens += usage.completion_tokens;
    tally.promptTokens += promptLen;
  };
  let next = 0;
  await Promise.all(Array.from({ length: 32 }, async () => {
    while (next < kinds.length) await one(kinds[next++]!);
  }));
  assert.equal(tally.completed + tally.aborted + tally.bad, 200);
  // An abort that reaches the server after its last token counts as a completion there.
  assert.ok(tally.aborted >= 15, `${tally.aborted} aborted`);
  assert.equal(tally.bad, 20);
  let m = '';
  for (let i = 0; i < 100; i++) {
    m = await (await fetch(`${srv.url}/metrics`)).text();
    const settled = metrics(m, 'caat_request_success_total') + metrics(m, 'caat_request_failure_total', { reason: 'aborted' });
    if (metrics(m, 'caat_num_requests_running') === 0 && settled === tally.completed + tally.aborted) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const serverAborted = metrics(m, 'caat_request_failure_total', { reason: 'aborted' });
  assert.ok(serverAborted <= tally.aborted && serverAborted >= tally.aborted - 3, `${serverAborted} aborted on the server, ${tally.aborted} by the client\n${m.split('\n').filter((l) => /total/.test(l)).join('\n')}`);
  const late = tally.aborted - serverAborted;
  assert.equal(metrics(m, 'caat_num_requests_running'), 0);
  assert.equal(metrics(m, 'caat_num_requests_waiting'), 0);
  assert.equal(metrics(m, 'caat_kv_cache_slots_used'), 0);
  assert.equal(metrics(m, 'caat_request_success_total'), tally.completed + late);
    assert.equal(metrics(m, 'caat_http_requests_total', { path: '/v1/completions', status: '400' }), tally.bad);
  assert.equal(metrics(m, 'caat_http_requests_total', { path: '/v1/completions', status: '200' }), tally.completed + tally.aborted);
  assert.equal(metrics(m, 'caat_prompt_tokens_total'), tally.promptTokens);
  const gen = metrics(m, 'caat_generation_tokens_total');
  assert.ok(gen >= tally.completionTokens && gen <= tally.completionTokens + 60 * tally.aborted, `${gen} vs ${tally.completionTokens}`);
  assert.equal(metrics(m, 'caat_e2e_request_latency_seconds_count'), tally.completed + late);
  assert.ok(metrics(m, 'caat_engine_steps_total') > 0);
  assert.equal((await fetch(`${srv.url}/health`)).status, 200);
});
