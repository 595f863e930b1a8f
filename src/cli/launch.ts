/**
 * `caat launch --nproc N -- <command> [args…]`: N local processes of a caat command, each one rank of
 * a TCP group (torchrun-style variables, a free port on 127.0.0.1). For example
 *
 *     caat launch --nproc 2 -- train --tp 2 --p 0.5
 *
 * runs `caat train --tp 2 --p 0.5` as two processes. The command is a caat subcommand (run with this
 * Node.js and this caat), or, after `--exec`, any executable.
 */
import { fileURLToPath } from 'node:url';
import { launchLocal } from '../launch/local.js';
import { UserError } from './run.js';

export interface LaunchFlags {
  nproc: string;
  masterAddr?: string;
  masterPort?: string;
  exec?: boolean;
}

export async function launchCommand(args: string[], f: LaunchFlags): Promise<void> {
  const nproc = Number(f.nproc);
  if (!Number.isInteger(nproc) || nproc < 1) throw new UserError(`--nproc: expected a positive integer, got ${JSON.stringify(f.nproc)}`);
  if (args.length === 0) throw new UserError('nothing to launch: give a command after "--", e.g. caat launch --nproc 2 -- train --tp 2');
  let masterPort: number | undefined;
  if (f.masterPort !== undefined) {
    masterPort = Number(f.masterPort);
    if (!Number.isInteger(masterPort) || masterPort < 1 || masterPort > 65535) throw new UserError(`--master-port: not a TCP port: ${JSON.stringify(f.masterPort)}`);
  }
  const main = fileURLToPath(new URL('./main.js', import.meta.url));
  const command = f.exec ? args : [process.execPath, main, ...args];
  const res = await launchLocal({ nproc, command, ...(f.masterAddr ? { masterAddr: f.masterAddr } : {}), ...(masterPort ? { masterPort } : {}) });
  process.exitCode = res.code;
}
