//! Cold-cache benchmark of one SwiGLU MLP at SmolLM2-135M shapes, as decode runs it: dense
//! (gate and up GEMVs, silu·mul, down GEMV) against CATS at 50% (`swiglu_gated`, then the
//! input-sparse down over the zeros it leaves). Enough layer copies (64) that weights come
//! from L3, cycled; variants alternated round after round; median µs per MLP. Parts are
//! timed separately too, to show where the sparse path loses to the ideal.
//! `cargo bench -p sieve-kernels --bench mlp_cold` (`SIEVE_COLD_ROUNDS`, default 15).

use std::hint::black_box;
use std::time::Instant;

use sieve_kernels::sparse::{RowMajor, SparseScratch, Vector, gemv_rows, swiglu_gated};
use sieve_kernels::testdata::values;
use sieve_kernels::{ActsQ8, InputMajorQ4_1, MatQ4_1, gemv_input_sparse_q4_1, matmul_q4_1, ops};

const D: usize = 576;
const F: usize = 1536;
const COPIES: usize = 64;
const XS: usize = 8;

struct Layer {
    gate: MatQ4_1,
    up: MatQ4_1,
    down: MatQ4_1,
    down_t: InputMajorQ4_1,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("SIEVE_COLD_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
    let layers: Vec<Layer> = (0..COPIES as u64)
        .map(|k| {
            let gate = MatQ4_1::quantize(F, D, &values(F * D, 10 + 3 * k)).expect("gate");
            let up = MatQ4_1::quantize(F, D, &values(F * D, 11 + 3 * k)).expect("up");
            let down = MatQ4_1::quantize(D, F, &values(D * F, 12 + 3 * k)).expect("down");
            let down_t = InputMajorQ4_1::from_row_major(&down).expect("input-major");
            Layer { gate, up, down, down_t }
        })
        .collect();
    let xs: Vec<Vec<f32>> = (0..XS).map(|k| values(D, 7 + k as u64)).collect();
    // Per x (and layer parity, enough for a typical value), the |silu(g)| median: CATS at 50%.
    let thresholds: Vec<f32> = xs
        .iter()
        .map(|x| {
            let mut a = ActsQ8::default();
            a.quantize_from(x, 1, D).expect("acts");
            let mut g = vec![0f32; F];
            matmul_q4_1(&layers[0].gate, &a, &mut g).expect("gate");
            let mut m: Vec<f32> = g.iter().map(|&v| ops::silu(v).abs()).collect();
            m.sort_by(f32::total_cmp);
            m[F / 2]
        })
        .collect();
    let names = [
        "dense",
        "cats",
        "cats 2-pass",
        "dense gate+up",
        "gated front",
        "dense down",
        "sparse down",
        "gated keep all",
        "gated keep none",
        "dense gate",
        "rows all",
        "rows first half",
        "rows even",
        "rows random half",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut acts = ActsQ8::default();
    let (mut g, mut u, mut h, mut out) = (vec![0f32; F], vec![0f32; F], vec![0f32; F], vec![0f32; D]);
    let mut rows: Vec<u32> = Vec::with_capacity(F);
    let mut kept_h = vec![0f32; F];
    let mut scratch = SparseScratch::default();
    let random_half: Vec<u32> =
        values(F, 99).iter().enumerate().filter(|(_, v)| **v > 0.0).map(|(i, _)| i as u32).collect();
    let row_sets: Vec<Vec<u32>> =
        vec![(0..F as u32).collect(), (0..F as u32 / 2).collect(), (0..F as u32).step_by(2).collect(), random_half];
    let mut acts_h = ActsQ8::default();
    for round in 0..=rounds {
        for (v, t) in times.iter_mut().enumerate() {
            for (k, w) in layers.iter().enumerate() {
                let x = &xs[k % XS];
                let th = thresholds[k % XS];
                let start = Instant::now();
                match v {
                    0 | 3 => {
                        acts.quantize_from(black_box(x), 1, D).expect("acts");
                        matmul_q4_1(&w.gate, &acts, &mut g).expect("gate");
                        matmul_q4_1(&w.up, &acts, &mut u).expect("up");
                        if v == 0 {
                            ops::silu_mul(&mut g, &u);
                            acts_h.quantize_from(&g, 1, F).expect("acts");
                            matmul_q4_1(&w.down, &acts_h, &mut out).expect("down");
                        }
                    }
                    1 | 4 => {
                        acts.quantize_from(black_box(x), 1, D).expect("acts");
                        let vector = Vector::Q8(&acts);
                        swiglu_gated(&RowMajor::Q4(&w.gate), &RowMajor::Q4(&w.up), &vector, th, &mut h).expect("gated");
                        if v == 1 {
                            gemv_input_sparse_q4_1(&w.down_t, &h, 0.0, &mut out, &mut scratch).expect("down");
                        }
                    }
                    2 => {
                        acts.quantize_from(black_box(x), 1, D).expect("acts");
                        matmul_q4_1(&w.gate, &acts, &mut g).expect("gate");
                        ops::silu_in_place(&mut g);
                        rows.clear();
                        rows.extend((0..F as u32).filter(|&i| g[i as usize].abs() > th));
                        let vector = Vector::Q8(&acts);
                        gemv_rows(&RowMajor::Q4(&w.up), &vector, &rows, &mut kept_h[..rows.len()]).expect("up");
                        h.fill(0.0);
                        for (&r, &uv) in rows.iter().zip(&kept_h) {
                            h[r as usize] = g[r as usize] * uv;
                        }
                        gemv_input_sparse_q4_1(&w.down_t, &h, 0.0, &mut out, &mut scratch).expect("down");
                    }
                    5 => {
                        acts_h.quantize_from(black_box(&h), 1, F).expect("acts");
                        matmul_q4_1(&w.down, &acts_h, &mut out).expect("down");
                    }
                    7 | 8 => {
                        acts.quantize_from(black_box(x), 1, D).expect("acts");
                        let vector = Vector::Q8(&acts);
                        let th = if v == 7 { 0.0 } else { f32::MAX };
                        swiglu_gated(&RowMajor::Q4(&w.gate), &RowMajor::Q4(&w.up), &vector, th, &mut g).expect("gated");
                    }
                    9 => {
                        acts.quantize_from(black_box(x), 1, D).expect("acts");
                        matmul_q4_1(&w.gate, &acts, &mut g).expect("gate");
                    }
                    10..=13 => {
                        let list = &row_sets[v - 10];
                        acts.quantize_from(black_box(x), 1, D).expect("acts");
                        let vector = Vector::Q8(&acts);
                        gemv_rows(&RowMajor::Q4(&w.up), &vector, list, &mut kept_h[..list.len()]).expect("rows");
                    }
                    _ => {
                        // h holds CATS's output of the previous variant's last layer: ~50% zeros.
                        gemv_input_sparse_q4_1(&w.down_t, black_box(&h), 0.0, &mut out, &mut scratch).expect("down");
                    }
                }
                black_box(&mut out);
                if round > 0 {
                    t.push(start.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
    }
    let threads = sieve_kernels::pool::global().threads();
    println!("mlp_cold: {threads} thread(s), {rounds} rounds x {COPIES} layers, median µs");
    for (name, t) in names.iter().zip(times.iter_mut()) {
        println!("{name:<16} {:>8.2}", median(t));
    }
}
