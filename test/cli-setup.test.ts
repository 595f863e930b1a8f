/**
 * What a newcomer meets first: the `caat` binary stays executable after every build (npm test deletes
 * and rebuilds dist/), and when the automatic backend choice falls back from native, `caat` says once
 * which backend it uses, how much slower it is and the one command that fixes it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, test } from 'node:test';
import { NATIVE_FIX_COMMAND, nativeFallbackNotice } from '../src/backend/index.js';
import { writeSmallCorpus } from './helpers/corpus.js';
import { repoRoot } from './helpers/paths.js';

const cli = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
let tmp: string;

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'caat-setup-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

test('the built caat binary is executable and runs through its shebang', () => {
  const mode = fs.statSync(cli).mode;
  assert.equal(mode & 0o111, 0o111, `dist/src/cli/main.js has mode ${(mode & 0o777).toString(8)}, not executable`);
  const r = spawnSync(cli, ['--help'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /Usage: caat/);
  assert.match(r.stdout, /train/);
});

test('the package bin entry is the file the build makes executable', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { bin: Record<string, string>; scripts: Record<string, string> };
  assert.equal(path.resolve(repoRoot, pkg.bin['caat']!), cli);
  assert.match(pkg.scripts['build:ts']!, /chmodSync\('dist\/src\/cli\/main\.js',\s*0o755\)/);
  assert.ok(pkg.scripts['setup'], 'npm run setup exists');
});

test('the fallback notice names the backend, the cost and the fix', () => {
  const line = nativeFallbackNotice('wasm', 'no addon built');
  assert.match(line, /native backend is unavailable \(no addon built\)/);
  assert.match(line, /using wasm, about 4-5x slower/);
  assert.ok(line.endsWith(`Fix: ${NATIVE_FIX_COMMAND}`));
  assert.match(NATIVE_FIX_COMMAND, /apt-get install .*libdnnl-dev.*&& npm run build:native/);
});

test('caat train without the native addon prints the fallback notice once, then trains', () => {
  const empty = fs.mkdtempSync(path.join(tmp, 'no-addon-'));
  const corpus = writeSmallCorpus(path.join(tmp, 'corpus'));
  const env: Record<string, string> = { ...(process.env as Record<string, string>), CAAT_NATIVE_ADDON_DIR: empty };
  delete env['CAAT_BACKEND'];
  const r = spawnSync(
    process.execPath,
    [cli, 'train', '--data', corpus, '--vocab-size', '300', '--cache-dir', path.join(tmp, 'cache'), '--out', path.join(tmp, 'run'),
      '--hidden', '16', '--layers', '1', '--heads', '4', '--kv-heads', '4', '--ffn', '32', '--seq-len', '16', '--batch-size', '2',
      '--steps', '2', '--eval-every', '2', '--eval-batches', '1', '--ckpt-every', '2', '--workers', '0'],
    { encoding: 'utf8', env, timeout: 90_000 },
  );
  assert.equal(r.status, 0, r.stderr);
  const notices = r.stderr.split('\n').filter((l) => l.includes('native backend is unavailable'));
  assert.equal(notices.length, 1, r.stderr);
  assert.match(notices[0]!, /using wasm, about 4-5x slower for training\. Fix: sudo apt-get install/);
  assert.ok(fs.existsSync(path.join(tmp, 'run', 'latest')), 'the run finished with a checkpoint');
});

test("the README walk finds the README's commands in order and shortens only the main job", async () => {
  const walk = (await import(pathToFileURL(path.join(repoRoot, 'scripts', 'readme-walk.mjs')).href)) as {
    readmeCommands(readme: string): { main: string[]; then: string[] };
    rewrite(cmd: string): string;
  };
  const { main, then } = walk.readmeCommands(fs.readFileSync(path.join(repoRoot, 'README.md'), 'utf8'));
  assert.deepEqual(main, ['npm run setup', 'npx caat train', 'npm test']);
  assert.ok(then.some((c) => c.startsWith('npx caat generate --run runs/<run>')), then.join('\n'));
  assert.ok(then.some((c) => c.startsWith('npx caat eval --run runs/<run>')), then.join('\n'));
  assert.equal(walk.rewrite('npx caat train'), 'npx caat train --steps 30 --eval-every 15 --ckpt-every 15 --out runs/readme-walk');
  assert.equal(walk.rewrite('npm test'), 'npm test');
  assert.equal(walk.rewrite('npx caat train --resume runs/<run> --steps 2000'), 'npx caat train --resume runs/readme-walk --steps 40');
  assert.equal(walk.rewrite('npx caat eval --run runs/<run>'), 'npx caat eval --run runs/readme-walk');
  assert.throws(() => walk.readmeCommands('# no such section\n'), /The two commands/);
});
