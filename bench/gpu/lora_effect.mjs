// mimic's side of bench/gpu/lora_effect.py: the summed loss of DIR's 2 × 128 tokens with the LoRA of
// B = ±0.05 and with B = 0, on the CPU (fp32 and NF4 weights) and, where the addon has CUDA, on the GPU
// with bf16 and NF4 weights and NF4 with MIMIC_FWD_GROUPED=1 — one JSON line a leg, then the LoRA's
// effect (B − B0) and the loss of each against the CPU leg of the same weights (NF4 moves every weight:
// another model), and the grouped forward's gap in the training forward (accumulate).
//   node bench/gpu/lora_effect.mjs DIR      (after python3 bench/gpu/lora_effect.py DIR)
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../../dist/native.js';

const dir = process.argv[2] ?? '/tmp/lora-effect';
function readSafetensors(p) {
  const buf = fs.readFileSync(p);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString());
  const out = {};
  for (const [k, v] of Object.entries(header)) {
    if (k === '__metadata__') continue;
    const [a, b] = v.data_offsets;
    out[k] = new Float32Array(buf.buffer.slice(buf.byteOffset + 8 + n + a, buf.byteOffset + 8 + n + b));
  }
  return out;
}
function readNpyInt32(p) {
  const b = fs.readFileSync(p);
  const headerLen = b.readUInt16LE(8);
  return new Int32Array(b.buffer.slice(b.byteOffset + 10 + headerLen, b.byteOffset + b.length));
}
const ids = readNpyInt32(path.join(dir, 'ids.npy')), labels = readNpyInt32(path.join(dir, 'labels.npy'));
const targets = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
const legs = [{ device: 'cpu', quant: 'none' }, { device: 'cpu', quant: 'nf4' }];
if (native().cudaAvailable())
  legs.push({ device: 'cuda', quant: 'none' }, { device: 'cuda', quant: 'nf4' }, { device: 'cuda', quant: 'nf4', env: 'MIMIC_FWD_GROUPED' });
const effect = {}, evals = {}, accs = {};
for (const leg of legs) {
  if (leg.env) process.env[leg.env] = '1';  // (read by the native code at each layer)
  const model = await native().loadModel(dir, { device: leg.device, quant: leg.quant });
  const loss = {};
  for (const tag of ['b', '0']) {
    for (const recompute of [false, true]) {
      const tr = model.createTrainer({ lora: { r: 16, alpha: 32, dropout: 0, targets }, seed: 1, recompute,
        init: readSafetensors(path.join(dir, `lora_${tag}.safetensors`)) });
      loss[`${tag}${recompute ? '_recompute' : ''}`] = {
        evaluate: (await tr.evaluate(ids, labels, 2, 128)).lossSum,
        accumulate: (await tr.accumulate(ids, labels, 2, 128)).lossSum,
      };
      tr.dispose();
    }
  }
  model.dispose?.();
  if (leg.env) delete process.env[leg.env];
  const name = `${leg.device}/${leg.quant}${leg.env ? ` ${leg.env}=1` : ''}`;
  evals[name] = loss.b.evaluate;
  accs[name] = loss.b.accumulate;
  effect[name] = loss.b.evaluate - loss['0'].evaluate;
  console.log(JSON.stringify({ leg: name, loss, lora_effect: effect[name] }));
}
for (const [name, e] of Object.entries(effect)) {
  const ref = `cpu/${name.includes('/nf4') ? 'nf4' : 'none'}`, cpu = effect[ref];
  console.log(`LORA EFFECT ${name}: ${e.toFixed(4)} (${ref} ${cpu.toFixed(4)}, ratio ${(e / cpu).toFixed(3)}); loss with B ` +
    `${evals[name].toFixed(4)} (rel to ${ref}: ${(Math.abs(evals[name] - evals[ref]) / Math.abs(evals[ref])).toExponential(2)})`);
}
const g = 'cuda/nf4 MIMIC_FWD_GROUPED=1';
if (g in accs)  // (compare with lora_effect.py's numpy_bf16 pair: one bf16 rounding less, per projection vs grouped)
  console.log(`LORA EFFECT grouped forward gap (accumulate, NF4): ${(accs[g] - accs['cuda/nf4']).toFixed(4)}`);
