/** Process checks shared by the tests that kill and restart child processes. */
import * as fs from 'node:fs';

/** Whether a process is running (an exited one that nobody has reaped yet, a zombie, is not). */
export function running(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '')[0] !== 'Z';
  } catch {
    return false;
  }
}
