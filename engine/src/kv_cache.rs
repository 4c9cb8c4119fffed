//! Per-sequence key/value cache: f32 keys and values of every past position, per layer. Keys
//! are kept in the transposed blocks of `sieve_kernels::attention` (positions side by side per
//! dimension), values one row per position.

use sieve_kernels::attention::{key_buffer_len, store_keys};

/// Keys and values of the positions seen so far, for every layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    kv_heads: usize,
    head_dim: usize,
    kv_dim: usize,
    max_len: usize,
    len: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl KvCache {
    /// An empty cache for `n_layers` layers of `kv_heads` heads of `head_dim` values, holding
    /// at most `max_len` positions. Memory grows with use.
    pub fn new(n_layers: usize, kv_heads: usize, head_dim: usize, max_len: usize) -> Self {
        Self {
            kv_heads,
            head_dim,
            kv_dim: kv_heads * head_dim,
            max_len,
            len: 0,
            keys: vec![Vec::new(); n_layers],
            values: vec![Vec::new(); n_layers],
        }
    }
    /// Positions stored.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when no position is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Positions the cache can hold.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
    /// Forgets every position, keeping the allocations.
    pub fn clear(&mut self) {
        self.len = 0;
        self.keys.iter_mut().chain(self.values.iter_mut()).for_each(Vec::clear);
    }
    /// Forgets positions from `len` on, in every layer (no-op if fewer are stored).
    pub fn truncate(&mut self, len: usize) {
        let keep = len.min(self.len);
        let key_floats = key_buffer_len(keep, self.kv_heads, self.head_dim);
        self.keys.iter_mut().for_each(|k| k.truncate(key_floats));
        self.values.iter_mut().for_each(|v| v.truncate(keep * self.kv_dim));
        self.len = keep;
    }
    /// Appends `k` and `v` (whole rows of `kv_dim`) to `layer`.
    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let first = self.values[layer].len() / self.kv_dim;
        for (t, row) in k.chunks_exact(self.kv_dim).enumerate() {
            // Rows are whole (`chunks_exact`), so the length check cannot fail.
            let _ = store_keys(&mut self.keys[layer], self.kv_heads, self.head_dim, first + t, row);
        }
        self.values[layer].extend_from_slice(v);
    }
    /// Marks `n` more positions as stored, once every layer appended them.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
    /// Keys (transposed blocks) and values (row-major) of `layer`.
    pub(crate) fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
    }
    /// Values per position per layer.
    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }
    /// Bytes currently held (keys in whole blocks of positions).
    pub fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|v| v.len() * 4).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_drops_partial_appends_in_every_layer() {
        let mut c = KvCache::new(2, 1, 3, 10);
        c.append(0, &[1.0; 3], &[2.0; 3]);
        c.append(1, &[1.0; 3], &[2.0; 3]);
        c.advance(1);
        c.append(0, &[3.0; 3], &[4.0; 3]);
        c.truncate(1);
        assert_eq!(c.len(), 1);
        // Keys occupy a whole block of positions, values one row per position.
        let block = key_buffer_len(1, 1, 3);
        assert_eq!(c.layer(0).0.len(), block);
        assert_eq!(c.layer(1).1.len(), 3);
        assert_eq!(c.bytes(), 2 * (block + 3) * 4);
        // The next append lands at position 1 again, over the dropped one.
        c.append(0, &[5.0; 3], &[6.0; 3]);
        assert_eq!(c.layer(0).0[1], 5.0);
        assert_eq!(c.layer(0).1[3..], [6.0; 3]);
        c.clear();
        assert!(c.is_empty());
    }
}
