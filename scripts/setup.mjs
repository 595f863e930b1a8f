#!/usr/bin/env node
// `npm run setup`: the README's first command on a fresh machine.
//
//   npm run setup              installs the native backend's prerequisites, then `npm ci`
//   npm run setup -- --mpi     also Open MPI (the optional MPI transport)
//
// 1. On Debian or Ubuntu, as root or with password-less sudo, installs the Debian packages the fast
//    native backend is built from (oneDNN and OpenBLAS, plus a C++ toolchain when missing), and with
//    --mpi Open MPI's headers and mpirun. Packages already installed are not touched, and apt-get update
//    runs only when something is missing.
// 2. Runs `npm ci`, which compiles the TypeScript, the WebAssembly kernels and the native addon.
// 3. Says in one line which backend `caat` will use: native, or, when it could not be built, the
//    fallback, how much slower it is and the one command that fixes it.
// Where nothing can be installed (no apt-get, no root, no sudo) it says which packages to install and
// still runs `npm ci`, so the project works on the slower backends.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const unknown = args.filter((a) => a !== '--mpi' && a !== '--no-install');
if (unknown.length > 0) {
  console.error(`setup: unknown argument ${unknown[0]} (expected --mpi or --no-install)`);
  process.exit(2);
}
const wantMpi = args.includes('--mpi');
const noInstall = args.includes('--no-install');

const NATIVE_PACKAGES = ['libdnnl-dev', 'libopenblas-dev'];
const TOOLCHAIN = [
  ['g++', 'g++'],
  ['make', 'make'],
  ['python3', 'python3'],
];
const MPI_PACKAGES = ['libopenmpi-dev', 'openmpi-bin'];

function say(line) {
  console.log(`setup: ${line}`);
}

function has(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

function installed(pkg) {
  const r = spawnSync('dpkg-query', ['-W', '-f=${Status}', pkg], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.includes('install ok installed');
}

/** How to run apt-get here: directly as root, through password-less sudo, or not at all (with why). */
function aptRunner() {
  if (!has('apt-get') || !has('dpkg-query')) return { why: 'this is not a Debian or Ubuntu system (no apt-get)' };
  if (process.getuid?.() === 0) return { prefix: [] };
  if (has('sudo') && spawnSync('sudo', ['-n', 'true'], { stdio: 'ignore' }).status === 0) return { prefix: ['sudo'] };
  return { why: 'apt-get needs root, and sudo is not available without a password' };
}

function run(cmd, argv, env = process.env) {
  const r = spawnSync(cmd, argv, { stdio: 'inherit', env, cwd: root });
  return r.status ?? 1;
}

const wanted = [...NATIVE_PACKAGES, ...TOOLCHAIN.filter(([cmd]) => !has(cmd)).map(([, pkg]) => pkg), ...(wantMpi ? MPI_PACKAGES : [])];
const apt = noInstall ? { why: '--no-install was given' } : aptRunner();
const missing = apt.prefix ? wanted.filter((p) => !installed(p)) : wanted;

if (!apt.prefix) {
  say(`cannot install the native backend's prerequisites: ${apt.why}. Install ${wanted.join(', ')} yourself for the fast path.`);
} else if (missing.length === 0) {
  say(`native prerequisites already installed (${wanted.join(', ')})`);
} else {
  say(`installing ${missing.join(' ')} with apt-get${apt.prefix.length ? ' (sudo)' : ''}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const [cmd, ...pre] = [...apt.prefix, 'apt-get'];
  let rc = run(cmd, [...pre, 'update', '-qq'], env);
  if (rc === 0) rc = run(cmd, [...pre, 'install', '-y', '-qq', '--no-install-recommends', ...missing], env);
  if (rc !== 0) say(`apt-get failed (exit ${rc}); continuing without the native prerequisites`);
}

const npmEnv = wantMpi ? { ...process.env, CAAT_MPI: process.env.CAAT_MPI ?? '1' } : process.env;
const rc = run(process.platform === 'win32' ? 'npm.cmd' : 'npm', ['ci', '--no-audit', '--no-fund'], npmEnv);
if (rc !== 0) {
  say(`npm ci failed (exit ${rc})`);
  process.exit(rc);
}

// Which backend `caat` will use from now on, in one line that does not scroll past inside npm's output.
const entry = join(root, 'dist', 'src', 'backend', 'index.js');
if (!existsSync(entry)) {
  say('the TypeScript build is missing (dist/); run npm run build');
  process.exit(1);
}
const { probeBackends, nativeFallbackNotice } = await import(pathToFileURL(entry).href);
const probed = probeBackends();
const native = probed.find((b) => b.name === 'native');
if (native.backend) {
  say(`ready: caat uses the native backend (${native.backend.description})`);
} else {
  const fallback = probed.find((b) => b.backend);
  say(`ready, but ${nativeFallbackNotice(fallback.backend.name, native.reason).replace(/^caatnet: /, '')}`);
}
