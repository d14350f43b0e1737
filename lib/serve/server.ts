/**
 * `serve({ model, ... }) → Server`: the seed's `POST /generate` plus an OpenAI-compatible API
 * (`/v1/chat/completions`, `/v1/completions`, `/v1/models`) and `GET /health`, on Fastify.
 *
 * Safety by default: loopback only unless an API key is set; a body size limit; a prompt length
 * limit in tokens; a max_tokens cap (a larger request is refused with 400, as OpenAI does); a
 * per-request time limit; a bounded queue (429 when full); a client that disconnects cancels
 * its generation at once; prompts and replies are never logged unless `logPrompts` is set.
 */
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { loadModel, Model, type DeviceOption } from '../infer/model.ts';
import type { GenerateResult } from '../infer/options.ts';
import { TRAINED_STOPS } from '../tokenize/format.ts';
import { ApiError, badRequest, toApiError } from './errors.ts';
import { parseChatRequest, parseCompletionRequest, parseSeedRequest, type SamplingRequest } from './requests.ts';

export type LogLevel = 'silent' | 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';

export interface ServeOptions {
  /** A model folder (loaded now, disposed on close) or a Model from loadModel(). Required. */
  model: string | Model;
  /** A PEFT adapter folder to attach (only with a model folder). Default: none. */
  adapter?: string;
  /** Address to bind. Anything but loopback requires an API key. Default '127.0.0.1'. */
  host?: string;
  /** TCP port; 0 picks a free one (see `Server.port`). Default 8000. */
  port?: number;
  /** Clients must send `Authorization: Bearer <apiKey>` (all routes but /health). Default: the MIMIC_API_KEY environment variable, else none. */
  apiKey?: string;
  /** Requests that may wait for a generation slot; one more is answered 429. Default 64. */
  maxQueue?: number;
  /** Generations decoded at once (each holds a KV cache); only when `model` is a folder. Default 8. */
  maxSessions?: number;
  /** Longest prompt in tokens (after the chat template); longer is a 400. Default 4096, and never more than the model's context − 1. */
  maxPromptTokens?: number;
  /** Largest max_tokens a request may ask for; more is a 400 (OpenAI's behaviour). Default 1024. */
  maxTokensCap?: number;
  /** max_tokens when a request gives none (then also capped by the room left in the context). Default 256. */
  defaultMaxTokens?: number;
  /** Time limit per request, queueing included; past it the generation stops and the request gets 504 (or an error event when streaming). Default 300000 (5 min). */
  requestTimeoutMs?: number;
  /** Largest request body in bytes; more is a 413. Default 1048576 (1 MiB). */
  bodyLimit?: number;
  /**
   * Stop strings applied to every request, besides the request's own `stop`. Default
   * [' DONE', 'DONE']: the end marker of mimic's training format (' DONE'), cut together with the
   * space before it.
   */
  stop?: string[];
  /** The model id shown by /v1/models and in responses. Default: the model folder's name (+ the adapter's). */
  modelName?: string;
  /** Log prompts and replies (at info level). Default false: only method, path, status, timings and token counts are logged. */
  logPrompts?: boolean;
  /** Server log level (pino JSON lines). Default 'silent'. */
  logLevel?: LogLevel;
  /** Where log lines go. Default process.stdout. */
  logStream?: NodeJS.WritableStream;
  /** Device when loading a model folder. Default 'auto'. */
  device?: DeviceOption;
  /** Weight format when loading a model folder. Default 'nf4'. */
  quant?: 'nf4' | 'none';
  /** CPU threads when loading a model folder; 0 = all cores. Default 0. */
  threads?: number;
}

export interface Server {
  /** e.g. http://127.0.0.1:8000 */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  readonly model: Model;
  readonly app: FastifyInstance;
  /** Stops accepting requests, ends generations in flight, and disposes the model if serve() loaded it. */
  close(): Promise<void>;
}

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  const h = host.trim().toLowerCase().replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127(\.\d{1,3}){3}$/.test(h) || /^::ffff:127(\.\d{1,3}){3}$/.test(h);
}

const digest = (s: string) => createHash('sha256').update(s).digest();

function checkOptions(o: ServeOptions) {
  const int = (name: string, v: unknown, lo: number, hi = Number.MAX_SAFE_INTEGER) => {
    if (v !== undefined && !(typeof v === 'number' && Number.isInteger(v) && v >= lo && v <= hi)) {
      throw new Error(`mimic serve: ${name} must be an integer in [${lo}, ${hi}] (got ${JSON.stringify(v)})`);
    }
  };
  int('port', o.port, 0, 65535);
  int('maxQueue', o.maxQueue, 0);
  int('maxSessions', o.maxSessions, 1);
  int('maxPromptTokens', o.maxPromptTokens, 1);
  int('maxTokensCap', o.maxTokensCap, 1);
  int('defaultMaxTokens', o.defaultMaxTokens, 1);
  int('requestTimeoutMs', o.requestTimeoutMs, 1);
  int('bodyLimit', o.bodyLimit, 1);
  if (o.stop !== undefined && (!Array.isArray(o.stop) || o.stop.some((s) => typeof s !== 'string'))) throw new Error('mimic serve: stop must be an array of strings');
}

export async function serve(options: ServeOptions): Promise<Server> {
  if (!options || typeof options !== 'object') throw new Error('mimic serve: options are required: { model }');
  checkOptions(options);
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? 8000;
  const rawKey = options.apiKey ?? process.env.MIMIC_API_KEY;
  const apiKey = rawKey === undefined || rawKey === '' ? undefined : rawKey;
  if (apiKey !== undefined && (typeof apiKey !== 'string' || /\s/.test(apiKey))) throw new Error('mimic serve: the API key must be a string without spaces');
  if (!isLoopback(host) && apiKey === undefined) {
    throw new Error(`mimic serve: refusing to listen on ${host} without an API key: anyone who can reach this address could use the model. ` +
      'Set one with --api-key KEY (or the MIMIC_API_KEY environment variable); clients then send "Authorization: Bearer KEY". ' +
      'Or bind 127.0.0.1 (the default).');
  }
  const maxQueue = options.maxQueue ?? 64;
  const maxTokensCap = options.maxTokensCap ?? 1024;
  const defaultMaxTokens = options.defaultMaxTokens ?? 256;
  const requestTimeoutMs = options.requestTimeoutMs ?? 300_000;
  const logPrompts = options.logPrompts ?? false;
  const serverStops = options.stop ?? [...TRAINED_STOPS];

  let model: Model;
  let owned = false;
  if (options.model instanceof Model) {
    if (options.adapter !== undefined) throw new Error('mimic serve: `adapter` goes with a model folder; a loaded Model has its adapter from loadModel(dir, { adapter })');
    model = options.model;
  } else if (typeof options.model === 'string') {
    model = await loadModel(options.model, {
      adapter: options.adapter, device: options.device, quant: options.quant, threads: options.threads, maxSessions: options.maxSessions,
    });
    owned = true;
  } else {
    throw new Error('mimic serve: `model` must be a model folder or a Model from loadModel()');
  }
  const ctx = model.contextLength;
  const maxPromptTokens = Math.min(options.maxPromptTokens ?? 4096, ctx - 1);
  const modelName = options.modelName ?? model.name;
  const created = Math.floor(Date.now() / 1000);
  const closing = new AbortController();
  setMaxListeners(0, closing.signal); // one listener per request in flight
  const keyDigest = apiKey === undefined ? undefined : digest(apiKey);

  const level = options.logLevel ?? 'silent';
  const app = Fastify({
    bodyLimit: options.bodyLimit ?? 1024 * 1024,
    logger: level === 'silent' ? false : { level, ...(options.logStream ? { stream: options.logStream } : {}) },
    return503OnClosing: true,
  });

  const sendError = (reply: FastifyReply, e: ApiError) => reply.code(e.status).headers(e.headers).send(e.body());

  app.setErrorHandler((err, request, reply) => {
    const e = toApiError(err);
    if (e.status >= 500) request.log.error({ err }, 'request failed');
    return sendError(reply, e);
  });
  app.setNotFoundHandler((request, reply) =>
    sendError(reply, new ApiError(404, `there is no ${request.method} ${request.url.split('?')[0]} on this server; see GET /v1/models, POST /v1/chat/completions, POST /v1/completions, POST /generate`, 'not_found_error', null, 'not_found')));

  if (keyDigest) {
    app.addHook('onRequest', async (request, reply) => {
      if (request.method === 'GET' && request.url.split('?')[0] === '/health') return;
      const h = request.headers.authorization;
      const m = typeof h === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(h) : null;
      if (!m) {
        return sendError(reply, new ApiError(401, 'missing API key: send the header "Authorization: Bearer YOUR_KEY"', 'invalid_request_error', null, 'missing_api_key'));
      }
      if (!timingSafeEqual(digest(m[1]), keyDigest)) {
        return sendError(reply, new ApiError(401, 'incorrect API key', 'invalid_request_error', null, 'invalid_api_key'));
      }
    });
  }

  /** Prompt limits, max_tokens, and the options for model.generate. */
  const plan = (ids: number[], s: SamplingRequest, param: string) => {
    if (ids.length === 0) throw badRequest('the prompt is empty', param, 'invalid_value');
    if (ids.length > maxPromptTokens) {
      throw badRequest(`the prompt is ${ids.length} tokens; this server accepts at most ${maxPromptTokens}`, param, 'context_length_exceeded');
    }
    const room = ctx - ids.length;
    let maxTokens: number;
    if (s.maxTokens !== undefined) {
      if (s.maxTokens > maxTokensCap) {
        throw badRequest(`max_tokens is ${s.maxTokens}; this server allows at most ${maxTokensCap}`, 'max_tokens', 'invalid_value');
      }
      if (s.maxTokens > room) {
        throw badRequest(`the prompt (${ids.length} tokens) plus max_tokens (${s.maxTokens}) exceed the model's context of ${ctx} tokens; ask for at most ${room}`,
          'max_tokens', 'context_length_exceeded');
      }
      maxTokens = s.maxTokens;
    } else {
      maxTokens = Math.min(defaultMaxTokens, maxTokensCap, room);
    }
    return {
      maxTokens,
      temperature: s.temperature,
      topP: s.topP,
      topK: s.topK,
      repetitionPenalty: s.repetitionPenalty,
      seed: s.seed,
      stop: [...serverStops, ...s.stop],
      maxQueue,
    };
  };

  /**
   * Runs one generation for a request: cancels it when the client goes away, the time limit
   * passes or the server closes, and says which of those happened.
   */
  const run = async (request: FastifyRequest, reply: FastifyReply, ids: number[], opts: ReturnType<typeof plan>,
    onToken?: (s: string) => void): Promise<{ result: GenerateResult; cause: 'client' | 'timeout' | 'closing' | null }> => {
    const ac = new AbortController();
    let cause: 'client' | 'timeout' | 'closing' | null = null;
    const stop = (why: typeof cause) => { cause ??= why; ac.abort(); };
    const onClose = () => { if (!reply.raw.writableFinished) stop('client'); };
    const onClosing = () => stop('closing');
    reply.raw.on('close', onClose);
    closing.signal.addEventListener('abort', onClosing);
    const timer = setTimeout(() => stop('timeout'), requestTimeoutMs);
    const t0 = performance.now();
    try {
      const result = await model.generate(ids, { ...opts, signal: ac.signal, onToken });
      request.log.info({ promptTokens: result.usage.promptTokens, completionTokens: result.usage.completionTokens, stopReason: result.stopReason,
        cause, ms: Math.round(performance.now() - t0) }, 'generated');
      if (logPrompts) request.log.info({ prompt: model.tokenizer.decode(ids), reply: result.text }, 'prompt and reply');
      return { result, cause: result.stopReason === 'abort' ? cause : null };
    } finally {
      clearTimeout(timer);
      reply.raw.off('close', onClose);
      closing.signal.removeEventListener('abort', onClosing);
    }
  };

  const abortError = (cause: 'client' | 'timeout' | 'closing') => cause === 'timeout'
    ? new ApiError(504, `the request exceeded this server's time limit of ${requestTimeoutMs} ms`, 'timeout_error', null, 'timeout')
    : new ApiError(503, 'the server is shutting down', 'service_unavailable_error', null, 'shutting_down');

  const finish = (r: GenerateResult) => (r.stopReason === 'length' ? 'length' : 'stop');
  const usage = (r: GenerateResult) => ({
    prompt_tokens: r.usage.promptTokens, completion_tokens: r.usage.completionTokens, total_tokens: r.usage.promptTokens + r.usage.completionTokens,
  });

  /** Server-sent events, started lazily so that errors before the first token are plain JSON errors. */
  const sse = (reply: FastifyReply) => {
    let started = false;
    const open = () => {
      if (started) return;
      started = true;
      reply.hijack();
      reply.raw.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no',
      });
    };
    return {
      get started() { return started; },
      send(data: unknown) { open(); if (!reply.raw.destroyed) reply.raw.write(`data: ${JSON.stringify(data)}\n\n`); },
      end() { open(); if (!reply.raw.destroyed) reply.raw.end('data: [DONE]\n\n'); },
      abort() { if (started) reply.raw.destroy(); else { reply.hijack(); reply.raw.destroy(); } },
    };
  };

  /** The OpenAI endpoints share everything but the shape of a choice. */
  const openai = async (request: FastifyRequest, reply: FastifyReply, kind: 'chat' | 'completion') => {
    const req = kind === 'chat' ? parseChatRequest(request.body) : parseCompletionRequest(request.body);
    let ids: number[];
    if (req.kind === 'chat') {
      if (!model.tokenizer.hasChatTemplate) throw badRequest('this model has no chat template; use POST /v1/completions with a plain prompt', 'messages', 'unsupported');
      ids = model.encodeChat(req.messages, { addGenerationPrompt: true });
    } else {
      ids = typeof req.prompt === 'string' ? model.tokenizer.encode(req.prompt) : req.prompt;
    }
    const opts = plan(ids, req, kind === 'chat' ? 'messages' : 'prompt');
    const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replace(/-/g, '')}`;
    const now = Math.floor(Date.now() / 1000);
    const object = kind === 'chat' ? 'chat.completion' : 'text_completion';
    const head = { id, object: kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', created: now, model: modelName };
    const usageNull = req.includeUsage ? { usage: null } : {};

    if (!req.stream) {
      const { result, cause } = await run(request, reply, ids, opts);
      if (cause === 'client') { reply.hijack(); return; }
      if (cause) throw abortError(cause);
      const choice = kind === 'chat'
        ? { index: 0, message: { role: 'assistant', content: result.text, refusal: null }, logprobs: null, finish_reason: finish(result) }
        : { index: 0, text: result.text, logprobs: null, finish_reason: finish(result) };
      return { id, object, created: now, model: modelName, choices: [choice], usage: usage(result), system_fingerprint: null };
    }

    const out = sse(reply);
    const delta = (text: string, first: boolean) => kind === 'chat'
      ? { ...head, choices: [{ index: 0, delta: first ? { role: 'assistant', content: text } : { content: text }, logprobs: null, finish_reason: null }], ...usageNull }
      : { ...head, choices: [{ index: 0, text, logprobs: null, finish_reason: null }], ...usageNull };
    let first = true;
    const onToken = (s: string) => { out.send(delta(s, first)); first = false; };
    let outcome: Awaited<ReturnType<typeof run>>;
    try {
      outcome = await run(request, reply, ids, opts, onToken);
    } catch (e) {
      if (!out.started) throw e;
      const err = toApiError(e);
      if (err.status >= 500) request.log.error({ err: e }, 'generation failed');
      out.send(err.body());
      out.end();
      return;
    }
    const { result, cause } = outcome;
    if (cause === 'client') { out.abort(); return; }
    if (cause) {
      if (!out.started) throw abortError(cause);
      out.send(abortError(cause).body());
      out.end();
      return;
    }
    if (first && kind === 'chat') onToken('');
    out.send(kind === 'chat'
      ? { ...head, choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: finish(result) }], ...usageNull }
      : { ...head, choices: [{ index: 0, text: '', logprobs: null, finish_reason: finish(result) }], ...usageNull });
    if (req.includeUsage) out.send({ ...head, choices: [], usage: usage(result) });
    out.end();
  };

  app.post('/v1/chat/completions', (request, reply) => openai(request, reply, 'chat'));
  app.post('/v1/completions', (request, reply) => openai(request, reply, 'completion'));

  app.post('/generate', async (request, reply) => {
    const req = parseSeedRequest(request.body);
    const ids = model.promptIds(req.text);
    const { result, cause } = await run(request, reply, ids, plan(ids, req, 'text'));
    if (cause === 'client') { reply.hijack(); return; }
    if (cause) throw abortError(cause);
    return { response: result.text.trim() };
  });

  const modelCard = { id: modelName, object: 'model', created, owned_by: 'mimic' };
  app.get('/v1/models', async () => ({ object: 'list', data: [modelCard] }));
  app.get<{ Params: { id: string } }>('/v1/models/:id', async (request) => {
    if (request.params.id !== modelName) throw new ApiError(404, `the model ${JSON.stringify(request.params.id)} does not exist; this server serves ${JSON.stringify(modelName)}`, 'not_found_error', 'model', 'model_not_found');
    return modelCard;
  });
  app.get('/health', async () => ({
    status: closing.signal.aborted ? 'closing' : 'ok', model: modelName, device: model.device,
    active: model.scheduler.active, waiting: model.scheduler.waiting,
  }));

  try {
    await app.listen({ host, port });
  } catch (e) {
    await app.close().catch(() => {});
    if (owned) await model.dispose();
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EADDRINUSE') throw new Error(`mimic serve: port ${port} on ${host} is already in use; pick another with --port`);
    if (err.code === 'EADDRNOTAVAIL') throw new Error(`mimic serve: ${host} is not an address of this machine`);
    throw e;
  }
  const addr = app.server.address() as AddressInfo;
  const urlHost = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  let closed: Promise<void> | undefined;
  return {
    url: `http://${urlHost}:${addr.port}`,
    host,
    port: addr.port,
    model,
    app,
    close() {
      closed ??= (async () => {
        closing.abort();
        await app.close();
        if (owned) await model.dispose();
      })();
      return closed;
    },
  };
}
