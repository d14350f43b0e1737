// The training format: chat template and plain, masking, truncation, skips.
import t from 'tap';
import { Tokenizer } from '../../../lib/tokenize/tokenizer.ts';
import { encodePair, promptText, answerText, fitExample, fitTokenized, resolveFormat } from '../../../lib/tokenize/format.ts';

const dir = new URL('../../fixtures/ref/tiny-llama', import.meta.url).pathname;
const tok = await Tokenizer.load(dir, [4]);
const EOT = 4, BOS = 0;
const pair = { input: 'want to grab dinner tonight?', output: 'yeah | bartaco?' };
const answerOf = (ids: Int32Array, labels: Int32Array) => {
  const i = labels.findIndex((x) => x !== -100);
  return { prompt: tok.decode(Array.from(ids.slice(0, i))), answer: tok.decode(Array.from(ids.slice(i))), i };
};

t.test('chat format: template prompt masked, answer + DONE + eot trained', async (t) => {
  t.equal(resolveFormat(tok, 'auto'), 'chat');
  const prompt = promptText(tok, pair.input);
  t.equal(prompt, '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nwant to grab dinner tonight?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n');
  t.equal(answerText(tok, pair), 'yeah | bartaco? DONE<|eot_id|>');
  const r = encodePair(tok, pair);
  if (!('example' in r)) throw new Error('skipped');
  const { ids, labels } = r.example;
  t.equal(ids.length, labels.length);
  const { prompt: p, answer, i } = answerOf(ids, labels);
  t.equal(p, prompt, 'the masked part is exactly the inference prompt');
  t.same(Array.from(ids.slice(0, i)), tok.encode(prompt), 'prompt tokens as inference encodes them');
  t.equal(answer, 'yeah | bartaco? DONE<|eot_id|>');
  t.equal(ids[ids.length - 1], EOT, 'ends with the end-of-turn token, in the loss');
  t.same(Array.from(labels.slice(i)), Array.from(ids.slice(i)), 'labels aligned with ids (shift happens in the loss)');
  t.ok(labels.slice(0, i).every((x) => x === -100));
});

t.test('context turns are earlier messages', async (t) => {
  const r = encodePair(tok, { ...pair, context: [{ role: 'user', content: 'yo' }, { role: 'assistant', content: 'sup' }] });
  if (!('example' in r)) throw new Error('skipped');
  const { prompt, answer } = answerOf(r.example.ids, r.example.labels);
  t.match(prompt, /^<\|begin_of_text\|><\|start_header_id\|>user<\|end_header_id\|>\n\nyo<\|eot_id\|><\|start_header_id\|>assistant<\|end_header_id\|>\n\nsup<\|eot_id\|>.*want to grab/s);
  t.equal(answer, 'yeah | bartaco? DONE<|eot_id|>', 'only the last answer is trained');
});

t.test('plain format', async (t) => {
  const r = encodePair(tok, pair, { format: 'plain' });
  if (!('example' in r)) throw new Error('skipped');
  const { prompt, answer } = answerOf(r.example.ids, r.example.labels);
  t.equal(prompt + answer, '<|begin_of_text|>want to grab dinner tonight? → yeah | bartaco? DONE<|eot_id|>');
  t.equal(answer, ' yeah | bartaco? DONE<|eot_id|>');
  const custom = encodePair(tok, pair, { format: 'plain', stopMarker: ' END' });
  if (!('example' in custom)) throw new Error('skipped');
  t.match(answerOf(custom.example.ids, custom.example.labels).answer, / END<\|eot_id\|>$/);
});

t.test('too long: context dropped first, then prompt cut from the left keeping BOS; answer-only overflow skipped', async (t) => {
  const full = encodePair(tok, pair);
  if (!('example' in full)) throw new Error('skipped');
  const n = full.example.ids.length;
  const ctx = [{ role: 'user', content: 'did you see the game last night' }, { role: 'assistant', content: 'omg yes' }];
  const withCtx = encodePair(tok, { ...pair, context: ctx }, { maxSeqLen: n });
  if (!('example' in withCtx)) throw new Error('skipped');
  t.ok(withCtx.truncated, 'counted as truncated');
  t.same(Array.from(withCtx.example.ids), Array.from(full.example.ids), 'the context went, the pair stayed whole');
  const cut = encodePair(tok, pair, { maxSeqLen: n - 5 });
  if (!('example' in cut)) throw new Error('skipped');
  t.equal(cut.example.ids.length, n - 5);
  t.equal(cut.example.ids[0], BOS, 'BOS kept');
  t.same(Array.from(cut.example.ids.slice(1)), Array.from(full.example.ids.slice(6)), 'cut from the left of the prompt');
  t.equal(answerOf(cut.example.ids, cut.example.labels).answer, 'yeah | bartaco? DONE<|eot_id|>', 'the answer is whole');
  const answerLen = full.example.labels.filter((x) => x !== -100).length;
  t.same(encodePair(tok, pair, { maxSeqLen: answerLen }), { skipped: 'answerTooLong', answerTokens: answerLen }, 'needs one prompt token before the answer');
  t.ok('example' in encodePair(tok, pair, { maxSeqLen: answerLen + 1 }));
  t.same(encodePair(tok, { input: 'x', output: '  ' }), { skipped: 'emptyOutput', answerTokens: 0 });
});

t.test('fitExample / fitTokenized', async (t) => {
  const r = fitExample([0, 5, 6, 7, 8], [9, 10], 4, 0);
  if (!('example' in r)) throw new Error('skipped');
  t.same(Array.from(r.example.ids), [0, 8, 9, 10]);
  t.same(Array.from(r.example.labels), [-100, -100, 9, 10]);
  const p = fitTokenized([0, 5, 6, 7, 8, 9, 10], [-100, -100, -100, -100, -100, 9, 10], 4, 0);
  if (!('example' in p)) throw new Error('skipped');
  t.same(Array.from(p.example.ids), [0, 8, 9, 10]);
  t.same(Array.from(p.example.labels), [-100, -100, 9, 10]);
  t.same(fitTokenized([1, 2, 3], [-100, -100, -100], 8), { skipped: 'noTargets', answerTokens: 0 });
  t.same(fitTokenized([1, 2, 3, 4], [-100, 2, 3, 4], 3), { skipped: 'answerTooLong', answerTokens: 3 });
  const short = fitTokenized([1, 2, 3], [-100, 2, 3], 8);
  if (!('example' in short)) throw new Error('skipped');
  t.notOk(short.truncated);
});
