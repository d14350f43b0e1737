/**
 * A bounded load test of `mimic serve` on loopback: N concurrent clients send a fixed number of
 * requests in total, each waits for its reply before sending the next, and the run stops at a
 * deadline whatever happens. Reports errors (must be 0), latency p50/p99 and aggregate
 * generated tokens per second.
 *
 *   node --import @tapjs/typescript/import bench/serve-load.ts --model test/fixtures/ref/tiny-llama
 *   (TS_NODE_TRANSPILE_ONLY=1 speeds up the start)
 *
 * Options: --model DIR | --url URL (an already running server), --clients 32, --requests 256,
 * --max-tokens 32, --deadline 300 (s), --endpoint completions|chat|generate, --stream,
 * --device auto, --quant nf4, --max-sessions 8, --api-key KEY, --json
 */
import http from 'node:http';
import os from 'node:os';
import { setMaxListeners } from 'node:events';
import { parseArgs } from 'node:util';
import { serve, type Server } from '../lib/serve/index.ts';

const { values: o } = parseArgs({
  options: {
    model: { type: 'string' }, url: { type: 'string' }, clients: { type: 'string', default: '32' }, requests: { type: 'string', default: '256' },
    'max-tokens': { type: 'string', default: '32' }, deadline: { type: 'string', default: '300' }, endpoint: { type: 'string', default: 'completions' },
    stream: { type: 'boolean', default: false }, device: { type: 'string', default: 'auto' }, quant: { type: 'string', default: 'nf4' },
    'max-sessions': { type: 'string', default: '8' }, 'api-key': { type: 'string' }, json: { type: 'boolean', default: false },
  },
});
const clients = Number(o.clients), total = Number(o.requests), maxTokens = Number(o['max-tokens']), deadlineMs = Number(o.deadline) * 1000;
if (!o.model && !o.url) { console.error('serve-load: give --model DIR or --url URL'); process.exit(2); }

let server: Server | undefined;
let base = o.url as string;
if (!base) {
  server = await serve({
    model: o.model!, device: o.device as 'auto', quant: o.quant as 'nf4', port: 0, maxSessions: Number(o['max-sessions']),
    maxQueue: Math.max(64, clients), apiKey: o['api-key'],
  });
  base = server.url;
}
const agent = new http.Agent({ keepAlive: true, maxSockets: clients });
const path = { completions: '/v1/completions', chat: '/v1/chat/completions', generate: '/generate' }[o.endpoint!];
if (!path) { console.error('serve-load: --endpoint is completions, chat or generate'); process.exit(2); }
const prompts = ['want to grab dinner tonight?', 'hello, how are you?', 'tell me who you are?', 'did you see the game last night', 'omg yes (that was crazy)'];
const bodyFor = (i: number) => {
  const text = prompts[i % prompts.length];
  const common = { max_tokens: maxTokens, temperature: 0.7, seed: i, ...(o.stream ? { stream: true, stream_options: { include_usage: true } } : {}) };
  if (o.endpoint === 'generate') return { text, max_tokens: maxTokens, temperature: 0.7, seed: i };
  if (o.endpoint === 'chat') return { model: 'm', messages: [{ role: 'user', content: text }], ...common };
  return { model: 'm', prompt: text, ...common };
};

interface Outcome { ok: boolean; ms: number; tokens: number; error?: string }
function one(i: number, signal: AbortSignal): Promise<Outcome> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const req = http.request(base + path, {
      method: 'POST', agent, signal,
      headers: { 'content-type': 'application/json', ...(o['api-key'] ? { authorization: `Bearer ${o['api-key']}` } : {}) },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; });
      res.on('end', () => {
        const ms = performance.now() - t0;
        if (res.statusCode !== 200) { resolve({ ok: false, ms, tokens: 0, error: `${res.statusCode} ${text.slice(0, 200)}` }); return; }
        let tokens = 0;
        try {
          if (o.stream) {
            const usage = text.split('\n\n').filter((e) => e.startsWith('data: {')).map((e) => JSON.parse(e.slice(6))).find((e) => e.usage)?.usage;
            if (!text.endsWith('data: [DONE]\n\n') || !usage) throw new Error('stream without usage or [DONE]');
            tokens = usage.completion_tokens;
          } else if (o.endpoint === 'generate') {
            if (typeof JSON.parse(text).response !== 'string') throw new Error('no response field');
          } else tokens = JSON.parse(text).usage.completion_tokens;
        } catch (e) { resolve({ ok: false, ms, tokens: 0, error: (e as Error).message }); return; }
        resolve({ ok: true, ms, tokens });
      });
      res.on('error', (e) => resolve({ ok: false, ms: performance.now() - t0, tokens: 0, error: e.message }));
    });
    req.on('error', (e) => resolve({ ok: false, ms: performance.now() - t0, tokens: 0, error: e.message }));
    req.end(JSON.stringify(bodyFor(i)));
  });
}

const deadline = AbortSignal.timeout(deadlineMs);
setMaxListeners(0, deadline);
const outcomes: Outcome[] = [];
let next = 0;
const t0 = performance.now();
await Promise.all(Array.from({ length: clients }, async () => {
  while (!deadline.aborted) {
    const i = next++;
    if (i >= total) return;
    outcomes.push(await one(i, deadline));
  }
}));
const wall = (performance.now() - t0) / 1000;
agent.destroy();
await server?.close();

const ok = outcomes.filter((x) => x.ok);
const lat = ok.map((x) => x.ms).sort((a, b) => a - b);
const pct = (p: number) => (lat.length ? lat[Math.min(lat.length - 1, Math.ceil((p / 100) * lat.length) - 1)] : NaN);
const tokens = ok.reduce((s, x) => s + x.tokens, 0);
const errors = outcomes.length - ok.length;
const report = {
  endpoint: path, stream: o.stream, clients, requestsPlanned: total, requestsDone: outcomes.length, errors,
  deadlineHit: deadline.aborted && outcomes.length < total,
  p50Ms: Math.round(pct(50)), p99Ms: Math.round(pct(99)), maxMs: Math.round(lat.at(-1) ?? NaN),
  completionTokens: tokens, tokensPerSecond: Number((tokens / wall).toFixed(1)), requestsPerSecond: Number((ok.length / wall).toFixed(2)),
  wallSeconds: Number(wall.toFixed(2)), maxTokens, model: server?.model.name ?? base, device: server?.model.device,
  quant: server?.model.quant, maxSessions: Number(o['max-sessions']), cpus: os.cpus().length, node: process.version,
  firstErrors: outcomes.filter((x) => !x.ok).slice(0, 3).map((x) => x.error),
};
if (o.json) console.log(JSON.stringify(report, null, 2));
else {
  console.log(`serve-load: ${report.requestsDone}/${total} requests, ${clients} clients, ${errors} errors${report.deadlineHit ? ' (deadline hit)' : ''}`);
  console.log(`  latency p50 ${report.p50Ms} ms · p99 ${report.p99Ms} ms · max ${report.maxMs} ms`);
  console.log(o.endpoint === 'generate'
    ? `  ${report.wallSeconds} s, ${report.requestsPerSecond} req/s (POST /generate reports no token counts; use --endpoint completions for tokens/s)`
    : `  ${report.completionTokens} tokens in ${report.wallSeconds} s → ${report.tokensPerSecond} tokens/s aggregate, ${report.requestsPerSecond} req/s`);
  console.log(`  ${report.model} on ${report.device ?? '?'} (${report.quant ?? '?'}), max ${report.maxSessions} sessions, ${report.cpus} CPUs, node ${report.node}`);
  if (errors) console.log(`  first errors: ${report.firstErrors.join(' | ')}`);
}
process.exitCode = errors === 0 && !report.deadlineHit ? 0 : 1;
