// PEFT adapters: PEFT's own files load, ours round-trip byte for byte, shape checks, atomic saves.
import t from 'tap';
import { readdirSync, readFileSync, existsSync, cpSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { loadAdapter, saveAdapter, readModelDims, validateLoraSpec, adapterConfig, loraName, ALL_TARGETS } from '../../../lib/train/adapter.ts';
import { fullDisk } from './helpers.ts';

const modelDir = new URL('../../fixtures/ref/tiny-llama', import.meta.url).pathname;
const peftDir = path.join(modelDir, 'lora');

t.test('loads an adapter PEFT trained', async (t) => {
  const dims = await readModelDims(modelDir);
  t.same(dims, { hiddenSize: 64, intermediateSize: 160, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16 });
  const a = await loadAdapter(peftDir, dims);
  t.same(a.spec, { r: 4, alpha: 8, targets: [...ALL_TARGETS], dropout: 0 });
  t.equal(Object.keys(a.tensors).length, 28);
  t.equal(a.tensors[loraName(1, 'k_proj', 'B')].length, 32 * 4);
});

t.test('save → load round-trips, bytes deterministic, config as PEFT writes it', async (t) => {
  const dims = await readModelDims(modelDir);
  const a = await loadAdapter(peftDir, dims);
  const dir = t.testdir();
  await saveAdapter(dir, { ...a.spec }, a.tensors, dims, { baseModel: 'tiny-llama' });
  const b = await loadAdapter(dir, dims);
  t.same(b.spec, a.spec);
  for (const k of Object.keys(a.tensors)) t.same(Array.from(b.tensors[k]), Array.from(a.tensors[k]), k);
  const dir2 = t.testdir();
  await saveAdapter(dir2, { ...a.spec }, b.tensors, dims, { baseModel: 'tiny-llama' });
  t.ok(readFileSync(path.join(dir, 'adapter_model.safetensors')).equals(readFileSync(path.join(dir2, 'adapter_model.safetensors'))), 'same bytes');
  const cfg = JSON.parse(readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
  const peft = JSON.parse(readFileSync(path.join(peftDir, 'adapter_config.json'), 'utf8'));
  for (const k of ['r', 'lora_alpha', 'peft_type', 'task_type', 'bias', 'fan_in_fan_out', 'use_dora', 'use_rslora', 'inference_mode']) t.same(cfg[k], peft[k], k);
  t.same([...cfg.target_modules].sort(), [...peft.target_modules].sort());
  t.same(readdirSync(dir).sort(), ['adapter_config.json', 'adapter_model.safetensors'], 'no temp files left');
});

t.test('an adapter for another model is refused with the reason', async (t) => {
  const other = { hiddenSize: 128, intermediateSize: 256, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 32 };
  await t.rejects(loadAdapter(peftDir, other), /is for another model: .*lora_A.weight is \[4, 160\] but this model's down_proj \(128×256\) needs \[4, 256\]|is for another model/);
  await t.rejects(loadAdapter(peftDir, { ...(await readModelDims(modelDir)), numLayers: 1 }), /has layer 1 but this model has 1 layers/);
  await t.rejects(loadAdapter(modelDir), /adapter_config\.json is missing/);
});

t.test('PEFT variants: .default names, rsLoRA, DoRA refused', async (t) => {
  const dims = await readModelDims(modelDir);
  const dir = t.testdir();
  cpSync(peftDir, dir, { recursive: true });
  const cfg = JSON.parse(readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
  writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ ...cfg, use_rslora: true }));
  const a = await loadAdapter(dir, dims);
  t.equal(a.spec.alpha, 8 * 2, 'alpha / sqrt(r) folded into alpha / r');
  writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ ...cfg, use_dora: true }));
  await t.rejects(loadAdapter(dir, dims), /DoRA/);
});

t.test('rank and targets are validated against the layers', async (t) => {
  const dims = await readModelDims(modelDir);
  t.throws(() => validateLoraSpec({ r: 64, alpha: 16, targets: ['k_proj'] }, dims), /rank 64 is larger than the layer: k_proj is 32×64, so the rank can be at most 32/);
  t.doesNotThrow(() => validateLoraSpec({ r: 32, alpha: 16, targets: ['k_proj'] }, dims));
  t.throws(() => validateLoraSpec({ r: 0, alpha: 16, targets: ['q_proj'] }, dims), /whole number ≥ 1/);
  t.throws(() => validateLoraSpec({ r: 4, alpha: 16, targets: ['qq_proj'] }, dims), /unknown LoRA target "qq_proj"/);
  t.throws(() => validateLoraSpec({ r: 4, alpha: 16, targets: [] }, dims), /empty/);
  t.equal(adapterConfig({ r: 8, alpha: 16, targets: ['q_proj'] }, null).peft_type, 'LORA');
});

t.test('a full disk while saving: clear error, old adapter intact, no temp files', async (t) => {
  const dims = await readModelDims(modelDir);
  const a = await loadAdapter(peftDir, dims);
  const dir = t.testdir();
  await saveAdapter(dir, a.spec, a.tensors, dims);
  const before = readFileSync(path.join(dir, 'adapter_model.safetensors'));
  const changed = Object.fromEntries(Object.entries(a.tensors).map(([k, v]) => [k, v.map((x) => x * 2)]));
  for (const ok of [0, 1000, before.length + 10]) {
    await t.rejects(saveAdapter(dir, a.spec, changed, dims, { fs: fullDisk(ok) }), /no space left on the device.*free some space.*previous file \(if any\) is intact/);
    t.ok(readFileSync(path.join(dir, 'adapter_model.safetensors')).equals(before), `weights untouched (fails after ${ok} bytes)`);
    t.same(readdirSync(dir).sort(), ['adapter_config.json', 'adapter_model.safetensors'], 'no temp files');
  }
  const fresh = t.testdir();
  await t.rejects(saveAdapter(path.join(fresh, 'a'), a.spec, changed, dims, { fs: fullDisk(0) }), /ENOSPC|no space/);
  t.notOk(existsSync(path.join(fresh, 'a', 'adapter_model.safetensors')), 'no half-written adapter');
  t.notOk(existsSync(path.join(fresh, 'a', 'adapter_config.json')));
});
