// config — config.json → LlamaConfig. See config.h for what is accepted and why.
#include "core/config.h"

#include <algorithm>
#include <cmath>
#include <sys/stat.h>

#include "core/error.h"

namespace mimic {
namespace {

const json::Value* member(const json::Value& o, const char* key) {
  const json::Value* v = o.find(key);
  return v && !v->is_null() ? v : nullptr;
}

int get_int(const json::Value& o, const char* key, const std::string& what, int def, bool required) {
  const json::Value* v = member(o, key);
  if (!v) {
    MIMIC_CHECK(!required, "EBADCONFIG", what, " has no \"", key, "\". Is this a transformers config.json?");
    return def;
  }
  MIMIC_CHECK(v->is_number() && v->num == std::floor(v->num) && v->num >= 0 && v->num < 2147483647.0, "EBADCONFIG",
              what, ": \"", key, "\" must be a non-negative integer, got a ", v->type_name());
  return (int)v->num;
}

double get_num(const json::Value& o, const char* key, const std::string& what, double def) {
  const json::Value* v = member(o, key);
  if (!v) return def;
  MIMIC_CHECK(v->is_number(), "EBADCONFIG", what, ": \"", key, "\" must be a number, got a ", v->type_name());
  return v->num;
}

void add_ids(std::vector<int>& out, const json::Value* v, const std::string& what, const char* key) {
  if (!v) return;
  auto add = [&](const json::Value& x) {
    MIMIC_CHECK(x.is_number() && x.num >= 0 && x.num == std::floor(x.num), "EBADCONFIG", what, ": \"", key,
                "\" must be a token id or a list of them");
    int id = (int)x.num;
    if (std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
  };
  if (v->is_array()) for (auto& x : v->arr) add(x);
  else add(*v);
}

// Reads rope settings from an object holding rope_type/type, factor, ... (rope_scaling or rope_parameters).
void read_rope_block(RopeParams& r, const json::Value& o, const std::string& what) {
  const json::Value* t = member(o, "rope_type");
  if (!t) t = member(o, "type");
  if (t) {
    MIMIC_CHECK(t->is_string(), "EBADCONFIG", what, ": rope_type must be a string");
    r.type = t->str;
  }
  MIMIC_CHECK(r.type == "default" || r.type == "llama3", "EUNSUPPORTED", what, ": rope_type \"", r.type,
              "\" is not supported (mimic computes \"default\" and \"llama3\" RoPE, as Llama 2/3 use).");
  if (member(o, "rope_theta")) r.theta = (float)get_num(o, "rope_theta", what, r.theta);
  if (r.type == "llama3") {
    r.factor = (float)get_num(o, "factor", what, r.factor);
    r.low_freq_factor = (float)get_num(o, "low_freq_factor", what, r.low_freq_factor);
    r.high_freq_factor = (float)get_num(o, "high_freq_factor", what, r.high_freq_factor);
    r.original_max_position = get_int(o, "original_max_position_embeddings", what, r.original_max_position, false);
    MIMIC_CHECK(r.factor > 0 && r.high_freq_factor != r.low_freq_factor && r.low_freq_factor > 0, "EBADCONFIG", what,
                ": llama3 rope scaling needs factor > 0 and low_freq_factor != high_freq_factor");
  }
}

}  // namespace

LlamaConfig parse_llama_config(const json::Value& j, const std::string& what) {
  MIMIC_CHECK(j.is_object(), "EBADCONFIG", what, " is not a JSON object");
  const json::Value* mt = member(j, "model_type");
  const json::Value* arch = member(j, "architectures");
  std::string archs;
  bool arch_ok = !arch;
  if (arch && arch->is_array())
    for (auto& a : arch->arr)
      if (a.is_string()) {
        archs += (archs.empty() ? "" : ", ") + a.str;
        if (a.str == "LlamaForCausalLM" || a.str == "LlamaModel") arch_ok = true;
      }
  if (!mt || !mt->is_string() || mt->str != "llama" || !arch_ok)
    fail("EUNSUPPORTED", what, " describes a ", mt && mt->is_string() ? "\"" + mt->str + "\"" : std::string("model without model_type"),
         archs.empty() ? std::string("") : " (" + archs + ")",
         " model; mimic runs Llama-architecture checkpoints only (model_type \"llama\", LlamaForCausalLM), "
         "e.g. meta-llama/Llama-3.2-3B-Instruct.");

  LlamaConfig c;
  c.vocab_size = get_int(j, "vocab_size", what, 0, true);
  c.hidden_size = get_int(j, "hidden_size", what, 0, true);
  c.intermediate_size = get_int(j, "intermediate_size", what, 0, true);
  c.num_layers = get_int(j, "num_hidden_layers", what, 0, true);
  c.num_heads = get_int(j, "num_attention_heads", what, 0, true);
  c.num_kv_heads = get_int(j, "num_key_value_heads", what, c.num_heads, false);
  MIMIC_CHECK(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.num_layers > 0 && c.num_heads > 0 &&
              c.num_kv_heads > 0, "EBADCONFIG", what, ": sizes must be positive");
  c.head_dim = get_int(j, "head_dim", what, c.hidden_size / c.num_heads, false);
  MIMIC_CHECK(c.num_heads % c.num_kv_heads == 0, "EBADCONFIG", what, ": num_attention_heads (", c.num_heads,
              ") must be a multiple of num_key_value_heads (", c.num_kv_heads, ")");
  MIMIC_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0, "EBADCONFIG", what, ": head_dim must be even and positive, got ", c.head_dim);
  c.max_position = get_int(j, "max_position_embeddings", what, 2048, false);
  c.rms_norm_eps = (float)get_num(j, "rms_norm_eps", what, 1e-6);
  const json::Value* tie = member(j, "tie_word_embeddings");
  MIMIC_CHECK(!tie || tie->is_bool(), "EBADCONFIG", what, ": tie_word_embeddings must be true or false");
  c.tie_word_embeddings = tie ? tie->b : true;  // transformers' PretrainedConfig default

  const json::Value* act = member(j, "hidden_act");
  MIMIC_CHECK(!act || (act->is_string() && act->str == "silu"), "EUNSUPPORTED", what, ": hidden_act \"",
              act && act->is_string() ? act->str : "?", "\" is not supported (Llama uses silu)");
  for (const char* k : {"attention_bias", "mlp_bias"}) {
    const json::Value* b = member(j, k);
    MIMIC_CHECK(!b || (b->is_bool() && !b->b), "EUNSUPPORTED", what, ": ", k, " = true is not supported (Llama has no biases)");
  }
  const json::Value* tp = member(j, "pretraining_tp");
  MIMIC_CHECK(!tp || (tp->is_number() && tp->num == 1), "EUNSUPPORTED", what, ": pretraining_tp > 1 is not supported");

  // RoPE: newer files put everything (theta included) in rope_parameters.
  c.rope.theta = (float)get_num(j, "rope_theta", what, 10000.0);
  if (const json::Value* rp = member(j, "rope_parameters")) {
    MIMIC_CHECK(rp->is_object(), "EBADCONFIG", what, ": rope_parameters must be an object");
    read_rope_block(c.rope, *rp, what);
  } else if (const json::Value* rs = member(j, "rope_scaling")) {
    MIMIC_CHECK(rs->is_object(), "EBADCONFIG", what, ": rope_scaling must be an object or null");
    read_rope_block(c.rope, *rs, what);
  }
  MIMIC_CHECK(c.rope.theta > 0, "EBADCONFIG", what, ": rope_theta must be positive");

  c.bos_token_id = get_int(j, "bos_token_id", what, -1, false);
  add_ids(c.eos_token_ids, member(j, "eos_token_id"), what, "eos_token_id");
  return c;
}

LlamaConfig load_llama_config(const std::string& dir) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    fail("ENOENT", "model directory ", dir, " does not exist (or is not a directory). "
         "Pass the folder that holds config.json and the .safetensors files.");
  const std::string path = dir + "/config.json";
  if (stat(path.c_str(), &st) != 0)
    fail("ENOENT", "no config.json in ", dir, ": pass a Hugging Face checkpoint directory (config.json + *.safetensors).");
  LlamaConfig c = parse_llama_config(json::parse_file(path), path);
  const std::string gen = dir + "/generation_config.json";
  if (stat(gen.c_str(), &st) == 0) {
    json::Value g = json::parse_file(gen);
    if (g.is_object()) {
      add_ids(c.eos_token_ids, member(g, "eos_token_id"), gen, "eos_token_id");
      if (c.bos_token_id < 0) c.bos_token_id = get_int(g, "bos_token_id", gen, -1, false);
    }
  }
  return c;
}

}  // namespace mimic
