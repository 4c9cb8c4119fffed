//! Memory bandwidth of this machine, to judge the GEMV numbers against:
//! copy (read + write, counted as bytes read + bytes written), and read-only (a sum over a
//! buffer much larger than the last-level cache), on 1 and on all rayon threads; then what
//! a row-sparse product can gain at most: a random share of fixed-size rows read (ascending,
//! each prefetched a few rows ahead) against all of them, for row sizes of the sparse
//! kernels (a Q4_1 row of SmolLM2's 576 inputs is 360 bytes, an input-major Q4_1 row of its
//! 576 outputs 288, of 1536 outputs 768).
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
    drop(dst);

    let all_bytes = words * 8;
    println!(
        "scattered rows, {threads} threads: useful GB/s, and all rows' time over the kept rows' (the most skipping rows can gain)"
    );
    for row in [288usize, 384, 768, 1152, 2304, 4608] {
        let nrows = all_bytes / row;
        let all: Vec<u32> = (0..nrows as u32).collect();
        let t_all = time_rows(&src, row, &all, threads);
        let mut line = format!("  rows of {row:4} B: all {:5.1} GB/s", (nrows * row) as f64 / t_all / 1e9);
        for kept_share in [0.5, 0.25] {
            let kept = kept_rows(nrows, kept_share);
            let t = time_rows(&src, row, &kept, threads);
            line += &format!(
                " | {:.0}% kept {:5.1} GB/s, {:.2}x",
                100.0 * kept_share,
                (kept.len() * row) as f64 / t / 1e9,
                t_all / t
            );
        }
        println!("{line}");
    }
}

/// A random `share` of `nrows` rows (a fixed seed), ascending as the kernels read them.
fn kept_rows(nrows: usize, share: f64) -> Vec<u32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..nrows as u32)
        .filter(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 / (1u64 << 53) as f64) < share
        })
        .collect()
}

/// Rows read ahead of the one being summed (4 measured best of 2 to 32 on a Zen 3 VM).
const ROWS_AHEAD: usize = 4;

/// Best time of summing the listed rows (`row` bytes each) of `src`, split over `threads`.
fn time_rows(src: &[u64], row: usize, rows: &[u32], threads: usize) -> f64 {
    let words = row / 8;
    let sum_rows = |rows: &[u32]| {
        let mut acc = 0u64;
        for (k, &r) in rows.iter().enumerate() {
            if let Some(&ahead) = rows.get(k + ROWS_AHEAD) {
                sieve_kernels::prefetch(&src[ahead as usize * words..(ahead as usize + 1) * words]);
            }
            acc = acc.wrapping_add(read_sum(&src[r as usize * words..(r as usize + 1) * words]));
        }
        acc
    };
    let chunk = rows.len().div_ceil(threads).max(1);
    best_of(5, || {
        black_box(rows.par_chunks(chunk).map(sum_rows).reduce(|| 0, u64::wrapping_add));
    })
}
