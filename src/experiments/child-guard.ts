/**
 * Loaded (`node --import`) into every `caat` child process a sweep starts, which it connects with an
 * IPC channel: when the sweep dies, even by SIGKILL, the channel closes and the child ends at once
 * instead of training on alone into a folder the next sweep will resume. The channel does not keep
 * the child alive. A sweep that died while the child was still starting is caught by the parent
 * check (CAAT_SWEEP_PID is the sweep's pid; an orphan has another parent).
 */
if (process.channel) {
  process.channel.unref();
  process.on('disconnect', () => process.kill(process.pid, 'SIGTERM'));
  const sweep = Number(process.env['CAAT_SWEEP_PID']);
  delete process.env['CAAT_SWEEP_PID']; // not for processes this one starts
  if (sweep > 0 && process.ppid !== sweep) process.kill(process.pid, 'SIGTERM');
}
export {};
