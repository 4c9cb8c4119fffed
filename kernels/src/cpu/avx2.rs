//! x86-64 AVX2 + FMA inner loops. Callers guarantee the CPU supports both features and that
//! slice lengths match (q8: blocks of 32 values, one scale per block).

use std::arch::x86_64::*;

use crate::QK;

/// Sum of 8 lanes (shared by the per-ISA loops of the submodules).
#[inline(always)]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY (whole fn): register-only intrinsics; the caller enabled avx2.
    unsafe {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

/// Largest of 8 lanes (NaN lanes are passed over as `maxps` does).
#[inline(always)]
pub(crate) unsafe fn hmax(v: __m256) -> f32 {
    // SAFETY: register-only intrinsics; the caller enabled avx.
    unsafe {
        let h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)))
    }
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    // SAFETY: every load reads 8 floats at an index + 8 <= n.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let o = i + 8 * k;
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum(v);
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let mut i = 0;
    // SAFETY: every load/store touches 8 floats at an index + 8 <= n.
    unsafe {
        let av = _mm256_set1_ps(a);
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        while i + 8 <= n {
            let r = _mm256_fmadd_ps(av, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), r);
            i += 8;
        }
    }
    while i < n {
        y[i] += a * x[i];
        i += 1;
    }
}

/// `y += Σ_k a[k] · w[idx[k] · stride + offset ..][..y.len()]`, four rows per pass over `y`
/// (one load and store of `y` per four rows), prefetching the first 512 bytes of the run
/// `ahead` rows on (the hardware prefetcher follows a longer run once it has started; the
/// whole of a 2.3 KB row, into L2, was slower end to end: TEAL at f32 1.36-1.38x against
/// 1.39-1.42x over 4 alternations).
///
/// # Safety
/// avx2 and fma are enabled; `a.len() >= idx.len()` and every run
/// `idx[k] · stride + offset + y.len()` lies inside `w` (checked by the caller).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy_rows_f32(
    w: &[f32],
    stride: usize,
    offset: usize,
    idx: &[u32],
    a: &[f32],
    y: &mut [f32],
    ahead: usize,
) {
    let n = y.len();
    let run = |k: usize| idx[k] as usize * stride + offset;
    // SAFETY: every run read lies inside `w` and every y access below index n (guaranteed by
    // the caller; the vector loops stop at the last whole 8).
    unsafe {
        let (pw, py) = (w.as_ptr(), y.as_mut_ptr());
        let lines = n.div_ceil(16).min(8);
        // Prefetch addresses may pass the end of `w` (wrapping_add): a prefetch never faults.
        let prefetch = |k: usize| {
            if k < idx.len() {
                let p = pw.add(run(k));
                for l in 0..lines {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(16 * l) as *const i8);
                }
            }
        };
        (0..ahead).for_each(prefetch);
        let mut k = 0;
        while k + 4 <= idx.len() {
            (k + ahead..k + ahead + 4).for_each(prefetch);
            let r = [run(k), run(k + 1), run(k + 2), run(k + 3)].map(|o| pw.add(o));
            let c = [a[k], a[k + 1], a[k + 2], a[k + 3]];
            let v = [_mm256_set1_ps(c[0]), _mm256_set1_ps(c[1]), _mm256_set1_ps(c[2]), _mm256_set1_ps(c[3])];
            let mut i = 0;
            while i + 8 <= n {
                let mut acc = _mm256_loadu_ps(py.add(i));
                for (rj, vj) in r.iter().zip(&v) {
                    acc = _mm256_fmadd_ps(*vj, _mm256_loadu_ps(rj.add(i)), acc);
                }
                _mm256_storeu_ps(py.add(i), acc);
                i += 8;
            }
            while i < n {
                *py.add(i) += c[0] * *r[0].add(i) + c[1] * *r[1].add(i) + c[2] * *r[2].add(i) + c[3] * *r[3].add(i);
                i += 1;
            }
            k += 4;
        }
        while k < idx.len() {
            let (r, c) = (pw.add(run(k)), a[k]);
            let v = _mm256_set1_ps(c);
            let mut i = 0;
            while i + 8 <= n {
                _mm256_storeu_ps(py.add(i), _mm256_fmadd_ps(v, _mm256_loadu_ps(r.add(i)), _mm256_loadu_ps(py.add(i))));
                i += 8;
            }
            while i < n {
                *py.add(i) += c * *r.add(i);
                i += 1;
            }
            k += 1;
        }
    }
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_q8(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32]) -> f32 {
    let nb = ws.len().min(xs.len()).min(wq.len() / QK).min(xq.len() / QK);
    // SAFETY: block b reads bytes [32b, 32b + 32) of each slice, b < nb.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut b = 0;
        while b + 2 <= nb {
            for (k, acc) in [&mut acc0, &mut acc1].into_iter().enumerate() {
                let o = (b + k) * QK;
                let w = _mm256_loadu_si256(wq.as_ptr().add(o) as *const __m256i);
                let x = _mm256_loadu_si256(xq.as_ptr().add(o) as *const __m256i);
                let p = _mm256_cvtepi32_ps(block_i32(_mm256_abs_epi8(w), w, x, ones));
                *acc = _mm256_fmadd_ps(_mm256_set1_ps(ws[b + k] * xs[b + k]), p, *acc);
            }
            b += 2;
        }
        if b < nb {
            let o = b * QK;
            let w = _mm256_loadu_si256(wq.as_ptr().add(o) as *const __m256i);
            let x = _mm256_loadu_si256(xq.as_ptr().add(o) as *const __m256i);
            let p = _mm256_cvtepi32_ps(block_i32(_mm256_abs_epi8(w), w, x, ones));
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(ws[b] * xs[b]), p, acc0);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }
}

/// Sums of four vectors at once: lane `k` of the result is the sum of all lanes of `v[k]`.
#[inline(always)]
pub(crate) unsafe fn hsum4(v: [__m256; 4]) -> __m128 {
    // SAFETY: register-only intrinsics; the caller enabled avx2.
    unsafe {
        let h = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1))
    }
}

#[inline(always)]
unsafe fn to_array(v: __m128) -> [f32; 4] {
    let mut out = [0f32; 4];
    // SAFETY: `out` has room for the four floats of an unaligned store.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// `R` consecutive f32 rows (`w`: `R * cols` values) times one activation row `x` (`cols`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn f32_rows_x1<const R: usize>(w: &[f32], cols: usize, x: &[f32]) -> [f32; R] {
    let mut out = [0f32; R];
    if w.len() < R * cols || x.len() < cols {
        return out;
    }
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    let mut i = 0;
    // SAFETY: every load reads 8 floats at column i with i + 8 <= cols, of a row r < R.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        while i + 8 <= cols {
            let xv = _mm256_loadu_ps(px.add(i));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(pw.add(r * cols + i)), xv, *a);
            }
            i += 8;
        }
        if R == 4 {
            out.copy_from_slice(&to_array(hsum4([acc[0], acc[1], acc[2], acc[3]])));
        } else {
            for (o, a) in out.iter_mut().zip(acc) {
                *o = hsum(a);
            }
        }
    }
    for i in i..cols {
        for (r, o) in out.iter_mut().enumerate() {
            *o += w[r * cols + i] * x[i];
        }
    }
    out
}

/// Four f32 rows anywhere (the output-sparse GEMV's listed rows) times one activation row:
/// each activation load serves the four rows. Over the shortest length.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn f32_dot4(rows: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    let n = rows.iter().map(|r| r.len()).min().unwrap_or(0).min(x.len());
    let p = rows.map(|r| r.as_ptr());
    let px = x.as_ptr();
    let mut i = 0;
    let mut out = [0f32; 4];
    // SAFETY: every load reads 8 floats at index i with i + 8 <= n, inside each row and x.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        while i + 8 <= n {
            let xv = _mm256_loadu_ps(px.add(i));
            for (a, pr) in acc.iter_mut().zip(&p) {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(pr.add(i)), xv, *a);
            }
            i += 8;
        }
        out.copy_from_slice(&to_array(hsum4(acc)));
    }
    for i in i..n {
        for (o, r) in out.iter_mut().zip(&rows) {
            *o += r[i] * x[i];
        }
    }
    out
}

/// `R` consecutive f32 rows times four activation rows: `out[r][t] = w[r] · x[t]`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn f32_rows_x4<const R: usize>(w: &[f32], cols: usize, x: [&[f32]; 4]) -> [[f32; 4]; R] {
    let mut out = [[0f32; 4]; R];
    if w.len() < R * cols || x.iter().any(|xt| xt.len() < cols) {
        return out;
    }
    let pw = w.as_ptr();
    let px = x.map(|xt| xt.as_ptr());
    let mut i = 0;
    // SAFETY: every load reads 8 floats at column i with i + 8 <= cols, of a row r < R or
    // of one of the four activation rows.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        while i + 8 <= cols {
            let xv = px.map(|p| _mm256_loadu_ps(p.add(i)));
            for (r, a) in acc.iter_mut().enumerate() {
                let wv = _mm256_loadu_ps(pw.add(r * cols + i));
                for t in 0..4 {
                    a[t] = _mm256_fmadd_ps(wv, xv[t], a[t]);
                }
            }
            i += 8;
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = to_array(hsum4(a));
        }
    }
    for i in i..cols {
        for (r, o) in out.iter_mut().enumerate() {
            for t in 0..4 {
                o[t] += w[r * cols + i] * x[t][i];
            }
        }
    }
    out
}

/// Signed int8 products of one 32-value block summed in pairs: 8 lanes of i32.
/// `w_abs` is `|w|` (as unsigned bytes, so -128 reads 128); `x` is in [-127, 127].
#[inline(always)]
unsafe fn block_i32(w_abs: __m256i, w: __m256i, x: __m256i, ones: __m256i) -> __m256i {
    // SAFETY: register-only intrinsics; the caller enabled avx2. maddubs: |w| <= 128 times
    // x with w's sign moved onto it (|x| <= 127, so the sign move cannot wrap); each i16 lane
    // is at most 2 * 128 * 127 = 32512 and cannot saturate.
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(x, w)), ones) }
}

/// `R` consecutive int8 rows (`wq`: `R * nb * 32` values, `ws`: `R * nb` scales) times one
/// quantized activation row (`xq`: `nb * 32` values, `xs`: `nb` scales).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q8_rows_x1<const R: usize>(wq: &[i8], ws: &[f32], nb: usize, xq: &[i8], xs: &[f32]) -> [f32; R] {
    let mut out = [0f32; R];
    if wq.len() < R * nb * QK || ws.len() < R * nb || xq.len() < nb * QK || xs.len() < nb {
        return out;
    }
    let (pw, px, pws, pxs) = (wq.as_ptr(), xq.as_ptr(), ws.as_ptr(), xs.as_ptr());
    // SAFETY: block b < nb of row r < R reads values [(r * nb + b) * 32, +32) and scale
    // r * nb + b, all inside the slices checked above; likewise for the activations.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        // Rows one after the other, so the weights stream through memory in order; two
        // accumulators per row hide the FMA latency.
        let mut acc = [_mm256_setzero_ps(); R];
        for (r, a) in acc.iter_mut().enumerate() {
            let (pw, pws) = (pw.add(r * nb * QK), pws.add(r * nb));
            let mut a1 = _mm256_setzero_ps();
            let mut b = 0;
            while b + 2 <= nb {
                for (k, a) in [&mut *a, &mut a1].into_iter().enumerate() {
                    let w = _mm256_loadu_si256(pw.add((b + k) * QK) as *const __m256i);
                    let x = _mm256_loadu_si256(px.add((b + k) * QK) as *const __m256i);
                    let p = block_i32(_mm256_abs_epi8(w), w, x, ones);
                    let d = _mm256_mul_ps(_mm256_broadcast_ss(&*pws.add(b + k)), _mm256_broadcast_ss(&*pxs.add(b + k)));
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, *a);
                }
                b += 2;
            }
            if b < nb {
                let w = _mm256_loadu_si256(pw.add(b * QK) as *const __m256i);
                let x = _mm256_loadu_si256(px.add(b * QK) as *const __m256i);
                let p = block_i32(_mm256_abs_epi8(w), w, x, ones);
                let d = _mm256_mul_ps(_mm256_broadcast_ss(&*pws.add(b)), _mm256_broadcast_ss(&*pxs.add(b)));
                a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, a1);
            }
            *a = _mm256_add_ps(*a, a1);
        }
        if R == 4 {
            out.copy_from_slice(&to_array(hsum4([acc[0], acc[1], acc[2], acc[3]])));
        } else {
            for (o, a) in out.iter_mut().zip(acc) {
                *o = hsum(a);
            }
        }
    }
    out
}

/// int8 to i16 (sign-extended), over the common length.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn widen_i16(src: &[i8], dst: &mut [i16]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    // SAFETY: each step reads 16 bytes and writes 16 i16 at an index + 16 <= n.
    unsafe {
        while i + 16 <= n {
            let v = _mm256_cvtepi8_epi16(_mm_loadu_si128(src.as_ptr().add(i) as *const __m128i));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, v);
            i += 16;
        }
    }
    for i in i..n {
        dst[i] = src[i] as i16;
    }
}

/// A weight element type the GEMM microkernel reads four at a time.
pub trait Quad: Copy {
    /// The four values at `p`, as i16, broadcast to all four 64-bit lanes.
    ///
    /// # Safety
    /// `p` must be valid for reading four values; the caller must have enabled avx2.
    unsafe fn quad(p: *const Self) -> __m256i;
}

impl Quad for i16 {
    #[inline(always)]
    unsafe fn quad(p: *const i16) -> __m256i {
        // SAFETY: four i16 (8 bytes) readable at p, per the contract.
        unsafe { _mm256_set1_epi64x((p as *const i64).read_unaligned()) }
    }
}

impl Quad for i8 {
    #[inline(always)]
    unsafe fn quad(p: *const i8) -> __m256i {
        // SAFETY: four bytes readable at p, per the contract.
        unsafe { _mm256_cvtepi8_epi16(_mm_set1_epi32((p as *const i32).read_unaligned())) }
    }
}

/// GEMM microkernel (see [`super::GemmTile`] for the operands): adds row r · token `4g + t`
/// to `res[(4g + t) * res_stride + r]` (token-major, so each token's results for consecutive
/// rows are contiguous).
///
/// Each activation vector holds four values of each of the four tokens of a group, and the
/// row's four matching weights are broadcast to all quarters, so one `vpmaddwd` does 16 MACs
/// whose i32 lanes each belong to one token: a block sums in integers and costs one
/// conversion and one FMA per group, with no horizontal sums and no sign tricks (which
/// compete for Zen 3's two vector-multiply pipes). One weight quad feeds `T` multiplies.
/// Weights widened to i16 beforehand are the fastest operand; int8 weights are widened
/// here, one extra shuffle per quad.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q8_gemm<W: Quad, const T: usize>(tile: &super::GemmTile<'_, W, T>, res: &mut [f32], res_stride: usize) {
    let super::GemmTile { w, w_stride, ws, ws_stride, rows, nb, x16, xs8 } = *tile;
    if rows == 0 {
        return;
    }
    let wlen = (rows - 1) * w_stride + nb * QK;
    let slen = (rows - 1) * ws_stride + nb;
    let rlen = (4 * T - 1) * res_stride + rows;
    if w.len() < wlen
        || ws.len() < slen
        || res.len() < rlen
        || res_stride < rows
        || x16.iter().any(|x| x.len() < nb * 4 * QK)
        || xs8.iter().any(|s| s.len() < nb * 8)
    {
        return;
    }
    let px = x16.map(|x| x.as_ptr());
    let pxs = xs8.map(|s| s.as_ptr());
    for r in 0..rows {
        // SAFETY: row r < rows reads w[r * w_stride + b * 32 + 4q .. +4] and
        // ws[r * ws_stride + b] for b < nb, q < 8; group g reads x16[g][b * 128 + 16q .. +16]
        // and xs8[g][8b .. +8]; the results go to res[(4g + t) * res_stride + r], t < 4: all
        // inside the lengths checked above.
        unsafe {
            let pw = w.as_ptr().add(r * w_stride);
            let pws = ws.as_ptr().add(r * ws_stride);
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                let mut sums = [_mm256_setzero_si256(); T];
                for q in 0..8 {
                    let wq = W::quad(pw.add(b * QK + 4 * q));
                    for (s, p) in sums.iter_mut().zip(px) {
                        let x = _mm256_loadu_si256(p.add(b * 4 * QK + 16 * q) as *const __m256i);
                        *s = _mm256_add_epi32(*s, _mm256_madd_epi16(wq, x));
                    }
                }
                let sw = _mm256_broadcast_ss(&*pws.add(b));
                for ((a, s), p) in acc.iter_mut().zip(sums).zip(pxs) {
                    let d = _mm256_mul_ps(sw, _mm256_loadu_ps(p.add(8 * b)));
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, *a);
                }
            }
            for (g, a) in acc.into_iter().enumerate() {
                // Lanes (2t, 2t + 1) belong to token t: [t0 t1 t0 t1 | t2 t3 t2 t3] after hadd.
                let h = _mm256_hadd_ps(a, a);
                let v = _mm_shuffle_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1), 0b01_00_01_00);
                for (t, v) in to_array(v).into_iter().enumerate() {
                    *res.as_mut_ptr().add((4 * g + t) * res_stride + r) += v;
                }
            }
        }
    }
}
