/**
 * `loadModel(dir, options) → Model`: a checkpoint (and optionally a LoRA adapter) ready to
 * tokenize, score and generate. Generation runs on the native engine through the model's
 * scheduler, which interleaves concurrent generations token by token (see scheduler.ts). On the
 * CPU engine the steps that are pending together run as one batched native step
 * (`nextBatch`: continuous batching — every weight is read once per step for all of them).
 */
import { randomInt } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import path from 'node:path';
import { native, type NativeModel, type NativeModelConfig, type NativeSamplingOptions, type NativeSession } from '../native.ts';
import { Tokenizer, type ChatMessage, type ChatPromptOptions } from '../tokenize/tokenizer.ts';
import { loadAdapter } from '../train/adapter.ts';
import { PLAIN_ARROW, promptText } from '../tokenize/format.ts';
import { InferError, invalid } from './errors.ts';
import { resolveGenerateOptions, type GenerateOptions, type GenerateResult, type StopReason } from './options.ts';
import { Scheduler, StepFailure } from './scheduler.ts';
import { StopMatcher } from './stop.ts';
import { StreamDecoder } from './stream-decode.ts';

export type DeviceOption = 'auto' | 'cpu' | 'cuda';

export interface LoadModelOptions {
  /** Where to run: 'auto' picks 'cuda' when the addon has CUDA and a device is present, else 'cpu'. Default 'auto'. */
  device?: DeviceOption;
  /** Weight format of the linear layers: 'nf4' (4-bit NormalFloat, as QLoRA) or 'none' (the checkpoint's precision). Default 'nf4'. */
  quant?: 'nf4' | 'none';
  /** A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) to attach. Default: none. */
  adapter?: string;
  /** CPU threads for the native engine; 0 = all cores. Default 0. */
  threads?: number;
  /** Generations that decode at once, each with its own KV cache; more wait in FIFO order. Default 8. */
  maxSessions?: number;
  /** Prompt tokens fed per scheduler step, so a long prompt does not hold up other generations' tokens; 0 = the whole prompt at once. Default 256. */
  prefillChunk?: number;
  /** Most generations decoded together in one batched step (CPU and CUDA engines); 1 turns batching off. Default: maxSessions. */
  maxBatch?: number;
}

/** One step of decoding, as the scheduler hands it to the engine. */
export interface StepRequest {
  session: NativeSession;
  ids: Int32Array;
  sampling: NativeSamplingOptions;
  history: Int32Array;
}

const GREEDY: NativeSamplingOptions = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 };

/** nextBatch errors raised before any session changed: the batch can be retried one by one. */
const RETRYABLE = new Set(['EINVAL', 'ERANGE', 'EFULL', 'ESTALE', 'EBUSY']);

export class Model {
  /** The checkpoint folder. */
  readonly dir: string;
  /** The adapter folder attached at load, if any. */
  readonly adapter: string | undefined;
  readonly tokenizer: Tokenizer;
  /** Ids that end generation: the tokenizer's end ids and config.json's eos ids. */
  readonly endIds: ReadonlySet<number>;
  /** Interleaves the generations of this model; `active` / `waiting` tell its load. */
  readonly scheduler: Scheduler<StepRequest, number>;
  private readonly prefillChunk: number;
  private readonly disposer = new AbortController();
  private disposed = false;

  /** Wraps an already loaded native model (loadModel is the usual way in; tests pass a fake engine). */
  constructor(private readonly nativeModel: NativeModel, tokenizer: Tokenizer,
    options: { dir: string; adapter?: string; maxSessions?: number; prefillChunk?: number; maxBatch?: number }) {
    this.dir = options.dir;
    this.adapter = options.adapter;
    this.tokenizer = tokenizer;
    this.endIds = new Set([...tokenizer.endIds, ...nativeModel.config.eosTokenIds]);
    // every generation in flight listens to it
    setMaxListeners(0, this.disposer.signal);
    const chunk = options.prefillChunk ?? 256;
    if (!(Number.isInteger(chunk) && chunk >= 0)) throw invalid(`prefillChunk must be an integer ≥ 0 (got ${chunk})`);
    this.prefillChunk = chunk;
    const maxActive = options.maxSessions ?? 8;
    // Batched steps need the engine's nextBatch: the CPU engine's, or the GPU's (native/cuda/decode_batch_cuda.cu).
    const canBatch = (nativeModel.device === 'cpu' || nativeModel.device === 'cuda') && typeof nativeModel.nextBatch === 'function';
    // CUDA too batches up to maxSessions rows a step: up to 8 rows share one tensor-core GEMV pass
    // over the 4-bit weights, from 9 a fused NF4 GEMM, so a step's cost hardly grows with the rows
    // (native/cuda/decode_batch_cuda.cu, kBatchGemmMinRows; bench/NOTES.md rounds 8 and 13: 3B NF4
    // on an H200, 1.96 ms a step at 1 row, 2.62 at 8, 4.4 at 32).
    const maxBatch = canBatch ? (options.maxBatch ?? maxActive) : 1;
    if (!(Number.isInteger(maxBatch) && maxBatch >= 1)) throw invalid(`maxBatch must be an integer ≥ 1 (got ${maxBatch})`);
    this.scheduler = new Scheduler<StepRequest, number>({
      maxActive,
      maxBatch,
      run: maxBatch > 1 ? (batch) => this.runBatch(batch) : async ([r]) => [await r.session.next(r.ids, r.sampling, r.history)],
    });
  }

  /**
   * One batched native step. When the engine refuses the batch for one request's sake (a bad
   * argument, a full cache: refused before anything ran), the others must not fail with it, so
   * each is retried alone and only the culprit's step rejects.
   */
  private async runBatch(batch: StepRequest[]): Promise<(number | StepFailure)[]> {
    const nm = this.nativeModel;
    const one = (r: StepRequest) => nm.nextBatch([r.session], [r.ids], [r.sampling], [r.history]);
    try {
      if (batch.length === 1) { const r = batch[0]; return [await r.session.next(r.ids, r.sampling, r.history)]; }
      return Array.from(await nm.nextBatch(batch.map((r) => r.session), batch.map((r) => r.ids),
        batch.map((r) => r.sampling), batch.map((r) => r.history)));
    } catch (e) {
      if (batch.length === 1 || !RETRYABLE.has((e as { code?: string }).code ?? '')) throw e;
    }
    const out: (number | StepFailure)[] = [];
    for (const r of batch) {
      try { out.push((await one(r))[0]); } catch (e) { out.push(new StepFailure(e)); }
    }
    return out;
  }

  get config(): NativeModelConfig { return this.nativeModel.config; }
  get device(): 'cpu' | 'cuda' { return this.nativeModel.device; }
  get quant(): 'nf4' | 'none' { return this.nativeModel.quant; }
  /** Most tokens (prompt + output) one sequence may hold. */
  get contextLength(): number { return this.nativeModel.config.maxPosition; }
  /** A short name: the checkpoint folder's name, with the adapter's after a '+'. */
  get name(): string {
    return path.basename(path.resolve(this.dir)) + (this.adapter ? `+${path.basename(path.resolve(this.adapter))}` : '');
  }

  /** Renders chat messages with the checkpoint's chat template (as transformers' apply_chat_template). */
  chatPrompt(messages: ChatMessage[], options: ChatPromptOptions = {}): string {
    return this.tokenizer.chatPrompt(messages, options);
  }

  /**
   * Chat messages to prompt ids. The template's own special tokens become special ids; special-token
   * text inside a message (`<|eot_id|>` typed by a user) stays plain text, so no one can forge a
   * turn boundary. When no message holds such text, the ids are exactly those of
   * `tokenizer.encode(chatPrompt(messages))`.
   */
  encodeChat(messages: ChatMessage[], options: ChatPromptOptions = {}): number[] {
    const text = this.chatPrompt(messages, options);
    const tok = this.tokenizer;
    const risky = messages.some((m) => {
      const a = tok.encode(m.content), b = tok.encode(m.content, { special: false });
      return a.length !== b.length || a.some((x, i) => x !== b[i]);
    });
    if (!risky) return tok.encode(text);
    // Render with sentinels in place of contents, then encode template pieces with special
    // parsing and contents without. Templates that transform content (Llama 3's `| trim`) are
    // matched by trimming first; the result is checked against the plain rendering.
    const mark = (i: number) => `\u0000mimic-content-${i}\u0000`;
    for (const prep of [(s: string) => s, (s: string) => s.trim()]) {
      const prepared = messages.map((m) => ({ ...m, content: prep(m.content) }));
      const skeleton = this.chatPrompt(prepared.map((m, i) => ({ ...m, content: mark(i) })), options);
      const parts = skeleton.split(/\u0000mimic-content-(\d+)\u0000/);
      let rebuilt = '';
      const ids: number[] = [];
      for (let k = 0; k < parts.length; k++) {
        if (k % 2 === 0) { rebuilt += parts[k]; ids.push(...tok.encode(parts[k])); } else {
          const c = prepared[Number(parts[k])].content;
          rebuilt += c;
          ids.push(...tok.encode(c, { special: false }));
        }
      }
      if (rebuilt === text) return ids;
    }
    throw invalid('a chat message contains special-token text (such as <|eot_id|>) and this chat template cannot keep it apart from the template; remove it');
  }

  /**
   * The prompt ids that make a fine-tuned model answer `input`, exactly as mimic's training format
   * renders it (lib/tokenize/format.ts): the chat template with the user's text (after earlier
   * `context` turns) and the generation prompt; for models without a template, `{input} →`.
   * Special-token text inside `input` stays plain text.
   */
  promptIds(input: string, context: ChatMessage[] = []): number[] {
    if (typeof input !== 'string') throw invalid('the input must be a string');
    if (this.tokenizer.hasChatTemplate) return this.encodeChat([...context, { role: 'user', content: input }], { addGenerationPrompt: true });
    const text = promptText(this.tokenizer, input, { format: 'plain', context });
    const bos = this.tokenizer.bosToken;
    const bosId = bos === undefined ? undefined : this.tokenizer.tokenToId(bos);
    if (bos !== undefined && bosId !== undefined && text.startsWith(bos)) {
      return [bosId, ...this.tokenizer.encode(text.slice(bos.length, -PLAIN_ARROW.length), { special: false }), ...this.tokenizer.encode(PLAIN_ARROW)];
    }
    return this.tokenizer.encode(text, { special: false });
  }

  /** Logits of one sequence without a cache: row-major [ids.length × vocab]. */
  async logits(ids: number[] | Int32Array): Promise<Float32Array> {
    this.assertLive();
    const arr = this.checkIds(ids);
    if (arr.length > this.contextLength) {
      throw new InferError('ECONTEXT', `mimic: ${arr.length} tokens do not fit the model's context of ${this.contextLength}`);
    }
    return this.nativeModel.logits(arr);
  }

  /**
   * Generates a continuation of `prompt` (text, encoded with special-token parsing, or token ids).
   * Stops at a stop string, an end id, `maxTokens`, the context's end, or when `signal` aborts.
   */
  async generate(prompt: string | number[] | Int32Array, options: GenerateOptions = {}): Promise<GenerateResult> {
    this.assertLive();
    const o = resolveGenerateOptions(options);
    let promptIds: Int32Array;
    if (typeof prompt === 'string') {
      if (prompt.length === 0) throw invalid('the prompt is empty');
      promptIds = Int32Array.from(this.tokenizer.encode(prompt));
    } else {
      promptIds = this.checkIds(prompt);
    }
    const ctx = this.contextLength;
    if (promptIds.length >= ctx) {
      throw new InferError('ECONTEXT', `mimic: the prompt is ${promptIds.length} tokens; the model's context holds ${ctx}, so at most ${ctx - 1} leave room to generate`);
    }
    const maxTokens = Math.min(o.maxTokens, ctx - promptIds.length);
    const usage = { promptTokens: promptIds.length, completionTokens: 0 };
    const onToken = options.onToken;
    const signal = options.signal ? AbortSignal.any([options.signal, this.disposer.signal]) : this.disposer.signal;
    const tokens: number[] = [];
    let text = '';
    const aborted = (): GenerateResult => ({ text, tokens, stopReason: 'abort', usage });

    const lease = await this.scheduler.acquire({ signal, maxQueue: options.maxQueue });
    if (!lease) return aborted();
    let created: NativeSession | undefined;
    try {
      const seed = o.seed ?? randomInt(0, 2 ** 47);
      const session = created = this.nativeModel.createSession(promptIds.length + maxTokens, seed);
      const sampling: NativeSamplingOptions = { temperature: o.temperature, topK: o.topK, topP: o.topP, repetitionPenalty: o.repetitionPenalty };
      const history = new Int32Array(promptIds.length + maxTokens);
      history.set(promptIds);
      let n = promptIds.length;
      const decoder = new StreamDecoder((ids) => this.tokenizer.decode(ids, { skipSpecial: o.skipSpecialTokens }));
      const stops = new StopMatcher(o.stop);
      const emit = (s: string) => { if (s) { text += s; onToken?.(s); } };
      const step = async (ids: Int32Array, s: NativeSamplingOptions): Promise<number | null> => {
        try {
          const t = await lease.step({ session, ids, sampling: s, history: history.subarray(0, n) });
          return signal.aborted ? null : t;
        } catch (e) {
          if ((e as Error).name === 'AbortError') return null;
          throw e;
        }
      };

      // prefill: every chunk but the last only fills the cache (greedy, so the RNG is untouched)
      const chunk = this.prefillChunk > 0 ? this.prefillChunk : promptIds.length;
      let next: number | null = null;
      for (let at = 0; at < promptIds.length; at += chunk) {
        const last = at + chunk >= promptIds.length;
        next = await step(promptIds.subarray(at, at + chunk), last ? sampling : GREEDY);
        if (next === null) return aborted();
      }
      let reason: StopReason = 'length';
      for (;;) {
        const id = next as number;
        usage.completionTokens++;
        if (this.endIds.has(id)) { reason = 'eos'; break; }
        tokens.push(id);
        history[n++] = id;
        const r = stops.push(decoder.push(id));
        emit(r.emit);
        if (r.stopped) { reason = 'stop'; break; }
        if (tokens.length >= maxTokens) break;
        next = await step(Int32Array.of(id), sampling);
        if (next === null) return aborted();
      }
      if (reason !== 'stop') {
        const r = stops.push(decoder.flush());
        emit(r.emit);
        if (r.stopped) reason = 'stop'; else emit(stops.flush());
      }
      return { text, tokens, stopReason: reason, usage };
    } finally {
      // a GPU session's KV cache goes back to the model's pool now, not when it is collected
      (created as { _release?: () => boolean } | undefined)?._release?.();
      lease.release();
    }
  }

  /**
   * Frees the weights. Generations in progress end with stopReason 'abort'; the native memory is
   * released once their current step has finished. Later calls throw EDISPOSED.
   */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.disposer.abort();
    await this.scheduler.idle();
    this.nativeModel.dispose();
  }

  private assertLive(): void {
    if (this.disposed) throw new InferError('EDISPOSED', 'mimic: this model was disposed; load it again');
  }

  private checkIds(ids: unknown): Int32Array {
    if (!(Array.isArray(ids) || ids instanceof Int32Array)) throw invalid('token ids must be an array of integers or an Int32Array');
    if (ids.length === 0) throw invalid('the prompt is empty: give at least one token id');
    const V = this.nativeModel.config.vocabSize;
    for (let i = 0; i < ids.length; i++) {
      const x = ids[i];
      if (typeof x !== 'number' || !Number.isInteger(x) || x < 0 || x >= V) {
        throw invalid(`token id ${JSON.stringify(x)} at position ${i} is not an integer in [0, ${V}) (the vocabulary size)`);
      }
    }
    return ids instanceof Int32Array ? ids : Int32Array.from(ids);
  }
}

/** Loads a checkpoint folder (config.json, safetensors shards, tokenizer.json, tokenizer_config.json). */
export async function loadModel(dir: string, options: LoadModelOptions = {}): Promise<Model> {
  if (typeof dir !== 'string' || dir.length === 0) throw invalid('loadModel needs the path of a model folder');
  if (options === null || typeof options !== 'object') throw invalid('loadModel options must be an object');
  const { device = 'auto', quant = 'nf4', adapter, threads = 0, maxSessions = 8, prefillChunk = 256, maxBatch } = options;
  if (!['auto', 'cpu', 'cuda'].includes(device)) throw invalid(`device must be 'auto', 'cpu' or 'cuda' (got ${JSON.stringify(device)})`);
  if (!['nf4', 'none'].includes(quant)) throw invalid(`quant must be 'nf4' or 'none' (got ${JSON.stringify(quant)})`);
  if (!(Number.isInteger(threads) && threads >= 0)) throw invalid(`threads must be an integer ≥ 0 (got ${JSON.stringify(threads)})`);
  if (!(Number.isInteger(maxSessions) && maxSessions >= 1)) throw invalid(`maxSessions must be an integer ≥ 1 (got ${JSON.stringify(maxSessions)})`);
  if (adapter !== undefined && (typeof adapter !== 'string' || adapter.length === 0)) throw invalid('adapter must be the path of an adapter folder');
  const addon = native();
  const dev = device === 'auto' ? (addon.cudaAvailable() ? 'cuda' : 'cpu') : device;
  if (dev === 'cuda' && !addon.cudaAvailable()) {
    throw invalid("device 'cuda' was asked for but the addon has no CUDA backend or no CUDA device is present; use device 'cpu' or 'auto'");
  }
  const nm = await addon.loadModel(dir, { device: dev, quant, threads });
  try {
    const tokenizer = await Tokenizer.load(dir, nm.config.eosTokenIds);
    if (adapter !== undefined) {
      const c = nm.config;
      const a = await loadAdapter(adapter, {
        hiddenSize: c.hiddenSize, intermediateSize: c.intermediateSize, numLayers: c.numLayers,
        numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim,
      });
      nm.setLora({ r: a.spec.r, alpha: a.spec.alpha, targets: a.spec.targets }, a.tensors);
    }
    return new Model(nm, tokenizer, { dir, adapter, maxSessions, prefillChunk, maxBatch });
  } catch (e) {
    nm.dispose();
    throw e;
  }
}
