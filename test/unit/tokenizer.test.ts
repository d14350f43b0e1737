// The tokenizer and chat template against what tokenizers/transformers computed (expected.json).
import t from 'tap';
import { readFileSync } from 'node:fs';
import { Tokenizer } from '../../lib/tokenize/tokenizer.ts';

const dir = new URL('../fixtures/ref/tiny-llama', import.meta.url).pathname;
const exp = JSON.parse(readFileSync(new URL('../fixtures/ref/expected.json', import.meta.url), 'utf8'));
const tok = await Tokenizer.load(dir);

t.test('encode/decode match tokenizers exactly', async (t) => {
  for (const c of exp.tokenize) {
    t.same(tok.encode(c.text), c.ids, `ids of ${JSON.stringify(c.text)}`);
    t.equal(tok.decode(c.ids), c.text, 'decode round-trips');
  }
});

t.test('chat template renders as apply_chat_template', async (t) => {
  const text = tok.chatPrompt(exp.chat_template.messages, { addGenerationPrompt: true });
  t.equal(text, exp.chat_template.text);
  t.same(tok.encode(text), exp.chat_template.ids);
  t.notMatch(tok.chatPrompt(exp.chat_template.messages, { addGenerationPrompt: false }), /assistant/);
});

t.test('special: false keeps special-token text as text', async (t) => {
  const eot = tok.tokenToId('<|eot_id|>')!;
  t.same(tok.encode('<|eot_id|>'), [eot]);
  const asText = tok.encode('<|eot_id|>', { special: false });
  t.notOk(asText.includes(eot));
  t.equal(tok.decode(asText), '<|eot_id|>');
});

t.test('end ids include eos and eot', async (t) => {
  t.ok(tok.endIds.has(4));
});

t.test('bad input', async (t) => {
  await t.rejects(Tokenizer.load('/nonexistent-dir'), /tokenizer\.json is missing/);
  t.throws(() => tok.chatPrompt([{ role: 'user' } as never]), /string `content`/);
});
