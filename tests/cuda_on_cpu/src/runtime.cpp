// CUDA-on-CPU runtime: launches, fibers, barriers, warp collectives, atomics, shared memory,
// the device-memory registry and (in the race build) the race detector fed by GCC's
// -fsanitize=thread instrumentation of the kernel code. See tests/cuda_on_cpu/README.md.
//
// Execution: the blocks of a grid run one after another; the threads of a block are fibers on the
// calling OS thread with their own stacks, switched by a small x86-64 context switch. The
// scheduler is deterministic for a given seed: seed 0 runs each thread until it blocks (barrier,
// warp collective, spin wait); another seed also switches at every atomic with probability 1/2,
// to a thread picked by a seeded generator.
#include "cuda_on_cpu/runtime.h"

#include <dlfcn.h>
#include <link.h>
#include <sys/mman.h>

#include <chrono>
#include <cmath>
#include <unordered_map>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define COC_ASAN 1
#else
#define COC_ASAN 0
#endif

// void coc_switch(void** save_sp, void* load_sp): saves the callee-saved registers and the
// floating-point control words on the current stack, stores the stack pointer in *save_sp, loads
// load_sp and restores the same from there.
asm(R"(
  .text
  .globl coc_switch
  .type coc_switch, @function
coc_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  fldcw (%rsp)
  ldmxcsr 8(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size coc_switch, .-coc_switch
)");
extern "C" void coc_switch(void** save_sp, void* load_sp);

namespace cuda_on_cpu {
void record_error(cudaError_t error, const char* message);
namespace {

// ------------------------------------------------------------------------------------------
// Device limits (sm_90)
// ------------------------------------------------------------------------------------------
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockZ = 64;
constexpr unsigned kMaxGridX = 0x7fffffffu;
constexpr unsigned kMaxGridYZ = 65535;
constexpr size_t kMaxStaticShared = 48 * 1024;
constexpr size_t kMaxSharedOptIn = 227 * 1024;
constexpr size_t kRedzone = 64;  // race build: guard bytes around every allocation
constexpr size_t kFiberStack = 512 * 1024;
constexpr size_t kFiberPage = 4096;
constexpr uint64_t kMaxSwitchesPerLaunch = uint64_t(1) << 31;
constexpr double kMaxLaunchSeconds = 300.0;
// Scheduling points one thread may pass without a switch, even at seed 0: a thread spinning on
// another's store (legal on sm_70+, whose threads are scheduled independently) then still ends.
constexpr int kMaxPointsWithoutSwitch = 64;

enum class State { kRunnable, kBarrier, kCollective, kDone };

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;  // usable stack [stack, stack + kFiberStack)
  bool stack_dirty = false;  // abandoned mid-run: ASan's stack poisoning must be cleared
  int points_without_switch = 0;
  uint3 tid{0, 0, 0};
  int linear = 0;
  State state = State::kRunnable;
  const char* file = nullptr;  // where it waits (barrier or collective)
  int line = 0;
  const char* kind = nullptr;  // collective kind
  unsigned mask = 0;
  void* data = nullptr;
#if COC_ASAN
  void* fake_stack = nullptr;
#endif
};

enum class RegionKind { kDevice, kShared, kRedzone, kArguments };

struct ByteShadowShared {
  uint32_t epoch;
  int16_t writer, reader, atomic_by;
};
// Per byte of a device allocation, for the launch `launch` (stale entries are empty): the last
// plain write and read (global thread id + 1, the block's barrier epoch, the launch's logical
// time), whether readers of several blocks read it, an atomic accessor (id + 1, or kSeveral),
// whether __ldg read it.
struct ByteShadowGlobal {
  uint32_t launch;
  uint32_t writer, writer_epoch;
  uint32_t reader, reader_epoch;
  uint32_t atomic_by;
  uint64_t write_time, read_time;
  bool readers_in_several_blocks, read_only_load;
};
constexpr uint32_t kSeveral = 0xffffffffu;

struct Region {
  char* begin;
  char* end;
  RegionKind kind;
  std::string name;
  void* allocation;  // what free() gets
  std::vector<ByteShadowShared> shared_shadow;
  std::vector<ByteShadowGlobal> global_shadow;
};

struct SharedAllocation {
  const SharedSite* site;
  Region* region;
};

struct Launch {
  const char* name;
  dim3 grid, block;
  size_t dynamic_smem;
  void (*body)(void*);
  void* ctx;
  uint32_t id;
  std::string failure;
  cudaError_t failure_error = cudaSuccess;
  uint64_t switches = 0;
  size_t shared_budget = 0;   // static + (dynamic or the opt-in size) must fit
  size_t opt_in_dynamic = 0;  // the opt-in dynamic size, 0 without the attribute
  std::vector<std::string> races;
  std::map<std::string, int> race_keys;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  uint64_t time = 0;  // logical clock of the accesses the race detector sees
  // Release/acquire: the last release on an address (thread id + 1, time), and per thread the
  // latest release time of each thread it acquired from.
  std::unordered_map<const void*, std::pair<uint32_t, uint64_t>> last_release;
  std::unordered_map<uint32_t, std::unordered_map<uint32_t, uint64_t>> acquired;
};

struct Scheduler {
  void* sp = nullptr;
#if COC_ASAN
  void* fake_stack = nullptr;
  const void* stack_bottom = nullptr;
  size_t stack_size = 0;
#endif
};

struct Block {
  uint3 idx{0, 0, 0};
  int threads = 0;
  uint64_t first_global_tid = 0;
  std::vector<int> runnable;
  int exited = 0;
  const Fiber* first_exited = nullptr;
  uint32_t epoch = 1;
  std::vector<SharedAllocation> shared;
  size_t shared_bytes = 0;
};

// ------------------------------------------------------------------------------------------
// Global state (one OS thread drives everything)
// ------------------------------------------------------------------------------------------
struct Runtime {
  uint64_t seed = 0;
  int sm_major = 9;
  int sm_count = 132;
  uint64_t rng = 1;
  unsigned generation = 1;
  cudaError_t last_error = cudaSuccess;
  cudaError_t sticky_error = cudaSuccess;
  std::string failures;  // every launch failure and runtime error message of this session
  std::string launch_log;
  uint32_t next_launch_id = 1;
  std::vector<std::unique_ptr<Region>> regions;  // sorted by begin
  std::map<const void*, int> max_dynamic_smem;
  std::map<std::string, std::vector<uint16_t>> permutations;
  std::vector<Fiber> fibers;
  char* stack_pool = nullptr;  // one mapping holds every fiber stack (and a guard page each)
  Scheduler scheduler;
  Launch* launch = nullptr;
  Block* block = nullptr;
  Fiber* current = nullptr;
};

Runtime& rt() {
  static Runtime* runtime = new Runtime();  // never destroyed: fibers may hold pointers at exit
  return *runtime;
}

uint64_t next_random() {
  uint64_t& x = rt().rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return x;
}

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buffer[2048];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buffer, sizeof(buffer), fmt, args);
  va_end(args);
  return buffer;
}

std::string thread_text(const Fiber* f) {
  const Block* b = rt().block;
  return format("block (%u,%u,%u) thread (%u,%u,%u)", b->idx.x, b->idx.y, b->idx.z, f->tid.x, f->tid.y, f->tid.z);
}

// ------------------------------------------------------------------------------------------
// Regions (device allocations and shared variables)
// ------------------------------------------------------------------------------------------
Region* find_region(const void* p) {
  auto& regions = rt().regions;
  const char* c = static_cast<const char*>(p);
  auto it = std::upper_bound(regions.begin(), regions.end(), c,
                             [](const char* a, const std::unique_ptr<Region>& r) { return a < r->begin; });
  if (it == regions.begin()) return nullptr;
  Region* r = (--it)->get();
  return c < r->end ? r : nullptr;
}

Region* insert_region(char* begin, size_t bytes, RegionKind kind, std::string name, void* allocation) {
  auto region = std::make_unique<Region>();
  region->begin = begin;
  region->end = begin + bytes;
  region->kind = kind;
  region->name = std::move(name);
  region->allocation = allocation;
  Region* raw = region.get();
  auto& regions = rt().regions;
  auto it = std::upper_bound(regions.begin(), regions.end(), begin,
                             [](const char* a, const std::unique_ptr<Region>& r) { return a < r->begin; });
  regions.insert(it, std::move(region));
  return raw;
}

void erase_regions_of(void* allocation) {
  auto& regions = rt().regions;
  regions.erase(std::remove_if(regions.begin(), regions.end(),
                               [&](const std::unique_ptr<Region>& r) { return r->allocation == allocation; }),
                regions.end());
}

// An exact-sized allocation filled with `fill` bytes (0xff: NaN in every floating type, -1 in
// every integer; 0x80: never a valid index). It starts at an odd multiple of `alignment` (as
// aligned as asked, not more, so a kernel relying on more shows) and ends where the heap block
// ends (ASan's redzone follows it; the slack before it is poisoned by hand). The race build adds
// registered guard zones around it: any kernel access there is reported.
Region* allocate_region(size_t bytes, size_t alignment, RegionKind kind, const std::string& name, int fill) {
#if defined(COC_RACE_HOOKS)
  const size_t guard = kRedzone;
#else
  const size_t guard = 0;
#endif
  alignment = std::max<size_t>(alignment, 1);
  const size_t lead = std::max(alignment, guard);  // a multiple of alignment (powers of two)
  void* raw = nullptr;
  if (posix_memalign(&raw, std::max<size_t>(2 * lead, sizeof(void*)), lead + bytes + guard + (bytes == 0 ? 1 : 0)) != 0) {
    return nullptr;
  }
  char* begin = static_cast<char*>(raw) + lead;
  std::memset(begin, fill, bytes);
#if COC_ASAN
  __asan_poison_memory_region(raw, lead);
  if (bytes == 0) __asan_poison_memory_region(begin, 1);
#endif
  if (guard > 0) {
    insert_region(static_cast<char*>(raw), lead, RegionKind::kRedzone, name, raw);
    insert_region(begin + bytes, guard, RegionKind::kRedzone, name, raw);
  }
  return insert_region(begin, bytes, kind, name, raw);
}

void free_region(Region* region) {
  void* allocation = region->allocation;
#if COC_ASAN
  __asan_unpoison_memory_region(allocation, static_cast<size_t>(region->begin - static_cast<char*>(allocation)) +
                                                std::max<size_t>(region->end - region->begin, 1));
#endif
  erase_regions_of(allocation);
  std::free(allocation);
}

// The fill byte of runtime allocations (shared memory, workspaces): 0xff at even seeds, 0x80 at
// odd ones, so both a NaN and an out-of-range index show what was never written.
int fill_byte() { return rt().seed % 2 == 0 ? 0xff : 0x80; }

// ------------------------------------------------------------------------------------------
// Failures
// ------------------------------------------------------------------------------------------
void switch_to_scheduler_forever();

[[noreturn]] void fail_launch(cudaError_t error, const std::string& message) {
  Runtime& r = rt();
  if (r.launch->failure.empty()) {
    r.launch->failure = message;
    r.launch->failure_error = error;
  }
  r.current->state = State::kDone;
  r.current->stack_dirty = true;
  switch_to_scheduler_forever();
  __builtin_unreachable();
}

// ------------------------------------------------------------------------------------------
// Fibers
// ------------------------------------------------------------------------------------------
void switch_context(void** save_sp, void* load_sp, bool dying, const void* to_bottom, size_t to_size,
                    void** fake_stack_save) {
#if COC_ASAN
  __sanitizer_start_switch_fiber(dying ? nullptr : fake_stack_save, to_bottom, to_size);
  coc_switch(save_sp, load_sp);
  __sanitizer_finish_switch_fiber(*fake_stack_save, nullptr, nullptr);
#else
  (void)dying;
  (void)to_bottom;
  (void)to_size;
  (void)fake_stack_save;
  coc_switch(save_sp, load_sp);
#endif
}

void switch_to_scheduler(bool dying) {
  Runtime& r = rt();
  Fiber* me = r.current;
#if COC_ASAN
  switch_context(&me->sp, r.scheduler.sp, dying, r.scheduler.stack_bottom, r.scheduler.stack_size, &me->fake_stack);
#else
  switch_context(&me->sp, r.scheduler.sp, dying, nullptr, 0, nullptr);
#endif
}

void switch_to_scheduler_forever() {
  switch_to_scheduler(true);
  std::abort();  // a finished fiber is never resumed
}

void fiber_entry() {
  Runtime& r = rt();
#if COC_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &r.scheduler.stack_bottom, &r.scheduler.stack_size);
#endif
  r.launch->body(r.launch->ctx);
  Fiber* me = r.current;
  me->state = State::kDone;
  Block* b = r.block;
  ++b->exited;
  if (b->first_exited == nullptr) b->first_exited = me;
  // A lane that leaves while lanes of its warp wait for it in a collective: they would hang.
  const int warp_begin = me->linear & ~31;
  for (int l = warp_begin; l < std::min(warp_begin + 32, b->threads); ++l) {
    const Fiber& other = r.fibers[l];
    if (other.state == State::kCollective && (other.mask >> (me->linear & 31)) & 1u) {
      r.launch->failure = format("kernel %s: %s exited while lane %d of its warp waits for it in %s (mask 0x%08x) at %s:%d",
                                 r.launch->name, thread_text(me).c_str(), l & 31, other.kind, other.mask, other.file, other.line);
      r.launch->failure_error = cudaErrorLaunchFailure;
      break;
    }
  }
  switch_to_scheduler_forever();
}

char* stack_pool() {
  Runtime& r = rt();
  if (r.stack_pool == nullptr) {
    const size_t total = kMaxThreadsPerBlock * (kFiberStack + kFiberPage);
    void* mapping = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mapping == MAP_FAILED) {
      std::fprintf(stderr, "cuda_on_cpu: cannot map the fiber stacks\n");
      std::abort();
    }
    r.stack_pool = static_cast<char*>(mapping);
    for (unsigned i = 0; i < kMaxThreadsPerBlock; ++i) {  // stack overflow -> SIGSEGV, not corruption
      mprotect(r.stack_pool + i * (kFiberStack + kFiberPage), kFiberPage, PROT_NONE);
    }
  }
  return r.stack_pool;
}

bool in_stack_pool(const void* p) {
  const char* pool = rt().stack_pool;
  const char* c = static_cast<const char*>(p);
  return pool != nullptr && c >= pool && c < pool + kMaxThreadsPerBlock * (kFiberStack + kFiberPage);
}

void prepare_fiber(Fiber& f) {
  if (f.stack == nullptr) f.stack = stack_pool() + f.linear * (kFiberStack + kFiberPage) + kFiberPage;
  f.points_without_switch = 0;
#if COC_ASAN
  // fiber_entry never returns, so its frame stays poisoned at the top of the stack; a fiber
  // abandoned by a failed launch may have left poisoned frames anywhere.
  const size_t poisoned = f.stack_dirty ? kFiberStack : 16 * 1024;
  __asan_unpoison_memory_region(f.stack + kFiberStack - poisoned, poisoned);
  f.fake_stack = nullptr;
#endif
  f.stack_dirty = false;
  // Initial frame for coc_switch: control words, six registers, return address = fiber_entry.
  uintptr_t top = reinterpret_cast<uintptr_t>(f.stack + kFiberStack) & ~uintptr_t(15);
  uint64_t* ret_slot = reinterpret_cast<uint64_t*>(top - 16);
  ret_slot[0] = reinterpret_cast<uint64_t>(&fiber_entry);
  ret_slot[1] = 0;
  uint64_t* regs = ret_slot - 6;
  for (int i = 0; i < 6; ++i) regs[i] = 0;
  uint32_t* control = reinterpret_cast<uint32_t*>(regs) - 4;
  control[0] = 0x037f;  // x87 control word
  control[1] = 0;
  control[2] = 0x1f80;  // mxcsr
  control[3] = 0;
  f.sp = control;
}

// ------------------------------------------------------------------------------------------
// Scheduling one block
// ------------------------------------------------------------------------------------------
void resume(Fiber& f) {
  Runtime& r = rt();
  Launch& l = *r.launch;
  ++l.switches;
  const bool too_many = l.switches > kMaxSwitchesPerLaunch;
  const bool too_long = (l.switches & 0xfff) == 0 &&
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - l.started).count() > kMaxLaunchSeconds;
  if ((too_many || too_long) && l.failure.empty()) {
    l.failure = format("kernel %s: %llu context switches in %.0f s: the launch seems to hang", l.name,
                       static_cast<unsigned long long>(l.switches),
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - l.started).count());
    l.failure_error = cudaErrorLaunchFailure;
    return;
  }
  r.current = &f;
  f.points_without_switch = 0;
#if COC_ASAN
  switch_context(&r.scheduler.sp, f.sp, false, f.stack, kFiberStack, &r.scheduler.fake_stack);
#else
  switch_context(&r.scheduler.sp, f.sp, false, nullptr, 0, nullptr);
#endif
  r.current = nullptr;
}

// All live threads are blocked: release a barrier they all wait at, or fail.
bool release_barrier(Block& b) {
  Runtime& r = rt();
  const Fiber* at_barrier = nullptr;
  for (int i = 0; i < b.threads; ++i) {
    const Fiber& f = r.fibers[i];
    if (f.state == State::kCollective) {
      r.launch->failure = format("kernel %s: deadlock: %s waits in %s (mask 0x%08x) at %s:%d for lanes that never arrive",
                                 r.launch->name, thread_text(&f).c_str(), f.kind, f.mask, f.file, f.line);
      r.launch->failure_error = cudaErrorLaunchFailure;
      return false;
    }
    if (f.state == State::kBarrier) {
      if (at_barrier == nullptr) {
        at_barrier = &f;
      } else if (std::strcmp(f.file, at_barrier->file) != 0 || f.line != at_barrier->line) {
        r.launch->failure = format("kernel %s: divergent __syncthreads(): %s waits at %s:%d, %s at %s:%d", r.launch->name,
                                   thread_text(at_barrier).c_str(), at_barrier->file, at_barrier->line,
                                   thread_text(&f).c_str(), f.file, f.line);
        r.launch->failure_error = cudaErrorLaunchFailure;
        return false;
      }
    }
  }
  if (b.exited > 0) {
    r.launch->failure = format("kernel %s: __syncthreads() at %s:%d is not reached by every thread of the block: %s returned before it (%d of %d threads exited)",
                               r.launch->name, at_barrier->file, at_barrier->line, thread_text(b.first_exited).c_str(), b.exited, b.threads);
    r.launch->failure_error = cudaErrorLaunchFailure;
    return false;
  }
  ++b.epoch;
  for (int i = 0; i < b.threads; ++i) {
    if (r.fibers[i].state == State::kBarrier) {
      r.fibers[i].state = State::kRunnable;
      b.runnable.push_back(i);
    }
  }
  return true;
}

void run_block(Block& b) {
  Runtime& r = rt();
  b.runnable.clear();
  for (int i = b.threads - 1; i >= 0; --i) b.runnable.push_back(i);  // back() = thread 0 first
  while (r.launch->failure.empty()) {
    if (b.runnable.empty()) {
      if (b.exited == b.threads) break;
      if (!release_barrier(b)) break;
      continue;
    }
    size_t pick = b.runnable.size() - 1;
    if (r.seed != 0) pick = static_cast<size_t>(next_random() % b.runnable.size());
    const int index = b.runnable[pick];
    Fiber& f = r.fibers[index];
    resume(f);
    // The fiber may have made others runnable (a completed collective pushes them at the back).
    auto it = std::find(b.runnable.begin(), b.runnable.end(), index);
    b.runnable.erase(it);
    if (f.state == State::kRunnable) b.runnable.insert(b.runnable.begin(), index);  // yielded: last in line
  }
}

void free_shared(Block& b) {
  for (SharedAllocation& s : b.shared) free_region(s.region);
  b.shared.clear();
  b.shared_bytes = 0;
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Launch
// ------------------------------------------------------------------------------------------
const char* kernel_name_from_signature(const char* pretty_function) {
  const char* start = std::strstr(pretty_function, "Kernel = ");
  if (start == nullptr) return pretty_function;
  start += 9;
  const char* end = std::strrchr(start, ']');
  std::string name(start, end != nullptr ? static_cast<size_t>(end - start) : std::strlen(start));
  char* out = static_cast<char*>(std::malloc(name.size() + 1));
  std::memcpy(out, name.c_str(), name.size() + 1);
  return out;  // one per instantiation, kept for the process
}

cudaError_t set_max_dynamic_smem(const void* kernel_id, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kMaxSharedOptIn) return cudaErrorInvalidValue;
  rt().max_dynamic_smem[kernel_id] = bytes;
  return cudaSuccess;
}

cudaError_t launch(const void* kernel_id, const char* name, dim3 grid, dim3 block, size_t dynamic_smem,
                   cudaStream_t stream, void (*body)(void*), void* ctx, size_t ctx_bytes) {
  (void)stream;
  Runtime& r = rt();
  if (r.sticky_error != cudaSuccess) return r.last_error = r.sticky_error;
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  // Without the opt-in attribute static + dynamic shared memory must fit in 48 KiB; with it set
  // to X, dynamic <= X and static + X <= 227 KiB (static is checked as the block declares it).
  size_t max_dynamic = kMaxStaticShared;
  auto opt_in = r.max_dynamic_smem.find(kernel_id);
  if (opt_in != r.max_dynamic_smem.end()) max_dynamic = static_cast<size_t>(opt_in->second);
  const size_t shared_budget = opt_in != r.max_dynamic_smem.end() ? kMaxSharedOptIn : kMaxStaticShared;
  std::string config_error;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0) {
    config_error = "a zero grid or block dimension";
  } else if (threads > kMaxThreadsPerBlock || block.z > kMaxBlockZ) {
    config_error = format("%llu threads per block (at most %u, blockDim.z at most %u)",
                          static_cast<unsigned long long>(threads), kMaxThreadsPerBlock, kMaxBlockZ);
  } else if (grid.x > kMaxGridX || grid.y > kMaxGridYZ || grid.z > kMaxGridYZ) {
    config_error = format("grid (%u, %u, %u) exceeds (2^31-1, 65535, 65535)", grid.x, grid.y, grid.z);
  } else if (dynamic_smem > max_dynamic) {
    config_error = format("%zu bytes of dynamic shared memory (at most %zu without/with the opt-in attribute)", dynamic_smem, max_dynamic);
  }
  char line[4096];
  std::snprintf(line, sizeof(line), "%s\t%u,%u,%u\t%u,%u,%u\t%zu\t%s\n", name, grid.x, grid.y, grid.z, block.x,
                block.y, block.z, dynamic_smem, config_error.empty() ? "ok" : "invalid-configuration");
  r.launch_log += line;
  if (!config_error.empty()) {
    r.failures += format("launch of %s refused: %s\n", name, config_error.c_str());
    return r.last_error = cudaErrorInvalidConfiguration;
  }

  Launch l;
  l.name = name;
  l.grid = grid;
  l.block = block;
  l.dynamic_smem = dynamic_smem;
  l.body = body;
  l.ctx = ctx;
  l.id = r.next_launch_id++;
  l.shared_budget = shared_budget;
  l.opt_in_dynamic = opt_in != r.max_dynamic_smem.end() ? max_dynamic : 0;
  r.launch = &l;
  Region* arguments = insert_region(static_cast<char*>(ctx), ctx_bytes, RegionKind::kArguments,
                                    format("the arguments of %s", name), ctx);
  r.rng = (r.seed + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t(l.id) << 17);
  if (r.rng == 0) r.rng = 1;
  if (r.fibers.size() < threads) r.fibers.resize(threads);

  Block b;
  b.threads = static_cast<int>(threads);
  // Blocks run in order at seed 0 and in a seeded order otherwise (a device orders them not).
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order;
  if (r.seed != 0) {
    order.resize(blocks);
    for (uint64_t i = 0; i < blocks; ++i) order[i] = i;
    for (uint64_t i = blocks; i > 1; --i) std::swap(order[i - 1], order[next_random() % i]);
  }
  for (uint64_t step = 0; step < blocks && l.failure.empty(); ++step) {
    const uint64_t block_linear = order.empty() ? step : order[step];
    const unsigned bx = static_cast<unsigned>(block_linear % grid.x);
    const unsigned by = static_cast<unsigned>((block_linear / grid.x) % grid.y);
    const unsigned bz = static_cast<unsigned>(block_linear / (uint64_t(grid.x) * grid.y));
    b.idx = uint3{bx, by, bz};
    b.first_global_tid = block_linear * threads;
    b.exited = 0;
    b.first_exited = nullptr;
    b.epoch = 1;
    for (int i = 0; i < b.threads; ++i) {
      Fiber& f = r.fibers[i];
      f.linear = i;
      f.tid = uint3{static_cast<unsigned>(i % block.x), static_cast<unsigned>((i / block.x) % block.y),
                    static_cast<unsigned>(i / (block.x * block.y))};
      f.state = State::kRunnable;
      prepare_fiber(f);
    }
    r.block = &b;
    run_block(b);
    for (int i = 0; i < b.threads; ++i) {
      if (r.fibers[i].state != State::kDone) r.fibers[i].stack_dirty = true;  // abandoned
    }
    free_shared(b);
    r.block = nullptr;
  }
  erase_regions_of(arguments->allocation);
  r.launch = nullptr;
  if (l.failure.empty() && !l.races.empty()) {
    l.failure = format("kernel %s: %zu data race(s):", name, l.races.size());
    for (const std::string& race : l.races) l.failure += "\n  " + race;
    l.failure_error = cudaErrorLaunchFailure;
  }
  if (!l.failure.empty()) {
    r.failures += l.failure + "\n";
    r.sticky_error = l.failure_error;  // like a device fault: the context is unusable after it
    return r.last_error = l.failure_error;
  }
  return cudaSuccess;
}

// ------------------------------------------------------------------------------------------
// Inside a kernel
// ------------------------------------------------------------------------------------------
uint3 thread_index() { return rt().current->tid; }
uint3 block_index() { return rt().block->idx; }
dim3 block_dimensions() { return rt().launch->block; }
dim3 grid_dimensions() { return rt().launch->grid; }
unsigned lane_id() { return static_cast<unsigned>(rt().current->linear & 31); }

void sync_threads(const char* file, int line) {
  Fiber* me = rt().current;
  me->state = State::kBarrier;
  me->file = file;
  me->line = line;
  switch_to_scheduler(false);
}

void trap(const char* file, int line) {
  Runtime& r = rt();
  fail_launch(cudaErrorIllegalInstruction, format("kernel %s: __trap() at %s:%d in %s", r.launch->name, file, line,
                                                  thread_text(r.current).c_str()));
}

void fail(const char* what, const char* file, int line) {
  Runtime& r = rt();
  fail_launch(cudaErrorLaunchFailure, format("kernel %s: %s at %s:%d in %s", r.launch->name, what, file, line,
                                             thread_text(r.current).c_str()));
}

void scheduling_point() {
  Runtime& r = rt();
  if (r.current == nullptr) return;
  const bool forced = ++r.current->points_without_switch >= kMaxPointsWithoutSwitch;
  if (forced || (r.seed != 0 && (next_random() & 1u) == 0)) switch_to_scheduler(false);
}

void spin_wait() {
  if (rt().current != nullptr) switch_to_scheduler(false);
}

void* shared_variable(const SharedSite& site) {
  Runtime& r = rt();
  Block& b = *r.block;
  for (const SharedAllocation& s : b.shared) {
    if (s.site == &site) return s.region->begin;
  }
  b.shared_bytes += site.bytes;
  const Launch& l = *r.launch;
  const size_t total = b.shared_bytes + std::max(l.dynamic_smem, l.opt_in_dynamic);
  if (b.shared_bytes > kMaxStaticShared || total > l.shared_budget) {
    fail_launch(cudaErrorLaunchOutOfResources,
                format("kernel %s: %zu bytes of static shared memory (+ %zu dynamic) exceed the sm_90 limits (48 KiB static; 48 KiB with dynamic, 227 KiB with the opt-in attribute) when declaring `%s` at %s:%d",
                       l.name, b.shared_bytes, std::max(l.dynamic_smem, l.opt_in_dynamic), site.name, site.file, site.line));
  }
  Region* region = allocate_region(site.bytes, site.alignment, RegionKind::kShared,
                                   format("__shared__ %s (%s:%d)", site.name, site.file, site.line), fill_byte());
  b.shared.push_back(SharedAllocation{&site, region});
  return region->begin;
}

void warp_collective(const char* kind, unsigned mask, void* data, CollectiveFn complete, const void* ctx,
                     const char* file, int line) {
  Runtime& r = rt();
  Fiber* me = r.current;
  Block& b = *r.block;
  const int lane = me->linear & 31;
  const int warp_begin = me->linear & ~31;
  if (((mask >> lane) & 1u) == 0) {
    fail_launch(cudaErrorLaunchFailure, format("kernel %s: %s at %s:%d called by lane %d, which is not in its mask 0x%08x (%s)",
                                               r.launch->name, kind, file, line, lane, mask, thread_text(me).c_str()));
  }
  me->state = State::kCollective;
  me->kind = kind;
  me->mask = mask;
  me->data = data;
  me->file = file;
  me->line = line;
  bool arrived = true;
  for (int l = 0; l < 32; ++l) {
    if (((mask >> l) & 1u) == 0) continue;
    if (warp_begin + l >= b.threads) {
      fail_launch(cudaErrorLaunchFailure, format("kernel %s: %s at %s:%d: mask 0x%08x names lane %d, which does not exist (block of %d threads)",
                                                 r.launch->name, kind, file, line, mask, l, b.threads));
    }
    const Fiber& other = r.fibers[warp_begin + l];
    if (other.state == State::kDone) {
      fail_launch(cudaErrorLaunchFailure, format("kernel %s: %s at %s:%d (%s): mask 0x%08x names lane %d, which has exited",
                                                 r.launch->name, kind, file, line, thread_text(me).c_str(), mask, l));
    }
    if (other.state != State::kCollective) {
      arrived = false;
      continue;
    }
    if (std::strcmp(other.kind, kind) != 0 || other.mask != mask) {
      fail_launch(cudaErrorLaunchFailure,
                  format("kernel %s: warp collectives do not match: lane %d is in %s (mask 0x%08x) at %s:%d, lane %d in %s (mask 0x%08x) at %s:%d",
                         r.launch->name, l, other.kind, other.mask, other.file, other.line, lane, kind, mask, file, line));
    }
  }
  if (!arrived) {
    switch_to_scheduler(false);  // the last lane to arrive completes the collective
    return;
  }
  void* lane_data[32] = {};
  for (int l = 0; l < 32; ++l) {
    if ((mask >> l) & 1u) lane_data[l] = r.fibers[warp_begin + l].data;
  }
  if (complete != nullptr) complete(lane_data, mask, ctx);
  for (int l = 0; l < 32; ++l) {
    if (((mask >> l) & 1u) == 0 || warp_begin + l == me->linear) continue;
    r.fibers[warp_begin + l].state = State::kRunnable;
    b.runnable.push_back(warp_begin + l);
  }
  me->state = State::kRunnable;
  scheduling_point();
}

namespace detail {
void shuffle_complete(void* const* lane_data, unsigned mask, const void*) {
  uint64_t values[32];
  for (int l = 0; l < 32; ++l) {
    if (lane_data[l] != nullptr) values[l] = static_cast<ShuffleLane*>(lane_data[l])->value;
  }
  for (int l = 0; l < 32; ++l) {
    if (lane_data[l] == nullptr) continue;
    ShuffleLane* me = static_cast<ShuffleLane*>(lane_data[l]);
    if (me->source < 0) {
      me->result = me->value;
    } else if (((mask >> me->source) & 1u) == 0) {
      fail("shuffle reads a lane that is not in the mask", __FILE__, __LINE__);
    } else {
      me->result = values[me->source];
    }
  }
}
void ballot_complete(void* const* lane_data, unsigned, const void*) {
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l) {
    if (lane_data[l] != nullptr && static_cast<VoteLane*>(lane_data[l])->predicate) ballot |= 1u << l;
  }
  for (int l = 0; l < 32; ++l) {
    if (lane_data[l] != nullptr) static_cast<VoteLane*>(lane_data[l])->result = ballot;
  }
}
}  // namespace detail

const uint16_t* fragment_permutation(const char* fragment_kind, int elements) {
  Runtime& r = rt();
  auto& perm = r.permutations[fragment_kind];
  if (perm.size() != static_cast<size_t>(elements)) {
    perm.resize(elements);
    for (int e = 0; e < elements; ++e) perm[e] = static_cast<uint16_t>(e);
    // Seeded Fisher-Yates shuffle, a function of (seed, kind) only.
    uint64_t x = (r.seed + 0x51ed27) * 0x9E3779B97F4A7C15ull;
    for (const char* c = fragment_kind; *c; ++c) x = (x ^ static_cast<unsigned char>(*c)) * 0x100000001b3ull;
    for (int e = elements - 1; e > 0; --e) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      std::swap(perm[e], perm[x % static_cast<uint64_t>(e + 1)]);
    }
  }
  return perm.data();
}
unsigned permutation_generation() { return rt().generation; }

// ------------------------------------------------------------------------------------------
// Race detection (race build: called from the instrumentation hooks below)
// ------------------------------------------------------------------------------------------
namespace {
enum class Access { kRead, kWrite, kAtomic };
const char* access_name(Access a) { return a == Access::kRead ? "read" : (a == Access::kWrite ? "write" : "atomic"); }

void report_race(Region& region, size_t offset, Access access, const std::string& conflict) {
  Runtime& r = rt();
  const std::string key = region.name + "|" + access_name(access) + "|" + conflict.substr(0, conflict.find(" by "));
  if (r.launch->race_keys[key]++ > 0 || r.launch->races.size() >= 16) return;
  r.launch->races.push_back(format("%s by %s %s, in %s (+%zu, address %p)", access_name(access),
                                   thread_text(r.current).c_str(), conflict.c_str(), region.name.c_str(), offset,
                                   static_cast<void*>(region.begin + offset)));
}

std::string block_thread_text(int linear) {
  const dim3& d = rt().launch->block;
  return format("thread (%u,%u,%u)", linear % d.x, (linear / d.x) % d.y, linear / (d.x * d.y));
}

void check_shared(Region& region, size_t offset, size_t size, Access access) {
  Runtime& r = rt();
  if (region.shared_shadow.empty()) region.shared_shadow.assign(region.end - region.begin, ByteShadowShared{0, -1, -1, -1});
  const int16_t me = static_cast<int16_t>(r.current->linear);
  const uint32_t epoch = r.block->epoch;
  for (size_t i = offset; i < offset + size; ++i) {
    ByteShadowShared& s = region.shared_shadow[i];
    if (s.epoch != epoch) s = ByteShadowShared{epoch, -1, -1, -1};
    const bool other_writer = s.writer >= 0 && s.writer != me;
    const bool other_atomic = s.atomic_by == -2 || (s.atomic_by >= 0 && s.atomic_by != me);
    const bool other_reader = s.reader == -2 || (s.reader >= 0 && s.reader != me);
    if (other_writer) report_race(region, i, access, "after a write by " + block_thread_text(s.writer) + " with no barrier between");
    if (access != Access::kAtomic && other_atomic) report_race(region, i, access, "after an atomic by another thread with no barrier between");
    if (access != Access::kRead && other_reader) {
      report_race(region, i, access, "after a read by " + (s.reader == -2 ? std::string("several threads") : block_thread_text(s.reader)) + " with no barrier between");
    }
    switch (access) {
      case Access::kRead: s.reader = (s.reader == -1 || s.reader == me) ? me : int16_t(-2); break;
      case Access::kWrite: s.writer = me; break;
      case Access::kAtomic: s.atomic_by = (s.atomic_by == -1 || s.atomic_by == me) ? me : int16_t(-2); break;
    }
  }
}

uint32_t current_global_id() {
  Runtime& r = rt();
  return static_cast<uint32_t>(r.block->first_global_tid + r.current->linear + 1);
}

uint32_t block_of(uint32_t global_id) {
  const dim3& d = rt().launch->block;
  return (global_id - 1) / (d.x * d.y * d.z);
}

std::string global_thread_text(uint32_t global_id) {
  const dim3& d = rt().launch->block;
  const uint32_t per_block = d.x * d.y * d.z;
  return format("block %u %s", (global_id - 1) / per_block,
                block_thread_text(static_cast<int>((global_id - 1) % per_block)).c_str());
}

// Whether the access of `other` (id + 1, its epoch, its time) is ordered before one of the
// current thread: the same thread, a barrier in between (same block), or a release of `other`
// after it that the current thread acquired.
bool ordered_before(uint32_t other, uint32_t other_epoch, uint64_t other_time) {
  Runtime& r = rt();
  const uint32_t me = current_global_id();
  if (other == me) return true;
  if (block_of(other) == block_of(me) && other_epoch != r.block->epoch) return true;
  auto mine = r.launch->acquired.find(me);
  if (mine == r.launch->acquired.end()) return false;
  auto from = mine->second.find(other);
  return from != mine->second.end() && from->second > other_time;
}

// Global memory: within one launch, a plain write and another plain access of the same byte by
// threads not ordered by a barrier (same block) or a release/acquire pair, or a plain access and
// an atomic of another thread, are a data race; __ldg data must not be written in the launch.
void check_global(Region& region, size_t offset, size_t size, Access access, bool read_only_load) {
  Runtime& r = rt();
  Launch& l = *r.launch;
  if (region.global_shadow.empty()) region.global_shadow.assign(region.end - region.begin, ByteShadowGlobal{});
  const uint32_t me = current_global_id();
  const uint32_t epoch = r.block->epoch;
  const uint64_t now = ++l.time;
  for (size_t i = offset; i < offset + size; ++i) {
    ByteShadowGlobal& s = region.global_shadow[i];
    if (s.launch != l.id) s = ByteShadowGlobal{l.id, 0, 0, 0, 0, 0, 0, 0, false, false};
    const bool plain = access != Access::kAtomic;
    if (s.writer != 0 && s.writer != me && !ordered_before(s.writer, s.writer_epoch, s.write_time)) {
      report_race(region, i, access, "after a write by " + global_thread_text(s.writer) + " in the same launch, not ordered before it");
    }
    if (read_only_load && s.writer != 0) {
      report_race(region, i, access, "(__ldg, the read-only path) of data " + global_thread_text(s.writer) + " writes in the same launch");
    }
    if (access != Access::kRead) {
      if (s.read_only_load) report_race(region, i, access, "of data read through __ldg in the same launch");
      if (s.reader != 0 && (s.readers_in_several_blocks || (s.reader != me && !ordered_before(s.reader, s.reader_epoch, s.read_time)))) {
        report_race(region, i, access, "after a read by " + (s.readers_in_several_blocks ? std::string("threads of several blocks") : global_thread_text(s.reader)) + " in the same launch, not ordered before it");
      }
    }
    if (plain && s.atomic_by != 0 && s.atomic_by != me) {
      report_race(region, i, access, "and an atomic by " + (s.atomic_by == kSeveral ? std::string("several threads") : global_thread_text(s.atomic_by)) + " in the same launch");
    }
    switch (access) {
      case Access::kRead:
        if (s.reader != 0 && s.reader != me && block_of(s.reader) != block_of(me)) s.readers_in_several_blocks = true;
        s.reader = me;
        s.reader_epoch = epoch;
        s.read_time = now;
        s.read_only_load |= read_only_load;
        break;
      case Access::kWrite:
        s.writer = me;
        s.writer_epoch = epoch;
        s.write_time = now;
        break;
      case Access::kAtomic:
        s.atomic_by = (s.atomic_by == 0 || s.atomic_by == me) ? me : kSeveral;
        break;
    }
  }
}

// The loaded segments of this library (its code, constants and statics: kernels may read them).
bool in_own_library(const void* p) {
  struct Range {
    uintptr_t begin, end;
  };
  static const std::vector<Range> ranges = [] {
    std::vector<Range> found;
    Dl_info info;
    dladdr(reinterpret_cast<void*>(&in_own_library), &info);
    struct Search {
      const void* base;
      std::vector<Range>* out;
    } search{info.dli_fbase, &found};
    dl_iterate_phdr(
        [](dl_phdr_info* object, size_t, void* data) {
          Search* s = static_cast<Search*>(data);
          for (int i = 0; i < object->dlpi_phnum; ++i) {
            const ElfW(Phdr)& ph = object->dlpi_phdr[i];
            if (ph.p_type != PT_LOAD) continue;
            const uintptr_t begin = object->dlpi_addr + ph.p_vaddr;
            if (object->dlpi_addr != reinterpret_cast<uintptr_t>(s->base)) break;
            s->out->push_back(Range{begin, begin + ph.p_memsz});
          }
          return 0;
        },
        &search);
    return found;
  }();
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  for (const Range& range : ranges) {
    if (a >= range.begin && a < range.end) return true;
  }
  return false;
}

void on_access(const void* address, size_t size, Access access, bool read_only_load = false) {
  Runtime& r = rt();
  if (r.current == nullptr || r.launch == nullptr) return;  // host code
  Region* region = find_region(address);
  if (region == nullptr) {
    // The fibers' stacks (registers, local memory, kernel arguments, other lanes' fragments in
    // a collective) and this library's constants and statics; anything else is host memory.
    if (in_stack_pool(address) || in_own_library(address)) return;
    fail_launch(cudaErrorIllegalAddress,
                format("kernel %s: %s of %zu bytes at %p, which is not device memory (%s)", r.launch->name,
                       access_name(access), size, address, thread_text(r.current).c_str()));
  }
  const size_t offset = static_cast<const char*>(address) - region->begin;
  if (region->kind == RegionKind::kRedzone || static_cast<const char*>(address) + size > region->end) {
    fail_launch(cudaErrorIllegalAddress,
                format("kernel %s: out-of-bounds %s of %zu bytes at %p, %s %s (%s)", r.launch->name, access_name(access),
                       size, address, region->kind == RegionKind::kRedzone ? "next to" : "at the end of",
                       region->name.c_str(), thread_text(r.current).c_str()));
  }
  if (region->kind == RegionKind::kArguments) {
    if (access != Access::kRead) {
      fail_launch(cudaErrorIllegalAddress, format("kernel %s: %s of its own arguments (%s)", r.launch->name,
                                                  access_name(access), thread_text(r.current).c_str()));
    }
  } else if (region->kind == RegionKind::kShared) {
    check_shared(*region, offset, size, access);
  } else {
    check_global(*region, offset, size, access, read_only_load);
  }
}

float flush_subnormal(float v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.0f, v) : v; }
}  // namespace

void note_read_only_load(const void* address, size_t bytes) {
#if defined(COC_RACE_HOOKS)
  on_access(address, bytes, Access::kRead, true);
#else
  (void)address;
  (void)bytes;
#endif
}

bool check_pointer_argument(size_t index, const void* pointer, const char* kernel) {
  if (pointer == nullptr) return true;
  const char* p = static_cast<const char*>(pointer);
  Region* region = find_region(p);
  if (region == nullptr || region->kind != RegionKind::kDevice) {
    Region* before = find_region(p - 1);  // one past the end of an allocation
    if (before != nullptr && before->kind == RegionKind::kDevice && before->end == p) return true;
    record_error(cudaErrorIllegalAddress, format("launch of %s refused: argument %zu (%p) does not point into device memory",
                                                 kernel, index, pointer).c_str());
    rt().sticky_error = cudaErrorIllegalAddress;
    return false;
  }
  return true;
}

uint64_t atomic_rmw(void* address, int bytes, AtomicOp op, uint64_t operand, uint64_t compare, int order) {
  Runtime& r = rt();
  scheduling_point();
  if (reinterpret_cast<uintptr_t>(address) % static_cast<uintptr_t>(bytes) != 0) {
    fail_launch(cudaErrorIllegalAddress, format("kernel %s: misaligned %d-byte atomic at %p (%s)", r.launch->name,
                                                bytes, address, thread_text(r.current).c_str()));
  }
  on_access(address, static_cast<size_t>(bytes), Access::kAtomic);
  const Region* region = find_region(address);
  const bool global = region != nullptr && region->kind == RegionKind::kDevice;
  uint64_t old = 0;
  std::memcpy(&old, address, bytes);
  uint64_t result = old;
  auto as_int = [&](uint64_t v) -> int64_t { return bytes == 4 ? static_cast<int64_t>(static_cast<int32_t>(v)) : static_cast<int64_t>(v); };
  bool writes = true;
  switch (op) {
    case AtomicOp::kLoad: writes = false; break;
    case AtomicOp::kStore: result = operand; break;
    case AtomicOp::kExchange: result = operand; break;
    case AtomicOp::kCompareExchange:
      writes = std::memcmp(&old, &compare, bytes) == 0;
      if (writes) result = operand;
      break;
    case AtomicOp::kAddInt: result = old + operand; break;
    case AtomicOp::kAddFloat:
      if (global) {  // atom.global.add.f32 flushes subnormal inputs and results to zero
        result = to_bits(flush_subnormal(flush_subnormal(from_bits<float>(old)) + flush_subnormal(from_bits<float>(operand))));
      } else {
        result = to_bits(from_bits<float>(old) + from_bits<float>(operand));
      }
      break;
    case AtomicOp::kAddDouble: result = to_bits(from_bits<double>(old) + from_bits<double>(operand)); break;
    case AtomicOp::kMaxInt: result = as_int(old) >= as_int(operand) ? old : operand; break;
    case AtomicOp::kMinInt: result = as_int(old) <= as_int(operand) ? old : operand; break;
    case AtomicOp::kOr: result = old | operand; break;
    case AtomicOp::kAnd: result = old & operand; break;
  }
  if (op != AtomicOp::kLoad) std::memcpy(address, &result, bytes);
  if (r.current != nullptr && r.launch != nullptr) {
    Launch& l = *r.launch;
    const uint32_t me = current_global_id();
    if (order & kAcquire) {
      auto release = l.last_release.find(address);
      if (release != l.last_release.end() && release->second.first != me) {
        uint64_t& seen = l.acquired[me][release->second.first];
        seen = std::max(seen, release->second.second);
      }
    }
    if (writes && (order & kRelease)) l.last_release[address] = {me, ++l.time};
  }
  return old;
}

// ------------------------------------------------------------------------------------------
// Memory and errors for the runtime API, the cub emulation and the test driver
// ------------------------------------------------------------------------------------------
void record_error(cudaError_t error, const char* message) {
  Runtime& r = rt();
  r.failures += message;
  r.failures += "\n";
  r.last_error = error;
}

bool check_device_range(const void* p, size_t bytes, const char* what) {
  if (bytes == 0) return true;
  Region* region = find_region(p);
  if (region == nullptr || region->kind != RegionKind::kDevice || static_cast<const char*>(p) + bytes > region->end) {
    record_error(cudaErrorIllegalAddress,
                 format("%s: [%p, +%zu) is not inside one device allocation%s%s", what, p, bytes,
                        region != nullptr ? " (it starts in " : "", region != nullptr ? (region->name + ")").c_str() : "")
                     .c_str());
    rt().sticky_error = cudaErrorIllegalAddress;
    return false;
  }
  return true;
}

void note_library_call(const char* name) {
  rt().launch_log += std::string(name) + "\t-\t-\t0\tlibrary\n";
}

}  // namespace cuda_on_cpu

namespace nvcuda::wmma::detail {
void warp_rendezvous(const char* kind, const char* file, int line) {
  ::cuda_on_cpu::warp_collective(kind, 0xffffffffu, nullptr, nullptr, nullptr, file, line);
}
}  // namespace nvcuda::wmma::detail

// ------------------------------------------------------------------------------------------
// CUDA runtime API
// ------------------------------------------------------------------------------------------
using cuda_on_cpu::rt;

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = rt().sm_count; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = rt().sm_major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = 227 * 1024; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
cudaError_t cudaPeekAtLastError() { return rt().last_error; }
cudaError_t cudaGetLastError() {
  const cudaError_t e = rt().last_error;
  rt().last_error = rt().sticky_error;
  return e;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) {
  if (rt().sticky_error != cudaSuccess) return rt().sticky_error;
  if (!cuda_on_cpu::check_device_range(ptr, bytes, "cudaMemsetAsync")) return cudaErrorInvalidValue;
  std::memset(ptr, value, bytes);
  rt().launch_log += "cudaMemsetAsync\t-\t-\t0\tlibrary\n";
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return rt().sticky_error; }
cudaError_t cudaDeviceSynchronize() { return rt().sticky_error; }
const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorIllegalInstruction: return "an illegal instruction was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    default: return "cuda_on_cpu error";
  }
}

// ------------------------------------------------------------------------------------------
// C API of the harness (tests/cuda_on_cpu/harness.py through ctypes)
// ------------------------------------------------------------------------------------------
extern "C" {
__attribute__((visibility("default"))) void coc_configure(uint64_t seed, int sm_major, int sm_count) {
  cuda_on_cpu::Runtime& r = rt();
  r.seed = seed;
  r.sm_major = sm_major;
  r.sm_count = sm_count;
  r.permutations.clear();
  ++r.generation;
  r.last_error = cudaSuccess;
  r.sticky_error = cudaSuccess;
  r.failures.clear();
  r.launch_log.clear();
  r.max_dynamic_smem.clear();
  r.next_launch_id = 1;  // the same seed replays the same schedules
}
// A device allocation (256-byte aligned like cudaMalloc's) filled with `fill` bytes.
__attribute__((visibility("default"))) void* coc_device_alloc_filled(size_t bytes, int fill) {
  cuda_on_cpu::Region* region = cuda_on_cpu::allocate_region(bytes, 256, cuda_on_cpu::RegionKind::kDevice,
                                                             cuda_on_cpu::format("device allocation of %zu bytes", bytes), fill);
  return region != nullptr ? region->begin : nullptr;
}
// A workspace-like device allocation: filled like shared memory (cuda_on_cpu::fill_byte).
__attribute__((visibility("default"))) void* coc_device_alloc(size_t bytes) {
  return coc_device_alloc_filled(bytes, cuda_on_cpu::fill_byte());
}
__attribute__((visibility("default"))) void coc_device_free(void* p) {
  cuda_on_cpu::Region* region = cuda_on_cpu::find_region(p);
  if (region != nullptr && region->begin == p) cuda_on_cpu::free_region(region);
}
__attribute__((visibility("default"))) const char* coc_failures() { return rt().failures.c_str(); }
__attribute__((visibility("default"))) const char* coc_launch_log() { return rt().launch_log.c_str(); }
__attribute__((visibility("default"))) int coc_race_detection() {
#if defined(COC_RACE_HOOKS)
  return 1;
#else
  return 0;
#endif
}
}

// ------------------------------------------------------------------------------------------
// Instrumentation hooks of GCC's -fsanitize=thread (race build): the kernel translation units are
// instrumented, this file is not, and libtsan is not linked.
// ------------------------------------------------------------------------------------------
#if defined(COC_RACE_HOOKS)
using cuda_on_cpu::Access;
#define COC_HOOKS(N)                                                                                        \
  void __tsan_read##N(void* a) { cuda_on_cpu::on_access(a, N, cuda_on_cpu::Access::kRead); }                \
  void __tsan_write##N(void* a) { cuda_on_cpu::on_access(a, N, cuda_on_cpu::Access::kWrite); }              \
  void __tsan_unaligned_read##N(void* a) { cuda_on_cpu::on_access(a, N, cuda_on_cpu::Access::kRead); }      \
  void __tsan_unaligned_write##N(void* a) { cuda_on_cpu::on_access(a, N, cuda_on_cpu::Access::kWrite); }
extern "C" {
COC_HOOKS(1)
COC_HOOKS(2)
COC_HOOKS(4)
COC_HOOKS(8)
COC_HOOKS(16)
void __tsan_read_range(void* a, unsigned long n) { cuda_on_cpu::on_access(a, n, cuda_on_cpu::Access::kRead); }
void __tsan_write_range(void* a, unsigned long n) { cuda_on_cpu::on_access(a, n, cuda_on_cpu::Access::kWrite); }
void __tsan_volatile_read1(void* a) { cuda_on_cpu::on_access(a, 1, cuda_on_cpu::Access::kRead); }
void __tsan_volatile_write1(void* a) { cuda_on_cpu::on_access(a, 1, cuda_on_cpu::Access::kWrite); }
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_init() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
// Atomics GCC emits in instrumented code (e.g. the guard of a function-local static): performed
// as they are; the kernels' own atomics go through cuda_on_cpu::atomic_rmw instead.
uint8_t __tsan_atomic8_load(const volatile uint8_t* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }
void __tsan_atomic8_store(volatile uint8_t* a, uint8_t v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); }
uint32_t __tsan_atomic32_load(const volatile uint32_t* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }
void __tsan_atomic32_store(volatile uint32_t* a, uint32_t v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); }
uint64_t __tsan_atomic64_load(const volatile uint64_t* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }
void __tsan_atomic64_store(volatile uint64_t* a, uint64_t v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); }
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) {}
}
#undef COC_HOOKS
#endif
