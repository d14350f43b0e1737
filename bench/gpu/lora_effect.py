#!/usr/bin/env python3
"""The LoRA's effect on the loss at the training path's sizes, numpy vs mimic (bench/gpu/lora_effect.mjs).

    python3 bench/gpu/lora_effect.py DIR     # writes DIR (~1.3 GB), prints numpy's fp32 losses (JSON)
    node bench/gpu/lora_effect.mjs DIR       # mimic's losses on the CPU, and on CUDA (bf16 / NF4) where present

Why: round 22's 3B batch rows saw the LoRA (r 16 on all seven, B = ±0.05) move the GPU's summed loss by
0.43, where bench/gpu/grouped_forward_sensitivity.py's numpy replay of a model of the same statistics
moves it by 21.4 — and no check compares the GPU's training path at N > 64 rows (dense weights, the
grouped passes) with the CPU: the fixture's batches are 24 and 51 rows. This model is the 3B's width
with 2 layers (vocab 32,000), random like make_3b (std 0.02); A Kaiming-uniform, B = ±0.05; 2 × 128
tokens, the second half of each sequence a target (N = 256). On a 2-core CPU: ~30 s here, ~70 s each
mimic CPU leg (fp32: agrees with numpy to 1e-7, 1424.7125 / 1417.1991; NF4: 1417.4976 / 1412.7545).
Round 23 (H100): CUDA bf16 1424.7959 / 1417.3362, NF4 1417.4397 / 1412.9022 — the GPU applies the LoRA
as the CPU does; the 3B's "0.43 vs 21.4" was two different random models. Also numpy's losses with the
CUDA path's bf16 roundings, per projection and grouped: the gap MIMIC_FWD_GROUPED=1 should show.
"""
import json, os, struct, sys, numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else '/tmp/lora-effect'
os.makedirs(OUT, exist_ok=True)
C, L, HQ, HKV, D, I, V, R, S, TB, TT = 3072, 2, 24, 8, 128, 8192, 32000, 16, 2.0, 2, 128
rng = np.random.default_rng(0)
def save(path, tensors):
    hdr, off, blobs = {}, 0, []
    for k, a in tensors.items():
        b = np.ascontiguousarray(a, np.float32).tobytes(); hdr[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}; off += len(b); blobs.append(b)
    h = json.dumps(hdr).encode(); h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h))); f.write(h)
        for b in blobs: f.write(b)
W, A, B = {}, {}, {}
W['model.embed_tokens.weight'] = rng.standard_normal((V, C), dtype=np.float32) * 0.02
W['model.norm.weight'] = np.ones(C, np.float32)
names = [('self_attn', 'q_proj', HQ * D, C), ('self_attn', 'k_proj', HKV * D, C), ('self_attn', 'v_proj', HKV * D, C), ('self_attn', 'o_proj', C, HQ * D),
         ('mlp', 'gate_proj', I, C), ('mlp', 'up_proj', I, C), ('mlp', 'down_proj', C, I)]
for l in range(L):
    W[f'model.layers.{l}.input_layernorm.weight'] = np.ones(C, np.float32)
    W[f'model.layers.{l}.post_attention_layernorm.weight'] = np.ones(C, np.float32)
    for blk, p, M, K in names:
        W[f'model.layers.{l}.{blk}.{p}.weight'] = rng.standard_normal((M, K), dtype=np.float32) * 0.02
        A[f'base_model.model.model.layers.{l}.{blk}.{p}.lora_A.weight'] = rng.uniform(-1, 1, (R, K)).astype(np.float32) / np.sqrt(K)
        B[f'base_model.model.model.layers.{l}.{blk}.{p}.lora_B.weight'] = rng.integers(-1000, 1001, (M, R)).astype(np.float32) * 5e-5
save(os.path.join(OUT, 'model.safetensors'), W)
save(os.path.join(OUT, 'lora_b.safetensors'), {**A, **B})
save(os.path.join(OUT, 'lora_0.safetensors'), {**A, **{k: np.zeros_like(v) for k, v in B.items()}})
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": C, "intermediate_size": I, "num_hidden_layers": L,
           "num_attention_heads": HQ, "num_key_value_heads": HKV, "head_dim": D, "vocab_size": V, "rms_norm_eps": 1e-5, "hidden_act": "silu",
           "rope_theta": 500000.0, "tie_word_embeddings": True, "max_position_embeddings": 4096, "bos_token_id": 0, "eos_token_id": 1,
           "torch_dtype": "float32"}, open(os.path.join(OUT, 'config.json'), 'w'))
# numpy fp32 forward (the sensitivity script's maths, rounding off)
import grouped_forward_sensitivity as g
bf16 = g.bf16
g.bf16 = lambda a: np.asarray(a, np.float32)
g.TB, g.TT, g.HQ, g.HKV, g.D = TB, TT, HQ, HKV, D
ids, labels, tgt, pos = g.batch(V)
np.save(os.path.join(OUT, 'ids.npy'), ids.astype(np.int32)); np.save(os.path.join(OUT, 'labels.npy'), labels.astype(np.int32))
def loss(withB, grouped=False):
    x = W['model.embed_tokens.weight'][ids].astype(np.float32)
    for l in range(L):
        P = [(W[f'model.layers.{l}.{blk}.{p}.weight'], A[f'base_model.model.model.layers.{l}.{blk}.{p}.lora_A.weight'],
              B[f'base_model.model.model.layers.{l}.{blk}.{p}.lora_B.weight'] * (1.0 if withB else 0.0)) for blk, p, M, K in names]
        x = g.layer(x, P, pos, grouped)
    return g.summed_loss(x, W['model.embed_tokens.weight'], tgt)
out = {"numpy_loss_B": loss(True), "numpy_loss_B0": loss(False)}
# and with the CUDA path's bf16 roundings: a product a projection vs MIMIC_FWD_GROUPED=1's one rounding
# less (what the grouped forward may move the loss by on this model; lora_effect.mjs's cuda/nf4 legs)
g.bf16 = bf16
out["numpy_bf16_loss_B"], out["numpy_bf16_loss_B_grouped"] = loss(True), loss(True, grouped=True)
print(json.dumps(out))
