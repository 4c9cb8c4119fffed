//! Attention of one query head over a KV cache: `softmax(scale · K q) V`, with bounds
//! checked here so the per-ISA loops can index freely.

use crate::KernelError;
use crate::cpu::attention as inner;

/// Computes one head's attention output into `out` (`q.len()` values). Keys and values of
/// position `j < len` are `keys[j * stride + offset..][..q.len()]` (same for `values`).
/// `scores` is scratch, reused across calls.
#[allow(clippy::too_many_arguments)]
pub fn attend_head(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    stride: usize,
    offset: usize,
    len: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let hd = q.len();
    if out.len() != hd {
        return Err(KernelError::Length { what: "attention output", expected: hd, got: out.len() });
    }
    if len == 0 {
        return Err(KernelError::Shape("attention over zero positions".into()));
    }
    let needed = (len - 1) * stride + offset + hd;
    if offset + hd > stride || keys.len() < needed || values.len() < needed {
        return Err(KernelError::Shape(format!(
            "attention over {len} positions (stride {stride}, offset {offset}, head {hd}) needs {needed} cached values, have {}/{}",
            keys.len(),
            values.len()
        )));
    }
    inner::attend(&inner::HeadView { q, keys, values, stride, offset, len, scale }, scores, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_direct_formula_and_rejects_bad_shapes() {
        let hd = 8;
        let keys = [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, -0.1, 0.0, 0.3, 0.2, 0.1, 0.0, -0.5, 0.9];
        let values: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let q = [1.0f32; 8];
        let mut out = [0f32; 8];
        attend_head(&q, &keys, &values, hd, 0, 2, 0.5, &mut Vec::new(), &mut out).unwrap();
        let s0: f32 = keys[..8].iter().sum::<f32>() * 0.5;
        let s1: f32 = keys[8..].iter().sum::<f32>() * 0.5;
        let (e0, e1) = ((s0 - s0.max(s1)).exp(), (s1 - s0.max(s1)).exp());
        for i in 0..8 {
            let want = (e0 * values[i] + e1 * values[8 + i]) / (e0 + e1);
            assert!((out[i] - want).abs() < 1e-5);
        }
        assert!(attend_head(&q, &keys, &values, hd, 0, 3, 0.5, &mut Vec::new(), &mut out).is_err());
        assert!(attend_head(&q, &keys, &values, hd, 0, 0, 0.5, &mut Vec::new(), &mut out).is_err());
        assert!(attend_head(&q, &keys, &values, hd, 4, 1, 0.5, &mut Vec::new(), &mut out).is_err());
    }
}
