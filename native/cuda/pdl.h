// pdl — programmatic dependent launch (sm_90+) for the captured decode step (decode_step.cu).
//
// Why: a batch-1 decode token is ~230 small kernels in one CUDA graph; each boundary waits for the
// previous grid to drain before the next one's blocks start, and the NF4 gemv then pays a DRAM
// round trip before its first product (round 9/10 profiles: the gemv at 11-17 % of DRAM bandwidth,
// latency-bound). With PDL a kernel's blocks are scheduled while its predecessor still runs: they
// do what does not depend on it (stage tables, request their weight rows into L2), then
// `griddepcontrol.wait` blocks until the predecessor grid has completed and its writes are
// visible, and only then read its outputs or write anything. A kernel's PDL instantiation (the
// `dependent` of launch_pdl) must call pdl_wait() before its first read of data another kernel
// wrote and before its first global write; pdl_trigger() at its start lets its own successor be
// scheduled as soon as all of its blocks are resident.
// Reads of another kernel's output go through L2 (__ldcg), never the read-only path (__ldg,
// ld.global.nc): under PDL a kernel is launched — and its SM's L1 lines trusted — while earlier
// kernels still run, and one of those may still be loading the OLD contents of a buffer this kernel
// will read once its wait returns (e.g. xn, normalized twice a layer: a late q/k/v block re-caching
// the first norm beside an early gate/up block). Round 14: decode rows failed (PDL only) in builds
// whose timing differed; with every such load through L2 they pass.
// On by default in the decode graph (MIMIC_DECODE_PDL=0 turns it off): round 12 measured +4 % with
// gemv.cu's kernel; with gemv_tc.cu, which stages its whole weight tile before the wait, +17 %
// (round 13, H200: 488 → 570 tok/s).
#pragma once
#include <cuda_runtime.h>

#include <utility>

#include "core/env.h"
#include "cuda/buffer.h"

namespace mimic::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Set by decode_step's recording while PDL is on (the thread that captures).
inline thread_local bool g_pdl_active = false;
inline bool pdl_active() { return g_pdl_active; }

// The decode step's in-graph timeline (decode_trace in llama_cuda.h): while a graph is recorded
// with tracing on, every PDL launch is followed by a 1-warp marker kernel (launched the same way)
// that stamps %globaltimer when it becomes resident and again after its griddepcontrol.wait, i.e.
// when the kernel before it has completed. Differences of consecutive "completed" stamps are each
// kernel's exposed time inside the real, overlapped step (the marker hop itself adds ~0.5 µs).
void pdl_trace_after(const void* kernel, cudaStream_t st);
inline thread_local bool g_pdl_tracing = false;

// plain<<<grid, block, smem, st>>>(args...), or — while pdl_active() — `dependent`, the kernel's
// instantiation that waits (template flag PDL), with the programmatic-serialization attribute. The
// plain instantiations hold no griddepcontrol instruction at all: every path but a PDL-recorded
// decode graph runs exactly the kernels it ran before.
// Each PDL launch also asks for the largest shared-memory carveout (unless MIMIC_DECODE_CARVEOUT=0,
// read at each recording): an SM runs blocks of one carveout at a time, so a kernel whose launches
// the driver gives another split than its neighbours' cannot start its blocks beside theirs until
// the SM drains — exactly the overlap PDL is for (round 19: three more KB a gate/up block made every
// later launch slower, the step 18 %; the likeliest cause, a carveout step crossed).
template <class... K, class... A>
void launch_pdl(void (*plain)(K...), void (*dependent)(K...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
                A&&... args) {
  if (!pdl_active()) {
    plain<<<grid, block, smem, st>>>(std::forward<A>(args)...);
    return;
  }
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cudaLaunchAttribute at[2];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  at[1].id = cudaLaunchAttributePreferredSharedMemoryCarveout;
  at[1].val.sharedMemCarveout = 100;  // percent of the SM's shared memory / L1
  cfg.attrs = at;
  cfg.numAttrs = env_switch_on("MIMIC_DECODE_CARVEOUT") ? 2 : 1;
  MIMIC_CUDA_CHECK(cudaLaunchKernelEx(&cfg, dependent, std::forward<A>(args)...));
  if (g_pdl_tracing) pdl_trace_after(reinterpret_cast<const void*>(dependent), st);
}

}  // namespace mimic::cuda
