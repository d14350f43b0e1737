/** `mimic eval --model DIR [--adapter A] --data FILE [--device] [--quant] [--json]`: the masked loss of a file. */
import type { Command } from 'commander';
import { Option } from 'commander';
import { evaluate } from '../train/evaluate.ts';
import { intArg } from './args.ts';
import { FORMAT_DEFAULTS } from '../tokenize/format.ts';

export function registerEval(program: Command): void {
  program
    .command('eval')
    .description('masked loss of a JSONL file: the mean over all its unmasked tokens (token-weighted)')
    .requiredOption('--model <dir>', 'Hugging Face Llama checkpoint folder')
    .option('--adapter <dir>', 'PEFT LoRA adapter folder to apply (default: the base model)')
    .requiredOption('--data <file>', 'JSONL of {input, output} pairs or {input_ids, labels}')
    .addOption(new Option('--device <device>', 'where to run').choices(['auto', 'cpu', 'cuda']).default('auto'))
    .addOption(new Option('--quant <q>', 'base weight format').choices(['nf4', 'none']).default('nf4'))
    .option('--batch-tokens <n>', 'tokens per batch, padding included', intArg('--batch-tokens', 1), 4096)
    .option('--max-seq-len <n>', 'longest example in tokens, as in training', intArg('--max-seq-len', 2), 512)
    .option('--stop-marker <text>', 'appended to every answer, as in training', FORMAT_DEFAULTS.stopMarker)
    .addOption(new Option('--format <f>', 'training format').choices(['auto', 'chat', 'plain']).default('auto'))
    .option('--json', 'print {"loss": L, "tokens": N} as the last line')
    .action(async (f: Record<string, unknown>) => {
      try {
        const r = await evaluate({
          model: f.model as string, adapter: f.adapter as string | undefined, data: f.data as string,
          device: f.device as 'auto', quant: f.quant as 'nf4', batchTokens: f.batchTokens as number,
          maxSeqLen: f.maxSeqLen as number, stopMarker: f.stopMarker as string, format: f.format as 'auto',
        });
        const skipped = Object.values(r.data.skipped).reduce((a, b) => a + b, 0);
        console.log(`loss ${r.loss.toFixed(6)} over ${r.tokens} tokens of ${r.data.examples} examples (perplexity ${r.perplexity.toFixed(3)}, ${r.device})` +
          (skipped ? `; ${skipped} line(s) skipped (answer longer than --max-seq-len or empty)` : ''));
        if (f.json) console.log(JSON.stringify({ loss: r.loss, tokens: r.tokens }));
      } catch (e) {
        console.error((e as Error).message);
        process.exitCode = 1;
      }
    });
}
