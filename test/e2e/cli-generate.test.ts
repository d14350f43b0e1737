// `mimic generate` and `mimic chat` as a user runs them: a child process, stdout, exit codes.
import t from 'tap';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));
const dir = 'test/fixtures/ref/tiny-llama';
// lib/cli/main.ts belongs to the lead; this harness registers just the commands under test
const harness = "import { Command } from 'commander'; const p = new Command('mimic').exitOverride(); " +
  "for (const [f, n] of [['generate','registerGenerate'],['chat','registerChat'],['serve','registerServe']]) (await import('./lib/cli/' + f + '.ts'))[n](p); " +
  "try { await p.parseAsync(process.argv.slice(1), { from: 'user' }); } catch (e) { process.exitCode = e.exitCode ?? 1; }";

function mimic(args: string[], stdin = '') {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, ['--import', '@tapjs/typescript/import', '--input-type=module', '-e', harness, '--', ...args],
      { cwd: root, env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' } });
    let stdout = '', stderr = '';
    child.stdout.on('data', (c) => { stdout += c; });
    child.stderr.on('data', (c) => { stderr += c; });
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

/** Runs `mimic generate` in this process, capturing stdout and stderr (fast: no child start-up). */
async function inProcess(args: string[]) {
  const { Command } = await import('commander');
  const { registerGenerate } = await import('../../lib/cli/generate.ts');
  const program = new Command('mimic').exitOverride();
  let stdout = '', stderr = '';
  program.configureOutput({ writeOut: (s) => { stdout += s; }, writeErr: (s) => { stderr += s; } });
  registerGenerate(program);
  const out = process.stdout.write, err = process.stderr.write;
  process.stdout.write = ((c: string | Uint8Array) => { stdout += String(c); return true; }) as typeof out;
  process.stderr.write = ((c: string | Uint8Array) => { stderr += String(c); return true; }) as typeof err;
  const saved = process.exitCode;
  process.exitCode = 0;
  let code: number;
  try {
    await program.parseAsync(args, { from: 'user' });
    code = Number(process.exitCode ?? 0);
  } catch (e) {
    code = (e as { exitCode?: number }).exitCode ?? 1;
  } finally {
    process.stdout.write = out;
    process.stderr.write = err;
  }
  process.exitCode = saved;
  return { code, stdout, stderr };
}

t.test('mimic generate streams a reply; greedy is repeatable; --json and --stats', async (t) => {
  const a = await inProcess(['generate', '--model', dir, '--temperature', '0', '--max-tokens', '8', 'want to grab dinner tonight?']);
  t.equal(a.code, 0, a.stderr);
  const b = await inProcess(['generate', '--model', dir, '--temperature', '0', '--max-tokens', '8', '--json', '--stats', 'want to grab dinner tonight?']);
  t.equal(b.code, 0, b.stderr);
  const r = JSON.parse(b.stdout);
  t.equal(a.stdout, r.text + '\n', 'the streamed text equals the result text');
  t.ok(r.tokens.length >= 1 && r.tokens.length <= 8);
  t.match(b.stderr, /tokens\/s/);
  const c = await mimic(['generate', '--model', dir, '--temperature', '0', '--max-tokens', '8'], 'want to grab dinner tonight?');
  t.equal(c.code, 0, c.stderr);
  t.equal(c.stdout, a.stdout, 'a child process with the prompt on stdin prints the same');
});

t.test('mimic generate: clear errors and a failing exit code', async (t) => {
  const missing = await inProcess(['generate', '--model', '/no/such/model', 'hi']);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /\/no\/such\/model/);
  const bad = await inProcess(['generate', '--model', dir, '--max-tokens', 'lots', 'hi']);
  t.not(bad.code, 0);
  t.match(bad.stderr, /--max-tokens must be a whole number/);
  const empty = await inProcess(['generate', '--model', dir, '   ']);
  t.equal(empty.code, 1);
  t.match(empty.stderr, /prompt is empty/);
});

t.test('mimic chat answers piped lines in turn and keeps the history', async (t) => {
  const r = await mimic(['chat', '--model', dir, '--max-tokens', '4', '--seed', '1'], 'hello\nhow are you\n/history\n');
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /user: hello\nassistant: .*\nuser: how are you\nassistant: /s);
});
