/** Hosting: the seed's /generate and an OpenAI-compatible API over a loaded model. */
export { serve, isLoopback, type ServeOptions, type Server, type LogLevel } from './server.ts';
export { ApiError, toApiError, type ApiErrorBody, type ApiErrorType } from './errors.ts';
export { parseChatRequest, parseCompletionRequest, parseSeedRequest, type ChatRequest, type CompletionRequest, type SeedRequest, type SamplingRequest } from './requests.ts';
