// The stop-string matcher: stops that span pieces, hold-back and release of partial matches.
import t from 'tap';
import { StopMatcher } from '../../../lib/infer/stop.ts';

const run = (stops: string[], pieces: string[]) => {
  const m = new StopMatcher(stops);
  const emitted: string[] = [];
  let stopped = false;
  let stop: string | undefined;
  for (const p of pieces) {
    const r = m.push(p);
    emitted.push(r.emit);
    if (r.stopped) { stopped = true; stop = r.stop; break; }
  }
  if (!stopped) emitted.push(m.flush());
  return { text: emitted.join(''), emitted, stopped, stop };
};

t.test('a stop string inside one piece cuts it and what follows', async (t) => {
  const r = run(['DONE'], ['hi DONE there']);
  t.same(r, { text: 'hi ', emitted: ['hi '], stopped: true, stop: 'DONE' });
});

t.test('a stop string spanning pieces is found and never streamed', async (t) => {
  const r = run(['DONE'], ['yeah', ' ', 'DO', 'NE', ' more']);
  t.equal(r.text, 'yeah ');
  t.ok(r.stopped);
  t.notOk(r.emitted.join('').includes('DO'), 'the partial DO was held back');
  t.same(r.emitted, ['yeah', ' ', '', '']);
});

t.test('a partial match that fails is released as soon as it fails', async (t) => {
  const m = new StopMatcher(['DONE']);
  t.same(m.push('a DO'), { emit: 'a ', stopped: false });
  t.equal(m.pending, 'DO');
  t.same(m.push('G'), { emit: 'DOG', stopped: false });
  t.equal(m.pending, '');
  t.same(m.push('D'), { emit: '', stopped: false });
  t.equal(m.flush(), 'D', 'the end of the stream releases the held tail');
});

t.test('overlapping candidates: the held tail is the longest possible start', async (t) => {
  // "DODONE": after "DODO" the tail "DO" must still be held
  t.same(run(['DONE'], ['DO', 'DO', 'NE']).text, 'DO');
  t.same(run(['aab'], ['a', 'a', 'a', 'b']).text, 'a');
});

t.test('several stops: the earliest match wins; ties prefer the longer', async (t) => {
  t.equal(run(['STOP', 'DONE'], ['x DONE y STOP']).stop, 'DONE');
  t.equal(run(['DO', 'DONE'], ['x DONE']).stop, 'DONE');
  t.equal(run(['\n\n', 'DONE'], ['a\n', '\nb DONE']).text, 'a');
});

t.test('no stops, empty stops: everything passes straight through', async (t) => {
  t.same(run([], ['a', 'b']).emitted, ['a', 'b', '']);
  t.same(run([''], ['a', 'b']).emitted, ['a', 'b', '']);
});

t.test('after a stop nothing more comes out', async (t) => {
  const m = new StopMatcher(['x']);
  t.ok(m.push('ax').stopped);
  t.same(m.push('more'), { emit: '', stopped: true });
  t.equal(m.flush(), '');
});

t.test('random streams: the emitted text equals the reference cut', async (t) => {
  let seed = 7;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const alphabet = 'DONE xy';
  for (let n = 0; n < 500; n++) {
    const s = Array.from({ length: 1 + Math.floor(rnd() * 20) }, () => alphabet[Math.floor(rnd() * alphabet.length)]).join('');
    const pieces: string[] = [];
    for (let i = 0; i < s.length;) { const k = 1 + Math.floor(rnd() * 3); pieces.push(s.slice(i, i + k)); i += k; }
    const at = s.indexOf('DONE');
    const want = at >= 0 ? s.slice(0, at) : s;
    const r = run(['DONE'], pieces);
    if (r.text !== want || r.stopped !== at >= 0) { t.fail(`${JSON.stringify(pieces)} → ${JSON.stringify(r.text)}, want ${JSON.stringify(want)}`); return; }
  }
  t.pass('500 random streams');
});
