/** `mimic serve --model DIR [...]`: the HTTP API (the seed's /generate and OpenAI-compatible /v1). */
import type { Command } from 'commander';
import { Option } from 'commander';
import { serve, type LogLevel } from '../serve/server.ts';
import { intArg } from './args.ts';
import { addModelOptions, fail, modelOptionsFrom } from './generate.ts';

export function registerServe(program: Command): void {
  const cmd = program
    .command('serve')
    .description('serve a model over HTTP: POST /generate {"text"} → {"response"}, and the OpenAI API under /v1');
  addModelOptions(cmd);
  cmd
    .option('--host <host>', 'address to bind; anything but loopback needs an API key', '127.0.0.1')
    .option('-p, --port <port>', 'TCP port', intArg('--port'), 8000)
    .option('--api-key <key>', 'require "Authorization: Bearer KEY" (default: $MIMIC_API_KEY)')
    .option('--max-queue <n>', 'requests that may wait; more get 429', intArg('--max-queue'), 64)
    .option('--max-sessions <n>', 'generations decoded at once', intArg('--max-sessions', 1), 8)
    .option('--max-prompt-tokens <n>', 'longest prompt in tokens', intArg('--max-prompt-tokens', 1), 4096)
    .option('--max-tokens-cap <n>', 'largest max_tokens a request may ask for (more is a 400)', intArg('--max-tokens-cap', 1), 1024)
    .option('--default-max-tokens <n>', 'max_tokens when a request gives none', intArg('--default-max-tokens', 1), 256)
    .option('--timeout <ms>', 'time limit per request in ms', intArg('--timeout', 1), 300_000)
    .option('--body-limit <bytes>', 'largest request body', intArg('--body-limit', 1), 1024 * 1024)
    .option('--model-name <name>', 'model id shown by /v1/models (default: the folder name)')
    .option('--log-prompts', 'log prompts and replies (off by default)')
    .addOption(new Option('--log-level <level>', 'log level').choices(['silent', 'error', 'warn', 'info', 'debug']).default('info'))
    .action(async (f: Record<string, unknown>) => {
      try {
        const server = await serve({
          model: f.model as string,
          ...modelOptionsFrom(f),
          host: f.host as string,
          port: f.port as number,
          apiKey: f.apiKey as string | undefined,
          maxQueue: f.maxQueue as number,
          maxSessions: f.maxSessions as number,
          maxPromptTokens: f.maxPromptTokens as number,
          maxTokensCap: f.maxTokensCap as number,
          defaultMaxTokens: f.defaultMaxTokens as number,
          requestTimeoutMs: f.timeout as number,
          bodyLimit: f.bodyLimit as number,
          modelName: f.modelName as string | undefined,
          logPrompts: !!f.logPrompts,
          logLevel: f.logLevel as LogLevel,
        });
        const keyed = !!(f.apiKey ?? process.env.MIMIC_API_KEY);
        process.stderr.write(`mimic: serving ${server.model.name} (${server.model.device}${server.model.quant === 'nf4' ? ', nf4' : ''}) at ${server.url}` +
          `${keyed ? ' (API key required)' : ''}\n` +
          `  curl -X POST ${server.url}/generate -H "Content-Type: application/json"${keyed ? ' -H "Authorization: Bearer $MIMIC_API_KEY"' : ''} -d '{"text": "hello, how are you?"}'\n` +
          `  OpenAI clients: base URL ${server.url}/v1\n`);
        let stopping = false;
        const stop = async () => {
          if (stopping) process.exit(130);
          stopping = true;
          process.stderr.write('mimic: shutting down\n');
          await server.close();
          process.exit(0);
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      } catch (e) {
        fail(e);
      }
    });
}
