//! Per-sequence key/value cache: keys and values of every past position, per layer, in f32
//! (the reference precision) or f16 (the fast path: half the memory, and half the bytes the
//! attention reads per step). Keys are kept in the transposed blocks of
//! `sieve_kernels::attention` (positions side by side per dimension), values one row per
//! position.

use half::f16;
use sieve_kernels::attention::{CacheValue, key_buffer_len, store_keys};

/// Element type of a [`KvCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheFormat {
    /// 4 bytes per value.
    F32,
    /// 2 bytes per value (rounded to nearest).
    F16,
}

/// Keys and values of the positions seen so far, for every layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    kv_heads: usize,
    head_dim: usize,
    kv_dim: usize,
    max_len: usize,
    len: usize,
    store: Store,
}

/// Per-layer buffers of one element type.
#[derive(Debug, Clone)]
enum Store {
    F32(Layers<f32>),
    F16(Layers<f16>),
}

#[derive(Debug, Clone)]
struct Layers<T> {
    keys: Vec<Vec<T>>,
    values: Vec<Vec<T>>,
}

impl<T: CacheValue> Layers<T> {
    fn new(n_layers: usize) -> Self {
        Self { keys: vec![Vec::new(); n_layers], values: vec![Vec::new(); n_layers] }
    }
    fn clear(&mut self) {
        self.keys.iter_mut().chain(self.values.iter_mut()).for_each(Vec::clear);
    }
    fn truncate(&mut self, key_values: usize, values: usize) {
        self.keys.iter_mut().for_each(|k| k.truncate(key_values));
        self.values.iter_mut().for_each(|v| v.truncate(values));
    }
    fn append(&mut self, layer: usize, kv_heads: usize, head_dim: usize, k: &[f32], v: &[f32]) {
        let kv_dim = kv_heads * head_dim;
        let first = self.values[layer].len() / kv_dim;
        for (t, row) in k.chunks_exact(kv_dim).enumerate() {
            // Rows are whole (`chunks_exact`), so the length check cannot fail.
            let _ = store_keys(&mut self.keys[layer], kv_heads, head_dim, first + t, row);
        }
        self.values[layer].extend(v.iter().map(|&x| T::from_f32(x)));
    }
    #[cfg(test)]
    fn positions(&self, layer: usize, kv_dim: usize) -> usize {
        self.values[layer].len() / kv_dim
    }
    fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|v| v.len() * std::mem::size_of::<T>()).sum()
    }
}

/// One layer's keys (transposed blocks) and values (row-major).
pub(crate) enum LayerKv<'a> {
    F32 { keys: &'a [f32], values: &'a [f32] },
    F16 { keys: &'a [f16], values: &'a [f16] },
}

impl KvCache {
    /// An empty cache for `n_layers` layers of `kv_heads` heads of `head_dim` values, holding
    /// at most `max_len` positions in `format`. Memory grows with use.
    pub fn new(n_layers: usize, kv_heads: usize, head_dim: usize, max_len: usize, format: CacheFormat) -> Self {
        let store = match format {
            CacheFormat::F32 => Store::F32(Layers::new(n_layers)),
            CacheFormat::F16 => Store::F16(Layers::new(n_layers)),
        };
        Self { kv_heads, head_dim, kv_dim: kv_heads * head_dim, max_len, len: 0, store }
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
    /// Element type of the cache.
    pub fn format(&self) -> CacheFormat {
        match self.store {
            Store::F32(_) => CacheFormat::F32,
            Store::F16(_) => CacheFormat::F16,
        }
    }
    /// Forgets every position, keeping the allocations.
    pub fn clear(&mut self) {
        self.len = 0;
        match &mut self.store {
            Store::F32(l) => l.clear(),
            Store::F16(l) => l.clear(),
        }
    }
    /// Forgets positions from `len` on, in every layer (no-op if fewer are stored).
    pub fn truncate(&mut self, len: usize) {
        let keep = len.min(self.len);
        let (keys, values) = (key_buffer_len(keep, self.kv_heads, self.head_dim), keep * self.kv_dim);
        match &mut self.store {
            Store::F32(l) => l.truncate(keys, values),
            Store::F16(l) => l.truncate(keys, values),
        }
        self.len = keep;
    }
    /// Appends `k` and `v` (whole rows of `kv_dim`) to `layer`.
    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let (heads, hd) = (self.kv_heads, self.head_dim);
        match &mut self.store {
            Store::F32(l) => l.append(layer, heads, hd, k, v),
            Store::F16(l) => l.append(layer, heads, hd, k, v),
        }
    }
    /// Marks `n` more positions as stored, once every layer appended them.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
    /// Keys and values of `layer`.
    pub(crate) fn layer(&self, layer: usize) -> LayerKv<'_> {
        match &self.store {
            Store::F32(l) => LayerKv::F32 { keys: &l.keys[layer], values: &l.values[layer] },
            Store::F16(l) => LayerKv::F16 { keys: &l.keys[layer], values: &l.values[layer] },
        }
    }
    /// Positions `layer` holds (more than [`KvCache::len`] while a forward pass appends).
    #[cfg(test)]
    fn positions(&self, layer: usize) -> usize {
        match &self.store {
            Store::F32(l) => l.positions(layer, self.kv_dim),
            Store::F16(l) => l.positions(layer, self.kv_dim),
        }
    }
    /// Values per position per layer.
    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }
    /// Bytes currently held (keys in whole blocks of positions).
    pub fn bytes(&self) -> usize {
        match &self.store {
            Store::F32(l) => l.bytes(),
            Store::F16(l) => l.bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_drops_partial_appends_in_every_layer() {
        for (format, size) in [(CacheFormat::F32, 4), (CacheFormat::F16, 2)] {
            let mut c = KvCache::new(2, 1, 3, 10, format);
            assert_eq!(c.format(), format);
            c.append(0, &[1.0; 3], &[2.0; 3]);
            c.append(1, &[1.0; 3], &[2.0; 3]);
            c.advance(1);
            c.append(0, &[3.0; 3], &[4.0; 3]);
            c.truncate(1);
            assert_eq!(c.len(), 1);
            assert_eq!((c.positions(0), c.positions(1)), (1, 1));
            // Keys occupy a whole block of positions, values one row per position.
            let block = key_buffer_len(1, 1, 3);
            assert_eq!(c.bytes(), 2 * (block + 3) * size);
            // The next append lands at position 1 again, over the dropped one.
            c.append(0, &[5.0; 3], &[6.0; 3]);
            let (k1, v1) = match c.layer(0) {
                LayerKv::F32 { keys, values } => (keys[1], values[3]),
                LayerKv::F16 { keys, values } => (keys[1].to_f32(), values[3].to_f32()),
            };
            assert_eq!((k1, v1), (5.0, 6.0));
            c.clear();
            assert!(c.is_empty());
        }
    }
}
