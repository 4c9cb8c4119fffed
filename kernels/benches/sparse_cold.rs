//! Cold-cache GEMV benchmark, as in decode: per shape, enough distinct matrices (at least
//! 64, at least 32 MiB per set) that each product reads its weights from L3 rather than L2,
//! cycled through one after another (a matrix larger than that, as at Llama-3-8B's shapes, is
//! read from L3 on every product by itself). Per GEMV time of the dense product against the
//! input-sparse one (TEAL: inputs of magnitude above the s-quantile) and the output-sparse
//! `gemv_rows` (a spread-out (1 - s) of the rows) at sparsity s in {0.25, 0.5, 0.75},
//! SmolLM2-135M and Llama-3-8B MLP shapes, in both precisions: Q4_1 (`matmul_q4_1` with the
//! activations pre-quantized, and with the quantization, against `gemv_input_sparse_q4_1`)
//! and f32 (`matmul_f32` against `gemv_input_sparse_f32`).
//!
//! The variants are timed alternately (one pass over the whole set each, round after round)
//! and the median GEMV time is reported, so that a machine shared with other jobs affects
//! them alike and preempted products drop out. `cargo bench -p sieve-kernels --bench sparse_cold [filter]` (`SIEVE_THREADS=1`
//! for one thread, `SIEVE_COLD_ROUNDS` rounds, default 21, `SIEVE_COLD_COPIES=n` n copies,
//! `SIEVE_COLD_PRECISION=q4_1` or `f32` for one precision only).

use std::hint::black_box;
use std::time::Instant;

use sieve_kernels::sparse::{InputMajorF32, gemv_input_sparse_f32};
use sieve_kernels::sparse::{RowMajor, SparseScratch, Vector, gemv_rows};
use sieve_kernels::testdata::values;
use sieve_kernels::{ActsQ8, InputMajorQ4_1, MatF32, MatQ4_1, gemv_input_sparse_q4_1, matmul_f32, matmul_q4_1};

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

/// Each x's threshold that masks a fraction `s` of its channels.
fn thresholds(xs: &[Vec<f32>], s: f64) -> Vec<f32> {
    xs.iter()
        .map(|x| {
            let mut mags: Vec<f32> = x.iter().map(|v| v.abs()).collect();
            mags.sort_by(f32::total_cmp);
            mags[((s * x.len() as f64) as usize).min(x.len() - 1)]
        })
        .collect()
}

/// The rows an output-sparse product keeps at sparsity `s`: spread over the matrix.
fn kept_rows(outputs: usize, s: f64) -> Vec<u32> {
    let keep = ((1.0 - s) * outputs as f64) as usize;
    (0..outputs as u32).filter(|r| (*r as usize * 7919) % outputs < keep).collect()
}

/// Median µs of each of `variants`, timed alternately: `run(v, k, x)` runs variant `v` on copy
/// `k` with input vector `x`, one pass over the copies per variant per round (round 0 warms up:
/// page faults, pool start). The input moves on with every pass, so that no product reads the
/// active rows the pass before it just read (with one copy, as at Llama-3-8B's shapes, the
/// sparse variants otherwise found each other's rows in cache).
fn time_variants(rounds: usize, copies: usize, variants: usize, mut run: impl FnMut(usize, usize, usize)) -> Vec<f64> {
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds * copies); variants];
    for round in 0..rounds + 1 {
        for (v, t) in times.iter_mut().enumerate() {
            for k in 0..copies {
                let x = (k + round * variants + v) % XS;
                let start = Instant::now();
                run(v, k, x);
                if round > 0 {
                    t.push(start.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
    }
    times.iter_mut().map(|t| median(t)).collect()
}

/// Copies of a matrix of `bytes` so that a set reads from L3 (see the module comment).
fn copies_for(bytes: usize, fixed: Option<usize>) -> usize {
    fixed.unwrap_or(if bytes >= MIN_SET_BYTES { 1 } else { MIN_COPIES.max(MIN_SET_BYTES.div_ceil(bytes)) })
}

/// The Q4_1 products of one shape: dense (pre-quantized activations, and quantizing them),
/// then input-sparse and output-sparse at each of [`SPARSITY`].
fn q4_1_shape(label: &str, outputs: usize, inputs: usize, rounds: usize, fixed: Option<usize>) {
    let copies = copies_for(outputs * inputs / 32 * 24, fixed);
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
    let ths: Vec<Vec<f32>> = SPARSITY.iter().map(|&s| thresholds(&xs, s)).collect();
    let row_lists: Vec<Vec<u32>> = SPARSITY.iter().map(|&s| kept_rows(outputs, s)).collect();
    let mut out = vec![0f32; outputs];
    let mut acts2 = ActsQ8::default();
    let mut scratch = SparseScratch::default();
    let med = time_variants(rounds, copies, 2 + 2 * SPARSITY.len(), |v, k, x| {
        match v {
            0 => matmul_q4_1(black_box(&dense[k]), &acts[x], &mut out).expect("dense"),
            1 => {
                acts2.quantize_from(black_box(&xs[x]), 1, inputs).expect("acts");
                matmul_q4_1(black_box(&dense[k]), &acts2, &mut out).expect("dense")
            }
            v if v >= 2 + SPARSITY.len() => {
                let rows = &row_lists[v - 2 - SPARSITY.len()];
                let vector = Vector::Q8(&acts[x]);
                gemv_rows(&RowMajor::Q4(black_box(&dense[k])), &vector, rows, &mut out[..rows.len()]).expect("rows")
            }
            _ => {
                let th = ths[v - 2][x];
                gemv_input_sparse_q4_1(black_box(&sparse[k]), &xs[x], th, &mut out, &mut scratch)
                    .map(|_| ())
                    .expect("sparse")
            }
        }
        black_box(&mut out);
    });
    print_rows(label, med[0], Some(med[1]), &med[2..]);
}

/// The f32 products of one shape: dense, then input-sparse and output-sparse at each of
/// [`SPARSITY`].
fn f32_shape(label: &str, outputs: usize, inputs: usize, rounds: usize, fixed: Option<usize>) {
    let copies = copies_for(outputs * inputs * 4, fixed);
    let dense: Vec<MatF32> = (0..copies)
        .map(|k| MatF32::new(outputs, inputs, values(outputs * inputs, 1000 + k as u64)).expect("f32"))
        .collect();
    let sparse: Vec<InputMajorF32> = dense.iter().map(InputMajorF32::from_row_major).collect();
    let xs: Vec<Vec<f32>> = (0..XS).map(|k| values(inputs, 7 + k as u64)).collect();
    let ths: Vec<Vec<f32>> = SPARSITY.iter().map(|&s| thresholds(&xs, s)).collect();
    let row_lists: Vec<Vec<u32>> = SPARSITY.iter().map(|&s| kept_rows(outputs, s)).collect();
    let mut out = vec![0f32; outputs];
    let med = time_variants(rounds, copies, 1 + 2 * SPARSITY.len(), |v, k, x| {
        match v {
            0 => matmul_f32(black_box(&dense[k]), &xs[x], 1, &mut out).expect("dense"),
            v if v > SPARSITY.len() => {
                let rows = &row_lists[v - 1 - SPARSITY.len()];
                gemv_rows(&RowMajor::F32(black_box(&dense[k])), &Vector::F32(&xs[x]), rows, &mut out[..rows.len()])
                    .expect("rows")
            }
            _ => gemv_input_sparse_f32(black_box(&sparse[k]), &xs[x], ths[v - 1][x], &mut out)
                .map(|_| ())
                .expect("sparse"),
        }
        black_box(&mut out);
    });
    print_rows(label, med[0], None, &med[1..]);
}

/// One table row per sparsity: `sparse` holds the input-sparse medians, then the output-sparse.
fn print_rows(label: &str, dense: f64, dense_quantizing: Option<f64>, sparse: &[f64]) {
    let n = SPARSITY.len();
    for (i, &s) in SPARSITY.iter().enumerate() {
        let (sp, rows) = (sparse[i], sparse[n + i]);
        let (dq, vs_dq) = match dense_quantizing {
            Some(d) => (format!("{d:.2}"), format!("{:.2}x", d / sp)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<28} {:>8.2} {:>8} {:>5.2} {:>9.2} {:>8.2}x {:>9} {:>9.2} {:>8.2}x",
            if i == 0 { label } else { "" },
            dense,
            dq,
            s,
            sp,
            dense / sp,
            vs_dq,
            rows,
            dense / rows
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters shapes by name.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let rounds: usize = std::env::var("SIEVE_COLD_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(21);
    // `SIEVE_COLD_COPIES=1` measures the same products hot in cache instead.
    let copies: Option<usize> = std::env::var("SIEVE_COLD_COPIES").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0);
    let precision = std::env::var("SIEVE_COLD_PRECISION").unwrap_or_default();
    let threads = sieve_kernels::pool::global().threads();
    println!("sparse_cold: {threads} thread(s), {rounds} rounds, median µs per GEMV");
    println!(
        "{:<28} {:>8} {:>8} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "shape", "dense", "dense+q", "s", "in-sp", "vs dense", "vs d+q", "out-sp", "vs dense"
    );
    for (tag, f32_precision) in [("q4_1", false), ("f32", true)] {
        if !precision.is_empty() && precision != tag {
            continue;
        }
        for &(name, outputs, inputs) in SHAPES {
            if filter.as_deref().is_some_and(|f| !name.contains(f)) {
                continue;
            }
            let label = format!("{tag} {name} {outputs}x{inputs}");
            if f32_precision {
                f32_shape(&label, outputs, inputs, rounds, copies);
            } else {
                q4_1_shape(&label, outputs, inputs, rounds, copies);
            }
        }
    }
}
