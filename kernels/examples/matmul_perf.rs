//! Quick throughput report for the dense products (criterion has the careful numbers):
//! q8/f32 GEMV effective bandwidth, hot (one matrix, cache-resident when it fits) and cold
//! (cycling through enough copies to exceed the last-level cache, as decode does across
//! layers), and GEMM compute throughput in GMAC/s.
//!
//! `cargo run --release -p sieve-kernels --example matmul_perf`; `PERF_ONLY=gemv|gemm|q8gemm`
//! runs a part, `PERF_ONLY=one PERF_SHAPE=rows,cols,n` one q8 GEMM in a loop (for `perf`).
//! `SIEVE_THREADS` sets the pool size.

use std::hint::black_box;
use std::time::Instant;

use sieve_kernels::testdata::values;
use sieve_kernels::{ActsQ8, MatF32, MatQ8, matmul_f32, matmul_q8};

/// Median seconds per call over `reps` calls of `f` (after one warm-up call).
fn time<F: FnMut(usize)>(reps: usize, mut f: F) -> f64 {
    f(0);
    let mut ts: Vec<f64> = (0..reps)
        .map(|i| {
            let t = Instant::now();
            f(i + 1);
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[reps / 2]
}

fn main() -> Result<(), sieve_kernels::KernelError> {
    let only = std::env::var("PERF_ONLY").unwrap_or_default();
    if only == "one" {
        // One q8 GEMM shape, many times: for profilers.
        // PERF_SHAPE=rows,cols,n (default 1536,576,256).
        let shape: Vec<usize> =
            std::env::var("PERF_SHAPE").unwrap_or_default().split(',').filter_map(|v| v.parse().ok()).collect();
        let (rows, cols, n) = match shape[..] {
            [r, c, n] => (r, c, n),
            _ => (1536, 576, 256),
        };
        let w = MatQ8::quantize(rows, cols, &values(rows * cols, 3))?;
        let mut acts = ActsQ8::default();
        acts.quantize_from(&values(n * cols, 5), n, cols)?;
        let mut out = vec![0f32; rows * n];
        let reps = (20_000_000_000 / (rows * cols * n)).clamp(5, 500);
        let t = time(reps, |_| matmul_q8(&w, &acts, &mut out).unwrap_or(()));
        println!("q8  GEMM  {rows}x{cols} n={n} {:8.2} ms {:7.1} GMAC/s", t * 1e3, (rows * cols * n) as f64 / t / 1e9);
        return Ok(());
    }
    println!("pool threads {}, isa {}", sieve_kernels::pool::global().threads(), sieve_kernels::isa::active().name());
    let llc = 64usize << 20;
    let gemv: &[(usize, usize)] = if only.contains("gemm") {
        &[]
    } else {
        &[(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576), (14336, 4096), (4096, 14336)]
    };
    for &(rows, cols) in gemv {
        let data = values(rows * cols, (rows * 31 + cols) as u64);
        let base = MatQ8::quantize(rows, cols, &data)?;
        let copies = llc.div_ceil(base.bytes()).max(1);
        let mats: Vec<MatQ8> = (0..copies).map(|_| base.clone()).collect();
        let mut acts = ActsQ8::default();
        acts.quantize_from(&values(cols, 7), 1, cols)?;
        let mut out = vec![0f32; rows];
        let reps = (2_000_000_000 / base.bytes()).clamp(5, 2000);
        let hot = time(reps, |_| matmul_q8(black_box(&mats[0]), &acts, &mut out).unwrap_or(()));
        let cold = time(reps, |i| matmul_q8(black_box(&mats[i % copies]), &acts, &mut out).unwrap_or(()));
        let gb = base.bytes() as f64 / 1e9;
        println!(
            "q8  GEMV {rows:>5}x{cols:<5} {:>8.1} KB  hot {:7.1} us {:6.1} GB/s   cold {:7.1} us {:6.1} GB/s",
            base.bytes() as f64 / 1e3,
            hot * 1e6,
            gb / hot,
            cold * 1e6,
            gb / cold
        );
        drop(mats);
        if rows * cols <= 1536 * 576 {
            let w = MatF32::new(rows, cols, data)?;
            let x = values(cols, 9);
            let hot = time(reps, |_| matmul_f32(black_box(&w), &x, 1, &mut out).unwrap_or(()));
            println!(
                "f32 GEMV {rows:>5}x{cols:<5} {:>8.1} KB  hot {:7.1} us {:6.1} GB/s",
                w.bytes() as f64 / 1e3,
                hot * 1e6,
                w.bytes() as f64 / 1e9 / hot
            );
        }
    }
    let gemm: &[(usize, usize, usize)] =
        if only == "gemv" { &[] } else { &[(1536, 576, 256), (576, 1536, 256), (576, 576, 256), (14336, 4096, 16)] };
    for &(rows, cols, n) in gemm {
        let data = values(rows * cols, 3);
        let w = MatQ8::quantize(rows, cols, &data)?;
        let x = values(n * cols, 5);
        let mut acts = ActsQ8::default();
        acts.quantize_from(&x, n, cols)?;
        let mut out = vec![0f32; rows * n];
        let macs = (rows * cols * n) as f64;
        let t = time(10, |_| matmul_q8(&w, &acts, &mut out).unwrap_or(()));
        println!("q8  GEMM {rows:>5}x{cols:<5} n={n:<4} {:8.2} ms {:7.1} GMAC/s", t * 1e3, macs / t / 1e9);
        if only == "q8gemm" {
            continue;
        }
        let wf = MatF32::new(rows, cols, data)?;
        let t = time(5, |_| matmul_f32(&wf, &x, n, &mut out).unwrap_or(()));
        println!("f32 GEMM {rows:>5}x{cols:<5} n={n:<4} {:8.2} ms {:7.1} GMAC/s", t * 1e3, macs / t / 1e9);
    }
    Ok(())
}
