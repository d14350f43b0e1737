/**
 * Generates assets/tiny/: the small Llama checkpoint that ships with mimic for `mimic demo`,
 * the CPU benchmark and the learning tests. Deterministic: the same sizes and seed give the same
 * bytes, so the committed files can be checked by re-running this script.
 *
 *   node --import @tapjs/typescript/import scripts/make-tiny-model.ts [OUTDIR]
 *
 * Architecture as Llama-3.2 (GQA, llama3 RoPE scaling, tied embeddings, RMSNorm), sized to
 * train fast on 2 CPU cores. Weights are random (normal, std `initializer_range`, a fixed
 * seed): the demo teaches it everything it says through LoRA. The tokenizer is the byte-level
 * BPE (384 tokens, Llama-3 special tokens and chat template) of the reference fixtures.
 */
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeSafetensors, type TensorIn } from '../lib/train/safetensors.ts';
import { Rng } from '../lib/train/rng.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.resolve(process.argv[2] ?? path.join(root, 'assets', 'tiny'));
const fixture = path.join(root, 'test', 'fixtures', 'ref', 'tiny-llama');

export const TINY = {
  vocab: 384, hidden: 128, intermediate: 256, layers: 2, heads: 4, kvHeads: 2, headDim: 32,
  maxPosition: 512, initializerRange: 0.1, seed: 20240917,
};

const S = TINY;
const rng = new Rng(S.seed);
function normal(n: number, std: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    // Box–Muller from the seeded generator: platform-independent values
    const u1 = (rng.nextU32() + 1) / 4294967297, u2 = rng.next();
    const r = Math.sqrt(-2 * Math.log(u1)) * std;
    a[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < n) a[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return a;
}
const ones = (n: number) => new Float32Array(n).fill(1);

const tensors: Record<string, TensorIn> = {};
const add = (name: string, shape: number[], data: Float32Array) => { tensors[name] = { data, shape }; };
const std = S.initializerRange;
add('model.embed_tokens.weight', [S.vocab, S.hidden], normal(S.vocab * S.hidden, std));
for (let l = 0; l < S.layers; l++) {
  const p = `model.layers.${l}`;
  add(`${p}.input_layernorm.weight`, [S.hidden], ones(S.hidden));
  add(`${p}.post_attention_layernorm.weight`, [S.hidden], ones(S.hidden));
  add(`${p}.self_attn.q_proj.weight`, [S.heads * S.headDim, S.hidden], normal(S.heads * S.headDim * S.hidden, std));
  add(`${p}.self_attn.k_proj.weight`, [S.kvHeads * S.headDim, S.hidden], normal(S.kvHeads * S.headDim * S.hidden, std));
  add(`${p}.self_attn.v_proj.weight`, [S.kvHeads * S.headDim, S.hidden], normal(S.kvHeads * S.headDim * S.hidden, std));
  add(`${p}.self_attn.o_proj.weight`, [S.hidden, S.heads * S.headDim], normal(S.hidden * S.heads * S.headDim, std));
  add(`${p}.mlp.gate_proj.weight`, [S.intermediate, S.hidden], normal(S.intermediate * S.hidden, std));
  add(`${p}.mlp.up_proj.weight`, [S.intermediate, S.hidden], normal(S.intermediate * S.hidden, std));
  add(`${p}.mlp.down_proj.weight`, [S.hidden, S.intermediate], normal(S.hidden * S.intermediate, std));
}
add('model.norm.weight', [S.hidden], ones(S.hidden));

const config = {
  architectures: ['LlamaForCausalLM'], attention_bias: false, attention_dropout: 0.0, bos_token_id: 0, eos_token_id: 4,
  head_dim: S.headDim, hidden_act: 'silu', hidden_size: S.hidden, initializer_range: S.initializerRange,
  intermediate_size: S.intermediate, max_position_embeddings: S.maxPosition, mlp_bias: false, model_type: 'llama',
  num_attention_heads: S.heads, num_hidden_layers: S.layers, num_key_value_heads: S.kvHeads, pad_token_id: 4, pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 64, rope_type: 'llama3' },
  rope_theta: 500000.0, tie_word_embeddings: true, torch_dtype: 'float32', use_cache: true, vocab_size: S.vocab,
};

mkdirSync(out, { recursive: true });
writeFileSync(path.join(out, 'config.json'), JSON.stringify(config, null, 2) + '\n');
writeFileSync(path.join(out, 'generation_config.json'), JSON.stringify({ bos_token_id: 0, eos_token_id: 4, pad_token_id: 4 }, null, 2) + '\n');
writeFileSync(path.join(out, 'model.safetensors'), encodeSafetensors(tensors, { metadata: { format: 'pt' } }));
for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(path.join(fixture, f), path.join(out, f));
const params = Object.values(tensors).reduce((s, t) => s + t.data.length, 0);
console.log(`wrote ${out}: ${S.layers} layers, hidden ${S.hidden}, ${params} parameters`);
