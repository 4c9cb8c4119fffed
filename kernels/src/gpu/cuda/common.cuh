// sieve's GPU kernels, compiled at run time by NVRTC (see gpu/module.rs).
//
// Weights are 16-bit (fp16 or bf16, stored as unsigned short so no CUDA header is needed),
// activations and accumulation are fp32. Two layouts:
//   input-major  W^T[k][n]: row i holds input i's weights for every output; an input-sparse
//                GEMV reads only the rows of active inputs (TEAL).
//   row-major    W[n][k]:   one row per output; an output-sparse GEMV reads only selected rows
//                (CATS, predictors).

typedef unsigned short u16;

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((unsigned)h) << 16); }

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// Streaming 16-byte load: weights are read once per token, so keep them out of L1.
__device__ __forceinline__ uint4 load_stream(const u16* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

template <bool BF16>
__device__ __forceinline__ float lo16(unsigned w) {
    return BF16 ? bf16_to_f32((u16)(w & 0xffffu)) : f16_to_f32((u16)(w & 0xffffu));
}
template <bool BF16>
__device__ __forceinline__ float hi16(unsigned w) {
    return BF16 ? bf16_to_f32((u16)(w >> 16)) : f16_to_f32((u16)(w >> 16));
}

// acc[0..8] += a * w[0..8]
template <bool BF16>
__device__ __forceinline__ void fma8(float* acc, float a, uint4 w) {
    acc[0] += a * lo16<BF16>(w.x);
    acc[1] += a * hi16<BF16>(w.x);
    acc[2] += a * lo16<BF16>(w.y);
    acc[3] += a * hi16<BF16>(w.y);
    acc[4] += a * lo16<BF16>(w.z);
    acc[5] += a * hi16<BF16>(w.z);
    acc[6] += a * lo16<BF16>(w.w);
    acc[7] += a * hi16<BF16>(w.w);
}

// sum_j w[j] * x[j] over 8 weights and 8 activations.
template <bool BF16>
__device__ __forceinline__ float dot8(uint4 w, float4 a, float4 b) {
    return lo16<BF16>(w.x) * a.x + hi16<BF16>(w.x) * a.y + lo16<BF16>(w.y) * a.z + hi16<BF16>(w.y) * a.w +
           lo16<BF16>(w.z) * b.x + hi16<BF16>(w.z) * b.y + lo16<BF16>(w.w) * b.z + hi16<BF16>(w.w) * b.w;
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }

// Programmatic dependent launch (sm_90+): with the launch attribute the next kernel's blocks
// are scheduled while this one drains. Every kernel waits before it touches memory that a
// kernel of the step writes: the wait holds it until the previous grid has finished and its
// writes are visible (a no-op without the attribute). What no kernel writes (weights, norm
// weights, the step's token and position, which the host writes before the graph starts, and
// KV-cache rows of earlier positions) may be read or prefetched before the wait, so that its
// latency hides in the previous kernel's tail. The trigger then lets the next kernel launch; waiting
// before triggering keeps at most one kernel queued ahead on the SMs. The wait must come on
// every path, early exits included: a kernel that could finish before the previous one would
// break the chain for the kernel after it.
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

// Starts fetching the 128-byte line at p into L2 (no register, never faults on a valid address).
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

__device__ __forceinline__ void pdl_begin() {
    pdl_wait();
    pdl_trigger();
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

