/**
 * LoRA adapters in PEFT's format, so that PEFT, transformers and vLLM load what mimic trains and
 * mimic loads what they train: a folder with `adapter_config.json` and
 * `adapter_model.safetensors` whose tensors are named
 * `base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}.weight`,
 * A of shape [r, in] and B of shape [out, r] (PEFT's nn.Linear layout), scaling alpha / r.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { decodeSafetensors, encodeSafetensors, type TensorIn } from './safetensors.ts';
import { nodeFs, writeFilesAtomic, type WriteFs } from './atomic.ts';
import type { NativeLoraSpec, NativeModelConfig } from '../native.ts';

/** The seven projections of a Llama layer, in PEFT's short names. */
export const ALL_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type LoraTarget = (typeof ALL_TARGETS)[number];

/** The model dimensions an adapter's shapes depend on: the native config's (a subset of config.json). */
export type ModelDims = Pick<NativeModelConfig, 'hiddenSize' | 'intermediateSize' | 'numLayers' | 'numHeads' | 'numKvHeads' | 'headDim'>;

/** Reads the dimensions from a checkpoint's config.json (head_dim defaults to hidden / heads). */
export async function readModelDims(modelDir: string): Promise<ModelDims> {
  const file = path.join(modelDir, 'config.json');
  let c: Record<string, number>;
  try {
    c = JSON.parse(await readFile(file, 'utf8'));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new Error(`mimic: cannot read ${file}: ${err.code === 'ENOENT' ? 'no such file (is this a model folder?)' : err.message}`);
  }
  const dims: ModelDims = {
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    numLayers: c.num_hidden_layers,
    numHeads: c.num_attention_heads,
    numKvHeads: c.num_key_value_heads ?? c.num_attention_heads,
    headDim: c.head_dim ?? c.hidden_size / c.num_attention_heads,
  };
  for (const [k, v] of Object.entries(dims)) {
    if (!Number.isInteger(v) || v <= 0) throw new Error(`mimic: ${file} has no valid ${k} (got ${v})`);
  }
  return dims;
}

/** [in, out] of a projection. */
export function projectionShape(dims: ModelDims, target: string): [number, number] {
  const C = dims.hiddenSize, I = dims.intermediateSize, Q = dims.numHeads * dims.headDim, KV = dims.numKvHeads * dims.headDim;
  switch (target) {
    case 'q_proj': return [C, Q];
    case 'k_proj': case 'v_proj': return [C, KV];
    case 'o_proj': return [Q, C];
    case 'gate_proj': case 'up_proj': return [C, I];
    case 'down_proj': return [I, C];
    default: throw new Error(`mimic: unknown LoRA target "${target}"; choose among ${ALL_TARGETS.join(', ')}`);
  }
}

/** PEFT's tensor name of a LoRA matrix. */
export function loraName(layer: number, target: string, which: 'A' | 'B'): string {
  const block = target.endsWith('_proj') && ['gate_proj', 'up_proj', 'down_proj'].includes(target) ? 'mlp' : 'self_attn';
  return `base_model.model.model.layers.${layer}.${block}.${target}.lora_${which}.weight`;
}

/**
 * Checks a LoRA spec against the model: known targets, no duplicates, a whole rank ≥ 1 that is
 * no larger than the smaller side of any targeted projection, a finite alpha > 0.
 */
export function validateLoraSpec(spec: NativeLoraSpec, dims: ModelDims): void {
  if (!Array.isArray(spec.targets) || spec.targets.length === 0) throw new Error('mimic: lora.targets is empty; name at least one projection (e.g. q_proj)');
  const seen = new Set<string>();
  for (const t of spec.targets) {
    if (!(ALL_TARGETS as readonly string[]).includes(t)) throw new Error(`mimic: unknown LoRA target "${t}"; choose among ${ALL_TARGETS.join(', ')}`);
    if (seen.has(t)) throw new Error(`mimic: LoRA target "${t}" is listed twice`);
    seen.add(t);
  }
  if (!Number.isInteger(spec.r) || spec.r < 1) throw new Error(`mimic: lora.r must be a whole number ≥ 1 (got ${spec.r})`);
  if (!Number.isFinite(spec.alpha) || spec.alpha <= 0) throw new Error(`mimic: lora.alpha must be a number > 0 (got ${spec.alpha})`);
  for (const t of spec.targets) {
    const [i, o] = projectionShape(dims, t);
    if (spec.r > Math.min(i, o)) {
      throw new Error(`mimic: LoRA rank ${spec.r} is larger than the layer: ${t} is ${o}×${i}, so the rank can be at most ${Math.min(i, o)}`);
    }
  }
}

/** What `adapter_config.json` holds (the fields PEFT needs, as PEFT writes them). */
export interface AdapterConfig {
  r: number;
  lora_alpha: number;
  lora_dropout: number;
  target_modules: string[];
  base_model_name_or_path: string | null;
  peft_type: 'LORA';
  task_type: 'CAUSAL_LM';
  [key: string]: unknown;
}

/** PEFT's adapter_config.json for a LoRA spec. */
export function adapterConfig(spec: NativeLoraSpec & { dropout?: number }, baseModel: string | null): AdapterConfig {
  return {
    alpha_pattern: {},
    auto_mapping: null,
    base_model_name_or_path: baseModel,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layers_pattern: null,
    layers_to_transform: null,
    lora_alpha: spec.alpha,
    lora_dropout: spec.dropout ?? 0,
    modules_to_save: null,
    peft_type: 'LORA',
    r: spec.r,
    rank_pattern: {},
    revision: null,
    target_modules: [...spec.targets],
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: false,
  };
}

/** Adds shapes to flat LoRA tensors (A [r, in], B [out, r]), checking their lengths. */
export function shapeTensors(tensors: Record<string, Float32Array>, dims: ModelDims, r: number): Record<string, TensorIn> {
  const out: Record<string, TensorIn> = {};
  for (const [name, data] of Object.entries(tensors)) {
    const m = /\.(\w+_proj)\.lora_([AB])\.weight$/.exec(name);
    if (!m) throw new Error(`mimic: ${name} is not a LoRA tensor name`);
    const [i, o] = projectionShape(dims, m[1]);
    const shape = m[2] === 'A' ? [r, i] : [o, r];
    if (data.length !== shape[0] * shape[1]) throw new Error(`mimic: ${name} has ${data.length} values, expected [${shape}]`);
    out[name] = { data, shape };
  }
  return out;
}

/** Serializes an adapter: [config JSON, safetensors bytes]. */
export function encodeAdapter(spec: NativeLoraSpec & { dropout?: number }, tensors: Record<string, Float32Array>, dims: ModelDims,
  baseModel: string | null): [string, Buffer] {
  const config = JSON.stringify(adapterConfig(spec, baseModel), null, 2) + '\n';
  return [config, encodeSafetensors(shapeTensors(tensors, dims, spec.r), { metadata: { format: 'pt' } })];
}

export interface SaveAdapterOptions {
  /** base_model_name_or_path written into adapter_config.json. Default null. */
  baseModel?: string | null;
  /** File system used for the writes (tests inject failures). Default node:fs/promises. */
  fs?: WriteFs;
}

/**
 * Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` atomically: both are
 * written and flushed to temporary files first, so a failure (full disk) replaces neither.
 */
export async function saveAdapter(dir: string, spec: NativeLoraSpec & { dropout?: number }, tensors: Record<string, Float32Array>,
  dims: ModelDims, options: SaveAdapterOptions = {}): Promise<void> {
  const [config, weights] = encodeAdapter(spec, tensors, dims, options.baseModel ?? null);
  // weights first: a reader that finds a new config always finds the weights it describes
  await writeFilesAtomic([[path.join(dir, 'adapter_model.safetensors'), weights], [path.join(dir, 'adapter_config.json'), config]], options.fs ?? nodeFs);
}

/** An adapter read back: the spec to attach it with and its tensors under canonical PEFT names. */
export interface LoadedAdapter {
  spec: NativeLoraSpec & { dropout: number };
  tensors: Record<string, Float32Array>;
  config: Record<string, unknown>;
}

/**
 * Reads a PEFT LoRA adapter folder (ours or one trained with PEFT). Accepts F32/F16/BF16
 * tensors, names with or without `.default`, and `use_rslora` (folded into alpha). When `dims`
 * is given every shape is checked against the model and a mismatch says which tensor and why.
 */
export async function loadAdapter(dir: string, dims?: ModelDims): Promise<LoadedAdapter> {
  const cfgFile = path.join(dir, 'adapter_config.json');
  const wFile = path.join(dir, 'adapter_model.safetensors');
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(await readFile(cfgFile, 'utf8'));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') {
      const bin = await readFile(path.join(dir, 'adapter_model.bin')).then(() => true, () => false);
      throw new Error(`mimic: ${cfgFile} is missing: ${dir} is not a PEFT adapter folder` +
        (bin ? ' (it has adapter_model.bin, a pickle; save it with safe_serialization=True)' : ''));
    }
    throw new Error(`mimic: cannot read ${cfgFile}: ${err.message}`);
  }
  if (config.peft_type !== undefined && config.peft_type !== 'LORA') throw new Error(`mimic: ${dir} is a ${String(config.peft_type)} adapter; only LoRA is supported`);
  if (config.use_dora) throw new Error(`mimic: ${dir} is a DoRA adapter (use_dora: true); only plain LoRA is supported`);
  if (config.bias && config.bias !== 'none') throw new Error(`mimic: ${dir} trains biases (bias: ${String(config.bias)}); only bias "none" is supported`);
  for (const k of ['rank_pattern', 'alpha_pattern'] as const) {
    const v = config[k];
    if (v && typeof v === 'object' && Object.keys(v).length > 0) throw new Error(`mimic: ${dir} uses a per-layer ${k}; only one rank and alpha for all layers is supported`);
  }
  if (Array.isArray(config.modules_to_save) && config.modules_to_save.length > 0) {
    throw new Error(`mimic: ${dir} also saves full modules (${config.modules_to_save.join(', ')}); only LoRA matrices are supported`);
  }
  const { tensors: raw } = decodeSafetensors(await readFile(wFile).catch((e: NodeJS.ErrnoException) => {
    throw new Error(`mimic: cannot read ${wFile}: ${e.code === 'ENOENT' ? 'no such file' : e.message}`);
  }), wFile);
  const tensors: Record<string, Float32Array> = {};
  const targets = new Set<string>();
  let r = Number(config.r);
  for (const [name0, t] of Object.entries(raw)) {
    const name = name0.replace(/\.lora_([AB])\.default\.weight$/, '.lora_$1.weight');
    const m = /^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.weight$/.exec(name);
    if (!m) throw new Error(`mimic: ${wFile} holds ${name0}, which is not a LoRA matrix of a Llama projection`);
    const [, layerS, , target, which] = m;
    if (t.shape.length !== 2) throw new Error(`mimic: ${name0} in ${wFile} has shape [${t.shape}], expected a matrix`);
    const rank = which === 'A' ? t.shape[0] : t.shape[1];
    if (!Number.isFinite(r)) r = rank;
    if (rank !== r) throw new Error(`mimic: ${name0} has rank ${rank} but adapter_config.json says r = ${r}`);
    if (dims) {
      const layer = Number(layerS);
      if (layer >= dims.numLayers) {
        throw new Error(`mimic: the adapter ${dir} is for another model: it has layer ${layer} but this model has ${dims.numLayers} layers`);
      }
      const [i, o] = projectionShape(dims, target);
      const want = which === 'A' ? [r, i] : [o, r];
      if (t.shape[0] !== want[0] || t.shape[1] !== want[1]) {
        throw new Error(`mimic: the adapter ${dir} is for another model: ${name} is [${t.shape.join(', ')}] but this model's ${target} ` +
          `(${o}×${i}) needs [${want.join(', ')}]`);
      }
    }
    targets.add(target);
    tensors[name] = t.data;
  }
  if (Object.keys(tensors).length === 0) throw new Error(`mimic: ${wFile} holds no LoRA tensors`);
  for (const name of Object.keys(tensors)) {
    const other = name.replace(/lora_([AB])\.weight$/, (_, w) => `lora_${w === 'A' ? 'B' : 'A'}.weight`);
    if (!(other in tensors)) throw new Error(`mimic: ${wFile} has ${name} without its partner ${other}`);
  }
  let alpha = Number(config.lora_alpha ?? r);
  // rsLoRA scales by alpha / sqrt(r); our engine scales by alpha / r, so fold sqrt(r) into alpha.
  if (config.use_rslora) alpha *= Math.sqrt(r);
  const order = ALL_TARGETS.filter((t) => targets.has(t));
  return { spec: { r, alpha, targets: order, dropout: Number(config.lora_dropout ?? 0) }, tensors, config };
}
