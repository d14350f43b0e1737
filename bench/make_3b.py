"""Llama-3.2-3B's shape with random bf16 weights, in Hugging Face layout, for the GPU checks.

    python3 bench/make_3b.py write DIR            # config.json + sharded safetensors (about 6.4 GB)
    python3 bench/make_3b.py compare DIR LOGITS   # transformers' logits of the fixed prompt vs mimic's

No download is possible on the GPU machine, so the weights are transformers' own random init
(normal, std 0.02; seeded). The fixed prompt is the one native/cuda/tests/cuda_check_main.cpp uses:
ids[i] = (i * 7919 + 13) % 128000, i < 32. LOGITS is mimic's fp32 [32, vocab] dump.
"""
import json, sys, time
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

def config():
    return LlamaConfig(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                       num_attention_heads=24, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                       rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                       bos_token_id=128000, eos_token_id=128009)

def write(d):
    t = time.time(); torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"): m = LlamaForCausalLM(config())
    torch.set_default_dtype(torch.float32)
    m.save_pretrained(d, max_shard_size="2GB")
    print(json.dumps({"what": "make_3b", "dir": d, "params": sum(p.numel() for p in m.parameters()), "s": time.time() - t}))

def compare(d, path):
    m = LlamaForCausalLM.from_pretrained(d, dtype=torch.bfloat16).cuda().eval()
    ids = torch.tensor([[(i * 7919 + 13) % 128000 for i in range(32)]], device="cuda")
    with torch.no_grad():
        ref = m(ids).logits[0].float().cpu().numpy()
        m32 = m.float()
        ref32 = m32(ids).logits[0].float().cpu().numpy()
    got = np.fromfile(path, dtype=np.float32).reshape(ref.shape)
    rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
    print(json.dumps({"what": "logits_3b_vs_transformers", "max_rel_vs_hf_bf16": rel(got, ref),
                      "max_rel_vs_hf_fp32": rel(got, ref32), "hf_bf16_vs_hf_fp32": rel(ref, ref32),
                      "argmax_agree_fp32": float((got.argmax(-1) == ref32.argmax(-1)).mean())}))
    # bf16 tolerance, stated: no further from fp32 truth than transformers' own bf16 forward is
    tol = max(2e-2, 1.1 * rel(ref, ref32))
    print("ROW %-22s | %-62s | %-10.3e | %-7.0e | %s" % ("model 3B bf16", "logits vs HF fp32 (tol: HF bf16's own error x1.1)",
          rel(got, ref32), tol, "PASS" if rel(got, ref32) <= tol else "FAIL"))
    print("ROW %-22s | %-62s | %-10.3e | %-7.0e | %s" % ("model 3B bf16", "argmax agreement with HF fp32 (1 - fraction)",
          1 - float((got.argmax(-1) == ref32.argmax(-1)).mean()), 0.25,
          "PASS" if float((got.argmax(-1) == ref32.argmax(-1)).mean()) >= 0.75 else "FAIL"))

if __name__ == "__main__":
    if sys.argv[1] == "write": write(sys.argv[2])
    else: compare(sys.argv[2], sys.argv[3])
