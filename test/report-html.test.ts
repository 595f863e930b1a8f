/**
 * `caat report` on a sweep folder: the HTML opens in headless Chromium (Debian's) without console
 * errors, every plot renders (an SVG with marks), a screenshot is not blank, the page loads nothing
 * from the network, and the markdown summary holds the mean ± standard error over seeds.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { inflateSync } from 'node:zlib';
import { chromium } from 'playwright-core';
import { repoRoot } from './helpers/paths.js';

const cli = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
const CHROMIUM = '/usr/bin/chromium';
let tmp: string;

/** A synthetic sweep folder: 2 N × 3 p × 2 seeds, metrics curves, results rows and a bench link output. */
function writeSweep(dir: string): void {
  fs.mkdirSync(path.join(dir, 'cells'), { recursive: true });
  const rows: string[] = [];
  for (const tp of [2, 4]) {
    for (const p of [1, 0.5, 0]) {
      for (const seed of [1, 2]) {
        const cell = `tp${tp}-p${p}-seed${seed}`;
        const runDir = path.join(dir, 'cells', cell);
        fs.mkdirSync(runDir, { recursive: true });
        const final = 4 + 0.1 * (1 - p) + 0.01 * seed + 0.02 * (tp - 2);
        const lines: string[] = [];
        for (let step = 1; step <= 20; step++) {
          const loss = final + 3 / step;
          const rec: Record<string, number> = { step, loss, comm_bytes: 1000 + 8000 * p, ms_per_step: 10 };
          if (step % 5 === 0) rec['val_loss'] = loss + 0.05;
          lines.push(JSON.stringify(rec));
        }
        fs.writeFileSync(path.join(runDir, 'metrics.jsonl'), `${lines.join('\n')}\n`);
        rows.push(
          JSON.stringify({
            cell, dir: `cells/${cell}`, status: 'ok', grid: { tp, p, seed }, settings: { tp, p, seed, hidden: 16 }, step: 20,
            metrics: { val_loss: final, perplexity: Math.exp(final), bits_per_byte: final / 1.5 },
            stderr: { val_loss: null }, tasks: [{ task: 'toy', metric: 'acc', value: 0.5 + 0.1 * p, stderr: 0.01, n: 100 }],
            comm_bytes_per_step: { total: 1000 + 8000 * p }, wall_s: { train: 1, eval: 1, steps: 0.2 },
          }),
        );
      }
    }
  }
  fs.writeFileSync(path.join(dir, 'results.jsonl'), `${rows.join('\n')}\n`);
  const bench = [1, 0.5, 0].map((p) => JSON.stringify({ transport: 'tcp', rate: '1gbit', tp: 2, p, phase: 'train', ms: 100, comm_ms: 50, bytes: 1, speedup: 1 + (1 - p), predicted_speedup: 1 + 1.1 * (1 - p), nominal_predicted_speedup: 1, link_alpha_ms: 0.1, link_gbps: 0.9 }));
  fs.writeFileSync(path.join(dir, 'bench-link.jsonl'), `${bench.join('\n')}\n`);
}

/** Distinct colours among a sample of pixels of a PNG (8-bit RGB or RGBA, non-interlaced). */
function distinctColours(png: Buffer): number {
  let off = 8;
  let width = 0;
  let height = 0;
  let channels = 0;
  const idat: Buffer[] = [];
  while (off < png.length) {
    const len = png.readUInt32BE(off);
    const type = png.toString('ascii', off + 4, off + 8);
    const data = png.subarray(off + 8, off + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      assert.equal(data[8], 8, 'bit depth');
      channels = data[9] === 6 ? 4 : data[9] === 2 ? 3 : 0;
      assert.ok(channels > 0, `colour type ${data[9]}`);
    } else if (type === 'IDAT') idat.push(data);
    off += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const out = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)]!;
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? out[y * stride + x - channels]! : 0;
      const b = y > 0 ? out[(y - 1) * stride + x]! : 0;
      const c = x >= channels && y > 0 ? out[(y - 1) * stride + x - channels]! : 0;
      const v = raw[y * (stride + 1) + 1 + x]!;
      const pa = Math.abs(b - c), pb = Math.abs(a - c), pc = Math.abs(a + b - 2 * c);
      const pred = f === 0 ? 0 : f === 1 ? a : f === 2 ? b : f === 3 ? (a + b) >> 1 : pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      out[y * stride + x] = (v + pred) & 255;
    }
  }
  const colours = new Set<number>();
  for (let i = 0; i < height * width; i += 7) colours.add(out.readUIntBE(i * channels, 3));
  return colours.size;
}

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'caat-report-'));
  writeSweep(path.join(tmp, 'sweep'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('caat report', () => {
  test('HTML renders every plot in headless Chromium without console errors, offline', async () => {
    const dir = path.join(tmp, 'sweep');
    const r = spawnSync(process.execPath, [cli, 'report', dir], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    const html = path.join(dir, 'report.html');
    const md = fs.readFileSync(path.join(dir, 'report.md'), 'utf8');
    assert.equal(r.stdout, md);
    // p = 0.5, N = 2: seeds 4.06 and 4.07 → mean 4.065, standard error 0.005; Δ vs p = 1 (4.015): +0.05
    assert.match(md, /\| all \| 2 \| 0\.5 \| 2 \| 4\.0650 ± 0\.0050 \|/);
    assert.match(md, /\+0\.0500 ± 0\.0071/);
    assert.match(md, /toy\/acc/);
    assert.match(md, /\| tcp \| 1gbit \| train \| 0\.5 \| 1\.50 \| 1\.55 \|/);
    const text = fs.readFileSync(html, 'utf8');
    assert.doesNotMatch(text, /<script[^>]+src=/, 'no external scripts');

    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install -y --no-install-recommends chromium`);
    const profile = fs.mkdtempSync(path.join(tmp, 'profile-'));
    const ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1200, height: 900 },
    });
    try {
      const page = await ctx.newPage();
      const problems: string[] = [];
      const requests: string[] = [];
      page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') problems.push(`${m.type()}: ${m.text()}`); });
      page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
      page.on('request', (q) => { if (!q.url().startsWith('file:') && !q.url().startsWith('data:')) requests.push(q.url()); });
      await page.goto(`file://${html}`);
      // (page-side code as strings: it runs in the browser, not in Node)
      await page.waitForFunction('window.caatReport && window.caatReport.rendered + window.caatReport.errors.length === window.caatReport.expected', undefined, { timeout: 30_000 });
      const state = (await page.evaluate('window.caatReport')) as { expected: number; rendered: number; errors: string[] };
      assert.deepEqual(state.errors, []);
      assert.equal(state.expected, 4, 'curves, loss against p, quality against bytes, bench link');
      assert.equal(state.rendered, 4);
      const marks = (await page.evaluate(
        "[...document.querySelectorAll('.plot')].map((d) => ({ id: d.id, svg: d.querySelectorAll('svg').length, paths: d.querySelectorAll('svg path, svg line, svg text').length }))",
      )) as { id: string; svg: number; paths: number }[];
      assert.equal(marks.length, 4);
      for (const m of marks) {
        assert.equal(m.svg, 1, `${m.id}: no SVG`);
        assert.ok(m.paths > 10, `${m.id}: only ${m.paths} marks`);
      }
      assert.deepEqual(problems, []);
      assert.deepEqual(requests, []);
      const shot = await page.screenshot({ fullPage: true });
      fs.writeFileSync(process.env['CAAT_REPORT_SCREENSHOT'] ?? path.join(tmp, 'report.png'), shot);
      assert.ok(distinctColours(shot) > 20, 'the screenshot is (nearly) blank');
    } finally {
      await ctx.close();
    }
  });

  test('plain run folders: the quality is the last validation loss of training', () => {
    const dirs = [1, 2].map((seed) => {
      const d = path.join(tmp, `run${seed}`);
      fs.mkdirSync(d);
      fs.writeFileSync(path.join(d, 'run.json'), JSON.stringify({ model: { hidden: 16, layers: 1, heads: 2, kvHeads: 2, ffn: 32 }, parallel: { tp: 2, p: 0.5, privateScale: 'sqrt' }, train: { seed, steps: 4 }, data: { corpus: 'x' } }));
      fs.writeFileSync(path.join(d, 'metrics.jsonl'), [1, 2, 3, 4].map((s) => JSON.stringify({ step: s, loss: 5 - s / 10, comm_bytes: 500, ...(s % 2 === 0 ? { val_loss: 5 - s / 10 + seed / 100 } : {}) })).join('\n') + '\n');
      return d;
    });
    const out = path.join(tmp, 'runs.html');
    const r = spawnSync(process.execPath, [cli, 'report', ...dirs, '--out', out, '--title', 'Two runs'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    // seeds 1 and 2: 4.61 and 4.62 → 4.6150 ± 0.0050
    assert.match(r.stdout, /^# Two runs\n/);
    assert.match(r.stdout, /quality is the last validation loss measured during training/);
    assert.match(r.stdout, /\| all \| 2 \| 0\.5 \| 2 \| 4\.6150 ± 0\.0050 \|/);
    assert.ok(fs.existsSync(path.join(tmp, 'runs.md')));
  });

  test('a run folder that is neither a sweep nor a run is refused, naming it', () => {
    const bad = path.join(tmp, 'empty');
    fs.mkdirSync(bad);
    const r = spawnSync(process.execPath, [cli, 'report', bad], { encoding: 'utf8' });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /empty: neither a sweep folder \(results\.jsonl\) nor a run folder \(run\.json\)/);
  });
});
