/**
 * Chat templates: the built-ins, Jinja files rendered with @huggingface/jinja (the usual Hugging Face
 * chatml template gives exactly the built-in chatml prompt), templates stored with a run
 * (chat_template.jinja before tokenizer_config.json's chat_template), and clear errors.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { chatTemplate, runChatTemplate } from '../src/infer/chat.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'caat-chat-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
const tokens = { bos: '<s>', eos: '</s>' };
const msgs = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'Hi' },
];
const HF_CHATML = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

describe('chat templates', () => {
  test('built-ins', () => {
    assert.equal(chatTemplate('chatml', tokens).render(msgs), '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
    assert.deepEqual(chatTemplate('chatml', tokens).stop, ['<|im_end|>']);
    assert.equal(chatTemplate('llama3', tokens).render(msgs), '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n');
  });

  test('a Jinja file: the Hugging Face chatml template renders as the built-in; stop strings', () => {
    const f = path.join(tmp, 'chatml.jinja');
    fs.writeFileSync(f, HF_CHATML);
    const t = chatTemplate(f, tokens);
    assert.equal(t.render(msgs), chatTemplate('chatml', tokens).render(msgs));
    assert.deepEqual(t.stop, ['</s>', '<|im_end|>']);
    assert.equal(t.name, `--chat-template ${f}`);
  });

  test('bos_token, eos_token and loops over messages are the Jinja engine\'s', () => {
    const f = path.join(tmp, 'plain.jinja');
    fs.writeFileSync(f, "{{ bos_token }}{% for m in messages %}[{{ m.role | upper }}] {{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[ASSISTANT] {% endif %}");
    const t = chatTemplate(f, tokens);
    assert.equal(t.render(msgs), '<s>[SYSTEM] Be brief.</s>[USER] Hi</s>[ASSISTANT] ');
    assert.deepEqual(t.stop, ['</s>']);
  });

  test('errors name the file', () => {
    assert.throws(() => chatTemplate(path.join(tmp, 'missing.jinja'), tokens), /--chat-template .*missing\.jinja: not chatml or llama3, and not a readable Jinja template file/);
    const bad = path.join(tmp, 'bad.jinja');
    fs.writeFileSync(bad, '{% for m in messages %}{{ m.content }}');
    assert.throws(() => chatTemplate(bad, tokens), /bad\.jinja.*(not a valid Jinja template|fails on a one-message chat)/);
    const raises = path.join(tmp, 'raises.jinja');
    fs.writeFileSync(raises, "{{ raise_exception('only user and assistant roles') }}");
    assert.throws(() => chatTemplate(raises, tokens), /raises\.jinja.*fails on a one-message chat/);
  });

  test('stored with a run: chat_template.jinja first, then tokenizer_config.json; none: null', () => {
    const run = path.join(tmp, 'run');
    fs.mkdirSync(run);
    assert.equal(runChatTemplate(run, tokens), null);
    fs.writeFileSync(path.join(run, 'tokenizer_config.json'), JSON.stringify({ model_max_length: 64 }));
    assert.equal(runChatTemplate(run, tokens), null, 'a tokenizer_config.json without chat_template');
    fs.writeFileSync(path.join(run, 'tokenizer_config.json'), JSON.stringify({ chat_template: HF_CHATML }));
    const fromCfg = runChatTemplate(run, tokens)!;
    assert.equal(fromCfg.render(msgs), chatTemplate('chatml', tokens).render(msgs));
    assert.match(fromCfg.name, /tokenizer_config\.json chat_template$/);
    fs.writeFileSync(path.join(run, 'chat_template.jinja'), '{% for m in messages %}{{ m.content }};{% endfor %}');
    const fromFile = runChatTemplate(run, tokens)!;
    assert.equal(fromFile.render(msgs), 'Be brief.;Hi;');
    assert.match(fromFile.name, /chat_template\.jinja$/);
    fs.rmSync(path.join(run, 'chat_template.jinja'));
    fs.writeFileSync(path.join(run, 'tokenizer_config.json'), JSON.stringify({ chat_template: [{ name: 'default', template: 'x' }] }));
    assert.throws(() => runChatTemplate(run, tokens), /tokenizer_config\.json: "chat_template" must be a string/);
    fs.writeFileSync(path.join(run, 'tokenizer_config.json'), '{');
    assert.throws(() => runChatTemplate(run, tokens), /tokenizer_config\.json: not valid JSON/);
  });
});
