// PEFT adapters through setLora: logits vs PEFT's, round trip, validation.
import t from 'tap';
import { native, type NativeModel } from '../../lib/native.ts';
import { modelDir, adapterFile, expectedTensors, maxRelErr } from './util/fixtures.ts';
import { readSafetensors } from './util/safetensors.ts';

const exp = expectedTensors();
const ids = exp.input_ids.data as Int32Array;
const [B, T] = exp.input_ids.shape;
const V = exp.logits.shape[2];
const spec = { r: 4, alpha: 8, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] };
const adapter: Record<string, Float32Array> = {};
for (const [k, v] of Object.entries(readSafetensors(adapterFile))) adapter[k] = v.data as Float32Array;

let model: NativeModel;
t.before(async () => { model = await native().loadModel(modelDir, { device: 'cpu', quant: 'none' }); });
t.teardown(() => model?.dispose());

t.test('logits with the PEFT adapter match PEFT within 1e-4 relative', async (t) => {
  t.equal(Object.keys(adapter).length, 28, 'the fixture adapter has 2 layers × 7 projections × A, B');
  model.setLora(spec, adapter);
  const want = exp.lora_logits.data as Float32Array;
  for (let b = 0; b < B; b++) {
    const got = await model.logits(ids.slice(b * T, (b + 1) * T));
    const rel = maxRelErr(got, want.subarray(b * T * V, (b + 1) * T * V));
    t.comment(`row ${b}: LoRA logits max rel err ${rel.toExponential(2)}`);
    t.ok(rel <= 1e-4, `row ${b}: ${rel} <= 1e-4`);
  }
});

t.test('getLora returns copies under PEFT names; clearLora restores the base', async (t) => {
  model.setLora(spec, adapter);
  const back = model.getLora();
  t.same(Object.keys(back).sort(), Object.keys(adapter).sort());
  for (const k of Object.keys(adapter)) t.same(Array.from(back[k]), Array.from(adapter[k]), k);
  back[Object.keys(back)[0]].fill(0);
  t.notSame(Array.from(model.getLora()[Object.keys(back)[0]]), Array.from(back[Object.keys(back)[0]]), 'copies');
  model.clearLora();
  t.same(model.getLora(), {});
  const base = await model.logits(ids.slice(0, T));
  t.ok(maxRelErr(base, (exp.logits.data as Float32Array).subarray(0, T * V)) <= 1e-4, 'base logits again');
});

t.test('a session that cached tokens refuses to continue after the adapter changed', async (t) => {
  const g = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 };
  const s = model.createSession(32, 0);
  await s.next(ids.slice(0, 4), g, new Int32Array(0));
  model.setLora(spec, adapter);
  await t.rejects(s.next(Int32Array.of(5), g, new Int32Array(0)), { code: 'ESTALE' });
  s.reset();
  t.type(await s.next(ids.slice(0, 4), g, new Int32Array(0)), 'number');
  model.clearLora();
});

t.test('bad adapters are refused with the tensor and shapes named, and leave the model unchanged', async (t) => {
  const name = 'base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight';
  const bad = { ...adapter, [name]: new Float32Array(64 * 4) }; // k_proj is [32, 64]: B must be [32, 4]
  t.throws(() => model.setLora(spec, bad), { code: 'ESHAPE', message: /k_proj\.lora_B.*\[32, 64\].*\[32, 4\]/ });
  t.same(model.getLora(), {}, 'nothing attached after a failed setLora');
  const missing = { ...adapter };
  delete missing['base_model.model.model.layers.1.mlp.down_proj.lora_A.weight'];
  t.throws(() => model.setLora(spec, missing), { code: 'EINVAL', message: /layers\.1\.mlp\.down_proj\.lora_A.*missing/ });
  t.throws(() => model.setLora({ ...spec, r: 8 }, adapter), { code: 'ESHAPE' });
  t.throws(() => model.setLora({ ...spec, targets: ['q_proj'] }, adapter), { code: 'EINVAL', message: /not in spec\.targets/ });
  t.throws(() => model.setLora({ ...spec, targets: ['qkv'] }, adapter), { code: 'EINVAL', message: /unknown target/ });
  t.throws(() => model.setLora(spec, { ...adapter, 'base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight': new Float32Array(256) }),
    { code: 'ESHAPE', message: /layer 2.*2 layers/ });
  t.throws(() => model.setLora(spec, { ...adapter, 'model.embed_tokens.weight': new Float32Array(4) }), { code: 'EINVAL' });
  t.throws(() => model.setLora(spec, { ...adapter, [name]: new Float64Array(128) as unknown as Float32Array }),
    { code: 'EINVAL', message: /Float32Array/ });
});
