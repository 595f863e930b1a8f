/**
 * `caat report`: one self-contained HTML file (Vega-Lite plots, the vega, vega-lite and vega-embed
 * builds inlined, so it opens without a network) and a markdown summary, from sweep folders
 * (results.jsonl and the cells' metrics.jsonl) or plain run folders (run.json and metrics.jsonl; the
 * quality is then the last validation loss measured during training).
 *
 * Plots: training and validation loss per cell grouped by p; final validation loss against p, one
 * line per N, with the spread over seeds; the table of every metric for each p (mean ± standard
 * error over seeds); quality against bytes communicated per step; and, when a `caat bench link
 * --json` output is given (or lies in a sweep folder as bench-link.jsonl), measured speedups next to
 * the cost model's prediction.
 */
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';
import { curveFile, curveOf, readCurve, readMetrics, readResults, type ResultRow, type TaskMetric } from './results.js';

export interface ReportRow {
  cell: string;
  source: string;
  settings: Record<string, number | string>;
  metrics: Record<string, number>;
  tasks: TaskMetric[];
  commBytes: number | null;
  /** Where the quality numbers come from: `caat eval` on the whole validation split, or training's validation batches. */
  quality: 'eval' | 'training';
  failed?: string;
  curve: { step: number; loss: number; val_loss?: number }[];
}

export interface BenchRecord {
  transport: string;
  rate: string;
  tp: number;
  p: number;
  phase: string;
  speedup: number;
  predicted_speedup: number;
}

export interface ReportData {
  rows: ReportRow[];
  bench: BenchRecord[];
  sources: string[];
}


function readBench(file: string): BenchRecord[] {
  const out: BenchRecord[] = [];
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  lines.forEach((l, i) => {
    if (!l.trim().startsWith('{')) return;
    const o = JSON.parse(l) as Record<string, unknown>;
    if (typeof o['speedup'] !== 'number' || typeof o['predicted_speedup'] !== 'number' || typeof o['p'] !== 'number') {
      throw new Error(`${file}:${i + 1}: not a caat bench link --json record (needs p, speedup, predicted_speedup)`);
    }
    out.push(o as unknown as BenchRecord);
  });
  return out;
}

function rowFromRunDir(dir: string): ReportRow {
  const runJson = path.join(dir, 'run.json');
  if (!fs.existsSync(runJson)) throw new Error(`${dir}: neither a sweep folder (results.jsonl) nor a run folder (run.json)`);
  const run = JSON.parse(fs.readFileSync(runJson, 'utf8')) as { model: Record<string, number>; parallel: Record<string, number | string>; train: Record<string, number>; data: Record<string, number | string> };
  const m = readMetrics(dir);
  const last = m[m.length - 1];
  const lastVal = [...m].reverse().find((r) => typeof r.val_loss === 'number');
  const metrics: Record<string, number> = {};
  if (last) metrics['final_train_loss'] = last.loss;
  if (lastVal) {
    metrics['val_loss'] = lastVal.val_loss!;
    metrics['perplexity'] = Math.exp(lastVal.val_loss!);
  }
  return {
    cell: path.basename(path.resolve(dir)),
    source: dir,
    settings: {
      tp: Number(run.parallel['tp']),
      p: Number(run.parallel['p']),
      'private-scale': String(run.parallel['privateScale']),
      seed: Number(run.train['seed']),
      hidden: run.model['hidden']!,
      layers: run.model['layers']!,
      heads: run.model['heads']!,
      'kv-heads': run.model['kvHeads']!,
      ffn: run.model['ffn']!,
      steps: Number(run.train['steps']),
      data: String(run.data['corpus']),
    },
    metrics,
    tasks: [],
    commBytes: typeof last?.comm_bytes === 'number' ? last.comm_bytes : null,
    quality: 'training',
    curve: curveOf(m),
  };
}

function rowFromResult(sweepDir: string, r: ResultRow): ReportRow {
  // the cell's run folder when it is there, else the curve the sweep kept beside results.jsonl
  const m = readMetrics(path.join(sweepDir, r.dir));
  const kept = curveFile(sweepDir, r.cell);
  const curve = m.length === 0 && fs.existsSync(kept) ? readCurve(kept) : curveOf(m);
  return {
    cell: r.cell,
    source: path.join(sweepDir, r.dir),
    settings: r.settings,
    metrics: r.metrics,
    tasks: r.tasks ?? [],
    commBytes: r.comm_bytes_per_step?.total ?? null,
    quality: 'eval',
    ...(r.status === 'failed' ? { failed: r.error ?? 'failed' } : {}),
    curve,
  };
}

/** Read sweep folders and run folders (and a bench link output) into one data set. */
export function loadReportData(dirs: string[], o: { bench?: string } = {}): ReportData {
  const rows: ReportRow[] = [];
  const bench: BenchRecord[] = [];
  for (const d of dirs) {
    const results = path.join(d, 'results.jsonl');
    if (fs.existsSync(results)) {
      for (const r of readResults(results)) rows.push(rowFromResult(d, r));
      const b = path.join(d, 'bench-link.jsonl');
      if (!o.bench && fs.existsSync(b)) bench.push(...readBench(b));
    } else rows.push(rowFromRunDir(d));
  }
  if (o.bench) bench.push(...readBench(o.bench));
  if (rows.length === 0) throw new Error(`${dirs.join(', ')}: no cells or runs to report`);
  return { rows, bench, sources: dirs };
}

export interface Stat {
  mean: number;
  se: number | null;
  n: number;
}

/** Mean and standard error of the mean (sample standard deviation / √n; null for one value). */
export function meanSe(xs: number[]): Stat {
  const n = xs.length;
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  if (n < 2) return { mean, se: null, n };
  const v = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1);
  return { mean, se: Math.sqrt(v / n), n };
}

const IGNORED = new Set(['p', 'tp', 'seed']);

/** The settings other than p, N and seed that differ between rows: each row's group label. */
export function groupLabels(rows: ReportRow[]): Map<ReportRow, string> {
  const keys = new Set<string>();
  for (const r of rows) for (const k of Object.keys(r.settings)) keys.add(k);
  const varying = [...keys].filter((k) => !IGNORED.has(k) && new Set(rows.map((r) => JSON.stringify(r.settings[k]))).size > 1);
  return new Map(rows.map((r) => [r, varying.map((k) => `${k} ${r.settings[k]}`).join(', ') || 'all']));
}

export interface TableLine {
  group: string;
  tp: number;
  p: number;
  stats: Record<string, Stat>;
  commBytes: number | null;
  deltaVal?: Stat & { seBoth: number | null };
}

/** Every metric per (group, N, p), mean ± standard error over the seeds; p = 1 first, then descending p. */
export function paperTable(rows: ReportRow[]): { lines: TableLine[]; metrics: string[] } {
  const ok = rows.filter((r) => !r.failed);
  const groups = groupLabels(ok);
  const metricSet = new Set<string>();
  for (const r of ok) {
    for (const k of ['val_loss', 'perplexity', 'bits_per_byte']) if (typeof r.metrics[k] === 'number') metricSet.add(k);
    for (const t of r.tasks) metricSet.add(`${t.task}/${t.metric}`);
  }
  const metrics = [...metricSet];
  const key = (r: ReportRow) => JSON.stringify([groups.get(r), Number(r.settings['tp']), Number(r.settings['p'])]);
  const by = new Map<string, ReportRow[]>();
  for (const r of ok) by.set(key(r), [...(by.get(key(r)) ?? []), r]);
  const lines: TableLine[] = [];
  for (const [k, rs] of by) {
    const [group, tp, p] = JSON.parse(k) as [string, number, number];
    const stats: Record<string, Stat> = {};
    for (const m of metrics) {
      const vals = rs.map((r) => (m.includes('/') ? r.tasks.find((t) => `${t.task}/${t.metric}` === m)?.value : r.metrics[m])).filter((x): x is number => typeof x === 'number');
      if (vals.length) stats[m] = meanSe(vals);
    }
    lines.push({ group, tp, p, stats, commBytes: rs[0]!.commBytes });
  }
  lines.sort((a, b) => a.group.localeCompare(b.group) || a.tp - b.tp || b.p - a.p);
  for (const l of lines) {
    const base = lines.find((x) => x.group === l.group && x.tp === l.tp && x.p === 1);
    const a = l.stats['val_loss'];
    const b = base?.stats['val_loss'];
    if (a && b && l.p !== 1) {
      const seBoth = a.se !== null && b.se !== null ? Math.sqrt(a.se ** 2 + b.se ** 2) : null;
      l.deltaVal = { mean: a.mean - b.mean, se: null, n: a.n, seBoth };
    }
  }
  return { lines, metrics };
}

const fmt = (s: Stat | undefined, d = 4): string => (s ? `${s.mean.toFixed(d)}${s.se !== null ? ` ± ${s.se.toFixed(d)}` : ''}` : '–');
const mb = (b: number | null): string => (b === null ? '–' : (b / 1e6).toFixed(3));

/** The markdown summary: sources, the table, and the p < 1 − p = 1 differences in validation loss. */
export function markdownSummary(data: ReportData, title: string): string {
  const { lines, metrics } = paperTable(data.rows);
  const out: string[] = [`# ${title}`, ''];
  const failed = data.rows.filter((r) => r.failed);
  const q = data.rows.some((r) => r.quality === 'training') ? ' (run folders: quality is the last validation loss measured during training)' : '';
  out.push(`${data.rows.length} cells from ${data.sources.join(', ')}${q}; mean ± standard error over seeds (n = seeds); MB/step per rank is the payload each rank all-reduces per training step (a ring all-reduce sends 2(N − 1)/N of it from each rank).${failed.length ? ` ${failed.length} failed: ${failed.map((r) => r.cell).join(', ')}.` : ''}`, '');
  out.push(`| group | N | p | n | ${metrics.join(' | ')} | Δ val_loss vs p = 1 | MB/step per rank |`);
  out.push(`|---|---|---|---|${metrics.map(() => '---|').join('')}---|---|`);
  for (const l of lines) {
    const n = Math.max(...Object.values(l.stats).map((s) => s.n));
    const d = l.deltaVal ? `${l.deltaVal.mean >= 0 ? '+' : ''}${l.deltaVal.mean.toFixed(4)}${l.deltaVal.seBoth !== null ? ` ± ${l.deltaVal.seBoth.toFixed(4)}` : ''}` : '–';
    out.push(`| ${l.group} | ${l.tp} | ${l.p} | ${n} | ${metrics.map((m) => fmt(l.stats[m], m === 'perplexity' ? 2 : 4)).join(' | ')} | ${d} | ${mb(l.commBytes)} |`);
  }
  out.push('');
  if (data.bench.length) {
    out.push('Measured speedups of `caat bench link` (measured / predicted by the cost model):', '');
    out.push('| transport | rate | phase | p | speedup | predicted |', '|---|---|---|---|---|---|');
    for (const b of data.bench) out.push(`| ${b.transport} | ${b.rate} | ${b.phase} | ${b.p} | ${b.speedup.toFixed(2)} | ${b.predicted_speedup.toFixed(2)} |`);
    out.push('');
  }
  return `${out.join('\n')}\n`;
}

type Spec = Record<string, unknown>;

/** The Vega-Lite specs of the report, by title. */
export function reportSpecs(data: ReportData): { id: string; title: string; spec: Spec }[] {
  const ok = data.rows.filter((r) => !r.failed);
  const groups = groupLabels(ok);
  const nLabel = (r: ReportRow) => `N = ${r.settings['tp']}`;
  const specs: { id: string; title: string; spec: Spec }[] = [];
  const curves = ok.flatMap((r) =>
    r.curve.flatMap((c) => [
      { cell: r.cell, p: Number(r.settings['p']), step: c.step, loss: c.loss, kind: 'train' },
      ...(c.val_loss !== undefined ? [{ cell: r.cell, p: Number(r.settings['p']), step: c.step, loss: c.val_loss, kind: 'validation' }] : []),
    ]),
  );
  specs.push({
    id: 'curves',
    title: 'Training and validation loss per cell, grouped by p',
    spec: {
      data: { values: curves },
      facet: { column: { field: 'p', type: 'ordinal', sort: 'descending', title: 'p' } },
      spec: {
        width: 220,
        height: 180,
        mark: { type: 'line', strokeWidth: 1.2 },
        encoding: {
          x: { field: 'step', type: 'quantitative' },
          y: { field: 'loss', type: 'quantitative', scale: { zero: false }, title: 'loss (nats/token)' },
          color: { field: 'cell', type: 'nominal', legend: { columns: 2 } },
          strokeDash: { field: 'kind', type: 'nominal', title: 'curve' },
        },
      },
    },
  });
  const finals = ok.filter((r) => typeof r.metrics['val_loss'] === 'number').map((r) => ({ p: Number(r.settings['p']), N: nLabel(r), group: groups.get(r)!, val_loss: r.metrics['val_loss']!, cell: r.cell }));
  const multiGroup = new Set(finals.map((f) => f.group)).size > 1;
  const layer = [
    { mark: { type: 'errorbar', extent: 'stderr', ticks: true }, encoding: { x: { field: 'p', type: 'quantitative' }, y: { field: 'val_loss', type: 'quantitative', scale: { zero: false }, title: 'validation loss (nats/token)' }, color: { field: 'N', type: 'nominal' } } },
    { mark: { type: 'line', point: true }, encoding: { x: { field: 'p', type: 'quantitative', title: 'p (fraction of channels synchronised)' }, y: { aggregate: 'mean', field: 'val_loss', type: 'quantitative' }, color: { field: 'N', type: 'nominal', title: 'TP degree' } } },
    { mark: { type: 'point', opacity: 0.35, size: 18 }, encoding: { x: { field: 'p', type: 'quantitative' }, y: { field: 'val_loss', type: 'quantitative' }, color: { field: 'N', type: 'nominal' }, tooltip: [{ field: 'cell' }, { field: 'val_loss', format: '.4f' }] } },
  ];
  specs.push({
    id: 'loss-vs-p',
    title: 'Final validation loss against p, one line per N (mean, ± standard error over seeds; faint points: single seeds)',
    spec: multiGroup
      ? { data: { values: finals }, facet: { row: { field: 'group', type: 'nominal', title: null } }, spec: { width: 420, height: 240, layer } }
      : { data: { values: finals }, width: 420, height: 260, layer },
  });
  const table = paperTable(data.rows);
  const trade = table.lines
    .filter((l) => l.stats['val_loss'] && l.commBytes !== null)
    .map((l) => {
      const s = l.stats['val_loss']!;
      return { mb: l.commBytes! / 1e6, mean: s.mean, lo: s.mean - (s.se ?? 0), hi: s.mean + (s.se ?? 0), N: `N = ${l.tp}`, label: `p=${l.p}`, group: l.group };
    });
  specs.push({
    id: 'quality-vs-bytes',
    title: 'Quality against bytes communicated per step and rank (mean ± standard error over seeds)',
    spec: {
      data: { values: trade },
      width: 420,
      height: 260,
      layer: [
        { mark: 'rule', encoding: { x: { field: 'mb', type: 'quantitative' }, y: { field: 'lo', type: 'quantitative' }, y2: { field: 'hi' }, color: { field: 'N', type: 'nominal' } } },
        { mark: { type: 'line', point: true }, encoding: { x: { field: 'mb', type: 'quantitative', title: 'MB communicated per step (per rank)' }, y: { field: 'mean', type: 'quantitative', scale: { zero: false }, title: 'validation loss (nats/token)' }, color: { field: 'N', type: 'nominal', title: 'TP degree' }, detail: { field: 'group' } } },
        { mark: { type: 'text', dx: 14, dy: -8, fontSize: 10 }, encoding: { x: { field: 'mb', type: 'quantitative' }, y: { field: 'mean', type: 'quantitative' }, text: { field: 'label' }, color: { field: 'N', type: 'nominal' } } },
      ],
    },
  });
  if (data.bench.length) {
    const values = data.bench.flatMap((b) => [
      { series: `${b.transport} ${b.rate}`, phase: b.phase, p: b.p, speedup: b.speedup, kind: 'measured' },
      { series: `${b.transport} ${b.rate}`, phase: b.phase, p: b.p, speedup: b.predicted_speedup, kind: 'cost model' },
    ]);
    specs.push({
      id: 'bench-link',
      title: 'caat bench link: measured speedup over p = 1 next to the cost model',
      spec: {
        data: { values },
        facet: { column: { field: 'phase', type: 'nominal' } },
        spec: {
          width: 260,
          height: 220,
          mark: { type: 'line', point: true },
          encoding: {
            x: { field: 'p', type: 'quantitative' },
            y: { field: 'speedup', type: 'quantitative', title: 'speedup over p = 1' },
            color: { field: 'series', type: 'nominal', title: 'transport, link' },
            strokeDash: { field: 'kind', type: 'nominal', title: null },
          },
        },
      },
    });
  }
  return specs;
}

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
/** Inline script text: nothing in it may close the script element. */
const inline = (js: string): string => js.replace(/<\/script/gi, '<\\/script').replace(/<!--/g, '<\\!--');

/** The folder of an installed package: the nearest node_modules/<pkg> above this module. */
function packageDir(pkg: string): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const cand = path.join(dir, 'node_modules', pkg);
    if (fs.existsSync(path.join(cand, 'package.json'))) return cand;
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`the ${pkg} package is not installed (npm ci installs it)`);
    dir = up;
  }
}

function libraries(): string {
  const file = (pkg: string, rel: string) => fs.readFileSync(path.join(packageDir(pkg), rel), 'utf8');
  return [file('vega', 'build/vega.min.js'), file('vega-lite', 'build/vega-lite.min.js'), file('vega-embed', 'build/vega-embed.min.js')].map((js) => `<script>${inline(js)}</script>`).join('\n');
}

function htmlTable(data: ReportData): string {
  const { lines, metrics } = paperTable(data.rows);
  const head = `<tr><th>group</th><th>N</th><th>p</th><th>n</th>${metrics.map((m) => `<th>${esc(m)}</th>`).join('')}<th>Δ val_loss vs p = 1</th><th>MB/step per rank</th></tr>`;
  const body = lines
    .map((l) => {
      const n = Math.max(...Object.values(l.stats).map((s) => s.n));
      const d = l.deltaVal ? `${l.deltaVal.mean >= 0 ? '+' : ''}${l.deltaVal.mean.toFixed(4)}${l.deltaVal.seBoth !== null ? ` ± ${l.deltaVal.seBoth.toFixed(4)}` : ''}` : '–';
      return `<tr${l.p === 1 ? ' class="base"' : ''}><td>${esc(l.group)}</td><td>${l.tp}</td><td>${l.p}</td><td>${n}</td>${metrics.map((m) => `<td>${fmt(l.stats[m], m === 'perplexity' ? 2 : 4)}</td>`).join('')}<td>${d}</td><td>${mb(l.commBytes)}</td></tr>`;
    })
    .join('\n');
  return `<table>${head}\n${body}</table>`;
}

/** The whole HTML document. */
export function reportHtml(data: ReportData, title: string): string {
  const specs = reportSpecs(data);
  const failed = data.rows.filter((r) => r.failed);
  const sections = specs.map((s) => `<section><h2>${esc(s.title)}</h2><div class="plot" id="${s.id}"></div></section>`);
  sections.splice(2, 0, `<section><h2>Every metric for p = 1 and each p &lt; 1 (mean ± standard error over seeds)</h2>${htmlTable(data)}</section>`);
  const embed = `
window.caatReport = { expected: ${specs.length}, rendered: 0, errors: [] };
const specs = ${JSON.stringify(specs.map((s) => ({ id: s.id, spec: { $schema: 'https://vega.github.io/schema/vega-lite/v6.json', ...s.spec } }))).replace(/</g, '\\u003c')};
for (const s of specs) {
  vegaEmbed('#' + s.id, s.spec, { actions: false, renderer: 'svg' })
    .then(() => { window.caatReport.rendered++; document.getElementById(s.id).dataset.rendered = '1'; })
    .catch((e) => { window.caatReport.errors.push(s.id + ': ' + e); console.error(e); });
}`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; } td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
tr.base td { background: #f3f3f3; } h2 { font-size: 16px; margin-top: 2em; } .note { color: #666; font-size: 13px; }
</style>
${libraries()}
</head><body>
<h1>${esc(title)}</h1>
<p class="note">${data.rows.length} cells from ${esc(data.sources.join(', '))}; mean ± standard error over seeds.${failed.length ? ` Failed cells (left out): ${esc(failed.map((r) => r.cell).join(', '))}.` : ''}${data.rows.some((r) => r.quality === 'training') ? ' Run folders: quality is the last validation loss measured during training.' : ''}</p>
${sections.join('\n')}
<script>${inline(embed)}</script>
</body></html>
`;
}

/** Write the HTML report and the markdown summary beside it; returns both texts. */
export function writeReport(data: ReportData, htmlFile: string, o: { title?: string } = {}): { html: string; md: string } {
  const title = o.title ?? 'caatnet sweep report';
  const html = reportHtml(data, title);
  const md = markdownSummary(data, title);
  fs.mkdirSync(path.dirname(path.resolve(htmlFile)), { recursive: true });
  fs.writeFileSync(htmlFile, html);
  fs.writeFileSync(`${htmlFile.replace(/\.html?$/, '')}.md`, md);
  return { html, md };
}
