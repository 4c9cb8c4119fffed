// Output-sparse GEMVs over row-major weights (CATS, predictors, dense rows); concatenated after
// common.cuh by gpu/module.rs.

// ---------------------------------------------------------------------------------------
// Output-sparse GEMVs over row-major weights: one warp per output row, each lane 8 inputs
// at a time (k a multiple of 8), four 16-byte loads in flight.
// ---------------------------------------------------------------------------------------

// x[c..c + 8] as two float4; with NORM, times the RMSNorm weights nw[c..c + 8], the squares
// of x added to ss for the scale the caller applies to the finished dot product
// (W . (x * nw) * scale = W . normed x).
template <bool NORM>
__device__ __forceinline__ void load_x8(const float* __restrict__ x, const float* __restrict__ nw, int c, float4& a,
                                        float4& b, float& ss) {
    const float4* xv = reinterpret_cast<const float4*>(x + c);
    a = __ldg(xv);
    b = __ldg(xv + 1);
    if (NORM) {
        ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w + b.x * b.x + b.y * b.y + b.z * b.z + b.w * b.w;
        const float4* wv = reinterpret_cast<const float4*>(nw + c);
        const float4 wa = __ldg(wv), wb = __ldg(wv + 1);
        a = make_float4(a.x * wa.x, a.y * wa.y, a.z * wa.z, a.w * wa.w);
        b = make_float4(b.x * wb.x, b.y * wb.y, b.z * wb.z, b.w * wb.w);
    }
}

// The warp's dot product of a row with x (with NORM, with x * nw, the lane's sum of squares of
// x added to ss).
template <bool BF16, bool NORM>
__device__ __forceinline__ float row_dot(const u16* __restrict__ row, const float* __restrict__ x,
                                         const float* __restrict__ nw, int k, int lane, float& ss) {
    float sum = 0.0f;
    int c = lane * 8;
    for (; c + 3 * 256 < k; c += 4 * 256) {
        uint4 w[4];
#pragma unroll
        for (int u = 0; u < 4; u++) w[u] = load_stream(row + c + u * 256);
#pragma unroll
        for (int u = 0; u < 4; u++) {
            float4 a, b;
            load_x8<NORM>(x, nw, c + u * 256, a, b, ss);
            sum += dot8<BF16>(w[u], a, b);
        }
    }
    for (; c < k; c += 256) {
        float4 a, b;
        load_x8<NORM>(x, nw, c, a, b, ss);
        sum += dot8<BF16>(load_stream(row + c), a, b);
    }
    return warp_sum(sum);
}

template <bool BF16>
__device__ __forceinline__ float row_dot(const u16* __restrict__ row, const float* __restrict__ x, int k, int lane) {
    float unused = 0.0f;
    return row_dot<BF16, false>(row, x, nullptr, k, lane, unused);
}

// The warp's dot products of two rows (a SwiGLU's gate and up rows) with the same x in one pass:
// x (and with NORM the norm's weights) loaded once for both rows. Rows of four or more chunks a
// lane keep four loads in flight per lane, two of each row, as row_dot has for its one row
// (eight, four of each, cost the 8B dense step 0.5% on an H100); shorter rows (SmolLM2's 576:
// two or three chunks a lane) go a chunk at a time, which timed faster there than pairs.
// With NORM, the lane's sum of squares of x is added to ss.
template <bool BF16, bool NORM>
__device__ __forceinline__ float2 row_dot2(const u16* __restrict__ ra, const u16* __restrict__ rb,
                                           const float* __restrict__ x, const float* __restrict__ nw, int k,
                                           int lane, float& ss) {
    float sa = 0.0f, sb = 0.0f;
    int c = lane * 8;
    for (; c + 3 * 256 < k; c += 2 * 256) {
        uint4 wa[2], wb[2];
#pragma unroll
        for (int u = 0; u < 2; u++) {
            wa[u] = load_stream(ra + c + u * 256);
            wb[u] = load_stream(rb + c + u * 256);
        }
#pragma unroll
        for (int u = 0; u < 2; u++) {
            float4 a, b;
            load_x8<NORM>(x, nw, c + u * 256, a, b, ss);
            sa += dot8<BF16>(wa[u], a, b);
            sb += dot8<BF16>(wb[u], a, b);
        }
    }
    for (; c < k; c += 256) {
        const uint4 wa = load_stream(ra + c), wb = load_stream(rb + c);
        float4 a, b;
        load_x8<NORM>(x, nw, c, a, b, ss);
        sa += dot8<BF16>(wa, a, b);
        sb += dot8<BF16>(wb, a, b);
    }
    return make_float2(warp_sum(sa), warp_sum(sb));
}

// The RMSNorm scale 1 / rms(x) from the lanes' sums of squares over all k inputs.
__device__ __forceinline__ float rms_scale(float lane_ss, int k, float eps) {
    return rsqrtf(warp_sum(lane_ss) / (float)k + eps);
}

// y[r] = W[r] . x (or y[r] += W[r] . x with accumulate) for the listed rows (all rows 0..n when
// rows is null); other outputs untouched. With NORM, x is RMS-normalized with weights nw first:
// the norm folded into the product (each warp reads all of x anyway), one launch fewer.
template <bool BF16, bool NORM>
__device__ __forceinline__ void rows_gemv_body(const u16* w, const float* x, float* y, int n, int k, const int* rows,
                                               int count, int accumulate, const float* nw, float eps) {
    const int item = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (item >= count) return;
    const int r = rows ? rows[item] : item;
    if (r < 0 || r >= n) return;
    float ss = 0.0f;
    float s = row_dot<BF16, NORM>(w + (size_t)r * k, x, nw, k, lane, ss);
    if (NORM) s *= rms_scale(ss, k, eps);
    if (lane == 0) y[r] = accumulate ? y[r] + s : s;
}

#define ROWS_GEMV_KERNEL(NAME, BF16)                                                                              \
    extern "C" __global__ void NAME(const u16* w, const float* x, float* y, int n, int k, const int* rows,       \
                                    int count, int accumulate) {                                                 \
        pdl_begin();                                                                                             \
        rows_gemv_body<BF16, false>(w, x, y, n, k, rows, count, accumulate, nullptr, 0.0f);                      \
    }                                                                                                            \
    extern "C" __global__ void NAME##_norm(const u16* w, const float* x, float* y, int n, int k, const int* rows, \
                                           int count, int accumulate, const float* nw, float eps) {              \
        pdl_begin();                                                                                             \
        rows_gemv_body<BF16, true>(w, x, y, n, k, rows, count, accumulate, nw, eps);                             \
    }
ROWS_GEMV_KERNEL(rows_gemv_f16, false)
ROWS_GEMV_KERNEL(rows_gemv_bf16, true)

// Fused SwiGLU over selected neurons: h[j] = silu(Wg[j] . x) * (Wu[j] . x) where keep[j] != 0
// (every j when keep is null), h[j] = 0 elsewhere. Gate and up rows of dropped neurons are
// never read. With NORM, x is RMS-normalized with weights nw first (as in rows_gemv_body).
template <bool BF16, bool NORM>
__device__ __forceinline__ void swiglu_rows_body(const u16* wg, const u16* wu, const float* x, float* h, int f, int k,
                                                 const unsigned char* keep, const float* nw, float eps) {
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (j >= f) return;
    if (keep != nullptr && keep[j] == 0) {
        if (lane == 0) h[j] = 0.0f;
        return;
    }
    float ss = 0.0f;
    const float2 gu = row_dot2<BF16, NORM>(wg + (size_t)j * k, wu + (size_t)j * k, x, nw, k, lane, ss);
    float g = gu.x, u = gu.y;
    if (NORM) {
        const float scale = rms_scale(ss, k, eps);
        g *= scale;
        u *= scale;
    }
    if (lane == 0) h[j] = silu(g) * u;
}

#define SWIGLU_ROWS_KERNEL(NAME, BF16)                                                                            \
    extern "C" __global__ void NAME(const u16* wg, const u16* wu, const float* x, float* h, int f, int k,        \
                                    const unsigned char* keep) {                                                 \
        pdl_begin();                                                                                             \
        swiglu_rows_body<BF16, false>(wg, wu, x, h, f, k, keep, nullptr, 0.0f);                                  \
    }                                                                                                            \
    extern "C" __global__ void NAME##_norm(const u16* wg, const u16* wu, const float* x, float* h, int f, int k, \
                                           const unsigned char* keep, const float* nw, float eps) {              \
        pdl_begin();                                                                                             \
        swiglu_rows_body<BF16, true>(wg, wu, x, h, f, k, keep, nw, eps);                                         \
    }
SWIGLU_ROWS_KERNEL(swiglu_rows_f16, false)
SWIGLU_ROWS_KERNEL(swiglu_rows_bf16, true)

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
    float unused = 0.0f;
    const float2 gu = row_dot2<BF16, false>(wg + (size_t)j * k, wu + (size_t)j * k, x, nullptr, k, lane, unused);
    if (lane == 0) h[j] = silu(gu.x) * gu.y;
}

extern "C" __global__ void predicted_swiglu_f16(const u16* w2, const float* b2, const float* scale,
                                                const float* hidden, int rank, int relu, int gate_output, float thr,
                                                const u16* wg, const u16* wu, const float* x, float* h, int f, int k) {
    pdl_begin();
    predicted_swiglu_body<false>(w2, b2, scale, hidden, rank, relu, gate_output, thr, wg, wu, x, h, f, k);
}

