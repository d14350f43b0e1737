// threadpool — one small persistent pool of CPU workers shared by every CPU op.
//
// parallel_for(n, fn) splits [0, n) into contiguous chunks and runs fn(begin, end) on them,
// the calling thread included; it returns when every chunk is done. The thread count is set
// once by the addon (set_num_threads; 0 = all cores). A parallel_for issued from inside a
// worker (nested) or while another thread owns the pool runs the loop serially on the caller
// instead of waiting: nesting never deadlocks and two models on two threads still make progress.
// Exceptions thrown by fn are caught and the first one is rethrown on the calling thread.
#pragma once
#include <cstdint>
#include <functional>

namespace mimic {

// Number of threads parallel_for uses (workers + the caller). Always >= 1.
int num_threads();
// 0 = hardware concurrency. Takes effect for the next parallel_for; safe to call any time.
void set_num_threads(int n);

// fn(begin, end) over [0, n) in chunks of at least `grain` indices.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 1);

}  // namespace mimic
