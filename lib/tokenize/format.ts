/**
 * The training format: how one `{input, output, context?}` pair becomes token ids and labels.
 *
 * - `chat` (the default when the tokenizer has a chat template): earlier `context` turns, then
 *   the user's `input`, then the assistant's `output + stopMarker`, rendered by the model's own
 *   template. The prompt is exactly what inference renders (`promptText`), so the model is
 *   trained on the token boundary it will see.
 * - `plain` (base models without a template): `{input} →` then ` {output}{stopMarker}` and the
 *   end-of-text token when the tokenizer has one; earlier turns as earlier lines.
 *
 * Only the answer (the assistant's text, the stop marker and the end-of-turn token) is in the
 * loss: every prompt label is -100. Labels are aligned with the ids; the one-token shift
 * happens inside the loss, as in transformers.
 *
 * Too long? Earlier context turns go first (oldest first), then prompt tokens from the left
 * (the BOS token is kept). A pair whose answer alone does not fit is skipped and counted.
 */
import type { ChatMessage, Tokenizer } from './tokenizer.ts';

export type TrainFormat = 'chat' | 'plain' | 'auto';

/** A prepared pair, as `prepare()` writes it. */
export interface Pair {
  input: string;
  output: string;
  /** Earlier turns of the conversation, oldest first. */
  context?: ChatMessage[];
}

export interface FormatOptions {
  /** 'chat' (the model's chat template), 'plain' (`{input} → {output} DONE`) or 'auto' (chat when the tokenizer has a template). Default 'auto'. */
  format?: TrainFormat;
  /** Appended to every answer so the model learns where to stop. Default ' DONE'. */
  stopMarker?: string;
  /** Longest example in tokens (prompt + answer). Default 512. */
  maxSeqLen?: number;
}

export const FORMAT_DEFAULTS = { format: 'auto' as TrainFormat, stopMarker: ' DONE', maxSeqLen: 512 };

/** The stops generation needs for a model trained with the default marker: ' DONE', and 'DONE' where the space went elsewhere. */
export const TRAINED_STOPS: readonly string[] = [FORMAT_DEFAULTS.stopMarker, FORMAT_DEFAULTS.stopMarker.trim()];

/** One tokenized training example. */
export interface TokenizedExample {
  ids: Int32Array;
  /** Aligned with ids; -100 where masked. */
  labels: Int32Array;
}

/** Why a pair was not turned into an example. */
export type SkipReason = 'answerTooLong' | 'emptyOutput' | 'noTargets';

export type EncodeOutcome =
  | { example: TokenizedExample; truncated: boolean }
  | { skipped: SkipReason; answerTokens: number };

/** The plain format's separator between input and output. */
export const PLAIN_ARROW = ' →';

/** 'auto' resolved against a tokenizer. */
export function resolveFormat(tok: Tokenizer, format: TrainFormat = 'auto'): 'chat' | 'plain' {
  if (format === 'auto') return tok.hasChatTemplate ? 'chat' : 'plain';
  if (format === 'chat' && !tok.hasChatTemplate) {
    throw new Error("mimic: format 'chat' needs a chat_template in the model's tokenizer_config.json; use format 'plain' for base models");
  }
  if (format !== 'chat' && format !== 'plain') throw new Error(`mimic: unknown format "${String(format)}"; use 'chat', 'plain' or 'auto'`);
  return format;
}

function plainTurns(context: ChatMessage[], stopMarker: string): string {
  let s = '';
  for (const m of context) s += m.role === 'assistant' ? ` ${m.content}${stopMarker}\n` : `${m.content}${PLAIN_ARROW}`;
  // a user turn left without its answer still ends its line
  if (context.length > 0 && context[context.length - 1].role !== 'assistant') s += '\n';
  return s;
}

/**
 * The prompt text that makes the model answer `input` (what inference should render, and the
 * masked part of a training example). `context` turns come before it.
 */
export function promptText(tok: Tokenizer, input: string, options: { format?: TrainFormat; context?: ChatMessage[]; stopMarker?: string } = {}): string {
  const fmt = resolveFormat(tok, options.format);
  const context = options.context ?? [];
  if (fmt === 'chat') return tok.chatPrompt([...context, { role: 'user', content: input }], { addGenerationPrompt: true });
  return (tok.bosToken ?? '') + plainTurns(context, options.stopMarker ?? FORMAT_DEFAULTS.stopMarker) + input + PLAIN_ARROW;
}

/** The answer text that follows `promptText` in training: output, stop marker, end of turn. */
export function answerText(tok: Tokenizer, pair: Pair, options: { format?: TrainFormat; stopMarker?: string } = {}): string {
  const fmt = resolveFormat(tok, options.format);
  const stop = options.stopMarker ?? FORMAT_DEFAULTS.stopMarker;
  if (fmt === 'plain') return ` ${pair.output}${stop}${tok.eosToken ?? ''}`;
  const context = pair.context ?? [];
  const prompt = promptText(tok, pair.input, { format: 'chat', context });
  const full = tok.chatPrompt([...context, { role: 'user', content: pair.input }, { role: 'assistant', content: pair.output + stop }],
    { addGenerationPrompt: false });
  if (!full.startsWith(prompt)) {
    throw new Error('mimic: the chat template does not render the prompt as a prefix of the whole conversation, ' +
      "so the answer cannot be masked reliably; use format 'plain'");
  }
  return full.slice(prompt.length);
}

/** Fits prompt + answer into maxSeqLen; see the file comment for the rules. */
export function fitExample(prompt: number[], answer: number[], maxSeqLen: number, bosId?: number): EncodeOutcome {
  if (answer.length === 0) return { skipped: 'noTargets', answerTokens: 0 };
  // the first answer token is predicted from the token before it, so at least one prompt token stays
  if (answer.length > maxSeqLen - 1) return { skipped: 'answerTooLong', answerTokens: answer.length };
  let truncated = false;
  if (prompt.length + answer.length > maxSeqLen) {
    truncated = true;
    const keep = maxSeqLen - answer.length;
    prompt = bosId !== undefined && prompt[0] === bosId && keep >= 2
      ? [bosId, ...prompt.slice(prompt.length - (keep - 1))]
      : prompt.slice(prompt.length - keep);
  }
  const ids = new Int32Array(prompt.length + answer.length);
  ids.set(prompt, 0);
  ids.set(answer, prompt.length);
  const labels = new Int32Array(ids.length).fill(-100);
  labels.set(answer, prompt.length);
  return { example: { ids, labels }, truncated };
}

/** A pair → ids + labels (or the reason it was skipped). */
export function encodePair(tok: Tokenizer, pair: Pair, options: FormatOptions = {}): EncodeOutcome {
  const fmt = resolveFormat(tok, options.format);
  const stopMarker = options.stopMarker ?? FORMAT_DEFAULTS.stopMarker;
  const maxSeqLen = options.maxSeqLen ?? FORMAT_DEFAULTS.maxSeqLen;
  if (pair.output.trim() === '') return { skipped: 'emptyOutput', answerTokens: 0 };
  const bosId = tok.bosToken === undefined ? undefined : tok.tokenToId(tok.bosToken);
  const answer = tok.encode(answerText(tok, pair, { format: fmt, stopMarker }));
  let context = pair.context ?? [];
  let prompt = tok.encode(promptText(tok, pair.input, { format: fmt, context, stopMarker }));
  let dropped = false;
  while (prompt.length + answer.length > maxSeqLen && context.length > 0 && answer.length <= maxSeqLen - 1) {
    context = context.slice(1);
    dropped = true;
    prompt = tok.encode(promptText(tok, pair.input, { format: fmt, context, stopMarker }));
  }
  const out = fitExample(prompt, answer, maxSeqLen, bosId);
  if ('example' in out && dropped) out.truncated = true;
  return out;
}

/**
 * A pre-tokenized example `{input_ids, labels}` (labels aligned, -100 masked) fitted to
 * maxSeqLen the same way: everything before the first unmasked label is the prompt.
 */
export function fitTokenized(ids: ArrayLike<number>, labels: ArrayLike<number>, maxSeqLen: number, bosId?: number): EncodeOutcome {
  let first = 0;
  while (first < labels.length && labels[first] === -100) first++;
  if (first === labels.length) return { skipped: 'noTargets', answerTokens: 0 };
  const tail = ids.length - first;
  if (ids.length <= maxSeqLen) {
    return { example: { ids: Int32Array.from(ids), labels: Int32Array.from(labels) }, truncated: false };
  }
  if (tail > maxSeqLen - 1) return { skipped: 'answerTooLong', answerTokens: tail };
  const keep = maxSeqLen - tail;
  const keepBos = bosId !== undefined && ids[0] === bosId && keep >= 2;
  const start = first - (keepBos ? keep - 1 : keep);
  const outIds = new Int32Array(maxSeqLen), outLabels = new Int32Array(maxSeqLen);
  let o = 0;
  if (keepBos) { outIds[0] = ids[0]; outLabels[0] = labels[0]; o = 1; }
  for (let i = start; i < ids.length; i++, o++) { outIds[o] = ids[i]; outLabels[o] = labels[i]; }
  return { example: { ids: outIds, labels: outLabels }, truncated: true };
}
