//! Per-ISA inner loops (one file per instruction set) and the dispatch between them.
//!
//! Every function here takes slices whose lengths the caller has already checked; the
//! dispatchers only pick the implementation.

pub mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
pub mod q4;
pub mod q4_rows;
pub mod quant;
mod scalar;
pub mod silu;
pub mod sparse;
pub mod sparse_q4;

use crate::QK;
use crate::isa::{Isa, active};

/// Asks the cache to fetch the lines of `data` (a hint: no effect on results, never faults).
#[inline(always)]
pub fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(data);
        let base = data.as_ptr() as *const i8;
        for off in (0..bytes).step_by(64) {
            // SAFETY: `_mm_prefetch` needs only SSE (baseline on x86-64) and never faults;
            // the address lies inside `data`.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(base.add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// Dot product of two f32 slices (over the shorter length, should they differ).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2 and fma.
        Isa::Avx2 => unsafe { avx2::dot_f32(a, b) },
        _ => scalar::dot_f32(a, b),
    }
}

/// Four f32 rows times one activation row (over the shortest length).
#[inline]
pub fn dot4_f32(rows: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2 and fma.
        Isa::Avx2 => unsafe { avx2::f32_dot4(rows, x) },
        _ => rows.map(|r| scalar::dot_f32(r, x)),
    }
}

/// `y += a * x` (over the shorter length, should they differ).
#[inline]
pub fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2 and fma.
        Isa::Avx2 => unsafe { avx2::axpy_f32(a, x, y) },
        _ => scalar::axpy_f32(a, x, y),
    }
}

/// `y += Σ_k a[k] · w[idx[k] · stride + offset ..][..y.len()]`: the input-sparse f32 GEMV's
/// task, over the runs of its active rows (prefetched `ahead` rows on). Panics, as slicing
/// would, when a run leaves `w` or `a` is shorter than `idx`.
pub fn axpy_rows_f32(w: &[f32], stride: usize, offset: usize, idx: &[u32], a: &[f32], y: &mut [f32], ahead: usize) {
    let last = idx.iter().map(|&i| i as usize * stride + offset + y.len()).max().unwrap_or(0);
    assert!(last <= w.len() && a.len() >= idx.len(), "axpy_rows_f32: a run ends at {last} of {}", w.len());
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2 and fma; every run lies
        // inside `w` and `a` covers `idx` (asserted above).
        Isa::Avx2 => unsafe { avx2::axpy_rows_f32(w, stride, offset, idx, a, y, ahead) },
        _ => scalar::axpy_rows_f32(w, stride, offset, idx, a, y),
    }
}

/// Dot product of an int8 weight row and an int8 activation row, both in blocks of 32 with
/// one f32 scale per block. (The dense products use the multi-row kernels below; this one is
/// kept for row-selective callers and as the tested reference of the block arithmetic.)
#[inline]
#[allow(dead_code)]
pub fn dot_q8(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32]) -> f32 {
    debug_assert_eq!(wq.len(), xq.len());
    debug_assert_eq!(ws.len(), xs.len());
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2 and fma; lengths are
        // checked by the caller (blocks * 32 values, one scale per block).
        Isa::Avx2 => unsafe { avx2::dot_q8(wq, ws, xq, xs) },
        _ => scalar::dot_q8(wq, ws, xq, xs),
    }
}

/// `R` consecutive f32 rows (`w`: `R * cols` values, row-major) times one activation row.
#[inline]
pub fn f32_rows_x1<const R: usize>(w: &[f32], cols: usize, x: &[f32]) -> [f32; R] {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2 and fma; the kernel
        // checks the slice lengths itself.
        Isa::Avx2 => unsafe { avx2::f32_rows_x1::<R>(w, cols, x) },
        _ => scalar::f32_rows_x1::<R>(w, cols, x),
    }
}

/// `R` consecutive f32 rows times four activation rows: `out[r][t] = w[r] · x[t]`.
#[inline]
pub fn f32_rows_x4<const R: usize>(w: &[f32], cols: usize, x: [&[f32]; 4]) -> [[f32; 4]; R] {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `f32_rows_x1`.
        Isa::Avx2 => unsafe { avx2::f32_rows_x4::<R>(w, cols, x) },
        _ => scalar::f32_rows_x4::<R>(w, cols, x),
    }
}

/// `R` consecutive int8 rows of `nb` blocks (`wq`: `R * nb * 32` values, `ws`: `R * nb`
/// scales) times one quantized activation row (`nb * 32` values, `nb` scales).
#[inline]
pub fn q8_rows_x1<const R: usize>(wq: &[i8], ws: &[f32], nb: usize, xq: &[i8], xs: &[f32]) -> [f32; R] {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `f32_rows_x1`.
        Isa::Avx2 => unsafe { avx2::q8_rows_x1::<R>(wq, ws, nb, xq, xs) },
        _ => scalar::q8_rows_x1::<R>(wq, ws, nb, xq, xs),
    }
}

/// Packs four quantized activation rows of `nb` blocks for [`q8_gemm`], widened to
/// i16: per block, eight 16-value vectors (vector q holds values `4q..4q + 4` of tokens 0, 1,
/// 2, 3 in turn) in `x16` (`nb * 128`), and the block's scales as
/// `[s0 s0 s1 s1 s2 s2 s3 s3]` in `xs8` (`nb * 8`).
pub fn pack_acts_i16(xq: [&[i8]; 4], xs: [&[f32]; 4], nb: usize, x16: &mut [i16], xs8: &mut [f32]) {
    for (b, (pb, sb)) in x16.chunks_exact_mut(4 * QK).zip(xs8.chunks_exact_mut(8)).take(nb).enumerate() {
        for (t, (q, s)) in xq.iter().zip(xs).enumerate() {
            if let (Some(src), Some(&scale)) = (q.get(b * QK..(b + 1) * QK), s.get(b)) {
                for (quad, part) in src.chunks_exact(4).enumerate() {
                    for (d, &v) in pb[quad * 16 + t * 4..quad * 16 + t * 4 + 4].iter_mut().zip(part) {
                        *d = v as i16;
                    }
                }
                sb[2 * t] = scale;
                sb[2 * t + 1] = scale;
            }
        }
    }
}

/// Widens int8 weights to i16 (the GEMM microkernel's operand), over the common length.
pub fn widen_i16(src: &[i8], dst: &mut [i16]) {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2 and fma; the kernel
        // works within both slices.
        Isa::Avx2 => unsafe { avx2::widen_i16(src, dst) },
        _ => scalar::widen_i16(src, dst),
    }
}

/// Operands of one GEMM microkernel call: `rows` weight rows of `nb` blocks (row r's values
/// at `w[r * w_stride..][..nb * 32]`, its block scales at `ws[r * ws_stride..][..nb]`) and
/// `T` groups of four tokens packed by [`pack_acts_i16`] (`x16[g]`: `nb * 128` values,
/// `xs8[g]`: `nb * 8` scales).
#[derive(Clone, Copy)]
pub struct GemmTile<'a, W, const T: usize> {
    pub w: &'a [W],
    pub w_stride: usize,
    pub ws: &'a [f32],
    pub ws_stride: usize,
    pub rows: usize,
    pub nb: usize,
    pub x16: [&'a [i16]; T],
    pub xs8: [&'a [f32]; T],
}

/// Weight element types of the GEMM microkernel: i16 (widened beforehand, fastest) or the
/// int8 originals.
#[cfg(target_arch = "x86_64")]
pub trait GemmWeight: avx2::Quad + Into<i32> {}
/// Weight element types of the GEMM microkernel.
#[cfg(not(target_arch = "x86_64"))]
pub trait GemmWeight: Copy + Into<i32> {}
impl GemmWeight for i8 {}
impl GemmWeight for i16 {}

/// GEMM microkernel: adds row r · token `4g + t` of `tile` to
/// `res[(4g + t) * res_stride + r]` (`res_stride >= tile.rows`).
#[inline]
pub fn q8_gemm<W: GemmWeight, const T: usize>(tile: &GemmTile<'_, W, T>, res: &mut [f32], res_stride: usize) {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `f32_rows_x1`.
        Isa::Avx2 => unsafe { avx2::q8_gemm::<W, T>(tile, res, res_stride) },
        _ => scalar::q8_gemm::<W, T>(tile, res, res_stride),
    }
}

#[cfg(test)]
mod tests {
    //! Each SIMD kernel against its scalar counterpart on the same inputs, and the scalar
    //! kernels against plain loops. The AVX2 half runs only where the CPU has avx2 + fma.

    use super::scalar;
    use crate::QK;
    use proptest::prelude::*;

    fn floats(len: usize, seed: u64) -> Vec<f32> {
        crate::testdata::values(len, seed).into_iter().map(|v| v * 3.0).collect()
    }

    /// int8 values over the whole range (weights may hold -128) or [-127, 127] (activations).
    fn ints(len: usize, seed: u64, full: bool) -> Vec<i8> {
        floats(len, seed)
            .iter()
            .map(|v| if full { (v * 42.7) as i32 as i8 } else { (v * 42.4).clamp(-127.0, 127.0) as i8 })
            .collect()
    }

    fn naive_q8(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32]) -> f64 {
        naive_q8_mag(wq, ws, xq, xs).0
    }

    /// The product and the sum of the magnitudes of its terms.
    fn naive_q8_mag(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32]) -> (f64, f64) {
        let (mut s, mut m) = (0f64, 0f64);
        for (i, (&w, &x)) in wq.iter().zip(xq).enumerate() {
            let p = w as f64 * ws[i / QK] as f64 * x as f64 * xs[i / QK] as f64;
            s += p;
            m += p.abs();
        }
        (s, m)
    }

    fn close(a: f32, b: f64, mag: f64) -> bool {
        (a as f64 - b).abs() <= 1e-5 * mag + 1e-6
    }

    #[cfg(target_arch = "x86_64")]
    fn have_avx2() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// Runs a GEMM microkernel the way the product does: `rows` weight rows (row-major,
    /// `nb` blocks, scales at stride `ws_stride`), read as int8 (`wide == false`) or widened
    /// to i16 with padded rows; `4T` tokens packed in groups of four. Returns the token-major
    /// result buffer (stride `rows + 3`), which starts at 1.0 since kernels add to it.
    #[allow(clippy::too_many_arguments)]
    fn run_gemm<const T: usize>(
        avx2: bool,
        wide: bool,
        wq: &[i8],
        ws: &[f32],
        ws_stride: usize,
        rows: usize,
        nb: usize,
        xq: &[Vec<i8>],
        xs: &[Vec<f32>],
    ) -> Vec<f32> {
        let w_stride = nb * QK + if wide { 8 } else { 0 };
        let mut w8 = vec![0i8; rows * w_stride];
        let mut w16 = vec![0i16; rows * w_stride];
        for r in 0..rows {
            w8[r * w_stride..r * w_stride + nb * QK].copy_from_slice(&wq[r * nb * QK..(r + 1) * nb * QK]);
            super::widen_i16(&wq[r * nb * QK..(r + 1) * nb * QK], &mut w16[r * w_stride..]);
        }
        let mut x16 = vec![vec![0i16; nb * 4 * QK]; T];
        let mut xs8 = vec![vec![0f32; nb * 8]; T];
        for g in 0..T {
            let q = [0, 1, 2, 3].map(|k| &xq[4 * g + k][..]);
            let s = [0, 1, 2, 3].map(|k| &xs[4 * g + k][..]);
            super::pack_acts_i16(q, s, nb, &mut x16[g], &mut xs8[g]);
        }
        let stride = rows + 3;
        let mut res = vec![1f32; 4 * T * stride];
        let x16: [&[i16]; T] = std::array::from_fn(|g| &x16[g][..]);
        let xs8: [&[f32]; T] = std::array::from_fn(|g| &xs8[g][..]);
        let t8 = super::GemmTile { w: &w8[..], w_stride, ws, ws_stride, rows, nb, x16, xs8 };
        let t16 = super::GemmTile { w: &w16[..], w_stride, ws, ws_stride, rows, nb, x16, xs8 };
        match (avx2, wide) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: callers pass avx2 only when the CPU has avx2 and fma.
            (true, false) => unsafe { super::avx2::q8_gemm(&t8, &mut res, stride) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            (true, true) => unsafe { super::avx2::q8_gemm(&t16, &mut res, stride) },
            (_, false) => scalar::q8_gemm(&t8, &mut res, stride),
            (_, true) => scalar::q8_gemm(&t16, &mut res, stride),
        }
        res
    }

    #[test]
    fn scalar_q8_matches_naive_with_extreme_values() {
        let wq = vec![-128i8; 64];
        let xq = vec![-127i8; 64];
        let (ws, xs) = ([0.5f32, 2.0], [1.0f32, 0.25]);
        let want = naive_q8(&wq, &ws, &xq, &xs);
        assert_eq!(scalar::dot_q8(&wq, &ws, &xq, &xs) as f64, want);
        let [a, b] = scalar::q8_rows_x1::<2>(&[wq.clone(), wq.clone()].concat(), &[ws, ws].concat(), 2, &xq, &xs);
        assert_eq!((a as f64, b as f64), (want, want));
    }

    #[test]
    fn scalar_kernels_tolerate_short_slices() {
        assert_eq!(scalar::dot_f32(&[1.0, 2.0, 3.0], &[1.0]), 1.0);
        assert_eq!(scalar::f32_rows_x1::<2>(&[1.0; 3], 2, &[1.0; 2]), [2.0, 0.0]);
        assert_eq!(scalar::q8_rows_x1::<2>(&[1; 32], &[1.0], 1, &[1; 32], &[1.0]), [32.0, 0.0]);
        let mut res = [0f32; 4];
        let tile = |rows| super::GemmTile {
            w: &[1i8; 32][..],
            w_stride: 32,
            ws: &[1.0][..],
            ws_stride: 1,
            rows,
            nb: 1,
            x16: [&[1i16; 128][..]],
            xs8: [&[1.0; 8][..]],
        };
        scalar::q8_gemm(&tile(2), &mut res, 1);
        assert_eq!(res, [0.0; 4], "rows > res_stride is refused");
        scalar::q8_gemm(&tile(1), &mut res, 1);
        assert_eq!(res, [32.0; 4]);
    }

    /// The AVX2 multi-row axpy against the scalar one: every tail of 8 outputs, every
    /// remainder of 4 rows, rows at an offset into a strided matrix.
    #[test]
    fn axpy_rows_matches_scalar() {
        let (rows, stride) = (11usize, 40usize);
        let w: Vec<f32> = (0..rows * stride).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        for n in [0usize, 1, 7, 8, 9, 17, 31] {
            for count in 0..=rows {
                let idx: Vec<u32> = (0..count as u32).map(|k| (k * 7) % rows as u32).collect();
                let a: Vec<f32> = (0..count).map(|k| 0.5 - k as f32 * 0.25).collect();
                let mut want = vec![1.0f32; n];
                scalar::axpy_rows_f32(&w, stride, 5, &idx, &a, &mut want);
                let mut got = vec![1.0f32; n];
                super::axpy_rows_f32(&w, stride, 5, &idx, &a, &mut got, 3);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "n {n} rows {count}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn dot4_matches_four_dots() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let rows: Vec<Vec<f32>> =
            (0..4).map(|r| (0..37).map(|i| ((i * (r + 3)) % 11) as f32 - 5.0).collect()).collect();
        for n in [0usize, 5, 8, 23, 37] {
            let got = super::dot4_f32([&rows[0][..n], &rows[1][..], &rows[2][..], &rows[3][..]], &x);
            for (r, g) in got.iter().enumerate() {
                let want = scalar::dot_f32(&rows[r][..n], &x[..n]);
                assert!((g - want).abs() <= 1e-4 * (1.0 + want.abs()), "n {n} row {r}: {g} vs {want}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "axpy_rows_f32")]
    fn axpy_rows_refuses_runs_past_the_weights() {
        super::axpy_rows_f32(&[0.0; 16], 8, 4, &[1], &[1.0], &mut [0.0; 8], 0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernels_tolerate_short_slices() {
        if !have_avx2() {
            return;
        }
        // SAFETY: avx2 and fma are present (checked above).
        unsafe {
            assert_eq!(super::avx2::dot_f32(&[1.0; 9], &[2.0; 3]), 6.0);
            let mut y = [1.0f32; 3];
            super::avx2::axpy_f32(2.0, &[1.0; 10], &mut y);
            assert_eq!(y, [3.0; 3]);
            assert_eq!(super::avx2::dot_q8(&[1; 64], &[1.0; 2], &[1; 32], &[1.0; 2]), 32.0);
            assert_eq!(super::avx2::f32_rows_x1::<4>(&[1.0; 7], 2, &[1.0; 2]), [0.0; 4]);
            assert_eq!(super::avx2::f32_rows_x4::<2>(&[1.0; 4], 2, [&[1.0; 1]; 4]), [[0.0; 4]; 2]);
            assert_eq!(super::avx2::q8_rows_x1::<4>(&[1; 96], &[1.0; 4], 1, &[1; 32], &[1.0]), [0.0; 4]);
            let mut res = [0f32; 8];
            let (w, x) = (&[1i16; 32][..], &[1i16; 128][..]);
            let short = super::GemmTile {
                w,
                w_stride: 32,
                ws: &[1.0][..],
                ws_stride: 1,
                rows: 1,
                nb: 1,
                x16: [x, &x[1..]],
                xs8: [&[1.0; 8][..]; 2],
            };
            super::avx2::q8_gemm(&short, &mut res, 1);
            assert_eq!(res, [0.0; 8]);
            let two_rows = super::GemmTile {
                w,
                w_stride: 32,
                ws: &[1.0][..],
                ws_stride: 1,
                rows: 2,
                nb: 1,
                x16: [x],
                xs8: [&[1.0; 8][..]],
            };
            super::avx2::q8_gemm(&two_rows, &mut res, 2);
            assert_eq!(res, [0.0; 8]);
            let one = super::GemmTile { rows: 1, ..two_rows };
            super::avx2::q8_gemm(&one, &mut res, 1);
            assert_eq!(res[..4], [32.0; 4]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn scalar_f32_kernels_match_naive(rows in 1usize..6, cols in 0usize..100, seed: u64) {
            let w = floats(4 * cols, seed);
            let x: Vec<Vec<f32>> = (0..4).map(|t| floats(cols, seed ^ t)).collect();
            let xs = [&x[0][..], &x[1][..], &x[2][..], &x[3][..]];
            let naive = |r: usize, t: usize| -> (f64, f64) {
                let p = (0..cols).map(|i| w[r * cols + i] as f64 * x[t][i] as f64);
                (p.clone().sum(), p.map(f64::abs).sum())
            };
            let one = scalar::f32_rows_x1::<4>(&w, cols, xs[0]);
            let four = scalar::f32_rows_x4::<4>(&w, cols, xs);
            for r in 0..rows.min(4) {
                let (v, m) = naive(r, 0);
                prop_assert!(close(one[r], v, m));
                for (t, &got) in four[r].iter().enumerate() {
                    let (v, m) = naive(r, t);
                    prop_assert!(close(got, v, m));
                }
            }
            let mut y = x[1].clone();
            scalar::axpy_f32(0.5, &x[0], &mut y);
            for i in 0..cols {
                prop_assert_eq!(y[i], x[1][i] + 0.5 * x[0][i]);
            }
        }

        #[test]
        fn scalar_q8_kernels_match_naive(nb in 0usize..12, seed: u64) {
            let wq = ints(4 * nb * QK, seed, true);
            let ws: Vec<f32> = floats(4 * nb, seed ^ 1).iter().map(|v| v.abs()).collect();
            let xq: Vec<Vec<i8>> = (0..16).map(|t| ints(nb * QK, seed ^ (t + 2), false)).collect();
            let xs: Vec<Vec<f32>> = (0..16).map(|t| floats(nb, seed ^ (t + 99)).iter().map(|v| v.abs()).collect()).collect();
            let one = scalar::q8_rows_x1::<4>(&wq, &ws, nb, &xq[0], &xs[0]);
            let stride = 4 + 3;
            let four = run_gemm::<4>(false, false, &wq, &ws, nb, 4, nb, &xq, &xs);
            prop_assert_eq!(&four, &run_gemm::<4>(false, true, &wq, &ws, nb, 4, nb, &xq, &xs));
            for r in 0..4 {
                let (rq, rs) = (&wq[r * nb * QK..(r + 1) * nb * QK], &ws[r * nb..(r + 1) * nb]);
                let (want, mag) = naive_q8_mag(rq, rs, &xq[0], &xs[0]);
                prop_assert!(close(scalar::dot_q8(rq, rs, &xq[0], &xs[0]), want, mag));
                prop_assert!(close(one[r], want, mag));
                for t in 0..16 {
                    let (want, mag) = naive_q8_mag(rq, rs, &xq[t], &xs[t]);
                    prop_assert!(close(four[t * stride + r] - 1.0, want, mag + 1.0));
                }
            }
            for t in 0..16 {
                prop_assert_eq!(&four[t * stride + 4..(t + 1) * stride], &[1.0; 3]);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn avx2_f32_kernels_match_scalar(cols in 0usize..150, a in -4f32..4.0, seed: u64) {
            if !have_avx2() {
                return Ok(());
            }
            let w = floats(4 * cols, seed);
            let x: Vec<Vec<f32>> = (0..4).map(|t| floats(cols, seed ^ (t + 1))).collect();
            let xs = [&x[0][..], &x[1][..], &x[2][..], &x[3][..]];
            let mag: f32 = w.iter().map(|v| v.abs() * 3.0).sum::<f32>() + 1.0;
            let near = |a: f32, b: f32| (a - b).abs() <= 1e-5 * mag;
            // SAFETY: avx2 and fma are present (checked above); every slice holds the
            // lengths the kernels read.
            unsafe {
                let (wr, x0) = (&w[..cols], xs[0]);
                prop_assert!(near(super::avx2::dot_f32(wr, x0), scalar::dot_f32(wr, x0)));
                let mut y1 = x[1].clone();
                let mut y2 = x[1].clone();
                super::avx2::axpy_f32(a, x0, &mut y1);
                scalar::axpy_f32(a, x0, &mut y2);
                for (p, q) in y1.iter().zip(&y2) {
                    prop_assert!((p - q).abs() <= 1e-6 * (1.0 + q.abs()));
                }
                let got = super::avx2::f32_rows_x1::<4>(&w, cols, x0);
                let want = scalar::f32_rows_x1::<4>(&w, cols, x0);
                prop_assert!(got.iter().zip(&want).all(|(&p, &q)| near(p, q)), "{:?} {:?}", got, want);
                let got = super::avx2::f32_rows_x1::<1>(&w, cols, x0);
                prop_assert!(near(got[0], want[0]));
                let want = scalar::f32_rows_x4::<4>(&w, cols, xs);
                let got4 = super::avx2::f32_rows_x4::<4>(&w, cols, xs);
                let got2 = super::avx2::f32_rows_x4::<2>(&w, cols, xs);
                let got1 = super::avx2::f32_rows_x4::<1>(&w, cols, xs);
                for t in 0..4 {
                    for r in 0..4 {
                        prop_assert!(near(got4[r][t], want[r][t]));
                    }
                    prop_assert!(near(got2[0][t], want[0][t]) && near(got2[1][t], want[1][t]));
                    prop_assert!(near(got1[0][t], want[0][t]));
                }
            }
        }

        #[test]
        fn avx2_q8_kernels_match_scalar(nb in 0usize..12, rows in 0usize..6, pad in 0usize..3, seed: u64) {
            if !have_avx2() {
                return Ok(());
            }
            let ws_stride = nb + pad;
            let wq = ints(6 * nb * QK, seed, true);
            let ws: Vec<f32> = floats(6 * ws_stride, seed ^ 1).iter().map(|v| v.abs()).collect();
            let xq: Vec<Vec<i8>> = (0..16).map(|t| ints(nb * QK, seed ^ (t + 2), false)).collect();
            let xs: Vec<Vec<f32>> = (0..16).map(|t| floats(nb, seed ^ (t + 99)).iter().map(|v| v.abs()).collect()).collect();
            let dense_ws: Vec<f32> = (0..6).flat_map(|r| ws[r * ws_stride..r * ws_stride + nb].to_vec()).collect();
            // Only the order of f32 additions differs: a few ulps of the largest term sum.
            let mag = (0..6)
                .flat_map(|r| (0..16).map(move |t| (r, t)))
                .map(|(r, t)| naive_q8_mag(&wq[r * nb * QK..(r + 1) * nb * QK], &dense_ws[r * nb..(r + 1) * nb], &xq[t], &xs[t]).1)
                .fold(0f64, f64::max) as f32;
            let near = |a: f32, b: f32| (a - b).abs() <= 1e-6 * mag + 1e-5;
            // SAFETY: avx2 and fma are present (checked above); every slice holds the
            // lengths the kernels read.
            unsafe {
                let want1 = scalar::q8_rows_x1::<4>(&wq, &dense_ws, nb, &xq[0], &xs[0]);
                let got1 = super::avx2::q8_rows_x1::<4>(&wq, &dense_ws, nb, &xq[0], &xs[0]);
                let got11 = super::avx2::q8_rows_x1::<1>(&wq, &dense_ws, nb, &xq[0], &xs[0]);
                let dot = super::avx2::dot_q8(&wq[..nb * QK], &dense_ws[..nb], &xq[0], &xs[0]);
                prop_assert!(near(got11[0], want1[0]) && near(dot, want1[0]));
                for r in 0..4 {
                    prop_assert!(near(got1[r], want1[r]), "row {}: {} vs {}", r, got1[r], want1[r]);
                }
            }
            macro_rules! check_t {
                ($t:literal) => {{
                    let want = run_gemm::<$t>(false, false, &wq, &ws, ws_stride, rows, nb, &xq, &xs);
                    for wide in [false, true] {
                        let got = run_gemm::<$t>(true, wide, &wq, &ws, ws_stride, rows, nb, &xq, &xs);
                        prop_assert_eq!(got.len(), want.len());
                        for (i, (&p, &q)) in got.iter().zip(&want).enumerate() {
                            prop_assert!(near(p, q), "T {} wide {} index {}: {} vs {}", $t, wide, i, p, q);
                        }
                    }
                }};
            }
            check_t!(1);
            check_t!(2);
            check_t!(3);
            check_t!(4);
        }
    }
}
