// context — the process-wide CUDA stream and cuBLAS handle every CUDA twin runs on.
//
// One device (0), one non-blocking stream (the greatest priority), one cuBLAS handle bound to it with a 32 MiB workspace
// (so cuBLAS never allocates during a step). Created on first use; lives until exit.
#include <cublas_v2.h>

#include <mutex>

#include "cuda/cuda_ops.h"

namespace mimic::cuda {

bool available() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) { cudaGetLastError(); return false; }
  return n > 0;
}

size_t device_memory_used() {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) { cudaGetLastError(); return 0; }
  return total_b - free_b;
}

Context& Context::get() {
  static Context ctx;
  static std::once_flag once;
  static bool ok = false;
  std::call_once(once, [] {
    if (!available()) return;
    if (cudaSetDevice(0) != cudaSuccess) { cudaGetLastError(); return; }
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) { cudaGetLastError(); return; }
    ctx.sm_count = prop.multiProcessorCount;
    ctx.total_mem = prop.totalGlobalMem;
    std::snprintf(ctx.name, sizeof ctx.name, "%s", prop.name);
    // the greatest priority: where another stream's work waits beside it (dequant_ahead.cu's side stream),
    // the block scheduler starts this stream's blocks first (alone, priorities change nothing)
    int least = 0, greatest = 0;
    if (cudaDeviceGetStreamPriorityRange(&least, &greatest) != cudaSuccess) { cudaGetLastError(); greatest = 0; }
    if (cudaStreamCreateWithPriority(&ctx.stream, cudaStreamNonBlocking, greatest) != cudaSuccess) { cudaGetLastError(); return; }
    cublasHandle_t h = nullptr;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return;
    cublasSetStream(h, ctx.stream);
    const size_t ws = 32u << 20;
    if (cudaMalloc(&ctx.blas_ws, ws) == cudaSuccess) cublasSetWorkspace(h, ctx.blas_ws, ws);
    else cudaGetLastError();
    cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
    ctx.blas = h;
    ok = true;
  });
  MIMIC_CHECK(ok, "ECUDA", "no usable CUDA device (or cuBLAS failed to start); use device 'cpu'");
  return ctx;
}

void Context::sync() { MIMIC_CUDA_CHECK(cudaStreamSynchronize(stream)); }

}  // namespace mimic::cuda
