//! Decode attention benchmark: one query position against a KV cache of `len` positions, every
//! query head, at SmolLM2-135M's shape (9 query heads on 3 KV heads of 64) and
//! Llama-3-8B's (32 on 8 of 128), f32 and f16 caches, on one thread (the engine runs the KV
//! heads, and parts of long caches, as parallel tasks). Throughput is in cache bytes read.
//!
//! `cargo bench -p sieve-kernels --bench attention [filter]`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::f16;
use sieve_kernels::attention::{CacheValue, KvHead, SoftmaxPart, attend_group, finish, store_keys};
use sieve_kernels::testdata::values;

/// (name, query heads, KV heads, head size)
const SHAPES: &[(&str, usize, usize, usize)] = &[("smol", 9, 3, 64), ("l3_8b", 32, 8, 128)];

/// A cache of `len` positions: transposed keys and row-major values.
fn cache<T: CacheValue>(len: usize, kv_heads: usize, hd: usize) -> (Vec<T>, Vec<T>) {
    let kv_dim = kv_heads * hd;
    let k = values(len * kv_dim, 11);
    let mut keys = Vec::new();
    for (pos, row) in k.chunks_exact(kv_dim).enumerate() {
        store_keys(&mut keys, kv_heads, hd, pos, row).expect("whole rows");
    }
    (keys, values(len * kv_dim, 13).into_iter().map(T::from_f32).collect())
}

fn run<T: CacheValue>(c: &mut Criterion, kind: &str) {
    for &(name, heads, kv_heads, hd) in SHAPES {
        let group_size = heads / kv_heads;
        let mut group = c.benchmark_group(format!("attention/{name}_{heads}q_{kv_heads}kv_{hd}"));
        group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        for len in [128usize, 512, 2048] {
            let (keys, vals) = cache::<T>(len, kv_heads, hd);
            let q = values(heads * hd, 17);
            let mut out = vec![0f32; heads * hd];
            let mut scores = Vec::new();
            let mut parts = vec![SoftmaxPart::EMPTY; group_size];
            group.throughput(Throughput::Bytes(((keys.len() + vals.len()) * std::mem::size_of::<T>()) as u64));
            group.bench_function(BenchmarkId::new(kind, len), |b| {
                b.iter(|| {
                    for h in 0..kv_heads {
                        let kv = KvHead { keys: &keys, values: &vals, kv_heads, head_dim: hd, kv_head: h };
                        let width = group_size * hd;
                        let o = &mut out[h * width..][..width];
                        attend_group(&kv, &q[h * width..][..width], 0.125, 0..len, &mut scores, o, &mut parts)
                            .expect("in range");
                        finish(o, &parts);
                    }
                    black_box(&out);
                })
            });
        }
        group.finish();
    }
}

fn attention(c: &mut Criterion) {
    run::<f32>(c, "f32_cache");
    run::<f16>(c, "f16_cache");
}

criterion_group!(benches, attention);
criterion_main!(benches);
