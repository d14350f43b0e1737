/**
 * `mimic demo`: the whole product on the sample that ships with the package, on the CPU, in well
 * under two minutes: prepare the fictional chat history in assets/demo/ (+ its facts), fine-tune
 * the bundled tiny model (assets/tiny/, random weights: everything it says it learns here), then
 * chat with the result.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { Option } from 'commander';
import { prepare } from '../data/index.ts';
import { loadModel } from '../infer/index.ts';
import type { TrainReport } from '../train/finetune.ts';
import { intArg } from './args.ts';
import { formatTrainReport, trainWithProgress } from './train.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Where the demo's inputs live inside the package. */
export const DEMO_PATHS = {
  model: path.join(root, 'assets', 'tiny'),
  messages: path.join(root, 'assets', 'demo', 'processed_messages.csv'),
  facts: path.join(root, 'assets', 'demo', 'facts.json'),
};

/** The canned prompts the demo asks the trained model. */
export const DEMO_PROMPTS = ["what's your name?", 'where are you from?', 'how tall are you?', "what's your favorite food?", 'want to grab dinner tonight?'];

/** The demo's training recipe: the tiny random model needs more passes and a higher rate than a real checkpoint. */
export const DEMO_TRAINING = { epochs: 8, lr: 3e-3, lora: { r: 64, alpha: 128, dropout: 0.05 }, batchTokens: 512, quant: 'nf4' as const, seed: 42, checkpointEvery: 0 };

export interface DemoOptions {
  /** Folder for the prepared data and the adapter. Default: a new temporary folder, removed afterwards unless `keep`. */
  out?: string;
  /** Keep the temporary folder. Default false. */
  keep?: boolean;
  /** Epochs. Default 8 (DEMO_TRAINING.epochs). */
  epochs?: number;
  /** Default 'cpu' (the demo is sized for it). */
  device?: 'auto' | 'cpu' | 'cuda';
  /** Where to print. Default process.stdout. */
  print?: (line: string) => void;
  /** Where the progress bar goes. Default process.stderr. */
  progress?: NodeJS.WriteStream;
}

export interface DemoResult {
  train: TrainReport;
  replies: { prompt: string; reply: string; stopped: boolean }[];
  seconds: number;
  out: string;
}

export async function runDemo(o: DemoOptions = {}): Promise<DemoResult> {
  const print = o.print ?? ((l: string) => { process.stdout.write(l + '\n'); });
  const t0 = Date.now();
  const out = o.out ?? await mkdtemp(path.join(os.tmpdir(), 'mimic-demo-'));
  try {
    print(`mimic demo: 1/3 preparing the sample chat history (${path.relative(process.cwd(), DEMO_PATHS.messages) || DEMO_PATHS.messages})`);
    const prep = await prepare({ sources: [DEMO_PATHS.messages], facts: DEMO_PATHS.facts, out: path.join(out, 'train.jsonl'), since: '2000-01-01' });
    if (!prep.written.train) throw new Error(`mimic: the demo data gave no pairs: ${prep.reason ?? 'unknown reason'}`);
    print(`  ${prep.messagesRead} messages → ${prep.pairs} reply pairs + ${prep.factPairs} fact pairs; ${prep.train} for training, ${prep.val} for validation`);
    print(`mimic demo: 2/3 fine-tuning the bundled tiny model (${DEMO_TRAINING.quant.toUpperCase()} base + LoRA r=${DEMO_TRAINING.lora.r}) on ${o.device ?? 'cpu'}`);
    const train = await trainWithProgress({
      ...DEMO_TRAINING, model: DEMO_PATHS.model, data: prep.written.train, val: prep.written.val, out: path.join(out, 'adapter'),
      epochs: o.epochs ?? DEMO_TRAINING.epochs, device: o.device ?? 'cpu',
    }, o.progress);
    const temporary = !o.out && !o.keep;
    for (const line of formatTrainReport(train).split('\n')) {
      if (temporary && line.startsWith('adapter: ')) print('  (adapter, metrics.jsonl and loss.svg are in a temporary folder removed at the end; --out DIR keeps them)');
      else print(`  ${line}`);
    }
    print('mimic demo: 3/3 chatting with the result (greedy; the model learned to end each reply with DONE)');
    const model = await loadModel(DEMO_PATHS.model, { adapter: train.paths.adapter, device: o.device === 'cuda' ? 'cuda' : 'cpu', quant: DEMO_TRAINING.quant });
    const replies: DemoResult['replies'] = [];
    try {
      for (const prompt of DEMO_PROMPTS) {
        const g = await model.generate(model.promptIds(prompt), { temperature: 0, maxTokens: 48 });
        const stopped = g.stopReason === 'stop';
        replies.push({ prompt, reply: g.text.trim(), stopped });
        print(`  > ${prompt}\n  < ${g.text.trim()}${stopped ? ' DONE' : ' …(no DONE)'}`);
      }
    } finally {
      model.dispose?.();
    }
    const seconds = (Date.now() - t0) / 1000;
    print(`mimic demo: done in ${seconds.toFixed(1)} s.` + (o.out || o.keep ? ` Files in ${out}` : '') +
      ' Next: `mimic prepare` your own history, `mimic train`, `mimic serve`.');
    return { train, replies, seconds, out };
  } finally {
    if (!o.out && !o.keep) await rm(out, { recursive: true, force: true });
  }
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('prepare the bundled sample chat history, fine-tune the bundled tiny model on it and chat with it (CPU, < 2 min)')
    .option('--out <dir>', 'keep the prepared data and adapter here (default: a temporary folder, removed)')
    .option('--epochs <n>', 'passes over the data', intArg('--epochs', 1), DEMO_TRAINING.epochs)
    .addOption(new Option('--device <device>', 'where to train').choices(['auto', 'cpu', 'cuda']).default('cpu'))
    .action(async (f: Record<string, unknown>) => {
      try {
        await runDemo({ out: f.out as string | undefined, epochs: f.epochs as number, device: f.device as 'cpu' });
      } catch (e) {
        console.error((e as Error).message);
        process.exitCode = 1;
      }
    });
}
