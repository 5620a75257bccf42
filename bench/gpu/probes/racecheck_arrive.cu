// Probe of compute-sanitizer racecheck on named-barrier hand-offs (not a test of ioattn: a question
// to the tool). Session 10 found that the d = 256 backward's exchange, where warpgroup 0 arrives on
// barrier A after writing a buffer that warpgroup 1 reads after syncing on A, and warpgroup 1
// arrives on B after reading it while warpgroup 0 syncs on B before its next write, drew WAR reports
// from racecheck (also on a statistics buffer that a producer warp rewrites after syncing on a third
// barrier the consumers arrive on), while the same protocol with both warpgroups syncing drew none.
// In the PTX memory model an arrive synchronizes with the sync of the same barrier phase, so both
// forms are race-free; this probe shows which barrier patterns racecheck follows, kernel by kernel:
//   nvcc -O2 -arch=sm_90a -lineinfo -o /tmp/probe bench/gpu/probes/racecheck_arrive.cu
//   for m in 0 1 2 3 4 5 6 7; do compute-sanitizer --tool racecheck /tmp/probe $m | tail -2; done
// Modes: 0 both warpgroups sync on A and B (the landed form); 1 arrive / sync (the measured-faster
// form), unaligned barrier.*; 2 the same with aligned bar.*; 3 mode 1 plus a producer warp that
// rewrites a second buffer after syncing on barrier C, on which every consumer thread arrives after
// reading it (the statistics pattern); 4 mode 1 with A an mbarrier (every warpgroup-0 thread
// arrives, warpgroup 1 waits on the phase) and B still a named barrier (warpgroup 1 arrives,
// warpgroup 0 syncs); 5 mode 3 with A an mbarrier; 6 A arrive / sync, B both syncing (is the
// read-after-write over an arrive reported?); 7 A both syncing, B arrive / sync (the write after
// read over an arrive). Each mode also checks the values read (a real
// race shows as "mismatches"), and prints its racecheck-independent result.
// Session 11 (H200, CUDA 13.0, compute-sanitizer of the toolkit): 0 mismatches in every mode;
// racecheck 0 hazards in modes 0 and 6, hazards in modes 1-3 (4096 / 4096 / 2048 + 2048, read at
// `v = buf[lane]` / `s = stats[lane]` against the writes) and 7 (at `v = buf[lane]`): it follows a
// read-after-write hand-off over an arrive / sync pair but not a write-after-read one. (Modes 4
// and 5 ran; their lines fell outside the output kept.) The kernel's exchange therefore has warpgroup
// 0 arrive on an mbarrier for the P^T hand-off and both warpgroups sync on the dS^T one.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

constexpr int kSteps = 64;

// bar / barrier (kAligned or not) .sync (kSync) or .arrive on barrier `id` for `n` threads.
template <bool kSync, bool kAligned>
__device__ __forceinline__ void named(int id, int n) {
  if constexpr (kSync && kAligned)
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory");
  else if constexpr (kSync)
    asm volatile("barrier.sync %0, %1;" ::"r"(id), "r"(n) : "memory");
  else if constexpr (kAligned)
    asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(n) : "memory");
  else
    asm volatile("barrier.arrive %0, %1;" ::"r"(id), "r"(n) : "memory");
}
template <bool kAligned>
__device__ __forceinline__ void arrive(int id, int n) { named<false, kAligned>(id, n); }
template <bool kAligned>
__device__ __forceinline__ void sync(int id, int n) { named<true, kAligned>(id, n); }

// Modes 4, 5: barrier A as an mbarrier (release arrive, acquire try_wait: the PTX defaults).
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(static_cast<uint32_t>(__cvta_generic_to_shared(bar)))
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(bar));
  uint32_t done = 0;
  while (!done)
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
}

// Threads 0-127: warpgroup 0 (writes buf), 128-255: warpgroup 1 (reads it), 256-287 (mode 3): the
// producer warp (writes stats for step g + 1 after syncing on C = barrier 3 for step g, then arrives
// on barrier 4, which both warpgroups sync on before step g + 1).
template <int kMode>
__global__ void probe(int* mismatches) {
  constexpr bool kAligned = kMode == 2;
  constexpr bool kSyncA = kMode == 0 || kMode == 7, kSyncB = kMode == 0 || kMode == 6;  // both sync
  constexpr bool kMbarA = kMode == 4 || kMode == 5;
  constexpr bool kStats = kMode == 3 || kMode == 5;
  __shared__ float buf[128];
  __shared__ float stats[128];
  __shared__ uint64_t bar_a;
  const int t = threadIdx.x, wg = t / 128, lane = t % 128;
  float acc = 0.f;
  if (kStats && t < 128) stats[t] = 0.f;  // step 0's statistics
  if (kMbarA && t == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 128;" ::"r"(static_cast<uint32_t>(__cvta_generic_to_shared(&bar_a)))
                 : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (wg == 2) {  // producer warp (modes 3, 5)
    for (int g = 0; g + 1 < kSteps; ++g) {
      sync<kAligned>(3, 288);  // the consumers' reads of step g's statistics are done
      for (int i = lane; i < 128; i += 32) stats[i] = static_cast<float>(g + 1);
      __syncwarp();
      arrive<kAligned>(4, 288);  // step g + 1's statistics written (the kernel's qdo_full)
    }
    sync<kAligned>(3, 288);
    return;
  }
  for (int g = 0; g < kSteps; ++g) {
    // Both warpgroups wait for step g's statistics, as the kernel's consumers wait on qdo_full: else
    // warpgroup 0 could arrive on C for step g + 1 before the producer synced on it for step g.
    if (kStats && g > 0) sync<kAligned>(4, 288);
    if (wg == 0) {
      buf[lane] = static_cast<float>(g * 1000 + lane);
      if (kMbarA) mbar_arrive(&bar_a);  // A
      else if (kSyncA) sync<kAligned>(1, 256);
      else arrive<kAligned>(1, 256);
      if (kStats) arrive<kAligned>(3, 288);  // (reads no statistics; arrives like the kernel)
      sync<kAligned>(2, 256);  // B: warpgroup 1 has read buf of step g
    } else {
      if (kMbarA) mbar_wait(&bar_a, g & 1);  // A
      else sync<kAligned>(1, 256);
      const float v = buf[lane];
      float s = 0.f;
      if (kStats) s = stats[lane];
      if (v != static_cast<float>(g * 1000 + lane) || (kStats && s != static_cast<float>(g)))
        atomicAdd(mismatches, 1);
      acc += v + s;
      if (kStats) arrive<kAligned>(3, 288);
      if (kSyncB) sync<kAligned>(2, 256); else arrive<kAligned>(2, 256);  // B
    }
  }
  if (acc == -1.f) atomicAdd(mismatches, 1000000);  // keeps acc alive
}

int main(int argc, char** argv) {
  const int mode = argc > 1 ? atoi(argv[1]) : 1;
  int* d = nullptr;
  cudaMalloc(&d, sizeof(int));
  cudaMemset(d, 0, sizeof(int));
  switch (mode) {
    case 0: probe<0><<<1, 256>>>(d); break;
    case 1: probe<1><<<1, 256>>>(d); break;
    case 2: probe<2><<<1, 256>>>(d); break;
    case 3: probe<3><<<1, 288>>>(d); break;
    case 4: probe<4><<<1, 256>>>(d); break;
    case 5: probe<5><<<1, 288>>>(d); break;
    case 6: probe<6><<<1, 256>>>(d); break;
    case 7: probe<7><<<1, 256>>>(d); break;
    default: fprintf(stderr, "mode 0..7\n"); return 2;
  }
  int h = -1;
  const cudaError_t e = cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost);
  printf("mode %d: %s, mismatches %d\n", mode, cudaGetErrorString(e), h);
  return e != cudaSuccess || h != 0;
}
