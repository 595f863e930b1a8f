/**
 * Choosing the training/inference precision. `auto` follows nanoGPT: bf16 where the backend runs bf16
 * GEMMs on bf16 hardware (AMX, AVX512_BF16), fp32 elsewhere, since without that hardware bf16 mode
 * widens the operands and runs the float32 GEMM, which costs conversions and gains nothing.
 */
import type { Backend } from '../backend/types.js';
import type { Precision } from './model.js';

export type PrecisionChoice = Precision | 'auto';

export const PRECISION_CHOICES: readonly PrecisionChoice[] = ['auto', 'fp32', 'bf16'];

/** Whether `be` runs bf16 GEMMs on bf16 hardware (an optional Backend property). */
export function hasBf16Hardware(be: Backend): boolean {
  return (be as { bf16Hardware?: boolean }).bf16Hardware === true;
}

export function isPrecisionChoice(s: string): s is PrecisionChoice {
  return (PRECISION_CHOICES as readonly string[]).includes(s);
}

/** The concrete precision for a choice on a backend. */
export function resolvePrecision(choice: PrecisionChoice | undefined, be: Backend): Precision {
  if (choice === undefined || choice === 'auto') return hasBf16Hardware(be) ? 'bf16' : 'fp32';
  return choice;
}

/** The one-line description printed by train/generate/eval, with the notice for bf16 without bf16 hardware. */
export function describePrecision(p: Precision, be: Backend, choice: PrecisionChoice | undefined = p): string {
  const why = choice === 'auto' || choice === undefined ? ` (auto: ${hasBf16Hardware(be) ? 'bf16 GEMM hardware found' : 'no bf16 GEMM hardware'})` : '';
  if (p === 'fp32') return `precision: fp32${why}`;
  const base = `precision: bf16 mixed (fp32 master weights, gradients and optimiser state)${why}`;
  if (hasBf16Hardware(be)) return base;
  return `${base}; note: this CPU/backend has no bf16 GEMM hardware, so bf16 GEMMs widen to fp32 (same numerics, no speed-up)`;
}
