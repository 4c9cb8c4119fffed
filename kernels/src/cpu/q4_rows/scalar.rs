//! Portable output-sparse GEMV over Q4_1 rows in step order: the reference the AVX-512 loop
//! is tested against, and the path of CPUs without it.

use super::{GROUP_ACT_BYTES, GROUP_BYTES, StepActs, StepMatrix};

/// f16 number `i` of `bytes`.
fn f16_at(bytes: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])).to_f32()
}

/// One group of `lanes` blocks (codes, then scales, then minima) against activation slot
/// `slot`.
fn group(w: &[u8], lanes: usize, x: &StepActs<'_>, slot: usize) -> f32 {
    let acts = &x.q[GROUP_ACT_BYTES * slot..];
    let (d, m) = (&w[16 * lanes..], &w[18 * lanes..]);
    let mut total = 0f32;
    for l in 0..lanes {
        let mut sum = 0i32;
        for j in 0..4 {
            for p in 0..4 {
                let c = w[lanes * 4 * j + 4 * l + p];
                let even = acts[128 * j + 4 * l + p] as i32;
                let odd = acts[128 * j + 64 + 4 * l + p] as i32;
                sum += (c & 0x0f) as i32 * even + (c >> 4) as i32 * odd;
            }
        }
        // The activations' scales carry 1/16 (see the AVX-512 loop).
        total += sum as f32 * 16.0 * f16_at(d, l) * x.d[16 * slot + l] + f16_at(m, l) * x.sum[16 * slot + l];
    }
    total
}

/// `out[k] = W[rows[k]] · x`, group by group in the layout's order.
pub fn gemv_rows(w: &StepMatrix<'_>, x: &StepActs<'_>, rows: &[u32], out: &mut [f32]) {
    for (o, &r) in out.iter_mut().zip(rows) {
        let row = &w.bytes[r as usize * w.stride..];
        let mut total = 0f32;
        for g in 0..w.groups {
            total += group(&row[GROUP_BYTES * g..], 16, x, g);
        }
        if w.tail > 0 {
            total += group(&row[GROUP_BYTES * w.groups..], w.tail, x, w.groups);
        }
        *o = total;
    }
}
