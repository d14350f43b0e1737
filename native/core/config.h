// config — reads a Hugging Face config.json (+ generation_config.json) into LlamaConfig.
//
// Accepts model_type "llama" / architectures LlamaForCausalLM only, and refuses what the engine
// does not compute (biases, another activation, an unknown rope_type) instead of running it
// wrong. RoPE comes from `rope_parameters` (transformers >= 5) or `rope_theta` + `rope_scaling`
// (older files); head_dim defaults to hidden/heads, num_key_value_heads to num_attention_heads;
// eos_token_id may be an int or a list, and generation_config.json's eos ids are added to it.
#pragma once
#include <string>

#include "core/json.h"
#include "engine/llama.h"

namespace mimic {

// `what` names the source in error messages.
LlamaConfig parse_llama_config(const json::Value& cfg, const std::string& what);
// dir/config.json, then dir/generation_config.json when present.
LlamaConfig load_llama_config(const std::string& dir);

}  // namespace mimic
