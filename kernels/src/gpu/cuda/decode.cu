// The decode step's glue: RMSNorm, embedding, RoPE and KV append, attention, conversions;
// concatenated after common.cuh by gpu/module.rs.

// ---------------------------------------------------------------------------------------
// Decode glue.
// ---------------------------------------------------------------------------------------

// out = x / rms(x) * weight, and zero `clear` (the next GEMVs accumulate into it). Block 0
// normalizes; blocks 1.. clear NORM_CLEAR floats each, so the clearing runs beside the norm
// rather than after it on one SM. The norm keeps x and weight in registers (NORM_REGS per
// thread), the weights loaded before the wait for the previous kernel: one round trip to
// memory after it, not two (x for the sum of squares, then x and weight again).
#define NORM_REGS 8
#define NORM_CLEAR 4096
extern "C" __global__ void rms_norm(const float* x, const float* weight, float* out, int d, float eps, float* clear,
                                    int clear_len) {
    __shared__ float partial[32];
    const bool norm = blockIdx.x == 0;
    const bool in_regs = d <= NORM_REGS * (int)blockDim.x;
    float xv[NORM_REGS], wv[NORM_REGS];
    if (norm && in_regs) {
        // The norm's weights before the wait (no kernel writes them), x after it.
#pragma unroll
        for (int r = 0; r < NORM_REGS; r++) {
            const int i = threadIdx.x + r * blockDim.x;
            wv[r] = i < d ? weight[i] : 0.0f;
        }
    }
    pdl_begin();
    if (!norm) {
        const int c0 = (blockIdx.x - 1) * NORM_CLEAR, c1 = min(c0 + NORM_CLEAR, clear_len);
        for (int i = c0 + threadIdx.x; i < c1; i += blockDim.x) clear[i] = 0.0f;
        return;
    }
    float ss = 0.0f;
    if (in_regs) {
#pragma unroll
        for (int r = 0; r < NORM_REGS; r++) {
            const int i = threadIdx.x + r * blockDim.x;
            xv[r] = i < d ? x[i] : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < NORM_REGS; r++) ss += xv[r] * xv[r];
    } else {
        for (int i = threadIdx.x; i < d; i += blockDim.x) ss += x[i] * x[i];
    }
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
    if (in_regs) {
#pragma unroll
        for (int r = 0; r < NORM_REGS; r++) {
            const int i = threadIdx.x + r * blockDim.x;
            if (i < d) out[i] = xv[r] * scale * wv[r];
        }
    } else {
        for (int i = threadIdx.x; i < d; i += blockDim.x) out[i] = x[i] * scale * weight[i];
    }
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
    // The position (written by the host before the graph starts) and the rotation in double
    // precision (a long dependent chain) before the wait: they overlap the previous kernel.
    const int pos = step[1];
    const int half_dim = head_dim / 2;
    const int kv_dim = n_kv_heads * head_dim;
    const int total = (n_heads + n_kv_heads) * half_dim;
    // One pair per thread wherever the grid covers them all (the launcher's grid does).
    const int first = blockIdx.x * blockDim.x + threadIdx.x;
    float cf = 1.0f, sf = 0.0f;
    if (first < total && first % half_dim < rot_pairs) {
        const int i = first % half_dim;
        const double angle = (double)pos * pow((double)theta, -2.0 * i / (2.0 * rot_pairs));
        double s, c;
        sincos(angle, &s, &c);
        cf = (float)c;
        sf = (float)s;
    }
    pdl_begin();
    for (int t = first; t < total; t += gridDim.x * blockDim.x) {
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
            if (t != first) {
                const double angle = (double)pos * pow((double)theta, -2.0 * i / (2.0 * rot_pairs));
                double s, c;
                sincos(angle, &s, &c);
                cf = (float)c;
                sf = (float)s;
            }
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

// Prefetches into L2 the head's key and value rows of positions [p0, p1) (at most
// ATT_PREFETCH of them): rows of earlier positions, which no kernel of this step writes, so
// the attention kernels fetch them before waiting for the previous kernel.
#define ATT_PREFETCH 512
__device__ __forceinline__ void prefetch_kv(const u16* k_cache, const u16* v_cache, int p0, int p1, int kv_dim,
                                            int off, int head_dim) {
    const int lines = (head_dim * 2 + 127) / 128;
    const int n = max(0, min(p1 - p0, ATT_PREFETCH)) * lines;
    for (int t = threadIdx.x; t < n; t += blockDim.x) {
        const size_t at = (size_t)(p0 + t / lines) * kv_dim + off + (t % lines) * 64;
        prefetch_l2(k_cache + at);
        prefetch_l2(v_cache + at);
    }
}

extern "C" __global__ void attention(const float* q, const u16* k_cache, const u16* v_cache, float* out,
                                     const int* step, int n_heads, int n_kv_heads, int head_dim, float scale) {
    extern __shared__ float scores[];
    __shared__ float red[32];
    __shared__ float partial[ATT_MAX_WARPS][256];
    const int head = blockIdx.x;
    const int len = step[1] + 1;
    const int kv_dim = n_kv_heads * head_dim;
    const int off = (head / (n_heads / n_kv_heads)) * head_dim;
    // Every position but the newest (which rope_append, the kernel before, writes).
    prefetch_kv(k_cache, v_cache, 0, len - 1, kv_dim, off, head_dim);
    pdl_begin();
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
    __shared__ float qs[256];
    __shared__ float sc[ATT_CHUNK];
    __shared__ float red[4];
    __shared__ float partial[4][256];
    const int head = blockIdx.x, split = blockIdx.y;
    const int len = step[1] + 1;
    const int c0 = split * ATT_CHUNK;
    const int c1 = min(c0 + ATT_CHUNK, len);
    const int kv_dim = n_kv_heads * head_dim;
    const int off = (head / (n_heads / n_kv_heads)) * head_dim;
    // This chunk's rows of earlier positions (the newest is rope_append's, the kernel before).
    prefetch_kv(k_cache, v_cache, c0, min(c1, len - 1), kv_dim, off, head_dim);
    pdl_begin();
    if (c0 >= len) return;
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

