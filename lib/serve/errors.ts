/**
 * Errors in OpenAI's JSON shape: `{ "error": { "message", "type", "param", "code" } }`, with the
 * status codes OpenAI uses, so that OpenAI clients raise their usual exception classes.
 */
import { InferError } from '../infer/errors.ts';

export type ApiErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'not_found_error'
  | 'rate_limit_error'
  | 'timeout_error'
  | 'server_error'
  | 'service_unavailable_error';

export interface ApiErrorBody {
  error: { message: string; type: ApiErrorType; param: string | null; code: string | null };
}

export class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly type: ApiErrorType = 'invalid_request_error',
    readonly param: string | null = null, readonly code: string | null = null, readonly headers: Record<string, string> = {}) {
    super(message);
    this.name = 'ApiError';
  }

  body(): ApiErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export const badRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new ApiError(400, message, 'invalid_request_error', param, code);

/**
 * Maps anything thrown while handling a request to an ApiError. Fastify's own errors (body
 * parsing, size) and the inference errors get their proper 4xx; everything else is a 500 whose
 * message says nothing about the internals (the details go to the server log only).
 */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof InferError) {
    const msg = err.message.replace(/^mimic: /, '');
    switch (err.code) {
      case 'EINVAL': return badRequest(msg);
      case 'ECONTEXT': return badRequest(msg, 'messages', 'context_length_exceeded');
      case 'EQUEUEFULL': return new ApiError(429, 'the server is busy: its queue is full; retry shortly', 'rate_limit_error', null, 'queue_full', { 'retry-after': '1' });
      case 'EDISPOSED': return new ApiError(503, 'the server is shutting down', 'service_unavailable_error', null, 'shutting_down');
    }
  }
  const e = err as { code?: string; statusCode?: number; message?: string };
  switch (e?.code) {
    case 'FST_ERR_CTP_INVALID_JSON':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return badRequest(`the request body is not valid JSON (${(e.message ?? '').replace(/^Body /, 'body ')}); send a JSON object`, null, 'invalid_json');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError(413, 'the request body is too large for this server', 'invalid_request_error', null, 'body_too_large');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ApiError(415, 'unsupported Content-Type: send the body as JSON with "Content-Type: application/json"', 'invalid_request_error', null, 'unsupported_media_type');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return badRequest('the Content-Length header does not match the body', null, 'invalid_content_length');
  }
  if (err instanceof SyntaxError && e.statusCode === 400) return badRequest(`the request body is not valid JSON (${err.message}); send a JSON object`, null, 'invalid_json');
  if (typeof e?.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return new ApiError(e.statusCode, e.message ?? 'bad request');
  }
  return new ApiError(500, 'internal server error', 'server_error');
}
