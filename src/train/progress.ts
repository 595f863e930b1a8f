/**
 * Training progress: a progress bar (step, loss, tokens/s) on a TTY, plain log lines otherwise.
 */
import cliProgress from 'cli-progress';

export class Progress {
  private bar?: cliProgress.SingleBar;
  private lastLog = 0;

  constructor(
    private readonly total: number,
    start: number,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {
    if (stream.isTTY && !process.env['CI']) {
      this.bar = new cliProgress.SingleBar(
        {
          format: 'train |{bar}| step {value}/{total} | loss {loss} | {tps} tok/s | eta {eta_formatted}',
          stream,
          hideCursor: true,
          etaBuffer: 20,
        },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(total, start, { loss: '-', tps: '-' });
    }
  }

  update(step: number, loss: number, tokensPerS: number): void {
    if (this.bar) {
      this.bar.update(step, { loss: loss.toFixed(4), tps: Math.round(tokensPerS) });
      return;
    }
    const now = Date.now();
    if (step === 1 || step === this.total || now - this.lastLog > 2000) {
      this.lastLog = now;
      this.stream.write(`step ${step}/${this.total}  loss ${loss.toFixed(4)}  ${Math.round(tokensPerS)} tok/s\n`);
    }
  }

  /** A message that should not be overwritten by the bar. */
  note(msg: string): void {
    if (this.bar) {
      this.bar.stop();
      this.stream.write(`${msg}\n`);
      const cur = (this.bar as unknown as { value: number }).value;
      this.bar.start(this.total, cur);
    } else {
      this.stream.write(`${msg}\n`);
    }
  }

  stop(): void {
    this.bar?.stop();
  }
}
