/**
 * The checkpoint's own tokenizer (tokenizer.json + tokenizer_config.json), through
 * @huggingface/tokenizers, with the chat template rendered by @huggingface/jinja.
 *
 * Encoding never adds special tokens by itself: the chat template writes `<|begin_of_text|>`,
 * as transformers' apply_chat_template + `add_special_tokens=False` does. Decoding keeps
 * spaces exactly (`clean_up_tokenization_spaces: false`) so text round-trips.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | string;
  content: string;
}

export interface EncodeOptions {
  /** Parse special-token text such as `<|eot_id|>` into its id. Default true (as transformers does). */
  special?: boolean;
}

export interface ChatPromptOptions {
  /** Append the assistant header so the model answers next. Default true. */
  addGenerationPrompt?: boolean;
}

export class Tokenizer {
  /** Ids that end a turn: the config's eos token(s) and `<|eot_id|>` / `<|end_of_text|>` when present. */
  readonly endIds: ReadonlySet<number>;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  private readonly template: Template | undefined;
  private readonly specialTokens: string[];

  private constructor(private readonly hf: HFTokenizer, private readonly config: Record<string, unknown>,
    tokenizerJson: { added_tokens?: { content: string; special?: boolean; id: number }[] }, extraEnd: number[]) {
    const tokenText = (t: unknown): string | undefined =>
      typeof t === 'string' ? t : (t && typeof t === 'object' && 'content' in t ? String((t as { content: unknown }).content) : undefined);
    this.bosToken = tokenText(config.bos_token);
    this.eosToken = tokenText(config.eos_token);
    const tpl = config.chat_template;
    const text = typeof tpl === 'string' ? tpl
      : Array.isArray(tpl) ? (tpl.find((t: { name?: string }) => t.name === 'default')?.template as string | undefined) : undefined;
    this.template = text ? new Template(text) : undefined;
    this.specialTokens = (tokenizerJson.added_tokens ?? []).filter((t) => t.special).map((t) => t.content);
    const ends = new Set<number>(extraEnd);
    for (const name of [this.eosToken, '<|eot_id|>', '<|end_of_text|>', '<|eom_id|>']) {
      const id = name === undefined ? undefined : hf.token_to_id(name);
      if (id !== undefined) ends.add(id);
    }
    this.endIds = ends;
  }

  /**
   * Loads `tokenizer.json` and `tokenizer_config.json` from a checkpoint folder.
   * @param extraEndIds more ids that end generation (e.g. config.json's eos_token_id list)
   */
  static async load(dir: string, extraEndIds: number[] = []): Promise<Tokenizer> {
    const read = async (name: string, required: boolean) => {
      const file = path.join(dir, name);
      try {
        return JSON.parse(await readFile(file, 'utf8'));
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        if (err.code === 'ENOENT' && !required) return {};
        if (err.code === 'ENOENT') throw new Error(`mimic: ${file} is missing: a model folder needs the tokenizer that was trained with it`);
        throw new Error(`mimic: cannot read ${file}: ${err.message}`);
      }
    };
    const tj = await read('tokenizer.json', true);
    const tc = await read('tokenizer_config.json', false);
    return new Tokenizer(new HFTokenizer(tj, tc), tc, tj, extraEndIds);
  }

  /** Text to token ids (no BOS is added). */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const plain = (s: string) => this.hf.encode(s, { add_special_tokens: false }).ids;
    if (options.special !== false) return plain(text);
    // special: false — special-token text is ordinary text: encode it in two pieces ("<" + "|eot_id|>")
    // so the added-token matcher cannot map it to the special id.
    const present = this.specialTokens.filter((s) => text.includes(s));
    if (present.length === 0) return plain(text);
    const re = new RegExp(present.map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|'), 'g');
    const ids: number[] = [];
    let last = 0;
    for (const m of text.matchAll(re)) {
      const at = m.index ?? 0;
      if (at > last) ids.push(...plain(text.slice(last, at)));
      ids.push(...plain(m[0].slice(0, 1)), ...plain(m[0].slice(1)));
      last = at + m[0].length;
    }
    if (last < text.length) ids.push(...plain(text.slice(last)));
    return ids;
  }

  /** Token ids to text, spaces kept exactly. */
  decode(ids: ArrayLike<number>, options: { skipSpecial?: boolean } = {}): string {
    return this.hf.decode(Array.from(ids), { skip_special_tokens: options.skipSpecial ?? false, clean_up_tokenization_spaces: false });
  }

  tokenToId(token: string): number | undefined { return this.hf.token_to_id(token); }

  get hasChatTemplate(): boolean { return this.template !== undefined; }

  /** Renders `messages` with the checkpoint's chat_template, as transformers' apply_chat_template(tokenize=False). */
  chatPrompt(messages: ChatMessage[], options: ChatPromptOptions = {}): string {
    if (!this.template) {
      throw new Error('mimic: this model has no chat_template in tokenizer_config.json; pass a plain text prompt instead');
    }
    for (const m of messages) {
      if (!m || typeof m.role !== 'string' || typeof m.content !== 'string') {
        throw new Error('mimic: each chat message needs a string `role` and a string `content`');
      }
    }
    return this.template.render({
      messages,
      add_generation_prompt: options.addGenerationPrompt ?? true,
      bos_token: this.bosToken ?? '',
      eos_token: this.eosToken ?? '',
    });
  }
}
