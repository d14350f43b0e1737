// dequant_ahead — see dequant_ahead.h for the schedule and why.
#include "cuda/dequant_ahead.h"

#include <algorithm>

#include "core/env.h"
#include "cuda/nf4_dequant_fast.h"

namespace mimic::cuda {

bool dequant_ahead_enabled() { return env_is("MIMIC_DEQUANT_AHEAD", "1"); }

DequantAhead::~DequantAhead() {
  // (at exit the context may be gone: errors here are not worth a report)
  for (cudaEvent_t e : {ready_[0], ready_[1], freed_[0], freed_[1], start_, side_done_})
    if (e) cudaEventDestroy(e);
  if (side_) cudaStreamDestroy(side_);
  cudaGetLastError();
}

void DequantAhead::begin(std::vector<const NF4Device*> seq) {
  if (!side_) {
    int least = 0, greatest = 0;
    MIMIC_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    MIMIC_CUDA_CHECK(cudaStreamCreateWithPriority(&side_, cudaStreamNonBlocking, least));
    for (cudaEvent_t* e : {&ready_[0], &ready_[1], &freed_[0], &freed_[1], &start_, &side_done_})
      MIMIC_CUDA_CHECK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
  }
  size_t most = 0;
  for (const NF4Device* w : seq) most = std::max(most, (size_t)w->M * w->K);
  buf_[0].reserve(most);
  if (seq.size() > 1) buf_[1].reserve(most);
  seq_ = std::move(seq);
  next_use_ = 0;
  failed_[0] = failed_[1] = freed_pending_[0] = freed_pending_[1] = false;
  on_ = true;
  cudaStream_t main = Context::get().stream;
  MIMIC_CUDA_CHECK(cudaEventRecord(start_, main));  // what the main stream did before (a buffer's last reader)
  MIMIC_CUDA_CHECK(cudaStreamWaitEvent(side_, start_, 0));
  issue(0);
  issue(1);
}

void DequantAhead::issue(size_t k) {
  if (k >= seq_.size()) return;
  const int b = (int)(k & 1);
  if (freed_pending_[b]) MIMIC_CUDA_CHECK(cudaStreamWaitEvent(side_, freed_[b], 0));
  // one tile a block (max_blocks −1) — the bits of nf4_dequantize
  failed_[b] = !(nf4_dequant_fast_enabled() && nf4_dequantize_fast(buf_[b].p, *seq_[k], -1, side_));
  MIMIC_CUDA_CHECK(cudaEventRecord(ready_[b], side_));
}

const bf16* DequantAhead::take(const NF4Device& W) {
  if (!on_ || next_use_ >= seq_.size() || seq_[next_use_] != &W) return nullptr;
  const int b = (int)(next_use_ & 1);
  if (failed_[b]) {  // the fast kernel declined this weight: the caller dequantizes it; move on
    release();
    return nullptr;
  }
  MIMIC_CUDA_CHECK(cudaStreamWaitEvent(Context::get().stream, ready_[b], 0));
  return buf_[b].p;
}

void DequantAhead::release() {
  if (!on_ || next_use_ >= seq_.size()) return;
  const int b = (int)(next_use_ & 1);
  MIMIC_CUDA_CHECK(cudaEventRecord(freed_[b], Context::get().stream));
  freed_pending_[b] = true;
  ++next_use_;
  issue(next_use_ + 1);
}

void DequantAhead::end() {
  if (!on_) return;
  on_ = false;
  MIMIC_CUDA_CHECK(cudaEventRecord(side_done_, side_));
  MIMIC_CUDA_CHECK(cudaStreamWaitEvent(Context::get().stream, side_done_, 0));
}

}  // namespace mimic::cuda
