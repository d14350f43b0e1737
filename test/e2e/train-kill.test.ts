// A `mimic train` process killed with SIGKILL mid-epoch (no chance to clean up) and then run
// again with --resume ends with the same adapter bytes as a run that was never interrupted:
// the checkpoint swap is atomic and the data order, RNG and optimizer state come back exactly.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const root = new URL('../..', import.meta.url).pathname;
const cli = path.join(root, 'dist', 'cli', 'main.js');
if (!existsSync(cli)) t.plan(0, 'dist/ is not built (npm run build:ts)');

const dir = mkdtempSync(path.join(os.tmpdir(), 'mimic-kill-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const words = 'yeah lol no way haha that is amazing want to grab dinner tonight im down lets go at 7'.split(' ');
const lines: string[] = [];
for (let i = 0; i < 96; i++) {
  const pick = (n: number, s: number) => Array.from({ length: n }, (_, j) => words[(i * 7 + j * s) % words.length]).join(' ');
  lines.push(JSON.stringify({ input: pick(3 + (i % 5), 3), output: pick(2 + (i % 4), 5) }));
}
const data = path.join(dir, 'train.jsonl');
writeFileSync(data, lines.join('\n') + '\n');

const args = (out: string) => ['train', '--model', path.join(root, 'assets', 'tiny'), '--data', data, '--out', out,
  '--epochs', '2', '--checkpoint-every', '2', '--device', 'cpu', '--batch-tokens', '256', '--lr', '2e-3', '--threads', '1'];
const state = (out: string) => path.join(out, 'checkpoint', 'trainer_state.json');

t.test('SIGKILL mid-epoch, then --resume', async (t) => {
  const a = path.join(dir, 'a'), b = path.join(dir, 'b');
  const full = spawnSync(process.execPath, [cli, ...args(a)], { encoding: 'utf8' });
  t.equal(full.status, 0, full.stderr);
  const total = JSON.parse(readFileSync(state(a), 'utf8')).step as number;
  t.ok(total >= 12, `${total} steps in the uninterrupted run`);

  // Kill the second run once it has checkpointed a step that is not an epoch end.
  const child = spawn(process.execPath, [cli, ...args(b)], { stdio: 'ignore' });
  const killedAt = await new Promise<number>((resolve, reject) => {
    const timer = setInterval(() => {
      try {
        const s = JSON.parse(readFileSync(state(b), 'utf8'));
        if (s.step >= 4 && s.step < total / 2) { child.kill('SIGKILL'); clearInterval(timer); resolve(s.step); }
      } catch { /* not written yet, or mid-swap */ }
    }, 5);
    child.on('exit', () => { clearInterval(timer); reject(new Error('the run ended before it could be killed')); });
  });
  await new Promise((r) => child.once('exit', r));
  t.ok(killedAt < total, `killed after checkpoint step ${killedAt} of ${total}`);
  t.notOk(existsSync(path.join(b, 'adapter_model.safetensors')), 'no final adapter from the killed run');

  const resumed = spawnSync(process.execPath, [cli, ...args(b), '--resume'], { encoding: 'utf8' });
  t.equal(resumed.status, 0, resumed.stderr);
  t.ok(readFileSync(path.join(a, 'adapter_model.safetensors')).equals(readFileSync(path.join(b, 'adapter_model.safetensors'))),
    'identical adapter bytes');
});
