/**
 * `mimic generate --model DIR [options] "prompt"`: one reply, streamed to stdout.
 * Also the model and sampling options shared by `mimic serve` and `mimic chat`.
 */
import type { Command } from 'commander';
import { Option } from 'commander';
import { intArg, numArg } from './args.ts';
import { TRAINED_STOPS } from '../tokenize/format.ts';
import { loadModel, type LoadModelOptions, type Model } from '../infer/model.ts';
import { GENERATE_DEFAULTS, type GenerateOptions } from '../infer/options.ts';


const collect = (v: string, prev: string[] | undefined) => [...(prev ?? []), v];

/** --model, --adapter, --device, --quant, --threads */
export function addModelOptions(cmd: Command): Command {
  return cmd
    .requiredOption('-m, --model <dir>', 'model folder (config.json, safetensors, tokenizer.json)')
    .option('-a, --adapter <dir>', 'PEFT LoRA adapter folder to apply')
    .addOption(new Option('--device <device>', 'where to run').choices(['auto', 'cpu', 'cuda']).default('auto'))
    .addOption(new Option('--quant <quant>', 'weight format of the linear layers').choices(['nf4', 'none']).default('nf4'))
    .option('--threads <n>', 'CPU threads (0 = all cores)', intArg('--threads'), 0);
}

/** --max-tokens, --temperature, --top-k, --top-p, --repetition-penalty, --seed, --stop */
export function addSamplingOptions(cmd: Command, maxTokensDefault: number = GENERATE_DEFAULTS.maxTokens): Command {
  return cmd
    .option('-n, --max-tokens <n>', 'most tokens to generate', intArg('--max-tokens', 1), maxTokensDefault)
    .option('-t, --temperature <t>', 'sampling temperature; 0 = greedy', numArg('--temperature', (x) => x >= 0, 'a number ≥ 0'), GENERATE_DEFAULTS.temperature)
    .option('--top-k <k>', 'keep the k most likely tokens (0 = off)', intArg('--top-k'), GENERATE_DEFAULTS.topK)
    .option('--top-p <p>', 'nucleus sampling mass (1 = off)', numArg('--top-p', (x) => x > 0 && x <= 1, 'a number in (0, 1]'), GENERATE_DEFAULTS.topP)
    .option('--repetition-penalty <r>', 'penalty for repeated tokens (1 = off)', numArg('--repetition-penalty', (x) => x > 0, 'a number > 0'), GENERATE_DEFAULTS.repetitionPenalty)
    .option('--seed <n>', 'RNG seed for a reproducible reply (default: random)', intArg('--seed'))
    .option('-s, --stop <text>', `stop string; repeat for several; replaces the default (${TRAINED_STOPS.map((s) => JSON.stringify(s)).join(', ')}); --stop "" for none`, collect);
}

export function modelOptionsFrom(f: Record<string, unknown>): LoadModelOptions {
  return {
    adapter: f.adapter as string | undefined,
    device: f.device as LoadModelOptions['device'],
    quant: f.quant as LoadModelOptions['quant'],
    threads: f.threads as number,
  };
}

export function samplingFrom(f: Record<string, unknown>): GenerateOptions {
  return {
    maxTokens: f.maxTokens as number,
    temperature: f.temperature as number,
    topK: f.topK as number,
    topP: f.topP as number,
    repetitionPenalty: f.repetitionPenalty as number,
    seed: f.seed as number | undefined,
    stop: (f.stop as string[] | undefined) ?? [...TRAINED_STOPS],
  };
}

/** Prints an error the way every mimic command does and sets a failing exit code. */
export function fail(e: unknown): void {
  const msg = e instanceof Error ? e.message : String(e);
  process.stderr.write(`${msg.startsWith('mimic') ? msg : `mimic: ${msg}`}\n`);
  process.exitCode = 1;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

export function registerGenerate(program: Command): void {
  const cmd = program
    .command('generate')
    .description('generate a reply to one prompt and stream it to stdout')
    .argument('[prompt]', 'the message to answer ("-" or nothing: read stdin)');
  addModelOptions(cmd);
  addSamplingOptions(cmd);
  cmd
    .option('--raw', 'send the prompt as it is, without the chat template / training format')
    .option('--json', 'print the whole result as JSON (text, tokens, stopReason, usage) instead of streaming')
    .option('--stats', 'print token counts and speed to stderr')
    .action(async (prompt: string | undefined, f: Record<string, unknown>) => {
      let model: Model | undefined;
      const ac = new AbortController();
      const onSigint = () => { if (ac.signal.aborted) process.exit(130); ac.abort(); };
      process.on('SIGINT', onSigint);
      try {
        const text = prompt === undefined || prompt === '-' ? await readStdin() : prompt;
        if (text.trim() === '') throw new Error('mimic generate: the prompt is empty');
        model = await loadModel(f.model as string, modelOptionsFrom(f));
        const input = f.raw ? text : model.promptIds(text);
        const t0 = performance.now();
        const json = !!f.json;
        const r = await model.generate(input, {
          ...samplingFrom(f),
          signal: ac.signal,
          onToken: json ? undefined : (s) => process.stdout.write(s),
        });
        const secs = (performance.now() - t0) / 1000;
        if (json) process.stdout.write(JSON.stringify(r) + '\n');
        else process.stdout.write('\n');
        if (f.stats) {
          process.stderr.write(`[${r.stopReason} · ${r.usage.promptTokens} prompt + ${r.usage.completionTokens} generated tokens · ` +
            `${(r.usage.completionTokens / secs).toFixed(1)} tokens/s · ${model.device}${model.quant === 'nf4' ? ' nf4' : ''}]\n`);
        }
        if (r.stopReason === 'abort') process.exitCode = 130;
      } catch (e) {
        fail(e);
      } finally {
        process.off('SIGINT', onSigint);
        await model?.dispose();
      }
    });
}
