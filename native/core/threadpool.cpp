// threadpool — a fixed set of workers woken per parallel_for; chunks are handed out through an
// atomic counter so uneven chunks balance themselves. See threadpool.h for the contract.
#include "core/threadpool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace mimic {
namespace {

thread_local bool t_in_pool = false;  // true on workers and on a caller inside parallel_for

class Pool {
 public:
  ~Pool() { resize(0); }

  int threads() {
    std::lock_guard<std::mutex> g(config_mu_);
    return wanted_;
  }

  void set_threads(int n) {
    if (n <= 0) n = std::max(1u, std::thread::hardware_concurrency());
    std::lock_guard<std::mutex> g(config_mu_);
    wanted_ = n;
  }

  void run(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
    if (n <= 0) return;
    grain = std::max<int64_t>(1, grain);
    std::unique_lock<std::mutex> owner(run_mu_, std::try_to_lock);
    int want = threads();
    if (t_in_pool || !owner.owns_lock() || want <= 1 || n <= grain) {
      fn(0, n);
      return;
    }
    if ((int)workers_.size() != want - 1) resize(want - 1);

    // About 4 chunks per thread: enough to balance, few enough to keep rows contiguous.
    int64_t chunks = std::min<int64_t>((n + grain - 1) / grain, (int64_t)want * 4);
    Job job;
    job.fn = &fn;
    job.n = n;
    job.chunk = (n + chunks - 1) / chunks;
    job.chunks = (n + job.chunk - 1) / job.chunk;
    {
      std::lock_guard<std::mutex> g(mu_);
      job_ = &job;
      ++generation_;
      active_ = (int)workers_.size();
    }
    cv_.notify_all();
    t_in_pool = true;
    work(job);
    t_in_pool = false;
    {
      std::unique_lock<std::mutex> g(mu_);
      done_cv_.wait(g, [&] { return active_ == 0; });
      job_ = nullptr;
    }
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  struct Job {
    const std::function<void(int64_t, int64_t)>* fn = nullptr;
    int64_t n = 0, chunk = 1, chunks = 0;
    std::atomic<int64_t> next{0};
    std::mutex err_mu;
    std::exception_ptr error;
  };

  static void work(Job& job) {
    for (;;) {
      int64_t c = job.next.fetch_add(1);
      if (c >= job.chunks) return;
      int64_t b = c * job.chunk, e = std::min(job.n, b + job.chunk);
      try {
        (*job.fn)(b, e);
      } catch (...) {
        std::lock_guard<std::mutex> g(job.err_mu);
        if (!job.error) job.error = std::current_exception();
        job.next.store(job.chunks);  // stop handing out work
      }
    }
  }

  // `seen` is the generation at creation, so a job posted before this thread first runs is not missed.
  void worker_loop(uint64_t seen) {
    t_in_pool = true;
    for (;;) {
      Job* job;
      {
        std::unique_lock<std::mutex> g(mu_);
        cv_.wait(g, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      if (job) work(*job);
      {
        std::lock_guard<std::mutex> g(mu_);
        if (--active_ == 0) done_cv_.notify_one();
      }
    }
  }

  // Called with run_mu_ held (or from the destructor), never while a job is in flight.
  void resize(int n) {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    stop_ = false;
    uint64_t gen = generation_;
    for (int i = 0; i < n; ++i) workers_.emplace_back([this, gen] { worker_loop(gen); });
  }

  std::mutex config_mu_;
  int wanted_ = (int)std::max(1u, std::thread::hardware_concurrency());

  std::mutex run_mu_;  // one parallel_for owns the workers at a time
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  Job* job_ = nullptr;
  uint64_t generation_ = 0;
  int active_ = 0;
  bool stop_ = false;
};

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

int num_threads() { return pool().threads(); }
void set_num_threads(int n) { pool().set_threads(n); }
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
  pool().run(n, fn, grain);
}

}  // namespace mimic
