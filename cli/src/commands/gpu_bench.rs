//! `sieve gpu-bench`: GPU kernel correctness (against an f64 CPU reference) and timings
//! (CUDA events over graph replays, against cuBLAS) at Llama-3-8B and SmolLM2 shapes.

use anyhow::{Context, Result, bail};

/// Arguments of `sieve gpu-bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Shapes as INPUTSxOUTPUTS, comma-separated (default: 4096x14336, 14336x4096, 4096x4096,
    /// 4096x1024 and the SmolLM2 projections).
    #[arg(long, value_delimiter = ',')]
    pub shapes: Vec<String>,
    /// Sparsities to measure, comma-separated, each in [0, 1).
    #[arg(long, value_delimiter = ',', default_values_t = [0.0f32, 0.25, 0.5, 0.75, 0.9])]
    pub sparsities: Vec<f32>,
    /// Timed graph replays per variant.
    #[arg(long, default_value_t = 20)]
    pub replays: usize,
    /// Also time the input-sparse kernel aiming at these numbers of warp units per SM (tuning aid).
    #[arg(long, value_delimiter = ',')]
    pub units_sweep: Vec<usize>,
    /// Which inputs are active: the largest of a random vector (random), evenly spaced (even:
    /// every warp unit gets the same count), or random with the same count in every unit's
    /// chunk (balanced: what uneven units cost, the rows still at random places).
    #[arg(long, value_enum, default_value_t = Mask::Random)]
    pub mask: Mask,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// How the benchmark picks the active inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mask {
    /// The largest magnitudes of a fresh random vector, as activations give.
    Random,
    /// Evenly spaced inputs.
    Even,
    /// Random inputs, the same count in every warp unit's chunk of inputs.
    Balanced,
}

/// Parses `KxN` into (inputs, outputs).
fn parse_shape(s: &str) -> Result<(usize, usize)> {
    let (k, n) =
        s.split_once(['x', 'X']).with_context(|| format!("--shapes {s}: expected INPUTSxOUTPUTS, e.g. 4096x14336"))?;
    let k: usize = k.trim().parse().with_context(|| format!("--shapes {s}: '{k}' is not a count"))?;
    let n: usize = n.trim().parse().with_context(|| format!("--shapes {s}: '{n}' is not a count"))?;
    if k == 0 || n == 0 || !k.is_multiple_of(8) || !n.is_multiple_of(8) {
        bail!("--shapes {s}: both sizes must be positive multiples of 8 (the kernels read 8 fp16 values at a time)");
    }
    if k.checked_mul(n).is_none_or(|p| p > (1 << 30)) {
        bail!("--shapes {s}: more than 2^30 weights");
    }
    Ok((k, n))
}

/// Shapes as (inputs, outputs).
type Shapes = Vec<(usize, usize)>;

/// Checks the arguments (before any GPU work): the shapes and sparsities to run.
pub fn validate(a: &Args) -> Result<(Shapes, Vec<f32>)> {
    let shapes = a.shapes.iter().map(|s| parse_shape(s)).collect::<Result<Vec<_>>>()?;
    if a.sparsities.is_empty() {
        bail!("--sparsities: give at least one");
    }
    for &s in &a.sparsities {
        if !(0.0..1.0).contains(&s) {
            bail!("--sparsities: {s} is outside [0, 1)");
        }
    }
    if a.replays == 0 {
        bail!("--replays must be at least 1");
    }
    if let Some(c) = a.units_sweep.iter().find(|&&c| !(1..=256).contains(&c)) {
        bail!("--units-sweep: {c} is outside 1..=256");
    }
    Ok((shapes, a.sparsities.clone()))
}

#[cfg(not(feature = "cuda"))]
pub fn run(a: Args) -> Result<()> {
    validate(&a)?;
    Err(sieve_kernels::gpu::GpuError::NotBuilt.into())
}

#[cfg(feature = "cuda")]
pub fn run(a: Args) -> Result<()> {
    use sieve_kernels::gpu::{Gpu, bench};
    let (shapes, sparsities) = validate(&a)?;
    let gpu = Gpu::open(a.gpu).context("opening the GPU")?;
    let mut cfg = bench::BenchConfig::standard(gpu.info().l2_bytes);
    if !shapes.is_empty() {
        cfg.shapes = shapes;
    }
    cfg.sparsities = sparsities;
    cfg.replays = a.replays;
    cfg.units_sweep = a.units_sweep.clone();
    cfg.mask = match a.mask {
        Mask::Random => bench::MaskKind::Random,
        Mask::Even => bench::MaskKind::Even,
        Mask::Balanced => bench::MaskKind::Balanced,
    };
    let bar = super::progress(cfg.shapes.len() as u64, "gpu-bench");
    let report = bench::run(&gpu, &cfg, |shape| {
        bar.set_message(format!("gpu-bench {shape}"));
        bar.inc(1);
    })
    .context("running the GPU benchmark")?;
    bar.finish_and_clear();
    let failed: Vec<_> = report.checks.iter().filter(|c| !c.passed()).collect();
    if a.json {
        super::print_json(&to_json(&report))?;
    } else {
        print_tables(&report);
    }
    if !failed.is_empty() {
        bail!(
            "{} correctness check(s) failed, first: {} at {}->{} s={}: error {:.3e}",
            failed.len(),
            failed[0].kernel,
            failed[0].k,
            failed[0].n,
            failed[0].sparsity,
            failed[0].rel_err
        );
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn to_json(r: &sieve_kernels::gpu::bench::BenchReport) -> serde_json::Value {
    serde_json::json!({
        "gpu": {
            "name": r.gpu.name,
            "compute_capability": format!("{}.{}", r.gpu.compute_capability.0, r.gpu.compute_capability.1),
            "sm_count": r.gpu.sm_count,
            "memory_bytes": r.gpu.memory_bytes,
            "l2_bytes": r.gpu.l2_bytes,
        },
        "copy_bandwidth_gbs": r.copy_bandwidth / 1e9,
        "checks": r.checks.iter().map(|c| serde_json::json!({
            "shape": format!("{}->{}", c.k, c.n), "kernel": c.kernel, "sparsity": c.sparsity,
            "rel_err": c.rel_err, "bound": c.bound, "passed": c.passed(),
        })).collect::<Vec<_>>(),
        "timings": r.timings.iter().map(|t| serde_json::json!({
            "shape": format!("{}->{}", t.k, t.n), "kernel": t.kernel, "sparsity": t.sparsity,
            "us": t.us, "cublas_us": t.cublas_us, "speedup": t.speedup(), "ideal": t.ideal(),
            "of_ideal": t.speedup() / t.ideal(), "bandwidth_gbs": t.bandwidth() / 1e9,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(feature = "cuda")]
fn print_tables(r: &sieve_kernels::gpu::bench::BenchReport) {
    let g = &r.gpu;
    println!(
        "GPU: {} (sm_{}{}, {} SMs, {:.0} GiB, L2 {} MiB); copy bandwidth {:.0} GB/s (read + write)\n",
        g.name,
        g.compute_capability.0,
        g.compute_capability.1,
        g.sm_count,
        g.memory_bytes as f64 / (1u64 << 30) as f64,
        g.l2_bytes >> 20,
        r.copy_bandwidth / 1e9
    );
    let passed = r.checks.iter().filter(|c| c.passed()).count();
    println!("Correctness vs f64 CPU reference: {passed}/{} passed; worst relative error per kernel:", r.checks.len());
    let mut kernels: Vec<&str> = r.checks.iter().map(|c| c.kernel.as_str()).collect();
    kernels.dedup();
    kernels.sort_unstable();
    kernels.dedup();
    for k in kernels {
        let worst = r.checks.iter().filter(|c| c.kernel == k).map(|c| c.rel_err).fold(0f64, f64::max);
        println!("  {k:<40} {worst:.2e}");
    }
    println!("\n| shape | kernel | s | µs | cuBLAS µs | speedup | ideal | of ideal | GB/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for t in &r.timings {
        println!(
            "| {}->{} | {} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2}x | {:.2} | {:.0} |",
            t.k,
            t.n,
            t.kernel,
            t.sparsity,
            t.us,
            t.cublas_us,
            t.speedup(),
            t.ideal(),
            t.speedup() / t.ideal(),
            t.bandwidth() / 1e9
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_validated() {
        assert_eq!(parse_shape("4096x14336").unwrap(), (4096, 14336));
        for bad in ["4096", "4096x0", "100x8", "ax8", "1048576x1048576"] {
            assert!(parse_shape(bad).is_err(), "{bad}");
        }
    }
}
