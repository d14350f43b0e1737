/**
 * Training data on its way to the trainer: JSONL → tokenized examples (cached as Arrow IPC) →
 * length-bucketed micro-batches under a token budget, in a seeded order.
 *
 * A JSONL line is either a prepared pair `{input, output, context?}` or a pre-tokenized example
 * `{input_ids, labels}` (labels aligned with input_ids, -100 where masked); a file holds one kind.
 *
 * The cache is keyed by the data file's bytes, the tokenizer's files and the format options, so
 * a changed file, tokenizer or option never reads a stale cache; it is written atomically.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Field, Int32, List, makeData, makeVector, Table, tableFromIPC, tableToIPC } from 'apache-arrow';
import type { Tokenizer } from './tokenizer.ts';
import { encodePair, fitTokenized, resolveFormat, FORMAT_DEFAULTS, type FormatOptions, type Pair, type SkipReason, type TokenizedExample } from './format.ts';
import { Rng } from '../train/rng.ts';
import { writeFileAtomic } from '../train/atomic.ts';

/** Bump when the tokenized form changes, so old caches are not read. */
const CACHE_VERSION = 1;

export type JsonlRecord = { kind: 'pair'; pair: Pair } | { kind: 'tokens'; ids: number[]; labels: number[] };

/** Parses a JSONL file of pairs or pre-tokenized examples; errors name the file and line. */
export function parseJsonl(text: string, file: string): JsonlRecord[] {
  const out: JsonlRecord[] = [];
  let kind: JsonlRecord['kind'] | undefined;
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    const where = `${file}:${i + 1}`;
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line);
    } catch (e) {
      throw new Error(`mimic: ${where} is not valid JSON (${(e as Error).message})`);
    }
    if (!o || typeof o !== 'object' || Array.isArray(o)) throw new Error(`mimic: ${where} is not a JSON object`);
    let rec: JsonlRecord;
    if ('input_ids' in o) {
      const ids = o.input_ids, labels = o.labels;
      const ints = (a: unknown): a is number[] => Array.isArray(a) && a.every((x) => Number.isInteger(x));
      if (!ints(ids) || ids.length === 0) throw new Error(`mimic: ${where}: input_ids must be a non-empty array of integers`);
      if (!ints(labels)) throw new Error(`mimic: ${where}: a pre-tokenized line needs labels (an array of integers, -100 where masked)`);
      if (labels.length !== ids.length) throw new Error(`mimic: ${where}: labels has ${labels.length} entries but input_ids has ${ids.length}; they must be aligned`);
      if (ids.some((x) => x < 0) || labels.some((x) => x < -100 || (x < 0 && x !== -100))) {
        throw new Error(`mimic: ${where}: token ids must be ≥ 0 and labels ≥ 0 or -100`);
      }
      rec = { kind: 'tokens', ids, labels };
    } else {
      if (typeof o.input !== 'string' || typeof o.output !== 'string') {
        throw new Error(`mimic: ${where}: each line needs string "input" and "output" (or "input_ids" and "labels")`);
      }
      let context: Pair['context'];
      if (o.context !== undefined && o.context !== null) {
        if (!Array.isArray(o.context) || !o.context.every((t) => t && typeof t.role === 'string' && typeof t.content === 'string')) {
          throw new Error(`mimic: ${where}: "context" must be an array of {role, content}`);
        }
        context = o.context as Pair['context'];
      }
      rec = { kind: 'pair', pair: context ? { input: o.input, output: o.output, context } : { input: o.input, output: o.output } };
    }
    if (kind && rec.kind !== kind) throw new Error(`mimic: ${where} mixes pre-tokenized lines with {input, output} pairs; use one kind per file`);
    kind = rec.kind;
    out.push(rec);
  }
  return out;
}

/** What tokenizing a file did. */
export interface DatasetStats {
  /** Lines read. */
  lines: number;
  /** Examples kept. */
  examples: number;
  /** Examples whose prompt was shortened (earlier turns or tokens from the left) to fit maxSeqLen. */
  truncated: number;
  /** Lines skipped, by reason: the answer alone exceeds maxSeqLen, an empty output, no unmasked label. */
  skipped: Record<SkipReason, number>;
  /** Tokens of all kept examples. */
  tokens: number;
  /** Unmasked (trained) tokens of all kept examples. */
  targetTokens: number;
}

export interface Dataset {
  file: string;
  examples: TokenizedExample[];
  stats: DatasetStats;
  /** True when the examples came from the cache. */
  cached: boolean;
}

export interface LoadDatasetOptions extends FormatOptions {
  /** Folder of the Arrow cache; `null` turns caching off. Default: no cache. */
  cacheDir?: string | null;
  /** Folder of the model (its tokenizer files key the cache). Required when caching. */
  modelDir?: string;
}

/** Tokenizes a list of records. */
export function tokenizeRecords(tok: Tokenizer, records: JsonlRecord[], options: FormatOptions = {}): { examples: TokenizedExample[]; stats: DatasetStats } {
  const maxSeqLen = options.maxSeqLen ?? FORMAT_DEFAULTS.maxSeqLen;
  if (!Number.isInteger(maxSeqLen) || maxSeqLen < 2) throw new Error(`mimic: maxSeqLen must be a whole number ≥ 2 (got ${maxSeqLen})`);
  const bosId = tok.bosToken === undefined ? undefined : tok.tokenToId(tok.bosToken);
  const stats: DatasetStats = { lines: records.length, examples: 0, truncated: 0, skipped: { answerTooLong: 0, emptyOutput: 0, noTargets: 0 }, tokens: 0, targetTokens: 0 };
  const examples: TokenizedExample[] = [];
  for (const r of records) {
    const out = r.kind === 'pair' ? encodePair(tok, r.pair, options) : fitTokenized(r.ids, r.labels, maxSeqLen, bosId);
    if ('skipped' in out) { stats.skipped[out.skipped]++; continue; }
    examples.push(out.example);
    if (out.truncated) stats.truncated++;
    stats.tokens += out.example.ids.length;
    for (const l of out.example.labels) if (l !== -100) stats.targetTokens++;
  }
  stats.examples = examples.length;
  return { examples, stats };
}

const listType = () => new List(new Field('item', new Int32(), false));

function listVector(rows: Int32Array[]) {
  const offsets = new Int32Array(rows.length + 1);
  for (let i = 0; i < rows.length; i++) offsets[i + 1] = offsets[i] + rows[i].length;
  const values = new Int32Array(offsets[rows.length]);
  for (let i = 0; i < rows.length; i++) values.set(rows[i], offsets[i]);
  const child = makeData({ type: new Int32(), length: values.length, nullCount: 0, data: values });
  return makeVector(makeData({ type: listType(), length: rows.length, nullCount: 0, valueOffsets: offsets, child }));
}

/** Examples → Arrow IPC (file format) with the stats in the schema metadata. */
export function examplesToArrow(examples: TokenizedExample[], stats: DatasetStats): Uint8Array {
  const table = new Table({ input_ids: listVector(examples.map((e) => e.ids)), labels: listVector(examples.map((e) => e.labels)) });
  table.schema.metadata.set('mimic.stats', JSON.stringify(stats));
  table.schema.metadata.set('mimic.version', String(CACHE_VERSION));
  return tableToIPC(table, 'file');
}

/** Arrow IPC → examples + stats. */
export function examplesFromArrow(buf: Uint8Array): { examples: TokenizedExample[]; stats: DatasetStats } {
  const table = tableFromIPC(buf);
  const stats = JSON.parse(table.schema.metadata.get('mimic.stats') ?? 'null') as DatasetStats;
  const cols = ['input_ids', 'labels'].map((name) => {
    const v = table.getChild(name);
    if (!v) throw new Error(`mimic: the dataset cache has no ${name} column`);
    const rows: Int32Array[] = [];
    for (const d of v.data) {
      const offsets = d.valueOffsets as Int32Array;
      const values = d.children[0].values as Int32Array;
      for (let i = 0; i < d.length; i++) rows.push(values.slice(offsets[d.offset + i], offsets[d.offset + i + 1]));
    }
    return rows;
  });
  if (!stats || cols[0].length !== stats.examples) throw new Error('mimic: the dataset cache is inconsistent');
  return { examples: cols[0].map((ids, i) => ({ ids, labels: cols[1][i] })), stats };
}

async function cacheKey(file: Buffer, tok: Tokenizer, modelDir: string, options: FormatOptions): Promise<string> {
  const h = createHash('sha256');
  h.update(`v${CACHE_VERSION}\0`);
  h.update(file);
  for (const name of ['tokenizer.json', 'tokenizer_config.json']) {
    h.update(`\0${name}\0`);
    h.update(await readFile(path.join(modelDir, name)).catch(() => Buffer.alloc(0)));
  }
  h.update(JSON.stringify({
    format: resolveFormat(tok, options.format),
    stopMarker: options.stopMarker ?? FORMAT_DEFAULTS.stopMarker,
    maxSeqLen: options.maxSeqLen ?? FORMAT_DEFAULTS.maxSeqLen,
  }));
  return h.digest('hex').slice(0, 32);
}

/**
 * Reads and tokenizes a JSONL file (or reads its Arrow cache). Throws when the file is
 * missing, malformed or holds no lines. An empty result (every line skipped) is returned
 * with its stats; the caller decides whether that is an error.
 */
export async function loadDataset(file: string, tok: Tokenizer, options: LoadDatasetOptions = {}): Promise<Dataset> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new Error(`mimic: cannot read ${file}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`);
  }
  const cacheDir = options.cacheDir ?? null;
  let cacheFile: string | undefined;
  if (cacheDir && options.modelDir) {
    cacheFile = path.join(cacheDir, `${path.basename(file).replace(/[^\w.-]/g, '_')}.${await cacheKey(bytes, tok, options.modelDir, options)}.arrow`);
    const cached = await readFile(cacheFile).then((b) => {
      try { return examplesFromArrow(b); } catch { return undefined; } // a damaged cache is rebuilt
    }, () => undefined);
    if (cached) return { file, ...cached, cached: true };
  }
  const records = parseJsonl(bytes.toString('utf8'), file);
  if (records.length === 0) throw new Error(`mimic: ${file} is empty: it holds no examples (expected JSONL lines {"input": ..., "output": ...})`);
  const { examples, stats } = tokenizeRecords(tok, records, options);
  if (cacheFile) {
    // the cache is an optimization: a failure to write it (read-only folder) is not an error
    await writeFileAtomic(cacheFile, examplesToArrow(examples, stats)).catch(() => undefined);
  }
  return { file, examples, stats, cached: false };
}

/** A micro-batch: the indices of its examples. */
export type BatchPlan = number[][];

export interface PlanOptions {
  /** Most tokens in a micro-batch, counting padding (rows × longest row). A longer single example gets a batch of its own. */
  batchTokens: number;
  /** Shuffle seed; with `shuffle: false` the order is by length. Default 0. */
  seed?: number;
  /** Epoch index: each epoch has its own order, derived from seed and epoch. Default 0. */
  epoch?: number;
  /** Default true. */
  shuffle?: boolean;
  /** Most rows in a micro-batch. Default unlimited. */
  maxRows?: number;
}

/** The seed of one epoch's shuffle. */
export function epochSeed(seed: number, epoch: number): number {
  return (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(epoch + 1, 0x85ebca6b)) >>> 0;
}

/**
 * Length-bucketed micro-batches: examples are ordered by length (ties in a seeded random
 * order), packed greedily while rows × longest ≤ batchTokens, and the batches are shuffled.
 * Similar lengths share a batch, so little compute goes to padding.
 */
export function planBatches(lengths: number[], o: PlanOptions): BatchPlan {
  if (!(o.batchTokens >= 1)) throw new Error(`mimic: batchTokens must be ≥ 1 (got ${o.batchTokens})`);
  const shuffle = o.shuffle ?? true;
  const rng = new Rng(epochSeed(o.seed ?? 0, o.epoch ?? 0));
  const order = lengths.map((_, i) => i);
  if (shuffle) rng.shuffle(order);
  order.sort((a, b) => lengths[a] - lengths[b]); // stable: ties keep the shuffled order
  const batches: BatchPlan = [];
  let cur: number[] = [];
  for (const i of order) {
    const len = lengths[i]; // ascending, so the newest row is the longest
    if (cur.length > 0 && ((cur.length + 1) * len > o.batchTokens || cur.length >= (o.maxRows ?? Infinity))) {
      batches.push(cur);
      cur = [];
    }
    cur.push(i);
  }
  if (cur.length) batches.push(cur);
  if (shuffle) rng.shuffle(batches);
  return batches;
}

/** A right-padded micro-batch as the trainer takes it. */
export interface Batch {
  ids: Int32Array;
  labels: Int32Array;
  batch: number;
  seqLen: number;
  /** Unmasked labels in the batch. */
  targets: number;
}

/** Pads the rows of `indices` to the longest with `padId` (labels -100). */
export function collate(examples: TokenizedExample[], indices: number[], padId: number): Batch {
  const seqLen = Math.max(...indices.map((i) => examples[i].ids.length));
  const ids = new Int32Array(indices.length * seqLen).fill(padId);
  const labels = new Int32Array(indices.length * seqLen).fill(-100);
  let targets = 0;
  indices.forEach((ex, row) => {
    ids.set(examples[ex].ids, row * seqLen);
    labels.set(examples[ex].labels, row * seqLen);
    for (let t = 1; t < examples[ex].labels.length; t++) if (examples[ex].labels[t] !== -100) targets++;
  });
  return { ids, labels, batch: indices.length, seqLen, targets };
}
