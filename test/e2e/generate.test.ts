// loadModel/generate against the tiny reference checkpoint and what transformers computed for it.
import t from 'tap';
import { loadModel, generate } from '../../lib/infer/index.ts';
import { readSafetensors } from '../../lib/train/safetensors.ts';

const dir = new URL('../fixtures/ref/tiny-llama', import.meta.url).pathname;
const exp = (await readSafetensors(new URL('../fixtures/ref/expected.safetensors', import.meta.url).pathname)).tensors;
const greedyPrompt = Array.from(exp.greedy_prompt.data);
const greedyOut = Array.from(exp.greedy_out.data);
const model = await loadModel(dir, { device: 'cpu', quant: 'none' });
t.teardown(() => model.dispose());

t.test('greedy (temperature 0) reproduces transformers’ 16 greedy tokens', async (t) => {
  const r = await model.generate(greedyPrompt, { temperature: 0, maxTokens: 16, stop: [] });
  t.same(r.tokens, greedyOut);
  t.equal(r.stopReason, 'length');
  t.same(r.usage, { promptTokens: 8, completionTokens: 16 });
  t.equal(r.text, model.tokenizer.decode(greedyOut), 'text is the decode of the tokens');
  const viaCall = await generate({ model: dir, device: 'cpu', quant: 'none', prompt: Int32Array.from(greedyPrompt), temperature: 0, maxTokens: 16, stop: [] });
  t.same(viaCall.tokens, greedyOut, 'the convenience generate() loads, generates, disposes');
  const chunked = await loadModel(dir, { device: 'cpu', quant: 'none', prefillChunk: 3 });
  t.same((await chunked.generate(greedyPrompt, { temperature: 0, maxTokens: 16, stop: [] })).tokens, greedyOut, 'chunked prefill gives the same tokens');
  await chunked.dispose();
});

t.test('logits match transformers (fp32) and validate ids', async (t) => {
  const ids = Array.from(exp.input_ids.data.subarray(0, 12));
  const got = await model.logits(ids);
  const want = exp.logits.data.subarray(0, 12 * 384);
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]) / (Math.abs(want[i]) + 1e-3));
  t.ok(worst < 1e-3, `max relative error ${worst.toExponential(2)}`);
  await t.rejects(model.logits([1, 384]), { code: 'EINVAL', message: /token id 384 at position 1/ });
  await t.rejects(model.logits([]), /empty/);
});

t.test('a stop string spanning tokens ends the greedy run and is cut', async (t) => {
  const full = model.tokenizer.decode(greedyOut);
  const tail = model.tokenizer.decode(greedyOut.slice(4, 6)); // two tokens
  t.ok(tail.length > 1);
  const pieces: string[] = [];
  const r = await model.generate(greedyPrompt, { temperature: 0, maxTokens: 16, stop: [tail], onToken: (s) => pieces.push(s) });
  t.equal(r.stopReason, 'stop');
  t.equal(r.text, full.slice(0, full.indexOf(tail)));
  t.equal(pieces.join(''), r.text, 'streamed pieces equal the text');
  t.same(r.tokens, greedyOut.slice(0, 6));
});

t.test('sampling: seeded runs repeat, onToken concatenates to text, eos or length', async (t) => {
  const opts = { temperature: 1, topK: 0, topP: 1, seed: 42, maxTokens: 40, stop: [] as string[] };
  const pieces: string[] = [];
  const a = await model.generate(greedyPrompt, { ...opts, onToken: (s) => pieces.push(s) });
  const b = await model.generate(greedyPrompt, opts);
  t.same(a.tokens, b.tokens, 'same seed, same tokens');
  t.equal(pieces.join(''), a.text);
  t.ok(['eos', 'length'].includes(a.stopReason));
  const c = await model.generate(greedyPrompt, { ...opts, seed: 43 });
  t.notSame(c.tokens, a.tokens, 'another seed, another sample');
  // an end id stops generation
  let eosSeen = 0;
  for (let seed = 0; seed < 30 && eosSeen === 0; seed++) {
    const r = await model.generate(greedyPrompt, { ...opts, seed, maxTokens: 100, temperature: 1.5 });
    if (r.stopReason === 'eos') { eosSeen++; t.notOk(r.tokens.some((x) => model.endIds.has(x)), 'no end id in tokens'); }
  }
  t.comment(`eos reached in ${eosSeen} of the sampled runs`);
});

t.test('abort stops a generation at once', async (t) => {
  const ac = new AbortController();
  let n = 0;
  const r = await model.generate(greedyPrompt, { temperature: 0, maxTokens: 400, stop: [], signal: ac.signal, onToken: () => { if (++n === 3) ac.abort(); } });
  t.equal(r.stopReason, 'abort');
  t.ok(r.tokens.length < 12, `stopped after ${r.tokens.length} of 400 tokens`);
  t.equal(model.scheduler.active, 0);
});

t.test('concurrent generations give the same tokens as alone', async (t) => {
  const runs = await Promise.all([1, 2, 3, 4].map((seed) => model.generate(greedyPrompt, { seed, temperature: 0.8, maxTokens: 12, stop: [] })));
  for (const [i, r] of runs.entries()) {
    const alone = await model.generate(greedyPrompt, { seed: i + 1, temperature: 0.8, maxTokens: 12, stop: [] });
    t.same(r.tokens, alone.tokens, `seed ${i + 1}`);
  }
});

t.test('the LoRA adapter: logits match PEFT, and it changes the output', async (t) => {
  const lora = await loadModel(dir, { device: 'cpu', quant: 'none', adapter: `${dir}/lora` });
  t.teardown(() => lora.dispose());
  const ids = Array.from(exp.input_ids.data.subarray(0, 12));
  const got = await lora.logits(ids);
  const want = exp.lora_logits.data.subarray(0, 12 * 384);
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]) / (Math.abs(want[i]) + 1e-3));
  t.ok(worst < 1e-3, `max relative error vs PEFT ${worst.toExponential(2)}`);
  t.equal(lora.name, 'tiny-llama+lora');
  await t.rejects(loadModel(dir, { device: 'cpu', adapter: '/nonexistent' }), /adapter_config\.json is missing/);
});

t.test('nf4 loads and generates; chat prompts go through the training format', async (t) => {
  const q = await loadModel(dir, { device: 'cpu' });
  t.teardown(() => q.dispose());
  t.equal(q.quant, 'nf4');
  const r = await q.generate(q.promptIds('want to grab dinner tonight?'), { maxTokens: 8, seed: 1 });
  t.ok(r.tokens.length >= 1 && r.tokens.length <= 8);
  t.same(q.promptIds('want to grab dinner tonight?').slice(0, 3), [0, 2, 89], 'chat template ids (begin_of_text, start_header, user)');
});

t.test('bad options are refused before any work', async (t) => {
  await t.rejects(loadModel(dir, { device: 'tpu' as never }), /device must be/);
  await t.rejects(loadModel(dir, { quant: 'int8' as never }), /quant must be/);
  await t.rejects(loadModel('/nonexistent-model'), /does not exist|missing|cannot/);
  await t.rejects(generate({ model: dir } as never), /exactly one of `prompt` and `messages`/);
});
