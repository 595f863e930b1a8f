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

const bench = program.command('bench').description('benchmarks (machine-readable with --json)');
bench
  .command('kernels')
  .description('GEMM GFLOP/s and elementwise GB/s for every available backend')
  .option('--json', 'one JSON object per line')
  .option('--backend <names>', 'comma-separated backends to measure (default: all available)')
  .option('--repeats <n>', 'timed repeats per measurement (median reported)', '7')
  .action(async (opts) => runCli(async () => (await import('../bench/kernels.js')).benchKernelsCommand(opts)));

await program.parseAsync(process.argv);
