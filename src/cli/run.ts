/**
 * Runs one CLI action: any error becomes a one-line message on stderr (with the cause chain) and a
 * non-zero exit status, never a stack trace for expected failures.
 */
import * as fs from 'node:fs';

export class UserError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UserError';
  }
}

/** A JSON file given on the command line, parsed; a missing file or bad JSON is a UserError naming the file. */
export function readJsonFile(file: string): unknown {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new UserError(`${file}: ${err.code === 'ENOENT' ? 'no such file' : `not valid JSON (${err.message})`}`);
  }
}

export async function runCli(action: () => Promise<void>): Promise<void> {
  try {
    await action();
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    process.stderr.write(`caat: error: ${msg}\n`);
    if (process.env['CAAT_DEBUG'] && e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n`);
    process.exitCode = process.exitCode && process.exitCode !== 0 ? process.exitCode : 1;
  }
}
