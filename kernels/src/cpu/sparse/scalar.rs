//! Portable input-sparse accumulation: the reference for the SIMD loop.

use super::SparsePairs;

pub fn accumulate(op: &SparsePairs<'_>, j0: usize, acc: &mut [i32]) {
    acc.fill(0);
    for (pair, x) in op.pairs.iter().zip(op.xq) {
        for (i, &xi) in pair.iter().zip(x) {
            let row = &op.w[*i as usize * op.outputs + j0..][..acc.len()];
            for (a, &w) in acc.iter_mut().zip(row) {
                *a += xi as i32 * w as i32;
            }
        }
    }
}
