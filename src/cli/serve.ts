/**
 * `caat serve --run DIR`: the OpenAI-compatible server (src/infer/server.ts) on the engine
 * (src/infer/engine.ts), with the run's ranks on any placement (src/placement). Under a launcher the
 * process hosting rank 0 serves HTTP and the others follow its step plans. SIGTERM/SIGINT: refuse new
 * requests, drain the ones in flight up to --shutdown-timeout, then exit 0. A rank that fails ends the
 * requests in flight with an error, turns /health to 503 and makes every process exit non-zero.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { chatTemplate, runChatTemplate, type ChatTemplate } from '../infer/chat.js';
import { Engine } from '../infer/engine.js';
import { InferenceServer } from '../infer/server.js';
import { placeRanks } from '../placement/index.js';
import { openRunForInference, type PlacementFlags } from '../placement/run.js';
import { processMode } from '../train/process-host.js';
import { BF16_WEIGHTS_NOTICE, loadPrecision } from './infer.js';
import { UserError } from './run.js';
import { num } from './train.js';

export interface ServeFlags extends PlacementFlags {
  run: string;
  host: string;
  port: string;
  modelName?: string;
  apiKey?: string;
  apiKeyFile?: string;
  cors?: string;
  chatTemplate?: string;
  maxNumSeqs: string;
  maxBatchTokens: string;
  maxWaiting: string;
  maxBodyBytes: string;
  maxTokens?: string;
  shutdownTimeout: string;
  stuckTimeout: string;
  logRequests: boolean;
  precision?: string;
}

const positive = (name: string, v: string | undefined): number => {
  const x = num(name, v)!;
  if (!Number.isInteger(x) || x < 1) throw new UserError(`--${name} must be a positive integer, got ${v}`);
  return x;
};

/** Test hook: hold the load this long after listening (CAAT_FAULT_INJECT_SERVE_LOAD_MS), so /health's loading window can be observed. */
function loadDelayMs(): number {
  const v = process.env['CAAT_FAULT_INJECT_SERVE_LOAD_MS'];
  if (v === undefined) return 0;
  const ms = Number(v);
  if (!Number.isFinite(ms) || ms < 0) throw new UserError(`CAAT_FAULT_INJECT_SERVE_LOAD_MS must be a non-negative number, got ${JSON.stringify(v)}`);
  return ms;
}

const yieldToHttp = (): Promise<void> => new Promise((r) => setImmediate(r));

/**
 * The lead process listens first (every route but /health and /metrics answers 503 "loading", /health
 * 503 with reason "loading"), then loads the checkpoint and places the ranks, yielding to the HTTP side
 * between the phases, then serves. Processes of other ranks load and follow.
 */
export async function serveCommand(f: ServeFlags): Promise<void> {
  const mode = processMode(f.transport, f.commTimeout);
  const lead = mode === null || (mode !== 'idle' && mode.launch.rank === 0);
  const precision = loadPrecision(f.precision);
  const slots = positive('max-num-seqs', f.maxNumSeqs);
  const maxBatchTokens = positive('max-batch-tokens', f.maxBatchTokens);
  const maxWaiting = positive('max-waiting', f.maxWaiting);
  const maxBodyBytes = positive('max-body-bytes', f.maxBodyBytes);
  const stuckMs = positive('stuck-timeout', f.stuckTimeout) * 1000;
  const maxTokens = f.maxTokens === undefined ? undefined : positive('max-tokens', f.maxTokens);
  const port = num('port', f.port)!;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UserError(`--port must be 0…65535, got ${f.port}`);
  if (!fs.existsSync(f.run)) throw new UserError(`${f.run}: no such run folder`);
  let keys: string[] = [];
  if (f.apiKey) keys = f.apiKey.split(',').map((k) => k.trim()).filter(Boolean);
  if (f.apiKeyFile) keys.push(...fs.readFileSync(f.apiKeyFile, 'utf8').split('\n').map((k) => k.trim()).filter(Boolean));
  const model = f.modelName ?? path.basename(path.resolve(f.run));
  let server: InferenceServer | null = null;
  let bound = 0;
  if (lead) {
    server = new InferenceServer({
      model,
      apiKeys: keys,
      cors: f.cors ?? null,
      maxBodyBytes,
      maxTokensLimit: maxTokens ?? Number.MAX_SAFE_INTEGER,
      maxPrompts: 256,
      maxN: 16,
      stuckMs,
      log: f.logRequests ? (l) => process.stderr.write(`${l}\n`) : () => {},
    });
    bound = await server.listen(port, f.host);
    process.stderr.write(`caat serve: listening on ${f.host}:${bound}, loading ${f.run} (/health answers 503 until it is loaded)\n`);
    const delay = loadDelayMs();
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
    await yieldToHttp();
  }
  let run;
  let template: ChatTemplate | null = null;
  try {
    run = openRunForInference(f.run, f);
    if (run.idle) return;
    if (lead) {
      const eot = run.tokenizer.eotId;
      const tokens = { bos: '', eos: eot === null ? '' : run.tokenizer.decode([eot]) };
      try {
        template = f.chatTemplate ? chatTemplate(f.chatTemplate, tokens) : runChatTemplate(f.run, tokens);
      } catch (e) {
        throw new UserError((e as Error).message);
      }
    }
  } catch (e) {
    if (server) await server.close();
    throw e;
  }
  await yieldToHttp();
  const maxLen = run.cfg.model.seqLen;
  if (precision === 'bf16' && lead) process.stderr.write(`${BF16_WEIGHTS_NOTICE}\n`);
  const host = placeRanks({
    cfg: run.cfg,
    params: run.params,
    weights: precision,
    backend: f.backend,
    workers: run.workers,
    launched: run.launched,
    slots,
    maxLen,
    config: { command: 'serve', run: path.resolve(f.run), step: run.step, slots, precision },
  });
  if (!host.lead) {
    try {
      await host.follow();
    } catch (e) {
      process.exitCode = 1;
      setTimeout(() => process.exit(1), 2000).unref();
      throw e;
    }
    return;
  }
  if (!server) throw new Error('serve: the process of rank 0 did not start the HTTP server');
  const srv = server;
  const engine = new Engine({
    host,
    tokenizer: run.tokenizer,
    vocab: run.tokenizer.vocabSize,
    maxBatchTokens,
    maxWaiting,
    onStep: (s) => srv.onStep(s),
  });
  srv.o.maxTokensLimit = maxTokens ?? maxLen;
  srv.ready({ engine, tokenizer: run.tokenizer, chatTemplate: template });
  process.stderr.write(`caat serve: ${model} (TP ${run.cfg.parallel.tp}, p ${run.cfg.parallel.p}, ${host.placement}, ${slots} slots × ${maxLen} tokens, chat template ${template ? template.name : 'none'}) on http://${f.host}:${bound}/v1\n`);
  await new Promise<void>((resolve, reject) => {
    host.onFailure((e) => {
      process.stderr.write(`caat: error: ${e.message}\n`);
      // Let the failed requests' responses go out, then stop.
      setTimeout(() => {
        void srv.close();
        reject(new Error(`the job failed: ${e.message}`));
      }, 2000).unref();
      setTimeout(() => process.exit(1), 8000).unref();
    });
    let stopping = false;
    const stop = (sig: string): void => {
      if (stopping) return;
      stopping = true;
      const ms = Number(f.shutdownTimeout) * 1000;
      process.stderr.write(`caat serve: ${sig}: draining requests in flight (up to ${f.shutdownTimeout} s)\n`);
      void srv.drain(ms).then(async (clean) => {
        if (!clean) process.stderr.write('caat serve: shutdown timeout: aborting the requests still in flight\n');
        await engine.stop();
        await srv.close();
        await host.close();
        resolve();
      });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}
