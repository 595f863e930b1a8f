import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  brownToText,
  CorpusError,
  detokenize,
  loadCorpus,
  loadDefaultCorpus,
  loadUserCorpus,
  splitCorpus,
  type Corpus,
} from '../src/data/corpus.js';
import { trainBpe } from '../src/data/bpe.js';
import {
  bitsPerByte,
  bytesPerToken,
  decodeTokenFile,
  encodeTokenFile,
  prepareData,
  prepareDataset,
  TokenLoader,
  tokenizeDocuments,
  unigramEntropy,
  validationBatches,
  validationWindows,
  DatasetError,
} from '../src/data/dataset.js';
import type { Tokenizer } from '../src/data/tokenizer.js';

const corpus = loadDefaultCorpus();

function tmpdir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'caat-data-'));
}

function expectCorpusError(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof CorpusError, `expected CorpusError, got ${String(e)}`);
    assert.match(e.message, pattern);
    return true;
  });
}

test('default corpus: sources, sizes and ids', () => {
  const count = (s: string) => corpus.documents.filter((d) => d.source === s).length;
  assert.equal(count('sotu'), 233);
  assert.equal(count('moby-dick'), 138);
  assert.equal(count('brown'), 500);
  assert.ok(corpus.bytes > 17e6 && corpus.bytes < 19e6, `corpus bytes ${corpus.bytes}`);
  assert.equal(new Set(corpus.documents.map((d) => d.id)).size, corpus.documents.length, 'ids are unique');
  assert.ok(corpus.documents.every((d) => d.text.length > 0 && d.text === d.text.trim()));
  const first = corpus.documents.find((d) => d.id === 'sotu/1790_george_washington_n')!;
  assert.match(first.text, /^Fellow-Citizens of the Senate/);
  const ch1 = corpus.documents.find((d) => d.id === 'moby-dick/chapter_1')!;
  assert.match(ch1.text, /Call me Ishmael\./);
  assert.ok(!corpus.documents.some((d) => d.id === 'moby-dick/contents' || d.id === 'moby-dick/data'));
  assert.equal(loadDefaultCorpus().fingerprint, corpus.fingerprint, 'fingerprint is stable');
  assert.equal(loadCorpus().fingerprint, corpus.fingerprint);
  assert.notEqual(loadDefaultCorpus({ sources: ['moby-dick'] }).fingerprint, corpus.fingerprint);
});

test('Brown corpus: tags removed and text rejoined', () => {
  const ca01 = corpus.documents.find((d) => d.id === 'brown/ca01')!.text;
  assert.ok(
    ca01.startsWith(
      'The Fulton County Grand Jury said Friday an investigation of Atlanta\'s recent primary election produced "no evidence" that any irregularities took place.\n\nThe jury further said',
    ),
    ca01.slice(0, 200),
  );
  for (const d of corpus.documents.filter((x) => x.source === 'brown')) {
    assert.ok(!/[A-Za-z.,]\/(at|nn|np|in|vbd|jj|cc|rb)(-tl|-hl)?(\s|$)/.test(d.text), `${d.id} still has POS tags`);
    assert.ok(!/(^|\s)(``|'')(\s|$)/.test(d.text), `${d.id} has raw quote tokens`);
  }
  assert.equal(detokenize(['``', 'Hi', "''", ',', 'he', 'said', '(', 'twice', ')', '.']), '"Hi", he said (twice).');
  assert.equal(detokenize(['a', ';', ';', 'b', 'Jr.', '.']), 'a; b Jr.');
  assert.equal(brownToText('\n\n\tThe/at cat/nn sat/vbd ./.\nIt/pps purred/vbd ./.\n\n\n\tNew/jj para/nn 1/2/cd ./.\n'), 'The cat sat. It purred.\n\nNew para 1/2.');
});

test('split by document: deterministic, disjoint, complete, ~5% validation', () => {
  const a = splitCorpus(corpus.documents);
  const b = splitCorpus(corpus.documents);
  assert.deepEqual(a.val.map((d) => d.id), b.val.map((d) => d.id));
  assert.equal(a.val.length, Math.round(corpus.documents.length * 0.05));
  const trainIds = new Set(a.train.map((d) => d.id));
  assert.ok(a.val.every((d) => !trainIds.has(d.id)), 'no document in both splits');
  assert.equal(a.train.length + a.val.length, corpus.documents.length);
  const c = splitCorpus(corpus.documents, { seed: 7 });
  assert.notDeepEqual(c.val.map((d) => d.id), a.val.map((d) => d.id), 'the seed changes the split');
  // Adding documents keeps the relative order of the hash ranking (stable membership for most documents).
  const few = corpus.documents.slice(0, 3);
  assert.equal(splitCorpus(few).val.length, 1, 'at least one validation document');
  assert.equal(splitCorpus(few, { valFraction: 0.5 }).val.length, 2);
  expectCorpusError(() => splitCorpus(corpus.documents, { valFraction: 0 }), /valFraction/);
  expectCorpusError(() => splitCorpus([]), /empty corpus/);
});

test('user corpus: text file, folder (recursive, sorted) and JSONL', () => {
  const dir = tmpdir();
  try {
    const file = path.join(dir, 'one.txt');
    const lines = Array.from({ length: 40 }, (_, i) => `Line ${i} of the only document.`).join('\n');
    fs.writeFileSync(file, '\uFEFF' + lines);
    const single = loadUserCorpus(file);
    assert.equal(single.documents.length, 1);
    assert.equal(single.documents[0]!.text, lines, 'BOM dropped');
    const s = splitCorpus(single.documents);
    assert.equal(s.train[0]!.text + s.val[0]!.text, lines, 'a single document is cut, not lost');
    assert.ok(s.val[0]!.text.startsWith('Line '), 'cut at a line break');
    assert.ok(s.val[0]!.text.length < lines.length * 0.1);

    const root = path.join(dir, 'folder');
    fs.mkdirSync(path.join(root, 'b', 'c'), { recursive: true });
    fs.mkdirSync(path.join(root, '.hidden'));
    fs.writeFileSync(path.join(root, 'z.txt'), 'last');
    fs.writeFileSync(path.join(root, 'a.md'), '# first');
    fs.writeFileSync(path.join(root, 'b', 'c', 'deep.txt'), 'deep text');
    fs.writeFileSync(path.join(root, 'b', 'docs.jsonl'), '{"text": "json one"}\n\n{"text": "json two", "meta": 1}\r\n{"text": ""}\n');
    fs.writeFileSync(path.join(root, 'ignored.bin'), Buffer.from([0, 1, 2]));
    fs.writeFileSync(path.join(root, '.hidden', 'secret.txt'), 'hidden');
    const folder = loadUserCorpus(root);
    assert.deepEqual(
      folder.documents.map((d) => [d.id, d.text]),
      [
        ['a.md', '# first'],
        ['b/c/deep.txt', 'deep text'],
        ['b/docs.jsonl:1', 'json one'],
        ['b/docs.jsonl:3', 'json two'],
        ['z.txt', 'last'],
      ],
    );
    assert.ok(folder.documents.every((d) => d.source === 'user'));
    const fp = folder.fingerprint;
    assert.equal(loadUserCorpus(root).fingerprint, fp);
    fs.writeFileSync(path.join(root, 'z.txt'), 'last!');
    assert.notEqual(loadUserCorpus(root).fingerprint, fp, 'fingerprint follows the contents');

    const jl = path.join(dir, 'data.jsonl');
    fs.writeFileSync(jl, '{"text": "alpha"}\n{"text": "beta"}\n');
    assert.deepEqual(loadCorpus(jl).documents.map((d) => d.text), ['alpha', 'beta']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('user corpus: every bad input gives a clear error naming the file (and line)', () => {
  const dir = tmpdir();
  try {
    const w = (name: string, data: string | Buffer) => {
      const p = path.join(dir, name);
      fs.mkdirSync(path.dirname(p), { recursive: true });
      fs.writeFileSync(p, data);
      return p;
    };
    expectCorpusError(() => loadUserCorpus(path.join(dir, 'nope.txt')), /nope\.txt: no such file or directory/);
    const empty = w('empty.txt', '');
    expectCorpusError(() => loadUserCorpus(empty), /empty\.txt: file is empty/);
    expectCorpusError(() => loadUserCorpus(w('blank.txt', ' \n\t\n')), /blank\.txt: file is empty \(only whitespace\)/);
    expectCorpusError(() => loadUserCorpus(w('nul.txt', Buffer.from('abc\u0000def'))), /nul\.txt: binary file \(NUL byte at offset 3\)/);
    expectCorpusError(() => loadUserCorpus(w('latin1.txt', Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x20, 0x21]))), /latin1\.txt: not valid UTF-8 \(at byte offset 3\)/);
    expectCorpusError(() => loadUserCorpus(w('overlong.txt', Buffer.from([0x41, 0xc0, 0x80]))), /overlong\.txt: not valid UTF-8 \(at byte offset 1\)/);
    expectCorpusError(() => loadUserCorpus(w('surrogate.txt', Buffer.from([0x41, 0xed, 0xa0, 0x80]))), /not valid UTF-8/);
    expectCorpusError(() => loadUserCorpus(w('cut.txt', Buffer.from([0x41, 0xe4, 0xb8]))), /cut\.txt: not valid UTF-8 \(at byte offset 1\)/);
    expectCorpusError(() => loadUserCorpus(w('bad.jsonl', '{"text": "ok"}\n{"text": oops}\n')), /bad\.jsonl:2: not valid JSON/);
    expectCorpusError(() => loadUserCorpus(w('notext.jsonl', '{"text": "ok"}\n\n{"body": "x"}\n')), /notext\.jsonl:3: expected a JSON object with a string "text" field/);
    expectCorpusError(() => loadUserCorpus(w('numtext.jsonl', '{"text": 5}\n')), /numtext\.jsonl:1: expected a JSON object with a string "text"/);
    expectCorpusError(() => loadUserCorpus(w('array.jsonl', '["text"]\n')), /array\.jsonl:1: expected a JSON object/);
    expectCorpusError(() => loadUserCorpus(w('allempty.jsonl', '{"text": ""}\n')), /allempty\.jsonl: no documents/);
    fs.mkdirSync(path.join(dir, 'nothing'));
    w('nothing/readme.rst', 'x');
    expectCorpusError(() => loadUserCorpus(path.join(dir, 'nothing')), /nothing: folder contains no \.txt, \.md or \.jsonl files/);
    // A bad file inside a folder is named by its path.
    w('mixed/good.txt', 'fine');
    w('mixed/sub/bad.txt', Buffer.from([0xff, 0xfe]));
    expectCorpusError(() => loadUserCorpus(path.join(dir, 'mixed')), /mixed[/\\]sub[/\\]bad\.txt: not valid UTF-8/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

/** A small user corpus with a trained BPE, shared by the dataset tests. */
function smallSetup(): { corpus: Corpus; tok: Tokenizer; dir: string } {
  const dir = tmpdir();
  const moby = corpus.documents.filter((d) => d.source === 'moby-dick').slice(0, 20);
  for (const d of moby) fs.writeFileSync(path.join(dir, `${d.id.split('/')[1]}.txt`), d.text);
  const small = loadUserCorpus(dir);
  const tok = trainBpe(splitCorpus(small.documents).train.map((d) => d.text), { vocabSize: 400 });
  return { corpus: small, tok, dir };
}

test('tokenised splits are cached: the second load does not encode', () => {
  const { corpus: small, tok, dir } = smallSetup();
  const cacheDir = path.join(dir, '.cache');
  try {
    let calls = 0;
    const counting: Tokenizer = {
      kind: tok.kind,
      vocabSize: tok.vocabSize,
      eotId: tok.eotId,
      encode: (t) => {
        calls++;
        return tok.encode(t);
      },
      decode: (ids) => tok.decode(ids),
      tokenBytes: (id) => tok.tokenBytes(id),
      toJSON: () => tok.toJSON(),
    };
    const first = prepareDataset({ corpus: small, tokenizer: counting, cacheDir });
    assert.equal(first.cacheHit, false);
    assert.equal(calls, small.documents.length);
    assert.ok(first.train.tokens instanceof Uint16Array);
    assert.equal(first.train.documents + first.val.documents, small.documents.length);
    // Each document is preceded by <|endoftext|>.
    assert.equal(first.train.tokens[0], tok.eotId);
    assert.equal(first.train.tokens.filter((t) => t === tok.eotId).length, first.train.documents);
    const { train: trainDocs } = splitCorpus(small.documents);
    assert.equal(tok.decode(first.train.tokens.subarray(1, 1 + tok.encode(trainDocs[0]!.text).length)), trainDocs[0]!.text);

    const second = prepareDataset({ corpus: small, tokenizer: counting, cacheDir });
    assert.equal(second.cacheHit, true);
    assert.equal(calls, small.documents.length, 'no encode on a cache hit');
    assert.deepEqual(second.train.tokens, first.train.tokens);
    assert.deepEqual(second.val.tokens, first.val.tokens);
    assert.equal(second.train.textBytes, first.train.textBytes);
    assert.equal(second.key, first.key);

    // A different split is a different cache entry.
    const other = prepareDataset({ corpus: small, tokenizer: counting, cacheDir, seed: 99 });
    assert.equal(other.cacheHit, false);
    assert.notEqual(other.key, first.key);

    // A corrupted cache file is detected and rebuilt.
    const trainFile = path.join(second.cachePath!, 'train.bin');
    const bytes = fs.readFileSync(trainFile);
    bytes[bytes.length - 1] ^= 0xff;
    fs.writeFileSync(trainFile, bytes);
    const logs: string[] = [];
    const third = prepareDataset({ corpus: small, tokenizer: counting, cacheDir, log: (m) => logs.push(m) });
    assert.equal(third.cacheHit, false);
    assert.ok(logs.some((m) => /checksum mismatch/.test(m)), logs.join('\n'));
    assert.deepEqual(third.train.tokens, first.train.tokens);

    // prepareData: BPE trained once and cached, tokens cached.
    const a = prepareData({ corpus: small, tokenizer: 'bpe', vocabSize: 300, cacheDir });
    const b = prepareData({ corpus: dir, tokenizer: 'bpe', vocabSize: 300, cacheDir });
    assert.equal(a.cacheHit, false);
    assert.equal(b.cacheHit, true);
    assert.equal(b.tokenizer.vocabSize, 300);
    assert.deepEqual(b.tokenizer.toJSON(), a.tokenizer.toJSON());
    assert.ok(fs.readdirSync(cacheDir).some((f) => /^bpe-.*\.json$/.test(f)));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('token files: Uint16 and Uint32, header checks', () => {
  const small = { tokens: Uint16Array.from([5, 0, 65534, 7]), textBytes: 11, documents: 2 };
  const f16 = encodeTokenFile(small, 65535);
  const back16 = decodeTokenFile(f16, 'x.bin');
  assert.ok(back16.tokens instanceof Uint16Array);
  assert.deepEqual(back16.tokens, small.tokens);
  assert.equal(back16.textBytes, 11);
  assert.equal(back16.documents, 2);
  const big = { tokens: Uint32Array.from([70000, 1, 100255]), textBytes: 3, documents: 1 };
  const back32 = decodeTokenFile(encodeTokenFile(big, 100256), 'y.bin');
  assert.ok(back32.tokens instanceof Uint32Array);
  assert.deepEqual(back32.tokens, big.tokens);
  assert.throws(() => decodeTokenFile(f16.subarray(0, 50), 'x.bin'), /x\.bin: too short/);
  assert.throws(() => decodeTokenFile(f16.subarray(0, f16.length - 2), 'x.bin'), /x\.bin: header says 4 tokens/);
  const bad = f16.slice();
  bad[0] = 0;
  assert.throws(() => decodeTokenFile(bad, 'x.bin'), /bad magic/);
  assert.throws(() => decodeTokenFile(encodeTokenFile(small, 10), 'v.bin'), /outside the vocabulary/);
  // A vocabulary above 65535 gets Uint32 tokens.
  const fake: Tokenizer = {
    kind: 'bpe',
    vocabSize: 70000,
    eotId: 69999,
    encode: (t) => Array.from(t, (c) => 65536 + c.charCodeAt(0)),
    decode: () => '',
    tokenBytes: () => new Uint8Array(0),
    toJSON: () => ({ kind: 'bpe', version: 0 }),
  };
  const s = tokenizeDocuments([{ id: 'a', source: 'user', text: 'ab' }], fake);
  assert.ok(s.tokens instanceof Uint32Array);
  assert.deepEqual([...s.tokens], [69999, 65536 + 97, 65536 + 98]);
});

test('TokenLoader: exact resume from state(), shuffled epochs, targets shifted', () => {
  const N = 1000;
  const tokens = Uint16Array.from({ length: N }, (_, i) => i % 65535);
  const B = 4;
  const T = 16;
  const a = new TokenLoader(tokens, { batchSize: B, seqLen: T, seed: 5 });
  for (let i = 0; i < 23; i++) a.next();
  const saved = a.state();
  assert.deepEqual(JSON.parse(JSON.stringify(saved)), saved, 'state is plain JSON');
  const expected = Array.from({ length: 30 }, () => a.next());
  const b = new TokenLoader(tokens, { batchSize: B, seqLen: T, seed: 123 });
  b.next();
  b.restore(saved);
  for (const e of expected) {
    const got = b.next();
    assert.deepEqual(got.inputs, e.inputs);
    assert.deepEqual(got.targets, e.targets);
  }
  assert.deepEqual(b.state(), a.state());

  // Targets are inputs shifted by one; every window lies inside the stream.
  const c = new TokenLoader(tokens, { batchSize: B, seqLen: T, seed: 1 });
  const seenStarts = new Set<number>();
  const perEpoch = c.windowsPerEpoch;
  assert.ok(perEpoch >= Math.floor((N - 1) / T) - 1 && perEpoch <= Math.floor((N - 1) / T));
  for (let k = 0; k < Math.ceil(perEpoch / B); k++) {
    const batch = c.next();
    assert.equal(batch.inputs.length, B * T);
    for (let r = 0; r < B; r++) {
      const start = batch.inputs[r * T]!;
      for (let t = 0; t < T; t++) {
        assert.equal(batch.inputs[r * T + t], start + t);
        assert.equal(batch.targets[r * T + t], start + t + 1);
      }
      assert.ok(start + T < N);
      if (k * B + r < perEpoch) seenStarts.add(start);
    }
  }
  assert.equal(seenStarts.size, perEpoch, 'an epoch visits every window once');
  assert.equal(c.state().epoch, 1);

  // Same seed, same batches; shuffle off gives sequential windows.
  const d1 = new TokenLoader(tokens, { batchSize: 2, seqLen: 8, seed: 9 }).next();
  const d2 = new TokenLoader(tokens, { batchSize: 2, seqLen: 8, seed: 9 }).next();
  assert.deepEqual(d1.inputs, d2.inputs);
  const seq = new TokenLoader(tokens, { batchSize: 2, seqLen: 8, shuffle: false }).next();
  assert.deepEqual([...seq.inputs], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
  // More rows than windows: batches run on into the next epoch.
  const tiny = new TokenLoader(tokens.subarray(0, 20), { batchSize: 5, seqLen: 8 });
  assert.equal(tiny.next().rows, 5);
  assert.throws(() => new TokenLoader(tokens.subarray(0, 8), { batchSize: 1, seqLen: 8 }), DatasetError);
  assert.throws(() => a.restore({ epoch: 0, index: 10_000, seed: 5 }), /past the/);
});

test('validation batches are sequential and cover the stream', () => {
  const tokens = Uint16Array.from({ length: 101 }, (_, i) => i);
  assert.equal(validationWindows(101, 10), 10);
  const batches = [...validationBatches(tokens, 4, 10)];
  assert.deepEqual(batches.map((b) => b.rows), [4, 4, 2]);
  assert.deepEqual([...batches[0]!.inputs.subarray(0, 3)], [0, 1, 2]);
  assert.equal(batches[2]!.targets[batches[2]!.targets.length - 1], 100);
  assert.equal([...validationBatches(tokens, 4, 10, 2)].length, 2);
  assert.equal([...validationBatches(tokens.subarray(0, 5), 4, 10)].length, 0);
});

test('unigram entropy and bytes per token', () => {
  const u = unigramEntropy(Uint16Array.from([0, 1, 2, 3, 0, 1, 2, 3]));
  assert.ok(Math.abs(u.bitsPerToken - 2) < 1e-12);
  assert.ok(Math.abs(u.natsPerToken - 2 * Math.LN2) < 1e-12);
  assert.equal(unigramEntropy([7, 7, 7]).bitsPerToken, 0);
  const stream = { tokens: new Uint16Array(10), textBytes: 40, documents: 1 };
  assert.equal(bytesPerToken(stream), 4);
  assert.ok(Math.abs(bitsPerByte(4 * Math.LN2, stream) - 1) < 1e-12);
});
