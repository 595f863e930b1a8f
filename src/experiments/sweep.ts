/**
 * The sweep runner: every cell of a grid is a normal run folder trained by a child process
 * `caat train --config … --out CELL` (or `caat train --resume CELL` after an interruption) and then
 * evaluated by `caat eval --run CELL --json` (and `caat eval --run CELL --tasks … --json` when the
 * sweep names zero-shot tasks). Cells run side by side within the machine's cores; a crashing cell
 * is recorded and the others go on; complete cells are skipped, so a second invocation does no work
 * and an interrupted one continues from the cells' checkpoints (resume is exact, bit for bit).
 *
 * Sweep folder:
 *   sweep.json            the sweep spec and its cells
 *   cells/NAME/           the run folder of each cell
 *   state/NAME/           config.json (its `caat train --config` file), eval.json, tasks.json,
 *                         times.json, train.log, eval.log
 *   results.jsonl         one row per cell (src/experiments/results.ts)
 *   curves/NAME.json      each finished cell's loss curve (at most 400 points), for the report
 *
 * sweep.json, results.jsonl and curves/ are the sweep's record: they can be kept (committed, copied to
 * another machine) without cells/ and state/, which hold the checkpoints. A cell whose folders are gone
 * but whose row in results.jsonl is complete, with the same settings, counts as done, so the same
 * command run on that record trains only the cells it lacks.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import cliProgress from 'cli-progress';
import { UserError } from '../cli/run.js';
import { writeFileAtomic } from '../io/atomic.js';
import { buildRow, curveFile, curveOf, latestCheckpointStep, parseEvalOutput, parseTaskOutput, readMetrics, readResults, writeResults, type EvalResult, type ResultRow, type TaskMetric } from './results.js';
import { CoreScheduler } from './scheduler.js';
import { expandCells, type Cell, type SweepSpec } from './sweep-config.js';

export interface CommandResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
}

/** Runs `caat ARGS` with stderr (and a copy of stdout) appended to `log`; resolves when it exits. */
export type CaatRunner = (args: string[], o: { log: string; onSpawn?: (pid: number) => void }) => Promise<CommandResult>;

export interface SweepOptions {
  spec: SweepSpec;
  out: string;
  /** Cores to use (default: the spec's, else every core of this machine). */
  cores?: number;
  /** At most this many cells side by side (default: the spec's, else the cores). */
  jobs?: number;
  /** How `caat` child processes are run (default: this installation's CLI, see `childRunner`). */
  runner?: CaatRunner;
  log?: (m: string) => void;
  /** Aborting stops starting cells and ends the running children. */
  signal?: AbortSignal;
}

export interface SweepSummary {
  rows: ResultRow[];
  cells: number;
  /** Cells found complete (trained and evaluated) before this invocation did anything. */
  skipped: number;
  /** Child processes this invocation started, by kind. */
  started: { train: number; resume: number; eval: number; tasks: number };
  failed: string[];
}

const CLI = new URL('../cli/main.js', import.meta.url);
const GUARD = new URL('./child-guard.js', import.meta.url);

/**
 * The default runner: `node --import child-guard.js main.js ARGS`, connected by an IPC channel so
 * that the child ends when the sweep dies (child-guard.ts). Aborting sends SIGTERM.
 */
export function childRunner(children: Set<ChildProcess>): CaatRunner {
  return (args, o) =>
    new Promise((resolve, reject) => {
      const fd = fs.openSync(o.log, 'a');
      fs.writeSync(fd, `\n$ caat ${args.join(' ')}\n`);
      const child = spawn(process.execPath, ['--import', GUARD.href, CLI.pathname, ...args], { stdio: ['ignore', 'pipe', fd, 'ipc'], env: { ...process.env, CAAT_SWEEP_PID: String(process.pid) } });
      children.add(child);
      if (child.pid !== undefined) o.onSpawn?.(child.pid);
      let stdout = '';
      child.stdout!.on('data', (d: Buffer) => {
        stdout += d.toString('utf8');
        fs.writeSync(fd, d);
      });
      child.on('error', (e) => {
        children.delete(child);
        fs.closeSync(fd);
        reject(e);
      });
      child.on('close', (code, signal) => {
        children.delete(child);
        fs.closeSync(fd);
        resolve({ code, signal, stdout });
      });
    });
}

function readJson<T>(file: string): T | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

function tail(file: string, lines = 6): string {
  try {
    const t = fs.readFileSync(file, 'utf8').trim().split('\n');
    const errs = t.filter((l) => l.startsWith('caat: error:'));
    return (errs.length ? errs.slice(-2) : t.slice(-lines)).join(' | ');
  } catch {
    return '';
  }
}

interface Times {
  train: number;
  eval: number;
}

class CellPaths {
  readonly runDir: string;
  readonly stateDir: string;
  constructor(
    readonly out: string,
    readonly name: string,
  ) {
    this.runDir = path.join(out, 'cells', name);
    this.stateDir = path.join(out, 'state', name);
  }
  get config(): string {
    return path.join(this.stateDir, 'config.json');
  }
  get evalJson(): string {
    return path.join(this.stateDir, 'eval.json');
  }
  get tasksJson(): string {
    return path.join(this.stateDir, 'tasks.json');
  }
  get times(): string {
    return path.join(this.stateDir, 'times.json');
  }
  get trainLog(): string {
    return path.join(this.stateDir, 'train.log');
  }
  get evalLog(): string {
    return path.join(this.stateDir, 'eval.log');
  }
}

/** What is left to do for a cell. */
function cellState(c: Cell, p: CellPaths, tasks: string[] | undefined): { trained: boolean; ckpt: number | null; evaluated: boolean; tasksDone: boolean } {
  const ckpt = latestCheckpointStep(p.runDir);
  const trained = ckpt === c.steps;
  const ev = readJson<EvalResult>(p.evalJson);
  const evaluated = trained && ev?.step === c.steps;
  const tj = readJson<{ tasks: string[]; step: number }>(p.tasksJson);
  const tasksDone = !tasks || (trained && tj?.step === c.steps && JSON.stringify(tj.tasks) === JSON.stringify(tasks));
  return { trained, ckpt, evaluated, tasksDone };
}

/**
 * The rows of an earlier results.jsonl that stand for cells whose folders were removed: complete (status
 * ok, trained to the cell's steps, evaluated, with zero-shot task results when the sweep names tasks) and
 * made with exactly the cell's settings. Such a cell is not run again.
 */
function recordedRows(cells: Cell[], out: string, tasks: string[] | undefined): Map<string, ResultRow> {
  const adopted = new Map<string, ResultRow>();
  const file = path.join(out, 'results.jsonl');
  if (!fs.existsSync(file)) return adopted;
  const byCell = new Map(readResults(file).map((r) => [r.cell, r]));
  for (const c of cells) {
    const r = byCell.get(c.name);
    const p = new CellPaths(out, c.name);
    if (!r || fs.existsSync(p.runDir) || fs.existsSync(p.stateDir)) continue;
    if (r.status !== 'ok' || r.step !== c.steps || typeof r.metrics?.['val_loss'] !== 'number') continue;
    if (JSON.stringify(r.settings) !== JSON.stringify(c.settings)) {
      throw new UserError(`${file}: cell ${c.name} was recorded with other settings than the sweep's; use another --out or remove that row`);
    }
    if (tasks && !r.tasks?.length) continue; // evaluated before the sweep named zero-shot tasks

    adopted.set(c.name, r);
  }
  return adopted;
}

/** Refuse, before anything runs, a sweep folder whose cells were made with other settings. */
function checkFolder(cells: Cell[], out: string): void {
  for (const c of cells) {
    const p = new CellPaths(out, c.name);
    const saved = readJson<unknown>(p.config);
    if (saved !== undefined) {
      if (JSON.stringify(saved) !== JSON.stringify(c.trainConfig)) {
        throw new UserError(`${out}: cell ${c.name} was made with other settings (${p.config}); use another --out or remove that cell`);
      }
    } else if (fs.existsSync(path.join(p.runDir, 'run.json'))) {
      throw new UserError(`${p.runDir}: a run folder this sweep did not make; use another --out`);
    }
  }
}

function fmtEta(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '-';
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

/** Progress over the whole grid: cells done, cells running, and an ETA from the work (steps × size) done so far. */
class GridProgress {
  private bar?: cliProgress.SingleBar;
  private timer?: NodeJS.Timeout;
  private readonly t0 = performance.now();
  private workAtStart = 0;
  done = 0;
  running = new Set<Cell>();

  /**
   * `todo`: the cells this invocation runs (the ETA covers only them: a complete cell kept from
   * results.jsonl without its folder has no metrics to count as done).
   */
  constructor(
    private readonly cells: Cell[],
    private readonly todo: Cell[],
    private readonly out: string,
    private readonly log: (m: string) => void,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {}

  private workDone(): number {
    let w = 0;
    for (const c of this.todo) {
      const m = readMetrics(new CellPaths(this.out, c.name).runDir);
      const steps = m.length ? m[m.length - 1]!.step : 0;
      w += (c.work * Math.min(steps, c.steps)) / c.steps;
    }
    return w;
  }

  eta(): string {
    const total = this.todo.reduce((a, c) => a + c.work, 0);
    const w = this.workDone();
    const secs = (performance.now() - this.t0) / 1000;
    const rate = (w - this.workAtStart) / secs;
    return rate > 0 ? fmtEta((total - w) / rate) : '-';
  }

  start(done: number): void {
    this.done = done;
    this.workAtStart = this.workDone();
    if (this.stream.isTTY && !process.env['CI']) {
      this.bar = new cliProgress.SingleBar(
        { format: 'sweep |{bar}| {value}/{total} cells | {running} running | eta {myeta}', stream: this.stream, hideCursor: true },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(this.cells.length, done, { running: 0, myeta: '-' });
      this.timer = setInterval(() => this.refresh(), 2000);
      this.timer.unref();
    }
  }

  private refresh(): void {
    this.bar?.update(this.done, { running: this.running.size, myeta: this.eta() });
  }

  note(m: string): void {
    if (this.bar) {
      this.bar.stop();
      this.log(m);
      this.bar.start(this.cells.length, this.done, { running: this.running.size, myeta: this.eta() });
    } else this.log(m);
  }

  cellDone(c: Cell, what: string): void {
    this.done++;
    this.running.delete(c);
    this.note(`[${this.done}/${this.cells.length}] ${c.name}: ${what}; eta ${this.eta()}`);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.bar?.stop();
  }
}

/** Run (or continue) a sweep; returns its rows, also written to OUT/results.jsonl. */
export async function runSweep(o: SweepOptions): Promise<SweepSummary> {
  const log = o.log ?? ((m: string) => process.stderr.write(`${m}\n`));
  const cells = expandCells(o.spec);
  const out = o.out;
  checkFolder(cells, out);
  const recorded = recordedRows(cells, out, o.spec.evalTasks);
  const cores = o.cores ?? o.spec.cores ?? (os.availableParallelism?.() ?? os.cpus().length);
  const jobs = o.jobs ?? o.spec.jobs ?? cores;
  const tooWide = cells.find((c) => c.cores > cores);
  if (tooWide) log(`note: cell ${tooWide.name} uses ${tooWide.cores} worker threads, more than the ${cores} cores; such cells run alone`);
  fs.mkdirSync(path.join(out, 'cells'), { recursive: true });
  fs.mkdirSync(path.join(out, 'state'), { recursive: true });
  fs.mkdirSync(path.join(out, 'curves'), { recursive: true });
  writeFileAtomic(path.join(out, 'sweep.json'), `${JSON.stringify({ spec: { ...o.spec }, cells: cells.map((c) => ({ name: c.name, grid: c.grid, settings: c.settings })) }, null, 2)}\n`);

  const children = new Set<ChildProcess>();
  const runner = o.runner ?? childRunner(children);
  const started = { train: 0, resume: 0, eval: 0, tasks: 0 };
  const failed: string[] = [];
  const rows = new Map<string, ResultRow>();
  const tasks = o.spec.evalTasks;

  const rowOf = (c: Cell, p: CellPaths, error?: string): ResultRow => {
    const t = readJson<Times>(p.times) ?? { train: 0, eval: 0 };
    const ev = readJson<EvalResult>(p.evalJson);
    const tj = readJson<{ results: TaskMetric[] }>(p.tasksJson);
    return buildRow({
      cell: c.name,
      dir: path.join('cells', c.name),
      runDir: p.runDir,
      grid: c.grid,
      settings: c.settings,
      ...(ev && !error ? { evalResult: ev } : {}),
      ...(tasks && tj && !error ? { tasks: tj.results } : {}),
      trainSeconds: t.train,
      evalSeconds: t.eval,
      ...(error ? { error } : {}),
    });
  };
  const flushResults = (): void => {
    writeResults(
      path.join(out, 'results.jsonl'),
      cells.filter((c) => rows.has(c.name)).map((c) => rows.get(c.name)!),
    );
  };
  const addTime = (p: CellPaths, kind: keyof Times, seconds: number): void => {
    const t = readJson<Times>(p.times) ?? { train: 0, eval: 0 };
    t[kind] += seconds;
    writeFileAtomic(p.times, `${JSON.stringify(t)}\n`);
  };
  const timed = async (p: CellPaths, kind: keyof Times, args: string[], logFile: string): Promise<CommandResult> => {
    const t0 = performance.now();
    try {
      return await runner(args, { log: logFile, onSpawn: (pid) => writeFileAtomic(path.join(p.stateDir, 'running.json'), `${JSON.stringify({ pid, args })}\n`) });
    } finally {
      addTime(p, kind, (performance.now() - t0) / 1000);
      fs.rmSync(path.join(p.stateDir, 'running.json'), { force: true });
    }
  };
  const check = (r: CommandResult, what: string, logFile: string): void => {
    if (r.code === 0) return;
    const how = r.signal ? `killed by ${r.signal}` : `exit status ${r.code}`;
    throw new Error(`${what} failed (${how}): ${tail(logFile)} (log: ${logFile})`);
  };
  const evalArgs = (p: CellPaths): string[] => [
    'eval', '--run', p.runDir, '--json',
    ...(o.spec.eval.batchSize ? ['--batch-size', String(o.spec.eval.batchSize)] : []),
    ...(o.spec.eval.maxBatches ? ['--max-batches', String(o.spec.eval.maxBatches)] : []),
  ];

  let skipped = 0;
  const todo: Cell[] = [];
  if (recorded.size) log(`sweep: ${recorded.size} cells complete in ${path.join(out, 'results.jsonl')} without their folders; kept as recorded`);
  for (const c of cells) {
    const p = new CellPaths(out, c.name);
    const s = cellState(c, p, tasks);
    const rec = recorded.get(c.name);
    if (rec) {
      skipped++;
      rows.set(c.name, rec);
    } else if (s.trained && s.evaluated && s.tasksDone) {
      skipped++;
      rows.set(c.name, rowOf(c, p));
    } else todo.push(c);
  }
  flushResults();
  log(`sweep: ${cells.length} cells (${o.spec.grid.map(([k, v]) => `${k} × ${v.length}`).join(', ')}), ${skipped} complete, ${todo.length} to run; up to ${jobs} side by side on ${cores} cores; folder ${out}`);
  if (todo.length === 0) return { rows: cells.map((c) => rows.get(c.name)!), cells: cells.length, skipped, started, failed };

  const progress = new GridProgress(cells, todo, out, log);
  const sched = new CoreScheduler(cores, jobs);
  const onAbort = (): void => {
    sched.stop();
    for (const ch of children) ch.kill('SIGTERM');
  };
  o.signal?.addEventListener('abort', onAbort, { once: true });
  progress.start(skipped);
  try {
    await sched.runAll(
      todo.map((c) => ({
        cores: c.cores,
        run: async () => {
          const p = new CellPaths(out, c.name);
          progress.running.add(c);
          try {
            fs.mkdirSync(p.stateDir, { recursive: true });
            const s = cellState(c, p, tasks);
            if (!s.trained) {
              let args: string[];
              if (s.ckpt !== null) {
                args = ['train', '--resume', p.runDir];
                started.resume++;
                progress.note(`${c.name}: resuming from step ${s.ckpt}`);
              } else {
                // Nothing to resume from: start afresh (a partial folder without a checkpoint is discarded).
                fs.rmSync(p.runDir, { recursive: true, force: true });
                fs.rmSync(p.evalJson, { force: true });
                fs.rmSync(p.tasksJson, { force: true });
                writeFileAtomic(p.config, `${JSON.stringify(c.trainConfig)}\n`);
                args = ['train', '--config', p.config, '--out', p.runDir];
                started.train++;
              }
              if (o.signal?.aborted) throw new Error('stopped');
              check(await timed(p, 'train', args, p.trainLog), 'caat train', p.trainLog);
              const step = latestCheckpointStep(p.runDir);
              if (step !== c.steps) throw new Error(`caat train ended without a checkpoint at step ${c.steps} (latest: ${step}); log: ${p.trainLog}`);
            }
            if (!s.evaluated) {
              if (o.signal?.aborted) throw new Error('stopped');
              started.eval++;
              const r = await timed(p, 'eval', evalArgs(p), p.evalLog);
              check(r, 'caat eval', p.evalLog);
              const ev = parseEvalOutput(r.stdout);
              writeFileAtomic(p.evalJson, `${JSON.stringify(ev)}\n`);
            }
            if (tasks && !s.tasksDone) {
              if (o.signal?.aborted) throw new Error('stopped');
              started.tasks++;
              const r = await timed(p, 'eval', ['eval', '--run', p.runDir, '--tasks', tasks.join(','), '--json'], p.evalLog);
              check(r, 'caat eval --tasks', p.evalLog);
              writeFileAtomic(p.tasksJson, `${JSON.stringify({ tasks, step: c.steps, results: parseTaskOutput(r.stdout) })}\n`);
            }
            const row = rowOf(c, p);
            writeFileAtomic(curveFile(out, c.name), `${JSON.stringify(curveOf(readMetrics(p.runDir)))}\n`);
            rows.set(c.name, row);
            flushResults();
            const vl = row.metrics['val_loss'];
            progress.cellDone(c, `validation loss ${vl !== undefined ? vl.toFixed(4) : '-'}`);
          } catch (e) {
            const msg = e instanceof Error ? e.message : String(e);
            if (!o.signal?.aborted) {
              failed.push(c.name);
              rows.set(c.name, rowOf(c, p, msg));
              flushResults();
              progress.cellDone(c, `FAILED: ${msg}`);
            }
            throw e;
          }
        },
      })),
    );
  } finally {
    progress.stop();
    o.signal?.removeEventListener('abort', onAbort);
  }
  // in grid order, whatever order the cells ended in
  const order = new Map(cells.map((c, i) => [c.name, i]));
  failed.sort((a, b) => order.get(a)! - order.get(b)!);
  return { rows: cells.filter((c) => rows.has(c.name)).map((c) => rows.get(c.name)!), cells: cells.length, skipped, started, failed };
}
