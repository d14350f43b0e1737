// The HTTP server over a scripted fake engine: the seed's /generate, the OpenAI endpoints through
// the official client, every bad input, limits, auth, queueing, timeouts and disconnects.
import t from 'tap';
import http from 'node:http';
import { Writable } from 'node:stream';
import OpenAI from 'openai';
import { serve, isLoopback } from '../../../lib/serve/server.ts';
import { scriptedModel, fixtureTokenizer } from '../infer/fake-engine.ts';

const tok = await fixtureTokenizer();
const reply = tok.encode('yeah | bartaco? DONE trailing');

async function post(url: string, body: string | object, headers: Record<string, string> = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json: any;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, json, text, headers: res.headers };
}

t.test('POST /generate: the seed contract, chat template applied, stops at DONE', async (t) => {
  const { model, engine } = await scriptedModel(reply);
  const srv = await serve({ model, port: 0 });
  t.teardown(() => srv.close());
  const r = await post(`${srv.url}/generate`, { text: 'want to grab dinner tonight?' });
  t.equal(r.status, 200);
  t.same(r.json, { response: 'yeah | bartaco?' });
  const fed = engine.log[0].ids;
  t.same(fed, model.encodeChat([{ role: 'user', content: 'want to grab dinner tonight?' }]), 'the prompt is the chat template + generation prompt');
  // optional sampling fields
  const r2 = await post(`${srv.url}/generate`, { text: 'hi', temperature: 0, max_tokens: 2, seed: 3, top_p: 0.5, top_k: 3 });
  t.equal(r2.status, 200);
  t.same(r2.json, { response: 'yeah |' });
  const s = engine.log.at(-1)!.sampling;
  t.same(s, { temperature: 0, topK: 3, topP: 0.5, repetitionPenalty: 1 });
});

t.test('OpenAI client: chat and completions, streaming and not, usage', async (t) => {
  const { model } = await scriptedModel(reply);
  const srv = await serve({ model, port: 0, modelName: 'me' });
  t.teardown(() => srv.close());
  const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const c = await client.chat.completions.create({ model: 'me', messages: [{ role: 'user', content: 'want to grab dinner tonight?' }], temperature: 0 });
  t.equal(c.object, 'chat.completion');
  t.equal(c.model, 'me');
  t.equal(c.choices.length, 1);
  t.equal(c.choices[0].message.role, 'assistant');
  t.equal(c.choices[0].message.content, 'yeah | bartaco?');
  t.equal(c.choices[0].finish_reason, 'stop');
  const promptLen = model.encodeChat([{ role: 'user', content: 'want to grab dinner tonight?' }]).length;
  t.same(c.usage, { prompt_tokens: promptLen, completion_tokens: tok.encode('yeah | bartaco? DONE').length, total_tokens: promptLen + tok.encode('yeah | bartaco? DONE').length });

  const stream = await client.chat.completions.create({ model: 'me', messages: [{ role: 'user', content: 'hi' }], stream: true, stream_options: { include_usage: true } });
  let text = '';
  let finish: string | null = null;
  let usage: unknown;
  let chunks = 0;
  for await (const ch of stream) {
    chunks++;
    if (ch.usage) usage = ch.usage;
    for (const choice of ch.choices) { text += choice.delta.content ?? ''; finish = choice.finish_reason ?? finish; }
  }
  t.equal(text, 'yeah | bartaco?');
  t.equal(finish, 'stop');
  t.ok(chunks > 3, `streamed in ${chunks} chunks`);
  t.match(usage, { completion_tokens: tok.encode('yeah | bartaco? DONE').length });

  const comp = await client.completions.create({ model: 'me', prompt: 'once upon', max_tokens: 3 });
  t.equal(comp.object, 'text_completion');
  t.equal(comp.choices[0].text, 'yeah | ba');
  t.equal(comp.choices[0].finish_reason, 'length');
  t.equal(comp.usage?.completion_tokens, 3);
  const cs = await client.completions.create({ model: 'me', prompt: 'once upon', stream: true, stop: ['?'] });
  let ct = '';
  for await (const ch of cs) ct += ch.choices[0]?.text ?? '';
  t.equal(ct, 'yeah | bartaco', 'request stop strings apply');

  const models = await client.models.list();
  t.same(models.data.map((m) => m.id), ['me']);
  t.equal((await client.models.retrieve('me')).id, 'me');
  const missing = await client.models.retrieve('other').then(() => undefined, (e: { status?: number }) => e);
  t.equal(missing?.status, 404, 'an unknown model is a 404');
  const health = await (await fetch(`${srv.url}/health`)).json();
  t.match(health, { status: 'ok', model: 'me', active: 0, waiting: 0 });
});

t.test('SSE wire format ends with data: [DONE]', async (t) => {
  const { model } = await scriptedModel(reply);
  const srv = await serve({ model, port: 0 });
  t.teardown(() => srv.close());
  const r = await post(`${srv.url}/v1/chat/completions`, { messages: [{ role: 'user', content: 'hi' }], stream: true });
  t.equal(r.status, 200);
  t.match(r.headers.get('content-type'), /text\/event-stream/);
  const events = r.text.split('\n\n').filter(Boolean);
  t.ok(events.every((e) => e.startsWith('data: ')));
  t.equal(events.at(-1), 'data: [DONE]');
  const first = JSON.parse(events[0].slice(6));
  t.same(first.choices[0].delta.role, 'assistant');
});

t.test('bad input: the right 4xx in OpenAI shape, and the server keeps serving', async (t) => {
  const { model } = await scriptedModel(reply);
  const srv = await serve({ model, port: 0, bodyLimit: 64 * 1024, maxTokensCap: 100 });
  t.teardown(() => srv.close());
  const chat = `${srv.url}/v1/chat/completions`;
  const cases: [string, string, string | object, number, RegExp, Record<string, string>?][] = [
    ['malformed JSON', `${srv.url}/generate`, '{"text": "hi"', 400, /not valid JSON/],
    ['malformed JSON (chat)', chat, '{messages: [}', 400, /not valid JSON/],
    ['empty body', `${srv.url}/generate`, '', 400, /not valid JSON|must be a JSON object/],
    ['body not an object', `${srv.url}/generate`, '["hi"]', 400, /must be a JSON object/],
    ['text missing', `${srv.url}/generate`, { prompt: 'hi' }, 400, /text is required/],
    ['text wrong type', `${srv.url}/generate`, { text: 5 }, 400, /text must be a string \(got number\)/],
    ['text empty', `${srv.url}/generate`, { text: '' }, 400, /text must not be empty/],
    ['text blank', `${srv.url}/generate`, { text: '   ' }, 400, /text must not be empty/],
    ['temperature wrong type', `${srv.url}/generate`, { text: 'hi', temperature: 'hot' }, 400, /temperature must be a number/],
    ['temperature out of range', chat, { messages: [{ role: 'user', content: 'hi' }], temperature: 5 }, 400, /temperature must be between 0 and 2/],
    ['messages wrong type', chat, { messages: 'hi' }, 400, /messages must be an array/],
    ['messages empty', chat, { messages: [] }, 400, /messages must not be empty/],
    ['message content empty', chat, { messages: [{ role: 'user', content: '' }] }, 400, /messages are empty/],
    ['bad role', chat, { messages: [{ role: 'wizard', content: 'hi' }] }, 400, /role must be one of/],
    ['content wrong type', chat, { messages: [{ role: 'user', content: 7 }] }, 400, /content must be a string/],
    ['max_tokens wrong type', chat, { messages: [{ role: 'user', content: 'hi' }], max_tokens: '10' }, 400, /max_tokens must be a number/],
    ['max_tokens a million', chat, { messages: [{ role: 'user', content: 'hi' }], max_tokens: 1_000_000 }, 400, /max_tokens is 1000000; this server allows at most 100/],
    ['max_tokens zero', chat, { messages: [{ role: 'user', content: 'hi' }], max_tokens: 0 }, 400, /max_tokens must be an integer ≥ 1/],
    ['n = 2', chat, { messages: [{ role: 'user', content: 'hi' }], n: 2 }, 400, /n must be 1/],
    ['stream wrong type', chat, { messages: [{ role: 'user', content: 'hi' }], stream: 'yes' }, 400, /stream must be a boolean/],
    ['stop wrong type', chat, { messages: [{ role: 'user', content: 'hi' }], stop: [1] }, 400, /stop must be a string or an array/],
    ['tools', chat, { messages: [{ role: 'user', content: 'hi' }], tools: [{}] }, 400, /tools is not supported/],
    ['prompt empty', `${srv.url}/v1/completions`, { prompt: '' }, 400, /prompt must not be empty/],
    ['prompt batch', `${srv.url}/v1/completions`, { prompt: ['a', 'b'] }, 400, /batches of prompts are not supported/],
    ['prompt id out of vocabulary', `${srv.url}/v1/completions`, { prompt: [1, 99999] }, 400, /token id 99999/],
    ['huge body', `${srv.url}/generate`, { text: 'x'.repeat(200_000) }, 413, /too large/],
    ['prompt too long', `${srv.url}/v1/completions`, { prompt: 'hello '.repeat(400) }, 400, /this server accepts at most 511|context/],
    ['wrong content type', `${srv.url}/generate`, 'text=hi', 415, /Content-Type/, { 'content-type': 'application/x-www-form-urlencoded' }],
    ['unknown route', `${srv.url}/v1/embeddings`, { input: 'x' }, 404, /there is no POST \/v1\/embeddings/],
  ];
  for (const [name, url, body, status, msg, headers] of cases) {
    const r = await post(url, body, headers);
    t.equal(r.status, status, `${name}: status`);
    t.match(r.json?.error?.message, msg, `${name}: message`);
    t.equal(typeof r.json?.error?.type, 'string', `${name}: OpenAI error shape`);
    t.ok('param' in (r.json?.error ?? {}) && 'code' in (r.json?.error ?? {}), `${name}: param and code present`);
  }
  const ok = await post(`${srv.url}/generate`, { text: 'still there?' });
  t.same([ok.status, ok.json], [200, { response: 'yeah | bartaco?' }], 'still serving');
  // the openai client maps them to its error classes
  const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'x', maxRetries: 0 });
  const e1 = await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 1e6 }).catch((e) => e);
  t.ok(e1 instanceof OpenAI.BadRequestError, 'BadRequestError');
});

t.test('API key: missing and wrong keys get 401, the right one passes; /health stays open', async (t) => {
  const { model } = await scriptedModel(reply);
  const srv = await serve({ model, port: 0, apiKey: 'sekrit-key' });
  t.teardown(() => srv.close());
  const none = await post(`${srv.url}/generate`, { text: 'hi' });
  t.equal(none.status, 401);
  t.match(none.json.error, { code: 'missing_api_key', message: /Authorization: Bearer/ });
  const wrong = await post(`${srv.url}/generate`, { text: 'hi' }, { authorization: 'Bearer nope' });
  t.equal(wrong.status, 401);
  t.match(wrong.json.error, { code: 'invalid_api_key' });
  const basic = await post(`${srv.url}/generate`, { text: 'hi' }, { authorization: 'Basic c2Vrcml0LWtleQ==' });
  t.equal(basic.status, 401);
  const right = await post(`${srv.url}/generate`, { text: 'hi' }, { authorization: 'Bearer sekrit-key' });
  t.equal(right.status, 200);
  t.equal((await fetch(`${srv.url}/health`)).status, 200);
  t.equal((await fetch(`${srv.url}/v1/models`)).status, 401);
  const bad = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'nope', maxRetries: 0 });
  t.ok(await bad.models.list().catch((e) => e) instanceof OpenAI.AuthenticationError, 'AuthenticationError');
  const good = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'sekrit-key', maxRetries: 0 });
  t.equal((await good.models.list()).data.length, 1);
});

t.test('binding beyond loopback needs a key', async (t) => {
  const { model } = await scriptedModel(reply);
  const saved = process.env.MIMIC_API_KEY;
  delete process.env.MIMIC_API_KEY;
  t.teardown(() => { if (saved === undefined) delete process.env.MIMIC_API_KEY; else process.env.MIMIC_API_KEY = saved; });
  await t.rejects(serve({ model, host: '0.0.0.0', port: 0 }), /refusing to listen on 0\.0\.0\.0 without an API key.*--api-key/);
  await t.rejects(serve({ model, host: '::', port: 0 }), /refusing to listen on ::/);
  process.env.MIMIC_API_KEY = 'from-env';
  const srv = await serve({ model, host: '0.0.0.0', port: 0 });
  const r = await post(`http://127.0.0.1:${srv.port}/generate`, { text: 'hi' }, { authorization: 'Bearer from-env' });
  t.equal(r.status, 200, 'MIMIC_API_KEY is used');
  await srv.close();
  t.ok(isLoopback('127.0.0.1') && isLoopback('localhost') && isLoopback('::1') && isLoopback('127.1.2.3'));
  t.notOk(isLoopback('0.0.0.0') || isLoopback('192.168.1.2') || isLoopback('::'));
});

t.test('a full queue answers 429 with Retry-After; the rest complete', async (t) => {
  const { model } = await scriptedModel(() => 5, { config: { maxPosition: 8192 }, stepMs: 2, maxSessions: 1 });
  const srv = await serve({ model, port: 0, maxQueue: 1, stop: [] });
  t.teardown(() => srv.close());
  const rs = await Promise.all(Array.from({ length: 5 }, () => post(`${srv.url}/generate`, { text: 'hi', max_tokens: 10 })));
  const codes = rs.map((r) => r.status).sort();
  t.same(codes, [200, 200, 429, 429, 429]);
  const busy = rs.find((r) => r.status === 429)!;
  t.match(busy.json.error, { type: 'rate_limit_error', code: 'queue_full' });
  t.equal(busy.headers.get('retry-after'), '1');
  const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'x', maxRetries: 0 });
  // the openai client
  const many = await Promise.allSettled(Array.from({ length: 4 }, () => client.completions.create({ model: 'm', prompt: 'x', max_tokens: 5, stream: true })));
  t.ok(many.some((r) => r.status === 'rejected' && r.reason instanceof OpenAI.RateLimitError), 'streaming requests get 429 before any event');
  for (const r of many) if (r.status === 'fulfilled') for await (const _ of r.value) { /* drain */ }
});

t.test('the per-request time limit gives 504 (and an error event when streaming)', async (t) => {
  const { model } = await scriptedModel(() => 5, { config: { maxPosition: 8192 }, stepMs: 5 });
  const srv = await serve({ model, port: 0, requestTimeoutMs: 60, stop: [] });
  t.teardown(() => srv.close());
  const r = await post(`${srv.url}/generate`, { text: 'hi', max_tokens: 1000 });
  t.equal(r.status, 504);
  t.match(r.json.error, { type: 'timeout_error', message: /time limit of 60 ms/ });
  const s = await post(`${srv.url}/v1/completions`, { prompt: 'hi', max_tokens: 1000, stream: true });
  t.equal(s.status, 200);
  t.match(s.text, /"type":"timeout_error"/);
  t.match(s.text, /data: \[DONE\]\n\n$/);
  t.equal(model.scheduler.active, 0);
});

t.test('a client that disconnects cancels its generation at once', async (t) => {
  const { model, engine } = await scriptedModel(() => 5, { config: { maxPosition: 8192 }, stepMs: 3 });
  const srv = await serve({ model, port: 0, stop: [] });
  t.teardown(() => srv.close());
  for (const stream of [false, true]) {
    const before = engine.log.length;
    await new Promise<void>((resolve) => {
      const req = http.request(`${srv.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' } });
      req.on('error', () => resolve());
      req.on('response', (res) => { res.once('data', () => { req.destroy(); resolve(); }); });
      req.end(JSON.stringify({ prompt: 'hi', max_tokens: 1000, stream }));
      if (!stream) setTimeout(() => { req.destroy(); resolve(); }, 40);
    });
    await new Promise((r) => setTimeout(r, 60));
    const steps = engine.log.length - before;
    t.ok(steps > 0 && steps < 100, `${stream ? 'streaming' : 'plain'}: ${steps} steps ran of 1000`);
    const after = engine.log.length;
    await new Promise((r) => setTimeout(r, 30));
    t.equal(engine.log.length, after, 'no more steps after the disconnect');
    t.equal(model.scheduler.active, 0, 'the slot is free');
  }
  const ok = await post(`${srv.url}/generate`, { text: 'hi', max_tokens: 2 });
  t.equal(ok.status, 200);
});

t.test('a 500 leaks nothing; prompts are not logged unless asked', async (t) => {
  const lines: string[] = [];
  const sink = new Writable({ write(c, _e, cb) { lines.push(String(c)); cb(); } });
  const { model } = await scriptedModel((seq) => { if (seq.length > 40) throw new Error('secret /internal/path exploded'); return 5; });
  const srv = await serve({ model, port: 0, logLevel: 'info', logStream: sink, stop: [] });
  const r = await post(`${srv.url}/v1/completions`, { prompt: 'hello '.repeat(30), max_tokens: 5 });
  t.equal(r.status, 500);
  t.same(r.json, { error: { message: 'internal server error', type: 'server_error', param: null, code: null } });
  const ok = await post(`${srv.url}/generate`, { text: 'my private message', max_tokens: 2 });
  t.equal(ok.status, 200);
  await srv.close();
  const log = lines.join('');
  t.match(log, /"msg":"generated"/, 'generations are logged (counts only)');
  t.notMatch(log, /my private message/, 'the prompt is not in the log');

  const lines2: string[] = [];
  const sink2 = new Writable({ write(c, _e, cb) { lines2.push(String(c)); cb(); } });
  const { model: m2 } = await scriptedModel(reply);
  const srv2 = await serve({ model: m2, port: 0, logLevel: 'info', logStream: sink2, logPrompts: true });
  await post(`${srv2.url}/generate`, { text: 'my private message' });
  await srv2.close();
  t.match(lines2.join(''), /my private message/, 'logPrompts logs it');
});

t.test('round-robin across HTTP requests: a short request is not starved by a long one', async (t) => {
  const { model } = await scriptedModel(() => 5, { config: { maxPosition: 8192 }, stepMs: 1 });
  const srv = await serve({ model, port: 0, stop: [] });
  t.teardown(() => srv.close());
  let longDone = 0, shortDone = 0;
  const long = post(`${srv.url}/generate`, { text: 'hi', max_tokens: 300 }).then(() => { longDone = performance.now(); });
  await new Promise((r) => setTimeout(r, 20));
  const short = post(`${srv.url}/generate`, { text: 'hi', max_tokens: 3 }).then(() => { shortDone = performance.now(); });
  await Promise.all([long, short]);
  t.ok(shortDone < longDone, 'the short request finished first');
});
