/** Scoring progress on stderr: a bar on a terminal, a line every few seconds otherwise. */
import cliProgress from 'cli-progress';

export function scoringProgress(label: string, stream: NodeJS.WriteStream = process.stderr): { update: (done: number, total: number) => void; stop: () => void } {
  let bar: cliProgress.SingleBar | undefined;
  let last = 0;
  const t0 = Date.now();
  return {
    update(done, total) {
      if (stream.isTTY && !process.env['CI']) {
        if (!bar) {
          bar = new cliProgress.SingleBar({ format: `${label} |{bar}| {value}/{total} requests | eta {eta_formatted}`, stream, hideCursor: true }, cliProgress.Presets.shades_classic);
          bar.start(total, 0);
        }
        bar.update(done);
        return;
      }
      const now = Date.now();
      if (now - last > 5000 || done === total) {
        if (now - t0 > 2000 || done < total) stream.write(`${label}: ${done}/${total} requests (${((now - t0) / 1000).toFixed(0)} s)\n`);
        last = now;
      }
    },
    stop() {
      bar?.stop();
    },
  };
}
