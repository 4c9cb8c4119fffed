//! x86-64 AVX-512 VNNI output-sparse GEMV over Q4_1 rows in step order (see
//! `crate::q4_rows`) against activations reordered the same way.
//!
//! A group of 16 blocks is four 64-byte chunks of codes, then the blocks' f16 scales and
//! minima; chunk j's low nibbles are step 2j and its high nibbles step 2j + 1, lane l of
//! every step belonging to block l. The high nibbles are multiplied in place (`c & 0xf0`,
//! sixteen times the code), so each chunk costs two `and`s and two `vpdpbusd`;
//! `16 * lows + highs` is sixteen times each block's sum, and the activations' block scales
//! carry the 1/16. After the four chunks lane l holds block l's sum, scaled by one FMA with
//! the 16 block scales in their natural order.
//!
//! A row's last blocks (fewer than 16, the tail) are one masked group; four rows whose tails
//! fit in 16 lanes share one group, each row's tail in its own lanes.

use std::arch::x86_64::*;

use super::{GROUP_ACT_BYTES, GROUP_BYTES, StepActs, StepMatrix};

/// Listed rows ahead of the ones being computed whose first bytes are prefetched (the rows
/// are scattered; the hardware prefetcher follows a row once it is being read).
const ROWS_AHEAD: usize = 8;

/// Bytes of each row prefetched.
const PREFETCH_BYTES: usize = 640;

/// `16 * Σ codes * x` of each of the 16 blocks whose chunks are `c` (activations at `a`,
/// 512 bytes: step k at `a + 64 k`).
#[inline(always)]
unsafe fn block_sums(c: [__m512i; 4], a: *const i8) -> __m512i {
    // SAFETY: the caller guarantees `a` points at 512 readable bytes.
    unsafe {
        let lo = _mm512_set1_epi8(0x0f);
        let hi = _mm512_set1_epi8(0xf0u8 as i8);
        let (mut s_lo, mut s_hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for (j, &cj) in c.iter().enumerate() {
            let even = _mm512_loadu_si512(a.add(128 * j) as *const __m512i);
            let odd = _mm512_loadu_si512(a.add(128 * j + 64) as *const __m512i);
            s_lo = _mm512_dpbusd_epi32(s_lo, _mm512_and_si512(cj, lo), even);
            s_hi = _mm512_dpbusd_epi32(s_hi, _mm512_and_si512(cj, hi), odd);
        }
        _mm512_add_epi32(_mm512_slli_epi32::<4>(s_lo), s_hi)
    }
}

/// `acc + (16 Σ) * d * dx/16 + m * sum` per lane, with activation slot `slot`'s scales.
#[inline(always)]
unsafe fn scale(sums: __m512i, d: __m256i, m: __m256i, x: &StepActs<'_>, slot: usize, acc: __m512) -> __m512 {
    // SAFETY: slot < groups + 2, whose 16 scales and sums lie inside `x` (see `gemv_rows`).
    unsafe {
        let xd = _mm512_loadu_ps(x.d.as_ptr().add(16 * slot));
        let xsum = _mm512_loadu_ps(x.sum.as_ptr().add(16 * slot));
        let acc = _mm512_fmadd_ps(_mm512_cvtph_ps(m), xsum, acc);
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(_mm512_cvtph_ps(d), xd), acc)
    }
}

/// Full group `g` of the row at `row` added into `acc`.
#[inline(always)]
unsafe fn full_group(row: *const u8, x: &StepActs<'_>, g: usize, acc: __m512) -> __m512 {
    // SAFETY: g < groups: the group's 320 bytes lie inside the row and its activations
    // inside `x` (see `gemv_rows`).
    unsafe {
        let at = row.add(GROUP_BYTES * g);
        // Plain loads, not an array `map`: a closure would not inherit the target features.
        let c = [
            _mm512_loadu_si512(at as *const __m512i),
            _mm512_loadu_si512(at.add(64) as *const __m512i),
            _mm512_loadu_si512(at.add(128) as *const __m512i),
            _mm512_loadu_si512(at.add(192) as *const __m512i),
        ];
        let sums = block_sums(c, x.q.as_ptr().add(GROUP_ACT_BYTES * g));
        let d = _mm256_loadu_si256(at.add(256) as *const __m256i);
        let m = _mm256_loadu_si256(at.add(288) as *const __m256i);
        scale(sums, d, m, x, g, acc)
    }
}

/// The tail of the row at `row` alone (its `t` blocks in lanes 0..t) added into `acc`.
#[inline(always)]
unsafe fn lone_tail(row: *const u8, x: &StepActs<'_>, groups: usize, t: usize, acc: __m512) -> __m512 {
    // SAFETY: masked loads read only the tail's 4t bytes per chunk and its 2t + 2t bytes of
    // scales and minima, inside the row; activation slot `groups` is the lone tail's.
    unsafe {
        let at = row.add(GROUP_BYTES * groups);
        let bytes: __mmask64 = (1u64 << (4 * t)) - 1;
        let mut c = [_mm512_setzero_si512(); 4];
        for (j, cj) in c.iter_mut().enumerate() {
            *cj = _mm512_maskz_loadu_epi8(bytes, at.add(4 * t * j) as *const i8);
        }
        let sums = block_sums(c, x.q.as_ptr().add(GROUP_ACT_BYTES * groups));
        let lanes: __mmask16 = ((1u32 << t) - 1) as __mmask16;
        let d = _mm256_maskz_loadu_epi16(lanes, at.add(16 * t) as *const i16);
        let m = _mm256_maskz_loadu_epi16(lanes, at.add(18 * t) as *const i16);
        scale(sums, d, m, x, groups, acc)
    }
}

/// The tails of four rows (4t <= 16: row r in lanes rt..rt + t), scaled, as one vector.
#[inline(always)]
unsafe fn shared_tail(rows: [*const u8; 4], x: &StepActs<'_>, groups: usize, t: usize) -> __m512 {
    // SAFETY: each masked load reads only lanes [n r, n r + n) of a pointer moved back by
    // n r elements, that is the row's own tail bytes (codes, scales or minima); masked-off
    // lanes are neither read nor faulted on, and `wrapping_sub` keeps the moved-back
    // pointer itself well defined. Activation slot `groups + 1` holds the four-row tail.
    unsafe {
        let n = 4 * t;
        let mut c = [_mm512_setzero_si512(); 4];
        let mut d = _mm256_setzero_si256();
        let mut m = _mm256_setzero_si256();
        for (r, &row) in rows.iter().enumerate() {
            let at = row.add(GROUP_BYTES * groups);
            let bytes: __mmask64 = ((1u64 << n) - 1) << (n * r);
            for (j, cj) in c.iter_mut().enumerate() {
                *cj = _mm512_mask_loadu_epi8(*cj, bytes, at.add(n * j).wrapping_sub(n * r) as *const i8);
            }
            let lanes: __mmask16 = (((1u32 << t) - 1) << (t * r)) as __mmask16;
            d = _mm256_mask_loadu_epi16(d, lanes, at.add(16 * t).wrapping_sub(2 * t * r) as *const i16);
            m = _mm256_mask_loadu_epi16(m, lanes, at.add(18 * t).wrapping_sub(2 * t * r) as *const i16);
        }
        let sums = block_sums(c, x.q.as_ptr().add(GROUP_ACT_BYTES * (groups + 1)));
        scale(sums, d, m, x, groups + 1, _mm512_setzero_ps())
    }
}

/// The lane sums of four vectors.
#[inline(always)]
unsafe fn hsum4(v: [__m512; 4]) -> __m128 {
    // SAFETY: register-only intrinsics; the caller enabled avx512f and avx.
    unsafe {
        let mut half = [_mm256_setzero_ps(); 4];
        for (h, &a) in half.iter_mut().zip(&v) {
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
            *h = _mm256_add_ps(_mm512_castps512_ps256(a), hi);
        }
        // [a01 a23 b01 b23 | a45 a67 b45 b67], then [a b c d | a b c d] partial sums.
        let ab = _mm256_hadd_ps(half[0], half[1]);
        let cd = _mm256_hadd_ps(half[2], half[3]);
        let abcd = _mm256_hadd_ps(ab, cd);
        _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps::<1>(abcd))
    }
}

/// Four rows · activations, their tails sharing one group where they fit.
#[inline(always)]
unsafe fn dot4(rows: [*const u8; 4], x: &StepActs<'_>, groups: usize, t: usize) -> __m128 {
    // SAFETY: as in `gemv_rows`, for each row.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); 4];
        for g in 0..groups {
            for (a, &row) in acc.iter_mut().zip(&rows) {
                *a = full_group(row, x, g, *a);
            }
        }
        if t > 0 {
            if 4 * t <= 16 {
                let tails = shared_tail(rows, x, groups, t);
                for (r, a) in acc.iter_mut().enumerate() {
                    let lanes: __mmask16 = (((1u32 << t) - 1) << (t * r)) as __mmask16;
                    *a = _mm512_mask_add_ps(*a, lanes, *a, tails);
                }
            } else {
                for (a, &row) in acc.iter_mut().zip(&rows) {
                    *a = lone_tail(row, x, groups, t, *a);
                }
            }
        }
        hsum4(acc)
    }
}

/// Starts fetching the first bytes of the row at `row`.
#[inline(always)]
unsafe fn prefetch_row(row: *const u8, len: usize) {
    // SAFETY: prefetches never fault; the addresses lie inside the row.
    unsafe {
        for off in (0..len.min(PREFETCH_BYTES)).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(row.add(off) as *const i8);
        }
    }
}

/// `out[k] = W[rows[k]] · x`, four listed rows at a time, rows ahead prefetched.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni and f16c; `super::fits(w,
/// x, rows)` holds and `out.len() == rows.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemv_rows(w: &StepMatrix<'_>, x: &StepActs<'_>, rows: &[u32], out: &mut [f32]) {
    let (groups, t) = (w.groups, w.tail);
    let used = GROUP_BYTES * groups + 20 * t;
    let base = w.bytes.as_ptr();
    // SAFETY: every listed row is < w.rows, so its `stride >= used` bytes lie inside
    // `w.bytes`; the activations cover groups + 2 slots (`fits`); out[k] exists for every k.
    unsafe {
        let at = |k: usize| base.add(rows[k] as usize * w.stride);
        for k in 0..rows.len().min(ROWS_AHEAD) {
            prefetch_row(at(k), used);
        }
        let whole = rows.len() / 4 * 4;
        for k in (0..whole).step_by(4) {
            for ahead in k + ROWS_AHEAD..(k + ROWS_AHEAD + 4).min(rows.len()) {
                prefetch_row(at(ahead), used);
            }
            let sums = dot4([at(k), at(k + 1), at(k + 2), at(k + 3)], x, groups, t);
            _mm_storeu_ps(out.as_mut_ptr().add(k), sums);
        }
        for (k, o) in out.iter_mut().enumerate().skip(whole) {
            let mut acc = _mm512_setzero_ps();
            for g in 0..groups {
                acc = full_group(at(k), x, g, acc);
            }
            if t > 0 {
                acc = lone_tail(at(k), x, groups, t, acc);
            }
            *o = _mm512_reduce_add_ps(acc);
        }
    }
}
