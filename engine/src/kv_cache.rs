//! Per-sequence key/value cache: f32 keys and values of every past position, per layer.

/// Keys and values of the positions seen so far, for every layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    kv_dim: usize,
    max_len: usize,
    len: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl KvCache {
    /// An empty cache for `n_layers` layers of `kv_dim` values, holding at most `max_len`
    /// positions. Memory grows with use.
    pub fn new(n_layers: usize, kv_dim: usize, max_len: usize) -> Self {
        Self { kv_dim, max_len, len: 0, keys: vec![Vec::new(); n_layers], values: vec![Vec::new(); n_layers] }
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
        let keep = len.min(self.len) * self.kv_dim;
        self.keys.iter_mut().chain(self.values.iter_mut()).for_each(|v| v.truncate(keep));
        self.len = self.len.min(len);
    }
    /// Appends `k` and `v` (whole rows of `kv_dim`) to `layer`.
    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        self.keys[layer].extend_from_slice(k);
        self.values[layer].extend_from_slice(v);
    }
    /// Marks `n` more positions as stored, once every layer appended them.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
    /// Keys and values of `layer`, positions row-major.
    pub(crate) fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
    }
    /// Values per position per layer.
    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }
    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|v| v.len() * 4).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_drops_partial_appends_in_every_layer() {
        let mut c = KvCache::new(2, 3, 10);
        c.append(0, &[1.0; 3], &[2.0; 3]);
        c.append(1, &[1.0; 3], &[2.0; 3]);
        c.advance(1);
        c.append(0, &[3.0; 3], &[4.0; 3]);
        c.truncate(1);
        assert_eq!(c.len(), 1);
        assert_eq!(c.layer(0).0.len(), 3);
        assert_eq!(c.layer(1).1.len(), 3);
        assert_eq!(c.bytes(), 4 * 3 * 4);
        c.clear();
        assert!(c.is_empty());
    }
}
