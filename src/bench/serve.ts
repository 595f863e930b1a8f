/**
 * `caat bench serve`: a load generator against a running server with `vllm bench serve`'s definitions.
 * Requests arrive as a Poisson process at each rate (exponential gaps; `inf` sends all at once), with
 * random token-id prompts of --input-len tokens, streamed with `ignore_eos` and --output-len tokens.
 * Per rate: completed/failed, request and output-token throughput, and the median, mean and p99 of
 * TTFT (arrival to the first token), TPOT ((latency − TTFT)/(output tokens − 1)), ITL (every gap
 * between chunks) and E2EL (arrival to the last byte), in ms.
 */
import { UserError } from '../cli/run.js';

interface One {
  ok: boolean;
  ttft: number;
  e2e: number;
  itl: number[];
  out: number;
}

const pct = (xs: number[], q: number): number => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
};
const mean = (xs: number[]): number => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);

async function request(url: string, model: string | undefined, prompt: number[], maxTokens: number, key: string | undefined): Promise<One> {
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) },
    body: JSON.stringify({ model, prompt, max_tokens: maxTokens, ignore_eos: true, temperature: 0, stream: true, stream_options: { include_usage: true } }),
  }).catch(() => null);
  if (!r || r.status !== 200 || !r.body) {
    await r?.text().catch(() => '');
    return { ok: false, ttft: NaN, e2e: NaN, itl: [], out: 0 };
  }
  const reader = r.body.getReader();
  let buf = '';
  let first = NaN;
  let last = t0;
  const itl: number[] = [];
  let out = 0;
  let failed = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += Buffer.from(value).toString();
    let k;
    while ((k = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, k);
      buf = buf.slice(k + 2);
      if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
      const j = JSON.parse(ev.slice(6)) as { error?: unknown; choices?: { text: string }[]; usage?: { completion_tokens: number } | null };
      if (j.error) failed = true;
      if (j.usage) out = j.usage.completion_tokens;
      if (j.choices && j.choices.length > 0 && j.choices[0]!.text !== '') {
        const now = performance.now();
        if (Number.isNaN(first)) first = now - t0;
        else itl.push(now - last);
        last = now;
      }
    }
  }
  return { ok: !failed, ttft: first, e2e: performance.now() - t0, itl, out };
}

export async function benchServeCommand(o: { url: string; rates: string; numPrompts: string; inputLen: string; outputLen: string; model?: string; apiKey?: string; seed: string; json?: boolean }): Promise<void> {
  const url = o.url.replace(/\/+$/, '').replace(/\/v1$/, '');
  const n = Number(o.numPrompts);
  const inLen = Number(o.inputLen);
  const outLen = Number(o.outputLen);
  if (![n, inLen, outLen].every((x) => Number.isInteger(x) && x >= 1)) throw new UserError('--num-prompts, --input-len and --output-len must be positive integers');
  const health = await fetch(`${url}/health`).catch((e: unknown) => e as Error);
  if (health instanceof Error || health.status !== 200) throw new UserError(`${url}/health: the server is not ready (${health instanceof Error ? health.message : health.status})`);
  const info = (await (await fetch(`${url}/tokenizer_info`)).json()) as { vocab_size: number };
  let x = Number(o.seed) >>> 0;
  const rnd = (): number => ((x = (Math.imul(x, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  for (const rs of o.rates.split(',')) {
    const rate = rs.trim() === 'inf' ? Infinity : Number(rs);
    if (!(rate > 0)) throw new UserError(`--rates: "${rs}" is not a positive number or inf`);
    const prompts = Array.from({ length: n }, () => Array.from({ length: inLen }, () => Math.floor(rnd() * info.vocab_size)));
    const t0 = performance.now();
    const pending: Promise<One>[] = [];
    for (let i = 0; i < n; i++) {
      pending.push(request(url, o.model, prompts[i]!, outLen, o.apiKey));
      if (rate !== Infinity && i < n - 1) await new Promise((r) => setTimeout(r, (-Math.log(1 - rnd()) / rate) * 1000));
    }
    const res = await Promise.all(pending);
    const dur = (performance.now() - t0) / 1000;
    const ok = res.filter((r) => r.ok);
    const tpot = ok.filter((r) => r.out > 1).map((r) => (r.e2e - r.ttft) / (r.out - 1));
    const itl = ok.flatMap((r) => r.itl);
    const stat = (xs: number[]) => ({ median: pct(xs, 0.5), mean: mean(xs), p99: pct(xs, 0.99) });
    const row = {
      kind: 'serve', rate: rs.trim(), num_prompts: n, input_len: inLen, output_len: outLen, completed: ok.length, failed: n - ok.length, duration_s: dur,
      request_throughput: ok.length / dur, output_throughput: ok.reduce((a, r) => a + r.out, 0) / dur,
      ttft_ms: stat(ok.map((r) => r.ttft)), tpot_ms: stat(tpot), itl_ms: stat(itl), e2el_ms: stat(ok.map((r) => r.e2e)),
    };
    if (o.json) process.stdout.write(`${JSON.stringify(row)}\n`);
    else {
      const f = (s: { median: number; p99: number }) => `${s.median.toFixed(1)} / ${s.p99.toFixed(1)}`;
      process.stdout.write(`rate ${row.rate} req/s: ${row.completed}/${n} completed in ${dur.toFixed(1)} s, ${row.request_throughput.toFixed(2)} req/s, ${row.output_throughput.toFixed(0)} output tok/s; median / p99 ms: TTFT ${f(row.ttft_ms)}, TPOT ${f(row.tpot_ms)}, ITL ${f(row.itl_ms)}, E2EL ${f(row.e2el_ms)}\n`);
    }
  }
}
