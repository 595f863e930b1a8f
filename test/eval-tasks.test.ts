/**
 * Zero-shot tasks without a model: the prompts and continuations of every schema (lm-evaluation-
 * harness's rules, incl. hellaswag's brackets and capitalisation, winogrande's blanks, a context
 * ending in a space), refused task files, request tokenisation (boundary merges, rolling windows),
 * Python string semantics, and the metrics and standard errors (the bootstrap equals CPython's).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { meanStderr, perplexityBootstrapStderr, PyRandom } from '../src/eval/metrics.js';
import { proxyRecords, PROXY_TASKS, PROXY_TYPES } from '../src/eval/proxy.js';
import { codePointLength, hellaswagPreprocess, pyCapitalize, pyWhitespaceFields, wikitextDetokenize } from '../src/eval/pytext.js';
import { encodePair, loglikelihoodRequest, rollingRequests } from '../src/eval/requests.js';
import { resolveTasks, taskFiles } from '../src/eval/run.js';
import { planRecord, planRecords, type DocPlan } from '../src/eval/tasks.js';
import { ToyTokenizer } from './helpers/eval.js';

const plan1 = (type: Parameters<typeof planRecord>[0], rec: unknown): DocPlan => planRecord(type, rec, 0, 'test:1');

describe('task prompts and continuations', () => {
  test('lambada: split on a single space; a double space leaves a trailing context space', () => {
    const d = plan1('lambada_openai', { text: 'he said  hello' });
    assert.equal(d.kind, 'cloze');
    if (d.kind !== 'cloze') return;
    assert.deepEqual(d.request, { context: 'he said ', continuation: ' hello' });
  });

  test('hellaswag: capitalize lowercases the rest of ctx_b, [title] and brackets, string and int labels', () => {
    const rec = { activity_label: 'Removing ice', ctx_a: 'A man [header] stands.', ctx_b: 'HE scrapes THE car', endings: ['[step] uses a scraper.', 'pours  water.', 'drives [title] away', 'sings'], label: '2' };
    const d = plan1('hellaswag', rec);
    assert.equal(d.kind, 'choice');
    if (d.kind !== 'choice') return;
    assert.equal(d.requests[0]!.context, 'Removing ice: A man stands. He scrapes the car');
    assert.deepEqual(d.choices, [' uses a scraper.', 'pours water.', 'drives. away', 'sings']);
    assert.deepEqual(d.requests.map((r) => r.continuation), ['  uses a scraper.', ' pours water.', ' drives. away', ' sings']);
    assert.equal(d.gold, 2);
    assert.equal((plan1('hellaswag', { ...rec, label: 3 }) as { gold: number }).gold, 3);
    assert.equal(hellaswagPreprocess('  a [x]\n[y] b  '), 'a \n b');
    assert.equal(pyCapitalize('éCOLE Of X'), 'École of x');
  });

  test('winogrande: one context per option, the shared stripped remainder, "_\'s"', () => {
    const d = plan1('winogrande', { sentence: "Sam lent Tom _'s  bike. ", option1: 'Sam', option2: 'Tom', answer: '2' });
    if (d.kind !== 'choice') throw new Error('kind');
    assert.deepEqual(d.requests, [
      { context: 'Sam lent Tom Sam', continuation: " 's  bike." },
      { context: 'Sam lent Tom Tom', continuation: " 's  bike." },
    ]);
    assert.equal(d.gold, 1);
    assert.ok(d.multipleInput);
  });

  test('piqa, openbookqa (context ending in a space, answerKey lstrip), boolq', () => {
    const p = plan1('piqa', { goal: 'Open a jar', sol1: 'twist the lid', sol2: 'eat it', label: 1 }) as Extract<DocPlan, { kind: 'choice' }>;
    assert.deepEqual(p.requests, [{ context: 'Question: Open a jar\nAnswer:', continuation: ' twist the lid' }, { context: 'Question: Open a jar\nAnswer:', continuation: ' eat it' }]);
    assert.equal(p.gold, 1);
    const o = plan1('openbookqa', { id: 'x', question_stem: 'The sun is ', choices: { text: ['hot', 'cold'], label: ['A', 'B'] }, answerKey: ' B' }) as Extract<DocPlan, { kind: 'choice' }>;
    assert.deepEqual(o.requests.map((r) => [r.context, r.continuation]), [['The sun is ', ' hot'], ['The sun is ', ' cold']]);
    assert.equal(o.gold, 1);
    const b = plan1('boolq', { question: 'is it', passage: 'It is.', idx: 0, label: 0 }) as Extract<DocPlan, { kind: 'choice' }>;
    assert.deepEqual(b.requests.map((r) => [r.context, r.continuation]), [['It is.\nQuestion: is it?\nAnswer:', ' no'], ['It is.\nQuestion: is it?\nAnswer:', ' yes']]);
    assert.equal(b.gold, 0);
  });

  test('wikitext: detokenised text, words and bytes of the raw page', () => {
    const page = ' = Title = \n \n A cat @-@ dog , ( big ) " yes " . 3 @.@ 5 \n';
    assert.equal(wikitextDetokenize(page), ' = Title =\n\nA cat-dog, (big) "yes". 3.5\n');
    assert.equal(pyWhitespaceFields(page), 20); // leading and trailing whitespace each add an empty field
    assert.equal(pyWhitespaceFields('a\u0085b\u001cc\ufeffd'), 3); // Python: \x85 and \x1c are whitespace, \ufeff is not
    assert.equal(codePointLength('a😀é'), 3);
  });
});

describe('task files are checked', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'caat-evaltasks-'));
  const file = (name: string, text: string) => {
    const f = path.join(tmp, name);
    fs.writeFileSync(f, text);
    return f;
  };
  test('missing field, wrong label type, empty file, bad JSON, unknown type: file, line and field', () => {
    assert.throws(() => planRecords('piqa', '{"goal":"g","sol1":"a","sol2":"b","label":0}\n\n{"goal":"g","sol1":"a","label":1}\n', 'p.jsonl'), /p\.jsonl:3: piqa record: field "sol2": missing/);
    assert.throws(() => planRecords('piqa', '{"goal":"g","sol1":"a","sol2":"b","label":"x"}', 'p.jsonl'), /p\.jsonl:1: piqa record: field "label": .*number/);
    assert.throws(() => planRecords('winogrande', '{"sentence":"a _ b","option1":"x","option2":"y","answer":"3"}', 'w.jsonl'), /w\.jsonl:1: winogrande record: field "answer"/);
    assert.throws(() => planRecords('winogrande', '{"sentence":"no blank","option1":"x","option2":"y","answer":"1"}', 'w.jsonl'), /field "sentence": has no "_" blank/);
    assert.throws(() => planRecords('hellaswag', '{"activity_label":"a","ctx_a":"b","ctx_b":"c","endings":["x","y"],"label":"5"}', 'h.jsonl'), /h\.jsonl:1: .*field "label": gold index 5 is outside the 2 choices/);
    assert.throws(() => planRecords('boolq', '{"question":"q","passage":"p","answer":true}', 'b.jsonl'), /field "label": missing.*google\/boolq/);
    assert.throws(() => planRecords('lambada_openai', '\n\n', 'l.jsonl'), /l\.jsonl: no records/);
    assert.throws(() => planRecords('lambada_openai', '{"text": "a"\n', 'l.jsonl'), /l\.jsonl:1: not valid JSON/);
    assert.throws(() => taskFiles([`squad=${file('s.jsonl', '{}')}`]), /unknown task type "squad"/);
    fs.mkdirSync(path.join(tmp, 'dir'));
    fs.writeFileSync(path.join(tmp, 'dir', 'mmlu.jsonl'), '{}');
    assert.throws(() => taskFiles([], path.join(tmp, 'dir')), /mmlu\.jsonl: unknown task type "mmlu"/);
    assert.throws(() => resolveTasks(['hellaswag'], new Map()), /hellaswag": no data file/);
    assert.throws(() => resolveTasks(['nope'], new Map()), /unknown task "nope"/);
    const dir2 = path.join(tmp, 'dir2');
    fs.mkdirSync(dir2);
    fs.writeFileSync(path.join(dir2, 'piqa.jsonl'), '{}');
    fs.writeFileSync(path.join(dir2, 'mine.hellaswag.jsonl'), '{}');
    assert.deepEqual(resolveTasks(['proxy_cloze'], taskFiles([], dir2)).map((t) => [t.name, t.type]), [['proxy_cloze', 'lambada_openai']]);
    assert.deepEqual(resolveTasks([], taskFiles([], dir2)).map((t) => [t.name, t.type]), [['mine', 'hellaswag'], ['piqa', 'piqa']]);
  });
});

describe('requests', () => {
  const tok = new ToyTokenizer();
  test('trailing context whitespace moves to the continuation; a merge across the boundary; no tokens left', () => {
    const a = encodePair(tok, 'The sun is ', 'hot', 0);
    assert.deepEqual([tok.decode(a.ctx), tok.decode(a.cont)], ['The sun is', ' hot']);
    // "ed w" spans the boundary: the continuation is what follows len(enc(context)) tokens of the whole.
    const b = encodePair(tok, 'I walked', ' with', 0);
    assert.equal(tok.decode(b.ctx), 'I walked');
    assert.equal(tok.decode(tok.encode('I walked with')), 'I walked with');
    assert.equal(tok.decode(b.cont), 'th');
    const c = loglikelihoodRequest(tok, 'I walked', ' w', 32, 0);
    assert.ok('error' in c && /no tokens of its own/.test(c.error));
    const e = loglikelihoodRequest(tok, '', 'hi', 32, 0);
    assert.deepEqual(e, { seq: [0, ...tok.encode('hi')], scored: 2 });
    const long = loglikelihoodRequest(tok, 'x'.repeat(50), ' y', 32, 0);
    assert.ok(!('error' in long) && long.seq.length === 33 && long.scored === 2);
  });

  test('rolling windows: the first from the prefix, full windows carry one token, the last the most', () => {
    const T = Array.from({ length: 10 }, (_, i) => 100 + i);
    const w = rollingRequests(T, 4, 7);
    assert.deepEqual(w, [
      { seq: [7, 100, 101, 102, 103], scored: 4 },
      { seq: [103, 104, 105, 106, 107], scored: 4 },
      { seq: [105, 106, 107, 108, 109], scored: 2 },
    ]);
    assert.deepEqual(rollingRequests([5], 4, 7), [{ seq: [7, 5], scored: 1 }]);
  });
});

describe('metrics', () => {
  test('PyRandom equals CPython random.Random(seed).random()', () => {
    // python3 -c "import random; r=random.Random(42); print(r.random(), r.random())"
    const r = new PyRandom(42);
    assert.equal(r.random(), 0.6394267984578837);
    assert.equal(r.random(), 0.025010755222666936);
    assert.equal(new PyRandom(2 ** 33 + 5).random(), 0.7416304072852293);
  });

  test('stderr: n − 1 sample std / √n; the perplexity bootstrap equals lm-evaluation-harness in CPython', () => {
    assert.equal(meanStderr([1, 0, 0, 1]), Math.sqrt(1 / 3) / 2);
    assert.equal(meanStderr([1]), null);
    // lm_eval.api.metrics.bootstrap_stderr(perplexity, xs, 100000) in CPython 3 gives 4.455049336735361.
    const s = perplexityBootstrapStderr([-1.5, -2.25, -0.5, -3.0, -1.0, -4.5, -0.25]);
    assert.ok(Math.abs(s! - 4.455049336735361) < 1e-12, String(s));
  });
});

describe('proxy tasks', () => {
  const docs = [
    { id: 'a', source: 'x', text: 'The old man walked to the river. He sat on a stone and watched the boats. The water was cold and grey today. Nobody came to the bank that morning.' },
    { id: 'b', source: 'x', text: 'Congress met in the spring. The members argued about the budget for many hours. Then they voted and went home to their families.' },
    { id: 'c', source: 'x', text: 'A small bird sang in the garden. The children listened from the window. Their mother called them to breakfast at eight.' },
  ];
  test('deterministic for a seed, in the schema of the task they imitate', () => {
    for (const name of PROXY_TASKS) {
      const a = proxyRecords(name, docs, { seed: 5 });
      assert.deepEqual(a, proxyRecords(name, docs, { seed: 5 }));
      assert.ok(a.length > 0, name);
      a.forEach((r, i) => planRecord(PROXY_TYPES[name], r, i, name));
    }
    const cloze = proxyRecords('proxy_cloze', docs, { seed: 5 }).map((r) => r['text'] as string);
    assert.ok(cloze.includes('The old man walked to the river. He sat on a stone and watched the boats'));
    for (const r of proxyRecords('proxy_next_sentence', docs, { seed: 5 })) {
      const endings = r['endings'] as string[];
      assert.equal(endings.length, 4);
      const gold = endings[Number(r['label'])]!;
      const src = docs.find((d) => d.text.includes(r['ctx_a'] as string))!;
      assert.ok(src.text.includes(`${r['ctx_a'] as string} ${gold}`));
      for (const e of endings) if (e !== gold) assert.ok(!src.text.includes(e), 'distractors come from other documents');
    }
    for (const r of proxyRecords('proxy_word_order', docs, { seed: 5 })) {
      const c = r['choices'] as { text: string[] };
      const gold = c.text[r['answerKey'] === 'A' ? 0 : 1]!;
      const bad = c.text[r['answerKey'] === 'A' ? 1 : 0]!;
      assert.ok(docs.some((d) => d.text.includes(`${r['question_stem'] as string} ${gold}`)));
      assert.deepEqual([...bad.split(' ')].sort(), [...gold.split(' ')].sort());
      assert.notEqual(bad, gold);
    }
  });
});
