// A CPU emulation of the CUDA execution model (csrc/cuda/launch.cuh: launches, dynamic shared
// memory; __shared__ variables, barriers, warp shuffles, the few runtime calls the launchers make)
// and of the sm_80 primitives in csrc/cuda/mma_sm80.cuh, so that every kernel file
// (csrc/cuda/*.cu) compiles with g++ and runs on the host, unchanged, in the tests.
//
// Each CUDA thread is a fiber (its own stack); a block runs its fibers one after another, switching
// at barriers and warp collectives. The primitives follow the PTX ISA: mma.m16n8k16 and ldmatrix
// gather all 32 lanes' operands and scatter the results by the documented fragment layouts; shared
// memory starts as NaN bytes. It also checks what the hardware would fault on or slow down for:
// every ldmatrix/cp.async address in bounds and 16-byte aligned, every cp.async source inside a
// registered buffer, divergent collectives, deadlocks, and it counts ldmatrix bank conflicts.
//
// Two schedules (GENCORE_EMU_SCHEDULE), each legal on real hardware, which together bracket when
// an asynchronous copy may land and how far one warp may run ahead of the others:
//   wait   (default) every round runs the threads in a fresh random order; a cp.async copy lands
//          only when its thread's cp.async.wait_group retires its group (reading a stage early
//          sees stale data).
//   ahead  every copy lands the moment it is issued, and each round first runs one warp (chosen at
//          random) as far as it can go, up to a block barrier, before any other thread moves: a
//          stage overwritten before every warp is done with it (a missing __syncthreads) shows.
// GENCORE_EMU_SEED seeds the block and thread orders. Built with -fsanitize=address,undefined the
// fiber switches are announced to AddressSanitizer, so its reports are real out-of-bounds accesses.
// Include this before the kernel source: it defines launch.cuh's and mma_sm80.cuh's include guards.
#pragma once
#define GENCORE_CUDA_MMA_SM80_CUH
#define GENCORE_CUDA_LAUNCH_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <tuple>
#include <type_traits>
#include <vector>

#include <math.h>  // the float overloads of fabs, exp, ... in the global namespace, as in device code

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define GENCORE_EMU_ASAN 1
#else
#define GENCORE_EMU_ASAN 0
#endif

// The CUDA keywords as plain C++.
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __host__
#define __host__
#undef __forceinline__
#define __forceinline__ inline
#undef __launch_bounds__
#define __launch_bounds__(...)
// One block runs at a time, so a function-local static is the block's shared variable.
#undef __shared__
#define __shared__ static

using std::max;
using std::min;

namespace gencore_emu {

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "emulator: %s\n", what);
  std::abort();
}

struct CpAsync {
  void* dst;
  const void* src;
  bool valid;
};

struct Fiber {
  ucontext_t start;
  jmp_buf resume;
  std::unique_ptr<char[]> stack;
  void* fake_stack = nullptr;  // AddressSanitizer's state of this fiber while it is switched out
  bool started = false, done = false;
  uint64_t barrier_wait = ~uint64_t(0);  // the barrier generation it waits on, if it does
  uint3 tid{};
  std::vector<CpAsync> pending;             // issued, not committed
  std::deque<std::vector<CpAsync>> groups;  // committed, not retired
};

struct WarpState {
  int arrived = 0, kind = 0;
  uint64_t generation = 0;
  void* args[32];
};

struct Stats {
  int max_ldmatrix_ways = 0;  // worst bank conflict of one 8-row ldmatrix phase (1 = none)
  long collectives = 0, blocks = 0;
};

struct Buffer {
  const char* lo;
  size_t bytes;
};

enum class Schedule { kWait, kAhead };

inline Schedule schedule_from_env() {
  const char* s = std::getenv("GENCORE_EMU_SCHEDULE");
  if (!s || !*s || std::strcmp(s, "wait") == 0) return Schedule::kWait;
  if (std::strcmp(s, "ahead") == 0) return Schedule::kAhead;
  std::fprintf(stderr, "emulator: GENCORE_EMU_SCHEDULE must be wait or ahead, got %s\n", s);
  std::abort();
}

struct Machine {
  Schedule schedule = schedule_from_env();
  uint64_t progress = 0;  // counts arrivals at barriers and collectives, and finished threads
  const void* sched_stack = nullptr;  // the scheduler's stack, for AddressSanitizer
  size_t sched_stack_size = 0;
  void* sched_fake_stack = nullptr;
  std::vector<Fiber> fibers;
  std::vector<WarpState> warps;
  std::vector<unsigned char> smem;
  size_t smem_bytes = 0;
  int barrier_arrived = 0;
  uint64_t barrier_generation = 0;
  Fiber* current = nullptr;
  jmp_buf scheduler;
  ucontext_t scheduler_ctx;
  std::function<void()> body;
  uint3 block_idx{}, block_dim{}, grid_dim{};
  std::mt19937 rng{std::getenv("GENCORE_EMU_SEED") ? (unsigned)std::atoi(std::getenv("GENCORE_EMU_SEED")) : 12345u};
  std::vector<Buffer> buffers;  // where cp.async may read
  Stats stats;
};

inline Machine& machine() {
  static Machine m;
  return m;
}

inline void register_buffer(const void* p, size_t bytes) {
  machine().buffers.push_back({static_cast<const char*>(p), bytes});
}

// AddressSanitizer must hear of every switch between stacks (else it takes the other stack's
// frames for overflows); no-ops in a plain build.
inline void to_scheduler(Fiber& f) {
#if GENCORE_EMU_ASAN
  Machine& m = machine();
  __sanitizer_start_switch_fiber(f.done ? nullptr : &f.fake_stack, m.sched_stack, m.sched_stack_size);
#else
  (void)f;
#endif
}
inline void back_in_fiber(Fiber& f) {
#if GENCORE_EMU_ASAN
  Machine& m = machine();
  __sanitizer_finish_switch_fiber(f.fake_stack, &m.sched_stack, &m.sched_stack_size);
#else
  (void)f;
#endif
}
inline void to_fiber(Fiber& f, size_t stack_size) {
#if GENCORE_EMU_ASAN
  __sanitizer_start_switch_fiber(&machine().sched_fake_stack, f.stack.get(), stack_size);
#else
  (void)f, (void)stack_size;
#endif
}
inline void back_in_scheduler() {
#if GENCORE_EMU_ASAN
  __sanitizer_finish_switch_fiber(machine().sched_fake_stack, nullptr, nullptr);
#endif
}

inline void yield() {
  Machine& m = machine();
  Fiber& f = *m.current;
  if (!_setjmp(f.resume)) {
    to_scheduler(f);
    _longjmp(m.scheduler, 1);
  }
  back_in_fiber(f);
}

inline void fiber_main() {
  Machine& m = machine();
  back_in_fiber(*m.current);
  m.body();
  m.current->done = true;
  ++m.progress;
  to_scheduler(*m.current);
  _longjmp(m.scheduler, 1);
}

inline int lane_of(const Fiber& f) { return f.tid.x % 32; }
inline int warp_of(const Fiber& f) { return f.tid.x / 32; }

// Every lane of the warp deposits `args`; the last to arrive runs `op` over all 32, the others wait.
template <class Op>
void collective(int kind, void* args, Op&& op) {
  Machine& m = machine();
  Fiber& f = *m.current;
  WarpState& w = m.warps[warp_of(f)];
  if (w.arrived == 0) w.kind = kind;
  else if (w.kind != kind) fail("lanes of one warp reached different collectives");
  w.args[lane_of(f)] = args;
  const uint64_t gen = w.generation;
  ++m.progress;
  if (++w.arrived == 32) {
    op(w.args);
    w.arrived = 0;
    ++w.generation;
    ++m.stats.collectives;
  } else {
    while (w.generation == gen) yield();
  }
}

// __syncthreads_or(pred) (and __syncthreads: the value unused): every thread of the block
// arrives, each gets the OR of the predicates.
inline int syncthreads_or(int pred) {
  Machine& m = machine();
  static int votes[2];  // by barrier generation parity: the next barrier may start before all read
  const uint64_t gen = m.barrier_generation;
  if (m.barrier_arrived == 0) votes[gen & 1] = 0;
  votes[gen & 1] |= pred != 0;
  ++m.progress;
  if (++m.barrier_arrived == (int)m.fibers.size()) {
    m.barrier_arrived = 0;
    ++m.barrier_generation;
  } else {
    m.current->barrier_wait = gen;
    while (m.barrier_generation == gen) yield();
    m.current->barrier_wait = ~uint64_t(0);
  }
  return votes[gen & 1];
}

inline void syncthreads() { syncthreads_or(0); }

inline void syncwarp() {
  collective(1, nullptr, [](void**) {});
}

template <typename V>
V shfl_down(V v, unsigned delta) {
  struct Arg {
    V in, out;
  } a{v, v};
  collective(6, &a, [delta](void** args) {
    for (int l = 0; l < 32; ++l)  // lanes past the end keep their own value
      static_cast<Arg*>(args[l])->out = static_cast<Arg*>(args[l + delta < 32 ? l + delta : l])->in;
  });
  return a.out;
}

template <typename V>
V shfl_xor(V v, int lane_mask) {
  struct Arg {
    V in, out;
    int mask;
  } a{v, v, lane_mask};
  collective(2, &a, [](void** args) {
    for (int l = 0; l < 32; ++l) {
      Arg* x = static_cast<Arg*>(args[l]);
      x->out = static_cast<Arg*>(args[l ^ x->mask])->in;
    }
  });
  return a.out;
}

inline const unsigned char* smem_check(const void* p, size_t bytes, const char* what) {
  Machine& m = machine();
  const unsigned char* c = static_cast<const unsigned char*>(p);
  if (c < m.smem.data() || c + bytes > m.smem.data() + m.smem_bytes) fail(what);
  if ((c - m.smem.data()) % 16 != 0) fail("shared-memory address not 16-byte aligned");
  return c;
}

inline void copy_group(const std::vector<CpAsync>& group) {
  Machine& m = machine();
  for (const CpAsync& c : group) {
    if (!c.valid) {
      std::memset(c.dst, 0, 16);
      continue;
    }
    const char* s = static_cast<const char*>(c.src);
    bool inside = false;
    for (const Buffer& b : m.buffers) inside |= s >= b.lo && s + 16 <= b.lo + b.bytes;
    if (!inside) fail("cp.async reads outside every input buffer");
    if (reinterpret_cast<uintptr_t>(s) % 16 != 0) fail("cp.async source not 16-byte aligned");
    std::memcpy(c.dst, s, 16);
  }
}

// Resumes fiber f until it yields or finishes.
inline void resume(Fiber& f, size_t stack_size) {
  Machine& m = machine();
  m.current = &f;
  if (!_setjmp(m.scheduler)) {
    to_fiber(f, stack_size);
    if (!f.started) {
      f.started = true;
      swapcontext(&m.scheduler_ctx, &f.start);
    } else {
      _longjmp(f.resume, 1);
    }
  }
  back_in_scheduler();
}

// Whether f can move: not finished, and not waiting on a barrier that has not released.
inline bool runnable(const Fiber& f) {
  return !f.done && f.barrier_wait != machine().barrier_generation;
}

// Runs every block of the grid, one after another (in a shuffled order).
inline void run_grid(const std::function<void()>& body, dim3 grid, dim3 block, size_t smem_bytes) {
  Machine& m = machine();
  constexpr size_t kStack = 256 * 1024;
  std::vector<uint3> blocks;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) blocks.push_back({x, y, z});
  std::shuffle(blocks.begin(), blocks.end(), m.rng);
  if (block.y != 1 || block.z != 1 || block.x % 32 != 0) fail("only 1-d blocks of whole warps");
  m.grid_dim = {grid.x, grid.y, grid.z};
  m.block_dim = {block.x, 1, 1};
  m.body = body;
  for (const uint3& bi : blocks) {
    m.block_idx = bi;
    m.smem_bytes = smem_bytes;
    m.smem.assign(smem_bytes + 64, 0xff);  // NaN in bf16 and fp16; 64 guard bytes
    m.fibers = std::vector<Fiber>(block.x);
    m.warps = std::vector<WarpState>(block.x / 32);
    m.barrier_arrived = 0;
    std::vector<int> order(block.x);
    for (unsigned t = 0; t < block.x; ++t) {
      Fiber& f = m.fibers[t];
      f.tid = {t, 0, 0};
      f.stack.reset(new char[kStack]);
      getcontext(&f.start);
      f.start.uc_stack.ss_sp = f.stack.get();
      f.start.uc_stack.ss_size = kStack;
      f.start.uc_link = nullptr;
      makecontext(&f.start, fiber_main, 0);
      order[t] = t;
    }
    const int n_warps = (int)block.x / 32;
    for (long round = 0;; ++round) {
      if (round > 100000000) fail("deadlock");
      if (m.schedule == Schedule::kAhead) {
        // One warp runs ahead: its lanes move until none can (all at a barrier, or finished).
        const int lead = std::uniform_int_distribution<int>(0, n_warps - 1)(m.rng);
        for (uint64_t before = ~uint64_t(0); before != m.progress;) {
          before = m.progress;
          for (int l = 0; l < 32; ++l) {
            Fiber& f = m.fibers[32 * lead + l];
            if (runnable(f)) resume(f, kStack);
          }
        }
      }
      std::shuffle(order.begin(), order.end(), m.rng);
      bool all_done = true;
      for (int t : order) {
        Fiber& f = m.fibers[t];
        if (f.done) continue;
        all_done = false;
        resume(f, kStack);
      }
      if (all_done) break;
    }
    for (const Fiber& f : m.fibers) {
      bool in_flight = !f.pending.empty();
      for (const auto& group : f.groups) in_flight |= !group.empty();
      if (in_flight) fail("a thread exited with cp.async copies in flight");
    }
    for (size_t i = smem_bytes; i < smem_bytes + 64; ++i)
      if (m.smem[i] != 0xff) fail("write past the end of dynamic shared memory");
    ++m.stats.blocks;
  }
}

}  // namespace gencore_emu

#define threadIdx (gencore_emu::machine().current->tid)
#define blockIdx (gencore_emu::machine().block_idx)
#define blockDim (gencore_emu::machine().block_dim)
#define gridDim (gencore_emu::machine().grid_dim)
#define __syncthreads() gencore_emu::syncthreads()
#define __syncthreads_or(pred) gencore_emu::syncthreads_or(pred)
#define __syncwarp(...) gencore_emu::syncwarp()
#define __shfl_xor_sync(mask, v, lane_mask) gencore_emu::shfl_xor(v, lane_mask)
#define __shfl_down_sync(mask, v, delta) gencore_emu::shfl_down(v, delta)

// The runtime calls the launchers make, answered as an A100 would (device 0). Defined here: each
// driver is one translation unit, linked without the CUDA runtime.
extern "C" {
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = 166912; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = 167936; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 8; return cudaSuccess;
    default: gencore_emu::fail("cudaDeviceGetAttribute: an attribute the emulator does not know");
  }
}
cudaError_t cudaFuncSetAttribute(const void*, enum cudaFuncAttribute, int) { return cudaSuccess; }
}
// cuda_runtime.h's overload for a kernel pointer exists only under nvcc.
template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel*, enum cudaFuncAttribute, int) { return cudaSuccess; }

namespace gencore {

inline unsigned char* dynamic_smem() { return gencore_emu::machine().smem.data(); }

template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
                          const Args&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch_kernel: argument count");
  if (smem > 166912) gencore_emu::fail("more dynamic shared memory than an A100 block may have (163 KiB)");
  if (block.x > 1024) gencore_emu::fail("more than 1024 threads in a block");
  std::tuple<std::decay_t<Params>...> params{static_cast<std::decay_t<Params>>(args)...};
  gencore_emu::run_grid([&] { std::apply(kernel, params); }, grid, block, smem);
  return cudaSuccess;
}

namespace mma {

inline void cp_async_16(void* dst, const void* src, bool valid) {
  gencore_emu::smem_check(dst, 16, "cp.async destination outside dynamic shared memory");
  if (gencore_emu::machine().schedule == gencore_emu::Schedule::kAhead) {
    gencore_emu::copy_group({{dst, src, valid}});  // lands at issue
    return;
  }
  gencore_emu::machine().current->pending.push_back({dst, src, valid});
}

inline void cp_async_commit() {
  gencore_emu::Fiber& f = *gencore_emu::machine().current;
  f.groups.push_back(std::move(f.pending));
  f.pending.clear();
}

template <int N>
void cp_async_wait() {
  gencore_emu::Fiber& f = *gencore_emu::machine().current;
  while (f.groups.size() > N) {
    gencore_emu::copy_group(f.groups.front());
    f.groups.pop_front();
  }
}

namespace detail {
struct LdsmArg {
  const unsigned char* row;
  uint32_t* r;
};

inline uint16_t elem(const unsigned char* row, int i) {
  uint16_t v;
  std::memcpy(&v, row + 2 * i, 2);
  return v;
}

// Lanes 8i..8i+7 address the rows of matrix i; lane 4g+t receives row g, elements 2t, 2t+1
// (.trans: rows 2t, 2t+1 at element g).
inline void ldmatrix(uint32_t (&r)[4], const void* row_addr, bool trans) {
  LdsmArg a{gencore_emu::smem_check(row_addr, 16, "ldmatrix row outside dynamic shared memory"), r};
  gencore_emu::collective(trans ? 4 : 3, &a, [trans](void** args) {
    gencore_emu::Machine& m = gencore_emu::machine();
    const unsigned char* rows[32];
    for (int l = 0; l < 32; ++l) rows[l] = static_cast<LdsmArg*>(args[l])->row;
    for (int i = 0; i < 4; ++i) {
      int words_per_bank[32] = {};  // distinct 4-byte words of this phase in each bank
      std::vector<uintptr_t> seen;
      for (int j = 0; j < 8; ++j)
        for (int w = 0; w < 4; ++w) {
          const uintptr_t word = (rows[8 * i + j] - m.smem.data()) / 4 + w;
          if (std::find(seen.begin(), seen.end(), word) != seen.end()) continue;
          seen.push_back(word);
          ++words_per_bank[word % 32];
        }
      m.stats.max_ldmatrix_ways = std::max(m.stats.max_ldmatrix_ways, *std::max_element(words_per_bank, words_per_bank + 32));
      for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        uint16_t lo, hi;
        if (!trans) {
          lo = elem(rows[8 * i + g], 2 * t);
          hi = elem(rows[8 * i + g], 2 * t + 1);
        } else {
          lo = elem(rows[8 * i + 2 * t], g);
          hi = elem(rows[8 * i + 2 * t + 1], g);
        }
        static_cast<LdsmArg*>(args[l])->r[i] = uint32_t(lo) | (uint32_t(hi) << 16);
      }
    }
  });
}

template <typename T>
float to_float(uint16_t bits) {
  T x;
  std::memcpy(&x, &bits, 2);
  return static_cast<float>(x);
}

struct MmaArg {
  float* d;
  const uint32_t* a;
  uint32_t b0, b1;
};
}  // namespace detail

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr) { detail::ldmatrix(r, row_addr, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_addr) { detail::ldmatrix(r, row_addr, true); }

// d += a * b by the m16n8k16 fragment layouts (products exact in float, sums in float).
template <typename T>
void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  detail::MmaArg x{d, a, b0, b1};
  gencore_emu::collective(5, &x, [](void** args) {
    float A[16][16], B[16][8], C[16][8];
    auto half = [](uint32_t r, int i) { return detail::to_float<T>(uint16_t(i ? r >> 16 : r & 0xffff)); };
    for (int l = 0; l < 32; ++l) {
      const detail::MmaArg& m = *static_cast<detail::MmaArg*>(args[l]);
      const int g = l / 4, t = l % 4;
      for (int i = 0; i < 2; ++i) {
        A[g][2 * t + i] = half(m.a[0], i);
        A[g + 8][2 * t + i] = half(m.a[1], i);
        A[g][2 * t + 8 + i] = half(m.a[2], i);
        A[g + 8][2 * t + 8 + i] = half(m.a[3], i);
        B[2 * t + i][g] = half(m.b0, i);
        B[2 * t + 8 + i][g] = half(m.b1, i);
        C[g][2 * t + i] = m.d[i];
        C[g + 8][2 * t + i] = m.d[2 + i];
      }
    }
    for (int l = 0; l < 32; ++l) {
      const detail::MmaArg& m = *static_cast<detail::MmaArg*>(args[l]);
      const int g = l / 4, t = l % 4;
      for (int e = 0; e < 4; ++e) {
        const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
        float acc = 0.f;
        for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
        m.d[e] = C[row][col] + acc;
      }
    }
  });
}

inline float fast_exp2(float x) {
  const float y = std::exp2(x);
  return y < 1.17549435e-38f ? 0.f : y;  // .ftz
}

template <typename T>
uint32_t pack2(float lo, float hi) {
  const auto v = [&] {
    if constexpr (std::is_same_v<T, __half>) return __floats2half2_rn(lo, hi);
    else return __floats2bfloat162_rn(lo, hi);
  }();
  uint32_t r;
  std::memcpy(&r, &v, 4);
  return r;
}

template <typename Params>
cudaError_t launch(void (*kernel)(Params), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   const Params& params) {
  return launch_kernel(kernel, grid, block, smem, stream, params);
}

}  // namespace mma
}  // namespace gencore
