// JSONL reading, the Arrow cache, length-bucketed batches and the seeded order.
import t from 'tap';
import { readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Tokenizer } from '../../../lib/tokenize/tokenizer.ts';
import { collate, examplesFromArrow, examplesToArrow, loadDataset, parseJsonl, planBatches, tokenizeRecords } from '../../../lib/tokenize/dataset.ts';
import { Rng } from '../../../lib/train/rng.ts';

const modelDir = new URL('../../fixtures/ref/tiny-llama', import.meta.url).pathname;
const tok = await Tokenizer.load(modelDir, [4]);

t.test('parseJsonl: pairs, pre-tokenized, errors name file and line', async (t) => {
  const recs = parseJsonl('{"input":"a","output":"b"}\n\n{"input":"c","output":"d","context":[{"role":"user","content":"x"}]}\n', 'f.jsonl');
  t.equal(recs.length, 2);
  t.same(recs[1], { kind: 'pair', pair: { input: 'c', output: 'd', context: [{ role: 'user', content: 'x' }] } });
  t.same(parseJsonl('{"input_ids":[1,2],"labels":[-100,2]}', 'p')[0], { kind: 'tokens', ids: [1, 2], labels: [-100, 2] });
  t.throws(() => parseJsonl('{"input":"a","output":"b"}\nnope', 'f.jsonl'), /f\.jsonl:2 is not valid JSON/);
  t.throws(() => parseJsonl('{"input":"a"}', 'f.jsonl'), /f\.jsonl:1: each line needs string "input" and "output"/);
  t.throws(() => parseJsonl('{"input_ids":[1,2],"labels":[2]}', 'f'), /labels has 1 entries but input_ids has 2/);
  t.throws(() => parseJsonl('{"input_ids":[1,2]}', 'f'), /needs labels/);
  t.throws(() => parseJsonl('{"input":"a","output":"b"}\n{"input_ids":[1],"labels":[1]}', 'f'), /f:2 mixes pre-tokenized/);
});

t.test('tokenizeRecords counts skips and truncations', async (t) => {
  const long = 'did you see the game last night '.repeat(20);
  const { examples, stats } = tokenizeRecords(tok, [
    { kind: 'pair', pair: { input: 'hi', output: 'yo' } },
    { kind: 'pair', pair: { input: long, output: 'yo' } },
    { kind: 'pair', pair: { input: 'hi', output: long } },
    { kind: 'pair', pair: { input: 'hi', output: '' } },
  ], { maxSeqLen: 64 });
  t.equal(examples.length, 2);
  t.same(stats.skipped, { answerTooLong: 1, emptyOutput: 1, noTargets: 0 });
  t.equal(stats.truncated, 1);
  t.equal(examples[1].ids.length, 64);
  t.equal(stats.tokens, examples[0].ids.length + 64);
});

t.test('Arrow IPC round trip and the cache', async (t) => {
  const dir = t.testdir();
  const file = path.join(dir, 'train.jsonl');
  writeFileSync(file, ['{"input":"want to grab dinner tonight?","output":"yeah | bartaco?"}', '{"input":"lol no way","output":"haha that is amazing"}'].join('\n'));
  const cacheDir = path.join(dir, 'cache');
  const a = await loadDataset(file, tok, { cacheDir, modelDir });
  t.notOk(a.cached);
  t.equal(readdirSync(cacheDir).filter((f) => f.endsWith('.arrow')).length, 1);
  const b = await loadDataset(file, tok, { cacheDir, modelDir });
  t.ok(b.cached, 'second read hits the cache');
  t.same(b.stats, a.stats);
  t.same(b.examples.map((e) => [Array.from(e.ids), Array.from(e.labels)]), a.examples.map((e) => [Array.from(e.ids), Array.from(e.labels)]));
  const c = await loadDataset(file, tok, { cacheDir, modelDir, stopMarker: ' END' });
  t.notOk(c.cached, 'another option, another cache entry');
  writeFileSync(file, '{"input":"x","output":"y"}\n');
  const d = await loadDataset(file, tok, { cacheDir, modelDir });
  t.notOk(d.cached, 'a changed file is re-tokenized');
  t.equal(d.examples.length, 1);
  const back = examplesFromArrow(examplesToArrow(a.examples, a.stats));
  t.same(Array.from(back.examples[1].labels), Array.from(a.examples[1].labels));
  writeFileSync(path.join(dir, 'empty.jsonl'), '\n\n');
  await t.rejects(loadDataset(path.join(dir, 'empty.jsonl'), tok), /empty\.jsonl is empty: it holds no examples/);
  await t.rejects(loadDataset(path.join(dir, 'missing.jsonl'), tok), /cannot read .*missing\.jsonl: no such file/);
});

t.test('planBatches: budget, every example once, seeded, bucketed by length', async (t) => {
  const rng = new Rng(3);
  const lengths = Array.from({ length: 200 }, () => 5 + rng.below(120));
  const plan = planBatches(lengths, { batchTokens: 512, seed: 1, epoch: 0 });
  const seen = plan.flat().sort((a, b) => a - b);
  t.same(seen, lengths.map((_, i) => i), 'every example exactly once');
  for (const b of plan) t.ok(b.length === 1 || b.length * Math.max(...b.map((i) => lengths[i])) <= 512, 'within the token budget');
  const padded = plan.reduce((s, b) => s + b.length * Math.max(...b.map((i) => lengths[i])), 0);
  const real = lengths.reduce((a, b) => a + b, 0);
  t.ok(padded / real < 1.1, `little padding (${(padded / real).toFixed(3)}× the real tokens)`);
  t.same(planBatches(lengths, { batchTokens: 512, seed: 1, epoch: 0 }), plan, 'same seed, same plan');
  t.notSame(planBatches(lengths, { batchTokens: 512, seed: 1, epoch: 1 }), plan, 'another epoch, another order');
  t.notSame(planBatches(lengths, { batchTokens: 512, seed: 2, epoch: 0 }), plan, 'another seed, another order');
  t.same(planBatches([600, 3], { batchTokens: 512, shuffle: false }), [[1], [0]], 'an example over budget gets its own batch');
  t.same(planBatches([3, 3, 3, 3], { batchTokens: 512, shuffle: false, maxRows: 3 }).map((b) => b.length), [3, 1]);
});

t.test('collate pads right and masks the padding', async (t) => {
  const ex = [{ ids: Int32Array.from([1, 2, 3]), labels: Int32Array.from([-100, 2, 3]) }, { ids: Int32Array.from([5, 6]), labels: Int32Array.from([-100, 6]) }];
  const b = collate(ex, [0, 1], 4);
  t.same([b.batch, b.seqLen, b.targets], [2, 3, 3]);
  t.same(Array.from(b.ids), [1, 2, 3, 5, 6, 4]);
  t.same(Array.from(b.labels), [-100, 2, 3, -100, 6, -100]);
});

t.test('Rng is deterministic and uniform enough', async (t) => {
  const a = new Rng(42), b = new Rng(42);
  const xs = Array.from({ length: 5 }, () => a.nextU32());
  t.same(Array.from({ length: 5 }, () => b.nextU32()), xs);
  const s = a.getState(); const y = a.next(); a.setState(s); t.equal(a.next(), y, 'state restores');
  const counts = new Array(4).fill(0);
  for (let i = 0; i < 4000; i++) counts[a.below(4)]++;
  for (const c of counts) t.ok(c > 900 && c < 1100);
});
