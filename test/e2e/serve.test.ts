// The server on loopback with the tiny reference model: the seed's curl contract over plain
// HTTP, the official openai client (streaming and not), bad inputs, auth, disconnects.
import t from 'tap';
import http from 'node:http';
import OpenAI from 'openai';
import { serve } from '../../lib/serve/index.ts';
import { loadModel } from '../../lib/infer/index.ts';

const dir = new URL('../fixtures/ref/tiny-llama', import.meta.url).pathname;

function request(url: string, body: string, headers: Record<string, string> = { 'content-type': 'application/json' }) {
  return new Promise<{ status: number; json: any; text: string }>((resolve, reject) => {
    const req = http.request(url, { method: 'POST', headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; });
      res.on('end', () => { let json; try { json = JSON.parse(text); } catch { /* not JSON */ } resolve({ status: res.statusCode!, json, text }); });
    });
    req.on('error', reject);
    req.end(body);
  });
}

t.test('the seed contract: curl -X POST /generate -d {"text": ...} → {"response": ...}', async (t) => {
  const srv = await serve({ model: dir, device: 'cpu', port: 0, defaultMaxTokens: 12 });
  t.teardown(() => srv.close());
  t.equal(srv.url.startsWith('http://127.0.0.1:'), true);
  const r = await request(`${srv.url}/generate`, JSON.stringify({ text: 'hello, how are you?' }));
  t.equal(r.status, 200);
  t.same(Object.keys(r.json), ['response']);
  t.equal(typeof r.json.response, 'string');
  const g = await request(`${srv.url}/generate`, JSON.stringify({ text: 'tell me who you are?', temperature: 0, max_tokens: 5 }));
  const again = await request(`${srv.url}/generate`, JSON.stringify({ text: 'tell me who you are?', temperature: 0, max_tokens: 5 }));
  t.equal(g.json.response, again.json.response, 'greedy is deterministic');
  // what the server generated is what the library generates for the training-format prompt
  const m = srv.model;
  const lib = await m.generate(m.promptIds('tell me who you are?'), { temperature: 0, maxTokens: 5, stop: [' DONE', 'DONE'] });
  t.equal(g.json.response, lib.text.trim());
});

t.test('the openai client, streaming and not, against the tiny model', async (t) => {
  const model = await loadModel(dir, { device: 'cpu', quant: 'none' });
  const srv = await serve({ model, port: 0, apiKey: 'test-key', modelName: 'tiny' });
  t.teardown(async () => { await srv.close(); await model.dispose(); });
  const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'test-key', maxRetries: 0 });
  const messages = [{ role: 'user' as const, content: 'want to grab dinner tonight?' }];
  const c = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 10, temperature: 0 });
  t.equal(c.choices[0].message.role, 'assistant');
  t.ok(['stop', 'length'].includes(c.choices[0].finish_reason));
  t.equal(c.usage?.prompt_tokens, model.encodeChat(messages).length);
  t.ok(c.usage!.completion_tokens >= 1 && c.usage!.completion_tokens <= 10);
  const s = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 10, temperature: 0, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let usage;
  for await (const ch of s) { text += ch.choices[0]?.delta?.content ?? ''; if (ch.usage) usage = ch.usage; }
  t.equal(text, c.choices[0].message.content, 'the stream equals the non-streamed reply (greedy)');
  t.same(usage, c.usage);
  const comp = await client.completions.create({ model: 'tiny', prompt: 'hello', max_tokens: 6, temperature: 0.9, seed: 7 });
  const comp2 = await client.completions.create({ model: 'tiny', prompt: 'hello', max_tokens: 6, temperature: 0.9, seed: 7 });
  t.equal(comp.choices[0].text, comp2.choices[0].text, 'seed makes a sample repeatable');
  const cs = await client.completions.create({ model: 'tiny', prompt: 'hello', max_tokens: 6, temperature: 0.9, seed: 7, stream: true });
  let st = '';
  for await (const ch of cs) st += ch.choices[0]?.text ?? '';
  t.equal(st, comp.choices[0].text);
  t.same((await client.models.list()).data.map((m) => m.id), ['tiny']);
  const wrongKey = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'nope', maxRetries: 0 });
  t.ok(await wrongKey.chat.completions.create({ model: 'tiny', messages }).catch((e) => e) instanceof OpenAI.AuthenticationError);
});

t.test('bad inputs get 4xx and the server keeps serving', async (t) => {
  const srv = await serve({ model: dir, device: 'cpu', port: 0, apiKey: 'k', bodyLimit: 32 * 1024 });
  t.teardown(() => srv.close());
  const auth = { 'content-type': 'application/json', authorization: 'Bearer k' };
  const gen = `${srv.url}/generate`;
  const chat = `${srv.url}/v1/chat/completions`;
  const cases: [string, string, string, number, Record<string, string>][] = [
    ['malformed JSON', gen, '{"text": ', 400, auth],
    ['wrong type', gen, '{"text": ["a"]}', 400, auth],
    ['empty prompt', gen, '{"text": ""}', 400, auth],
    ['empty messages', chat, '{"messages": []}', 400, auth],
    ['huge body', gen, JSON.stringify({ text: 'x'.repeat(100_000) }), 413, auth],
    ['max_tokens a million', chat, JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 1e6 }), 400, auth],
    ['missing key', gen, '{"text": "hi"}', 401, { 'content-type': 'application/json' }],
    ['wrong key', gen, '{"text": "hi"}', 401, { 'content-type': 'application/json', authorization: 'Bearer nope' }],
  ];
  for (const [name, url, body, status, headers] of cases) {
    const r = await request(url, body, headers);
    t.equal(r.status, status, name);
    t.type(r.json?.error?.message, 'string', `${name}: ${r.json?.error?.message}`);
  }
  const ok = await request(gen, JSON.stringify({ text: 'still there?', max_tokens: 3 }), auth);
  t.equal(ok.status, 200, 'still serving');
});

t.test('refuses a public address without a key', async (t) => {
  const saved = process.env.MIMIC_API_KEY;
  delete process.env.MIMIC_API_KEY;
  t.teardown(() => { if (saved !== undefined) process.env.MIMIC_API_KEY = saved; });
  await t.rejects(serve({ model: dir, host: '0.0.0.0', port: 0 }), /refusing to listen on 0\.0\.0\.0 without an API key/);
});

t.test('a disconnect cancels the generation at once', async (t) => {
  const model = await loadModel(dir, { device: 'cpu', quant: 'none' });
  const srv = await serve({ model, port: 0, stop: [], maxTokensCap: 500 });
  t.teardown(async () => { await srv.close(); await model.dispose(); });
  const steps0 = model.scheduler.steps;
  await new Promise<void>((resolve) => {
    const req = http.request(`${srv.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' } });
    req.on('error', () => resolve());
    req.on('response', (res) => res.once('data', () => { req.destroy(); resolve(); }));
    req.end(JSON.stringify({ prompt: 'hello', max_tokens: 500, temperature: 0, stream: true }));
  });
  await new Promise((r) => setTimeout(r, 100));
  const ran = model.scheduler.steps - steps0;
  t.ok(ran < 500, `${ran} of 500 steps ran`);
  t.equal(model.scheduler.active, 0, 'nothing is generating');
  const steps1 = model.scheduler.steps;
  await new Promise((r) => setTimeout(r, 50));
  t.equal(model.scheduler.steps, steps1, 'and nothing more runs');
});
