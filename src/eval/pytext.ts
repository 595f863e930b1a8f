/**
 * The string operations lm-evaluation-harness's task code performs, with Python's semantics (which
 * differ from JavaScript's in small ways that change scores): whitespace as Python's `str.isspace` /
 * `re` `\s` define it, `str.strip`, `str.capitalize`, `len` in code points, hellaswag's `preprocess`
 * and wikitext's `wikitext_detokenizer`.
 */

/** Python's whitespace characters (`str.isspace`, and `\s` in a str pattern). */
const PY_WS_CLASS = '\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const PY_WS_RUN = new RegExp(`[${PY_WS_CLASS}]+`, 'u');
const PY_WS_ONE = new RegExp(`^[${PY_WS_CLASS}]$`, 'u');
/** `\s*` as Python reads it, for building patterns. */
const S = `[${PY_WS_CLASS}]*`;

export function isPySpace(ch: string): boolean {
  return PY_WS_ONE.test(ch);
}

/** Python `s.strip()`. */
export function pyStrip(s: string): string {
  return pyRstrip(pyLstrip(s));
}

export function pyLstrip(s: string): string {
  let i = 0;
  while (i < s.length && isPySpace(s[i]!)) i++;
  return s.slice(i);
}

export function pyRstrip(s: string): string {
  let j = s.length;
  while (j > 0 && isPySpace(s[j - 1]!)) j--;
  return s.slice(0, j);
}

/** Python `len(s)`: code points, not UTF-16 units. */
export function codePointLength(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

/** Python `s.capitalize()`: the first character upper-cased, every other character lower-cased. */
export function pyCapitalize(s: string): string {
  const cps = [...s];
  if (cps.length === 0) return s;
  return cps[0]!.toUpperCase() + cps.slice(1).join('').toLowerCase();
}

/** Python `len(re.split(r"\s+", s))`: 1 + the number of maximal whitespace runs. */
export function pyWhitespaceFields(s: string): number {
  return s.split(PY_WS_RUN).length;
}

/** UTF-8 bytes of a string (Python `len(s.encode("utf-8"))`). */
export function utf8Bytes(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

/**
 * hellaswag's `preprocess` (lm_eval/tasks/hellaswag/utils.py): strip, " [title]" → ". ", drop every
 * "[...]" (Python's `.` excludes only "\n"), "  " → " " (one pass, non-overlapping).
 */
export function hellaswagPreprocess(text: string): string {
  let t = pyStrip(text);
  t = t.replaceAll(' [title]', '. ');
  t = t.replace(/\[[^\n]*?\]/gu, '');
  t = t.replaceAll('  ', ' ');
  return t;
}

const DETOK_RULES: [RegExp, string][] = [
  [new RegExp(`\\(${S}([^\\)]*?)${S}\\)`, 'gu'), '($1)'],
  [new RegExp(`\\[${S}([^\\]]*?)${S}\\]`, 'gu'), '[$1]'],
  [new RegExp(`\\{${S}([^}]*?)${S}\\}`, 'gu'), '{$1}'],
  [new RegExp(`"${S}([^"]*?)${S}"`, 'gu'), '"$1"'],
  [new RegExp(`'${S}([^']*?)${S}'`, 'gu'), "'$1'"],
];

/** wikitext's `wikitext_detokenizer` (lm_eval/tasks/wikitext/preprocess_wikitext.py), step by step. */
export function wikitextDetokenize(page: string): string {
  let s = page;
  s = s.replaceAll("s '", "s'");
  s = s.replace(/\/' [0-9]\//gu, "/'[0-9]/");
  s = s.replaceAll(' @-@ ', '-');
  s = s.replaceAll(' @,@ ', ',');
  s = s.replaceAll(' @.@ ', '.');
  s = s.replaceAll(' : ', ': ');
  s = s.replaceAll(' ; ', '; ');
  s = s.replaceAll(' . ', '. ');
  s = s.replaceAll(' ! ', '! ');
  s = s.replaceAll(' ? ', '? ');
  s = s.replaceAll(' , ', ', ');
  for (const [re, rep] of DETOK_RULES) s = s.replace(re, rep);
  s = s.replaceAll('= = = =', '====');
  s = s.replaceAll('= = =', '===');
  s = s.replaceAll('= =', '==');
  s = s.replaceAll(' \u00b0 ', '\u00b0');
  s = s.replaceAll(' \n', '\n');
  s = s.replaceAll('\n ', '\n');
  s = s.replaceAll(' N ', ' 1 ');
  s = s.replaceAll(" 's", "'s");
  return s;
}
