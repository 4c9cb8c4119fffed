//! Cold-cache GEMV benchmark, as in decode: per shape, enough distinct matrices (at least
//! 64, at least 32 MiB per set) that each product reads its weights from L3 rather than L2,
//! cycled through one after another (a matrix larger than that, as at Llama-3-8B's shapes, is
//! read from L3 on every product by itself). Per GEMV time of the dense `matmul_q4_1`
//! (activations pre-quantized, and with the quantization) against `gemv_input_sparse_q4_1`
//! (TEAL: inputs of magnitude above the s-quantile) and the output-sparse `gemv_rows` (a
//! spread-out (1 - s) of the rows) at sparsity s in {0.25, 0.5, 0.75}, SmolLM2-135M and
//! Llama-3-8B MLP shapes.
//!
//! The variants are timed alternately (one pass over the whole set each, round after round)
//! and the median GEMV time is reported, so that a machine shared with other jobs affects
//! them alike and preempted products drop out. `cargo bench -p sieve-kernels --bench sparse_cold [filter]` (`SIEVE_THREADS=1`
//! for one thread, `SIEVE_COLD_ROUNDS` rounds, default 21, `SIEVE_COLD_COPIES=n` n copies).

use std::hint::black_box;
use std::time::Instant;

use sieve_kernels::sparse::{RowMajor, SparseScratch, Vector, gemv_rows};
use sieve_kernels::testdata::values;
use sieve_kernels::{ActsQ8, InputMajorQ4_1, MatQ4_1, gemv_input_sparse_q4_1, matmul_q4_1};

/// (name, outputs, inputs)
const SHAPES: &[(&str, usize, usize)] = &[
    ("gate_up", 1536, 576),
    ("down", 576, 1536),
    ("q_o", 576, 576),
    ("k_v", 192, 576),
    ("l3_8b_up", 14336, 4096),
    ("l3_8b_down", 4096, 14336),
];
const SPARSITY: &[f64] = &[0.25, 0.5, 0.75];
/// Distinct input vectors, cycled with the matrices.
const XS: usize = 8;
const MIN_COPIES: usize = 64;
const MIN_SET_BYTES: usize = 32 << 20;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters shapes by name.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let rounds: usize = std::env::var("SIEVE_COLD_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(21);
    // `SIEVE_COLD_COPIES=1` measures the same products hot in cache instead.
    let copies: Option<usize> = std::env::var("SIEVE_COLD_COPIES").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0);
    let threads = sieve_kernels::pool::global().threads();
    println!("sparse_cold: {threads} thread(s), {rounds} rounds, median µs per GEMV");
    println!(
        "{:<24} {:>8} {:>8} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "shape", "dense", "dense+q", "s", "in-sp", "vs dense", "vs d+q", "out-sp", "vs dense"
    );
    for &(name, outputs, inputs) in SHAPES {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let bytes = outputs * inputs / 32 * 24;
        let copies =
            copies.unwrap_or(if bytes >= MIN_SET_BYTES { 1 } else { MIN_COPIES.max(MIN_SET_BYTES.div_ceil(bytes)) });
        let dense: Vec<MatQ4_1> = (0..copies)
            .map(|k| MatQ4_1::quantize(outputs, inputs, &values(outputs * inputs, 1000 + k as u64)).expect("q4_1"))
            .collect();
        let sparse: Vec<InputMajorQ4_1> =
            dense.iter().map(|w| InputMajorQ4_1::from_row_major(w).expect("input-major")).collect();
        let xs: Vec<Vec<f32>> = (0..XS).map(|k| values(inputs, 7 + k as u64)).collect();
        let acts: Vec<ActsQ8> = xs
            .iter()
            .map(|x| {
                let mut a = ActsQ8::default();
                a.quantize_from(x, 1, inputs).expect("acts");
                a
            })
            .collect();
        // Per sparsity, each x's threshold that masks that fraction of its channels.
        let thresholds: Vec<Vec<f32>> = SPARSITY
            .iter()
            .map(|&s| {
                xs.iter()
                    .map(|x| {
                        let mut mags: Vec<f32> = x.iter().map(|v| v.abs()).collect();
                        mags.sort_by(f32::total_cmp);
                        mags[((s * inputs as f64) as usize).min(inputs - 1)]
                    })
                    .collect()
            })
            .collect();
        // Per sparsity, the rows an output-sparse product keeps: spread over the matrix.
        let row_lists: Vec<Vec<u32>> = SPARSITY
            .iter()
            .map(|&s| {
                let keep = ((1.0 - s) * outputs as f64) as usize;
                (0..outputs as u32).filter(|r| (*r as usize * 7919) % outputs < keep).collect()
            })
            .collect();
        let mut out = vec![0f32; outputs];
        let mut acts2 = ActsQ8::default();
        let mut scratch = SparseScratch::default();
        // Variant 0: dense, 1: dense with quantize, then input-sparse and output-sparse at
        // each of SPARSITY.
        let variants = 2 + 2 * SPARSITY.len();
        let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds * copies); variants];
        for round in 0..rounds + 1 {
            for (v, t) in times.iter_mut().enumerate() {
                for k in 0..copies {
                    let start = Instant::now();
                    let x = k % XS;
                    match v {
                        0 => matmul_q4_1(black_box(&dense[k]), &acts[x], &mut out).expect("dense"),
                        1 => {
                            acts2.quantize_from(black_box(&xs[x]), 1, inputs).expect("acts");
                            matmul_q4_1(black_box(&dense[k]), &acts2, &mut out).expect("dense")
                        }
                        v if v >= 2 + SPARSITY.len() => {
                            let rows = &row_lists[v - 2 - SPARSITY.len()];
                            let vector = Vector::Q8(&acts[x]);
                            gemv_rows(&RowMajor::Q4(black_box(&dense[k])), &vector, rows, &mut out[..rows.len()])
                                .expect("rows")
                        }
                        _ => {
                            let th = thresholds[v - 2][x];
                            gemv_input_sparse_q4_1(black_box(&sparse[k]), &xs[x], th, &mut out, &mut scratch)
                                .map(|_| ())
                                .expect("sparse")
                        }
                    }
                    black_box(&mut out);
                    // Round 0 warms up (page faults, pool start).
                    if round > 0 {
                        t.push(start.elapsed().as_secs_f64() * 1e6);
                    }
                }
            }
        }
        let med: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
        let label = format!("{name} {outputs}x{inputs}");
        for (i, &s) in SPARSITY.iter().enumerate() {
            let (sp, rows) = (med[2 + i], med[2 + SPARSITY.len() + i]);
            println!(
                "{:<24} {:>8.2} {:>8.2} {:>5.2} {:>9.2} {:>8.2}x {:>8.2}x {:>9.2} {:>8.2}x",
                if i == 0 { label.as_str() } else { "" },
                med[0],
                med[1],
                s,
                sp,
                med[0] / sp,
                med[1] / sp,
                rows,
                med[0] / rows
            );
        }
    }
}
