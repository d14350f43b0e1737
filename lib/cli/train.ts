/** `mimic train --model DIR --data train.jsonl [--val val.jsonl] --out adapter/ [...]` and `mimic eval`'s shared flag parsers. */
import type { Command } from 'commander';
import { InvalidArgumentError, Option } from 'commander';
import { intArg, rangeArg as numArg } from './args.ts';
import { finetune, type FinetuneOptions, type TrainReport } from '../train/finetune.ts';
import { ALL_TARGETS, type LoraTarget } from '../train/adapter.ts';
import { ProgressBar, formatDuration, formatRate } from '../train/progress.ts';
import { FORMAT_DEFAULTS } from '../tokenize/format.ts';

const targetsArg = (v: string) => {
  const list = v.split(',').map((s) => s.trim()).filter(Boolean);
  for (const t of list) if (!(ALL_TARGETS as readonly string[]).includes(t)) throw new InvalidArgumentError(`unknown target ${t}; choose among ${ALL_TARGETS.join(',')}`);
  return list as LoraTarget[];
};

/** One human line per report. */
export function formatTrainReport(r: TrainReport): string {
  const lines = [
    `trained ${r.steps}/${r.totalSteps} steps (${r.epochs.toFixed(2)} epochs) on ${r.data.train.examples} examples, ` +
      `${r.tokens} tokens in ${formatDuration(r.seconds)} (${formatRate(r.tokensPerSec)} tokens/s, ${r.device}, ${r.quant})`,
  ];
  const s = r.data.train.skipped;
  if (r.skipped > 0) lines.push(`skipped ${r.skipped} pair(s): ${s.answerTooLong} answer(s) longer than maxSeqLen, ${s.emptyOutput} empty, ${s.noTargets} with nothing to learn`);
  if (r.data.train.truncated > 0) lines.push(`shortened ${r.data.train.truncated} long prompt(s) from the left to fit maxSeqLen`);
  if (r.trainLoss.length) lines.push(`train loss ${r.trainLoss[0].loss.toFixed(4)} → ${r.trainLoss[r.trainLoss.length - 1].loss.toFixed(4)}`);
  if (r.valLoss.length) lines.push(`val loss ${r.valLoss.map((v) => v.loss.toFixed(4)).join(' → ')}` + (r.bestEpoch !== null ? `; best ${r.bestValLoss!.toFixed(4)} at epoch ${r.bestEpoch.toFixed(2)}` : ''));
  if (r.stopped) lines.push(`stopped early (${r.stopped}); continue with --resume`);
  else lines.push(`adapter: ${r.paths.adapter}` + (r.paths.best ? `  best: ${r.paths.best}` : '') + `  metrics: ${r.paths.metrics}  curve: ${r.paths.plot}`);
  return lines.join('\n');
}

/**
 * Runs finetune with a progress bar on stderr (step, epoch, loss, tokens/s, ETA; epoch summaries
 * as lines) and Ctrl-C writing a checkpoint before exiting.
 */
export async function trainWithProgress(options: FinetuneOptions, stream: NodeJS.WriteStream = process.stderr): Promise<TrainReport> {
  const bar = new ProgressBar({ stream });
  const ac = new AbortController();
  let interrupts = 0;
  const onSigint = () => {
    if (++interrupts > 1) process.exit(130);
    bar.log('mimic: stopping after this step and writing a checkpoint (Ctrl-C again to quit at once)');
    ac.abort();
  };
  process.on('SIGINT', onSigint);
  let last = { loss: NaN, tokensPerSec: 0 };
  try {
    return await finetune({
      ...options,
      signal: options.signal ?? ac.signal,
      onProgress: (p) => {
        options.onProgress?.(p);
        if (p.phase === 'train') last = { loss: p.loss, tokensPerSec: p.tokensPerSec };
        bar.update({ step: p.step, totalSteps: p.totalSteps, epoch: p.epoch, epochs: p.epochs, loss: last.loss,
          tokensPerSec: last.tokensPerSec, etaSeconds: p.etaSeconds, valLoss: p.phase === 'val' ? p.loss : undefined }, p.phase === 'val');
        if (p.phase === 'val') {
          bar.log(`${p.step === 0 ? 'before training' : `epoch ${p.epoch.toFixed(2)}`}: val loss ${p.loss.toFixed(4)}` +
            (p.step > 0 ? `  train loss ${last.loss.toFixed(4)}  ${formatRate(last.tokensPerSec)} tok/s  ETA ${formatDuration(p.etaSeconds)}` : ''));
        }
      },
    });
  } finally {
    bar.done();
    process.off('SIGINT', onSigint);
  }
}

/** --gpus / --workers / --rendezvous → finetune's devices / workers (at most one of them). */
export function distributedFlags(f: Record<string, unknown>): Pick<FinetuneOptions, 'devices' | 'workers'> {
  const given = ['gpus', 'workers', 'rendezvous'].filter((k) => f[k] !== undefined);
  if (given.length > 1) throw new InvalidArgumentError(`--${given.join(' and --')} cannot be combined: pick one`);
  if (f.gpus !== undefined) return { devices: [...Array(f.gpus as number).keys()] };
  if (f.workers !== undefined) return { workers: f.workers as number };
  if (f.rendezvous) return { devices: {} };
  return {};
}

export function registerTrain(program: Command): void {
  program
    .command('train')
    .description('fine-tune a model on prepared pairs with QLoRA and write a PEFT adapter')
    .requiredOption('--model <dir>', 'Hugging Face Llama checkpoint folder')
    .requiredOption('--data <file>', 'training JSONL ({input, output} pairs or {input_ids, labels})')
    .option('--val <file>', 'validation JSONL (loss at each epoch end; best adapter kept in OUT/best)')
    .requiredOption('--out <dir>', 'output folder for the adapter, best/, checkpoint/, metrics.jsonl, loss.svg')
    .option('--epochs <n>', 'passes over the data', intArg('--epochs', 1), 3)
    .option('--lr <rate>', 'peak learning rate', numArg('--lr', 0), 2e-4)
    .option('--rank <r>', 'LoRA rank', intArg('--rank', 1), 16)
    .option('--alpha <a>', 'LoRA alpha (scale = alpha / rank)', numArg('--alpha', 0), 32)
    .option('--dropout <p>', 'LoRA dropout', numArg('--dropout', 0, 0.999), 0.05)
    .option('--targets <list>', 'comma-separated projections to adapt', targetsArg, [...ALL_TARGETS])
    .addOption(new Option('--device <device>', 'where to train').choices(['auto', 'cpu', 'cuda']).default('auto'))
    .addOption(new Option('--quant <q>', 'base weight format').choices(['nf4', 'none']).default('nf4'))
    .option('--resume', 'continue from OUT/checkpoint (same settings)')
    .option('--batch-tokens <n>', 'tokens per micro-batch, padding included', intArg('--batch-tokens', 1), 4096)
    .option('--max-seq-len <n>', 'longest example in tokens (prompts cut from the left)', intArg('--max-seq-len', 2), 512)
    .option('--grad-accum <n>', 'micro-batches per optimizer step', intArg('--grad-accum', 1), 1)
    .option('--warmup-steps <n>', 'linear warm-up steps (default: from --warmup-ratio)', intArg('--warmup-steps', 0))
    .option('--warmup-ratio <f>', 'warm-up as a fraction of all steps', numArg('--warmup-ratio', 0, 0.999), 0.03)
    .addOption(new Option('--schedule <kind>', 'decay after warm-up').choices(['cosine', 'linear', 'constant']).default('cosine'))
    .option('--weight-decay <w>', 'AdamW weight decay', numArg('--weight-decay', 0), 0)
    .option('--max-grad-norm <n>', 'clip the gradient norm (0 = off)', numArg('--max-grad-norm', 0), 1)
    .option('--seed <n>', 'seed of data order, LoRA init and dropout', intArg('--seed', 0), 42)
    .option('--eval-every <n>', 'also validate every n steps (0 = epoch ends only)', intArg('--eval-every', 0), 0)
    .option('--checkpoint-every <n>', 'checkpoint every n steps (and at each epoch end)', intArg('--checkpoint-every', 0), 100)
    .option('--stop-marker <text>', 'appended to every answer', FORMAT_DEFAULTS.stopMarker)
    .addOption(new Option('--format <f>', 'training format').choices(['auto', 'chat', 'plain']).default('auto'))
    .option('--threads <n>', 'CPU threads (0 = all cores)', intArg('--threads', 0), 0)
    .option('--gpus <n>', 'data parallel on the first n GPUs, one worker process each (docs/distributed.md)', intArg('--gpus', 1))
    .option('--workers <n>', 'data parallel on the CPU with n worker processes', intArg('--workers', 1))
    .option('--rendezvous', 'run as one rank of a multi-host job: MIMIC_WORLD_SIZE, MIMIC_RANK, MIMIC_MASTER_ADDR, MIMIC_MASTER_PORT')
    .option('--json', 'print the report as JSON on the last line')
    .action(async (f: Record<string, unknown>) => {
      try {
        const report = await trainWithProgress({
          model: f.model as string, data: f.data as string, val: f.val as string | undefined, out: f.out as string,
          epochs: f.epochs as number, lr: f.lr as number,
          lora: { r: f.rank as number, alpha: f.alpha as number, dropout: f.dropout as number, targets: f.targets as LoraTarget[] },
          device: f.device as 'auto', quant: f.quant as 'nf4', resume: !!f.resume, batchTokens: f.batchTokens as number,
          maxSeqLen: f.maxSeqLen as number, gradAccum: f.gradAccum as number, warmupSteps: f.warmupSteps as number | undefined,
          warmupRatio: f.warmupRatio as number, schedule: f.schedule as 'cosine', weightDecay: f.weightDecay as number,
          maxGradNorm: f.maxGradNorm as number, seed: f.seed as number, evalEvery: f.evalEvery as number,
          checkpointEvery: f.checkpointEvery as number, stopMarker: f.stopMarker as string, format: f.format as 'auto', threads: f.threads as number,
          ...distributedFlags(f),
        });
        console.log(formatTrainReport(report));
        if (f.json) console.log(JSON.stringify(report));
      } catch (e) {
        console.error((e as Error).message);
        process.exitCode = (e as Error).name === 'AbortError' ? 130 : 1;
      }
    });
}
