// load_cuda — a Llama checkpoint straight from safetensors onto the GPU, the NF4 quantization done
// there (nf4_quantize_device: bit for bit the CPU oracle's bytes), so loading never runs the CPU
// quantizer nor holds an fp32 copy of the model on the host.
//
//   host: mmap'd shards ──(parallel memcpy, 64 MiB pinned chunks, two in flight)──► device
//   bf16 tensors land in place (embedding, lm_head, dense projections); other dtypes go through a
//   device scratch and a convert kernel; an NF4 projection lands whole in a scratch of its raw
//   dtype and is quantized from there (one projection at a time: the scratch is ≤ 1 weight).
// The returned LlamaModel is a skeleton: config, norms, inv_freq and each Linear's name and shape
// (W and nf4 empty). The addon keeps LoRA bookkeeping (setLora, the CPU Trainer's params) there;
// nothing runs the CPU forward on it.
#include "cuda/llama_cuda.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "core/config.h"
#include "core/safetensors.h"
#include "core/threadpool.h"
#include "cuda/common.cuh"
#include "ops/rope.h"

namespace mimic::cuda {
namespace {

cudaStream_t stream() { return Context::get().stream; }

template <class TI>
__global__ void convert_to_bf16_kernel(bf16* __restrict__ dst, const TI* __restrict__ src, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    if constexpr (std::is_same_v<TI, float>) dst[i] = __float2bfloat16(src[i]);
    else dst[i] = __float2bfloat16(__half2float(src[i]));
  }
}

// Host → device through two pinned chunks: the host copy of chunk i + 1 (parallel, which also
// takes the page faults of the mapping in parallel) overlaps the DMA of chunk i.
class Stager {
 public:
  static constexpr size_t kChunk = 64u << 20;
  Stager() {
    for (int i = 0; i < 2; ++i) {
      MIMIC_CUDA_CHECK(cudaHostAlloc(&pinned_[i], kChunk, cudaHostAllocDefault));
      MIMIC_CUDA_CHECK(cudaEventCreateWithFlags(&done_[i], cudaEventDisableTiming));
    }
  }
  ~Stager() {
    cudaStreamSynchronize(stream());
    for (int i = 0; i < 2; ++i) {
      if (done_[i]) cudaEventDestroy(done_[i]);
      if (pinned_[i]) cudaFreeHost(pinned_[i]);
    }
    cudaGetLastError();
  }
  Stager(const Stager&) = delete;
  Stager& operator=(const Stager&) = delete;

  void copy(void* dst, const void* src, size_t n) {
    auto* d = static_cast<uint8_t*>(dst);
    auto* s = static_cast<const uint8_t*>(src);
    for (size_t off = 0; off < n; off += kChunk) {
      const size_t len = std::min(kChunk, n - off);
      MIMIC_CUDA_CHECK(cudaEventSynchronize(done_[cur_]));  // this pinned chunk's last DMA is over
      uint8_t* p = static_cast<uint8_t*>(pinned_[cur_]);
      const int64_t pieces = (int64_t)((len + (1u << 20) - 1) >> 20);  // 1 MiB pieces
      parallel_for(pieces, [&](int64_t b, int64_t e) {
        const size_t lo = (size_t)b << 20, hi = std::min(len, (size_t)e << 20);
        std::memcpy(p + lo, s + off + lo, hi - lo);
      });
      MIMIC_CUDA_CHECK(cudaMemcpyAsync(d + off, p, len, cudaMemcpyHostToDevice, stream()));
      MIMIC_CUDA_CHECK(cudaEventRecord(done_[cur_], stream()));
      cur_ ^= 1;
    }
  }

 private:
  void* pinned_[2] = {nullptr, nullptr};
  cudaEvent_t done_[2] = {nullptr, nullptr};
  int cur_ = 0;
};

struct Loader {
  const Checkpoint& ck;
  Stager stage;
  DevBuf<uint8_t> raw;  // device scratch for tensors that need a conversion or quantization
  size_t bytes = 0;     // base weights on the GPU

  const TensorView& get(const std::string& name, std::vector<int64_t> shape) {
    const TensorView& t = ck.get(name);
    TensorView want;
    want.shape = shape;
    MIMIC_CHECK(t.shape == shape, "ESHAPE", "tensor \"", name, "\" in ", t.file, " has shape ", t.shape_str(),
                " but config.json implies ", want.shape_str(), ". config.json and the weights do not match.");
    return t;
  }

  std::vector<float> host_f32(const std::string& name, std::vector<int64_t> shape) {
    return to_f32(get(name, std::move(shape)));
  }

  DevBuf<bf16> bf16_tensor(const std::string& name, std::vector<int64_t> shape) {
    const TensorView& t = get(name, std::move(shape));
    const int64_t n = t.numel();
    DevBuf<bf16> out((size_t)n);
    if (t.dtype == DType::BF16) {
      stage.copy(out.p, t.data, t.nbytes);
    } else {  // F32 / F16: chunk by chunk through the scratch, converted on the device
      const size_t es = dtype_size(t.dtype), per = Stager::kChunk / es;
      raw.reserve(Stager::kChunk);
      for (int64_t i = 0; i < n; i += (int64_t)per) {
        const int64_t m = std::min<int64_t>((int64_t)per, n - i);
        stage.copy(raw.p, t.data + (size_t)i * es, (size_t)m * es);
        const int g = (int)std::min<int64_t>((m + 255) / 256, 8192);
        if (t.dtype == DType::F32)
          convert_to_bf16_kernel<<<g, 256, 0, stream()>>>(out.p + i, (const float*)raw.p, m);
        else
          convert_to_bf16_kernel<<<g, 256, 0, stream()>>>(out.p + i, (const __half*)raw.p, m);
        MIMIC_CUDA_LAUNCHED();
      }
    }
    bytes += out.bytes();
    return out;
  }

  DLinear linear(Linear& L, const std::string& name, int M, int K, bool nf4) {
    L.name = name;
    L.M = M;
    L.K = K;
    DLinear d;
    d.M = M;
    d.K = K;
    if (!nf4) {
      d.W = bf16_tensor(name + ".weight", {M, K});
      return d;
    }
    MIMIC_CHECK(((int64_t)M * K) % 64 == 0, "ESHAPE", "cannot quantize ", name, " [", M, ", ", K,
                "] to NF4: its size is not a multiple of the 64-value block");
    const TensorView& t = get(name + ".weight", {M, K});
    raw.reserve(std::max(t.nbytes, Stager::kChunk));
    stage.copy(raw.p, t.data, t.nbytes);
    // Double quantization, as load_llama and bitsandbytes' Params4bit default.
    d.nf4 = nf4_quantize_device(raw.p, t.dtype, M, K, /*double_quant=*/true);
    d.is_nf4 = true;
    bytes += d.nf4.bytes();
    return d;
  }
};

}  // namespace

std::unique_ptr<DeviceModel> load_model(const std::string& dir, bool quant_nf4, std::unique_ptr<LlamaModel>* skeleton) {
  Context::get();
  auto m = std::make_unique<LlamaModel>();
  m->cfg = load_llama_config(dir);
  const LlamaConfig& c = m->cfg;
  Checkpoint ck = Checkpoint::open_dir(dir);
  const int C = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int QD = c.num_heads * c.head_dim, KD = c.num_kv_heads * c.head_dim;

  auto d = std::make_unique<DeviceModel>();
  d->cfg = c;
  Loader ld{ck, {}, {}, 0};
  d->embed = ld.bf16_tensor("model.embed_tokens.weight", {V, C});
  if (!c.tie_word_embeddings) {
    MIMIC_CHECK(ck.find("lm_head.weight"), "EBADFILE", "config.json says tie_word_embeddings = false but the checkpoint in ",
                dir, " has no lm_head.weight");
    d->lm_head = ld.bf16_tensor("lm_head.weight", {V, C});
  }
  m->final_norm = ld.host_f32("model.norm.weight", {C});
  m->inv_freq = rope_inv_freq(c.rope, c.head_dim);
  d->final_norm = upload(m->final_norm);
  d->inv_freq = upload(m->inv_freq);
  m->layers.resize((size_t)c.num_layers);
  d->layers.resize((size_t)c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    LlamaLayer& L = m->layers[l];
    DLayer& D = d->layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    L.input_norm = ld.host_f32(p + "input_layernorm.weight", {C});
    L.post_attn_norm = ld.host_f32(p + "post_attention_layernorm.weight", {C});
    D.in_norm = upload(L.input_norm);
    D.post_norm = upload(L.post_attn_norm);
    D.proj[0] = ld.linear(L.q, p + "self_attn.q_proj", QD, C, quant_nf4);
    D.proj[1] = ld.linear(L.k, p + "self_attn.k_proj", KD, C, quant_nf4);
    D.proj[2] = ld.linear(L.v, p + "self_attn.v_proj", KD, C, quant_nf4);
    D.proj[3] = ld.linear(L.o, p + "self_attn.o_proj", C, QD, quant_nf4);
    D.proj[4] = ld.linear(L.gate, p + "mlp.gate_proj", I, C, quant_nf4);
    D.proj[5] = ld.linear(L.up, p + "mlp.up_proj", I, C, quant_nf4);
    D.proj[6] = ld.linear(L.down, p + "mlp.down_proj", C, I, quant_nf4);
  }
  Context::get().sync();
  d->weight_bytes = ld.bytes;
  *skeleton = std::move(m);
  return d;
}

}  // namespace mimic::cuda
