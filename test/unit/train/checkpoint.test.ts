// Checkpoints: written whole or not at all, read back after a crash between the renames.
import t from 'tap';
import { existsSync, readdirSync, renameSync } from 'node:fs';
import path from 'node:path';
import { readCheckpoint, settingsDiff, writeCheckpoint, CHECKPOINT_VERSION, type CheckpointMeta } from '../../../lib/train/checkpoint.ts';
import { readModelDims, loraName } from '../../../lib/train/adapter.ts';
import { fullDisk } from './helpers.ts';

const dims = await readModelDims(new URL('../../fixtures/ref/tiny-llama', import.meta.url).pathname);
const A = loraName(0, 'q_proj', 'A'), B = loraName(0, 'q_proj', 'B');
const adapter = (x: number) => ({ [A]: new Float32Array(2 * 64).fill(x), [B]: new Float32Array(64 * 2).fill(-x) });
const state = (step: number) => ({ step, rng: Uint32Array.from([1, 2, 3, 4, 5, 6, 7, step]), tensors: { ...adapter(step), [`${A}.exp_avg`]: new Float32Array(128).fill(0.5), [`${A}.exp_avg_sq`]: new Float32Array(128).fill(0.25) } });
const meta = (step: number): CheckpointMeta => ({ version: CHECKPOINT_VERSION, settings: { lr: 1e-3, targets: ['q_proj'] }, step, epoch: 0, batchInEpoch: step, rng: [], tokens: 10 * step, targetTokens: 5 * step, seconds: step, train: [], val: [], best: null, finished: false });
const spec = { r: 2, alpha: 4, targets: ['q_proj'], dropout: 0 };

t.test('write → read round trip; replacing keeps one folder', async (t) => {
  const dir = path.join(t.testdir(), 'checkpoint');
  await writeCheckpoint(dir, meta(3), state(3), { spec, tensors: adapter(3), dims, baseModel: 'x' });
  await writeCheckpoint(dir, meta(5), state(5), { spec, tensors: adapter(5), dims, baseModel: 'x' });
  const c = await readCheckpoint(dir);
  t.equal(c!.meta.step, 5);
  t.equal(c!.meta.batchInEpoch, 5);
  t.same(Array.from(c!.state.rng), [1, 2, 3, 4, 5, 6, 7, 5]);
  t.same(Array.from(c!.state.tensors[`${A}.exp_avg_sq`].slice(0, 2)), [0.25, 0.25]);
  t.equal(c!.state.tensors[A][0], 5);
  t.same(readdirSync(path.dirname(dir)), ['checkpoint'], 'no .old or temp folder left');
  t.ok(existsSync(path.join(dir, 'adapter_model.safetensors')), 'the checkpoint is a loadable adapter too');
  t.equal(await readCheckpoint(path.join(t.testdir(), 'none')), undefined);
});

t.test('a crash between the renames: checkpoint.old is read', async (t) => {
  const dir = path.join(t.testdir(), 'checkpoint');
  await writeCheckpoint(dir, meta(4), state(4), { spec, tensors: adapter(4), dims, baseModel: 'x' });
  renameSync(dir, `${dir}.old`);
  t.equal((await readCheckpoint(dir))!.meta.step, 4);
  await writeCheckpoint(dir, meta(6), state(6), { spec, tensors: adapter(6), dims, baseModel: 'x' });
  t.equal((await readCheckpoint(dir))!.meta.step, 6);
});

t.test('a full disk: the previous checkpoint stays whole', async (t) => {
  const dir = path.join(t.testdir(), 'checkpoint');
  await writeCheckpoint(dir, meta(2), state(2), { spec, tensors: adapter(2), dims, baseModel: 'x' });
  for (const ok of [0, 500, 3000]) {
    await t.rejects(writeCheckpoint(dir, meta(9), state(9), { spec, tensors: adapter(9), dims, baseModel: 'x' }, fullDisk(ok)),
      /no space left on the device.*previous checkpoint .* is intact/);
    t.equal((await readCheckpoint(dir))!.meta.step, 2);
    t.same(readdirSync(path.dirname(dir)), ['checkpoint'], 'no temp folder left');
  }
});

t.test('settingsDiff names what changed', async (t) => {
  t.same(settingsDiff({ lr: 1, r: 2 }, { lr: 1, r: 2 }), []);
  t.same(settingsDiff({ lr: 1, r: 2 }, { lr: 3, r: 2 }), ['lr (checkpoint 1, now 3)']);
});
