//! Portable fallbacks: the reference every SIMD path is tested against.

use crate::QK;

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    // Eight partial sums so the compiler can vectorise even without target features.
    let mut acc = [0f32; 8];
    let (ac, at) = a.split_at(n / 8 * 8);
    let (bc, bt) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in at.iter().zip(bt) {
        s += x * y;
    }
    s
}

pub fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

pub fn axpy_rows_f32(w: &[f32], stride: usize, offset: usize, idx: &[u32], a: &[f32], y: &mut [f32]) {
    for (&i, &c) in idx.iter().zip(a) {
        let at = i as usize * stride + offset;
        axpy_f32(c, &w[at..at + y.len()], y);
    }
}

pub fn dot_q8(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32]) -> f32 {
    let mut s = 0f32;
    for ((wb, xb), (&sw, &sx)) in wq.chunks_exact(QK).zip(xq.chunks_exact(QK)).zip(ws.iter().zip(xs)) {
        let mut acc = 0i32;
        for (&w, &x) in wb.iter().zip(xb) {
            acc += w as i32 * x as i32;
        }
        s += acc as f32 * (sw * sx);
    }
    s
}

/// `R` consecutive rows of `cols` values times one activation row.
pub fn f32_rows_x1<const R: usize>(w: &[f32], cols: usize, x: &[f32]) -> [f32; R] {
    std::array::from_fn(|r| w.get(r * cols..(r + 1) * cols).map_or(0.0, |wr| dot_f32(wr, x)))
}

/// `R` consecutive rows of `cols` values times four activation rows.
pub fn f32_rows_x4<const R: usize>(w: &[f32], cols: usize, x: [&[f32]; 4]) -> [[f32; 4]; R] {
    std::array::from_fn(|r| w.get(r * cols..(r + 1) * cols).map_or([0.0; 4], |wr| x.map(|xt| dot_f32(wr, xt))))
}

/// `R` consecutive int8 rows of `nb` blocks times one quantized activation row.
pub fn q8_rows_x1<const R: usize>(wq: &[i8], ws: &[f32], nb: usize, xq: &[i8], xs: &[f32]) -> [f32; R] {
    std::array::from_fn(|r| match (wq.get(r * nb * QK..(r + 1) * nb * QK), ws.get(r * nb..(r + 1) * nb)) {
        (Some(q), Some(s)) => dot_q8(q, s, xq, xs),
        _ => 0.0,
    })
}

/// int8 to i16, over the common length.
pub fn widen_i16(src: &[i8], dst: &mut [i16]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = v as i16;
    }
}

/// The GEMM microkernel, as [`super::avx2::q8_gemm`] documents.
pub fn q8_gemm<W: Copy + Into<i32>, const T: usize>(
    tile: &super::GemmTile<'_, W, T>,
    res: &mut [f32],
    res_stride: usize,
) {
    let super::GemmTile { w, w_stride, ws, ws_stride, rows, nb, x16, xs8 } = *tile;
    for r in 0..rows {
        for g in 0..T {
            for t in 0..4 {
                let mut sum = 0f32;
                for b in 0..nb {
                    let mut acc = 0i32;
                    for i in 0..QK {
                        let wv: i32 = w.get(r * w_stride + b * QK + i).map_or(0, |&v| v.into());
                        let x = x16[g].get(b * 4 * QK + (i / 4) * 16 + t * 4 + i % 4).copied().unwrap_or(0) as i32;
                        acc += wv * x;
                    }
                    let sw = ws.get(r * ws_stride + b).copied().unwrap_or(0.0);
                    sum += acc as f32 * (sw * xs8[g].get(8 * b + 2 * t).copied().unwrap_or(0.0));
                }
                if let Some(o) = res.get_mut((4 * g + t) * res_stride + r).filter(|_| rows <= res_stride) {
                    *o += sum;
                }
            }
        }
    }
}
