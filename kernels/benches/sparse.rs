//! Sparse GEMV benchmarks against the dense GEMV of the same precision (int8, Q4_1 and f32),
//! at SmolLM2 shapes and at Llama-3-8B's 4096x14336 / 14336x4096, sparsity s in
//! {0, .25, .5, .75, .9}. Ideal speedup over dense: 1 / (1 - s). The weights here stay hot in
//! cache where they fit; `sparse_cold` times the same kernels with the weights read from L3
//! or memory, as in decode.
//!
//! `cargo bench -p sieve-kernels --bench sparse [filter]`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sieve_kernels::sparse::{
    InputMajorF32, InputMajorQ8, RowMajor, SparseScratch, Vector, gemv_input_sparse_f32, gemv_input_sparse_q8,
    gemv_rows,
};
use sieve_kernels::testdata::values;
use sieve_kernels::{
    ActsQ8, InputMajorQ4_1, MatF32, MatQ4_1, MatQ8, gemv_input_sparse_q4_1, matmul_f32, matmul_q4_1, matmul_q8,
};

/// (name, outputs, inputs)
const SHAPES: &[(&str, usize, usize)] =
    &[("smol_up", 1536, 576), ("smol_down", 576, 1536), ("l3_8b_up", 14336, 4096), ("l3_8b_down", 4096, 14336)];
const SPARSITY: &[f64] = &[0.0, 0.25, 0.5, 0.75, 0.9];

fn sparse(c: &mut Criterion) {
    for &(name, outputs, inputs) in SHAPES {
        let data = values(outputs * inputs, (outputs + inputs) as u64);
        let x = values(inputs, 11);
        let mut acts = ActsQ8::default();
        acts.quantize_from(&x, 1, inputs).expect("acts");
        let wq = MatQ8::quantize(outputs, inputs, &data).expect("q8");
        let w4 = MatQ4_1::quantize(outputs, inputs, &data).expect("q4_1");
        let wt = InputMajorQ8::from_row_major(outputs, inputs, &data).expect("input-major");
        let wf = MatF32::new(outputs, inputs, data.clone()).expect("f32");
        let wft = InputMajorF32::from_row_major(&wf);
        let start = std::time::Instant::now();
        let w4t = InputMajorQ4_1::from_row_major(&w4).expect("input-major q4_1");
        eprintln!("{name}: InputMajorQ4_1 built in {:?}, {} bytes", start.elapsed(), w4t.bytes());
        let mut out = vec![0f32; outputs];
        let mut group = c.benchmark_group(format!("sparse/{name}_{outputs}x{inputs}"));
        group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        group.bench_function("dense_q8", |b| b.iter(|| matmul_q8(black_box(&wq), &acts, &mut out).expect("q8")));
        group.bench_function("dense_q4_1", |b| b.iter(|| matmul_q4_1(black_box(&w4), &acts, &mut out).expect("q4")));
        group.bench_function("dense_f32", |b| b.iter(|| matmul_f32(black_box(&wf), &x, 1, &mut out).expect("f32")));
        // The dense GEMV with the activation quantization the sparse kernels include.
        let mut acts2 = ActsQ8::default();
        group.bench_function("dense_q4_1_with_quantize", |b| {
            b.iter(|| {
                acts2.quantize_from(black_box(&x), 1, inputs).expect("acts");
                matmul_q4_1(black_box(&w4), &acts2, &mut out).expect("q4")
            })
        });
        let mut mags: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        mags.sort_by(f32::total_cmp);
        let mut scratch = SparseScratch::default();
        for &s in SPARSITY {
            let t = if s == 0.0 { 0.0 } else { mags[((s * inputs as f64) as usize).min(inputs - 1)] };
            group.bench_function(BenchmarkId::new("input_sparse_q8", s), |b| {
                b.iter(|| gemv_input_sparse_q8(black_box(&wt), &x, t, &mut out, &mut scratch).expect("sparse"))
            });
            group.bench_function(BenchmarkId::new("input_sparse_q4_1", s), |b| {
                b.iter(|| gemv_input_sparse_q4_1(black_box(&w4t), &x, t, &mut out, &mut scratch).expect("sparse"))
            });
            group.bench_function(BenchmarkId::new("input_sparse_f32", s), |b| {
                b.iter(|| gemv_input_sparse_f32(black_box(&wft), &x, t, &mut out).expect("sparse"))
            });
            let keep = ((1.0 - s) * outputs as f64) as usize;
            let rows: Vec<u32> = (0..outputs as u32).filter(|r| (*r as usize * 7919) % outputs < keep).collect();
            let mut part = vec![0f32; rows.len()];
            group.bench_function(BenchmarkId::new("output_sparse_q4_1", s), |b| {
                b.iter(|| gemv_rows(&RowMajor::Q4(black_box(&w4)), &Vector::Q8(&acts), &rows, &mut part).expect("rows"))
            });
            group.bench_function(BenchmarkId::new("output_sparse_f32", s), |b| {
                b.iter(|| gemv_rows(&RowMajor::F32(black_box(&wf)), &Vector::F32(&x), &rows, &mut part).expect("rows"))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, sparse);
criterion_main!(benches);
