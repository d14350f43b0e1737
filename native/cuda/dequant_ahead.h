// dequant_ahead — a prompt's NF4 weights dequantized one projection ahead, on a side stream, so that
// the NF4 → bf16 pass of projection k+1 (memory-bound: 0.5 byte read, 2 bytes written a weight) runs
// while the cuBLAS GEMM of projection k (compute-bound at a prompt's hundreds of rows) multiplies.
//
// Without it a forward of N > kNF4GemmSmallMaxS rows runs, per projection and on one stream,
// dequantize → GEMM: every dequantize waits for the GEMM before it and every GEMM for its dequantize,
// and a GEMM of 512 rows leaves SMs idle (q/o/down: 3,072 outputs × 512 rows is a few dozen output
// tiles for 132 SMs). Here two bf16 buffers alternate:
//
//   side stream:  [dq 0 → buf 0] [dq 1 → buf 1] (wait GEMM 0) [dq 2 → buf 0] (wait GEMM 1) [dq 3 → buf 1] …
//   main stream:  (wait dq 0) [GEMM 0] (wait dq 1) [GEMM 1] (wait dq 2) [GEMM 2] …
//
// The same dequantize kernel and the same GEMM with the same arguments as the serial path: the same
// bits (model row "prefill with the dequantize ahead == serial"). The side stream has the lowest
// priority and its dequantize runs one 8 KiB tile a block, so the GEMM's CTAs take SMs as those short
// blocks retire. MIMIC_DEQUANT_AHEAD=1 turns it on (read at every forward: A/B legs in one process).
// Measured (bench/NOTES.md round 20, H100): −5 % of a 512-token prompt with the old two-chunk
// dequantize, −1-1.4 % with the coalesced one (the GEMMs' CTAs fill the SMs), a 2 × 512 training step
// ±1 % — so off by default.
#pragma once
#include <cuda_runtime.h>

#include <vector>

#include "cuda/cuda_ops.h"

namespace mimic::cuda {

bool dequant_ahead_enabled();

class DequantAhead {
 public:
  DequantAhead() = default;
  DequantAhead(const DequantAhead&) = delete;
  DequantAhead& operator=(const DequantAhead&) = delete;
  ~DequantAhead();
  // A forward that will multiply by `seq`'s weights in this order (each at most once) begins: the
  // buffers grow to the largest, the side stream waits for the main stream's work so far, and the
  // first two weights are dequantized.
  void begin(std::vector<const NF4Device*> seq);
  // W's bf16 copy if W is the next weight of the sequence (the main stream then waits for it), else
  // null (the caller dequantizes on its own: the sequence is left as it is).
  const bf16* take(const NF4Device& W);
  // The GEMM that reads take()'s buffer is enqueued on the main stream: once it ran, the buffer takes
  // the weight two further on.
  void release();
  // The forward ended (or failed): nothing more is issued; the main stream waits for the side stream.
  void end();
  bool active() const { return on_; }

 private:
  void issue(size_t k);
  DevBuf<bf16> buf_[2];
  cudaEvent_t ready_[2] = {}, freed_[2] = {}, start_ = nullptr, side_done_ = nullptr;
  cudaStream_t side_ = nullptr;
  std::vector<const NF4Device*> seq_;
  size_t next_use_ = 0;             // the sequence's next weight to take
  bool on_ = false;
  bool freed_pending_[2] = {};       // buffer b has a reader this forward: the next write waits for freed_[b]
  bool failed_[2] = {};              // the fast kernel declined buffer b's weight (take: null, the caller's own)
};

}  // namespace mimic::cuda
