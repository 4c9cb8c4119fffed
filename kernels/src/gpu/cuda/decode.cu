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

// The step's new position, folded into the attention kernels (one launch fewer per layer):
// GGML "normal" RoPE on adjacent pairs for position step[1], applied to the block's query head
// and to its KV head's key; the key and value, rounded to fp16 as the cache holds them, go to
// shared memory, and the group's first query head (in the split version: its block that covers
// the position) also stores them in the cache row. No kernel of this step reads that row: the
// block's own copy stands in for it.

// The rotation of each pair (cosine, sine) for position `pos`, in double precision like the
// CPU path; called before the wait (it depends only on the position), one pair per thread.
__device__ __forceinline__ void rope_angles(int pos, int rot_pairs, float theta, float* cs, float* sn) {
    for (int i = threadIdx.x; i < rot_pairs; i += blockDim.x) {
        const double angle = (double)pos * pow((double)theta, -2.0 * i / (2.0 * rot_pairs));
        double s, c;
        sincos(angle, &s, &c);
        cs[i] = (float)c;
        sn[i] = (float)s;
    }
}

// qs = the rotated query of `head`; ks, vs = fp16 bits of its KV head's rotated key and value
// (stored at cache row `pos` too when `store`). Ends with a barrier.
__device__ __forceinline__ void rope_new_position(const float* q, const float* k, const float* v, u16* k_cache,
                                                  u16* v_cache, int pos, int head, int off, int head_dim,
                                                  int kv_dim, int rot_pairs, const float* cs, const float* sn,
                                                  float* qs, u16* ks, u16* vs, bool store) {
    for (int i = threadIdx.x; i < head_dim / 2; i += blockDim.x) {
        float qa = q[head * head_dim + 2 * i], qb = q[head * head_dim + 2 * i + 1];
        float ka = k[off + 2 * i], kb = k[off + 2 * i + 1];
        if (i < rot_pairs) {
            const float cf = cs[i], sf = sn[i];
            const float rqa = qa * cf - qb * sf, rqb = qa * sf + qb * cf;
            const float rka = ka * cf - kb * sf, rkb = ka * sf + kb * cf;
            qa = rqa;
            qb = rqb;
            ka = rka;
            kb = rkb;
        }
        qs[2 * i] = qa;
        qs[2 * i + 1] = qb;
        const u16 k0 = f32_to_f16(ka), k1 = f32_to_f16(kb);
        const u16 v0 = f32_to_f16(v[off + 2 * i]), v1 = f32_to_f16(v[off + 2 * i + 1]);
        ks[2 * i] = k0;
        ks[2 * i + 1] = k1;
        vs[2 * i] = v0;
        vs[2 * i + 1] = v1;
        if (store) {
            const size_t row = (size_t)pos * kv_dim + off + 2 * i;
            k_cache[row] = k0;
            k_cache[row + 1] = k1;
            v_cache[row] = v0;
            v_cache[row + 1] = v1;
        }
    }
    __syncthreads();
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

extern "C" __global__ void attention(const float* q, const float* k, const float* v, u16* k_cache, u16* v_cache,
                                     float* out, const int* step, int n_heads, int n_kv_heads, int head_dim,
                                     int rot_pairs, float theta, float scale) {
    extern __shared__ float scores[];
    __shared__ float red[32];
    __shared__ float partial[ATT_MAX_WARPS][256];
    __shared__ float qs[256], cs[128], sn[128];
    __shared__ __align__(16) u16 ks[256];
    __shared__ __align__(16) u16 vs[256];
    const int head = blockIdx.x;
    const int pos = step[1], len = pos + 1;
    const int group = n_heads / n_kv_heads;
    const int kv_dim = n_kv_heads * head_dim;
    const int off = (head / group) * head_dim;
    // Before the wait: the rotation, and every earlier position's key and value rows.
    rope_angles(pos, rot_pairs, theta, cs, sn);
    prefetch_kv(k_cache, v_cache, 0, pos, kv_dim, off, head_dim);
    pdl_begin();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int per_lane = head_dim / 32;  // head_dim is a multiple of 32 here
    __syncthreads();  // the angles
    rope_new_position(q, k, v, k_cache, v_cache, pos, head, off, head_dim, kv_dim, rot_pairs, cs, sn, qs, ks, vs,
                      head % group == 0);

    // Scores, one position per lane: each lane reads its key row 16 bytes at a time (q from
    // shared memory), so a warp has 32 rows in flight; the newest row is the block's own copy.
    for (int base = warp * 32; base < len; base += warps * 32) {
        const int p = base + lane;
        if (p < len) {
            const u16* kr = p == pos ? ks : k_cache + (size_t)p * kv_dim + off;
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
        const u16* vr = p == pos ? vs : v_cache + (size_t)p * kv_dim + off;
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
    attention_part(const float* q, const float* k, const float* v, u16* k_cache, u16* v_cache, float* part,
                   const int* step, int n_heads, int n_kv_heads, int head_dim, int rot_pairs, float theta,
                   float scale, int max_splits) {
    __shared__ float qs[256], cs[128], sn[128];
    __shared__ __align__(16) u16 ks[256];
    __shared__ __align__(16) u16 vs[256];
    __shared__ float sc[ATT_CHUNK];
    __shared__ float red[4];
    __shared__ float partial[4][256];
    const int head = blockIdx.x, split = blockIdx.y;
    const int pos = step[1], len = pos + 1;
    const int c0 = split * ATT_CHUNK;
    const int c1 = min(c0 + ATT_CHUNK, len);
    const int group = n_heads / n_kv_heads;
    const int kv_dim = n_kv_heads * head_dim;
    const int off = (head / group) * head_dim;
    // Before the wait: the rotation, and this chunk's rows of earlier positions.
    if (c0 < len) rope_angles(pos, rot_pairs, theta, cs, sn);
    prefetch_kv(k_cache, v_cache, c0, min(c1, pos), kv_dim, off, head_dim);
    pdl_begin();
    if (c0 >= len) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // the angles
    rope_new_position(q, k, v, k_cache, v_cache, pos, head, off, head_dim, kv_dim, rot_pairs, cs, sn, qs, ks, vs,
                      head % group == 0 && pos < c1);
    const int p = c0 + threadIdx.x;
    float s = __int_as_float(0xff800000);
    if (p < c1) {
        const u16* kr = p == pos ? ks : k_cache + (size_t)p * kv_dim + off;
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
        const u16* vr = pp == pos ? vs : v_cache + (size_t)pp * kv_dim + off;
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

