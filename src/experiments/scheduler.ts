/**
 * Runs jobs side by side within a budget of cores: a job occupies `cores` cores while it runs, jobs
 * start in order whenever enough cores are free (a job wider than the machine runs alone), and at
 * most `maxJobs` run at once. A failing job does not stop the others; `stop()` lets running jobs
 * finish (or be killed by their owner) and starts no new ones.
 */
export interface Job<T> {
  cores: number;
  run: () => Promise<T>;
}

export type Outcome<T> = { ok: true; value: T } | { ok: false; error: unknown };

export class CoreScheduler {
  private stopped = false;

  constructor(
    readonly cores: number,
    readonly maxJobs: number = cores,
  ) {
    if (!(cores >= 1) || !(maxJobs >= 1)) throw new Error(`scheduler needs at least one core and one job slot (cores ${cores}, jobs ${maxJobs})`);
  }

  stop(): void {
    this.stopped = true;
  }

  async runAll<T>(jobs: Job<T>[]): Promise<Outcome<T>[]> {
    const out: Outcome<T>[] = new Array(jobs.length);
    let used = 0;
    let running = 0;
    let next = 0;
    return new Promise((resolve) => {
      const pump = (): void => {
        while (!this.stopped && next < jobs.length) {
          const j = jobs[next]!;
          const need = Math.min(j.cores, this.cores);
          if (running > 0 && (used + need > this.cores || running >= this.maxJobs)) break;
          const i = next++;
          used += need;
          running++;
          j.run().then(
            (value) => (out[i] = { ok: true, value }),
            (error: unknown) => (out[i] = { ok: false, error }),
          ).finally(() => {
            used -= need;
            running--;
            pump();
          });
        }
        if (running === 0 && (next >= jobs.length || this.stopped)) {
          for (let i = 0; i < jobs.length; i++) out[i] ??= { ok: false, error: new Error('not started: the sweep was stopped') };
          resolve(out);
        }
      };
      pump();
    });
  }
}
