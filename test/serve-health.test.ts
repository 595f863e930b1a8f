/**
 * /health: 503 while the model loads (the server listens first), while draining, when the engine has
 * work but no step for --stuck-timeout, and after an engine failure; 200 otherwise. In process (a
 * stand-in engine whose step clock the test sets) and through `caat serve` with the load held back.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import OpenAI from 'openai';
import type { Tokenizer } from '../src/data/tokenizer.js';
import type { Engine } from '../src/infer/engine.js';
import { InferenceServer } from '../src/infer/server.js';
import { cleanEnv, cli, tempDir, tinyRun } from './helpers/serve.js';

interface FakeEngine {
  numRunning: number;
  numWaiting: number;
  slotsUsed: number;
  dead: Error | null;
  busySince: number | null;
  lastStepAt: number;
  maxLen: number;
}

async function health(url: string): Promise<{ status: number; body: { status: string; reason?: string } }> {
  const r = await fetch(`${url}/health`);
  return { status: r.status, body: (await r.json()) as { status: string; reason?: string } };
}

let tmp: string | null = null;
after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('/health in process', () => {
  test('loading, ready, stuck, draining, failed', async () => {
    const srv = new InferenceServer({ model: 'm', apiKeys: [], cors: null, maxBodyBytes: 1000, maxTokensLimit: 16, maxPrompts: 4, maxN: 2, stuckMs: 200, log: () => {} });
    const port = await srv.listen(0, '127.0.0.1');
    const url = `http://127.0.0.1:${port}`;
    try {
      assert.equal(srv.loading, true);
      assert.deepEqual(await health(url), { status: 503, body: { status: 'unavailable', reason: 'loading' } });
      const models = await fetch(`${url}/v1/models`);
      assert.equal(models.status, 503);
      assert.deepEqual(((await models.json()) as { error: { type: string; message: string } }).error, { message: 'the model is loading', type: 'unavailable_error', param: null, code: 503 });
      const comp = await fetch(`${url}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: 'x' }) });
      assert.equal(comp.status, 503);

      const fake: FakeEngine = { numRunning: 0, numWaiting: 0, slotsUsed: 0, dead: null, busySince: null, lastStepAt: performance.now(), maxLen: 64 };
      const tokenizer = { vocabSize: 300, eotId: 0, decode: () => '', encode: () => [1] } as unknown as Tokenizer;
      srv.ready({ engine: fake as unknown as Engine, tokenizer, chatTemplate: null });
      assert.deepEqual(await health(url), { status: 200, body: { status: 'ok' } });
      assert.equal((await fetch(`${url}/v1/models`)).status, 200);

      // Work queued, last step 1 s ago, stuck timeout 200 ms: stuck.
      fake.busySince = performance.now() - 1000;
      fake.lastStepAt = performance.now() - 1000;
      const stuck = await health(url);
      assert.equal(stuck.status, 503);
      assert.match(stuck.body.reason!, /^no engine step for 1 s$/);
      // A step just now: healthy again.
      fake.lastStepAt = performance.now();
      assert.equal((await health(url)).status, 200);
      // Busy for a moment only (a step is under way, less than the timeout): healthy.
      fake.busySince = performance.now();
      fake.lastStepAt = performance.now() - 5000;
      assert.equal((await health(url)).status, 200);
      fake.busySince = null;

      fake.dead = new Error('rank 1 died');
      assert.deepEqual(await health(url), { status: 503, body: { status: 'unavailable', reason: 'engine failed: rank 1 died' } });
      fake.dead = null;

      assert.equal(await srv.drain(1000), true, 'nothing in flight: drained at once');
      assert.deepEqual(await health(url), { status: 503, body: { status: 'unavailable', reason: 'draining' } });
      const refused = await fetch(`${url}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: 'x' }) });
      assert.equal(refused.status, 503);
      assert.equal(((await refused.json()) as { error: { type: string } }).error.type, 'unavailable_error');
    } finally {
      await srv.close();
    }
  });
});

describe('caat serve listens before it loads', () => {
  test('503 "loading" until the run is loaded, then 200; the run\'s chat template serves chat', async () => {
    tmp = tempDir();
    const base = tinyRun(tmp, 1, 1);
    // A copy of the run with a Hugging Face tokenizer_config.json chat template.
    const run = path.join(tmp, 'run-with-template');
    fs.cpSync(base, run, { recursive: true });
    const template = "{% for m in messages %}{{ '### ' + m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '### assistant: ' }}{% endif %}";
    fs.writeFileSync(path.join(run, 'tokenizer_config.json'), JSON.stringify({ chat_template: template }));
    const p = spawn(process.execPath, [cli, 'serve', '--run', run, '--port', '0'], { env: cleanEnv({ CAAT_FAULT_INJECT_SERVE_LOAD_MS: '3000' }), stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    p.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((r) => p.on('exit', (c) => r(c)));
    try {
      const wait = async (re: RegExp): Promise<RegExpExecArray> => {
        for (let i = 0; i < 1200; i++) {
          const m = re.exec(err);
          if (m) return m;
          if (p.exitCode !== null) break;
          await new Promise((r) => setTimeout(r, 25));
        }
        throw new Error(`no ${re} in:\n${err}`);
      };
      const port = Number((await wait(/listening on [\d.]+:(\d+), loading/))[1]);
      const url = `http://127.0.0.1:${port}`;
      const t0 = Date.now();
      assert.deepEqual(await health(url), { status: 503, body: { status: 'unavailable', reason: 'loading' } });
      assert.ok(Date.now() - t0 < 2000, 'answered while loading');
      assert.equal((await fetch(`${url}/v1/models`)).status, 503);
      await wait(/chat template .* on http/);
      assert.match(err, /chat template \S*tokenizer_config\.json chat_template\) on http/);
      assert.deepEqual(await health(url), { status: 200, body: { status: 'ok' } });
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'x', maxRetries: 0 });
      const messages = [{ role: 'user' as const, content: 'The whale' }];
      const chat = await client.chat.completions.create({ model: 'run-with-template', messages, max_tokens: 3, temperature: 0 });
      const rendered = '### user: The whale\n### assistant: ';
      const ids = ((await (await fetch(`${url}/tokenize`, { method: 'POST', body: JSON.stringify({ prompt: rendered }) })).json()) as { tokens: number[] }).tokens;
      assert.equal(chat.usage!.prompt_tokens, ids.length, 'the prompt is the run template\'s rendering');
      const comp = await client.completions.create({ model: 'run-with-template', prompt: ids, max_tokens: 3, temperature: 0 });
      assert.equal(chat.choices[0]!.message.content, comp.choices[0]!.text, 'chat = completion of the rendered prompt');
    } catch (e) {
      p.kill('SIGKILL');
      throw e;
    }
    p.kill('SIGTERM');
    assert.equal(await exited, 0, err);
  });
});
