/**
 * Incremental detokenization that never splits a character. Byte-level BPE tokens can end in the
 * middle of a multi-byte UTF-8 sequence (an emoji is often 2–4 tokens); decoding such a prefix
 * gives U+FFFD. The decoder therefore re-decodes a short window of recent ids and only releases
 * text once it no longer ends in U+FFFD (the approach of text-generation-inference: diff the
 * decode of [prefix, read) against [prefix, end) so that decoders which treat the first token
 * specially, such as SentencePiece's leading space, stay exact).
 */
export type DecodeFn = (ids: number[]) => string;

export class StreamDecoder {
  private readonly ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;

  constructor(private readonly decode: DecodeFn) {}

  // some decoders refuse an empty list
  private text(ids: number[]): string { return ids.length === 0 ? '' : this.decode(ids); }

  /** Adds one id; returns the text it completes ('' while a character is still incomplete). */
  push(id: number): string {
    this.ids.push(id);
    const prefix = this.text(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = this.text(this.ids.slice(this.prefixOffset));
    if (full.length > prefix.length && !full.endsWith('\uFFFD')) {
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      return full.slice(prefix.length);
    }
    return '';
  }

  /** The end of the stream: releases held text even if it is an invalid (U+FFFD) tail. */
  flush(): string {
    if (this.readOffset === this.ids.length) return '';
    const prefix = this.text(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = this.text(this.ids.slice(this.prefixOffset));
    this.prefixOffset = this.readOffset = this.ids.length;
    return full.slice(prefix.length);
  }
}
