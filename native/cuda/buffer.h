// buffer.h — host-side CUDA plumbing shared by the CUDA twins, the engine and the tests:
// error translation and an owning device buffer. Plain C++ (no device code), so .cpp files
// built by the host compiler can include it.
//
// Every CUDA status goes through MIMIC_CUDA_CHECK, which throws mimic::Error ("EOOM" for
// out-of-memory, "ECUDA" otherwise) with advice; nothing aborts. Kernel launches are followed
// by MIMIC_CUDA_LAUNCHED() (cudaGetLastError, no sync).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace mimic::cuda {

using bf16 = __nv_bfloat16;

constexpr const char* kOomAdvice =
    "GPU out of memory: lower batchTokens (or the batch size), shorten maxSeqLen, or turn "
    "recomputation on";

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  cudaGetLastError();  // clear a sticky-free error so later calls are not poisoned
  if (e == cudaErrorMemoryAllocation)
    ::mimic::fail("EOOM", kOomAdvice, " (", what, ": ", cudaGetErrorString(e), ")");
  ::mimic::fail("ECUDA", "CUDA error in ", what, " at ", file, ":", line, ": ", cudaGetErrorString(e),
                " — if it persists, retry with device 'cpu' or a smaller batchTokens/maxSeqLen");
}

}  // namespace mimic::cuda

#define MIMIC_CUDA_CHECK(call)                                                           \
  do {                                                                                   \
    cudaError_t e_ = (call);                                                             \
    if (e_ != cudaSuccess) ::mimic::cuda::throw_cuda(e_, #call, __FILE__, __LINE__);     \
  } while (0)
#define MIMIC_CUDA_LAUNCHED() MIMIC_CUDA_CHECK(cudaGetLastError())

namespace mimic::cuda {

// Owning device allocation (cudaMalloc; EOOM with advice on failure). Move-only.
template <class T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  DevBuf() = default;
  explicit DevBuf(size_t count) { alloc(count); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : p(o.p), n(o.n) { o.p = nullptr; o.n = 0; }
  DevBuf& operator=(DevBuf&& o) noexcept {
    if (this != &o) { release(); p = o.p; n = o.n; o.p = nullptr; o.n = 0; }
    return *this;
  }
  ~DevBuf() { release(); }
  void alloc(size_t count) {
    release();
    if (count == 0) return;
    MIMIC_CUDA_CHECK(cudaMalloc((void**)&p, count * sizeof(T)));
    n = count;
  }
  // Grows (never shrinks) to at least count elements; contents are not kept.
  void reserve(size_t count) { if (count > n) alloc(count); }
  void release() { if (p) cudaFree(p); p = nullptr; n = 0; }
  size_t bytes() const { return n * sizeof(T); }
  T* get() const { return p; }
};

// Synchronous helpers for set-up code (uploads at load time, reads for checks).
template <class T>
DevBuf<T> upload(const T* host, size_t n) {
  DevBuf<T> b(n);
  if (n) MIMIC_CUDA_CHECK(cudaMemcpy(b.p, host, n * sizeof(T), cudaMemcpyHostToDevice));
  return b;
}
template <class T>
DevBuf<T> upload(const std::vector<T>& v) { return upload(v.data(), v.size()); }
template <class T>
std::vector<T> download(const T* dev, size_t n) {
  std::vector<T> h(n);
  if (n) MIMIC_CUDA_CHECK(cudaMemcpy(h.data(), dev, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}
}  // namespace mimic::cuda
