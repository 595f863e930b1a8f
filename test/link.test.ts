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
import { hostfileText, linkHosts, linkRecords, mpirunArgs, rshAgentScript } from '../src/bench/link.js';

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
