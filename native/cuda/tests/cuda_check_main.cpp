// cuda_check — the GPU machine's one-stop check and benchmark binary (built when CUDA is on).
//
//   cuda_check ops                    CUDA-vs-CPU op rows (opcheck_cuda.cu), one table
//   cuda_check model <fixtures/ref>   model level on the tiny reference checkpoint: logits (fp32 and
//                                     NF4), greedy tokens with the KV cache, masked LoRA loss, every
//                                     LoRA gradient and one AdamW step, against the fixtures and the
//                                     CPU engine
//   cuda_check bench <hf dir> [steps] NF4 load, GPU memory, training 8×512 (recompute) with falling
//                                     loss, decode tokens/s, logits of a fixed prompt (logits_3b.bin)
//   cuda_check trace <hf dir> [steps] [VAR=v ...]  the batch-1 decode step's in-graph timeline:
//                                     each kernel's exposed µs (pdl.h's markers), by kind and for
//                                     layer 10; with VAR=v, an A/B alternated in one process
// Every line of the final table starts with "ROW" so check.sh can collect them. Exit code 1 when a
// row fails. Errors are mimic::Error, printed, exit code 2.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <cuda_profiler_api.h>

#include "core/error.h"
#include "core/json.h"
#include "core/opcheck.h"
#include "cuda/decode_persist.h"
#include "cuda/llama_cuda.h"
#include "engine/llama.h"
#include "engine/lora_init.h"
#include "engine/train.h"

using namespace mimic;

namespace {

struct Tensor { std::string dtype; std::vector<int64_t> shape; std::vector<uint8_t> data; };

std::map<std::string, Tensor> read_safetensors(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MIMIC_CHECK(f.good(), "ENOENT", "cannot open ", path);
  uint64_t n = 0;
  f.read((char*)&n, 8);
  std::string hdr(n, '\0');
  f.read(hdr.data(), (std::streamsize)n);
  std::vector<uint8_t> rest((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  json::Value h = json::parse(hdr, path);
  std::map<std::string, Tensor> out;
  for (auto& [k, v] : h.obj) {
    if (k == "__metadata__") continue;
    Tensor t;
    t.dtype = v.find("dtype")->str;
    for (auto& s : v.find("shape")->arr) t.shape.push_back((int64_t)s.num);
    auto& off = v.find("data_offsets")->arr;
    t.data.assign(rest.begin() + (size_t)off[0].num, rest.begin() + (size_t)off[1].num);
    out[k] = std::move(t);
  }
  return out;
}
template <class T>
std::vector<T> as(const Tensor& t) {
  std::vector<T> v(t.data.size() / sizeof(T));
  std::memcpy(v.data(), t.data.data(), t.data.size());
  return v;
}

std::vector<OpCheckRow> rows;
void add(const std::string& op, const std::string& check, double err, double tol) {
  rows.push_back({op, check, err, tol, std::isfinite(err) && err <= tol});
}
double rel(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return 1e30;
  for (float g : got) if (!std::isfinite(g)) return 1e30;
  return max_rel_err(got.data(), want.data(), (int64_t)got.size());
}
// A trainer's LoRA gradients (after DeviceTrainer::pull): all of them, and the last layer's alone.
std::pair<std::vector<float>, std::vector<float>> lora_grads(Trainer& tr, int num_layers) {
  std::vector<float> all, last;
  const std::string tail = ".layers." + std::to_string(num_layers - 1) + ".";
  for (auto& p : tr.params()) {
    all.insert(all.end(), p.g->begin(), p.g->end());
    if (p.name.find(tail) != std::string::npos) last.insert(last.end(), p.g->begin(), p.g->end());
  }
  return {all, last};
}
int print_rows() {
  int fails = 0;
  std::printf("ROW %-22s | %-62s | %-10s | %-7s | %s\n", "op", "check", "max_rel", "tol", "pass");
  for (auto& r : rows) {
    std::printf("ROW %-22s | %-62s | %-10.3e | %-7.0e | %s\n", r.op.c_str(), r.check.c_str(), r.max_rel_err, r.tol,
                r.pass ? "PASS" : "FAIL");
    fails += !r.pass;
  }
  std::printf("ROW %d rows, %d failed\n", (int)rows.size(), fails);
  return fails ? 1 : 0;
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// ---- batched decode vs stepping alone -------------------------------------------------------
// S sessions stepped alone (prefill, then the per-cache decode graph) vs together through
// cuda::decode_batch (prompts joining at staggered steps beside decoding rows; caches from the
// model's KV pool). The batch is fed each session's ALONE tokens (teacher forcing), so one differing
// token does not send the rest of a sequence elsewhere. Returns the fraction of differing tokens;
// greedy: also the mismatches among positions whose alone top-2 logit margin is > max(kMargin, 4·D),
// D = the largest |Δ logit| of one more step (compared/skipped counted); logit_rel: max |Δ| / max |ref| of one more step's logits
// (decode_batch_logits vs llama_forward, every session).
constexpr float kMargin = 1e-2f;
struct BatchCheck {
  double token_mismatch = 1.0, logit_rel = 1.0, margin_mismatch = 1.0;
  float margin_thr = 0.f;
  int tokens = 0, compared = 0, skipped = 0;
};
BatchCheck batch_vs_single(cuda::DeviceModel& gpu, const LlamaConfig& c, int S, int max_prompt, int steps, bool sampled) {
  const int V = c.vocab_size;
  uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)(S * 131 + max_prompt);
  auto rnd = [&](int k) { x = x * 6364136223846793005ull + 1442695040888963407ull; return (int)((x >> 33) % (uint64_t)k); };
  struct Plan { std::vector<int32_t> prompt; int join; SamplingParams sp; uint64_t seed; };
  std::vector<Plan> plans(S);
  for (int s = 0; s < S; ++s) {
    Plan& p = plans[s];
    p.prompt.resize(1 + rnd(max_prompt));
    for (auto& id : p.prompt) id = rnd(std::min(V, 128000));
    p.join = rnd(4);
    if (sampled) {
      p.sp.temperature = 0.7f + 0.1f * (s % 4);
      p.sp.top_k = s % 3 == 2 ? 0 : 40;
      p.sp.top_p = s % 2 ? 0.9f : 1.f;
      p.sp.repetition_penalty = s % 3 == 0 ? 1.2f : 1.f;
    } else {
      p.sp.temperature = 0.f;
    }
    p.seed = 1000 + s;
  }
  // alone (the graph's norms unfolded: the batched step runs rmsnorm_rows, and the GEMV route must
  // give the graph's bits)
  cuda::decode_norm_fold_override(0);
  struct Restore { ~Restore() { cuda::decode_norm_fold_override(-1); } } restore;
  std::vector<std::vector<int32_t>> want(S), got(S);
  std::vector<std::vector<float>> margin(S);  // alone: top1 − top2 of the logits each token came from
  auto note_margin = [&](int s, const float* last) {
    cuda::Context::get().sync();
    std::vector<float> row = cuda::download(last, (size_t)V);
    float a = -INFINITY, b2 = -INFINITY;
    for (float v : row) { if (v > a) { b2 = a; a = v; } else if (v > b2) b2 = v; }
    margin[s].push_back(a - b2);
  };
  std::vector<std::unique_ptr<cuda::DeviceKV>> alone(S);
  for (int s = 0; s < S; ++s) {
    const Plan& p = plans[s];
    alone[s] = std::make_unique<cuda::DeviceKV>();
    alone[s]->init(c, (int)p.prompt.size() + steps + 2);
    Rng rng(p.seed);
    std::vector<int32_t> hist = p.prompt;
    float* last = cuda::llama_forward(gpu, p.prompt.data(), (int)p.prompt.size(), alone[s].get(), nullptr, 1);
    if (!sampled) note_margin(s, last);
    int32_t tok = cuda::sample_token(last, V, p.sp, hist.data(), (int64_t)hist.size(), rng);
    want[s].push_back(tok); hist.push_back(tok);
    for (int i = 1; i < steps; ++i) {
      last = cuda::llama_forward(gpu, &tok, 1, alone[s].get(), nullptr, 1);
      if (!sampled) note_margin(s, last);
      tok = cuda::sample_token(last, V, p.sp, hist.data(), (int64_t)hist.size(), rng);
      want[s].push_back(tok); hist.push_back(tok);
    }
  }
  // together
  std::vector<std::shared_ptr<cuda::DeviceKV>> kvs(S);
  std::vector<Rng> rngs;
  std::vector<std::vector<int32_t>> hists(S);
  for (int s = 0; s < S; ++s) { rngs.emplace_back(plans[s].seed); hists[s] = plans[s].prompt; }
  std::vector<int32_t> one(S);
  for (int k = 0;; ++k) {
    std::vector<cuda::DeviceDecodeSeq> seqs;
    std::vector<int> who;
    bool left = false;
    for (int s = 0; s < S; ++s) {
      if ((int)got[s].size() >= steps) continue;
      left = true;
      if (plans[s].join > k) continue;
      if (!kvs[s]) kvs[s] = cuda::kv_acquire(gpu, (int)plans[s].prompt.size() + steps + 2);
      cuda::DeviceDecodeSeq q;
      q.kv = kvs[s].get();
      if (got[s].empty()) { q.ids = plans[s].prompt.data(); q.n_ids = (int)plans[s].prompt.size(); }
      else { one[s] = want[s][got[s].size() - 1]; q.ids = &one[s]; q.n_ids = 1; }  // teacher-forced
      q.params = plans[s].sp;
      q.history = hists[s].data();
      q.n_history = (int64_t)hists[s].size();
      q.rng = &rngs[s];
      seqs.push_back(q);
      who.push_back(s);
    }
    if (!left) break;
    if (seqs.empty()) continue;
    std::vector<int32_t> toks(seqs.size());
    cuda::decode_batch(gpu, seqs.data(), (int)seqs.size(), toks.data());
    for (size_t i = 0; i < who.size(); ++i) {
      const int s = who[i];
      got[s].push_back(toks[i]);
      hists[s].push_back(want[s][got[s].size() - 1]);
    }
  }
  BatchCheck r;
  // one more step: the batched logits vs each session's own
  std::vector<cuda::DeviceKV*> kp(S);
  std::vector<int32_t> ids(S);
  for (int s = 0; s < S; ++s) { kp[s] = kvs[s].get(); ids[s] = want[s].back(); }
  const float* bl = cuda::decode_batch_logits(gpu, kp.data(), ids.data(), S);
  cuda::Context::get().sync();  // download's cudaMemcpy does not wait for the non-blocking stream
  std::vector<float> b = cuda::download(bl, (size_t)S * V), a((size_t)S * V);
  for (int s = 0; s < S; ++s) cuda::llama_forward(gpu, &ids[s], 1, alone[s].get(), a.data() + (size_t)s * V, 1);
  r.logit_rel = rel(b, a);
  // greedy: compared where the alone margin exceeds 4× the largest logit difference of that step
  // (an error below D moves a top-2 gap by at most 2D), and at least kMargin
  double D = 0;
  for (size_t i = 0; i < a.size(); ++i) D = std::max(D, (double)std::fabs(b[i] - a[i]));
  const float thr = std::max(kMargin, (float)(4 * D));
  r.margin_thr = thr;
  int bad = 0, bad_m = 0;
  r.compared = r.skipped = 0;
  for (int s = 0; s < S; ++s)
    for (int i = 0; i < steps; ++i) {
      ++r.tokens;
      const bool diff = got[s][i] != want[s][i];
      bad += diff;
      if (!sampled) {
        if (margin[s][i] > thr) { ++r.compared; bad_m += diff; }
        else ++r.skipped;
      }
    }
  r.token_mismatch = (double)bad / r.tokens;
  r.margin_mismatch = sampled ? r.token_mismatch : (double)bad_m / std::max(1, r.compared);
  for (auto& kv : kvs) cuda::kv_release(std::move(kv));
  return r;
}

// The batch rows of one model: (1) the GEMV route forced for every width (MIMIC_BATCH_GEMM_MIN
// huge): tokens and logits bit for bit; (2) the default routes (dequant + cuBLAS GEMM from
// kBatchGemmMinRows rows): logits within 4e-2 of each session's own step — the 3B row's bf16 level
// (transformers' own bf16 run is 3.7e-2 from its fp32 one; the GEMM route rounds the dequantized
// weights to bf16) — and greedy tokens equal wherever the alone top-2 margin exceeds 4× the largest
// logit difference measured (then no bf16-level error can flip the argmax: tol 0). Sampled
// continuations are only reported (BATCHCHECK): near-uniform random-model distributions turn any
// last-bit difference into another draw (0.19 of tokens on the tiny model, 0.62 on the 3B, with
// the same RNG draws).
void batch_rows(cuda::DeviceModel& gpu, const LlamaConfig& c, const std::string& op, const std::string& what, int S,
                int maxp, int steps, bool with_sampled = true) {
  for (int route = 0; route < 2; ++route) {
    if (route == 0) setenv("MIMIC_BATCH_GEMM_MIN", "1000000", 1);
    else unsetenv("MIMIC_BATCH_GEMM_MIN");
    for (int sampled = 0; sampled < (with_sampled ? 2 : 1); ++sampled) {
      BatchCheck bc = batch_vs_single(gpu, c, S, maxp, steps, sampled == 1);
      const std::string tag = sampled ? " (sampled)" : " (greedy)";
      if (route == 0) {
        add(op, "GEMV route: tokens == each alone, " + what + tag, bc.token_mismatch, 0.0);
        add(op, "GEMV route: batched step logits == own step, bit for bit" + tag, bc.logit_rel, 0.0);
      } else if (!sampled) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "default route: greedy == alone where margin > %.3g (4x max |dlogit|; %d compared, %d skipped), %s",
                      bc.margin_thr, bc.compared, bc.skipped, what.c_str());
        add(op, buf, bc.margin_mismatch, 0.0);
        std::printf("BATCHCHECK %s S=%d greedy compared %d skipped %d mismatches_all %.4f logit_rel %.3e\n", op.c_str(), S,
                    bc.compared, bc.skipped, bc.token_mismatch, bc.logit_rel);
        add(op, "default route: batched step logits vs own step (rel)" + tag, bc.logit_rel, 4e-2);
      } else {
        std::printf("BATCHCHECK %s S=%d sampled differing %.4f of %d logit_rel %.3e\n", op.c_str(), S, bc.token_mismatch,
                    bc.tokens, bc.logit_rel);
      }
    }
  }
  unsetenv("MIMIC_BATCH_GEMM_MIN");
}

// ---- model level ----------------------------------------------------------------------------
// A TB × TT batch of ids (i·mul + add) mod V, the first `masked` tokens of each sequence without a label.
std::pair<std::vector<int32_t>, std::vector<int32_t>> synthetic_batch(int TB, int TT, int V, int mul, int add, int masked) {
  std::vector<int32_t> ids(TB * TT), labels(TB * TT);
  for (int i = 0; i < TB * TT; ++i) {
    ids[i] = (i * mul + add) % V;
    labels[i] = i % TT < masked ? -100 : ids[i];
  }
  return {ids, labels};
}
// The fixture's PEFT adapter (its tensors into init) and its options: r, alpha, all seven, no dropout.
TrainerOptions fixture_lora(const std::string& dir, std::map<std::string, std::vector<float>>& init) {
  auto ad = read_safetensors(dir + "/lora/adapter_model.safetensors");
  json::Value acfg = json::parse_file(dir + "/lora/adapter_config.json");
  for (auto& [k, t] : ad) init[k] = as<float>(t);
  TrainerOptions to;
  to.r = (int)acfg.find("r")->num;
  to.alpha = (float)acfg.find("lora_alpha")->num;
  to.dropout = 0.f;
  to.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return to;
}
void model_checks(const std::string& ref) {
  auto exp = read_safetensors(ref + "/expected.safetensors");
  json::Value meta = json::parse_file(ref + "/expected.json");
  const std::string dir = ref + "/tiny-llama";
  auto ids = as<int32_t>(exp["input_ids"]), labels = as<int32_t>(exp["labels"]);
  const int B = (int)exp["input_ids"].shape[0], T = (int)exp["input_ids"].shape[1];

  // the GPU loader (safetensors → GPU, NF4 quantized there) vs the CPU loader + upload
  for (int quant = 0; quant < 2; ++quant) {
    auto cpu = load_llama(dir, quant == 1);
    auto up = cuda::upload_model(*cpu);
    std::unique_ptr<LlamaModel> skel;
    auto gl = cuda::load_model(dir, quant == 1, &skel);
    int64_t bad = 0, total = 0;
    for (size_t l = 0; l < up->layers.size(); ++l)
      for (int i = 0; i < 7; ++i) {
        const cuda::DLinear &a = up->layers[l].proj[i], &b = gl->layers[l].proj[i];
        auto cmp = [&](const auto& x, const auto& y) {
          auto hx = cuda::download(x.p, x.n), hy = cuda::download(y.p, y.n);
          total += (int64_t)hx.size();
          if (hx.size() != hy.size()) { bad += (int64_t)hx.size(); return; }
          bad += bits_differ(hx.data(), hy.data(), hx.size());
        };
        if (quant) {
          cmp(a.nf4.packed, b.nf4.packed); cmp(a.nf4.absmax_u8, b.nf4.absmax_u8); cmp(a.nf4.absmax2, b.nf4.absmax2);
          total += 1; bad += a.nf4.offset != b.nf4.offset;
        } else {
          cmp(a.W, b.W);
        }
      }
    { auto x = cuda::download(up->embed.p, up->embed.n), y = cuda::download(gl->embed.p, gl->embed.n);
      total += (int64_t)x.size(); bad += bits_differ(x.data(), y.data(), std::min(x.size(), y.size())); }
    add(quant ? "load nf4" : "load bf16", std::string("GPU loader == CPU load_llama + upload, bytes") +
        (quant ? " (NF4 quantized on the GPU)" : ""), total ? (double)bad / total : 1.0, 0.0);
    bool shapes = skel->layers.size() == cpu->layers.size() && skel->final_norm == cpu->final_norm;
    add(quant ? "load nf4" : "load bf16", "skeleton: config, norms and shapes as load_llama", shapes ? 0.0 : 1.0, 0.0);
  }
  for (int quant = 0; quant < 2; ++quant) {
    auto cpu = load_llama(dir, quant == 1);
    auto gpu = cuda::upload_model(*cpu);
    const int64_t V = cpu->cfg.vocab_size;
    std::vector<float> got, want_cpu;
    for (int b = 0; b < B; ++b) {
      std::vector<float> g((size_t)T * V), c((size_t)T * V);
      cuda::llama_forward(*gpu, ids.data() + (size_t)b * T, T, nullptr, g.data(), T);
      llama_forward(*cpu, ids.data() + (size_t)b * T, T, nullptr, c.data(), T);
      got.insert(got.end(), g.begin(), g.end());
      want_cpu.insert(want_cpu.end(), c.begin(), c.end());
    }
    const std::string key = quant ? "nf4_model_logits" : "logits";
    add(quant ? "model nf4" : "model fp32", "logits vs transformers (" + key + ")", rel(got, as<float>(exp[key])),
        quant ? 2e-2 : 1e-2);
    add(quant ? "model nf4" : "model fp32", "logits vs CPU engine", rel(got, want_cpu), 1e-2);
    // KV-cached decode: prompt then one token at a time must equal the full forward
    // (T = 1 steps run as the captured decode graph with fused GEMVs; the eager path is checked too)
    for (int eager = 0; eager < 2; ++eager) {
      if (eager) setenv("MIMIC_DECODE_GRAPH", "0", 1);
      cuda::DeviceKV kv;
      kv.init(cpu->cfg, T);
      std::vector<float> inc((size_t)T * V);
      cuda::llama_forward(*gpu, ids.data(), 5, &kv, inc.data(), 5);
      for (int t = 5; t < T; ++t) cuda::llama_forward(*gpu, ids.data() + t, 1, &kv, inc.data() + (size_t)t * V, 1);
      std::vector<float> full(got.begin(), got.begin() + (size_t)T * V);
      add(quant ? "model nf4" : "model fp32", std::string("KV-cached decode (5 + 1x7) vs full forward") +
          (eager ? " (eager, no graph)" : " (decode graph)"), rel(inc, full), 1e-2);
      if (eager) unsetenv("MIMIC_DECODE_GRAPH");
    }
    {  // the decode graph recorded two ways that must give the same logits bit for bit: with
       // programmatic dependent launches (pdl.h) or without (the same kernels and order: a missing
       // griddepcontrol.wait shows here), and with RoPE + the KV append folded into the q/k/v launch
       // (gemv_tc_qkv_rope) or as rope_append (row_maths.cuh's arithmetic either way)
      auto decode_run = [&](void (*override)(int), int mode, int norm_fold = -1) {
        override(mode);
        if (norm_fold >= 0) cuda::decode_norm_fold_override(norm_fold);
        cuda::DeviceKV kv;
        kv.init(cpu->cfg, T);
        std::vector<float> out((size_t)T * V, 0.f);
        cuda::llama_forward(*gpu, ids.data(), 5, &kv, out.data(), 5);
        for (int t = 5; t < T; ++t) cuda::llama_forward(*gpu, ids.data() + t, 1, &kv, out.data() + (size_t)t * V, 1);
        override(-1);
        cuda::decode_norm_fold_override(-1);
        return out;
      };
      const std::string m = quant ? "model nf4" : "model fp32";
      add(m, "decode graph with PDL == without, bit for bit (5 + 1x7)",
          rel(decode_run(cuda::decode_pdl_override, 1), decode_run(cuda::decode_pdl_override, 0)), 0.0);
      add(m, "decode graph, RoPE + KV append in the q/k/v gemv == apart, bit for bit (5 + 1x7)",
          rel(decode_run(cuda::decode_fuse_override, 1, 0), decode_run(cuda::decode_fuse_override, 0, 0)), 0.0);
      // the norms folded into q/k/v and gate/up (GemvNorm: the scale after the products) — not the
      // same bits as the rmsnorm launches, the same error class
      add(m, "decode graph, RMSNorm folded into q/k/v and gate/up vs rmsnorm launches (5 + 1x7, rel)",
          rel(decode_run(cuda::decode_norm_fold_override, 1), decode_run(cuda::decode_norm_fold_override, 0)), 1e-2);
    }
    // batched decode (decode_batch_cuda.cu) vs each session alone: 20 sessions (two GEMV row blocks),
    // prompts up to 300 tokens (attention over more than one 256-key chunk), staggered joins
    {
      const int maxp = std::min(300, cpu->cfg.max_position > 0 ? cpu->cfg.max_position - 16 : 300);
      batch_rows(*gpu, cpu->cfg, quant ? "batch nf4" : "batch fp32", "20 sessions", 20, maxp, 6);
    }
    if (quant) {  // with a LoRA adapter on q and down (LoRA A launches + B epilogues over row blocks)
      auto cpu3 = load_llama(dir, true);
      for (int l = 0; l < cpu3->cfg.num_layers; ++l)
        for (Linear* L : {&cpu3->layers[l].q, &cpu3->layers[l].down}) {
          L->lora = lora_init(L->M, L->K, 4, 8.f, 77 + l);
          uint64_t z = 99 + l;
          for (auto& b : L->lora->B) { z = z * 6364136223846793005ull + 1; b = ((int)((z >> 40) % 2001) - 1000) * 2e-5f; }
        }
      auto gpu3 = cuda::upload_model(*cpu3);
      batch_rows(*gpu3, cpu3->cfg, "batch nf4", "18 sessions, LoRA r=4 on q/down", 18, 40, 6, false);
      // the LoRA decode's shortcuts (the A products staged before the wait, q/k/v's and gate/up's in
      // the norm's launch, o's and down's in the product's own launch; B staged in shared memory)
      // against the separate launches they replace: the same bits (the norms unfolded); and the
      // default step — the norms folded into q/k/v and gate/up with their A products in the same
      // launch — against them, to a tolerance (gemv_tc.h, GemvNorm)
      auto lora_run = [&](int mode) {  // 0 separate launches, 1 the shortcuts unfolded, 2 the default
        if (mode == 0) { setenv("MIMIC_DECODE_LORA_A", "0", 1); setenv("MIMIC_DECODE_LORA_IN", "0", 1); setenv("MIMIC_GEMV_TC_LORA_SMEM", "0", 1); }
        cuda::decode_norm_fold_override(mode == 2 ? -1 : 0);
        cuda::decode_graph_invalidate();
        const int T = 12;
        const int64_t V = cpu3->cfg.vocab_size;
        std::vector<int32_t> ids(T);
        for (int i = 0; i < T; ++i) ids[i] = (int32_t)((i * 7 + 3) % V);
        cuda::DeviceKV kv;
        kv.init(cpu3->cfg, T);
        std::vector<float> out((size_t)T * V, 0.f);
        cuda::llama_forward(*gpu3, ids.data(), 5, &kv, out.data(), 5);
        for (int t = 5; t < T; ++t) cuda::llama_forward(*gpu3, ids.data() + t, 1, &kv, out.data() + (size_t)t * V, 1);
        unsetenv("MIMIC_DECODE_LORA_A"); unsetenv("MIMIC_DECODE_LORA_IN"); unsetenv("MIMIC_GEMV_TC_LORA_SMEM");
        cuda::decode_norm_fold_override(-1);
        cuda::decode_graph_invalidate();
        return out;
      };
      const std::vector<float> sep = lora_run(0);
      add("batch nf4", "LoRA decode graph: A in the norm / o / down launches, B staged == separate launches, bit for bit (5 + 1x7)",
          rel(lora_run(1), sep), 0.0);
      add("batch nf4", "LoRA decode graph, default (norms folded, every A in its product's launch) vs separate launches (5 + 1x7, rel)",
          rel(lora_run(2), sep), 1e-2);
    }
    if (!quant) {
      // greedy continuation
      auto prompt = as<int32_t>(exp["greedy_prompt"]), want = as<int32_t>(exp["greedy_out"]);
      cuda::DeviceKV kv2;
      kv2.init(cpu->cfg, 64);
      std::vector<int32_t> out;
      float* last = cuda::llama_forward(*gpu, prompt.data(), (int)prompt.size(), &kv2, nullptr, 1);
      SamplingParams greedy;
      greedy.temperature = 0.f;
      Rng rng(1);
      for (size_t i = 0; i < want.size(); ++i) {
        int32_t tok = cuda::sample_token(last, V, greedy, nullptr, 0, rng);
        out.push_back(tok);
        last = cuda::llama_forward(*gpu, &tok, 1, &kv2, nullptr, 1);
      }
      int same = 0;
      while (same < (int)want.size() && out[same] == want[same]) ++same;
      add("model fp32", "greedy 16 tokens: " + std::to_string(same) + "/16 equal to HF (prefix)",
          1.0 - same / (double)want.size(), 0.0);
    }
    // LoRA: loss, grads, one AdamW step (fp32 base only: the fixture's LoRA run is fp32)
    if (!quant) {
      std::map<std::string, std::vector<float>> init;
      TrainerOptions to = fixture_lora(dir, init);
      for (int recompute = 0; recompute < 2; ++recompute) {
        to.recompute = recompute;
        auto cpu2 = load_llama(dir, false);
        auto gpu2 = cuda::upload_model(*cpu2);
        Trainer tr(*cpu2, to, &init);
        cuda::DeviceTrainer dt(*gpu2, tr);
        LossSum ls = dt.accumulate(ids.data(), labels.data(), B, T);
        const double loss = ls.loss_sum / ls.tokens, want_loss = meta.find("lora_loss")->num;
        const std::string tag = recompute ? " (recompute)" : "";
        add("train lora", "masked loss vs PEFT" + tag, std::fabs(loss - want_loss) / std::fabs(want_loss), 1e-2);
        dt.pull();
        std::vector<float> g_all, w_all;
        for (auto& p : tr.params()) {
          std::string key = "grad." + p.name.substr(std::string("base_model.model.").size());
          auto it = exp.find(key);
          MIMIC_CHECK(it != exp.end(), "EINVAL", "fixture lacks ", key);
          auto w = as<float>(it->second);
          for (size_t i = 0; i < w.size(); ++i) { g_all.push_back((*p.g)[i] / ls.tokens); w_all.push_back(w[i]); }
        }
        add("train lora", "all LoRA grads vs PEFT (" + std::to_string(tr.params().size()) + " tensors)" + tag,
            rel(g_all, w_all), 2e-2);
        StepOptions so;
        so.adamw.lr = 1e-2f; so.adamw.weight_decay = 0.f;
        so.grad_scale = 1.f / ls.tokens;
        dt.step(so);
        dt.pull();
        // Adam's first step moves each parameter by about lr·sign(g): where PEFT's gradient is
        // within bf16 noise of zero the sign is a coin toss, so those elements are reported apart.
        std::vector<float> p_all, pw_all, p_sig, pw_sig;
        float gmax = 0.f;
        for (float g : w_all) gmax = std::max(gmax, std::fabs(g));
        size_t gi = 0;
        for (auto& p : tr.params()) {
          auto w = as<float>(exp["after_adamw." + p.name.substr(std::string("base_model.model.").size())]);
          for (size_t i = 0; i < w.size(); ++i, ++gi) {
            p_all.push_back((*p.p)[i]); pw_all.push_back(w[i]);
            if (std::fabs(w_all[gi]) > 1e-2f * gmax) { p_sig.push_back((*p.p)[i]); pw_sig.push_back(w[i]); }
          }
        }
        std::printf("INFO AdamW step, all elements: max_rel %.3e (%zu of %zu elements have |g| > 1%% of max)\n",
                    rel(p_all, pw_all), p_sig.size(), p_all.size());
        add("train lora", "params after AdamW vs torch, |g_ref| > 1% max" + tag, rel(p_sig, pw_sig), 1e-2);
        LossSum ev = dt.evaluate(ids.data(), labels.data(), B, T);
        add("train lora", "loss falls after the step (eval " + std::to_string(ev.loss_sum / ev.tokens) + ")" + tag,
            ev.loss_sum / ev.tokens < loss ? 0.0 : 1.0, 0.0);
        if (!recompute) {  // the trained adapter in the decode graph (LoRA A launch + B epilogue) vs full forward
          const int64_t V = cpu2->cfg.vocab_size;
          std::vector<float> full((size_t)T * V), inc((size_t)T * V);
          cuda::llama_forward(*gpu2, ids.data(), T, nullptr, full.data(), T);
          cuda::DeviceKV kv;
          kv.init(cpu2->cfg, T);
          cuda::llama_forward(*gpu2, ids.data(), 3, &kv, inc.data(), 3);
          for (int t = 3; t < T; ++t) cuda::llama_forward(*gpu2, ids.data() + t, 1, &kv, inc.data() + (size_t)t * V, 1);
          add("train lora", "KV-cached decode with the trained LoRA (3 + 1x5, decode graph) vs full forward",
              rel(inc, full), 1e-2);
        }
      }
    }
  }
  // The training path of real batches — N > 64 rows: dense weights, one dequantize a layer, the grouped
  // backward, the recompute's kept attention and its skipped down product — against the CPU trainer on
  // the same model and adapter (the fixture's own batch, 24 rows, takes the GEMV / small-GEMM routes
  // instead). 4 × 40 tokens, the first 10 of each sequence masked; the fixture's PEFT adapter (nonzero B).
  {
    std::map<std::string, std::vector<float>> init;
    TrainerOptions to = fixture_lora(dir, init);
    const int TB = 4, TT = 40;
    for (int quant = 0; quant < 2; ++quant)
      for (int recompute = 0; recompute < 2; ++recompute) {
        to.recompute = recompute;
        auto cpu1 = load_llama(dir, quant == 1), cpu2 = load_llama(dir, quant == 1);
        const auto batch = synthetic_batch(TB, TT, cpu1->cfg.vocab_size, 37, 11, 10);
        const std::vector<int32_t>& tids = batch.first; const std::vector<int32_t>& tlab = batch.second;
        Trainer tc(*cpu1, to, &init);
        const LossSum lc = tc.accumulate(tids.data(), tlab.data(), TB, TT);
        auto gpu2 = cuda::upload_model(*cpu2);
        Trainer tg(*cpu2, to, &init);
        cuda::DeviceTrainer dg(*gpu2, tg);
        const LossSum lg = dg.accumulate(tids.data(), tlab.data(), TB, TT);
        dg.pull();
        const std::vector<float> gc = lora_grads(tc, cpu1->cfg.num_layers).first, gg = lora_grads(tg, cpu2->cfg.num_layers).first;
        const std::string tag = std::string(quant ? " (NF4" : " (fp32") + (recompute ? ", recompute)" : ")");
        add("train N>64", "loss, GPU vs the CPU trainer, 4x40 tokens (rel)" + tag,
            std::fabs(lg.loss_sum - lc.loss_sum) / std::fabs(lc.loss_sum), 1e-2);
        add("train N>64", "all LoRA grads, GPU vs the CPU trainer (rel)" + tag, rel(gg, gc), 2e-2);
        if (quant == 1) {  // the grouped forward (MIMIC_FWD_GROUPED=1: LoRA B inside the base products), same bar
          setenv("MIMIC_FWD_GROUPED", "1", 1);
          dg.zero_grad();
          const LossSum lf = dg.accumulate(tids.data(), tlab.data(), TB, TT);
          unsetenv("MIMIC_FWD_GROUPED");
          dg.pull();
          const std::vector<float> gf = lora_grads(tg, cpu2->cfg.num_layers).first;
          // (the same loss bits as per projection would mean the grouped forward was not taken)
          std::printf("GROUPED FWD fixture%s: loss CPU %.17g, GPU per projection %.17g, grouped %.17g\n", tag.c_str(),
                      lc.loss_sum, lg.loss_sum, lf.loss_sum);
          add("train N>64", "grouped forward: loss, GPU vs the CPU trainer (rel)" + tag,
              std::fabs(lf.loss_sum - lc.loss_sum) / std::fabs(lc.loss_sum), 1e-2);
          add("train N>64", "grouped forward: all LoRA grads, GPU vs the CPU trainer (rel)" + tag, rel(gf, gc), 2e-2);
        }
        if (!recompute) continue;
        // a disposed trainer's workspace (every layer's activations, the kept attention) is freed, and
        // the next call makes it again: the same loss, bit for bit
        cuda::release_workspace(*gpu2);
        const bool freed = gpu2->ws == nullptr;
        dg.zero_grad();
        const LossSum l2 = dg.accumulate(tids.data(), tlab.data(), TB, TT);
        add("train N>64", "workspace released (freed), then made again: loss bit for bit (differing)" + tag,
            (freed ? 0.0 : 1.0) + (bits_differ(&l2.loss_sum, &lg.loss_sum, 1) ? 1.0 : 0.0), 0.0);
      }
  }
  // LoRA dropout on the GPU path (finetune()'s default p = 0.05; the rows above and the fixtures run
  // p = 0). The CPU trainer draws its masks from another stream, so the GPU is checked against itself:
  // p = 1e-6 drops nothing (u < p for ~1 value in 10⁶) but runs every masked kernel — the dropped copy
  // of x, dA from it, dropout' of the LoRA half of dx — so it must give p = 0's numbers (a product a
  // projection, as the masked route is); p = 0.1 must change the loss, and the recompute must rebuild
  // the same masks (loss and grads as without it); and, NF4, the grouped backward with the masks
  // (MIMIC_BWD_GROUPED_DROPOUT=1) against a product a projection. 4 × 40 tokens, fp32 and NF4: 12 rows.
  {
    std::map<std::string, std::vector<float>> init;
    const TrainerOptions base = fixture_lora(dir, init);
    const int TB = 4, TT = 40;
    for (int quant = 0; quant < 2; ++quant) {
      auto cpu = load_llama(dir, quant == 1);
      auto gpu = cuda::upload_model(*cpu);
      const auto batch = synthetic_batch(TB, TT, cpu->cfg.vocab_size, 41, 3, 10);
      const std::vector<int32_t>& tids = batch.first; const std::vector<int32_t>& tlab = batch.second;  // (captured by run: C++17 lambdas take no bindings)
      // grouped: MIMIC_BWD_GROUPED_DROPOUT=1 (group_backward with the masks), else a product a projection
      auto run = [&](float p, bool recompute, bool grouped = false) {
        TrainerOptions o = base;
        o.dropout = p; o.recompute = recompute; o.seed = 7;
        Trainer t(*cpu, o, &init);
        cuda::DeviceTrainer dt(*gpu, t);
        if (grouped) setenv("MIMIC_BWD_GROUPED_DROPOUT", "1", 1);
        else setenv("MIMIC_BWD_GROUPED", "0", 1);  // (p = 0's route as the masked one: a product a projection)
        const LossSum ls = dt.accumulate(tids.data(), tlab.data(), TB, TT);
        unsetenv("MIMIC_BWD_GROUPED");
        unsetenv("MIMIC_BWD_GROUPED_DROPOUT");
        dt.pull();
        return std::make_pair(ls.loss_sum, lora_grads(t, cpu->cfg.num_layers).first);
      };
      const auto p0 = run(0.f, true), tiny = run(1e-6f, true), d_rc = run(0.1f, true), d_no = run(0.1f, false);
      const std::string tag = quant ? " (NF4)" : " (fp32)";
      std::printf("DROPOUT fixture%s: loss p=0 %.9g, p=1e-6 %.9g, p=0.1 %.9g (no recompute %.9g)\n", tag.c_str(), p0.first,
                  tiny.first, d_rc.first, d_no.first);
      add("train dropout", "p = 1e-6 vs p = 0: loss (rel)" + tag, std::fabs(tiny.first - p0.first) / std::fabs(p0.first), 1e-5);
      // (the masked route rounds the LoRA half of dx, dh·A, to bf16 before adding it — p = 0 adds it in the
      // product's fp32 — so the lower layers' grads differ at bf16 level: half the GPU-vs-CPU bar above;
      // a fault in the masked kernels, stale buffers or a missing accumulate, moves them by O(1))
      add("train dropout", "p = 1e-6 vs p = 0: all LoRA grads (rel)" + tag, rel(tiny.second, p0.second), 1e-2);
      add("train dropout", "p = 0.1 changes the loss (1: it does not)" + tag, d_rc.first != p0.first ? 0.0 : 1.0, 0.0);
      // (other masks would move the grads by O(1); the routes' own roundings — a dequantize per layer or
      // per product — stay far below 1e-3)
      add("train dropout", "p = 0.1: recompute vs no recompute (the same masks rebuilt), loss (rel)" + tag,
          std::fabs(d_rc.first - d_no.first) / std::fabs(d_no.first), 1e-5);
      add("train dropout", "p = 0.1: recompute vs no recompute, all LoRA grads (rel)" + tag, rel(d_rc.second, d_no.second), 1e-3);
      if (!quant) continue;  // (group_backward needs the NF4 layer's dense block)
      // the grouped backward with the masks (MIMIC_BWD_GROUPED_DROPOUT=1, opt-in): the same forward (loss
      // bit for bit) and each member's own mask, so the grads within the grouped route's roundings
      const auto gd = run(0.1f, true, true);
      std::printf("DROPOUT fixture (NF4): grouped backward with masks, loss %.9g\n", gd.first);
      add("train dropout", "p = 0.1, grouped backward with the masks: loss == a product a projection's (differing)" + tag,
          bits_differ(&gd.first, &d_rc.first, 1) ? 1.0 : 0.0, 0.0);
      add("train dropout", "p = 0.1, grouped backward with the masks vs a product a projection: all LoRA grads (rel)" + tag,
          rel(gd.second, d_rc.second), 1e-2);
    }
  }
}

// ---- the 3B shape ---------------------------------------------------------------------------
// A LoRA adapter of rank r (0: none) on all seven projections of every layer, PEFT's A init and
// a small nonzero B (B = 0 would be the base model's numbers), synced to the GPU model: decode as a
// fine-tuned model runs it (issue 6's training shape: r = 16 on all seven).
void attach_lora(LlamaModel& cpu, cuda::DeviceModel& gpu, int r) {
  for (int l = 0; l < cpu.cfg.num_layers; ++l) {
    LlamaLayer& Ly = cpu.layers[l];
    Linear* ps[7] = {&Ly.q, &Ly.k, &Ly.v, &Ly.o, &Ly.gate, &Ly.up, &Ly.down};
    for (int i = 0; i < 7; ++i) {
      if (r <= 0) { ps[i]->lora.reset(); continue; }
      ps[i]->lora = lora_init(ps[i]->M, ps[i]->K, r, 2.f * r, lora_stream_seed(41, l, i));
      uint64_t z = 1000 + 7 * l + i;
      for (auto& b : ps[i]->lora->B) { z = z * 6364136223846793005ull + 1; b = ((int)((z >> 40) % 2001) - 1000) * 2e-5f; }
    }
  }
  cuda::sync_lora_to_device(gpu, cpu);
}

void bench(const std::string& dir, int steps, const std::string& out_dir) {
  cuda::Context& ctx = cuda::Context::get();
  std::printf("device: %s, %d SMs, %.1f GiB\n", ctx.name, ctx.sm_count, ctx.total_mem / 1073741824.0);
  const size_t base_used = cuda::device_memory_used();
  double t0 = now();
  std::unique_ptr<LlamaModel> cpu;
  auto gpu = cuda::load_model(dir, true, &cpu);  // safetensors → GPU, NF4 quantized on the GPU
  ctx.sync();
  double t1 = now();
  std::unique_ptr<LlamaModel> cpu2;
  auto gpu2 = cuda::load_model(dir, true, &cpu2);
  ctx.sync();
  double t2 = now();
  gpu2.reset();
  const size_t after_load = cuda::device_memory_used();
  std::printf("BENCH load_gpu_nf4_s %.2f (second %.2f) weights_GiB %.3f device_used_GiB %.3f\n", t1 - t0, t2 - t1,
              gpu->weight_bytes / 1073741824.0, (after_load - base_used) / 1073741824.0);
  const LlamaConfig& c = cpu->cfg;
  // logits of a fixed prompt, for the transformers comparison (make_3b.py --compare)
  {
    std::vector<int32_t> prompt(32);
    for (int i = 0; i < 32; ++i) prompt[i] = (i * 7919 + 13) % 128000;
    std::vector<float> lg((size_t)32 * c.vocab_size);
    cuda::llama_forward(*gpu, prompt.data(), 32, nullptr, lg.data(), 32);
    std::ofstream f(out_dir + "/logits_3b_nf4.bin", std::ios::binary);
    f.write((const char*)lg.data(), sizeof(float) * lg.size());
  }
  // decode: 32-token prompt, 128 greedy tokens
  {
    cuda::DeviceKV kv;
    kv.init(c, 256);
    std::vector<int32_t> prompt(32);
    for (int i = 0; i < 32; ++i) prompt[i] = (i * 31 + 7) % 128000;
    SamplingParams sp;
    Rng rng(7);
    float* last = cuda::llama_forward(*gpu, prompt.data(), 32, &kv, nullptr, 1);
    int32_t tok = cuda::sample_token(last, c.vocab_size, sp, nullptr, 0, rng);
    for (int i = 0; i < 8; ++i) { last = cuda::llama_forward(*gpu, &tok, 1, &kv, nullptr, 1); tok = cuda::sample_token(last, c.vocab_size, sp, nullptr, 0, rng); }
    const int n = 128;
    // three variants in one process, same cache length range: the eager path of rounds 1-2
    // (dequantize + cuBLAS), fused GEMVs launched eagerly, and the captured decode graph
    const char* names[3] = {"decode_tok_s_dequant_cublas", "decode_tok_s_gemv_eager", "decode_tok_s"};
    const int start_len = kv.len;
    for (int variant = 0; variant < 3; ++variant) {
      if (variant == 0) setenv("MIMIC_NF4_GEMV", "0", 1); else unsetenv("MIMIC_NF4_GEMV");
      if (variant == 1) setenv("MIMIC_DECODE_GRAPH", "0", 1); else unsetenv("MIMIC_DECODE_GRAPH");
      kv.len = start_len;
      for (int i = 0; i < 4; ++i) { last = cuda::llama_forward(*gpu, &tok, 1, &kv, nullptr, 1); tok = cuda::sample_token(last, c.vocab_size, sp, nullptr, 0, rng); }
      double a = now();
      for (int i = 0; i < n; ++i) {
        last = cuda::llama_forward(*gpu, &tok, 1, &kv, nullptr, 1);
        tok = cuda::sample_token(last, c.vocab_size, sp, nullptr, 0, rng);
      }
      double b = now();
      std::printf("BENCH %s %.1f (batch 1, top-k 40 sampling, %d tokens, cache %d..%d; bytes/token ~%.2f GB)\n",
                  names[variant], n / (b - a), n, start_len, kv.len, gpu->weight_bytes / 1e9);
    }
    unsetenv("MIMIC_NF4_GEMV"); unsetenv("MIMIC_DECODE_GRAPH");
    // pure step time of the graph (greedy: the argmax + 4-byte copy, no top-k)
    {
      SamplingParams g0; g0.temperature = 0.f;
      kv.len = start_len;
      for (int i = 0; i < 4; ++i) { last = cuda::llama_forward(*gpu, &tok, 1, &kv, nullptr, 1); tok = cuda::sample_token(last, c.vocab_size, g0, nullptr, 0, rng); }
      double a = now();
      for (int i = 0; i < n; ++i) { last = cuda::llama_forward(*gpu, &tok, 1, &kv, nullptr, 1); tok = cuda::sample_token(last, c.vocab_size, g0, nullptr, 0, rng); }
      std::printf("BENCH decode_tok_s_greedy %.1f\n", n / (now() - a));
      // the same greedy steps with a LoRA adapter of rank 16 on all seven projections: a fine-tuned
      // model as mimic serves it (the A products and the B epilogues inside the graph)
      attach_lora(*cpu, *gpu, 16);
      kv.len = start_len;
      for (int i = 0; i < 4; ++i) { last = cuda::llama_forward(*gpu, &tok, 1, &kv, nullptr, 1); tok = cuda::sample_token(last, c.vocab_size, g0, nullptr, 0, rng); }
      a = now();
      for (int i = 0; i < n; ++i) { last = cuda::llama_forward(*gpu, &tok, 1, &kv, nullptr, 1); tok = cuda::sample_token(last, c.vocab_size, g0, nullptr, 0, rng); }
      std::printf("BENCH decode_tok_s_lora16_greedy %.1f (LoRA r=16 on all seven projections)\n", n / (now() - a));
      attach_lora(*cpu, *gpu, 0);
    }
    // time to first token, 100-token prompt (prefill + the first sample)
    {
      cuda::DeviceKV kv4;
      kv4.init(c, 256);
      std::vector<int32_t> p100(100);
      for (int i = 0; i < 100; ++i) p100[i] = (i * 13 + 5) % 128000;
      cuda::llama_forward(*gpu, p100.data(), 100, &kv4, nullptr, 1);
      ctx.sync();
      double best = 1e9;
      for (int rep = 0; rep < 3; ++rep) {
        kv4.len = 0;
        double a = now();
        float* lg = cuda::llama_forward(*gpu, p100.data(), 100, &kv4, nullptr, 1);
        cuda::sample_token(lg, c.vocab_size, sp, nullptr, 0, rng);
        best = std::min(best, now() - a);
      }
      std::printf("BENCH ttft100_ms %.2f\n", best * 1e3);
    }
    // prefill 512: the first (cold: cache allocation, cuBLAS's first pick for M = 512) and the best
    // of 3 warm runs into the same cache
    double pa = now();
    cuda::DeviceKV kv3;
    kv3.init(c, 512);
    std::vector<int32_t> p512(512);
    for (int i = 0; i < 512; ++i) p512[i] = (i * 17 + 3) % 128000;
    cuda::llama_forward(*gpu, p512.data(), 512, &kv3, nullptr, 1);
    ctx.sync();
    const double cold = now() - pa;
    double warm = 1e9;
    for (int rep = 0; rep < 3; ++rep) {
      kv3.len = 0;
      const double a = now();
      cuda::llama_forward(*gpu, p512.data(), 512, &kv3, nullptr, 1);
      ctx.sync();
      warm = std::min(warm, now() - a);
    }
    std::printf("BENCH prefill512_tok_s %.0f (cold %.0f)\n", 512 / warm, 512 / cold);
  }
  // training: 8 × 512 (recompute on, then off) and 2 × 512 (recompute on), prompt half masked,
  // r = 16 on all seven projections, no LoRA dropout (as the peer); then 8 × 512 with finetune()'s
  // default dropout of 0.05 (the masked route: a product a projection — group_backward needs p = 0),
  // and the same with MIMIC_BWD_GROUPED_DROPOUT=1 (group_backward with the masks; opt-in)
  struct TrainRun { int B, recompute; float dropout; bool grouped_masks; };
  const TrainRun train_runs[] = {{8, 1, 0.f, false}, {8, 0, 0.f, false}, {2, 1, 0.f, false}, {8, 1, 0.05f, false}, {8, 1, 0.05f, true}};
  for (auto [B, recompute, dropout, grouped_masks] : train_runs) {
    if (grouped_masks) setenv("MIMIC_BWD_GROUPED_DROPOUT", "1", 1);
    TrainerOptions to;
    to.r = 16; to.alpha = 32.f; to.dropout = dropout; to.seed = 1; to.recompute = recompute;
    to.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    Trainer tr(*cpu, to);
    cuda::DeviceTrainer dt(*gpu, tr);
    const int T = 512;
    // synthetic data: a few fixed sequences with a learnable pattern
    std::vector<int32_t> ids((size_t)B * T), labels((size_t)B * T);
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t) {
        ids[(size_t)b * T + t] = (int32_t)((b * 1000 + (t % 37) * 11 + 100) % 128000);
        labels[(size_t)b * T + t] = t < T / 2 ? -100 : ids[(size_t)b * T + t];
      }
    StepOptions so;
    so.adamw.lr = recompute ? 1e-3f : 1e-3f;
    so.max_grad_norm = 1.f;
    const int n_steps = recompute ? steps : 4;
    double first = 0, last = 0, tstart = 0;
    for (int s = 0; s < n_steps; ++s) {
      if (s == 2) { ctx.sync(); tstart = now(); }
      LossSum ls = dt.accumulate(ids.data(), labels.data(), B, T);
      so.grad_scale = 1.f / ls.tokens;
      double gn = dt.step(so);
      const double loss = ls.loss_sum / ls.tokens;
      if (s == 0) first = loss;
      last = loss;
      if (recompute && (s < 3 || s % 10 == 0 || s == n_steps - 1))
        std::printf("step %d loss %.4f grad_norm %.3f\n", s, loss, gn);
    }
    ctx.sync();
    const double tps = (double)B * T * (n_steps - 2) / (now() - tstart);
    unsetenv("MIMIC_BWD_GROUPED_DROPOUT");
    // (a dropout run's name never reads "recompute=N tok_s": bench/gpu/round3.mjs takes the first such line as the 8 × 512 run)
    char name[96];
    if (dropout > 0.f)
      std::snprintf(name, sizeof name, "train_%dx512_dropout=%.2f_recompute_%d%s", B, dropout, recompute, grouped_masks ? "_grouped_masks" : "");
    else
      std::snprintf(name, sizeof name, "train_%dx512_recompute=%d", B, recompute);
    std::printf("BENCH %s tok_s %.0f peak_device_GiB %.2f loss %.4f -> %.4f\n", name, tps, dt.peak_bytes() / 1073741824.0, first, last);
    cuda::release_workspace(*gpu);  // (each run's peak its own: the next starts without this one's buffers)
    if (recompute && B == 8 && dropout == 0.f)
      add("bench 3B", "training loss falls (" + std::to_string(first) + " -> " + std::to_string(last) + ")",
          last < first ? 0.0 : 1.0, 0.0);
    cuda::sync_lora_to_device(*gpu, *cpu);  // leave the trained adapter attached for generation
  }
}

// ---- profile windows for ncu (--profile-from-start off): ONE eager pass of a phase between
// cudaProfilerStart/Stop after warm-up, so `ncu --print-summary per-kernel` splits that pass by
// kernel. Phases: decode (batch 1, one token), batch32 (32 one-token rows, GEMM route), prefill512,
// train (one 8×512 step, recompute on, r = 16 on all seven projections).
void profile_phase(const std::string& dir, const std::string& phase) {
  if (phase != "decodegraph") {  // eager: every kernel its own launch (same kernels as the graphs)
    setenv("MIMIC_DECODE_GRAPH", "0", 1);
    setenv("MIMIC_BATCH_GRAPH", "0", 1);
  }
  cuda::Context& ctx = cuda::Context::get();
  std::unique_ptr<LlamaModel> cpu;
  auto gpu = cuda::load_model(dir, true, &cpu);
  const LlamaConfig& c = cpu->cfg;
  std::function<void()> once;
  cuda::DeviceKV kv;
  std::vector<std::shared_ptr<cuda::DeviceKV>> kvs;
  std::vector<cuda::DeviceKV*> kp;
  std::vector<int32_t> ids, labels;
  std::unique_ptr<Trainer> tr;
  std::unique_ptr<cuda::DeviceTrainer> dt;
  if (phase == "decode" || phase == "decodegraph" || phase == "prefill512") {
    kv.init(c, 1024);
    ids.resize(512);
    for (int i = 0; i < 512; ++i) ids[i] = (i * 17 + 3) % 128000;
    if (phase != "prefill512") {
      cuda::llama_forward(*gpu, ids.data(), 128, &kv, nullptr, 1);
      once = [&] { cuda::llama_forward(*gpu, ids.data(), 1, &kv, nullptr, 1); };
    } else {
      once = [&] { kv.len = 0; cuda::llama_forward(*gpu, ids.data(), 512, &kv, nullptr, 1); };
    }
  } else if (phase == "batch32") {
    for (int s = 0; s < 32; ++s) {
      kvs.push_back(cuda::kv_acquire(*gpu, 512));
      std::vector<int32_t> p(128);
      for (int i = 0; i < 128; ++i) p[i] = (i * 31 + 7 * s) % 128000;
      cuda::llama_forward(*gpu, p.data(), 128, kvs.back().get(), nullptr, 1);
      kp.push_back(kvs.back().get());
    }
    ids.assign(32, 1234);
    once = [&] { cuda::decode_batch_logits(*gpu, kp.data(), ids.data(), 32); };
  } else if (phase == "train" || phase == "train2") {
    TrainerOptions to;
    to.r = 16; to.alpha = 32.f; to.dropout = 0.f; to.seed = 1; to.recompute = true;
    to.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    tr = std::make_unique<Trainer>(*cpu, to);
    dt = std::make_unique<cuda::DeviceTrainer>(*gpu, *tr);
    const int B = phase == "train2" ? 2 : 8, T = 512;
    ids.resize((size_t)B * T); labels.resize((size_t)B * T);
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t) {
        ids[(size_t)b * T + t] = (int32_t)((b * 1000 + (t % 37) * 11 + 100) % 128000);
        labels[(size_t)b * T + t] = t < T / 2 ? -100 : ids[(size_t)b * T + t];
      }
    once = [&, B, T] {
      LossSum ls = dt->accumulate(ids.data(), labels.data(), B, T);
      StepOptions so;
      so.adamw.lr = 1e-4f;
      so.grad_scale = 1.f / ls.tokens;
      dt->step(so);
    };
  } else {
    throw mimic::Error("EINVAL", "prof: phase is decode | decodegraph | batch32 | prefill512 | train | train2, got " + phase);
  }
  for (int w = 0; w < 3; ++w) once();
  ctx.sync();
  double best = 1e30, sum = 0;  // 5 timed passes: the best and the mean (A/B legs compare these)
  for (int rep = 0; rep < 5; ++rep) {
    const double a = now();
    once();
    ctx.sync();
    best = std::min(best, now() - a);
    sum += now() - a;
  }
  std::printf("PROF %s eager pass %.3f ms (best of 5, mean %.3f; outside the profiler)", phase.c_str(), best * 1e3, sum / 5 * 1e3);
  if (dt) std::printf(" peak %.2f GiB", dt->peak_bytes() / 1073741824.0);  // (training: the card's memory in use)
  std::printf("\n");
  cudaProfilerStart();
  once();
  ctx.sync();
  cudaProfilerStop();
  for (auto& k : kvs) cuda::kv_release(std::move(k));
}

// ---- the 3B shape, batched decode: equality at S = 32, then step rates by S ------------------
void batch_bench(const std::string& dir) {
  cuda::Context& ctx = cuda::Context::get();
  std::unique_ptr<LlamaModel> cpu;
  auto gpu = cuda::load_model(dir, true, &cpu);
  const LlamaConfig& c = cpu->cfg;
  batch_rows(*gpu, c, "batch 3B nf4", "32 sessions, prompts <= 300", 32, 300, 8);
  {  // 2 sessions: every step <= 2 rows, the default route stays on the GEMV, bit for bit
    BatchCheck bc = batch_vs_single(*gpu, c, 2, 300, 8, false);
    add("batch 3B nf4", "default route, 2 sessions: tokens == each alone (greedy)", bc.token_mismatch, 0.0);
    add("batch 3B nf4", "default route, 2 sessions: logits bit for bit (greedy)", bc.logit_rel, 0.0);
  }
  {  // 16 greedy steps of the decode graph after a 128-token prompt, three ways: the opt-in persistent
     // kernel (decode_persist.cu) against the graph it must match bit for bit (the norms unfolded, as
     // the persistent kernel runs them), and the default graph (the norms folded into q/k/v and
     // gate/up: GemvNorm) against the unfolded one, to a tolerance
    cuda::DeviceKV kv;
    kv.init(c, 512);
    std::vector<int32_t> p(128);
    for (int i = 0; i < 128; ++i) p[i] = (i * 29 + 11) % 128000;
    cuda::llama_forward(*gpu, p.data(), 128, &kv, nullptr, 1);
    struct Run { std::vector<int32_t> toks; std::vector<float> logits; int64_t err = -1; };
    // feed: the tokens fed after each step (another run's), else each step's own argmax
    // env: one more switch set to 1 for the run
    auto run16 = [&](bool persist, int fold, const std::vector<int32_t>* feed = nullptr, const char* env = nullptr) {
      if (persist) setenv("MIMIC_DECODE_PERSIST", "1", 1);
      if (env) setenv(env, "1", 1);
      cuda::decode_norm_fold_override(fold);
      cuda::decode_graph_invalidate();
      Run r;
      kv.len = 128;
      int32_t t = 1234;
      for (int i = 0; i < 16; ++i) {
        std::vector<float> l((size_t)c.vocab_size);
        cuda::llama_forward(*gpu, &t, 1, &kv, l.data(), 1);
        r.toks.push_back((int32_t)(std::max_element(l.begin(), l.end()) - l.begin()));
        t = feed ? (*feed)[i] : r.toks.back();
        r.logits.insert(r.logits.end(), l.begin(), l.end());
      }
      if (persist) r.err = cuda::decode_persist_error(kv);
      unsetenv("MIMIC_DECODE_PERSIST");
      if (env) unsetenv(env);
      cuda::decode_norm_fold_override(-1);
      cuda::decode_graph_invalidate();
      return r;
    };
    const Run unfolded = run16(false, 0), persist = run16(true, 0);
    double dmax = 0.0, mism = 0.0;
    for (int i = 0; i < 16; ++i) mism += unfolded.toks[i] != persist.toks[i];
    for (size_t j = 0; j < unfolded.logits.size(); ++j) dmax = std::max(dmax, (double)std::fabs(unfolded.logits[j] - persist.logits[j]));
    add("decode_persist 3B", "in use (its error word read: 0 = no wait timed out)", persist.err == 0 ? 0.0 : 1.0, 0.0);
    add("decode_persist 3B", "16 greedy steps: tokens == the graph's", mism, 0.0);
    add("decode_persist 3B", "16 greedy steps: logits bit for bit the graph's", dmax, 0.0);
    // the same tokens fed to both (the unfolded run's), so the logits compare step by step
    const Run fold2 = run16(false, 1, &unfolded.toks);
    int same = 0;  // steps whose folded argmax is the unfolded run's token
    for (int i = 0; i < 16; ++i) same += fold2.toks[i] == unfolded.toks[i];
    std::printf("NORMFOLD 3B greedy argmax equal at %d/16 steps, logits rel %.3e\n", same, rel(fold2.logits, unfolded.logits));
    // (random weights: bf16-level differences grow to a few % of the logits by the last layer — the
    // batched GEMM route's rows above show the same; 4e-2 as theirs)
    add("decode graph 3B", "RMSNorm folded into q/k/v and gate/up vs rmsnorm launches: logits, 16 steps (rel)",
        rel(fold2.logits, unfolded.logits), 4e-2);
    // gate/up as two launches of half the rows (MIMIC_DECODE_GLU_SPLIT=1, opt-in): each row's sums the
    // same arithmetic as in the one launch — tokens and logits bit for bit (the default graph's norms folded)
    const Run one = run16(false, -1), two = run16(false, -1, nullptr, "MIMIC_DECODE_GLU_SPLIT");
    double split_differ = one.logits.size() == two.logits.size() ? (double)bits_differ(one.logits.data(), two.logits.data(), one.logits.size()) : 1e9;
    for (int i = 0; i < 16; ++i) split_differ += one.toks[i] != two.toks[i];
    add("decode graph 3B", "gate/up split in two launches == one launch: tokens and logits, 16 steps, bit for bit (differing)",
        split_differ, 0.0);
  }
  {  // a prompt's forward with the dequantize one projection ahead on the side stream (dequant_ahead.h):
     // the same kernels and GEMMs as the serial route, so the same bits — a 200-token prompt into a cache,
     // then one 300-token prompt without one, the last 4 rows of logits each (twice: the buffers reused)
    std::vector<int32_t> p(300);
    for (int i = 0; i < 300; ++i) p[i] = (i * 29 + 11) % 128000;
    auto prompt_logits = [&](bool ahead) {
      if (ahead) setenv("MIMIC_DEQUANT_AHEAD", "1", 1);
      else unsetenv("MIMIC_DEQUANT_AHEAD");
      std::vector<float> out;
      for (int rep = 0; rep < 2; ++rep) {
        cuda::DeviceKV kv;
        kv.init(c, 256);
        std::vector<float> a((size_t)4 * c.vocab_size), b((size_t)4 * c.vocab_size);
        cuda::llama_forward(*gpu, p.data(), 200, &kv, a.data(), 4);
        cuda::llama_forward(*gpu, p.data(), 300, nullptr, b.data(), 4);
        out.insert(out.end(), a.begin(), a.end());
        out.insert(out.end(), b.begin(), b.end());
      }
      unsetenv("MIMIC_DEQUANT_AHEAD");
      return out;
    };
    const std::vector<float> serial = prompt_logits(false), ahead = prompt_logits(true);
    const double differ = (serial.size() == ahead.size() ? 0.0 : 1.0) +  // logits whose bits differ (NaN included)
                          (double)bits_differ(serial.data(), ahead.data(), std::min(serial.size(), ahead.size()));
    add("prefill 3B", "dequantize ahead on a side stream == serial: logits of 200- and 300-token prompts, bit for bit (differing)",
        differ, 0.0);
    // the training forward takes it too: one evaluate and one accumulate (forward + backward, which
    // reads the forward's activations) of 2 × 128 tokens, prompt half masked, r = 16 on all seven —
    // the losses' bits, ahead vs serial
    TrainerOptions to;
    to.r = 16; to.alpha = 32.f; to.dropout = 0.f; to.seed = 1; to.recompute = true;
    to.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    Trainer tr(*cpu, to);
    cuda::DeviceTrainer dt(*gpu, tr);
    const int TB = 2, TT = 128;
    const auto batch = synthetic_batch(TB, TT, 128000, 37, 5, TT / 2);
    const std::vector<int32_t>& tids = batch.first; const std::vector<int32_t>& tlab = batch.second;
    auto losses = [&](bool ahead) {
      if (ahead) setenv("MIMIC_DEQUANT_AHEAD", "1", 1);
      const double e = dt.evaluate(tids.data(), tlab.data(), TB, TT).loss_sum;
      const double g = dt.accumulate(tids.data(), tlab.data(), TB, TT).loss_sum;
      unsetenv("MIMIC_DEQUANT_AHEAD");
      return std::make_pair(e, g);
    };
    const auto ls = losses(false), la = losses(true);
    std::printf("AHEAD train 3B 2x128 loss serial %.17g / %.17g ahead %.17g / %.17g\n", ls.first, ls.second, la.first, la.second);
    add("train 3B", "dequantize ahead in the training forward == serial: evaluate and accumulate losses, bit for bit",
        (ls.first == la.first && ls.second == la.second) ? 0.0 : 1.0, 0.0);
    // the backward's grouped input gradients (group_backward: one product a projection group, the LoRA
    // A rows inside it) vs one product a projection and one a LoRA A, on the same micro-batch, with
    // or without recompute. B = ±0.05 (not PEFT's zeros: with B = 0 the LoRA half of every input
    // gradient, dh·A, would vanish and the rows could not see it): the LoRA gradients of the last
    // layer (the first the backward reaches: only its own roundings differ) and of all layers
    // (dact and datt, rounded to bf16 once instead of twice, carried through 28 random layers).
    for (int rc = 1; rc >= 0; --rc) {
      TrainerOptions to2 = to;
      to2.recompute = rc;
      Trainer tr2(*cpu, to2);
      for (int l = 0; l < cpu->cfg.num_layers; ++l) {
        LlamaLayer& Ly = cpu->layers[l];
        Linear* ps[7] = {&Ly.q, &Ly.k, &Ly.v, &Ly.o, &Ly.gate, &Ly.up, &Ly.down};
        for (int i = 0; i < 7; ++i) {
          uint64_t z = 5000 + 7 * l + i;
          for (auto& b : ps[i]->lora->B) { z = z * 6364136223846793005ull + 1; b = ((int)((z >> 40) % 2001) - 1000) * 5e-5f; }
        }
      }
      cuda::DeviceTrainer dt2(*gpu, tr2);
      double loss[3] = {};
      // mode 0: a product a projection, 1: grouped backward, 2: + grouped forward; env: one more switch
      auto grads = [&](int mode, const char* env = nullptr, double* loss_out = nullptr, const char* value = "1") {
        setenv("MIMIC_BWD_GROUPED", mode ? "1" : "0", 1);
        setenv("MIMIC_FWD_GROUPED", mode == 2 ? "1" : "0", 1);
        if (env) setenv(env, value, 1);
        dt2.zero_grad();
        (loss_out ? *loss_out : loss[mode]) = dt2.accumulate(tids.data(), tlab.data(), TB, TT).loss_sum;
        unsetenv("MIMIC_BWD_GROUPED");
        unsetenv("MIMIC_FWD_GROUPED");
        if (env) unsetenv(env);
        dt2.pull();
        return lora_grads(tr2, cpu->cfg.num_layers);
      };
      const auto sep = grads(0), grp = grads(1), fwd = grads(2);
      const std::string tag = rc ? " (recompute)" : " (no recompute)";
      std::printf("GROUPED train 3B%s: backward: last layer %zu values rel %.3e, all %zu rel %.3e; + forward: %.3e, %.3e; "
                  "losses %.9g / %.9g / %.9g\n", tag.c_str(), grp.second.size(), rel(grp.second, sep.second), grp.first.size(),
                  rel(grp.first, sep.first), rel(fwd.second, sep.second), rel(fwd.first, sep.first), loss[0], loss[1], loss[2]);
      add("train 3B", "grouped backward vs a product a projection, last layer's LoRA grads (rel)" + tag,
          grp.second.empty() ? 1.0 : rel(grp.second, sep.second), 1e-2);
      add("train 3B", "grouped backward vs a product a projection, all LoRA grads (rel)" + tag, rel(grp.first, sep.first), 3e-2);
      // the forward's LoRA B inside the base products (MIMIC_FWD_GROUPED=1: the first forward and the
      // recompute): the loss (outputs rounded once instead of twice; relative) and the grads
      add("train 3B", "grouped backward: loss == a product a projection's (the forward unchanged)" + tag,
          loss[1] == loss[0] ? 0.0 : 1.0, 0.0);
      add("train 3B", "grouped forward + backward vs a product a projection: loss (rel)" + tag,
          std::fabs(loss[2] - loss[0]) / std::fabs(loss[0]), 5e-3);
      // (no grads row for the grouped forward here: its outputs are rounded once instead of twice, and
      // over 28 random layers that alone moves the last layer's input by ~5 % and its LoRA grads by
      // ~7.6e-2 (bench/gpu/grouped_forward_sensitivity.py; round 23's lora_effect: loss gap 0.20 where
      // rounding predicts 0.25) — two bf16 routes can't be held to 1e-2 of each other; the model
      // table's "train N>64" rows hold it to the CPU trainer instead. The figures are printed above.)
      if (!rc) continue;
      // what the recompute may skip (round 22): the down product and the closing residual (MIMIC_RECOMPUTE_FULL=1
      // runs them), and where the card has room (the default here) the q/k/v products, RoPE and the
      // attention, their outputs kept from the first forward (MIMIC_RECOMPUTE_KEEP_ATTN=0: made again) —
      // every gradient bit for bit the full recompute's, per projection and with both grouped passes
      for (int mode : {0, 2}) {
        double lf = 0, ld = 0;
        const auto full = grads(mode, "MIMIC_RECOMPUTE_FULL", &lf), down = grads(mode, "MIMIC_RECOMPUTE_KEEP_ATTN", &ld, "0");
        const auto& kept = mode ? fwd : sep;
        const double lk = loss[mode];
        const std::string m = mode ? " (grouped forward + backward)" : " (a product a projection)";
        // grads whose bits differ (a size mismatch: all of them) plus 1 where the loss's do
        auto differ = [](const std::vector<float>& a, const std::vector<float>& b, double la, double lb) {
          return (a.size() != b.size() ? (double)std::max(a.size(), b.size()) : (double)bits_differ(a.data(), b.data(), a.size())) +
                 (bits_differ(&la, &lb, 1) ? 1.0 : 0.0);
        };
        const double dd = differ(full.first, down.first, lf, ld), dk = differ(full.first, kept.first, lf, lk);
        std::printf("RECOMPUTE train 3B%s: differing vs the whole layer: skipped down %.0f, + kept attention %.0f; losses %.17g %.17g %.17g\n",
                    m.c_str(), dd, dk, lf, ld, lk);
        add("train 3B", "recompute without the down product == the whole layer: LoRA grads and loss, bit for bit" + m, dd, 0.0);
        add("train 3B", "recompute with the attention kept == the whole layer: LoRA grads and loss, bit for bit" + m, dk, 0.0);
      }
    }
    attach_lora(*cpu, *gpu, 0);  // (the trainer attached its adapter: the rows below run the base model)
  }
  // step rate by batch size: caches at 128 tokens, 24 timed steps each (greedy sampling included
  // in the 'decode_batch' figure; 'logits' is the forward alone)
  const int steps = 24;
  std::vector<std::shared_ptr<cuda::DeviceKV>> kvs;
  SamplingParams g0; g0.temperature = 0.f;
  // (S, route): 0 default, 1 GEMV forced, 2 GEMM forced (the crossover and the same-call baseline)
  const std::pair<int, int> runs[] = {{1, 0}, {4, 0}, {8, 0}, {16, 0}, {32, 0}, {4, 2}, {8, 2}, {16, 1}, {32, 1}};
  for (auto [S, route] : runs) {
    if (route == 1) setenv("MIMIC_BATCH_GEMM_MIN", "1000000", 1);
    else if (route == 2) setenv("MIMIC_BATCH_GEMM_MIN", "1", 1);
    else unsetenv("MIMIC_BATCH_GEMM_MIN");
    const char* rname = route == 1 ? "gemv" : route == 2 ? "gemm" : "default";
    while ((int)kvs.size() < S) {
      kvs.push_back(cuda::kv_acquire(*gpu, 512));
      std::vector<int32_t> p(128);
      for (int i = 0; i < 128; ++i) p[i] = (i * 31 + 7 * (int)kvs.size()) % 128000;
      cuda::llama_forward(*gpu, p.data(), 128, kvs.back().get(), nullptr, 1);
    }
    std::vector<cuda::DeviceKV*> kp(S);
    std::vector<int32_t> ids(S, 1234);
    for (int s = 0; s < S; ++s) { kp[s] = kvs[s].get(); kvs[s]->len = 128; }
    for (int w = 0; w < 2; ++w) cuda::decode_batch_logits(*gpu, kp.data(), ids.data(), S);  // eager, then capture
    ctx.sync();
    for (int s = 0; s < S; ++s) kvs[s]->len = 128;
    double a = now();
    for (int i = 0; i < steps; ++i) cuda::decode_batch_logits(*gpu, kp.data(), ids.data(), S);
    ctx.sync();
    const double t_logits = (now() - a) / steps;
    std::vector<Rng> rngs(S, Rng(5));
    std::vector<cuda::DeviceDecodeSeq> seqs(S);
    std::vector<int32_t> toks(S, 1234);
    for (int s = 0; s < S; ++s) { kvs[s]->len = 128; seqs[s].kv = kvs[s].get(); seqs[s].n_ids = 1; seqs[s].params = g0; seqs[s].rng = &rngs[s]; }
    a = now();
    for (int i = 0; i < steps; ++i) {
      std::vector<int32_t> in = toks;
      for (int s = 0; s < S; ++s) seqs[s].ids = &in[s];
      cuda::decode_batch(*gpu, seqs.data(), S, toks.data());
    }
    const double t_step = (now() - a) / steps;
    std::printf("BENCH batch S=%d route %s step_ms %.3f tok_s %.1f (forward alone %.3f ms, %.1f tok/s)\n", S, rname,
                t_step * 1e3, S / t_step, t_logits * 1e3, S / t_logits);
  }
  unsetenv("MIMIC_BATCH_GEMM_MIN");
}

// ---- the decode step's in-graph timeline (pdl.h's markers): where the batch-1 step's time goes ----
// Each kernel's "exposed" time is its completion stamp minus the previous kernel's: what it adds to
// the step with everything else overlapped as in the real graph. Printed by kernel kind (summed over
// the step) and for one middle layer in launch order; the first line is the traced step vs untraced.
std::string short_kernel(const std::string& m) {  // a mangled name → its function's name
  for (const char* k : {"gemv_tc_kernel", "gemv_rows_kernel", "gemv_kernel", "decode_attn_kernel", "rope_append_kernel", "rmsnorm_rows_kernel", "lora_a_kernel",
                        "embedding", "trace_marker"}) {
    if (m.find(k) != std::string::npos) {
      std::string t = k;
      const size_t a = m.find(k) + t.size();
      if (t == "lora_a_kernel") t += m.compare(a, 4, "ILb1") == 0 ? "<norm>" : "<x>";
      if (t == "gemv_tc_kernel" && m.size() > a + 12) {  // <NT, PDL, F>: ILi1ELb1ELb0EE...
        t += m.substr(a + 3, 1) == "1" ? "<N8" : "<N16";
        const size_t pdl = m.find("ELb", a + 4), f = pdl == std::string::npos ? pdl : m.find("ELb", pdl + 4);
        if (f != std::string::npos && m.substr(f + 3, 1) == "1") t += ",rope";
        t += ">";
      }
      return t;
    }
  }
  return m.substr(0, 40);
}
// envs ("VAR=value", ...): an A/B in one process on one GPU — leg A without them, leg B with them,
// alternated 4 times (graphs re-recorded at each switch), untraced step times compared; then each
// leg's traced breakdown.
void trace(const std::string& dir, int steps, const std::vector<std::string>& envs) {
  std::unique_ptr<LlamaModel> cpu;
  auto gpu = cuda::load_model(dir, true, &cpu);
  const LlamaConfig& c = cpu->cfg;
  cuda::DeviceKV kv;
  kv.init(c, 512);
  std::vector<int32_t> prompt(128);
  for (int i = 0; i < 128; ++i) prompt[i] = (i * 31 + 7) % 128000;
  cuda::llama_forward(*gpu, prompt.data(), 128, &kv, nullptr, 1);
  int32_t tok = 1234;
  auto run = [&](int n) {  // n steps from cache length 128 (after 3 untimed ones): seconds a step
    kv.len = 125;
    for (int i = 0; i < 3; ++i) cuda::llama_forward(*gpu, &tok, 1, &kv, nullptr, 1);
    cuda::Context::get().sync();
    const double a = now();
    for (int i = 0; i < n; ++i) cuda::llama_forward(*gpu, &tok, 1, &kv, nullptr, 1);
    cuda::Context::get().sync();
    return (now() - a) / n;
  };
  // LORA=r (not an env variable): leg B with attach_lora(r), leg A without an adapter; LORA_AB=r:
  // both legs with it
  auto set_leg = [&](int leg) {
    for (const std::string& e : envs) {
      const std::string k = e.substr(0, e.find('=')), v = e.substr(e.find('=') + 1);
      if (k == "LORA") attach_lora(*cpu, *gpu, leg ? std::atoi(v.c_str()) : 0);
      else if (k == "LORA_AB") { if (!gpu->lora_n) attach_lora(*cpu, *gpu, std::atoi(v.c_str())); }
      else if (leg) setenv(k.c_str(), v.c_str(), 1);
      else unsetenv(k.c_str());
    }
    cuda::decode_graph_invalidate();
  };
  const int legs = envs.empty() ? 1 : 2;
  std::string bname;
  for (const std::string& e : envs) bname += (bname.empty() ? "" : " ") + e;
  if (legs == 2) {
    std::vector<double> t[2];
    for (int r = 0; r < 4; ++r)
      for (int leg = 0; leg < 2; ++leg) { set_leg(leg); t[leg].push_back(run(4 * steps)); }
    double m[2], lo[2];
    for (int leg = 0; leg < 2; ++leg) {
      m[leg] = 0.0; lo[leg] = 1e9;
      for (double x : t[leg]) { m[leg] += x / t[leg].size(); lo[leg] = std::min(lo[leg], x); }
    }
    std::printf("TRACE ab A (defaults) %.4f ms (best %.4f) | B (%s) %.4f ms (best %.4f) | B/A %.3f (4 alternations x %d steps)\n",
                m[0] * 1e3, lo[0] * 1e3, bname.c_str(), m[1] * 1e3, lo[1] * 1e3, m[1] / m[0], 4 * steps);
    std::vector<float> lg[2];  // the same step in both legs: a switch that keeps the maths gives 0
    for (int leg = 0; leg < 2; ++leg) {
      set_leg(leg);
      lg[leg].assign((size_t)c.vocab_size, 0.f);
      kv.len = 128;
      cuda::llama_forward(*gpu, &tok, 1, &kv, lg[leg].data(), 1);
    }
    double dmax = 0.0;
    for (size_t i = 0; i < lg[0].size(); ++i) dmax = std::max(dmax, (double)std::fabs(lg[0][i] - lg[1][i]));
    std::printf("TRACE ab logits of one step, max |A - B| = %.3g\n", dmax);
  }
  for (int leg = 0; leg < legs; ++leg) {
    set_leg(leg);
    const char* L = leg ? "B" : "A";
    const double plain = run(steps);
    std::printf("%s", cuda::decode_persist_profile(kv).c_str());  // MIMIC_DECODE_PERSIST_STAMPS=1: its timeline
    cuda::decode_trace(true);
    run(2);
    std::vector<double> exposed;
    std::vector<std::string> names;
    double traced = 0.0;
    for (int s = 0; s < steps; ++s) {
      traced += run(1) / steps;
      const auto rows = cuda::decode_trace_read();
      if (exposed.empty()) { exposed.assign(rows.size(), 0.0); for (auto& r : rows) names.push_back(short_kernel(r.kernel)); }
      for (size_t i = 1; i < rows.size(); ++i) exposed[i] += (rows[i].done_ns - rows[i - 1].done_ns) / 1e3 / steps;
    }
    cuda::decode_trace(false);
    double total = 0.0;
    for (double e : exposed) total += e;
    std::printf("TRACE %s step %.3f ms untraced, %.3f ms traced; %zu kernels; Σ exposed %.1f µs (cache 128)%s%s\n", L, plain * 1e3,
                traced * 1e3, names.size(), total, leg ? " " : "", leg ? bname.c_str() : "");
    std::map<std::string, std::pair<double, int>> by;
    for (size_t i = 1; i < names.size(); ++i) { by[names[i]].first += exposed[i]; by[names[i]].second += 1; }
    for (auto& [k, v] : by)
      std::printf("TRACE %s kind %-32s %4d launches %8.1f µs  (%.2f µs each)\n", L, k.c_str(), v.second, v.first, v.first / v.second);
    std::vector<size_t> attn;  // one middle layer in order: the launches around the 11th attention
    for (size_t i = 0; i < names.size(); ++i) if (names[i].rfind("decode_attn", 0) == 0) attn.push_back(i);
    if (attn.size() > 12)
      for (size_t i = attn[10] - 2; i < attn[11] - 1 && i < names.size(); ++i)
        std::printf("TRACE %s layer10 %3zu %-32s %6.2f µs\n", L, i, names[i].c_str(), exposed[i]);
  }
  set_leg(0);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "ops";
    if (!cuda::available()) { std::printf("no CUDA device\n"); return 2; }
    if (mode == "ops") {
      rows = cuda::cuda_op_checks();
    } else if (mode == "model") {
      model_checks(argc > 2 ? argv[2] : "test/fixtures/ref");
    } else if (mode == "logits3b") {
      // bf16 base (no NF4): logits of the fixed prompt for the transformers comparison
      std::unique_ptr<LlamaModel> cpu;
      auto gpu = cuda::load_model(argv[2], false, &cpu);
      std::vector<int32_t> prompt(32);
      for (int i = 0; i < 32; ++i) prompt[i] = (i * 7919 + 13) % 128000;
      const int64_t V = cpu->cfg.vocab_size;
      std::vector<float> lg((size_t)32 * V);
      cuda::llama_forward(*gpu, prompt.data(), 32, nullptr, lg.data(), 32);
      std::ofstream f(std::string(argc > 3 ? argv[3] : ".") + "/logits_3b_bf16.bin", std::ios::binary);
      f.write((const char*)lg.data(), sizeof(float) * lg.size());
      std::printf("BENCH bf16 3B weights on GPU %.3f GiB\n", gpu->weight_bytes / 1073741824.0);
    } else if (mode == "prof") {
      profile_phase(argv[2], argc > 3 ? argv[3] : "decode");
    } else if (mode == "batch") {
      batch_bench(argv[2]);
    } else if (mode == "trace") {
      trace(argv[2], argc > 3 ? std::atoi(argv[3]) : 16, std::vector<std::string>(argv + std::min(argc, 4), argv + argc));
    } else if (mode == "bench") {
      bench(argv[2], argc > 3 ? std::atoi(argv[3]) : 30, argc > 4 ? argv[4] : ".");
    }
    return print_rows();
  } catch (const mimic::Error& e) {
    std::printf("ERROR %s: %s\n", e.code.c_str(), e.what());
    print_rows();
    return 2;
  } catch (const std::exception& e) {
    std::printf("ERROR %s\n", e.what());
    print_rows();
    return 2;
  }
}
