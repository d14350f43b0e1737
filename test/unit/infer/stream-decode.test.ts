// Incremental detokenization: multi-byte characters split over tokens are never broken.
import t from 'tap';
import { StreamDecoder } from '../../../lib/infer/stream-decode.ts';
import { fixtureTokenizer } from './fake-engine.ts';

const tok = await fixtureTokenizer();

t.test('token-by-token decoding of text with accents and an emoji', async (t) => {
  const text = 'héllo 👋 wörld';
  const ids = tok.encode(text);
  t.ok(ids.some((id) => tok.decode([id]).includes('\uFFFD')), 'the fixture really splits characters over tokens');
  const d = new StreamDecoder((x) => tok.decode(x));
  const pieces = ids.map((id) => d.push(id));
  pieces.push(d.flush());
  for (const p of pieces) t.notOk(p.includes('\uFFFD'), `piece ${JSON.stringify(p)} has no replacement character`);
  t.equal(pieces.join(''), text);
  t.ok(pieces.includes(''), 'some tokens released nothing (incomplete character held back)');
});

t.test('flush releases an incomplete tail at the end', async (t) => {
  const ids = tok.encode('👋');
  const d = new StreamDecoder((x) => tok.decode(x));
  const first = d.push(ids[0]);
  t.equal(first, '');
  t.equal(d.flush(), tok.decode([ids[0]]), 'the invalid tail comes out as U+FFFD at the very end');
  t.equal(d.flush(), '');
});

t.test('every prefix split of the tokenize cases round-trips', async (t) => {
  for (const text of ['want to grab dinner tonight?', 'omg yes (that was crazy) | link DONE', 'héllo 👋 wörld', '👋👋 é']) {
    const d = new StreamDecoder((x) => tok.decode(x));
    const out = tok.encode(text).map((id) => d.push(id)).join('') + d.flush();
    t.equal(out, text);
  }
});
