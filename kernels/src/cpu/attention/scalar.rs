//! Portable attention for one head: the reference for the SIMD loop.

use super::HeadView;

pub fn attend(h: &HeadView<'_>, scores: &mut [f32], out: &mut [f32]) {
    let hd = h.q.len();
    for (j, s) in scores.iter_mut().enumerate() {
        let k = &h.keys[j * h.stride + h.offset..][..hd];
        *s = h.q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * h.scale;
    }
    crate::ops::softmax(scores);
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        let v = &h.values[j * h.stride + h.offset..][..hd];
        for (o, x) in out.iter_mut().zip(v) {
            *o += p * x;
        }
    }
}
