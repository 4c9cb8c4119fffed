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

/// `R` consecutive int8 rows times four quantized activation rows, whose scales come
/// transposed (`xst[4 * b + t]`).
pub fn q8_rows_x4<const R: usize>(wq: &[i8], ws: &[f32], nb: usize, xq: [&[i8]; 4], xst: &[f32]) -> [[f32; 4]; R] {
    std::array::from_fn(|r| match (wq.get(r * nb * QK..(r + 1) * nb * QK), ws.get(r * nb..(r + 1) * nb)) {
        (Some(q), Some(s)) => std::array::from_fn(|t| {
            let mut sum = 0f32;
            for (b, ((wb, xb), &sw)) in q.chunks_exact(QK).zip(xq[t].chunks_exact(QK)).zip(s).enumerate() {
                let acc: i32 = wb.iter().zip(xb).map(|(&w, &x)| w as i32 * x as i32).sum();
                sum += acc as f32 * (sw * xst.get(4 * b + t).copied().unwrap_or(0.0));
            }
            sum
        }),
        _ => [0.0; 4],
    })
}
