/**
 * Zero-shot tasks as data, following lm-evaluation-harness v0.4.x: for each task type the record
 * schema of the Hugging Face data set it reads, and `plan(record)`, which does what the task's
 * doc_to_text / doc_to_target / doc_to_choice do and yields the requests of one document:
 *
 * | type           | request kind          | context                                         | continuation(s)                  | metrics |
 * |----------------|-----------------------|-------------------------------------------------|----------------------------------|---------|
 * | lambada_openai | loglikelihood         | text.split(' ')[:-1].join(' ')                  | ' ' + last word                  | perplexity, acc |
 * | hellaswag      | multiple choice       | preprocess(activity_label: ctx_a Capitalize(ctx_b)) | ' ' + preprocess(ending)     | acc, acc_norm |
 * | winogrande     | multiple choice (input) | sentence[:i] + option_k                       | ' ' + sentence[i+1:].strip()     | acc |
 * | piqa           | multiple choice       | "Question: {goal}\nAnswer:"                     | ' ' + sol1, ' ' + sol2           | acc, acc_norm |
 * | openbookqa     | multiple choice       | question_stem                                   | ' ' + choices.text[k]            | acc, acc_norm |
 * | boolq          | multiple choice       | "{passage}\nQuestion: {question}?\nAnswer:"     | ' no', ' yes'                    | acc |
 * | wikitext       | loglikelihood_rolling | (none)                                          | wikitext_detokenizer(page)       | word_perplexity, byte_perplexity, bits_per_byte |
 *
 * JSONL files: one record per line; `doc_id` is the 0-based line number (blank lines are skipped but
 * counted). A bad record is refused naming the file, the line and the field.
 */
import * as fs from 'node:fs';
import { z } from 'zod';
import { UserError } from '../cli/run.js';
import { hellaswagPreprocess, pyCapitalize, pyLstrip, pyStrip, wikitextDetokenize } from './pytext.js';

export const TASK_TYPES = ['lambada_openai', 'hellaswag', 'winogrande', 'piqa', 'openbookqa', 'boolq', 'wikitext'] as const;
export type TaskType = (typeof TASK_TYPES)[number];

export function isTaskType(s: string): s is TaskType {
  return (TASK_TYPES as readonly string[]).includes(s);
}

/** One loglikelihood request: the summed log-probability of `continuation` after `context`. */
export interface LLRequest {
  context: string;
  continuation: string;
}

/** What one document asks of the model and how its result is judged. */
export type DocPlan =
  | {
      kind: 'choice';
      doc_id: number;
      requests: LLRequest[];
      /** The choice strings without the delimiter space (acc_norm divides by their code points). */
      choices: string[];
      gold: number;
      /** True for winogrande: the contexts differ, the continuation is shared. */
      multipleInput: boolean;
    }
  | { kind: 'cloze'; doc_id: number; request: LLRequest }
  | { kind: 'rolling'; doc_id: number; page: string; text: string };

export interface TaskDef {
  type: TaskType;
  kind: DocPlan['kind'];
  metrics: string[];
  schema: z.ZodType;
  plan(rec: never, docId: number): DocPlan;
}

/** Thrown by `plan` for a record that parses but cannot be used; names the field. */
export class FieldError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

const intLike = z.union([z.number().int(), z.string().regex(/^\s*\d+\s*$/, 'expected an integer or a string of digits')]);

const choice = (doc_id: number, context: string, choices: string[], gold: number, goldField: string): DocPlan => {
  if (!(gold >= 0 && gold < choices.length)) throw new FieldError(goldField, `gold index ${gold} is outside the ${choices.length} choices`);
  return { kind: 'choice', doc_id, requests: choices.map((c) => ({ context, continuation: ` ${c}` })), choices, gold, multipleInput: false };
};

const lambada: TaskDef = {
  type: 'lambada_openai',
  kind: 'cloze',
  metrics: ['perplexity', 'acc'],
  schema: z.looseObject({ text: z.string() }),
  plan(rec: { text: string }, doc_id) {
    const words = rec.text.split(' ');
    return { kind: 'cloze', doc_id, request: { context: words.slice(0, -1).join(' '), continuation: ` ${words[words.length - 1]!}` } };
  },
};

const hellaswag: TaskDef = {
  type: 'hellaswag',
  kind: 'choice',
  metrics: ['acc', 'acc_norm'],
  schema: z.looseObject({ activity_label: z.string(), ctx_a: z.string(), ctx_b: z.string(), endings: z.array(z.string()).min(2), label: intLike }),
  plan(rec: { activity_label: string; ctx_a: string; ctx_b: string; endings: string[]; label: number | string }, doc_id) {
    const query = hellaswagPreprocess(`${rec.activity_label}: ${rec.ctx_a} ${pyCapitalize(rec.ctx_b)}`);
    return choice(doc_id, query, rec.endings.map(hellaswagPreprocess), Number(rec.label), 'label');
  },
};

const winogrande: TaskDef = {
  type: 'winogrande',
  kind: 'choice',
  metrics: ['acc'],
  schema: z.looseObject({ sentence: z.string(), option1: z.string(), option2: z.string(), answer: z.union([z.enum(['1', '2']), z.literal(1), z.literal(2)]) }),
  plan(rec: { sentence: string; option1: string; option2: string; answer: string | number }, doc_id) {
    const i = rec.sentence.indexOf('_');
    if (i < 0) throw new FieldError('sentence', 'has no "_" blank');
    const target = pyStrip(rec.sentence.slice(i + 1));
    const contexts = [rec.sentence.slice(0, i) + rec.option1, rec.sentence.slice(0, i) + rec.option2];
    const gold = String(rec.answer) === '1' ? 0 : 1;
    return { kind: 'choice', doc_id, requests: contexts.map((c) => ({ context: c, continuation: ` ${target}` })), choices: contexts, gold, multipleInput: true };
  },
};

const piqa: TaskDef = {
  type: 'piqa',
  kind: 'choice',
  metrics: ['acc', 'acc_norm'],
  schema: z.looseObject({ goal: z.string(), sol1: z.string(), sol2: z.string(), label: z.number().int() }),
  plan(rec: { goal: string; sol1: string; sol2: string; label: number }, doc_id) {
    return choice(doc_id, `Question: ${rec.goal}\nAnswer:`, [rec.sol1, rec.sol2], rec.label, 'label');
  },
};

const openbookqa: TaskDef = {
  type: 'openbookqa',
  kind: 'choice',
  metrics: ['acc', 'acc_norm'],
  schema: z.looseObject({
    question_stem: z.string(),
    choices: z.looseObject({ text: z.array(z.string()).min(2), label: z.array(z.string()).min(2) }),
    answerKey: z.string(),
  }),
  plan(rec: { question_stem: string; choices: { text: string[]; label: string[] }; answerKey: string }, doc_id) {
    const gold = rec.choices.label.indexOf(pyLstrip(rec.answerKey));
    if (gold < 0) throw new FieldError('answerKey', `${JSON.stringify(rec.answerKey)} is not one of choices.label ${JSON.stringify(rec.choices.label)}`);
    if (rec.choices.label.length !== rec.choices.text.length) throw new FieldError('choices', `choices.text has ${rec.choices.text.length} entries but choices.label ${rec.choices.label.length}`);
    return choice(doc_id, rec.question_stem, rec.choices.text, gold, 'answerKey');
  },
};

const boolq: TaskDef = {
  type: 'boolq',
  kind: 'choice',
  metrics: ['acc'],
  schema: z.looseObject({ passage: z.string(), question: z.string(), label: z.union([z.literal(0), z.literal(1)]) }),
  plan(rec: { passage: string; question: string; label: number }, doc_id) {
    return choice(doc_id, `${rec.passage}\nQuestion: ${rec.question}?\nAnswer:`, ['no', 'yes'], rec.label, 'label');
  },
};

const wikitext: TaskDef = {
  type: 'wikitext',
  kind: 'rolling',
  metrics: ['word_perplexity', 'byte_perplexity', 'bits_per_byte'],
  schema: z.looseObject({ page: z.string() }),
  plan(rec: { page: string }, doc_id) {
    return { kind: 'rolling', doc_id, page: rec.page, text: wikitextDetokenize(rec.page) };
  },
};

export const TASKS: Record<TaskType, TaskDef> = { lambada_openai: lambada, hellaswag, winogrande, piqa, openbookqa, boolq, wikitext };

/** Hints for common mix-ups between releases of a data set. */
function hint(type: TaskType, rec: unknown): string {
  const r = rec as Record<string, unknown>;
  if (type === 'boolq' && r && typeof r === 'object' && 'answer' in r && !('label' in r)) {
    return ' (this looks like the google/boolq release: lm-evaluation-harness reads super_glue/boolq, whose "label" is 0 = False, 1 = True)';
  }
  return '';
}

/** Validate one record and plan its requests; throws UserError naming `where` (file:line) and the field. */
export function planRecord(type: TaskType, rec: unknown, docId: number, where: string): DocPlan {
  const def = TASKS[type];
  const r = def.schema.safeParse(rec);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const field = issue.path.length ? issue.path.join('.') : '(record)';
    let v: unknown = rec;
    for (const k of issue.path) v = v !== null && typeof v === 'object' ? (v as Record<PropertyKey, unknown>)[k as PropertyKey] : undefined;
    const missing = v === undefined;
    throw new UserError(`${where}: ${type} record: field "${field}": ${missing ? 'missing' : issue.message}${hint(type, rec)}`);
  }
  try {
    return def.plan(r.data as never, docId);
  } catch (e) {
    if (e instanceof FieldError) throw new UserError(`${where}: ${type} record: field "${e.field}": ${e.message}`);
    throw e;
  }
}

/** Parse a JSONL task file into document plans (doc_id = 0-based line). */
export function readTaskFile(type: TaskType, file: string): DocPlan[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new UserError(`${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
  return planRecords(type, text, file);
}

/** Parse JSONL text (see readTaskFile); `name` is used in error messages. */
export function planRecords(type: TaskType, text: string, name: string): DocPlan[] {
  const lines = text.split('\n');
  const docs: DocPlan[] = [];
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    let rec: unknown;
    try {
      rec = JSON.parse(line);
    } catch (e) {
      throw new UserError(`${name}:${i + 1}: not valid JSON (${(e as Error).message})`);
    }
    if (rec === null || typeof rec !== 'object' || Array.isArray(rec)) throw new UserError(`${name}:${i + 1}: expected a JSON object per line`);
    docs.push(planRecord(type, rec, i, `${name}:${i + 1}`));
  });
  if (docs.length === 0) throw new UserError(`${name}: no records (empty ${type} task file)`);
  return docs;
}
