// Input-sparse GEMV (TEAL): see common.cuh for the layouts; concatenated after it by gpu/module.rs.

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
// empty at high sparsity). Each batch's loads go out before the previous batch's sums are
// added, so a warp keeps loads in flight between batches (two batches of registers; on the
// H100 2-4% faster at 50% on the 8B shapes than adding each batch before the next one's
// loads). The warp's sums leave with 16-byte vector atomics (sm_90) or go to the
// deterministic reduction. Units run split-major, so neighbouring warps share x.
// Claiming chunks from a per-tile counter instead (so a warp that drew many active inputs
// takes fewer) measured slower on an H100 at every sparsity (4096->14336 at 50%: 1.55-1.60x
// against 1.63x): each claimed chunk waits for its inputs before its first weight load.
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
    // The batch whose loads went out last and whose sums are still to add.
    uint4 pw[ROWS_PER_BATCH][VEC];
    float pxv[ROWS_PER_BATCH];
    int pending = 0;
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
                // The previous batch's sums while this batch's loads are in flight.
#pragma unroll
                for (int u = 0; u < ROWS_PER_BATCH; u++)
                    if (u < pending)
#pragma unroll
                        for (int v = 0; v < VEC; v++) fma8<BF16>(acc[v], pxv[u], pw[u][v]);
#pragma unroll
                for (int u = 0; u < ROWS_PER_BATCH; u++) {
                    pxv[u] = xv[u];
#pragma unroll
                    for (int v = 0; v < VEC; v++) pw[u][v] = w[u][v];
                }
                pending = count;
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
#pragma unroll
    for (int u = 0; u < ROWS_PER_BATCH; u++)
        if (u < pending)
#pragma unroll
            for (int v = 0; v < VEC; v++) fma8<BF16>(acc[v], pxv[u], pw[u][v]);
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
// in a fixed order. A block of REDUCE_THREADS threads covers REDUCE_THREADS / lanes outputs of
// one tile: lane j adds splits j, j + lanes, ... in turn, and the lanes' sums are added in lane
// order. The launcher gives many splits more lanes, so that each thread adds about eight (one
// lane per output, as before, left an 8B down projection read wide, 8 tiles of 132 splits,
// 3.5 µs slower: eight blocks on the whole GPU).
#define REDUCE_THREADS 256
extern "C" __global__ void reduce_splits(Segs segs, const float* partial, int splits, int total_tiles, int tile_width,
                                         int accumulate, int lanes) {
    pdl_begin();
    const int cols = REDUCE_THREADS / lanes;
    const int per_tile = tile_width / cols;
    const int global_tile = blockIdx.x / per_tile;
    const int at = threadIdx.x % cols;
    const int lane = threadIdx.x / cols;
    const int c = (blockIdx.x - global_tile * per_tile) * cols + at;
    int tile = global_tile;
    int seg = 0;
    while (seg + 1 < segs.count && tile >= segs.s[seg].tiles) {
        tile -= segs.s[seg].tiles;
        seg++;
    }
    const Seg S = segs.s[seg];
    float sum = 0.0f;
    for (int s = lane; s < splits; s += lanes) sum += partial[((size_t)s * total_tiles + global_tile) * tile_width + c];
    __shared__ float lane_sums[REDUCE_THREADS];
    lane_sums[threadIdx.x] = sum;
    __syncthreads();
    const int col = tile * tile_width + c;
    if (lane != 0 || col >= S.n) return;
    float total = 0.0f;
    for (int l = 0; l < lanes; l++) total += lane_sums[l * cols + at];
    S.y[col] = accumulate ? S.y[col] + total : total;
}
