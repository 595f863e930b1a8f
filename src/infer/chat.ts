/** Chat templates: the messages of a chat request rendered into one prompt, and the text that ends a turn. */
import * as fs from 'node:fs';

export interface ChatMessage {
  role: string;
  content: string;
}

export interface ChatTemplate {
  name: string;
  render(messages: ChatMessage[]): string;
  /** Stop strings that end the assistant's turn. */
  stop: string[];
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
 * `--chat-template chatml|llama3|FILE`: a built-in, or a JSON FILE
 * {"prefix": "…", "message": "…{role}…{content}…", "generation": "…", "stop": ["…"]}: the prompt is the
 * prefix, then `message` for every message, then `generation` (what opens the assistant's turn).
 */
export function chatTemplate(spec: string): ChatTemplate {
  if (spec === 'chatml') return chatml;
  if (spec === 'llama3') return llama3;
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(spec, 'utf8'));
  } catch (e) {
    throw new Error(`--chat-template ${spec}: not chatml or llama3, and not a readable JSON template file (${(e as Error).message})`);
  }
  const t = raw as { message?: unknown; generation?: unknown; stop?: unknown; prefix?: unknown };
  if (typeof t.message !== 'string' || !t.message.includes('{content}')) throw new Error(`--chat-template ${spec}: "message" must be a string containing {content} (and usually {role})`);
  if (t.generation !== undefined && typeof t.generation !== 'string') throw new Error(`--chat-template ${spec}: "generation" must be a string`);
  if (t.prefix !== undefined && typeof t.prefix !== 'string') throw new Error(`--chat-template ${spec}: "prefix" must be a string`);
  if (t.stop !== undefined && !(Array.isArray(t.stop) && t.stop.every((x) => typeof x === 'string'))) throw new Error(`--chat-template ${spec}: "stop" must be a list of strings`);
  const message = t.message;
  return {
    name: spec,
    render: (ms) => ((t.prefix as string | undefined) ?? '') + ms.map((m) => message.replaceAll('{role}', m.role).replaceAll('{content}', m.content)).join('') + ((t.generation as string | undefined) ?? ''),
    stop: (t.stop as string[] | undefined) ?? [],
  };
}
