#!/usr/bin/env node
/**
 * The `caat` command line. Each subcommand lives in its own module and is loaded lazily so that
 * `caat --help` stays fast.
 */
import { Command } from 'commander';
import { runCli } from './run.js';

const program = new Command();
program
  .name('caat')
  .description('caatnet: train and run Llama-style models with CAAT-Net partially synchronised tensor parallelism')
  .showHelpAfterError();

const parallelOptions = (c: Command): Command =>
  c
    .option('--tp <n>', 'tensor-parallel degree N (logical ranks)')
    .option('--p <fraction>', 'fraction of hidden channels all-reduced after each row-parallel layer (0..1)')
    .option('--private-scale <kind>', 'scale of private channels: sqrt (sqrt(N)) or none')
    .option('--backend <name>', 'compute backend: native, wasm, js or auto (default: CAAT_BACKEND, else fastest)')
    .option('--transport <kind>', 'tcp (one rank per process, under caat launch/torchrun/mpirun/srun), mpi (one rank per process, under mpirun), threads or virtual (default: mpi under mpirun when the MPI addon is built, else tcp under a launcher)')
    .option('--comm-timeout <seconds>', 'processes: fail when a rank does not answer a collective or the rendezvous within this time (default 30)');

parallelOptions(
  program
    .command('train')
    .description('train a model (defaults: a ~1.8M-parameter model on the built-in English corpus)')
    .option('--config <file>', 'JSON config: {"model": {...}, "parallel": {...}, "train": {...}, "data": {...}}')
    .option('--out <dir>', 'run folder to create (default: runs/<timestamp>)')
    .option('--resume <dir>', 'continue the run in this folder from its latest checkpoint')
    .option('--data <path>', 'training text: a .txt file, a folder, or .jsonl with {"text": ...} (default: built-in corpus)')
    .option('--tokenizer <kind>', 'bpe (trained on the data), gpt2, or a tokenizer JSON file')
    .option('--vocab-size <n>', 'vocabulary size of the trained BPE (default 4096)')
    .option('--hidden <n>', 'hidden width h (default 128)')
    .option('--layers <n>', 'transformer blocks (default 4)')
    .option('--heads <n>', 'query heads (default 8)')
    .option('--kv-heads <n>', 'key/value heads (default 4)')
    .option('--ffn <n>', 'SwiGLU width (default 384)')
    .option('--seq-len <n>', 'sequence length (default 128)')
    .option('--steps <n>', 'optimiser steps (default 1000)')
    .option('--batch-size <n>', 'sequences per micro-batch (default 16)')
    .option('--grad-accum <n>', 'micro-batches per step (default 1)')
    .option('--lr <x>', 'peak learning rate (default 3e-3)')
    .option('--min-lr <x>', 'final learning rate (default 3e-4)')
    .option('--warmup <n>', 'warm-up steps (default 30)')
    .option('--weight-decay <x>', 'AdamW weight decay on matrices (default 0.1)')
    .option('--clip <x>', 'gradient-norm clipping, 0 = off (default 1)')
    .option('--eval-every <n>', 'validate every n steps (default 100)')
    .option('--eval-batches <n>', 'validation batches (default 8)')
    .option('--ckpt-every <n>', 'checkpoint every n steps (default 250)')
    .option('--keep-checkpoints <n>', 'complete checkpoints to keep, 0 = all (default 3)')
    .option('--seed <n>', 'seed of the weights and data order (default 1234)')
    .option('--workers <m>', 'worker threads hosting the ranks (must divide --tp; 0 = all ranks in the main thread)')
    .option('--cache-dir <dir>', 'token cache folder (default .cache/caatnet)')
    .option('--eval-tasks <list>', 'score these zero-shot tasks (as caat eval --tasks) at every validation step into metrics.jsonl')
    .option('--precision <p>', 'fp32, bf16 (mixed: fp32 master weights) or auto (default: bf16 where the backend has bf16 GEMM hardware, else fp32)'),
).action(async (opts) => runCli(async () => (await import('./train.js')).trainCommand(opts)));

parallelOptions(
  program
    .command('generate')
    .description('sample text from a trained run, streaming tokens as they are produced (KV cache)')
    .requiredOption('--run <dir>', 'run folder')
    .option('--prompt <text>', 'prompt text', '')
    .option('--max-tokens <n>', 'tokens to generate', '100')
    .option('--temperature <x>', 'sampling temperature (0 = greedy)', '0.8')
    .option('--top-k <n>', 'keep the k most likely tokens (0 = all)', '40')
    .option('--top-p <x>', 'nucleus sampling mass', '0.95')
    .option('--seed <n>', 'sampling seed', '0')
    .option('--workers <m>', 'worker threads hosting the ranks (must divide the TP degree; 0 = all ranks in the main thread, the default)')
    .option('--precision <p>', 'fp32 (default) or bf16 (GEMM weights held in bf16, half the bytes per token; any checkpoint)'),
).action(async (opts) => runCli(async () => (await import('./infer.js')).generateCommand(opts)));

parallelOptions(
  program
    .command('eval')
    .description('validation loss, perplexity and bits per byte on the held-out documents; with --tasks, zero-shot tasks by lm-evaluation-harness\'s rules')
    .requiredOption('--run <dir>', 'run folder')
    .option('--batch-size <n>', 'sequences per batch (validation loss)', '16')
    .option('--max-batches <n>', 'evaluate at most this many batches (validation loss)')
    .option('--json', 'print one JSON object (validation loss), or one line per task and metric (tasks)')
    .option('--tasks <list>', 'comma-separated: proxy (all proxy tasks), proxy_cloze, proxy_next_sentence, proxy_word_order, proxy_heldout, TYPE=PATH.jsonl, or a task type given by --task-file/--task-dir')
    .option('--task-file <type=path>', 'a JSONL file of a task type (lambada_openai, hellaswag, winogrande, piqa, openbookqa, boolq, wikitext); repeatable', (v: string, acc: string[] = []) => [...acc, v])
    .option('--task-dir <folder>', 'a folder of task files named TYPE.jsonl or NAME.TYPE.jsonl')
    .option('--log-samples <file>', 'write one JSON line per document (context, continuations, log-likelihoods, prediction)')
    .option('--export-tasks <folder>', 'write the proxy tasks as NAME.TYPE.jsonl files (all, or those named in --tasks)')
    .option('--batch-tokens <n>', 'tasks: rows × positions per forward (default 4096)')
    .option('--workers <m>', 'tasks: host the ranks on m worker threads (must divide --tp; default 0: virtual ranks in this thread)')
    .option('--proxy-items <n>', 'items per proxy task (default 1000)')
    .option('--proxy-seed <n>', 'seed of the proxy tasks (default 1234)')
    .option('--bootstrap-iters <n>', 'bootstrap resamples for the perplexity stderr (default 100000)')
    .option('--precision <p>', 'fp32 (default) or bf16 mixed precision forward (any checkpoint)'),
).action(async (opts) => runCli(async () => (await import('./eval.js')).evalCommand(opts)));

parallelOptions(
  program
    .command('serve')
    .description('OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, /v1/models, /health, /metrics) with continuous batching')
    .requiredOption('--run <dir>', 'run folder')
    .option('--host <addr>', 'address to listen on', '127.0.0.1')
    .option('--port <n>', 'port (0: a free one, printed at start)', '8000')
    .option('--model-name <name>', 'model id in the API (default: the run folder\'s name)')
    .option('--api-key <keys>', 'require one of these comma-separated keys as Authorization: Bearer (on /v1/*)')
    .option('--api-key-file <file>', 'keys, one per line')
    .option('--cors <origin>', 'send Access-Control-Allow-Origin: <origin> (e.g. "*")')
    .option('--chat-template <t>', 'chatml, llama3 or a Jinja template file (default: the run\'s chat_template.jinja or tokenizer_config.json chat_template; none: chat requests get a 400)')
    .option('--max-num-seqs <n>', 'sequences decoded at once (KV cache slots)', '32')
    .option('--max-batch-tokens <n>', 'tokens per engine step (decodes + prefill chunks)', '512')
    .option('--max-waiting <n>', 'sequences queued for a slot before requests get 429', '256')
    .option('--max-body-bytes <n>', 'largest request body (413 beyond)', '4194304')
    .option('--max-tokens <n>', 'ceiling on max_tokens (default: the context length)')
    .option('--shutdown-timeout <s>', 'on SIGTERM, wait this long for requests in flight', '30')
    .option('--stuck-timeout <s>', '/health turns 503 when the engine has work but no step for this long', '30')
    .option('--log-requests', 'one JSON line per request on standard error', true)
    .option('--no-log-requests', 'no request log')
    .option('--workers <m>', 'worker threads hosting the ranks (must divide the TP degree; 0 = all ranks in the main thread, the default)')
    .option('--precision <p>', 'fp32 (default) or bf16 (GEMM weights held in bf16, half the bytes per token; any checkpoint)'),
).action(async (opts) => runCli(async () => (await import('./serve.js')).serveCommand(opts)));

program
  .command('gradcheck')
  .description('one forward/backward of a checkpoint on a batch: loss and per-tensor gradient norms (fixture format)')
  .requiredOption('--model <file>', 'model .safetensors (tp, p and the config come from its metadata)')
  .requiredOption('--tokens <file>', 'JSON {"inputs": [[...]], "targets": [[...]]}')
  .option('--workers <m>', 'run the ranks on m worker threads (default: virtual ranks in this thread)')
  .option('--backend <name>', 'compute backend')
  .option('--json', 'print one JSON object')
  .option('--transport <kind>', 'tcp (one rank per process, under a launcher), mpi (under mpirun), threads or virtual')
  .option('--comm-timeout <seconds>', 'processes: collective and rendezvous timeout (default 30)')
  .option('--precision <p>', 'fp32 (default) or bf16: the bf16 forward/backward with its relative difference to fp32 (virtual ranks)')
  .action(async (opts) => runCli(async () => (await import('./gradcheck.js')).gradcheckCommand(opts)));

program
  .command('launch')
  .description('start N local processes of a caat command, one TP rank each over TCP: caat launch --nproc 2 -- train --tp 2')
  .requiredOption('--nproc <n>', 'number of processes (ranks)')
  .option('--master-addr <addr>', 'address rank 0 listens on', '127.0.0.1')
  .option('--master-port <port>', 'port rank 0 listens on (default: a free port)')
  .option('--exec', 'the command is an executable, not a caat subcommand')
  .argument('<command...>', 'after "--": the caat subcommand and its arguments')
  .allowUnknownOption()
  .action(async (args: string[], opts) => runCli(async () => (await import('./launch.js')).launchCommand(args, opts)));

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];
program
  .command('sweep')
  .description('train and evaluate every cell of a grid of run settings (p, tp, seed, model size, …); results.jsonl')
  .option('--config <file>', 'sweep file: {"base": {...}, "grid": {"tp": [4, 8], "p": [1, 0.5], "seed": [1, 2, 3]}, ...}')
  .option('--out <dir>', 'sweep folder (default: sweeps/<config name>)')
  .option('--grid <setting=v1,v2>', 'vary a setting over values (repeatable; overrides the file)', collect)
  .option('--set <setting=value>', 'fix a setting for every cell (repeatable; overrides the file)', collect)
  .option('--cores <n>', 'cores to use (default: all)')
  .option('--jobs <n>', 'at most this many cells side by side (default: the cores)')
  .option('--eval-tasks <list>', 'comma-separated zero-shot tasks for caat eval --tasks')
  .option('--dry-run', 'list the cells and their train configs, run nothing')
  .action(async (opts) => runCli(async () => (await import('./sweep.js')).sweepCommand(opts)));

program
  .command('report')
  .description('one self-contained HTML report with plots (and a markdown summary) of sweep folders or run folders')
  .argument('<dirs...>', 'sweep folders (with results.jsonl) or run folders')
  .option('--out <file>', 'HTML file to write (default: report.html in the first folder)')
  .option('--bench <file>', 'caat bench link --json output to plot (default: bench-link.jsonl in a sweep folder)')
  .option('--title <text>', 'title of the report')
  .action(async (dirs: string[], opts) => runCli(async () => (await import('./report.js')).reportCommand(dirs, opts)));

const bench = program.command('bench').description('benchmarks (machine-readable with --json)');
bench
  .command('kernels')
  .description('GEMM GFLOP/s and elementwise GB/s for every available backend')
  .option('--json', 'one JSON object per line')
  .option('--backend <names>', 'comma-separated backends to measure (default: all available)')
  .option('--repeats <n>', 'timed repeats per measurement (median reported)', '7')
  .action(async (opts) => runCli(async () => (await import('../bench/kernels.js')).benchKernelsCommand(opts)));

bench
  .command('train')
  .description('training throughput at TP 1: tokens/s, ms per step, share of step time in GEMM, attention and the largest other kernels')
  .option('--json', 'one JSON object per line')
  .option('--config <names>', 'tiny, small or both (comma-separated)', 'tiny,small')
  .option('--backend <names>', 'comma-separated backends (default: the fastest available)')
  .option('--steps <n>', 'timed steps after one warm-up step (median reported)', '3')
  .option('--precision <list>', 'fp32, bf16 or fp32,bf16 (both, with the bf16/fp32 ratio)', 'fp32')
  .action(async (opts) => runCli(async () => (await import('../bench/train.js')).benchTrainCommand(opts)));

bench
  .command('infer')
  .description('inference engine steps (small config, context 1024): prefill 512 and decode 128 at batch 1, 8, 32 per TP degree, p and placement; batch-1 roofline')
  .option('--json', 'one JSON object per line')
  .option('--backend <name>', 'compute backend (default: the fastest available)')
  .option('--variants <list>', 'comma-separated tpN[:pX][:wM] (M worker threads; default M = N, 0 = virtual ranks)', 'tp1,tp2:p1,tp2:p0.5')
  .option('--batches <list>', 'decode batch sizes', '1,8,32')
  .option('--prefill <n>', 'prompt tokens of the prefill measurement', '512')
  .option('--decode <n>', 'decode steps per batch size', '128')
  .option('--precision <list>', 'fp32, bf16 (GEMM weights in bf16) or fp32,bf16 (rows for each)', 'fp32')
  .action(async (opts) => runCli(async () => (await import('../bench/infer.js')).benchInferCommand(opts)));

bench
  .command('serve')
  .description('Poisson arrivals against a running caat serve: TTFT, TPOT, ITL, E2EL (median, mean, p99), request and output-token throughput (vLLM definitions)')
  .requiredOption('--url <url>', 'the server, e.g. http://127.0.0.1:8000')
  .option('--rates <list>', 'comma-separated request rates (req/s; inf = all at once)', '1,4,inf')
  .option('--num-prompts <n>', 'requests per rate', '50')
  .option('--input-len <n>', 'prompt tokens (random ids)', '32')
  .option('--output-len <n>', 'generated tokens per request (ignore_eos)', '32')
  .option('--model <name>', 'model name to send')
  .option('--api-key <key>', 'API key')
  .option('--seed <n>', 'seed of prompts and arrival times', '0')
  .option('--json', 'one JSON object per line')
  .action(async (opts) => runCli(async () => (await import('../bench/serve.js')).benchServeCommand(opts)));

bench
  .command('link')
  .description('needs root: TP ranks in network namespaces on links shaped with tc (1 Gbit/s, 100 Mbit/s): step time, comm time, bytes and speedup for p = 1 … 0 vs the cost model')
  .option('--json', 'one JSON object per line')
  .option('--tp <n>', 'ranks (2 or 4)', '2')
  .option('--rates <list>', 'comma-separated link rates', '1gbit,100mbit')
  .option('--steps <n>', 'timed steps after one warm-up step (median reported)', '3')
  .option('--batch <n>', 'training sequences per step (default: the small config\'s 8)')
  .option('--backend <name>', 'compute backend (default: the fastest available)')
  .option('--transport <t>', 'tcp, mpi or both (default: both when Open MPI\'s mpirun and the MPI addon are available, else tcp)')
  .action(async (opts) => runCli(async () => (await import('../bench/link.js')).benchLinkCommand(opts)));

bench
  .command('tp')
  .description('TP = 1 on one thread vs TP = N on worker threads for p = 1, 0.5, 0: speed, bytes, memory')
  .option('--json', 'one JSON object per line')
  .option('--config <name>', 'tiny or small', 'small')
  .option('--tp <n>', 'TP degree to compare with TP = 1', '2')
  .option('--backend <name>', 'compute backend (default: the fastest available)')
  .option('--steps <n>', 'timed steps after one warm-up step (median reported)', '4')
  .option('--precision <list>', 'fp32, bf16 or fp32,bf16 (rows for each, with activation memory per rank)', 'fp32')
  .action(async (opts) => runCli(async () => (await import('../bench/train.js')).benchTpCommand(opts)));

bench
  .command('comm')
  .description('all-reduce latency (4 KiB) and bandwidth (1 MiB, 16 MiB) between 2 ranks: threads, tcp, mpi')
  .option('--json', 'one JSON object per line')
  .option('--transport <names>', 'comma-separated transports to measure: threads, tcp, mpi (default: all available)')
  .option('--repeats <n>', 'timed repeats per size (median reported; default 400 / 60 / 15)')
  .action(async (opts) => runCli(async () => (await import('../bench/comm.js')).benchCommCommand(opts)));

await program.parseAsync(process.argv);
