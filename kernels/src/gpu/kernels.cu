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
// are scheduled while this one drains. Every kernel waits first, before touching global
// memory: the wait holds it until the previous grid has finished and its writes are visible
// (a no-op without the attribute). The trigger then lets the next kernel launch; waiting
// before triggering keeps at most one kernel queued ahead on the SMs.
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

// ---------------------------------------------------------------------------------------
// Input-sparse GEMV over input-major weights, up to three outputs sharing one input
// (q/k/v, or gate/up), each with its own threshold.
// ---------------------------------------------------------------------------------------

#define SG_TILE 256

struct Seg {
    const u16* w;  // W^T, k rows of n
    float* y;      // n outputs
    int n;         // outputs (multiple of 8)
    float thr;     // input kept where |x| > thr; negative keeps every input
    int tiles;     // ceil(n / (SG_TILE * VEC)), VEC the kernel's loads per lane and row
    int pad;
};

struct Segs {
    Seg s[3];
    int count;
};

__device__ __forceinline__ float gemv_input(const float* __restrict__ x, const float* __restrict__ x2, int i) {
    const float v = __ldg(x + i);
    return x2 == nullptr ? v : silu(v) * __ldg(x2 + i);
}

// Each warp owns one unit: a tile of 256 * VEC outputs (each lane 8 * VEC; one load
// instruction of the warp reads 512 contiguous bytes of a row, VEC of them 512 * VEC) times a
// chunk of `rows` inputs. No block barrier, so many small units balance any mask. The inputs
// are loaded a window of STAGE_WINDOW groups of 32 at a time (one round trip, not a chain of
// dependent loads), a ballot per group finds the active ones, and they are staged in a
// per-warp list in shared memory before any weight is read, so every batch of STAGE_LOADS
// loads is full whatever the sparsity (batching within each group of 32 left most of a batch
// empty at high sparsity). The warp's sums leave with 16-byte vector atomics (sm_90) or go to
// the deterministic reduction. Units run split-major, so neighbouring warps share x.
#define STAGE_LOADS 16
#define STAGE_WARPS 4
#define STAGE_LIST (32 + STAGE_LOADS)
#define STAGE_WINDOW 8

template <bool BF16, int VEC>
__device__ __forceinline__ void sparse_gemv_staged_body(const Segs& segs, const float* __restrict__ x,
                                                        const float* __restrict__ x2, int k, int rows, int splits,
                                                        float* __restrict__ partial, int total_tiles) {
    constexpr int ROWS_PER_BATCH = STAGE_LOADS / VEC;  // rows per batch of loads
    constexpr int UNIT_OUTPUTS = SG_TILE * VEC;
    __shared__ int s_row[STAGE_WARPS][STAGE_LIST];
    __shared__ float s_val[STAGE_WARPS][STAGE_LIST];
    const unsigned FULL = 0xffffffffu;
    const int lane = threadIdx.x & 31;
    const int warp = (threadIdx.x >> 5) & (STAGE_WARPS - 1);
    int* list_row = s_row[warp];
    float* list_val = s_val[warp];
    const int unit = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int split = unit / total_tiles;
    if (split >= splits) return;  // exiting counts as the trigger
    int tile = unit - split * total_tiles;
    const int global_tile = tile;
    int seg = 0;
    while (seg + 1 < segs.count && tile >= segs.s[seg].tiles) {
        tile -= segs.s[seg].tiles;
        seg++;
    }
    const Seg S = segs.s[seg];
    // Lane's outputs: 8 at col0 + v * 256 for each v < VEC (each load instruction of the
    // warp reads 512 contiguous bytes).
    const int col0 = tile * UNIT_OUTPUTS + lane * 8;
    bool has[VEC];
#pragma unroll
    for (int v = 0; v < VEC; v++) has[v] = col0 + v * SG_TILE < S.n;
    const u16* base = S.w + col0;
    const size_t n = (size_t)S.n;
    const int r0 = split * rows, r1 = min(r0 + rows, k);

    float acc[VEC][8];
#pragma unroll
    for (int v = 0; v < VEC; v++)
#pragma unroll
        for (int e = 0; e < 8; e++) acc[v][e] = 0.0f;
    bool any = false;
    int staged = 0;  // warp-uniform: active inputs waiting in the list
    for (int w0 = r0; w0 < r1; w0 += 32 * STAGE_WINDOW) {
        // The window's inputs in one round trip rather than a chain of dependent loads.
        float xw[STAGE_WINDOW];
#pragma unroll
        for (int j = 0; j < STAGE_WINDOW; j++) {
            const int i = w0 + 32 * j + lane;
            xw[j] = i < r1 ? gemv_input(x, x2, i) : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < STAGE_WINDOW; j++) {
            const int i = w0 + 32 * j + lane;
            const bool active = i < r1 && fabsf(xw[j]) > S.thr;
            const unsigned mask = __ballot_sync(FULL, active);
            if (active) {
                const int at = staged + __popc(mask & ((1u << lane) - 1u));
                list_row[at] = i;
                list_val[at] = xw[j];
            }
            staged += __popc(mask);
            any |= mask != 0;
            __syncwarp();
            const bool last = w0 + 32 * (j + 1) >= r1;
            // Full batches while inputs remain to stage; everything after the last group.
            int head = 0;
            while (staged - head >= ROWS_PER_BATCH || (last && staged - head > 0)) {
                const int count = min(ROWS_PER_BATCH, staged - head);
                uint4 w[ROWS_PER_BATCH][VEC];
                float xv[ROWS_PER_BATCH];
#pragma unroll
                for (int u = 0; u < ROWS_PER_BATCH; u++) {
                    const bool live = u < count;
                    const u16* row = base + (size_t)(live ? list_row[head + u] : 0) * n;
                    xv[u] = live ? list_val[head + u] : 0.0f;
#pragma unroll
                    for (int v = 0; v < VEC; v++)
                        w[u][v] = (live && has[v]) ? load_stream(row + v * SG_TILE) : make_uint4(0, 0, 0, 0);
                }
#pragma unroll
                for (int u = 0; u < ROWS_PER_BATCH; u++)
                    if (u < count)
#pragma unroll
                        for (int v = 0; v < VEC; v++) fma8<BF16>(acc[v], xv[u], w[u][v]);
                head += count;
            }
            // Move the remainder (fewer than a batch) to the front of the list.
            const int left = staged - head;
            if (head > 0 && left > 0) {
                int row = 0;
                float val = 0.0f;
                if (lane < left) {
                    row = list_row[head + lane];
                    val = list_val[head + lane];
                }
                __syncwarp();
                if (lane < left) {
                    list_row[lane] = row;
                    list_val[lane] = val;
                }
            }
            __syncwarp();
            staged = left;
            if (last) break;
        }
    }
    // One wave of units, each with a fixed share: the next kernel's blocks are let in only as
    // these finish (placed while the wave still runs, they land unevenly and slow it down).
    pdl_trigger();
#pragma unroll
    for (int v = 0; v < VEC; v++) {
        if (!has[v]) continue;
        const float* a = acc[v];
        if (partial == nullptr) {
            if (!any) continue;
            float* y = S.y + col0 + v * SG_TILE;
            asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(y), "f"(a[0]), "f"(a[1]), "f"(a[2]),
                         "f"(a[3])
                         : "memory");
            asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(y + 4), "f"(a[4]), "f"(a[5]), "f"(a[6]),
                         "f"(a[7])
                         : "memory");
        } else {
            float* p = partial + ((size_t)split * total_tiles + global_tile) * UNIT_OUTPUTS + v * SG_TILE + lane * 8;
            reinterpret_cast<float4*>(p)[0] = make_float4(a[0], a[1], a[2], a[3]);
            reinterpret_cast<float4*>(p)[1] = make_float4(a[4], a[5], a[6], a[7]);
        }
    }
}

#define STAGED_KERNEL(NAME, BF16, VEC)                                                                           \
    extern "C" __global__ void NAME(Segs segs, const float* x, const float* x2, int k, int rows, int splits,     \
                                    float* partial, int total_tiles) {                                           \
        pdl_wait();                                                                                          \
        sparse_gemv_staged_body<BF16, VEC>(segs, x, x2, k, rows, splits, partial, total_tiles);                  \
    }
STAGED_KERNEL(sparse_gemv_f16, false, 1)
STAGED_KERNEL(sparse_gemv_bf16, true, 1)
STAGED_KERNEL(sparse_gemv_wide2_f16, false, 2)
STAGED_KERNEL(sparse_gemv_wide2_bf16, true, 2)

// Deterministic reduction of the split partial sums: y = (accumulate ? y : 0) + sum over splits,
// always in split order. One block per tile of `tile_width` outputs.
extern "C" __global__ void reduce_splits(Segs segs, const float* partial, int splits, int total_tiles, int tile_width,
                                         int accumulate) {
    pdl_begin();
    int tile = blockIdx.x;
    int seg = 0;
    while (seg + 1 < segs.count && tile >= segs.s[seg].tiles) {
        tile -= segs.s[seg].tiles;
        seg++;
    }
    const Seg S = segs.s[seg];
    for (int c = threadIdx.x; c < tile_width; c += blockDim.x) {
        const int col = tile * tile_width + c;
        if (col >= S.n) break;
        float sum = 0.0f;
        for (int s = 0; s < splits; s++) sum += partial[((size_t)s * total_tiles + blockIdx.x) * tile_width + c];
        S.y[col] = accumulate ? S.y[col] + sum : sum;
    }
}

// ---------------------------------------------------------------------------------------
// Output-sparse GEMVs over row-major weights: one warp per output row, each lane 8 inputs
// at a time (k a multiple of 8), four 16-byte loads in flight.
// ---------------------------------------------------------------------------------------

template <bool BF16>
__device__ __forceinline__ float row_dot(const u16* __restrict__ row, const float* __restrict__ x, int k, int lane) {
    float sum = 0.0f;
    int c = lane * 8;
    for (; c + 3 * 256 < k; c += 4 * 256) {
        uint4 w[4];
#pragma unroll
        for (int u = 0; u < 4; u++) w[u] = load_stream(row + c + u * 256);
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const float4* xv = reinterpret_cast<const float4*>(x + c + u * 256);
            sum += dot8<BF16>(w[u], __ldg(xv), __ldg(xv + 1));
        }
    }
    for (; c < k; c += 256) {
        const float4* xv = reinterpret_cast<const float4*>(x + c);
        sum += dot8<BF16>(load_stream(row + c), __ldg(xv), __ldg(xv + 1));
    }
    return warp_sum(sum);
}

// y[r] = W[r] . x (or y[r] += W[r] . x with accumulate) for the listed rows (all rows 0..n when
// rows is null); other outputs untouched.
template <bool BF16>
__device__ __forceinline__ void rows_gemv_body(const u16* w, const float* x, float* y, int n, int k, const int* rows,
                                               int count, int accumulate) {
    const int item = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (item >= count) return;
    const int r = rows ? rows[item] : item;
    if (r < 0 || r >= n) return;
    const float s = row_dot<BF16>(w + (size_t)r * k, x, k, lane);
    if (lane == 0) y[r] = accumulate ? y[r] + s : s;
}

extern "C" __global__ void rows_gemv_f16(const u16* w, const float* x, float* y, int n, int k, const int* rows, int count,
                                         int accumulate) {
    pdl_begin();
    rows_gemv_body<false>(w, x, y, n, k, rows, count, accumulate);
}

extern "C" __global__ void rows_gemv_bf16(const u16* w, const float* x, float* y, int n, int k, const int* rows,
                                          int count, int accumulate) {
    pdl_begin();
    rows_gemv_body<true>(w, x, y, n, k, rows, count, accumulate);
}

// Fused SwiGLU over selected neurons: h[j] = silu(Wg[j] . x) * (Wu[j] . x) where keep[j] != 0
// (every j when keep is null), h[j] = 0 elsewhere. Gate and up rows of dropped neurons are
// never read.
template <bool BF16>
__device__ __forceinline__ void swiglu_rows_body(const u16* wg, const u16* wu, const float* x, float* h, int f, int k,
                                                 const unsigned char* keep) {
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (j >= f) return;
    if (keep != nullptr && keep[j] == 0) {
        if (lane == 0) h[j] = 0.0f;
        return;
    }
    const float g = row_dot<BF16>(wg + (size_t)j * k, x, k, lane);
    const float u = row_dot<BF16>(wu + (size_t)j * k, x, k, lane);
    if (lane == 0) h[j] = silu(g) * u;
}

extern "C" __global__ void swiglu_rows_f16(const u16* wg, const u16* wu, const float* x, float* h, int f, int k,
                                           const unsigned char* keep) {
    pdl_begin();
    swiglu_rows_body<false>(wg, wu, x, h, f, k, keep);
}

extern "C" __global__ void swiglu_rows_bf16(const u16* wg, const u16* wu, const float* x, float* h, int f, int k,
                                            const unsigned char* keep) {
    pdl_begin();
    swiglu_rows_body<true>(wg, wu, x, h, f, k, keep);
}

// CATS: given the dense gate g, h[j] = silu(g[j]) * (Wu[j] . x) where |silu(g[j])| > thr,
// else 0 (the up row is not read).
template <bool BF16>
__device__ __forceinline__ void up_gated_body(const u16* wu, const float* x, const float* g, float thr, float* h,
                                              int f, int k) {
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (j >= f) return;
    const float a = silu(g[j]);
    if (!(fabsf(a) > thr)) {
        if (lane == 0) h[j] = 0.0f;
        return;
    }
    const float u = row_dot<BF16>(wu + (size_t)j * k, x, k, lane);
    if (lane == 0) h[j] = a * u;
}

extern "C" __global__ void up_gated_f16(const u16* wu, const float* x, const float* g, float thr, float* h, int f, int k) {
    pdl_begin();
    up_gated_body<false>(wu, x, g, thr, h, f, k);
}

extern "C" __global__ void up_gated_bf16(const u16* wu, const float* x, const float* g, float thr, float* h, int f, int k) {
    pdl_begin();
    up_gated_body<true>(wu, x, g, thr, h, f, k);
}

// A low-rank predictor picks the neurons, then SwiGLU runs on them only. Per neuron j (one
// warp): z = W2[j] . phi(hidden) + b2[j] (phi = ReLU when relu != 0), score = z, or with
// gate_output |silu(z)| * scale[j] (scale may be null); where score > thr,
// h[j] = silu(Wg[j] . x) * (Wu[j] . x), else h[j] = 0 without reading the gate and up rows.
template <bool BF16>
__device__ __forceinline__ void predicted_swiglu_body(const u16* w2, const float* b2, const float* scale,
                                                      const float* hidden, int rank, int relu, int gate_output,
                                                      float thr, const u16* wg, const u16* wu, const float* x,
                                                      float* h, int f, int k) {
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (j >= f) return;
    const u16* row = w2 + (size_t)j * rank;
    float z = 0.0f;
    for (int r = lane; r < rank; r += 32) {
        const float hv = relu ? fmaxf(hidden[r], 0.0f) : hidden[r];
        z += hv * (BF16 ? bf16_to_f32(row[r]) : f16_to_f32(row[r]));
    }
    z = warp_sum(z) + b2[j];
    const float score = gate_output ? fabsf(silu(z)) * (scale ? scale[j] : 1.0f) : z;
    if (!(score > thr)) {
        if (lane == 0) h[j] = 0.0f;
        return;
    }
    const float g = row_dot<BF16>(wg + (size_t)j * k, x, k, lane);
    const float u = row_dot<BF16>(wu + (size_t)j * k, x, k, lane);
    if (lane == 0) h[j] = silu(g) * u;
}

extern "C" __global__ void predicted_swiglu_f16(const u16* w2, const float* b2, const float* scale,
                                                const float* hidden, int rank, int relu, int gate_output, float thr,
                                                const u16* wg, const u16* wu, const float* x, float* h, int f, int k) {
    pdl_begin();
    predicted_swiglu_body<false>(w2, b2, scale, hidden, rank, relu, gate_output, thr, wg, wu, x, h, f, k);
}

// ---------------------------------------------------------------------------------------
// Decode glue.
// ---------------------------------------------------------------------------------------

// out = x / rms(x) * weight (one block), and zero `clear` (the next GEMVs accumulate into it).
extern "C" __global__ void rms_norm(const float* x, const float* weight, float* out, int d, float eps, float* clear,
                                    int clear_len) {
    pdl_begin();
    __shared__ float partial[32];
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) ss += x[i] * x[i];
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : 0.0f;
        v = warp_sum(v);
        if (threadIdx.x == 0) partial[0] = v;
    }
    __syncthreads();
    const float scale = rsqrtf(partial[0] / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) out[i] = x[i] * scale * weight[i];
    for (int i = threadIdx.x; i < clear_len; i += blockDim.x) clear[i] = 0.0f;
}

// x[i] = embedding[token][i]; the token id lives on the device (step[0]) so a captured graph
// replays for any token.
extern "C" __global__ void embed_f16(const u16* table, const int* step, float* x, int d) {
    pdl_begin();
    const size_t row = (size_t)step[0] * d;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < d; i += gridDim.x * blockDim.x)
        x[i] = f16_to_f32(table[row + i]);
}

// GGML "normal" RoPE on adjacent pairs for position step[1], applied to q (in place) and k,
// then k and v stored as fp16 in the cache row of that position. One thread per pair.
extern "C" __global__ void rope_append(float* q, const float* k, const float* v, u16* k_cache, u16* v_cache,
                                       const int* step, int n_heads, int n_kv_heads, int head_dim, int rot_pairs,
                                       float theta) {
    pdl_begin();
    const int pos = step[1];
    const int half_dim = head_dim / 2;
    const int kv_dim = n_kv_heads * head_dim;
    const int total = (n_heads + n_kv_heads) * half_dim;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int head = t / half_dim, i = t % half_dim;
        float a, b;
        const bool is_q = head < n_heads;
        const int off = (is_q ? head : head - n_heads) * head_dim + 2 * i;
        if (is_q) {
            a = q[off];
            b = q[off + 1];
        } else {
            a = k[off];
            b = k[off + 1];
        }
        if (i < rot_pairs) {
            const double angle = (double)pos * pow((double)theta, -2.0 * i / (2.0 * rot_pairs));
            double s, c;
            sincos(angle, &s, &c);
            const float cf = (float)c, sf = (float)s;
            const float ra = a * cf - b * sf, rb = a * sf + b * cf;
            a = ra;
            b = rb;
        }
        if (is_q) {
            q[off] = a;
            q[off + 1] = b;
        } else {
            const size_t row = (size_t)pos * kv_dim;
            k_cache[row + off] = f32_to_f16(a);
            k_cache[row + off + 1] = f32_to_f16(b);
            v_cache[row + off] = f32_to_f16(v[off]);
            v_cache[row + off + 1] = f32_to_f16(v[off + 1]);
        }
    }
}

// One query head per block over positions 0..=step[1] of the fp16 KV cache:
// out = softmax(scale * K q) V. Scores: one position per lane; values: warps take positions
// round-robin with lanes over the head. Scores live in dynamic shared memory (max_len floats);
// the warps' partial outputs are added in shared memory. head_dim a multiple of 32, <= 256.
#define ATT_MAX_WARPS 8
extern "C" __global__ void attention(const float* q, const u16* k_cache, const u16* v_cache, float* out,
                                     const int* step, int n_heads, int n_kv_heads, int head_dim, float scale) {
    pdl_begin();
    extern __shared__ float scores[];
    __shared__ float red[32];
    __shared__ float partial[ATT_MAX_WARPS][256];
    const int head = blockIdx.x;
    const int len = step[1] + 1;
    const int kv_dim = n_kv_heads * head_dim;
    const int off = (head / (n_heads / n_kv_heads)) * head_dim;
    const float* qh = q + head * head_dim;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int per_lane = head_dim / 32;  // head_dim is a multiple of 32 here

    // Scores, one position per lane: each lane reads its key row 16 bytes at a time (q from
    // shared memory), so a warp has 32 rows in flight.
    __shared__ float qs[256];
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = qh[d];
    __syncthreads();
    for (int base = warp * 32; base < len; base += warps * 32) {
        const int p = base + lane;
        if (p < len) {
            const u16* kr = k_cache + (size_t)p * kv_dim + off;
            float s = 0.0f;
#pragma unroll 4
            for (int c = 0; c < head_dim; c += 8) {
                const uint4 w = *reinterpret_cast<const uint4*>(kr + c);
                const float4 a = make_float4(qs[c], qs[c + 1], qs[c + 2], qs[c + 3]);
                const float4 b = make_float4(qs[c + 4], qs[c + 5], qs[c + 6], qs[c + 7]);
                s += dot8<false>(w, a, b);
            }
            scores[p] = s * scale;
        }
    }
    __syncthreads();
    float m = __int_as_float(0xff800000);
    for (int p = threadIdx.x; p < len; p += blockDim.x) m = fmaxf(m, scores[p]);
    m = warp_max(m);
    if (lane == 0) red[warp] = m;
    __syncthreads();
    m = __int_as_float(0xff800000);
    for (int w = 0; w < warps; w++) m = fmaxf(m, red[w]);
    __syncthreads();
    float z = 0.0f;
    for (int p = threadIdx.x; p < len; p += blockDim.x) {
        const float e = __expf(scores[p] - m);
        scores[p] = e;
        z += e;
    }
    z = warp_sum(z);
    if (lane == 0) red[warp] = z;
    __syncthreads();
    z = 0.0f;
    for (int w = 0; w < warps; w++) z += red[w];

    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
    for (int p = warp; p < len; p += warps) {
        const u16* vr = v_cache + (size_t)p * kv_dim + off;
        const float e = scores[p];
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (j < per_lane) acc[j] += e * f16_to_f32(vr[lane + 32 * j]);
    }
#pragma unroll
    for (int j = 0; j < 8; j++)
        if (j < per_lane) partial[warp][lane + 32 * j] = acc[j];
    __syncthreads();
    const float inv = 1.0f / z;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float sum = 0.0f;
        for (int w = 0; w < warps; w++) sum += partial[w][d];
        out[head * head_dim + d] = sum * inv;
    }
}

// Split attention (flash-decoding) for long caches: block (head, split) covers positions
// [split * ATT_CHUNK, +ATT_CHUNK) of 0..=step[1]: scores one per thread, its own max and sum,
// and the unnormalised weighted values (warps over positions, lanes over the head), written to
// `part` as [max, sum, values...] per (head, split). attention_combine rescales and adds the
// splits. head_dim a multiple of 32, <= 256.
#define ATT_CHUNK 128
extern "C" __global__ void __launch_bounds__(128)
    attention_part(const float* q, const u16* k_cache, const u16* v_cache, float* part, const int* step, int n_heads,
                   int n_kv_heads, int head_dim, float scale, int max_splits) {
    pdl_begin();
    __shared__ float qs[256];
    __shared__ float sc[ATT_CHUNK];
    __shared__ float red[4];
    __shared__ float partial[4][256];
    const int head = blockIdx.x, split = blockIdx.y;
    const int len = step[1] + 1;
    const int c0 = split * ATT_CHUNK;
    if (c0 >= len) return;
    const int c1 = min(c0 + ATT_CHUNK, len);
    const int kv_dim = n_kv_heads * head_dim;
    const int off = (head / (n_heads / n_kv_heads)) * head_dim;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = q[head * head_dim + d];
    __syncthreads();
    const int p = c0 + threadIdx.x;
    float s = __int_as_float(0xff800000);
    if (p < c1) {
        const u16* kr = k_cache + (size_t)p * kv_dim + off;
        float acc = 0.0f;
#pragma unroll 4
        for (int c = 0; c < head_dim; c += 8) {
            const uint4 w = *reinterpret_cast<const uint4*>(kr + c);
            acc += dot8<false>(w, make_float4(qs[c], qs[c + 1], qs[c + 2], qs[c + 3]),
                               make_float4(qs[c + 4], qs[c + 5], qs[c + 6], qs[c + 7]));
        }
        s = acc * scale;
    }
    float m = warp_max(s);
    if (lane == 0) red[warp] = m;
    __syncthreads();
    m = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
    __syncthreads();
    const float e = p < c1 ? __expf(s - m) : 0.0f;
    sc[threadIdx.x] = e;
    float z = warp_sum(e);
    if (lane == 0) red[warp] = z;
    __syncthreads();
    z = red[0] + red[1] + red[2] + red[3];
    const int per_lane = head_dim / 32;
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
    for (int pp = c0 + warp; pp < c1; pp += 4) {
        const u16* vr = v_cache + (size_t)pp * kv_dim + off;
        const float w = sc[pp - c0];
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (j < per_lane) acc[j] += w * f16_to_f32(vr[lane + 32 * j]);
    }
#pragma unroll
    for (int j = 0; j < 8; j++)
        if (j < per_lane) partial[warp][lane + 32 * j] = acc[j];
    __syncthreads();
    float* out = part + ((size_t)head * max_splits + split) * (head_dim + 2);
    if (threadIdx.x == 0) {
        out[0] = m;
        out[1] = z;
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
        out[2 + d] = partial[0][d] + partial[1][d] + partial[2][d] + partial[3][d];
}

extern "C" __global__ void attention_combine(const float* part, float* out, const int* step, int head_dim,
                                             int max_splits) {
    pdl_begin();
    const int head = blockIdx.x;
    const int splits = (step[1] + ATT_CHUNK) / ATT_CHUNK;
    const float* hp = part + (size_t)head * max_splits * (head_dim + 2);
    float m = __int_as_float(0xff800000);
    for (int i = 0; i < splits; i++) m = fmaxf(m, hp[(size_t)i * (head_dim + 2)]);
    float z = 0.0f;
    for (int i = 0; i < splits; i++) z += __expf(hp[(size_t)i * (head_dim + 2)] - m) * hp[(size_t)i * (head_dim + 2) + 1];
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < splits; i++) {
            const float* r = hp + (size_t)i * (head_dim + 2);
            acc += __expf(r[0] - m) * r[2 + d];
        }
        out[head * head_dim + d] = acc / z;
    }
}

// out = f32 -> fp16 conversion (inputs of the cuBLAS baseline).
extern "C" __global__ void to_f16(const float* x, u16* out, int n) {
    pdl_begin();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = f32_to_f16(x[i]);
}

// Fills w with a reproducible pseudo-random pattern, uniform in [-scale, scale) (synthetic models).
// With cols > 0, w is the transpose of the (rows x cols) matrix the same seed fills with cols = 0:
// element i of w stands for element (i % rows, i / rows) of that matrix.
extern "C" __global__ void fill_uniform_f16(u16* w, size_t n, unsigned long long seed, float scale, size_t rows,
                                            size_t cols) {
    pdl_begin();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t logical = cols > 0 ? (i % rows) * cols + i / rows : i;
        unsigned long long z = seed + logical * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const float r = (float)(z >> 40) * (1.0f / 16777216.0f);
        w[i] = f32_to_f16((2.0f * r - 1.0f) * scale);
    }
}
