// The README's TypeScript example, run as written against the bundled tiny model and the demo
// history (smaller numbers so it stays quick), so the README cannot drift from the API.
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { prepare, finetune, loadModel, generate, serve } from '../../lib/index.ts';

const root = new URL('../..', import.meta.url).pathname;
const tiny = path.join(root, 'assets', 'tiny');
const dir = mkdtempSync(path.join(os.tmpdir(), 'mimic-readme-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

t.test('prepare → finetune → loadModel → generate → serve', async (t) => {
  const prep = await prepare({ sources: [path.join(root, 'assets', 'demo', 'processed_messages.csv')],
    out: path.join(dir, 'train.jsonl'), facts: path.join(root, 'assets', 'demo', 'facts.json'), since: '2000-01-01' });
  t.ok(prep.train > 100, `${prep.train} training pairs`);

  const steps: number[] = [];
  const report = await finetune({
    model: tiny, data: path.join(dir, 'train.jsonl'), val: path.join(dir, 'val.jsonl'), out: path.join(dir, 'adapter'),
    epochs: 1, lr: 2e-3, lora: { r: 16, alpha: 32 }, quant: 'nf4', device: 'cpu', batchTokens: 512, checkpointEvery: 0,
    onProgress: (p) => { if (p.phase === 'train') steps.push(p.step); },
  });
  t.equal(report.steps, steps[steps.length - 1], 'onProgress saw every step');
  t.ok(report.steps > 5);

  const model = await loadModel(tiny, { adapter: path.join(dir, 'adapter'), device: 'auto' });
  t.teardown(() => model.dispose());
  const prompt = model.chatPrompt([{ role: 'user', content: 'want to grab dinner tonight?' }]);
  let streamed = '';
  const r = await model.generate(prompt, { maxTokens: 24, temperature: 0.7, topP: 0.9, stop: ['DONE'], seed: 1, onToken: (s) => { streamed += s; } });
  t.equal(streamed, r.text, 'onToken streams exactly the final text');
  t.ok(['stop', 'eos', 'length'].includes(r.stopReason));

  const one = await generate({ model: tiny, adapter: path.join(dir, 'adapter'), messages: [{ role: 'user', content: 'hello, how are you?' }], temperature: 0, maxTokens: 8, device: 'cpu' });
  t.type(one.text, 'string');

  const server = await serve({ model, port: 0 });
  t.teardown(() => server.close());
  const res = await fetch(`http://127.0.0.1:${server.port}/generate`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ text: 'hello, how are you?' }) });
  t.equal(res.status, 200);
  const body = await res.json() as { response: string };
  t.type(body.response, 'string');
  t.notMatch(body.response, /DONE/, 'the stop marker is cut from the response');
});
