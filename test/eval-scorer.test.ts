/**
 * The batched scorer against an independent reference: hand-written JSONL files in every schema
 * (hellaswag brackets and capitalisation, winogrande blanks, a context ending in a space, a merge
 * across the context/continuation boundary, documents longer than the context window, non-ASCII
 * text) scored in batches must give the log-likelihoods of one full-sequence forward per request of a
 * TP-1 model (test/helpers/eval.ts); the metrics follow from them; TP 2 at p = 1 gives the same
 * scores; at p = 0.5 virtual ranks and worker threads give identical bits; targetLogProbs matches
 * the logits at TP 1 and TP 2.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { selectBackend } from '../src/backend/index.js';
import { aggregate, buildTaskSet, type TaskSet } from '../src/eval/run.js';
import { scoreRequests, type Scores } from '../src/eval/scorer.js';
import { scoreOnThreads } from '../src/eval/threads.js';
import { resolveConfig } from '../src/model/config.js';
import { VirtualModel } from '../src/model/harness.js';
import { referenceLL, referenceWindow, ToyTokenizer } from './helpers/eval.js';

const tok = new ToyTokenizer();
const L = 32;
const be = selectBackend('js', { quiet: true });
const model = { vocab: tok.vocabSize, hidden: 32, layers: 2, heads: 4, kvHeads: 2, ffn: 64, seqLen: L };

function vmAt(tp: number, p: number): VirtualModel {
  const vm = new VirtualModel(resolveConfig(model, { tp, p }), be);
  // The same logical weights at every TP degree (initFromSeed draws each full tensor, then slices).
  for (const m of vm.ranks) m.initFromSeed(7);
  return vm;
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'caat-evalscore-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const LONG = 'the whale rose from the dark water and the crew fell silent in the cold morning light';
const FILES: Record<string, object[]> = {
  lambada_openai: [
    { text: 'the cat sat on the mat' },
    { text: 'he said  hello' }, // double space: a trailing context space moves into the continuation
    { text: 'Le café était très bon — merci 日本語' }, // non-ASCII
    { text: LONG }, // longer than the window: left-truncated
    { text: 'I walked w' }, // the continuation " w" merges into "ed w": no tokens of its own
  ],
  hellaswag: [
    { activity_label: 'Removing ice', ctx_a: 'A man [header] stands.', ctx_b: 'HE scrapes THE car', endings: ['[step] uses a scraper.', 'pours  water.', 'drives [title] away', 'sings'], label: '2' },
    { activity_label: 'Baking', ctx_a: 'She mixes flour', ctx_b: 'then', endings: ['bakes it.', 'sleeps.', 'eats the bowl.'], label: 0 },
  ],
  winogrande: [
    { sentence: "The trophy didn't fit in the suitcase because _ was too big.", option1: 'the trophy', option2: 'the suitcase', answer: '1' },
    { sentence: "Sam gave Tom _'s bike back.", option1: 'Sam', option2: 'Tom', answer: '2' },
  ],
  piqa: [{ goal: 'Open a jar', sol1: 'twist the lid', sol2: 'eat the lid', label: 0 }],
  openbookqa: [
    { id: '1', question_stem: 'The sun is ', choices: { text: ['hot', 'cold', 'blue', 'wet'], label: ['A', 'B', 'C', 'D'] }, answerKey: 'A' }, // context ending in a space
    { id: '2', question_stem: 'I walked', choices: { text: ['with her', 'alone'], label: ['A', 'B'] }, answerKey: 'B' }, // " with" after "walked": a merge across the boundary
  ],
  boolq: [{ question: 'is the sky blue', passage: 'The sky is blue.', idx: 0, label: 1 }],
  wikitext: [
    { page: ' = Title = \n \n Some text , here @-@ there . \n' },
    { page: `${LONG} ; ${LONG} . ${LONG} , ünïcödé 😀\n` }, // several windows
  ],
};
const taskArgs = Object.entries(FILES).map(([type, recs]) => {
  const f = path.join(tmp, `${type}.jsonl`);
  fs.writeFileSync(f, recs.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return `${type}=${f}`;
});

const set: TaskSet = buildTaskSet(taskArgs, { tokenizer: tok, L, heldOut: () => [] });

/** Every request's reference (ll, greedy) in the set's order, each from its own forward. */
async function references(vm: VirtualModel): Promise<Scores> {
  const m = vm.ranks[0]!;
  const ll = new Float64Array(set.requests.length);
  const greedy = new Uint8Array(set.requests.length);
  for (const t of set.tasks) {
    for (const [i, d] of t.docs.entries()) {
      const idx = t.reqs[i];
      if (!idx) continue;
      if (d.kind === 'rolling') {
        // The windows written out again: first [EOS] + T[0:L-1]; then disjoint chunks of ≤ L tokens,
        // each read from the L tokens before its last target.
        const T = tok.encode(d.text);
        const wins: [number[], number][] = [[[0, ...T.slice(0, Math.min(L, T.length))], Math.min(L, T.length)]];
        for (let doneTok = Math.min(L, T.length); doneTok < T.length; ) {
          const w = Math.min(L, T.length - doneTok);
          wins.push([T.slice(doneTok + w - L - 1, doneTok + w), w]);
          doneTok += w;
        }
        assert.equal(wins.length, idx.length);
        for (const [k, [seq, n]] of wins.entries()) {
          const r = await referenceWindow(m, seq, n);
          ll[idx[k]!] = r.ll;
          greedy[idx[k]!] = r.greedy ? 1 : 0;
        }
        continue;
      }
      const reqs = d.kind === 'choice' ? d.requests : [d.request];
      for (const [k, r] of reqs.entries()) {
        const ref = (await referenceLL(m, tok, r.context, r.continuation))!;
        assert.equal(ref.n, set.requests[idx[k]!]!.scored, `${t.name} doc ${i} request ${k}: continuation token count`);
        ll[idx[k]!] = ref.ll;
        greedy[idx[k]!] = ref.greedy ? 1 : 0;
      }
    }
  }
  return { ll, greedy };
}

function assertClose(got: Scores, want: Scores, tol: number, what: string): void {
  assert.equal(got.ll.length, want.ll.length);
  for (let i = 0; i < got.ll.length; i++) {
    assert.ok(Math.abs(got.ll[i]! - want.ll[i]!) <= tol * Math.max(1, Math.abs(want.ll[i]!)), `${what}: request ${i}: ${got.ll[i]} vs ${want.ll[i]}`);
  }
}

describe('batched scorer', () => {
  let ref: Scores;
  let tp1: Scores;

  test('every schema: the batched scores equal one full-sequence forward per request', async () => {
    const vm = vmAt(1, 1);
    ref = await references(vm);
    // Small batches (several shapes and paddings) and one big batch.
    tp1 = await scoreRequests(vm, set.requests, { batchTokens: 64 });
    assertClose(tp1, ref, 2e-5, 'TP 1, 64-token batches');
    assertClose(await scoreRequests(vm, set.requests, { batchTokens: 100000 }), ref, 2e-5, 'TP 1, one batch');
    assert.deepEqual([...tp1.greedy], [...ref.greedy]);
    // The unscorable document is reported, not dropped silently.
    const lam = set.tasks.find((t) => t.type === 'lambada_openai')!;
    assert.match(lam.errors[4]!, /no tokens of its own/);
    assert.deepEqual(lam.errors.slice(0, 4), [null, null, null, null]);
    assert.ok(set.requests[lam.reqs[3]![0]!]!.seq.length === L + 1, 'the long lambada text is truncated to L + 1 tokens');
    assert.ok(set.tasks.find((t) => t.type === 'wikitext')!.reqs[1]!.length >= 3, 'the long page spans several windows');
  });

  test('metrics follow lm-evaluation-harness from the per-request log-likelihoods', () => {
    const res = aggregate(set, ref, { bootstrapIters: 1000, samples: true });
    const get = (task: string, metric: string) => res.records.find((r) => r.task === task && r.metric === metric)!;
    const lam = set.tasks.find((t) => t.type === 'lambada_openai')!;
    const lls = lam.reqs.slice(0, 4).map((ix) => ref.ll[ix![0]!]!);
    assert.equal(get('lambada_openai', 'perplexity').value, Math.exp(-(lls.reduce((a, b) => a + b) / 4)));
    assert.equal(get('lambada_openai', 'perplexity').n, 4);
    assert.deepEqual(res.unscored.map((u) => [u.task, u.doc_id]), [['lambada_openai', 4]]);
    const hs = set.tasks.find((t) => t.type === 'hellaswag')!;
    let acc = 0;
    let accNorm = 0;
    hs.docs.forEach((d, i) => {
      if (d.kind !== 'choice') return;
      const l = hs.reqs[i]!.map((k) => ref.ll[k]!);
      const arg = (xs: number[]) => xs.indexOf(Math.max(...xs));
      acc += arg(l) === d.gold ? 1 : 0;
      accNorm += arg(l.map((x, k) => x / [...d.choices[k]!].length)) === d.gold ? 1 : 0;
    });
    assert.equal(get('hellaswag', 'acc').value, acc / 2);
    assert.equal(get('hellaswag', 'acc_norm').value, accNorm / 2);
    const wt = set.tasks.find((t) => t.type === 'wikitext')!;
    const sumLl = wt.reqs.flat().reduce((a: number, k) => a + ref.ll[k!]!, 0);
    // Words and bytes of the raw pages (Python re.split(r"\s+") fields, UTF-8 bytes).
    const words = 12 + 57; // python3: len(re.split(r"\s+", page)) for the two pages
    const bytes = Buffer.byteLength(FILES.wikitext!.map((p) => (p as { page: string }).page).join(''));
    assert.ok(Math.abs(get('wikitext', 'word_perplexity').value - Math.exp(-sumLl / words)) < 1e-9 * Math.exp(-sumLl / words));
    assert.ok(Math.abs(get('wikitext', 'bits_per_byte').value - -sumLl / bytes / Math.LN2) < 1e-9);
    assert.equal(get('wikitext', 'bits_per_byte').stderr, null);
    assert.deepEqual(res.records.filter((r) => r.task === 'winogrande').map((r) => r.metric), ['acc']);
    const s = res.samples.find((x) => x['task'] === 'winogrande' && x['doc_id'] === 1)!;
    assert.deepEqual(s['continuations'], [" 's bike back.", " 's bike back."]);
    assert.deepEqual(s['context'], ['Sam gave Tom Sam', 'Sam gave Tom Tom']);
  });

  test('TP 2 at p = 1 gives the TP-1 scores; targetLogProbs matches the logits', async () => {
    const vm2 = vmAt(2, 1);
    const tp2 = await scoreRequests(vm2, set.requests, { batchTokens: 64 });
    assertClose(tp2, tp1, 1e-5, 'TP 2 p = 1 vs TP 1');
    assert.deepEqual([...tp2.greedy], [...tp1.greedy]);
  });

  test('p = 0.5: virtual ranks and worker threads give identical bits', async () => {
    const vm = vmAt(2, 0.5);
    const virt = await scoreRequests(vm, set.requests, { batchTokens: 256 });
    const params = new Map(vm.ranks[0]!.specs.map((s) => [s.name, Float32Array.from(vm.full('params', s.name))]));
    for (const workers of [1, 2]) {
      const thr = await scoreOnThreads({ cfg: vm.cfg, backend: be.name, params, requests: set.requests, batchTokens: 256 }, workers);
      assert.deepEqual([...thr.ll], [...virt.ll], `${workers} worker(s)`);
      assert.deepEqual([...thr.greedy], [...virt.greedy]);
    }
  });

  test('targetLogProbs at TP 2, p = 0.5: log-softmax of the gathered logits; ties go to the first global index', async () => {
    const vm = vmAt(2, 0.5);
    const V = vm.cfg.vocab;
    const Vl = V / 2;
    const inputs = Int32Array.from([5, 9, 14, 20, 7, 30]);
    const targets = Int32Array.from([0, V - 2, 11, 3, 40, Vl]);
    const run = () =>
      vm.all(async (m) => {
        await m.forward(inputs, targets, 2, 3);
        return { ...(await m.targetLogProbs(targets)), local: Float32Array.from(m.logitsLocal()) };
      });
    const got = await run();
    for (let i = 0; i < 6; i++) {
      const row = [...got[0]!.local.subarray(i * Vl, (i + 1) * Vl), ...got[1]!.local.subarray(i * Vl, (i + 1) * Vl)];
      const max = Math.max(...row);
      const lse = max + Math.log(row.reduce((a, x) => a + Math.exp(x - max), 0));
      assert.ok(Math.abs(got[0]!.logp[i]! - (row[targets[i]!]! - lse)) < 1e-5, `position ${i}`);
      assert.equal(got[0]!.greedy[i], row.indexOf(max) === targets[i] ? 1 : 0);
    }
    assert.deepEqual([...got[1]!.logp], [...got[0]!.logp]);
    assert.deepEqual([...got[1]!.greedy], [...got[0]!.greedy]);
    // A zero final-norm weight makes every logit 0: all V tie, token 0 (rank 0's block) is the argmax.
    const full = new Map(vm.ranks[0]!.specs.map((sp) => [sp.name, Float32Array.from(vm.full('params', sp.name))]));
    full.get('model.norm.weight')!.fill(0);
    for (const m of vm.ranks) m.loadFull((sp) => full.get(sp.name)!);
    const tied = await run();
    assert.deepEqual([...tied[0]!.greedy], [1, 0, 0, 0, 0, 0]);
    assert.deepEqual([...tied[1]!.greedy], [1, 0, 0, 0, 0, 0]);
    for (const x of tied[0]!.logp) assert.ok(Math.abs(x + Math.log(V)) < 1e-6);
  });
});
