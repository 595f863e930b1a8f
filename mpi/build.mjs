// Builds the optional MPI addon (mpi/build/Release/caatnet_mpi.node) with node-gyp, offline.
//
// The MPI library is found with pkg-config: Open MPI (`ompi-c`) first, then MPICH (`mpich`);
// CAAT_MPI_PKG=<pkg-config name> chooses one explicitly. Without pkg-config, the flags come from the
// compiler wrapper (`mpicc --showme:…` for Open MPI, `mpicc -compile_info/-link_info` for MPICH;
// MPICC=<path> chooses it). Without any of them (no libopenmpi-dev / no libmpich-dev) the build is skipped and the install still succeeds: the MPI transport then reports
// itself unavailable with the reason written to mpi/build/status.json.
//
// A failing compilation is reported but is not fatal either, unless CAAT_MPI=1 (MPI required), which
// turns every skip and failure into a non-zero exit. CAAT_MPI=0 skips the build.
//
// node-gyp: npm's bundled copy (npm_config_node_gyp, set by npm for scripts, or the one next to this
// node), else `node-gyp` on the PATH. Headers: the local Node installation (--nodedir), so nothing is
// downloaded.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const buildDir = join(here, 'build');
const required = process.env.CAAT_MPI === '1';

function writeStatus(status) {
  mkdirSync(buildDir, { recursive: true });
  writeFileSync(join(buildDir, 'status.json'), `${JSON.stringify({ ...status, time: new Date().toISOString() }, null, 2)}\n`);
}

function skip(reason) {
  // An addon left from an earlier build would contradict the status: remove it.
  rmSync(join(buildDir, 'Release', 'caatnet_mpi.node'), { force: true });
  writeStatus({ built: false, reason });
  if (required) {
    console.error(`mpi: ${reason} (CAAT_MPI=1 requires the MPI addon)`);
    process.exit(1);
  }
  console.log(`mpi: skipped, ${reason}; the MPI transport will be unavailable`);
  process.exit(0);
}

if (process.env.CAAT_MPI === '0') skip('CAAT_MPI=0');

function run(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) return { ok: false, missing: true, out: '' };
  return { ok: r.status === 0, missing: false, out: (r.stdout ?? '').trim() };
}

/** Flags from pkg-config (Open MPI's ompi-c, then MPICH's mpich), or null. */
function fromPkgConfig() {
  const names = process.env.CAAT_MPI_PKG ? [process.env.CAAT_MPI_PKG] : ['ompi-c', 'mpich'];
  for (const name of names) {
    const r = run('pkg-config', ['--exists', name]);
    if (r.missing) return null;
    if (!r.ok) continue;
    return {
      source: `pkg-config ${name}`,
      version: run('pkg-config', ['--modversion', name]).out,
      cflags: run('pkg-config', ['--cflags', name]).out,
      libs: run('pkg-config', ['--libs', name]).out,
      libdir: run('pkg-config', ['--variable=libdir', name]).out,
    };
  }
  return null;
}

/** Flags from the mpicc wrapper (Open MPI: --showme:…; MPICH: -compile_info / -link_info), or null. */
function fromMpicc() {
  const mpicc = process.env.MPICC || 'mpicc';
  const ompi = run(mpicc, ['--showme:compile']);
  if (ompi.missing) return null;
  if (ompi.ok) {
    const libs = run(mpicc, ['--showme:link']).out;
    const libdir = run(mpicc, ['--showme:libdirs']).out.split(/\s+/)[0] ?? '';
    const version = (run('mpirun', ['--version']).out.split('\n')[0] ?? '').replace(/^.*\)\s*/, '');
    return { source: `${mpicc} --showme`, version: version || 'unknown', cflags: ompi.out, libs, libdir };
  }
  const c = run(mpicc, ['-compile_info']);
  const l = run(mpicc, ['-link_info']);
  if (c.ok && l.ok) {
    const strip = (s) => s.split(/\s+/).filter((f) => f.startsWith('-I') || f.startsWith('-L') || f.startsWith('-l') || f.startsWith('-Wl')).join(' ');
    const libs = strip(l.out);
    const libdir = libs.split(/\s+/).find((f) => f.startsWith('-L'))?.slice(2) ?? '';
    return { source: `${mpicc} -show`, version: 'unknown', cflags: strip(c.out), libs, libdir };
  }
  return null;
}

const found = fromPkgConfig() ?? fromMpicc();
if (found === null) {
  skip('no MPI development files found (neither pkg-config ompi-c / mpich nor mpicc; apt-get install libopenmpi-dev)');
}
const include = found.cflags.split(/\s+/).filter((f) => f.startsWith('-I')).map((f) => f.slice(2));
if (!include.some((d) => existsSync(join(d, 'mpi.h'))) && !existsSync('/usr/include/mpi.h')) {
  skip(`${found.source} names no directory holding mpi.h (apt-get install libopenmpi-dev)`);
}
const what = `${found.source} ${found.version}`;

function findNodeGyp() {
  const fromNpm = process.env.npm_config_node_gyp;
  if (fromNpm && existsSync(fromNpm)) return [process.execPath, fromNpm];
  const prefix = resolve(dirname(process.execPath), '..');
  for (const p of [
    join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    join(prefix, 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ]) {
    if (existsSync(p)) return [process.execPath, p];
  }
  const r = spawnSync('node-gyp', ['--version'], { encoding: 'utf8' });
  if (!r.error && r.status === 0) return ['node-gyp'];
  return null;
}

const gyp = findNodeGyp();
if (gyp === null) skip('node-gyp not found (it ships with npm)');

const args = [...gyp.slice(1), 'rebuild', '--release'];
const nodeDir = resolve(dirname(process.execPath), '..');
if (existsSync(join(nodeDir, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${nodeDir}`);

console.log(`mpi: building caatnet_mpi.node against ${what}`);
const t0 = Date.now();
const r = spawnSync(gyp[0], args, {
  cwd: here,
  encoding: 'utf8',
  env: { ...process.env, CAAT_MPI_CFLAGS: found.cflags, CAAT_MPI_LIBS: found.libs, CAAT_MPI_LIBDIR: found.libdir },
});
if (r.error || r.status !== 0) {
  const tail = `${r.stdout ?? ''}\n${r.stderr ?? ''}`.trim().split('\n').slice(-25).join('\n');
  console.error(tail);
  const reason = `the build against ${what} failed${r.error ? `: ${r.error.message}` : ` (node-gyp exit status ${r.status})`}`;
  writeStatus({ built: false, reason, source: found.source, version: found.version });
  if (required) {
    console.error(`mpi: ${reason}`);
    process.exit(1);
  }
  console.warn(`mpi: ${reason}; the MPI transport will be unavailable`);
  process.exit(0);
}
writeStatus({ built: true, source: found.source, version: found.version });
console.log(`mpi: built mpi/build/Release/caatnet_mpi.node (${what}) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
