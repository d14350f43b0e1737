// Learning-rate schedules (as transformers), the SVG loss curve, metrics, the progress bar.
import t from 'tap';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { learningRate, warmupSteps } from '../../../lib/train/schedule.ts';
import { lossSvg, ticks } from '../../../lib/train/plot.ts';
import { MetricsLog } from '../../../lib/train/metrics.ts';
import { ProgressBar, formatDuration, renderProgress } from '../../../lib/train/progress.ts';

t.test('warm-up then cosine / linear / constant', async (t) => {
  const o = { lr: 1e-3, totalSteps: 110, warmupSteps: 10 };
  t.equal(learningRate(0, o), 0, 'starts at 0 (as transformers)');
  t.equal(learningRate(5, o), 5e-4);
  t.equal(learningRate(10, o), 1e-3, 'peak at the end of warm-up');
  t.ok(Math.abs(learningRate(60, o) - 5e-4) < 1e-12, 'cosine is halfway at the middle of the decay');
  t.equal(learningRate(110, o), 0);
  t.ok(Math.abs(learningRate(60, { ...o, schedule: 'linear' }) - 5e-4) < 1e-12);
  t.ok(Math.abs(learningRate(35, { ...o, schedule: 'linear' }) - 7.5e-4) < 1e-12);
  t.equal(learningRate(100, { ...o, schedule: 'constant' }), 1e-3);
  t.equal(learningRate(0, { lr: 1, totalSteps: 4 }), 1, 'no warm-up: full rate at once');
  t.equal(warmupSteps(100, undefined, 0.03), 3);
  t.equal(warmupSteps(100, 7, 0.5), 7, 'steps win over ratio');
  t.throws(() => warmupSteps(100, undefined, 1.5), /warmupRatio/);
});

t.test('loss SVG', async (t) => {
  const train = Array.from({ length: 40 }, (_, i) => ({ step: i + 1, loss: 3 * Math.exp(-i / 10) + 0.5 }));
  const svg = lossSvg(train, [{ step: 0, loss: 3.6 }, { step: 20, loss: 1.2 }, { step: 40, loss: 0.9 }], { stepsPerEpoch: 20 });
  t.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  t.match(svg, /<\/svg>\n$/);
  t.equal((svg.match(/<polyline/g) ?? []).length, 3, 'raw train, smoothed train, validation');
  t.equal((svg.match(/<circle/g) ?? []).length, 3, 'a point per validation');
  t.match(svg, /validation/);
  t.match(svg, /stroke-dasharray/, 'epoch boundary');
  t.notMatch(svg, /NaN/);
  t.match(lossSvg([], []), /no data yet/);
  t.match(lossSvg([{ step: 1, loss: NaN }, { step: 2, loss: 1 }], []), /1 non-finite value\(s\) not drawn/);
  t.same(ticks(0, 1), [0, 0.2, 0.4, 0.6, 0.8, 1]);
});

t.test('metrics.jsonl', async (t) => {
  const dir = t.testdir();
  const m = new MetricsLog(dir);
  await m.reset([{ type: 'val', step: 0, epoch: 0, loss: 2, tokens: 10 }]);
  await m.append({ type: 'train', step: 1, epoch: 0.5, loss: 1.5, lr: 1e-3, gradNorm: 0.3, tokens: 7, tokensPerSec: 100, time: 0.1 });
  const lines = readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  t.same(lines.map((l) => l.type), ['val', 'train']);
  await m.reset([]);
  t.equal(readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8'), '');
});

t.test('progress bar: drawn on a TTY, silent otherwise', async (t) => {
  t.equal(formatDuration(75), '1:15');
  t.equal(formatDuration(3725), '1:02:05');
  t.equal(formatDuration(NaN), '--:--');
  const line = renderProgress({ step: 5, totalSteps: 10, epoch: 0.5, epochs: 3, loss: 1.23456, tokensPerSec: 1500, etaSeconds: 30 });
  t.match(line, / 50% \[#+-+\] step 5\/10 {2}epoch 0\.50\/3 {2}loss 1\.2346 {2}1\.5k tok\/s {2}ETA 0:30/);
  let out = '';
  const tty = new ProgressBar({ stream: { write: (s: string) => { out += s; }, isTTY: true, columns: 120 }, intervalMs: 0 });
  tty.update({ step: 1, totalSteps: 2, epoch: 0.5, epochs: 1 });
  tty.log('epoch 1 done');
  tty.done();
  t.match(out, /\r\x1b\[2K.*step 1\/2/);
  t.match(out, /epoch 1 done\n/);
  out = '';
  const pipe = new ProgressBar({ stream: { write: (s: string) => { out += s; }, isTTY: false } });
  pipe.update({ step: 1, totalSteps: 2, epoch: 0.5, epochs: 1 });
  pipe.done();
  t.equal(out, '', 'no bar when not a TTY');
  pipe.log('x');
  t.equal(out, 'x\n', 'log lines still print');
});
