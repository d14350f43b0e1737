// The loaded addon has exactly the shape lib/native.ts declares (names and typeof).
import t from 'tap';
import { readFileSync } from 'node:fs';
import { native, type NativeAddon, type NativeModel, type NativeSession } from '../../lib/native.ts';
import { modelDir } from './util/fixtures.ts';

const addon = native();
const addonMembers: Record<keyof NativeAddon, string> = {
  version: 'string', cudaAvailable: 'function', loadModel: 'function', _opCheck: 'function', _sample: 'function',
};
const modelMembers: Record<keyof NativeModel, string> = {
  config: 'object', device: 'string', quant: 'string', logits: 'function', createSession: 'function',
  setLora: 'function', getLora: 'function', clearLora: 'function', createTrainer: 'function', dispose: 'function',
  _logitsCached: 'function', nextBatch: 'function',
};
const sessionMembers: Record<keyof NativeSession, string> = {
  length: 'number', maxLength: 'number', next: 'function', reset: 'function',
};
const configKeys = ['vocabSize', 'hiddenSize', 'intermediateSize', 'numLayers', 'numHeads', 'numKvHeads', 'headDim',
  'maxPosition', 'rmsNormEps', 'tieWordEmbeddings', 'ropeTheta', 'ropeType', 'bosTokenId', 'eosTokenIds'];

t.test('NativeAddon', async (t) => {
  for (const [k, type] of Object.entries(addonMembers)) t.equal(typeof (addon as any)[k], type, k);
  const publicNames = Object.keys(addon).filter((k) => !k.startsWith('_'));
  for (const k of publicNames) t.ok(k in addonMembers, `exported ${k} is declared in lib/native.ts`);
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8'));
  t.equal(addon.version, pkg.version, 'addon version = package version');
  t.equal(typeof addon.cudaAvailable(), 'boolean');
});

t.test('NativeModel and NativeSession', async (t) => {
  const model = await addon.loadModel(modelDir, { device: 'cpu', quant: 'none' });
  for (const [k, type] of Object.entries(modelMembers)) t.equal(typeof (model as any)[k], type, `model.${k}`);
  t.same(Object.keys(model.config).sort(), [...configKeys].sort());
  t.ok(Array.isArray(model.config.eosTokenIds));
  const s = model.createSession(8, 1);
  for (const [k, type] of Object.entries(sessionMembers)) t.equal(typeof (s as any)[k], type, `session.${k}`);
  const inFlight = model.logits(Int32Array.of(0));
  t.type(inFlight, Promise);
  model.dispose();
  // a call made before dispose() either finishes or rejects EDISPOSED, depending on whether its
  // worker started first (it used to go unawaited: a rejection then failed the file at random)
  await inFlight.then((r) => t.type(r, Float32Array, 'the in-flight call finished'),
    (e) => t.equal((e as { code?: string }).code, 'EDISPOSED', 'the in-flight call rejected EDISPOSED'));
  await t.rejects(model.logits(Int32Array.of(0)), { code: 'EDISPOSED' });
});
