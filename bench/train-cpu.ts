/**
 * Training throughput on the CPU: finetune() on the bundled tiny model (assets/tiny) over a
 * synthetic chat set, for each base-weight format. Prints one JSON line per configuration:
 * {"bench": "train-cpu", quant, tokensPerSec, targetTokensPerSec, steps, seconds, threads}.
 *
 *   node --import @tapjs/typescript/import bench/train-cpu.ts [--epochs N] [--threads N]
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { finetune } from '../lib/train/finetune.ts';
import { Rng } from '../lib/train/rng.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const arg = (name: string, def: number) => { const i = process.argv.indexOf(name); return i > 0 ? Number(process.argv[i + 1]) : def; };
const epochs = arg('--epochs', 2), threads = arg('--threads', 0);
const dir = mkdtempSync(path.join(os.tmpdir(), 'mimic-bench-train-'));
try {
  const words = 'yeah lol no way haha that is amazing want to grab dinner tonight im down lets go at 7 did you see the game omg yes link sure one sec'.split(' ');
  const rng = new Rng(1);
  const phrase = (n: number) => Array.from({ length: n }, () => words[rng.below(words.length)]).join(' ');
  const lines = Array.from({ length: 256 }, () => JSON.stringify({ input: phrase(3 + rng.below(12)), output: phrase(2 + rng.below(10)) }));
  writeFileSync(path.join(dir, 'train.jsonl'), lines.join('\n') + '\n');
  for (const quant of ['nf4', 'none'] as const) {
    const r = await finetune({ model: path.join(root, 'assets', 'tiny'), data: path.join(dir, 'train.jsonl'), out: path.join(dir, quant), device: 'cpu', quant, epochs,
      lr: 2e-3, batchTokens: 1024, checkpointEvery: 0, threads, cacheDir: null });
    console.log(JSON.stringify({ bench: 'train-cpu', model: 'assets/tiny', quant, tokensPerSec: Math.round(r.tokensPerSec),
      targetTokensPerSec: Math.round(r.targetTokens / r.seconds), steps: r.steps, tokens: r.tokens, seconds: Number(r.seconds.toFixed(2)), threads: threads || os.cpus().length }));
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
