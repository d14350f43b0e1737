/** `generate({ model, prompt, ... })`: one call from a model folder (or a loaded Model) to text. */
import type { ChatMessage } from '../tokenize/tokenizer.ts';
import { invalid } from './errors.ts';
import { loadModel, Model, type LoadModelOptions } from './model.ts';
import type { GenerateOptions, GenerateResult } from './options.ts';

export interface GenerateCallOptions extends GenerateOptions, Omit<LoadModelOptions, 'adapter'> {
  /** A model folder (loaded for this call and disposed after it) or a loaded Model. Required. */
  model: string | Model;
  /** A PEFT adapter folder; only with a model folder (a loaded Model already has its adapter). Default: none. */
  adapter?: string;
  /** Raw prompt text (special-token text is parsed) or prompt token ids. Give this or `messages`. */
  prompt?: string | number[] | Int32Array;
  /** Chat messages, rendered with the model's chat template and its generation prompt. Give this or `prompt`. */
  messages?: ChatMessage[];
}

export async function generate(options: GenerateCallOptions): Promise<GenerateResult> {
  if (!options || typeof options !== 'object') throw invalid('generate needs an options object: { model, prompt }');
  const { model, adapter, prompt, messages, device, quant, threads, maxSessions, prefillChunk, ...gen } = options;
  if ((prompt === undefined) === (messages === undefined)) throw invalid('generate needs exactly one of `prompt` and `messages`');
  let m: Model;
  let owned = false;
  if (model instanceof Model) {
    if (adapter !== undefined) throw invalid('`adapter` goes with a model folder; a loaded Model has its adapter from loadModel(dir, { adapter })');
    m = model;
  } else if (typeof model === 'string') {
    m = await loadModel(model, { adapter, device, quant, threads, maxSessions, prefillChunk });
    owned = true;
  } else {
    throw invalid('`model` must be a model folder or a Model from loadModel()');
  }
  try {
    const input = messages !== undefined ? m.encodeChat(messages, { addGenerationPrompt: true }) : prompt!;
    return await m.generate(input, gen);
  } finally {
    if (owned) await m.dispose();
  }
}
