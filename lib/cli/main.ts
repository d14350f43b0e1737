#!/usr/bin/env node
/**
 * The `mimic` command line: one subcommand per stage of the product, each registered by its
 * own module (lib/cli/<command>.ts) so this file stays a table of contents.
 */
import { Command } from 'commander';
import { version } from '../version.ts';
import { registerPrepare } from './prepare.ts';
import { registerGenerate } from './generate.ts';
import { registerServe } from './serve.ts';
import { registerChat } from './chat.ts';
import { registerTrain } from './train.ts';
import { registerEval } from './eval.ts';
import { registerDemo } from './demo.ts';

const program = new Command();
program
  .name('mimic')
  .description('Turn your message history into a language model that texts like you, and host it.')
  .version(version)
  .showHelpAfterError();

registerDemo(program);
registerPrepare(program);
registerTrain(program);
registerEval(program);
registerGenerate(program);
registerServe(program);
registerChat(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  const e = err as { message?: string; code?: string };
  process.stderr.write(`mimic: ${e?.message ?? String(err)}\n`);
  process.exitCode = 1;
});
