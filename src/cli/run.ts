/**
 * Runs one CLI action: any error becomes a one-line message on stderr (with the cause chain) and a
 * non-zero exit status, never a stack trace for expected failures.
 */
export class UserError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UserError';
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
