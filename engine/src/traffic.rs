//! Bytes a decode step reads: the bandwidth side of what a sparsity method can buy.
//!
//! Decode reads every weight it uses once per token, and the dense GEMVs run close to the
//! rate the caches deliver bytes, so the bytes a method leaves unread bound the speedup it
//! can give at equal bandwidth: (dense bytes) / (method bytes). This counts them from the
//! layouts the sparse kernels read (see [`crate::sparse_decode`]) and the sparsity a run
//! achieved per layer and projection: dense products read the whole matrix, input-sparse
//! ones the codes of their active channels plus every block's scales, row reads the whole
//! cache lines of the kept rows, and predictor methods their predictors too. The LM head and the KV cache are read
//! alike by dense and every method.

use serde::Serialize;

use crate::Model;
use crate::error::Result;
use crate::sparse_decode;
use crate::sparsity::{Method, Proj, SparsityPlan, SparsityStats};

/// How a method's decode step reads one projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// The whole matrix.
    Dense,
    /// The input-major copy, active input channels only.
    InputSparse,
    /// The kept rows of the row-major matrix.
    Rows,
}

/// What `method` reads of projection `p` when the layer's plan has input threshold `t`.
fn read_of(method: Method, p: Proj, t: f32) -> Read {
    if !sparse_decode::supports(method) {
        return Read::Dense;
    }
    match (method, p) {
        (Method::Teal | Method::TealUniform, _) if t > 0.0 => Read::InputSparse,
        (Method::Cats, Proj::Up) | (Method::Predictor | Method::PredictorVerify, Proj::Gate | Proj::Up) => Read::Rows,
        (Method::Cats | Method::Predictor | Method::PredictorVerify, Proj::Down) => Read::InputSparse,
        _ => Read::Dense,
    }
}

/// Bytes of one decode step, dense and under a method.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DecodeTraffic {
    /// Weight bytes of a dense step: every projection and the LM head.
    pub dense_weight_bytes: f64,
    /// Weight bytes of the method's step at the achieved sparsity (its predictors included).
    pub method_weight_bytes: f64,
    /// KV-cache bytes a step reads at the mean position (dense and the method alike).
    pub kv_cache_bytes: f64,
}

impl DecodeTraffic {
    /// Dense bytes over the method's, weights and cache: the speedup at equal bandwidth.
    pub fn bound_speedup(&self) -> f64 {
        (self.dense_weight_bytes + self.kv_cache_bytes) / (self.method_weight_bytes + self.kv_cache_bytes).max(1.0)
    }
}

impl Model {
    /// Bytes one decode step reads, dense and under `plan` at the sparsity `stats` recorded
    /// (decode steps only), with `positions` cached positions on average. Builds the
    /// input-major copies the plan reads if they are not there yet.
    pub fn decode_traffic(&self, plan: &SparsityPlan, stats: &SparsityStats, positions: f64) -> Result<DecodeTraffic> {
        let weights = self.weights();
        let head = weights.lm_head().bytes() as f64;
        let mut dense = head;
        let mut method = head;
        for (l, w) in weights.layers.iter().enumerate() {
            let lp = plan.layers.get(l);
            for p in Proj::ALL {
                let full = w.proj(p).bytes() as f64;
                dense += full;
                let t = lp.map_or(0.0, |lp| lp.proj[p.index()]);
                let kept = 1.0 - stats.layer(l, p);
                let read = if plan.is_dense() { Read::Dense } else { read_of(plan.method, p, t) };
                method += match read {
                    Read::Dense => full,
                    Read::Rows => kept * (w.proj(p).rows() * w.proj(p).listed_row_bytes()) as f64,
                    Read::InputSparse => self.sparse.bytes_read(l, p, w, kept)?,
                };
            }
        }
        if !plan.is_dense()
            && let Some(set) = &plan.predictors
        {
            method += set.0.layers.iter().map(|p| p.bytes() as f64).sum::<f64>();
        }
        let cfg = self.config();
        let element = match self.cache_format() {
            crate::CacheFormat::F32 => 4.0,
            crate::CacheFormat::F16 => 2.0,
        };
        let kv_cache = 2.0 * (cfg.n_layers * cfg.kv_dim()) as f64 * positions.max(0.0) * element;
        Ok(DecodeTraffic { dense_weight_bytes: dense, method_weight_bytes: method, kv_cache_bytes: kv_cache })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_follow_the_sparse_decode_path() {
        use Method::*;
        assert_eq!(read_of(Teal, Proj::K, 0.3), Read::InputSparse);
        assert_eq!(read_of(TealUniform, Proj::V, 0.0), Read::Dense);
        assert_eq!(read_of(Cats, Proj::Gate, 0.0), Read::Dense);
        assert_eq!(read_of(Cats, Proj::Up, 0.0), Read::Rows);
        assert_eq!(read_of(Cats, Proj::Down, 0.0), Read::InputSparse);
        assert_eq!(read_of(Cats, Proj::Q, 0.0), Read::Dense);
        assert_eq!(read_of(PredictorVerify, Proj::Gate, 0.0), Read::Rows);
        assert_eq!(read_of(Predictor, Proj::Down, 0.0), Read::InputSparse);
        assert_eq!(read_of(Cett, Proj::Down, 0.0), Read::Dense);
        assert_eq!(read_of(Dense, Proj::Up, 0.5), Read::Dense);
    }

    #[test]
    fn the_bound_counts_the_cache_on_both_sides() {
        let t = DecodeTraffic { dense_weight_bytes: 90.0, method_weight_bytes: 60.0, kv_cache_bytes: 10.0 };
        assert!((t.bound_speedup() - 100.0 / 70.0).abs() < 1e-12);
    }
}
