//! Dense product benchmarks at the shapes of SmolLM2-135M (hidden 576, MLP 1536, vocab
//! 49152) and Llama-3-8B (hidden 4096, MLP 14336): GEMV (n = 1, decode) and GEMM (n = 256,
//! prefill; n = 16 for the 8B shapes), f32, q8 and q4_1 (the fast path's format for the
//! GGUF's Q4_1 tensors). Throughput is in weight bytes, so GEMV
//! numbers read directly as effective memory bandwidth.
//!
//! `cargo bench -p sieve-kernels --bench dense [filter]`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sieve_kernels::testdata::values;
use sieve_kernels::{ActsQ8, MatF32, MatQ4_1, MatQ8, matmul_f32, matmul_q4_1, matmul_q8};

/// Last-level cache of the machines this runs on (32 MiB L3 on the dev EPYC), generously.
const LLC_BYTES: usize = 48 << 20;

/// (name, rows, cols, token counts)
const SHAPES: &[(&str, usize, usize, &[usize])] = &[
    ("smol_qkvo", 576, 576, &[1, 256]),
    ("smol_kv", 192, 576, &[1, 256]),
    ("smol_up", 1536, 576, &[1, 256]),
    ("smol_down", 576, 1536, &[1, 256]),
    ("smol_lm_head", 49152, 576, &[1, 256]),
    ("l3_8b_up", 14336, 4096, &[1, 16]),
    ("l3_8b_down", 4096, 14336, &[1, 16]),
];

fn dense(c: &mut Criterion) {
    for &(name, rows, cols, ns) in SHAPES {
        let data = values(rows * cols, (rows + cols) as u64);
        let wq = MatQ8::quantize(rows, cols, &data).expect("q8 shape");
        let w4 = MatQ4_1::quantize(rows, cols, &data).expect("q4_1 shape");
        let wf = MatF32::new(rows, cols, data).expect("f32 shape");
        let mut group = c.benchmark_group(format!("dense/{name}_{rows}x{cols}"));
        group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        for &n in ns {
            let x = values(n * cols, 7);
            let mut acts = ActsQ8::default();
            acts.quantize_from(&x, n, cols).expect("acts shape");
            let mut out = vec![0f32; n * rows];
            group.throughput(Throughput::Bytes(wq.bytes() as u64));
            group.bench_function(BenchmarkId::new("q8", n), |b| {
                b.iter(|| matmul_q8(black_box(&wq), black_box(&acts), &mut out).expect("q8 product"))
            });
            if n == 1 && wq.bytes() < LLC_BYTES {
                // Decode streams every layer's weights from memory: cycle through copies
                // that together overflow the last-level cache.
                let copies: Vec<MatQ8> = (0..(2 * LLC_BYTES).div_ceil(wq.bytes())).map(|_| wq.clone()).collect();
                let mut i = 0;
                group.bench_function(BenchmarkId::new("q8_cold", n), |b| {
                    b.iter(|| {
                        i = (i + 1) % copies.len();
                        matmul_q8(black_box(&copies[i]), black_box(&acts), &mut out).expect("q8 product")
                    })
                });
            }
            group.throughput(Throughput::Bytes(w4.bytes() as u64));
            group.bench_function(BenchmarkId::new("q4_1", n), |b| {
                b.iter(|| matmul_q4_1(black_box(&w4), black_box(&acts), &mut out).expect("q4_1 product"))
            });
            group.throughput(Throughput::Bytes(wf.bytes() as u64));
            group.bench_function(BenchmarkId::new("f32", n), |b| {
                b.iter(|| matmul_f32(black_box(&wf), black_box(&x), n, &mut out).expect("f32 product"))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, dense);
criterion_main!(benches);
