/**
 * Slurm host lists: "node[01-04,07],login1,rack[1-2]-gpu[1-2]" → every host name, in order.
 * Ranges keep their zero padding ("[08-10]" → 08, 09, 10); several bracket groups in one name expand
 * as a product, left to right.
 */

export class HostlistError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HostlistError';
  }
}

/** Split at commas that are not inside brackets. */
function splitTop(list: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of list) {
    if (ch === '[') depth++;
    else if (ch === ']') depth--;
    if (depth < 0) throw new HostlistError(`host list ${JSON.stringify(list)}: unbalanced "]"`);
    if (ch === ',' && depth === 0) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (depth !== 0) throw new HostlistError(`host list ${JSON.stringify(list)}: unbalanced "["`);
  out.push(cur);
  return out.map((s) => s.trim()).filter((s) => s.length > 0);
}

function expandRange(spec: string, whole: string): string[] {
  const out: string[] = [];
  for (const part of spec.split(',')) {
    const p = part.trim();
    const m = /^(\d+)(?:-(\d+))?$/.exec(p);
    if (!m) throw new HostlistError(`host list ${JSON.stringify(whole)}: bad range "${p}"`);
    const lo = m[1]!;
    const hi = m[2] ?? lo;
    const a = Number(lo);
    const b = Number(hi);
    if (b < a) throw new HostlistError(`host list ${JSON.stringify(whole)}: range "${p}" runs backwards`);
    if (b - a > 100_000) throw new HostlistError(`host list ${JSON.stringify(whole)}: range "${p}" is too large`);
    const width = lo.length;
    for (let i = a; i <= b; i++) out.push(String(i).padStart(width, '0'));
  }
  return out;
}

function expandName(name: string, whole: string): string[] {
  const open = name.indexOf('[');
  if (open < 0) return [name];
  const close = name.indexOf(']', open);
  if (close < 0) throw new HostlistError(`host list ${JSON.stringify(whole)}: unbalanced "["`);
  const prefix = name.slice(0, open);
  const values = expandRange(name.slice(open + 1, close), whole);
  const rest = expandName(name.slice(close + 1), whole);
  const out: string[] = [];
  for (const v of values) for (const r of rest) out.push(prefix + v + r);
  return out;
}

/** Every host of a Slurm host list, in order. */
export function expandHostlist(list: string): string[] {
  return splitTop(list).flatMap((name) => expandName(name, list));
}

/** The first host of a Slurm host list (without expanding the rest). */
export function firstHost(list: string): string {
  const first = splitTop(list)[0];
  if (first === undefined) throw new HostlistError(`host list ${JSON.stringify(list)} is empty`);
  return expandName(first, list)[0]!;
}
