/**
 * Loaded (`node --import`) into every `caat` child process a sweep starts, which it connects with an
 * IPC channel: when the sweep dies, even by SIGKILL, the channel closes and the child ends at once
 * instead of training on alone into a folder the next sweep will resume. The channel does not keep
 * the child alive.
 */
if (process.channel) {
  process.channel.unref();
  process.on('disconnect', () => process.kill(process.pid, 'SIGTERM'));
}
export {};
