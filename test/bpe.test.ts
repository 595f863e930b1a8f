import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BpeTokenizer, preTokenize, trainBpe } from '../src/data/bpe.js';
import { Gpt2Tokenizer } from '../src/data/gpt2.js';
import { StreamDecoder, tokenizerHash, END_OF_TEXT, TokenizerError } from '../src/data/tokenizer.js';
import { loadTokenizer, saveTokenizer, tokenizerFromJSON } from '../src/data/tokenizers.js';
import { loadDefaultCorpus } from '../src/data/corpus.js';

const moby = loadDefaultCorpus({ sources: ['moby-dick'] }).documents.map((d) => d.text);
/** ~300 KB of real English for training in tests. */
const SAMPLE = moby.slice(0, 30);

const TRICKY = [
  '',
  ' ',
  'a',
  'Hello, world!',
  "It's   three\tspaces\n\nand a tab. Don't we'll they've I'm",
  'emoji 🙂🐳👩‍👩‍👧‍👦 flags 🇳🇿',
  'CJK 中文字符 日本語のテキスト 한국어',
  'combining e\u0301 a\u0308\u0304 Zalgo Z\u0336\u0321\u0350a\u0334l\u0337g\u0335o',
  'control \u0000\u0001\u0007\u001b[31m\u007f\u0085\u2028\u2029\r\n',
  `literal ${END_OF_TEXT} in text`,
  '     leading and trailing spaces     ',
  ' '.repeat(500) + 'x' + '\n'.repeat(300),
  '='.repeat(1000),
  'ab'.repeat(400),
  '1234567890 3.14159 1e-10 0x1F',
  '\uFEFFBOM and \uFFFD replacement and \u{10FFFF} max',
];

function randomUnicode(rand: () => number, len: number): string {
  let s = '';
  for (let i = 0; i < len; i++) {
    const r = rand();
    let cp: number;
    if (r < 0.4) cp = 32 + Math.floor(rand() * 95);
    else if (r < 0.5) cp = Math.floor(rand() * 32);
    else if (r < 0.7) cp = 0x80 + Math.floor(rand() * 0x780);
    else if (r < 0.9) cp = 0x800 + Math.floor(rand() * (0xd800 - 0x800));
    else cp = 0x10000 + Math.floor(rand() * 0x100000);
    s += String.fromCodePoint(cp);
  }
  return s;
}

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

const tok512 = trainBpe(SAMPLE, { vocabSize: 512 });

test('pre-tokenisation tiles the text and splits like GPT-2', () => {
  assert.deepEqual(preTokenize("Hello world, it's 2024!  ok"), ['Hello', ' world', ',', ' it', "'s", ' 2024', '!', ' ', ' ok']);
  for (const s of TRICKY) assert.equal(preTokenize(s).join(''), s);
});

test('training is deterministic and independent of document order', () => {
  const a = trainBpe(SAMPLE, { vocabSize: 400 });
  const b = trainBpe(SAMPLE, { vocabSize: 400 });
  const c = trainBpe([...SAMPLE].reverse(), { vocabSize: 400 });
  assert.deepEqual(a.toJSON(), b.toJSON());
  assert.deepEqual(a.toJSON(), c.toJSON());
  assert.equal(tokenizerHash(a), tokenizerHash(c));
  // The most frequent English pairs come first.
  assert.equal(a.decode([256]), ' t');
  assert.equal(a.decode([257]), 'he');
});

test('vocabulary size is respected and <|endoftext|> is the last id', () => {
  assert.equal(tok512.vocabSize, 512);
  assert.equal(tok512.eotId, 511);
  assert.equal(tok512.nMerges, 255);
  assert.equal(tok512.decode([511]), END_OF_TEXT);
  const ids = tok512.encode(SAMPLE.join('\n'));
  assert.ok(ids.every((i) => i >= 0 && i < 511), 'encode never emits ids outside the merges or the special token');
  const noEot = trainBpe(SAMPLE, { vocabSize: 300, endOfText: false });
  assert.equal(noEot.vocabSize, 300);
  assert.equal(noEot.eotId, null);
  // A tiny corpus runs out of pairs: the vocabulary is smaller than asked for.
  const tiny = trainBpe(['abab abab'], { vocabSize: 1000 });
  assert.ok(tiny.vocabSize < 1000 && tiny.vocabSize > 257, `tiny vocab ${tiny.vocabSize}`);
  assert.throws(() => trainBpe(SAMPLE, { vocabSize: 200 }), TokenizerError);
});

test('merges never cross pre-token boundaries', () => {
  for (let id = 256; id < tok512.vocabSize - 1; id++) {
    const s = tok512.decode([id]);
    assert.ok(!/\S\s/.test(s), `token ${id} ${JSON.stringify(s)} joins a word and following whitespace`);
    assert.ok(!/\p{L}\p{N}|\p{N}\p{L}/u.test(s), `token ${id} ${JSON.stringify(s)} joins letters and digits`);
  }
});

test('round trip of arbitrary UTF-8 (tricky and random strings)', () => {
  const gpt2 = new Gpt2Tokenizer();
  const rand = lcg(42);
  const cases = [...TRICKY];
  for (let i = 0; i < 200; i++) cases.push(randomUnicode(rand, Math.floor(rand() * 60)));
  for (const tok of [tok512, gpt2]) {
    for (const s of cases) {
      const ids = tok.encode(s);
      assert.equal(tok.decode(ids), s, `${tok.kind} round trip of ${JSON.stringify(s.slice(0, 40))}`);
      const bytes = ids.reduce((n, id) => n + tok.tokenBytes(id).length, 0);
      assert.equal(bytes, Buffer.byteLength(s), 'token bytes add up to the UTF-8 length');
    }
    // The literal special-token text is ordinary text for encode().
    assert.ok(!tok.encode(`x${END_OF_TEXT}y`).includes(tok.eotId!));
  }
  // Unpaired surrogates are not UTF-8: they come back as U+FFFD.
  assert.equal(tok512.decode(tok512.encode('a\ud800b')), 'a\ufffdb');
});

test('long pre-tokens use the heap merge, which matches the simple merge', () => {
  const rand = lcg(7);
  for (let trial = 0; trial < 300; trial++) {
    const n = 1 + Math.floor(rand() * 80);
    const alphabet = ' etaoinshr'.split('').map((c) => c.charCodeAt(0));
    const word = Array.from({ length: n }, () => alphabet[Math.floor(rand() * alphabet.length)]!);
    assert.deepEqual(tok512.mergeLong(word), tok512.mergeShort(word));
  }
  const s = 'the '.repeat(300);
  assert.equal(tok512.decode(tok512.encode(s)), s);
});

test('save and load (file and JSON), with validation', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'caat-bpe-'));
  try {
    const file = path.join(dir, 'tokenizer.json');
    saveTokenizer(file, tok512);
    const back = loadTokenizer(file);
    assert.ok(back instanceof BpeTokenizer);
    assert.equal(back.vocabSize, 512);
    assert.deepEqual(back.toJSON(), tok512.toJSON());
    const text = moby[40]!;
    assert.deepEqual(back.encode(text), tok512.encode(text));
    saveTokenizer(path.join(dir, 'gpt2.json'), new Gpt2Tokenizer());
    assert.equal(loadTokenizer(path.join(dir, 'gpt2.json')).vocabSize, 50257);

    const json = tok512.toJSON();
    assert.throws(() => tokenizerFromJSON({ ...json, merges: [300, 1] }), /refers to a token that does not exist yet/);
    assert.throws(() => tokenizerFromJSON({ ...json, merges: [1, 2, 1, 2] }), /duplicate/);
    assert.throws(() => tokenizerFromJSON({ ...json, vocabSize: 9 }), /does not match/);
    assert.throws(() => tokenizerFromJSON({ ...json, version: 99 }), /version/);
    assert.throws(() => tokenizerFromJSON({ kind: 'wordpiece' }), /unknown tokenizer kind/);
    fs.writeFileSync(path.join(dir, 'bad.json'), '{');
    assert.throws(() => loadTokenizer(path.join(dir, 'bad.json')), /bad\.json: not valid JSON/);
    assert.throws(() => loadTokenizer(path.join(dir, 'missing.json')), /missing\.json: cannot read/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('streaming decoder emits only complete characters', () => {
  const text = 'Whale 🐳 and 中文, e\u0301, done.';
  for (const tok of [trainBpe(SAMPLE, { vocabSize: 300 }), new Gpt2Tokenizer()]) {
    const ids = tok.encode(text);
    const dec = new StreamDecoder(tok);
    const pieces = ids.map((id) => dec.push(id));
    pieces.push(dec.flush());
    assert.equal(pieces.join(''), text);
    for (const p of pieces) assert.ok(!p.includes('\ufffd'), `piece ${JSON.stringify(p)} contains a broken character`);
    // At least one token in the middle of a multi-byte character produced no text yet.
    assert.ok(pieces.some((p) => p === ''));
  }
  const dec = new StreamDecoder(tok512);
  assert.equal(dec.push(0xf0), '');
  assert.equal(dec.flush(), '\ufffd', 'an incomplete trailing sequence becomes U+FFFD on flush');
});

test('GPT-2 tokenizer matches the reference ids', () => {
  const g = new Gpt2Tokenizer();
  assert.equal(g.vocabSize, 50257);
  assert.equal(g.eotId, 50256);
  assert.deepEqual(g.encode('Hello world'), [15496, 995]);
  assert.equal(g.decode([50256]), END_OF_TEXT);
  assert.throws(() => g.tokenBytes(50257), TokenizerError);
});

test('encoding is fast enough (cache per pre-token)', () => {
  const text = moby.slice(30, 60).join('\n');
  const t0 = performance.now();
  const ids = tok512.encode(text);
  const mbps = Buffer.byteLength(text) / 1e6 / ((performance.now() - t0) / 1000);
  assert.ok(ids.length > 0);
  assert.ok(mbps > 1, `encode speed ${mbps.toFixed(2)} MB/s`);
});
