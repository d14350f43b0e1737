// nccl_comm — see nccl_comm.h. Compiled only with MIMIC_NCCL (CMakeLists.txt finds nccl.h and
// libnccl.so.2 in the CUDA toolkit or in the PyTorch wheel nvidia-nccl-cu*).
#include "dist/nccl_comm.h"

#ifdef MIMIC_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <thread>

namespace mimic::dist {
namespace {

using Clock = std::chrono::steady_clock;

ncclComm_t as_comm(void* c) { return static_cast<ncclComm_t>(c); }

std::string nccl_what(ncclComm_t comm, ncclResult_t r) {
  std::string s = ncclGetErrorString(r);
  if (comm) {
    const char* last = ncclGetLastError(comm);
    if (last && *last) s += std::string(": ") + last;
  }
  if (r == ncclRemoteError || r == ncclSystemError)
    s += " (a peer died or its connection broke: see the other workers' errors)";
  return s;
}

}  // namespace

static_assert(sizeof(ncclUniqueId) == kNcclIdBytes, "ncclUniqueId is 128 bytes");

std::vector<uint8_t> nccl_unique_id() {
  ncclUniqueId id;
  const ncclResult_t r = ncclGetUniqueId(&id);
  MIMIC_CHECK(r == ncclSuccess, "ENCCL", "ncclGetUniqueId failed: ", ncclGetErrorString(r));
  std::vector<uint8_t> out(kNcclIdBytes);
  std::memcpy(out.data(), &id, kNcclIdBytes);
  return out;
}

NcclComm::NcclComm(int rank, int world) : rank_(rank), world_(world) {
  MIMIC_CHECK(world >= 1 && rank >= 0 && rank < world, "EINVAL", "NCCL rank ", rank, " of world size ", world);
}

void NcclComm::init(const uint8_t* id_bytes, int64_t timeout_ms) {
  MIMIC_CHECK(!comm_ && !broken_, "EINVAL", "this NCCL communicator was already initialized");
  ncclUniqueId id;
  std::memcpy(&id, id_bytes, kNcclIdBytes);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // every call returns at once; wait() polls with a deadline
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommInitRankConfig(&comm, world_, id, rank_, &config);
  {
    std::lock_guard<std::mutex> g(kill_mu_);
    comm_ = comm;
  }
  if (r != ncclSuccess && r != ncclInProgress) {
    kill();
    fail("ENCCL", "ncclCommInitRankConfig (rank ", rank_, " of ", world_, ") failed: ", nccl_what(nullptr, r));
  }
  wait(nullptr, timeout_ms, "joining the NCCL communicator");
}

NcclComm::~NcclComm() {
  // A clean finalize can wait on peers; abort is immediate and frees the same resources.
  kill();
}

void NcclComm::kill() {
  std::lock_guard<std::mutex> g(kill_mu_);
  if (broken_.exchange(true)) return;
  if (comm_) ncclCommAbort(as_comm(comm_));
}

void NcclComm::abort() {
  abort_requested_ = true;  // the polling thread (if any) sees it within a millisecond
}

void NcclComm::wait(void* stream, int64_t timeout_ms, const char* what) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms > 0 ? timeout_ms : 0);
  for (;;) {
    if (abort_requested_) {
      kill();
      fail("EABORTED", what, " was aborted: another worker failed or the run was stopped");
    }
    ncclResult_t state = ncclSuccess;
    const ncclResult_t q = ncclCommGetAsyncError(as_comm(comm_), &state);
    if (q != ncclSuccess) state = q;
    if (state != ncclSuccess && state != ncclInProgress) {
      const std::string msg = nccl_what(as_comm(comm_), state);
      kill();
      fail("ENCCL", what, " failed on rank ", rank_, ": ", msg);
    }
    if (state == ncclSuccess) {
      if (!stream) return;
      const cudaError_t e = cudaStreamQuery(static_cast<cudaStream_t>(stream));
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) {
        kill();
        fail("ECUDA", what, " failed on rank ", rank_, ": ", cudaGetErrorString(e));
      }
    }
    if (timeout_ms > 0 && Clock::now() > deadline) {
      kill();
      fail("ETIMEDOUT", what, " on rank ", rank_, " of ", world_, " took longer than ", timeout_ms,
           " ms: a peer is stuck or gone (set MIMIC_DIST_TIMEOUT_MS to wait longer)");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

NcclEnd NcclComm::destroy(int64_t timeout_ms) {
  if (ended_.exchange(true)) return NcclEnd::kNone;
  if (!comm_) return NcclEnd::kNone;  // init never created one (kill() already marked it broken)
  if (broken_ || abort_requested_) {  // after an error: abort, never wait on peers
    kill();
    return NcclEnd::kAborted;
  }
  const ncclResult_t f = ncclCommFinalize(as_comm(comm_));
  if (f != ncclSuccess && f != ncclInProgress) {
    kill();
    return NcclEnd::kAborted;
  }
  try {
    wait(nullptr, timeout_ms, "finalizing the NCCL communicator");  // on failure it has aborted
  } catch (const std::exception&) {
    return NcclEnd::kAborted;
  }
  std::lock_guard<std::mutex> g(kill_mu_);
  if (broken_.exchange(true)) return NcclEnd::kAborted;  // (killed meanwhile)
  const ncclResult_t r = ncclCommDestroy(as_comm(comm_));
  comm_ = nullptr;  // gone either way (a failed destroy is not retried, nor aborted: the handle may be half freed)
  return r == ncclSuccess || r == ncclInProgress ? NcclEnd::kDestroyed : NcclEnd::kAborted;
}

void NcclComm::all_reduce_sum(float* dev, size_t n, void* stream, size_t bucket_elems, int64_t timeout_ms) {
  MIMIC_CHECK(!ended_, "EABORTED", "the NCCL communicator was destroyed: the run is over");
  MIMIC_CHECK(!broken_, "EABORTED", "the NCCL communicator was aborted earlier; the run cannot continue");
  MIMIC_CHECK(comm_, "EINVAL", "the NCCL communicator is not initialized (init first)");
  if (n == 0 || world_ == 1) return;
  if (bucket_elems == 0) bucket_elems = n;
  ncclComm_t comm = as_comm(comm_);
  ncclResult_t r = ncclGroupStart();
  for (size_t off = 0; r == ncclSuccess && off < n; off += bucket_elems) {
    const size_t cnt = n - off < bucket_elems ? n - off : bucket_elems;
    r = ncclAllReduce(dev + off, dev + off, cnt, ncclFloat32, ncclSum, comm, static_cast<cudaStream_t>(stream));
    if (r == ncclInProgress) r = ncclSuccess;
  }
  const ncclResult_t g = ncclGroupEnd();
  if (r == ncclSuccess && g != ncclSuccess && g != ncclInProgress) r = g;
  if (r != ncclSuccess) {
    const std::string msg = nccl_what(comm, r);
    kill();
    fail("ENCCL", "ncclAllReduce of the LoRA gradients (", n, " floats) failed on rank ", rank_, ": ", msg);
  }
  wait(stream, timeout_ms, "the all-reduce of the LoRA gradients");
}

}  // namespace mimic::dist

#endif  // MIMIC_NCCL
