//! Inner loop of attention for one query head (one file per ISA) and its dispatch.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod scalar;

use crate::isa::{Isa, active};

/// One query head against `len` cached positions: keys and values of position j start at
/// `j * stride + offset` and hold `q.len()` values.
pub struct HeadView<'a> {
    pub q: &'a [f32],
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub stride: usize,
    pub offset: usize,
    pub len: usize,
    pub scale: f32,
}

/// `out = softmax(scale * K q) V`, using `scores` as scratch.
pub fn attend(h: &HeadView<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    scores.clear();
    scores.resize(h.len, 0.0);
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2 and fma; the caller
        // (crate::attention) checked every index against the slice lengths.
        Isa::Avx2 if h.q.len() % 8 == 0 => unsafe { avx2::attend(h, scores, out) },
        _ => scalar::attend(h, scores, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx2_matches_scalar() {
        for len in [1, 3, 4, 37, 300] {
            avx2_matches_scalar_at(len);
        }
    }

    fn avx2_matches_scalar_at(len: usize) {
        let hd = 64;
        let stride = 3 * hd;
        let keys: Vec<f32> = (0..len * stride).map(|i| ((i * 29 % 97) as f32 - 48.0) / 40.0).collect();
        let values: Vec<f32> = (0..len * stride).map(|i| ((i * 13 % 89) as f32 - 44.0) / 30.0).collect();
        let q: Vec<f32> = (0..hd).map(|i| ((i * 7 % 23) as f32 - 11.0) / 10.0).collect();
        let h = HeadView { q: &q, keys: &keys, values: &values, stride, offset: hd, len, scale: 0.125 };
        let mut s = Vec::new();
        let mut want = vec![0f32; hd];
        scalar::attend(
            &h,
            &mut {
                s.resize(len, 0.0);
                s.clone()
            },
            &mut want,
        );
        let mut got = vec![0f32; hd];
        attend(&h, &mut s, &mut got);
        for (a, b) in want.iter().zip(&got) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
