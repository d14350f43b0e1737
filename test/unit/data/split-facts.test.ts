import t from 'tap'
import { join } from 'node:path'
import { fnv1a, split, valCount } from '../../../lib/data/split.ts'
import { factPairs, loadFacts, questionsFor } from '../../../lib/data/facts.ts'

const ex = (i: number) => ({ input: `q${i}`, output: `a${i}` })

t.test('split: exact counts, deterministic, order-independent, order kept', async (t) => {
  t.equal(fnv1a(''), 0x811c9dc5)
  t.equal(fnv1a('a'), 0xe40c292c)
  t.same([valCount(0, 0.05), valCount(1, 0.05), valCount(2, 0.05), valCount(100, 0.05), valCount(1000, 0.1), valCount(10, 0)], [0, 0, 1, 5, 100, 0])
  const xs = Array.from({ length: 200 }, (_, i) => ex(i))
  const a = split(xs, 0.05)
  t.equal(a.val.length, 10)
  t.equal(a.train.length, 190)
  t.same(split(xs, 0.05), a, 'same input, same split')
  const b = split([...xs].reverse(), 0.05)
  t.same(new Set(b.val.map((e) => e.input)), new Set(a.val.map((e) => e.input)), 'same examples to val whatever the order')
  const idx = a.val.map((e) => Number(e.input.slice(1)))
  t.same(idx, [...idx].sort((x, y) => x - y), 'val keeps input order')
  t.same(split(xs, 0), { train: xs, val: [] })
})

t.test('facts: phrasings per key, values lower-cased unless keepCase', async (t) => {
  t.same(questionsFor('height'), ['how tall are you?', 'what is your height?', "what's your height?", 'tell me your height', 'height?'])
  t.same(questionsFor('favorite_food'), ['what is your favorite food?', "what's your favorite food?", 'tell me your favorite food', 'favorite food?'])
  const p = factPairs({ height: '5 feet 10 inches', Name: 'Sam Rivera', empty: '' })
  t.equal(p.length, 5 + 6, "name: 3 special + 4 generic, one shared")
  t.same(p[0], { input: 'how tall are you?', output: '5 feet 10 inches' })
  t.ok(p.some((e) => e.input === 'who are you?' && e.output === 'sam rivera'))
  t.ok(factPairs({ name: 'Sam' }, true).every((e) => e.output === 'Sam'))
})

t.test('loadFacts: JSON object, JSONL, array, errors', async (t) => {
  const fx = join(import.meta.dirname, '../../fixtures/data')
  const obj = await loadFacts(join(fx, 'facts.json'))
  t.equal(obj.length, 5 + 6 + 6, 'height 5, name 6, hometown 6')
  t.ok(obj.some((e) => e.input === 'where are you from?' && e.output === 'atlanta, georgia'))
  t.same(await loadFacts(join(fx, 'facts.jsonl')), [
    { input: 'what do you do for fun?', output: 'climbing (badly) | and cooking' },
    { input: 'fav food?', output: 'tacos obviously' },
  ])
  t.same(await loadFacts([{ input: 'a', output: 'b' }]), [{ input: 'a', output: 'b' }])
  const dir = t.testdir({ 'e.json': '  \n', 'bad.jsonl': '{"input": "a", "output": "b"}\n{"q": 1}\n', 'n.json': '42' })
  await t.rejects(loadFacts(join(dir, 'e.json')), { message: /e\.json: the facts file is empty/ })
  await t.rejects(loadFacts(join(dir, 'bad.jsonl')), { message: /bad\.jsonl: line 2: expected an object with string "input" and "output"/ })
  await t.rejects(loadFacts(join(dir, 'n.json')), { message: /facts must be a JSON object/ })
  await t.rejects(loadFacts(join(dir, 'missing.json')), { message: /cannot read .*missing\.json: no such file/ })
})
