/**
 * mimic — turn a message history into a model that texts like you, and host it.
 *
 *   import { prepare, finetune, loadModel, generate, serve } from 'mimic'
 *
 * prepare  : chat.db / processed_messages.csv / JSONL → train.jsonl + val.jsonl   (lib/data)
 * finetune : QLoRA on the native core → a PEFT adapter folder                     (lib/train)
 * loadModel, generate : KV-cached sampling that stops on DONE                      (lib/infer)
 * serve    : the seed's POST /generate and an OpenAI-compatible API               (lib/serve)
 */
export { prepare, readMessages, formatReport, DEFAULTS as PREPARE_DEFAULTS } from './data/index.ts';
export type { Message, Example, Turn, PrepareOptions, PrepareReport, DropCounts, SourceKind } from './data/index.ts';

export { finetune, evaluate, loadAdapter, saveAdapter } from './train/index.ts';
export type { FinetuneOptions, LoraOptions, TrainProgress, TrainReport, EvaluateOptions, EvaluateReport, LoadedAdapter } from './train/index.ts';

export { loadModel, generate, Model, InferError } from './infer/index.ts';
export type { LoadModelOptions, DeviceOption, GenerateOptions, GenerateResult, GenerateCallOptions, StopReason } from './infer/index.ts';

export { serve } from './serve/index.ts';
export type { ServeOptions, Server } from './serve/index.ts';

export { Tokenizer } from './tokenize/tokenizer.ts';
export type { ChatMessage, ChatPromptOptions, EncodeOptions } from './tokenize/tokenizer.ts';

export { version } from './version.ts';
