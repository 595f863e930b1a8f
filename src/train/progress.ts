/**
 * Training progress: a progress bar (step, loss, tokens/s) on a TTY, plain log lines otherwise.
 */
import cliProgress from 'cli-progress';

export class Progress {
  private bar?: cliProgress.SingleBar;
  private lastLog = 0;
  private payload = { loss: '-', tps: '-' as string | number };
  private value = 0;

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
      this.value = start;
      this.bar.start(total, start, this.payload);
    }
  }

  update(step: number, loss: number, tokensPerS: number): void {
    if (this.bar) {
      this.payload = { loss: loss.toFixed(4), tps: Math.round(tokensPerS) };
      this.value = step;
      this.bar.update(step, this.payload);
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
      this.bar.start(this.total, this.value, this.payload);
    } else {
      this.stream.write(`${msg}\n`);
    }
  }

  stop(): void {
    this.bar?.stop();
  }
}
