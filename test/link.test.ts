/**
 * `caat bench link` pieces that need neither root nor MPI: the host → namespace mapping of the MPI run,
 * the generated rsh agent (run against a stand-in `ip` that prints its arguments), mpirun's arguments,
 * and the transport field of the records.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { describeCalibration, fitLink, hostfileText, linkHosts, linkRecords, mpirunArgs, rshAgentScript } from '../src/bench/link.js';

describe('bench link over MPI', () => {
  const hosts = linkHosts(['caatlink-7-r0', 'caatlink-7-r1', 'caatlink-7-r2']);

  it('maps rank r to the host 10.231.0.(r+1) in its namespace', () => {
    assert.deepEqual(hosts, [
      { addr: '10.231.0.1', ns: 'caatlink-7-r0' },
      { addr: '10.231.0.2', ns: 'caatlink-7-r1' },
      { addr: '10.231.0.3', ns: 'caatlink-7-r2' },
    ]);
    assert.equal(hostfileText(hosts), '10.231.0.1 slots=1\n10.231.0.2 slots=1\n10.231.0.3 slots=1\n');
  });

  it('the rsh agent runs the command in the host\'s namespace and refuses other hosts', { skip: process.platform === 'win32' ? 'needs /bin/sh' : false }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'caat-link-test-'));
    try {
      const agent = join(dir, 'agent.sh');
      writeFileSync(agent, rshAgentScript(hosts));
      chmodSync(agent, 0o755);
      // A stand-in for ip(8): prints its arguments, one per line.
      const ip = join(dir, 'ip');
      writeFileSync(ip, '#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n');
      chmodSync(ip, 0o755);
      const env = { ...process.env, PATH: `${dir}:${process.env['PATH'] ?? '/usr/bin:/bin'}` };
      const ok = spawnSync(agent, ['-x', '10.231.0.2', 'orted', '-mca', 'ess', '"env"'], { env, encoding: 'utf8' });
      assert.equal(ok.status, 0, ok.stderr);
      assert.deepEqual(ok.stdout.split('\n').filter(Boolean), ['netns', 'exec', 'caatlink-7-r1', '/bin/sh', '-c', 'orted -mca ess "env"']);
      const bad = spawnSync(agent, ['192.168.1.1', 'orted'], { env, encoding: 'utf8' });
      assert.equal(bad.status, 1);
      assert.equal(bad.stdout, '');
      assert.match(bad.stderr, /no namespace for host 192\.168\.1\.1/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses names that are not plain words', () => {
    assert.throws(() => rshAgentScript([{ addr: '10.231.0.1', ns: 'x; rm -rf /' }]), /unsafe/);
  });

  it('mpirun: one rank per host, the agent, TCP on the rank subnet only, no shared memory', () => {
    const args = mpirunArgs({ np: 2, hostfile: '/t/h', agent: '/t/a.sh', tmpdir: '/t', forward: ['PATH', 'CAAT_LINK_SPEC'], root: true, program: ['node', 'link.js', '--worker'] });
    const mca = (k: string): string | undefined => {
      const i = args.findIndex((a, j) => a === '--mca' && args[j + 1] === k);
      return i < 0 ? undefined : args[i + 2];
    };
    assert.equal(args[0], '--allow-run-as-root');
    assert.equal(mca('plm_rsh_agent'), '/t/a.sh');
    assert.equal(mca('pml'), 'ob1');
    assert.equal(mca('btl'), 'tcp,self');
    assert.equal(mca('btl_tcp_if_include'), '10.231.0.0/24');
    assert.equal(mca('oob_tcp_if_include'), '10.231.0.0/24');
    assert.equal(mca('mpi_yield_when_idle'), '1');
    assert.equal(mca('orte_tmpdir_base'), '/t');
    assert.deepEqual(args.slice(args.indexOf('--hostfile'), args.indexOf('--hostfile') + 4), ['--hostfile', '/t/h', '-np', '2']);
    assert.deepEqual(args.slice(-7), ['-x', 'PATH', '-x', 'CAAT_LINK_SPEC', 'node', 'link.js', '--worker']);
    assert.ok(!mpirunArgs({ np: 2, hostfile: 'h', agent: 'a', tmpdir: 't', forward: [], root: false, program: ['x'] }).includes('--allow-run-as-root'));
  });

  it('records carry the transport', () => {
    const row = (p: number, ms: number) => ({ p, phase: 'train' as const, ms, comm_ms: ms / 2, bytes: 1000 * p + 100, block_bytes: 1000 * p, calls: 10, block_calls: p > 0 ? 8 : 0 });
    const res = { calibration: { alpha_ms: 0.1, ms_per_byte: 1e-5 }, results: [row(1, 100), row(0, 40)] };
    const tcp = linkRecords('1gbit', 1e9, 2, res);
    const mpi = linkRecords('1gbit', 1e9, 2, res, 'mpi');
    assert.deepEqual(tcp.map((r) => r.transport), ['tcp', 'tcp']);
    assert.deepEqual(mpi.map((r) => r.transport), ['mpi', 'mpi']);
    assert.deepEqual(mpi.map(({ transport: _t, ...rest }) => rest), tcp.map(({ transport: _t, ...rest }) => rest));
    assert.equal(mpi[1]!.speedup, 2.5);
  });
});

describe('bench link calibration fit', () => {
  const MiB = 1 << 20;

  it('recovers α and β from exact affine costs', () => {
    const pts = [64 << 10, 256 << 10, MiB, 4 * MiB].map((b) => ({ bytes: b, ms: 0.25 + b * 8.5e-6 }));
    const f = fitLink(pts);
    assert.ok(Math.abs(f.alpha_ms - 0.25) < 1e-9, `alpha ${f.alpha_ms}`);
    assert.ok(Math.abs(f.ms_per_byte - 8.5e-6) < 1e-15, `beta ${f.ms_per_byte}`);
    assert.deepEqual(f.points, pts);
  });

  it('weighs relative error: a 10% error at 4 MiB moves the fit less than at 64 KiB would', () => {
    const exact = (b: number): number => 0.25 + b * 8.5e-6;
    const sizes = [64 << 10, 256 << 10, MiB, 4 * MiB];
    const f = fitLink(sizes.map((b) => ({ bytes: b, ms: b === 4 * MiB ? exact(b) * 1.1 : exact(b) })));
    // The 1 MiB prediction stays within 5% although the largest point is 10% off.
    const at1 = f.alpha_ms + MiB * f.ms_per_byte;
    assert.ok(Math.abs(at1 / exact(MiB) - 1) < 0.05, `1 MiB ${at1} vs ${exact(MiB)}`);
    assert.ok(f.ms_per_byte > 8.5e-6, 'the slower large point raises beta');
  });

  it('keeps α ≥ 0 and refits β through the origin when the intercept would be negative', () => {
    const f = fitLink([
      { bytes: MiB, ms: 8 },
      { bytes: 4 * MiB, ms: 40 },
    ]);
    assert.equal(f.alpha_ms, 0);
    // Weighted through-origin fit: Σ(b·t/t²) / Σ(b²/t²) over the two points.
    const w = (b: number, t: number): [number, number] => [(b * t) / (t * t), (b * b) / (t * t)];
    const [n1, d1] = w(MiB, 8);
    const [n2, d2] = w(4 * MiB, 40);
    assert.ok(Math.abs(f.ms_per_byte - (n1 + n2) / (d1 + d2)) < 1e-18);
  });

  it('refuses a single size, a non-positive cost, and a cost that falls with size', () => {
    assert.throws(() => fitLink([{ bytes: MiB, ms: 8 }, { bytes: MiB, ms: 9 }]), /two message sizes/);
    assert.throws(() => fitLink([{ bytes: MiB, ms: 8 }, { bytes: 4 * MiB, ms: -1 }]), /4194304-byte all-reduce has no positive cost/);
    assert.throws(() => fitLink([{ bytes: MiB, ms: 30 }, { bytes: 4 * MiB, ms: 10 }]), /does not grow/);
  });

  it('describes the points and the fit', () => {
    const line = describeCalibration(fitLink([{ bytes: 64 << 10, ms: 0.75 }, { bytes: MiB, ms: 9.25 }]));
    assert.match(line, /^cost per all-reduce 64 KiB 0\.75 ms, 1 MiB 9\.25 ms; fit α 0\.[0-9]{3} ms, β [0-9.]+ ms\/MiB$/);
  });
});
