/**
 * Chat templates: the messages of a chat request rendered into one prompt, and the text that ends a
 * turn. A template is a built-in (chatml, llama3) or a Jinja template, rendered with Hugging Face's
 * own engine (@huggingface/jinja) with the variables transformers passes: `messages`,
 * `add_generation_prompt` (true), `bos_token`, `eos_token`.
 *
 * Where one comes from (the first that exists): `--chat-template chatml|llama3|FILE`; the run's
 * `chat_template.jinja`; the `chat_template` string of the run's `tokenizer_config.json` (the
 * Hugging Face layout). None: chat requests get a 400.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Template } from '@huggingface/jinja';

export interface ChatMessage {
  role: string;
  content: string;
}

export interface ChatTemplate {
  /** Where it came from: chatml, llama3 or a file path. */
  name: string;
  render(messages: ChatMessage[]): string;
  /** Stop strings that end the assistant's turn. */
  stop: string[];
}

/** The special tokens' text, for Jinja templates. */
export interface TemplateTokens {
  bos: string;
  eos: string;
}

const chatml: ChatTemplate = {
  name: 'chatml',
  render: (ms) => ms.map((m) => `<|im_start|>${m.role}\n${m.content}<|im_end|>\n`).join('') + '<|im_start|>assistant\n',
  stop: ['<|im_end|>'],
};

const llama3: ChatTemplate = {
  name: 'llama3',
  render: (ms) => '<|begin_of_text|>' + ms.map((m) => `<|start_header_id|>${m.role}<|end_header_id|>\n\n${m.content.trim()}<|eot_id|>`).join('') + '<|start_header_id|>assistant<|end_header_id|>\n\n',
  stop: ['<|eot_id|>'],
};

/**
 * A Jinja chat template. Stop strings: the eos token's text, and `<|im_end|>` / `<|eot_id|>` /
 * `<|end|>` when the template writes them after a message (how the common templates end a turn).
 */
export function jinjaTemplate(source: string, name: string, tokens: TemplateTokens): ChatTemplate {
  let t: Template;
  try {
    t = new Template(source);
  } catch (e) {
    throw new Error(`${name}: not a valid Jinja template: ${(e as Error).message}`);
  }
  const render = (messages: ChatMessage[]): string => t.render({ messages, add_generation_prompt: true, bos_token: tokens.bos, eos_token: tokens.eos });
  // Render a probe so that a template that fails on ordinary messages is refused at start-up.
  try {
    render([{ role: 'user', content: 'hi' }]);
  } catch (e) {
    throw new Error(`${name}: the Jinja template fails on a one-message chat: ${(e as Error).message}`);
  }
  const stop = [...new Set([tokens.eos, ...['<|im_end|>', '<|eot_id|>', '<|end|>'].filter((s) => source.includes(s))].filter((s) => s.length > 0))];
  return { name, render, stop };
}

/** `--chat-template chatml|llama3|FILE` (FILE: a Jinja template). */
export function chatTemplate(spec: string, tokens: TemplateTokens): ChatTemplate {
  if (spec === 'chatml') return chatml;
  if (spec === 'llama3') return llama3;
  let source: string;
  try {
    source = fs.readFileSync(spec, 'utf8');
  } catch (e) {
    throw new Error(`--chat-template ${spec}: not chatml or llama3, and not a readable Jinja template file (${(e as Error).message})`);
  }
  return jinjaTemplate(source, `--chat-template ${spec}`, tokens);
}

/** The template stored with a run (chat_template.jinja, else tokenizer_config.json's chat_template), or null. */
export function runChatTemplate(runDir: string, tokens: TemplateTokens): ChatTemplate | null {
  const jinja = path.join(runDir, 'chat_template.jinja');
  if (fs.existsSync(jinja)) return jinjaTemplate(fs.readFileSync(jinja, 'utf8'), jinja, tokens);
  const cfgPath = path.join(runDir, 'tokenizer_config.json');
  if (!fs.existsSync(cfgPath)) return null;
  let cfg: unknown;
  try {
    cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
  } catch (e) {
    throw new Error(`${cfgPath}: not valid JSON (${(e as Error).message})`);
  }
  const ct = (cfg as { chat_template?: unknown }).chat_template;
  if (ct === undefined || ct === null) return null;
  if (typeof ct !== 'string') throw new Error(`${cfgPath}: "chat_template" must be a string (a Jinja template)`);
  return jinjaTemplate(ct, `${cfgPath} chat_template`, tokens);
}
