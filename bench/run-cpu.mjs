#!/usr/bin/env node
// `npm run bench`: the CPU benchmarks on the bundled tiny model, one after the other, each in
// its own process (tap's TypeScript loader runs the .ts files), their JSON lines gathered into
// bench/results/cpu.json. The GPU round is bench/gpu/check.sh, run on the GPU machine.
import { spawnSync } from 'node:child_process';
import { writeFileSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const runs = [
  ['prepare', ['bench/prepare.ts', '1000000', '--json']],
  ['train-cpu', ['bench/train-cpu.ts']],
  ['serve-load', ['bench/serve-load.ts', '--model', 'test/fixtures/ref/tiny-llama', '--json']],
];
const results = { machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version }, date: new Date().toISOString(), runs: {} };
for (const [name, args] of runs) {
  process.stderr.write(`bench: ${name}...\n`);
  const r = spawnSync(process.execPath, ['--import', '@tapjs/typescript/import', ...args], {
    cwd: root, encoding: 'utf8', env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' }, maxBuffer: 64 << 20,
  });
  if (r.status !== 0) {
    process.stderr.write(r.stdout + r.stderr);
    console.error(`bench: ${name} failed (exit ${r.status})`);
    process.exit(1);
  }
  const out = r.stdout.trim();
  // Single-line JSON records, or one pretty-printed object.
  let parsed;
  try { parsed = JSON.parse(out); } catch { parsed = out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)); }
  results.runs[name] = parsed;
  console.log(`${name}: ${JSON.stringify(parsed)}`);
}
mkdirSync(path.join(root, 'bench', 'results'), { recursive: true });
writeFileSync(path.join(root, 'bench', 'results', 'cpu.json'), JSON.stringify(results, null, 2) + '\n');
console.log('written bench/results/cpu.json');
