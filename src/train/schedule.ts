/** Learning-rate schedule: linear warm-up from 0 to `lr`, then cosine decay to `minLr` at `steps`. */
export interface ScheduleConfig {
  lr: number;
  minLr: number;
  warmup: number;
  steps: number;
}

/** Learning rate for optimiser step `step` (1-based, the step about to be taken). */
export function lrAt(cfg: ScheduleConfig, step: number): number {
  if (cfg.warmup > 0 && step <= cfg.warmup) return (cfg.lr * step) / cfg.warmup;
  if (step >= cfg.steps) return cfg.minLr;
  const span = Math.max(1, cfg.steps - cfg.warmup);
  const t = (step - cfg.warmup) / span;
  return cfg.minLr + 0.5 * (cfg.lr - cfg.minLr) * (1 + Math.cos(Math.PI * t));
}
