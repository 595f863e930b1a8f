#!/usr/bin/env node
// Follows the README literally, as a newcomer would on a fresh machine: the commands of its section
// "The two commands" in the README's order (setup, the main job, the test command), then the commands
// of the "Then:" block on the run the main job made (generate, eval, resume). Fails on the first
// command that fails, naming it.
//
//   node scripts/readme-walk.mjs            walk in this checkout (CI: a fresh clone of main)
//   node scripts/readme-walk.mjs --clone    clone this checkout's HEAD into a temporary folder first
//
// The only changes to the README's commands: the main job is shortened (`npx caat train` gets
// --steps 30 and --out runs/readme-walk), `runs/<run>` becomes that folder, and a resume's --steps is
// lowered to 40. When CAAT_REQUIRE_BACKENDS names native, the main job must report the native backend.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = join(dirname(fileURLToPath(import.meta.url)), '..');
const RUN = 'runs/readme-walk';

function fail(msg) {
  console.error(`readme-walk: FAILED: ${msg}`);
  process.exit(1);
}

/** The commands of the README's "The two commands" section: its first sh block, then the "Then:" block. */
export function readmeCommands(readme) {
  const start = readme.indexOf('## The two commands');
  if (start < 0) throw new Error('README.md has no "## The two commands" section');
  const end = readme.indexOf('\n## ', start + 1);
  const section = readme.slice(start, end < 0 ? undefined : end);
  const blocks = [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]);
  if (blocks.length < 2) throw new Error('the "The two commands" section needs its commands block and its "Then:" block');
  const lines = (b) => b.split('\n').map((l) => l.replace(/\s+#.*$/, '').trim()).filter((l) => l !== '' && !l.startsWith('#'));
  return { main: lines(blocks[0]), then: lines(blocks[1]) };
}

/** The README command as the walk runs it (see the header). */
export function rewrite(cmd) {
  if (/^npx caat train\s*$/.test(cmd)) return `${cmd} --steps 30 --eval-every 15 --ckpt-every 15 --out ${RUN}`;
  let c = cmd.replaceAll('runs/<run>', RUN);
  if (/\s--resume\s/.test(c)) c = c.replace(/--steps\s+\d+/, '--steps 40');
  return c;
}

function runCommand(cwd, cmd) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    console.log(`\nreadme-walk: $ ${cmd}`);
    const child = spawn('sh', ['-c', cmd], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (c) => {
      output += c;
      process.stdout.write(c);
    });
    child.stderr.on('data', (c) => {
      output += c;
      process.stderr.write(c);
    });
    child.on('close', (code, signal) => resolve({ code, signal, output, seconds: (Date.now() - t0) / 1000 }));
  });
}

async function main() {
  let cwd = here;
  if (process.argv.includes('--clone')) {
    cwd = mkdtempSync(join(tmpdir(), 'caat-readme-'));
    const r = spawnSync('git', ['clone', '-q', here, cwd], { stdio: 'inherit' });
    if (r.status !== 0) fail(`git clone ${here} ${cwd}`);
  }
  const { main: first, then } = readmeCommands(readFileSync(join(cwd, 'README.md'), 'utf8'));
  const requireNative = (process.env.CAAT_REQUIRE_BACKENDS ?? '').split(',').includes('native');
  const times = [];
  for (const readmeCmd of [...first, ...then]) {
    const cmd = rewrite(readmeCmd);
    const r = await runCommand(cwd, cmd);
    times.push(`${r.seconds.toFixed(0)} s  ${cmd}`);
    if (r.code !== 0) fail(`\`${cmd}\` exited with ${r.code ?? r.signal}`);
    if (/^npx caat train/.test(cmd)) {
      const backend = /caatnet: backend (\S+)/.exec(r.output);
      if (!backend) fail('the main job did not say which backend it uses');
      if (requireNative && backend[1] !== 'native') fail(`the main job ran on ${backend[1]}, not native: ${r.output.match(/.*native backend is unavailable.*/)?.[0] ?? ''}`);
      if (!existsSync(join(cwd, RUN, 'latest'))) fail(`the main job left no checkpoint in ${RUN}`);
    }
    if (/^npm (run )?test\b/.test(cmd)) {
      const bin = join(cwd, 'dist', 'src', 'cli', 'main.js');
      if ((statSync(bin).mode & 0o111) !== 0o111) fail('dist/src/cli/main.js is not executable after the test command');
    }
  }
  console.log(`\nreadme-walk: every README command passed, in ${cwd}:\n  ${times.join('\n  ')}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
