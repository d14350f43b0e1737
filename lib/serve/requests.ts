/**
 * Request bodies of the HTTP API, checked field by field. Each parser returns a plain description
 * of the request or throws an ApiError (400) that names the offending field, as OpenAI does.
 * Unknown fields are ignored; known but unsupported ones (n > 1, logprobs, echo, suffix, tools)
 * are refused instead of silently ignored.
 */
import type { ChatMessage } from '../tokenize/tokenizer.ts';
import { badRequest } from './errors.ts';

export interface SamplingRequest {
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  repetitionPenalty?: number;
  seed?: number;
  stop: string[];
}

export interface ChatRequest extends SamplingRequest { kind: 'chat'; messages: ChatMessage[]; stream: boolean; includeUsage: boolean; model?: string }
export interface CompletionRequest extends SamplingRequest { kind: 'completion'; prompt: string | number[]; stream: boolean; includeUsage: boolean; model?: string }
export interface SeedRequest extends SamplingRequest { kind: 'seed'; text: string }

type Body = Record<string, unknown>;

const typeName = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);

function asObject(body: unknown): Body {
  if (body === undefined || body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw badRequest(`the request body must be a JSON object (got ${body === undefined ? 'no body' : typeName(body)})`, null, 'invalid_body');
  }
  return body as Body;
}

/** The field, or undefined when absent or null (OpenAI treats null as "not given"). */
const get = (b: Body, ...names: string[]): [string, unknown] => {
  for (const n of names) if (b[n] !== undefined && b[n] !== null) return [n, b[n]];
  return [names[0], undefined];
};

function number(b: Body, names: string[], ok: (x: number) => boolean, what: string, integer = false): number | undefined {
  const [name, v] = get(b, ...names);
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw badRequest(`${name} must be a number (got ${typeName(v)})`, name, 'invalid_type');
  if ((integer && !Number.isInteger(v)) || !ok(v)) throw badRequest(`${name} must be ${what} (got ${v})`, name, 'invalid_value');
  return v;
}

function bool(b: Body, name: string): boolean {
  const v = b[name];
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') throw badRequest(`${name} must be a boolean (got ${typeName(v)})`, name, 'invalid_type');
  return v;
}

function stops(b: Body): string[] {
  const [, v] = get(b, 'stop');
  if (v === undefined) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.some((s) => typeof s !== 'string')) throw badRequest('stop must be a string or an array of strings', 'stop', 'invalid_type');
  if (list.length > 4) throw badRequest(`stop may hold at most 4 strings (got ${list.length})`, 'stop', 'invalid_value');
  if (list.some((s: string) => s.length === 0)) throw badRequest('stop strings must not be empty', 'stop', 'invalid_value');
  return list as string[];
}

function sampling(b: Body, maxTokenNames: string[]): SamplingRequest {
  const n = number(b, ['n'], (x) => x === 1, '1 (this server returns one choice per request)', true);
  void n;
  if (b.logprobs !== undefined && b.logprobs !== null && b.logprobs !== false) throw badRequest('logprobs are not supported by this server', 'logprobs', 'unsupported');
  for (const name of ['frequency_penalty', 'presence_penalty']) {
    number(b, [name], (x) => x === 0, '0 (not supported by this server; use repetition_penalty)');
  }
  return {
    maxTokens: number(b, maxTokenNames, (x) => x >= 1, 'an integer ≥ 1', true),
    temperature: number(b, ['temperature'], (x) => x >= 0 && x <= 2, 'between 0 and 2'),
    topP: number(b, ['top_p', 'topP'], (x) => x > 0 && x <= 1, 'in (0, 1]'),
    topK: number(b, ['top_k', 'topK'], (x) => x >= 0, 'an integer ≥ 0 (0 = off)', true),
    repetitionPenalty: number(b, ['repetition_penalty', 'repetitionPenalty'], (x) => x > 0, 'a number > 0'),
    seed: number(b, ['seed'], (x) => Number.isSafeInteger(x), 'an integer', true),
    stop: stops(b),
  };
}

function streamFlags(b: Body): { stream: boolean; includeUsage: boolean } {
  const stream = bool(b, 'stream');
  const so = b.stream_options;
  let includeUsage = false;
  if (so !== undefined && so !== null) {
    if (typeof so !== 'object' || Array.isArray(so)) throw badRequest('stream_options must be an object', 'stream_options', 'invalid_type');
    if (!stream) throw badRequest('stream_options is only allowed with stream: true', 'stream_options', 'invalid_value');
    includeUsage = bool(so as Body, 'include_usage');
  }
  return { stream, includeUsage };
}

function modelField(b: Body): string | undefined {
  const v = b.model;
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw badRequest(`model must be a string (got ${typeName(v)})`, 'model', 'invalid_type');
  return v;
}

const ROLES = new Set(['system', 'developer', 'user', 'assistant']);

/** POST /v1/chat/completions */
export function parseChatRequest(body: unknown): ChatRequest {
  const b = asObject(body);
  const m = b.messages;
  if (m === undefined || m === null) throw badRequest('messages is required: an array of {role, content}', 'messages', 'missing_required_parameter');
  if (!Array.isArray(m)) throw badRequest(`messages must be an array (got ${typeName(m)})`, 'messages', 'invalid_type');
  if (m.length === 0) throw badRequest('messages must not be empty', 'messages', 'invalid_value');
  for (const k of ['tools', 'functions', 'tool_choice', 'function_call', 'response_format', 'audio']) {
    if (b[k] !== undefined && b[k] !== null) throw badRequest(`${k} is not supported by this server`, k, 'unsupported');
  }
  const messages: ChatMessage[] = m.map((x: unknown, i: number) => {
    const p = `messages[${i}]`;
    if (!x || typeof x !== 'object' || Array.isArray(x)) throw badRequest(`${p} must be an object {role, content}`, p, 'invalid_type');
    const { role, content } = x as Body;
    if (typeof role !== 'string') throw badRequest(`${p}.role must be a string`, `${p}.role`, 'invalid_type');
    if (!ROLES.has(role)) throw badRequest(`${p}.role must be one of system, developer, user, assistant (got ${JSON.stringify(role)})`, `${p}.role`, 'invalid_value');
    let text: string;
    if (typeof content === 'string') text = content;
    else if (Array.isArray(content)) {
      text = content.map((part: unknown, j: number) => {
        const pp = part as Body;
        if (!pp || typeof pp !== 'object' || pp.type !== 'text' || typeof pp.text !== 'string') {
          throw badRequest(`${p}.content[${j}] must be a text part {type: "text", text}; images and audio are not supported`, `${p}.content`, 'invalid_value');
        }
        return pp.text;
      }).join('');
    } else if ((content === null || content === undefined) && role === 'assistant') text = '';
    else throw badRequest(`${p}.content must be a string (got ${typeName(content)})`, `${p}.content`, 'invalid_type');
    return { role: role === 'developer' ? 'system' : role, content: text };
  });
  if (messages.every((x) => x.content.trim().length === 0)) {
    throw badRequest('the messages are empty: give at least one message with text', 'messages', 'invalid_value');
  }
  return { kind: 'chat', messages, model: modelField(b), ...streamFlags(b), ...sampling(b, ['max_completion_tokens', 'max_tokens']) };
}

/** POST /v1/completions */
export function parseCompletionRequest(body: unknown): CompletionRequest {
  const b = asObject(body);
  let p = b.prompt;
  if (p === undefined || p === null) throw badRequest('prompt is required: a string (or an array of token ids)', 'prompt', 'missing_required_parameter');
  if (Array.isArray(p) && p.length === 1 && (typeof p[0] === 'string' || Array.isArray(p[0]))) p = p[0];
  let prompt: string | number[];
  if (typeof p === 'string') {
    if (p.length === 0) throw badRequest('prompt must not be empty', 'prompt', 'invalid_value');
    prompt = p;
  } else if (Array.isArray(p) && p.every((x) => typeof x === 'number')) {
    if (p.length === 0) throw badRequest('prompt must not be empty', 'prompt', 'invalid_value');
    if (!p.every((x) => Number.isInteger(x) && x >= 0)) throw badRequest('prompt token ids must be integers ≥ 0', 'prompt', 'invalid_value');
    prompt = p as number[];
  } else if (Array.isArray(p)) {
    throw badRequest('prompt must be one string or one array of token ids: batches of prompts are not supported (send one request each)', 'prompt', 'invalid_value');
  } else {
    throw badRequest(`prompt must be a string (got ${typeName(p)})`, 'prompt', 'invalid_type');
  }
  if (bool(b, 'echo')) throw badRequest('echo is not supported by this server', 'echo', 'unsupported');
  if (b.suffix !== undefined && b.suffix !== null) throw badRequest('suffix is not supported by this server', 'suffix', 'unsupported');
  number(b, ['best_of'], (x) => x === 1, '1', true);
  return { kind: 'completion', prompt, model: modelField(b), ...streamFlags(b), ...sampling(b, ['max_tokens']) };
}

/** POST /generate — the seed's contract: {"text": "..."} (sampling fields optional). */
export function parseSeedRequest(body: unknown): SeedRequest {
  const b = asObject(body);
  const text = b.text;
  if (text === undefined || text === null) throw badRequest('text is required: {"text": "your message"}', 'text', 'missing_required_parameter');
  if (typeof text !== 'string') throw badRequest(`text must be a string (got ${typeName(text)})`, 'text', 'invalid_type');
  if (text.trim().length === 0) throw badRequest('text must not be empty', 'text', 'invalid_value');
  return { kind: 'seed', text, ...sampling(b, ['max_tokens', 'maxTokens', 'max_new_tokens']) };
}
