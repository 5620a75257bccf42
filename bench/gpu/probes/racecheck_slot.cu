// Probe of compute-sanitizer racecheck on the sm90 backward's dQ hand-off (not a test of ioattn: a
// question to the tool). Session 12: with producer warp 1 + w as consumer warpgroup w's dQ writer,
// racecheck reported the leader's store of the warpgroup's slot against the writer's read of it
// ("Potential RAW hazard", thread 256 against thread 64), with both sides syncing on both named
// barriers (160 threads: the warpgroup's 128 and the writer's 32), while the kernel's 256-thread
// both-sync barrier (the d = 256 exchange's B) draws no report. Each mode runs the same hand-off
// (the warpgroup writes a buffer and its leader a slot, the writer reads both) with other barriers:
//   nvcc -O2 -arch=sm_90a -lineinfo -o /tmp/probe_slot bench/gpu/probes/racecheck_slot.cu
//   for m in 0 1 2 3 4 5; do compute-sanitizer --tool racecheck /tmp/probe_slot $m | tail -2; done
// Modes: 0 both sides sync on FULL and EMPTY (named, 160 threads; the branch's form); 1 FULL an
// mbarrier (the 128 warpgroup threads arrive, the writer waits), EMPTY named both-sync; 2 FULL and
// EMPTY mbarriers (the writer's 32 lanes arrive on EMPTY); 3 mode 0 with warp 3 as the writer
// (its warps then adjacent to the warpgroup's); 4 mode 0 with the slot stored and loaded by atomics;
// 5 FULL an mbarrier, EMPTY named with the writer arriving and the warpgroup syncing.
// Each mode also counts wrong values read (a real race shows as mismatches).
// Session 12 (H200, CUDA 13.0): 0 mismatches and 0 racecheck hazards in every mode, mode 0 included:
// the pattern alone does not draw the kernel's reports. The kernel took the mbarrier form (mode 2),
// with which its racecheck runs are clean.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

constexpr int kSteps = 64;
constexpr int kFull = 11, kEmpty = 13, kThreads = 160;

__device__ __forceinline__ void named_sync(int id) {
  __syncwarp();
  asm volatile("barrier.sync %0, %1;" ::"r"(id), "n"(kThreads) : "memory");
}
__device__ __forceinline__ void named_arrive(int id) {
  __syncwarp();
  asm volatile("barrier.arrive %0, %1;" ::"r"(id), "n"(kThreads) : "memory");
}
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done)
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
}

// Threads 0-127: the producer warpgroup (warp kWriter is the writer, the others return), 128-255:
// the consumer warpgroup (thread 128 its leader), 256-383: a second warpgroup that only returns.
template <int kMode>
__global__ void probe(int* mismatches) {
  constexpr int kWriter = kMode == 3 ? 3 : 1;
  constexpr bool kMbarFull = kMode == 1 || kMode == 2 || kMode == 5;
  constexpr bool kMbarEmpty = kMode == 2, kArriveEmpty = kMode == 5, kAtomic = kMode == 4;
  __shared__ float buf[128];
  __shared__ int slot;
  __shared__ uint64_t full, empty;
  const int t = threadIdx.x, warp = t / 32, lane = t % 32;
  if (t == 0) {
    mbar_init(&full, 128);
    mbar_init(&empty, 32);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (warp == kWriter) {
    int bad = 0;
    if (kArriveEmpty) named_arrive(kEmpty);  // phase 0: the buffer starts free
    for (int g = 0; g < kSteps; ++g) {
      if (!kMbarEmpty && !kArriveEmpty) named_sync(kEmpty);  // (modes 2, 5: the warpgroup waits alone)
      if (kMbarFull) mbar_wait(&full, g & 1); else named_sync(kFull);
      const int s = kAtomic ? atomicAdd(&slot, 0) : slot;
      bad += s != g;
      for (int i = lane; i < 128; i += 32) bad += buf[i] != static_cast<float>(g * 1000 + i);
      if (kMbarEmpty) { __syncwarp(); mbar_arrive(&empty); }
      if (kArriveEmpty && g + 1 < kSteps) named_arrive(kEmpty);  // phase g + 1
    }
    if (bad) atomicAdd(mismatches, bad);
    return;
  }
  if (warp < 4 || warp >= 8) return;
  const int i = t - 128;
  for (int g = 0; g < kSteps; ++g) {
    if (kMbarEmpty) { if (g > 0) mbar_wait(&empty, (g - 1) & 1); }
    else named_sync(kEmpty);
    buf[i] = static_cast<float>(g * 1000 + i);
    if (i == 0) { if (kAtomic) atomicExch(&slot, g); else slot = g; }
    if (kMbarFull) mbar_arrive(&full); else named_sync(kFull);
  }
}

int main(int argc, char** argv) {
  const int mode = argc > 1 ? atoi(argv[1]) : 0;
  int* d = nullptr;
  cudaMalloc(&d, sizeof(int));
  cudaMemset(d, 0, sizeof(int));
  switch (mode) {
    case 0: probe<0><<<1, 384>>>(d); break;
    case 1: probe<1><<<1, 384>>>(d); break;
    case 2: probe<2><<<1, 384>>>(d); break;
    case 3: probe<3><<<1, 384>>>(d); break;
    case 4: probe<4><<<1, 384>>>(d); break;
    case 5: probe<5><<<1, 384>>>(d); break;
    default: fprintf(stderr, "mode 0..5\n"); return 2;
  }
  int h = -1;
  const cudaError_t e = cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost);
  printf("mode %d: %s, mismatches %d\n", mode, cudaGetErrorString(e), h);
  return e == cudaSuccess && h == 0 ? 0 : 1;
}
