/**
 * From task names to scores: resolving a task list (proxy tasks, JSONL files with a task type),
 * tokenising every document's requests, and turning the scorer's log-likelihoods into lm-evaluation-
 * harness's per-document results, aggregate metrics with standard errors, and sample logs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../cli/run.js';
import { loadCorpus, splitCorpus, type Document } from '../data/corpus.js';
import type { Tokenizer } from '../data/tokenizer.js';
import { meanStderr, mean, perplexity, perplexityBootstrapStderr, type MetricRecord } from './metrics.js';
import { PROXY_TASKS, PROXY_TYPES, proxyRecords, type ProxyName, type ProxyOptions } from './proxy.js';
import { codePointLength, pyWhitespaceFields, utf8Bytes } from './pytext.js';
import { loglikelihoodRequest, prefixToken, rollingRequests, type TokenRequest } from './requests.js';
import { scoreRequests, type RankHandle, type ScoreOptions, type Scores } from './scorer.js';
import { isTaskType, planRecord, readTaskFile, TASK_TYPES, TASKS, type DocPlan, type TaskType } from './tasks.js';

/** Where a task's documents come from. */
export type TaskSource = { name: string; type: TaskType } & ({ file: string } | { proxy: ProxyName });

export interface PreparedTask {
  name: string;
  type: TaskType;
  docs: DocPlan[];
  /** Per document: indices of its token requests (choices, the cloze target, or rolling windows), or null. */
  reqs: (number[] | null)[];
  /** Per document: why it cannot be scored, or null. */
  errors: (string | null)[];
}

/** Tasks and the flat list of their token requests (plain data: can be sent to workers). */
export interface TaskSet {
  tasks: PreparedTask[];
  requests: TokenRequest[];
}

export function isProxyName(s: string): s is ProxyName {
  return (PROXY_TASKS as readonly string[]).includes(s);
}

/** Task files from --task-file TYPE=PATH (repeatable) and --task-dir (TYPE.jsonl or NAME.TYPE.jsonl). */
export function taskFiles(taskFile: string[] = [], taskDir?: string): Map<string, TaskSource> {
  const out = new Map<string, TaskSource>();
  const add = (name: string, type: string, file: string, where: string) => {
    if (!isTaskType(type)) throw new UserError(`${where}: unknown task type "${type}" (expected one of ${TASK_TYPES.join(', ')})`);
    if (out.has(name)) throw new UserError(`${where}: task "${name}" is given twice`);
    out.set(name, { name, type, file });
  };
  for (const spec of taskFile) {
    const m = /^([^=]+)=(.+)$/.exec(spec);
    if (!m) throw new UserError(`--task-file ${JSON.stringify(spec)}: expected TYPE=PATH.jsonl`);
    add(m[1]!, m[1]!, m[2]!, `--task-file ${spec}`);
  }
  if (taskDir !== undefined) {
    if (!fs.existsSync(taskDir) || !fs.statSync(taskDir).isDirectory()) throw new UserError(`--task-dir ${taskDir}: no such folder`);
    const files = fs.readdirSync(taskDir).filter((f) => f.endsWith('.jsonl')).sort();
    if (files.length === 0) throw new UserError(`--task-dir ${taskDir}: no .jsonl files (expected files named TYPE.jsonl, e.g. hellaswag.jsonl)`);
    for (const f of files) {
      const parts = f.slice(0, -'.jsonl'.length).split('.');
      const type = parts[parts.length - 1]!;
      const name = parts.length > 1 ? parts.slice(0, -1).join('.') : type;
      add(name, type, path.join(taskDir, f), path.join(taskDir, f));
    }
  }
  return out;
}

/**
 * Resolve a task list: "proxy" (the four proxy tasks), proxy names, TYPE=PATH entries, and names of
 * task files given with --task-file / --task-dir. An empty list means every task file.
 */
export function resolveTasks(list: string[], files: Map<string, TaskSource>): TaskSource[] {
  const out: TaskSource[] = [];
  const seen = new Set<string>();
  const push = (t: TaskSource) => {
    if (seen.has(t.name)) return;
    seen.add(t.name);
    out.push(t);
  };
  if (list.length === 0) for (const t of files.values()) push(t);
  for (const raw of list) {
    const item = raw.trim();
    if (item === '') continue;
    const m = /^([^=]+)=(.+)$/.exec(item);
    if (m) {
      if (!isTaskType(m[1]!)) throw new UserError(`task "${item}": unknown task type "${m[1]}" (expected one of ${TASK_TYPES.join(', ')})`);
      push({ name: m[1]!, type: m[1]!, file: m[2]! });
    } else if (files.has(item)) push(files.get(item)!); // a file of that name wins over a built-in task
    else if (item === 'proxy') for (const p of PROXY_TASKS) push({ name: p, type: PROXY_TYPES[p], proxy: p });
    else if (isProxyName(item)) push({ name: item, type: PROXY_TYPES[item], proxy: item });
    else if (isTaskType(item)) {
      throw new UserError(`task "${item}": no data file; give --task-file ${item}=PATH.jsonl, --task-dir FOLDER (holding ${item}.jsonl) or ${item}=PATH.jsonl in the list`);
    } else {
      throw new UserError(`unknown task "${item}": expected proxy, ${PROXY_TASKS.join(', ')}, or a task type (${TASK_TYPES.join(', ')}) with a JSONL file`);
    }
  }
  if (out.length === 0) throw new UserError('no tasks to evaluate');
  return out;
}

/** The document plans of one source (proxy tasks are generated from the held-out documents). */
export function planSource(src: TaskSource, heldOut: () => readonly Document[], proxy: ProxyOptions = {}): DocPlan[] {
  if ('file' in src) return readTaskFile(src.type, src.file);
  const recs = proxyRecords(src.proxy, heldOut(), proxy);
  if (recs.length === 0) throw new UserError(`${src.name}: the held-out documents yield no items`);
  return recs.map((r, i) => planRecord(src.type, r, i, `${src.name} item ${i}`));
}

/** Tokenise every document's requests. */
export function prepareTaskSet(tasks: { name: string; type: TaskType; docs: DocPlan[] }[], tok: Tokenizer, L: number): TaskSet {
  const prefix = prefixToken(tok);
  const requests: TokenRequest[] = [];
  const out: PreparedTask[] = tasks.map((t) => {
    const reqs: (number[] | null)[] = [];
    const errors: (string | null)[] = [];
    for (const d of t.docs) {
      let list: TokenRequest[] = [];
      let error: string | null = null;
      if (d.kind === 'rolling') {
        list = rollingRequests(tok.encode(d.text), L, prefix);
        if (list.length === 0) error = 'the page has no tokens';
      } else {
        for (const r of d.kind === 'choice' ? d.requests : [d.request]) {
          const tr = loglikelihoodRequest(tok, r.context, r.continuation, L, prefix);
          if ('error' in tr) {
            error = tr.error;
            break;
          }
          list.push(tr);
        }
      }
      if (error) {
        reqs.push(null);
        errors.push(error);
      } else {
        reqs.push(list.map((r) => requests.push(r) - 1));
        errors.push(null);
      }
    }
    return { name: t.name, type: t.type, docs: t.docs, reqs, errors };
  });
  return { tasks: out, requests };
}

/** First index of the maximum (numpy argmax). */
function argmax(xs: number[]): number {
  let b = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i]! > xs[b]!) b = i;
  return b;
}

export interface TaskResults {
  records: MetricRecord[];
  /** One object per document (the --log-samples lines). */
  samples: Record<string, unknown>[];
  /** Documents that could not be scored: task, doc_id, reason. */
  unscored: { task: string; doc_id: number; error: string }[];
}

/** lm-evaluation-harness's process_results and aggregation over the scored requests. */
export function aggregate(set: TaskSet, scores: Scores, o: { bootstrapIters?: number; samples?: boolean } = {}): TaskResults {
  const records: MetricRecord[] = [];
  const samples: Record<string, unknown>[] = [];
  const unscored: TaskResults['unscored'] = [];
  for (const t of set.tasks) {
    const def = TASKS[t.type];
    const per: Record<string, number[]> = {};
    const put = (k: string, v: number) => (per[k] ??= []).push(v);
    let sumLl = 0;
    let sumWords = 0;
    let sumBytes = 0;
    t.docs.forEach((d, i) => {
      const idx = t.reqs[i];
      if (!idx) {
        unscored.push({ task: t.name, doc_id: d.doc_id, error: t.errors[i]! });
        if (o.samples) samples.push({ task: t.name, doc_id: d.doc_id, error: t.errors[i] });
        return;
      }
      const lls = idx.map((k) => scores.ll[k]!);
      const nTok = idx.map((k) => set.requests[k]!.scored);
      if (d.kind === 'rolling') {
        const ll = lls.reduce((a, b) => a + b, 0);
        const words = pyWhitespaceFields(d.page);
        const bytes = utf8Bytes(d.page);
        sumLl += ll;
        sumWords += words;
        sumBytes += bytes;
        put('docs', 1);
        if (o.samples) samples.push({ task: t.name, doc_id: d.doc_id, ll, n_tokens: nTok.reduce((a, b) => a + b, 0), words, bytes });
        return;
      }
      const greedy = idx.map((k) => scores.greedy[k] === 1);
      if (d.kind === 'cloze') {
        put('acc', greedy[0] ? 1 : 0);
        put('perplexity', lls[0]!);
        if (o.samples) {
          samples.push({ task: t.name, doc_id: d.doc_id, context: d.request.context, continuations: [d.request.continuation], ll: lls, n_tokens: nTok, greedy, pred: greedy[0], target: d.request.continuation });
        }
        return;
      }
      const pred = argmax(lls);
      put('acc', pred === d.gold ? 1 : 0);
      let predNorm: number | undefined;
      if (def.metrics.includes('acc_norm')) {
        predNorm = argmax(lls.map((l, k) => l / codePointLength(d.choices[k]!)));
        put('acc_norm', predNorm === d.gold ? 1 : 0);
      }
      if (o.samples) {
        samples.push({
          task: t.name,
          doc_id: d.doc_id,
          context: d.multipleInput ? d.requests.map((r) => r.context) : d.requests[0]!.context,
          continuations: d.requests.map((r) => r.continuation),
          ll: lls,
          n_tokens: nTok,
          greedy,
          pred,
          ...(predNorm !== undefined ? { pred_norm: predNorm } : {}),
          target: d.gold,
        });
      }
    });
    const n = t.docs.length - t.errors.filter((e) => e !== null).length;
    if (n === 0) continue;
    for (const metric of def.metrics) {
      if (metric === 'word_perplexity') records.push({ task: t.name, metric, value: Math.exp(-sumLl / sumWords), stderr: null, n });
      else if (metric === 'byte_perplexity') records.push({ task: t.name, metric, value: Math.exp(-sumLl / sumBytes), stderr: null, n });
      else if (metric === 'bits_per_byte') records.push({ task: t.name, metric, value: -sumLl / sumBytes / Math.LN2, stderr: null, n });
      else if (metric === 'perplexity') {
        const xs = per['perplexity']!;
        records.push({ task: t.name, metric, value: perplexity(xs), stderr: perplexityBootstrapStderr(xs, o.bootstrapIters ?? 100000), n });
      } else {
        const xs = per[metric]!;
        records.push({ task: t.name, metric, value: mean(xs), stderr: meanStderr(xs), n });
      }
    }
  }
  return { records, samples, unscored };
}

/** Score a task set on a rank handle and aggregate. */
export async function evaluateTaskSet(h: RankHandle, set: TaskSet, o: ScoreOptions & { bootstrapIters?: number; samples?: boolean } = {}): Promise<TaskResults> {
  const scores = await scoreRequests(h, set.requests, o);
  return aggregate(set, scores, o);
}

/** The terminal table (lm-evaluation-harness's layout: values and stderr with 4 decimals). */
export function formatTable(records: MetricRecord[]): string {
  const rows = records.map((r) => [r.task, r.metric, r.value.toFixed(4), '±', r.stderr === null ? 'N/A' : r.stderr.toFixed(4), String(r.n)]);
  const head = ['Task', 'Metric', 'Value', '', 'Stderr', 'n'];
  const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)));
  const line = (cells: string[]) => `|${cells.map((s, c) => (c >= 2 && c !== 3 ? s.padStart(widths[c]!) : s.padEnd(widths[c]!))).join('|')}|`;
  let prev = '';
  const body = rows.map((r) => {
    const cells = [...r];
    if (cells[0] === prev) cells[0] = '';
    else prev = cells[0]!;
    return line(cells);
  });
  return [line(head), `|${widths.map((w) => '-'.repeat(w)).join('|')}|`, ...body].join('\n');
}

/** The held-out documents of a run's data settings (the validation split training never sees). */
export function heldOutDocuments(data: { corpus?: string; valFraction?: number }): Document[] {
  return splitCorpus(loadCorpus(data.corpus).documents, data.valFraction !== undefined ? { valFraction: data.valFraction } : {}).val;
}

/** Resolve, plan and tokenise a task list for a model with context window L. */
export function buildTaskSet(
  list: string[],
  o: { taskFile?: string[]; taskDir?: string; tokenizer: Tokenizer; L: number; heldOut: () => readonly Document[]; proxy?: ProxyOptions },
): TaskSet {
  const sources = resolveTasks(list, taskFiles(o.taskFile, o.taskDir));
  let docs: readonly Document[] | undefined;
  const heldOut = () => (docs ??= o.heldOut());
  const proxy = proxyOptions(o.tokenizer, o.L, o.proxy);
  return prepareTaskSet(
    sources.map((s) => ({ name: s.name, type: s.type, docs: planSource(s, heldOut, proxy) })),
    o.tokenizer,
    o.L,
  );
}

/** Proxy items must fit the context window whole: their full text in fewer than L tokens. */
export function proxyOptions(tok: Tokenizer, L: number, o: ProxyOptions = {}): ProxyOptions {
  return { fits: (text) => tok.encode(text).length < L, ...o };
}

/** Split a comma-separated task list. */
export function splitTaskList(s: string | undefined): string[] {
  return s === undefined ? [] : s.split(',').map((x) => x.trim()).filter((x) => x !== '');
}
