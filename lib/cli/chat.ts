/**
 * `mimic chat --model DIR [--adapter A]`: an interactive chat in the terminal. Keeps the history
 * (earlier turns go into the prompt as the training format's context), streams replies,
 * Ctrl-C stops a reply, Ctrl-C twice in a row at the prompt (or Ctrl-D) exits. Lines piped on stdin
 * are answered in turn. A stopped reply stays in the history as far as it got; one stopped before
 * its first word is left out, with its question.
 */
import type { Command } from 'commander';
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { loadModel, type Model } from '../infer/model.ts';
import type { ChatMessage } from '../tokenize/tokenizer.ts';
import { addModelOptions, addSamplingOptions, fail, modelOptionsFrom, samplingFrom } from './generate.ts';

const HELP = 'commands: /reset (forget the history), /history, /exit; Ctrl-C stops a reply, Ctrl-C twice or Ctrl-D exits';

export function registerChat(program: Command): void {
  const cmd = program.command('chat').description('chat with a model in the terminal');
  addModelOptions(cmd);
  addSamplingOptions(cmd);
  cmd
    .option('--system <text>', 'a system message put before the conversation')
    .option('--max-turns <n>', 'earlier turns kept in the prompt (oldest dropped first; 0 = as many as fit)', (v) => Number(v), 0)
    .action(async (f: Record<string, unknown>) => {
      let model: Model;
      try {
        model = await loadModel(f.model as string, modelOptionsFrom(f));
      } catch (e) {
        fail(e);
        return;
      }
      await chatLoop(model, f);
    });
}

/** The chat's terminal: process.stdin / process.stdout, or streams a test drives (isTTY and setRawMode as a tty.ReadStream's). */
export interface ChatIO {
  input: Readable & { isTTY?: boolean };
  output: Writable & { isTTY?: boolean };
}

/**
 * Runs the chat on `model` with the parsed flags of `mimic chat` until Ctrl-C twice, Ctrl-D, /exit
 * or the end of the input; resolves once the model is disposed.
 */
export async function chatLoop(model: Model, f: Record<string, unknown>,
  io: ChatIO = { input: process.stdin, output: process.stdout }): Promise<void> {
  const { input, output: out } = io;
  const tty = !!input.isTTY && !!out.isTTY;
  const history: ChatMessage[] = [];
  const system: ChatMessage[] = typeof f.system === 'string' ? [{ role: 'system', content: f.system }] : [];
  const sampling = samplingFrom(f);
  const maxTurns = Number(f.maxTurns) || 0;
  const rl = createInterface({ input, output: out, terminal: tty, prompt: tty ? '\x1b[1myou>\x1b[0m ' : '' });
  const queue: string[] = [];
  let current: AbortController | null = null;
  let ended = false;
  let busy = false;
  let lastInterrupt = 0;
  let exiting = false;
  let disposed = false;
  let finished!: () => void;
  const done = new Promise<void>((resolve) => { finished = resolve; });
  /** Ends the chat once the model is disposed and no answer is being written. */
  const settle = () => { if (disposed && !busy) finished(); };

  const exit = async () => {
    if (exiting) return;
    exiting = true;
    current?.abort();
    rl.close();
    await model.dispose();
    if (tty) out.write('\n');
    disposed = true;
    settle();
  };

  const interrupt = () => {
    if (current) { current.abort(); return; }
    const now = Date.now();
    if (now - lastInterrupt < 2000) { void exit(); return; }
    lastInterrupt = now;
    out.write(`\n(press Ctrl-C again or Ctrl-D to exit)\n`);
    rl.prompt();
  };
  rl.on('SIGINT', interrupt);
  const onSignal = () => interrupt();
  process.on('SIGINT', onSignal);

  /** The prompt for `input` with as much history as fits the context and leaves room for the reply. */
  const buildPrompt = (input: string): number[] => {
    let turns = maxTurns > 0 ? history.slice(-2 * maxTurns) : history.slice();
    for (;;) {
      const ids = model.promptIds(input, [...system, ...turns]);
      if (ids.length + (sampling.maxTokens ?? 256) <= model.contextLength || turns.length === 0) return ids;
      turns = turns.slice(2);
    }
  };

  const answer = async (line: string) => {
    const input = line.trim();
    if (input === '') return;
    if (input === '/exit' || input === '/quit') { await exit(); return; }
    if (input === '/reset') { history.length = 0; out.write('(history cleared)\n'); return; }
    if (input === '/history') { for (const m of history) out.write(`${m.role}: ${m.content}\n`); return; }
    if (input === '/help') { out.write(HELP + '\n'); return; }
    current = new AbortController();
    if (tty) out.write('\x1b[1mme>\x1b[0m ');
    try {
      const r = await model.generate(buildPrompt(input), { ...sampling, signal: current.signal, onToken: (s) => out.write(s) });
      const stopped = r.stopReason === 'abort';
      out.write(stopped ? ' [stopped]\n' : '\n');
      const reply = r.text.trim();
      if (!(stopped && reply === '')) history.push({ role: 'user', content: input }, { role: 'assistant', content: reply });
    } catch (e) {
      out.write('\n');
      fail(e);
      process.exitCode = 0;
    } finally {
      current = null;
    }
  };

  const pump = async () => {
    if (busy) return;
    busy = true;
    while (queue.length > 0 && !exiting) await answer(queue.shift()!);
    busy = false;
    if (exiting) { settle(); return; }
    if (ended) { await exit(); return; }
    if (tty) rl.prompt();
  };

  // "twice in a row": a line in between starts the count again
  rl.on('line', (line) => { lastInterrupt = 0; queue.push(line); void pump(); });
  rl.on('close', () => { ended = true; if (!busy) void pump(); });
  if (tty) out.write(`mimic chat · ${model.name} on ${model.device} · ${HELP}\n`);
  if (tty) rl.prompt();
  await done;
  process.off('SIGINT', onSignal);
}
