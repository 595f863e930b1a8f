// Builds the native backend (N-API addon) with node-gyp against the local Node headers.
//
//   node native/build.mjs            (npm run build:native; also run by `npm install` via prepare)
//
// Detects oneDNN (dnnl.h + libdnnl) and OpenBLAS (an OpenBLAS cblas.h + libopenblas) and builds one
// addon, native/build/Release/caatnet_native.node, linked with every library found (both when both
// exist: the GEMM of each shape class is then chosen by measurement, see src/backend/gemm-choice.ts).
// If linking both fails it falls back to oneDNN alone, then OpenBLAS alone.
// CAAT_NATIVE_BLAS=openblas (or onednn) links only that library; CAAT_NATIVE_BLAS=none skips the build.
// It never fails the install: when no BLAS is found or the build fails it prints one line saying so
// and exits 0, and the native backend then reports itself unavailable. The compiler output goes to
// native/build/build.log.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const buildDir = join(here, 'build');
const releaseDir = join(buildDir, 'Release');
const logPath = join(buildDir, 'build.log');
const log = [];

function say(line) {
  console.log(`native: ${line}`);
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  log.push(`$ ${[cmd, ...args].join(' ')}${opts.env?.GYP_DEFINES ? `   (GYP_DEFINES="${opts.env.GYP_DEFINES}")` : ''}`);
  log.push(`${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}`.trimEnd());
  return r;
}

function multiarch() {
  const r = spawnSync('gcc', ['-print-multiarch'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : '';
}

const ma = multiarch();
const prefixes = [...new Set(['/usr', '/usr/local', process.env.CONDA_PREFIX].filter(Boolean))];
const incDirs = prefixes.flatMap((p) => [join(p, 'include'), ma ? join(p, 'include', ma) : '']).filter(Boolean);
const libDirs = [
  ...(process.env.LIBRARY_PATH ?? '').split(':').filter(Boolean),
  ...prefixes.flatMap((p) => [ma ? join(p, 'lib', ma) : '', join(p, 'lib64'), join(p, 'lib')]).filter(Boolean),
];

function findLib(name) {
  return libDirs.find((d) => existsSync(join(d, `lib${name}.so`)));
}

function detectOneDnn() {
  const inc = incDirs.find((d) => existsSync(join(d, 'dnnl.h')));
  const lib = findLib('dnnl');
  return inc && lib ? { inc, lib } : undefined;
}

function detectOpenBlas() {
  // An OpenBLAS cblas.h (it declares openblas_set_num_threads), possibly in a subdirectory.
  const subdirs = ['', 'openblas', 'openblas-pthread', 'openblas-openmp', 'openblas64'];
  let inc;
  for (const d of incDirs) {
    for (const s of subdirs) {
      const f = join(d, s, 'cblas.h');
      try {
        if (existsSync(f) && readFileSync(f, 'utf8').includes('openblas_set_num_threads')) {
          inc = join(d, s);
          break;
        }
      } catch {
        // unreadable: keep looking
      }
    }
    if (inc) break;
  }
  const lib = findLib('openblas');
  return inc && lib ? { inc, lib } : undefined;
}

function nodeGypCommand() {
  const candidates = [process.env.npm_config_node_gyp];
  try {
    candidates.push(createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js'));
  } catch {
    // not installed locally
  }
  candidates.push(join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  for (const c of candidates) if (c && existsSync(c)) return [process.execPath, [c]];
  const r = spawnSync('node-gyp', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? ['node-gyp', []] : undefined;
}

// Build against the headers of the running Node when they are installed (no download needed).
function nodeDirArgs() {
  const prefix = join(dirname(process.execPath), '..');
  const inc = join(prefix, 'include', 'node');
  return existsSync(join(inc, 'node_api.h')) && existsSync(join(inc, 'common.gypi')) ? [`--nodedir=${prefix}`] : [];
}

const defaultIncDirs = new Set(['/usr/include', '/usr/local/include', ma ? `/usr/include/${ma}` : '']);
const defaultLibDirs = new Set(['/usr/lib', '/usr/lib64', '/usr/local/lib', ma ? `/usr/lib/${ma}` : '']);

function gypDefines(libs, found) {
  const d = [`caat_onednn=${libs.includes('onednn') ? 1 : 0}`, `caat_openblas=${libs.includes('openblas') ? 1 : 0}`];
  const f = libs.map((b) => found[b]);
  // One extra include / library directory at most (the usual case needs none); gyp splits GYP_DEFINES
  // on spaces, so such paths must not contain spaces.
  const inc = f.map((x) => x.inc).find((x) => !defaultIncDirs.has(x));
  const lib = f.map((x) => x.lib).find((x) => !defaultLibDirs.has(x));
  if (inc) d.push(`caat_blas_include=${inc}`);
  if (lib) d.push(`caat_blas_libdir=${lib}`);
  return d.join(' ');
}

// Load an addon in a fresh process and run a 2x2 GEMM through every implementation it has.
function smokeTest(file, libs) {
  const code = `
    const a = require(${JSON.stringify(file)});
    const i = a.info();
    for (const l of ${JSON.stringify(libs)}) if (!i.libraries[l]) throw new Error('built without ' + l);
    const A = new Float32Array([1, 2, 3, 4]), B = new Float32Array([5, 6, 7, 8]);
    for (const impl of a.gemmImpls().filter((x) => x.built)) {
      const C = new Float32Array(4).fill(NaN);
      a.gemm(false, false, 2, 2, 2, 1, A, 0, 2, B, 0, 2, 0, C, 0, 2, impl.id);
      if (C.join() !== '19,22,43,50') throw new Error(impl.name + ' GEMM gave ' + C.join());
    }
    console.log(Object.entries(i.libraries).filter(([, v]) => v).map(([k, v]) => k + ' ' + v).join(', '));`;
  const r = run(process.execPath, ['-e', code]);
  return r.status === 0 ? r.stdout.trim() : undefined;
}

function writeLog() {
  try {
    mkdirSync(buildDir, { recursive: true });
    writeFileSync(logPath, log.join('\n') + '\n');
  } catch {
    // the log is a convenience
  }
}

function main() {
  const want = (process.env.CAAT_NATIVE_BLAS ?? '').toLowerCase();
  if (want === 'none' || want === 'off') {
    say('skipped (CAAT_NATIVE_BLAS=none); the native backend is unavailable');
    return;
  }
  if (want !== '' && want !== 'auto' && want !== 'onednn' && want !== 'openblas') {
    say(`skipped: CAAT_NATIVE_BLAS="${want}" is not one of onednn, openblas, none; the native backend is unavailable`);
    return;
  }
  const found = { onednn: detectOneDnn(), openblas: detectOpenBlas() };
  const usable = (b) => (want === '' || want === 'auto' || want === b) && found[b] !== undefined;
  const libs = ['onednn', 'openblas'].filter(usable);
  if (libs.length === 0) {
    const what = want === 'onednn' ? 'oneDNN (dnnl.h + libdnnl)' : want === 'openblas' ? 'OpenBLAS (cblas.h + libopenblas)'
      : 'neither oneDNN (dnnl.h + libdnnl) nor OpenBLAS (cblas.h + libopenblas)';
    say(`skipped: ${what} ${want === 'onednn' || want === 'openblas' ? 'not found' : 'found'}; the native backend is unavailable (install libdnnl-dev or libopenblas-dev, then npm run build:native)`);
    return;
  }
  const gyp = nodeGypCommand();
  if (!gyp) {
    say('skipped: node-gyp not found; the native backend is unavailable');
    return;
  }
  const [cmd, pre] = gyp;
  // Both libraries in one addon first; then each alone.
  const attempts = libs.length === 2 ? [libs, ['onednn'], ['openblas']] : [libs];
  // An addon of an earlier layout (one per library) would only confuse the loader.
  rmSync(join(releaseDir, 'caatnet_native_openblas.node'), { force: true });

  for (const set of attempts) {
    const env = { ...process.env, GYP_DEFINES: gypDefines(set, found) };
    const r = run(cmd, [...pre, 'rebuild', ...nodeDirArgs(), '-j', '2'], { cwd: here, env });
    if (r.status !== 0) continue;
    const v = smokeTest(join(releaseDir, 'caatnet_native.node'), set);
    if (!v) continue;
    writeLog();
    say(`built caatnet_native.node (${v.replace('onednn', 'oneDNN').replace('openblas', 'OpenBLAS')}) in ${relative(process.cwd(), releaseDir) || '.'}`);
    return;
  }
  for (const f of ['caatnet_native.node', 'caatnet_native_openblas.node']) rmSync(join(releaseDir, f), { force: true });
  writeLog();
  say(`build failed (see ${relative(process.cwd(), logPath)}); the native backend is unavailable`);
}

try {
  main();
} catch (e) {
  writeLog();
  say(`build failed (${e instanceof Error ? e.message : String(e)}); the native backend is unavailable`);
}
process.exit(0);
