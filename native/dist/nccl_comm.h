// nccl_comm — the NCCL data plane of data-parallel LoRA training (lib/train/distributed/).
//
// One process per GPU (see lib/train/distributed/launch.ts for why processes, not threads): each
// holds one NcclComm over the same 128-byte unique id, which rank 0 made with nccl_unique_id()
// and the TCP rendezvous handed to the others. The LoRA gradients live in one contiguous fp32
// arena on the device (cuda/llama_cuda.h: DeviceModel::lg), so the all-reduce is a sum in place
// over that arena, issued as buckets of `bucket_elems` floats inside one NCCL group (NCCL
// pipelines them; the bucket bounds are where an overlap with the backward would cut, once the
// backward reports finished layers).
//
// Never hangs, never aborts the process: the communicator is created non-blocking
// (config.blocking = 0), and every wait — init, the group launch and the stream — is a poll of
// ncclCommGetAsyncError / cudaStreamQuery against a deadline. A dead peer (its NCCL error
// surfaces as ncclRemoteError / ncclSystemError), a timeout, or abort() from the JS thread
// makes the waiting call ncclCommAbort the communicator and throw mimic::Error (ENCCL,
// ETIMEDOUT, EABORTED). An aborted communicator stays unusable; the run ends.
//
// A rank ends its communicator with destroy() when its run is over (lib/train/distributed/
// context.ts: close): a healthy one is finalized (ncclCommFinalize, polled against the deadline)
// and destroyed (ncclCommDestroy); one that broke, or whose abort() was asked for, or whose
// finalize fails or times out, is aborted (ncclCommAbort). The destructor — a trainer collected
// without destroy() — aborts.
//
// Built only where CMake found CUDA and NCCL (MIMIC_NCCL, see CMakeLists.txt); elsewhere the
// inline stubs below say so with ENOTSUP, and training falls back to the TCP all-reduce.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "core/error.h"

namespace mimic::dist {

constexpr int kNcclIdBytes = 128;  // sizeof(ncclUniqueId)

// What NcclComm::destroy() did: nothing (never initialized, or an earlier destroy ended it),
// ncclCommDestroy after a clean finalize, or ncclCommAbort.
enum class NcclEnd { kNone, kDestroyed, kAborted };
inline const char* nccl_end_name(NcclEnd e) {
  return e == NcclEnd::kDestroyed ? "destroyed" : e == NcclEnd::kAborted ? "aborted" : "none";
}

#ifdef MIMIC_NCCL

// True: this build has the NCCL transport.
inline bool nccl_built() { return true; }
// A fresh ncclUniqueId (rank 0 only), as bytes for the rendezvous.
std::vector<uint8_t> nccl_unique_id();

class NcclComm {
 public:
  NcclComm(int rank, int world);
  // Joins the communicator of `world` ranks (every rank calls with the same id). Throws ETIMEDOUT
  // when the others do not join within timeout_ms, ENCCL on an NCCL error, EABORTED after abort().
  void init(const uint8_t* id, int64_t timeout_ms);
  ~NcclComm();  // destroys (or aborts, when broken) the communicator; never throws
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  // dev[0, n) ← Σ over ranks, in place, on `stream` (a cudaStream_t); returns when the sum is
  // complete on this rank. Throws ETIMEDOUT after timeout_ms, ENCCL, or EABORTED.
  void all_reduce_sum(float* dev, size_t n, void* stream, size_t bucket_elems, int64_t timeout_ms);
  // Any thread: the waiting call (or the next one) aborts the communicator and throws EABORTED.
  void abort();
  // Ends the communicator (see the top of this file): finalize + ncclCommDestroy when healthy,
  // ncclCommAbort when broken or aborted or when the finalize fails or outlasts timeout_ms.
  // Idempotent (a second call returns kNone); never throws. The caller makes sure no other call
  // (init, all_reduce_sum) is in flight.
  NcclEnd destroy(int64_t timeout_ms);
  int rank() const { return rank_; }
  int world() const { return world_; }

 private:
  void wait(void* stream, int64_t timeout_ms, const char* what);  // polls; aborts on failure
  void kill();                                                       // ncclCommAbort once
  void* comm_ = nullptr;  // ncclComm_t
  int rank_ = 0, world_ = 1;
  std::atomic<bool> abort_requested_{false};
  std::atomic<bool> broken_{false};
  std::atomic<bool> ended_{false};  // destroy() ran: the communicator is gone
  std::mutex kill_mu_;
};

#else  // no NCCL in this build

inline bool nccl_built() { return false; }
inline std::vector<uint8_t> nccl_unique_id() {
  fail("ENOTSUP", "this build of mimic has no NCCL: rebuild on a machine with CUDA and NCCL (nccl.h, libnccl.so.2; "
       "see docs/distributed.md), or train data-parallel on the CPU (workers)");
}
class NcclComm {
 public:
  NcclComm(int, int) {}
  void init(const uint8_t*, int64_t) { (void)nccl_unique_id(); }
  void all_reduce_sum(float*, size_t, void*, size_t, int64_t) { (void)nccl_unique_id(); }
  void abort() {}
  NcclEnd destroy(int64_t) { return NcclEnd::kNone; }
  int rank() const { return 0; }
  int world() const { return 1; }
};

#endif

}  // namespace mimic::dist
