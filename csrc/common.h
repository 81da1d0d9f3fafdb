// Shared by the CPU kernels: run-time instruction-set selection and the thread-pool driver.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>

#include "xla/ffi/api/ffi.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define BITNET_X86 1
#include <immintrin.h>
#define BITNET_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define BITNET_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define BITNET_TARGET_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,amx-tile,amx-int8")))
#else
#define BITNET_X86 0
#endif

namespace bitnet {

namespace ffi = xla::ffi;

// Instruction-set paths, widest last. Every kernel has one function per level; a kernel without an
// AMX variant runs its AVX-512 VNNI code at kAmx (AMX CPUs have AVX-512 VNNI).
enum IsaLevel : int { kScalar = 0, kAvx2 = 1, kAvx512Vnni = 2, kAmx = 3, kNumIsaLevels = 4 };

const char* isa_name(int level);
bool isa_supported(int level);
int isa_level();               // the forced level, else the widest supported
void set_isa_level(int level);  // -1: back to the widest supported

// Load 4 bytes as one int32 (for a broadcast).
inline int32_t load_quad(const void* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Worker count: $BITNET_JAX_CPU_THREADS (read at every call, > 0) else the size of XLA's pool.
inline int64_t thread_count(ffi::ThreadPool& pool) {
  const char* s = std::getenv("BITNET_JAX_CPU_THREADS");
  const int64_t forced = s ? std::atoll(s) : 0;
  return forced > 0 ? forced : std::max<int64_t>(1, pool.num_threads());
}

// Runs fn(chunk) for chunk in [0, num_chunks) on the caller and up to threads - 1 pool tasks, which
// claim chunks through an atomic counter. The caller works too and waits only for claimed chunks,
// so it never deadlocks on a busy or missing pool; the state is shared with the tasks so that a
// task starting after the call returned finds no chunk left and touches nothing else.
template <typename Fn>
void parallel_chunks(ffi::ThreadPool& pool, int64_t num_chunks, int64_t threads, Fn fn) {
  struct State {
    explicit State(Fn f, int64_t n) : fn(std::move(f)), num_chunks(n) {}
    Fn fn;
    const int64_t num_chunks;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    void work() {
      for (;;) {
        const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
        if (c >= num_chunks) return;
        fn(c);
        done.fetch_add(1, std::memory_order_acq_rel);
      }
    }
  };
  if (num_chunks <= 0) return;
  auto state = std::make_shared<State>(std::move(fn), num_chunks);
  const int64_t helpers = std::min(threads - 1, num_chunks - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([state]() { state->work(); });
  state->work();
  for (int spins = 0; state->done.load(std::memory_order_acquire) < num_chunks; ++spins) {
    if (spins < 4096) {
#if BITNET_X86
      _mm_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }
}

// Splits num_items into contiguous chunks: a few per thread (balance under contention), each at
// least min_items, the chunk size a multiple of `multiple`. Returns the items per chunk.
inline int64_t chunk_size(int64_t num_items, int64_t threads, int64_t min_items, int64_t multiple) {
  const int64_t max_chunks = std::max<int64_t>(1, (num_items + min_items - 1) / std::max<int64_t>(1, min_items));
  const int64_t chunks = std::max<int64_t>(1, std::min(threads * 4, max_chunks));
  int64_t per = (num_items + chunks - 1) / chunks;
  per = (per + multiple - 1) / multiple * multiple;
  return std::max<int64_t>(per, 1);
}

}  // namespace bitnet
