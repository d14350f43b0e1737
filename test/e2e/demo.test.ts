// `mimic demo` end to end on the CPU (fewer epochs than the real demo, to keep the suite fast).
import t from 'tap';
import { runDemo, DEMO_PROMPTS } from '../../lib/cli/demo.ts';
import { native } from '../../lib/native.ts';

let why: string | false = false;
try {
  native();
} catch (e) {
  why = (e as Error).message;
}
if (why) t.plan(0, why);

t.test('demo: prepare → fine-tune → chat, with visible progress', async (t) => {
  const lines: string[] = [];
  const r = await runDemo({ epochs: 3, print: (l) => lines.push(l), progress: { write: () => true, isTTY: false } as unknown as NodeJS.WriteStream });
  const text = lines.join('\n');
  t.match(text, /1\/3 preparing the sample chat history/);
  t.match(text, /2\/3 fine-tuning the bundled tiny model/);
  t.match(text, /3\/3 chatting with the result/);
  t.ok(r.train.data.train.examples > 300, `${r.train.data.train.examples} training pairs`);
  t.equal(r.train.skipped, 0);
  t.ok(r.train.trainLoss.at(-1)!.loss < 0.7 * r.train.trainLoss[0].loss, `train loss ${r.train.trainLoss[0].loss.toFixed(2)} → ${r.train.trainLoss.at(-1)!.loss.toFixed(2)}`);
  t.ok(r.train.valLoss.at(-1)!.loss < r.train.valLoss[0].loss, 'validation loss fell');
  t.equal(r.replies.length, DEMO_PROMPTS.length);
  t.ok(r.replies.filter((x) => x.stopped).length >= DEMO_PROMPTS.length - 1, `replies end with DONE: ${JSON.stringify(r.replies)}`);
  t.comment(`demo (3 epochs) took ${r.seconds.toFixed(1)} s`);
});
