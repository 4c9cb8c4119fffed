//! Memory bandwidth of this machine, to judge the GEMV numbers against:
//! copy (read + write, counted as bytes read + bytes written), and read-only (a sum over a
//! buffer much larger than the last-level cache), on 1 and on all rayon threads.
//!
//! `cargo run --release -p sieve-kernels --example bandwidth [MiB]`

use std::hint::black_box;
use std::time::Instant;

use rayon::prelude::*;

fn best_of<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn read_sum(x: &[u64]) -> u64 {
    // Eight independent lanes so the loop is load-bound, not add-latency-bound.
    let mut acc = [0u64; 8];
    for c in x.chunks_exact(8) {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    acc.iter().fold(0, |a, &b| a.wrapping_add(b))
}

fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(512);
    let words = mib * (1 << 20) / 8;
    let src: Vec<u64> = (0..words as u64).collect();
    let mut dst = vec![0u64; words];
    let bytes = (words * 8) as f64;
    let threads = rayon::current_num_threads();
    println!("buffer {mib} MiB, rayon threads {threads}");

    let t = best_of(5, || dst.copy_from_slice(black_box(&src)));
    println!("copy  1 thread : {:6.2} GB/s (read+write)", 2.0 * bytes / t / 1e9);
    let chunk = words.div_ceil(threads * 4);
    let t = best_of(5, || {
        dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
    });
    println!("copy  {threads} threads: {:6.2} GB/s (read+write)", 2.0 * bytes / t / 1e9);

    let t = best_of(5, || {
        black_box(read_sum(black_box(&src)));
    });
    println!("read  1 thread : {:6.2} GB/s", bytes / t / 1e9);
    let t = best_of(5, || {
        black_box(src.par_chunks(chunk).map(read_sum).reduce(|| 0, u64::wrapping_add));
    });
    println!("read  {threads} threads: {:6.2} GB/s", bytes / t / 1e9);
    black_box(&dst);
}
