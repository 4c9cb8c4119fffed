//! The GPU kernel benchmark behind `sieve gpu-bench`: correctness of every kernel against an
//! f64 CPU reference on fresh random inputs, then timings with CUDA events over graph
//! replays against cuBLAS, with weights rotated through enough copies to defeat the L2 cache
//! (as in decode, where every layer's weights stream from device memory once per token).

use cudarc::driver::CudaSlice;

use super::device::GpuInfo;
use super::gemv::{Gather, GemvOut, Reduction, SparseGemv};
use super::{CublasGemv, Gpu, GpuError, WeightType};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// (inputs k, outputs n) pairs.
    pub shapes: Vec<(usize, usize)>,
    /// Input sparsities (fraction of inputs, or of output rows, skipped).
    pub sparsities: Vec<f32>,
    /// Kernel launches per captured graph.
    pub launches_per_graph: usize,
    /// Timed graph replays (after warm-up replays).
    pub replays: usize,
    /// Bytes of weight copies to rotate through per variant (at least twice the L2).
    pub rotate_bytes: usize,
    /// Extra timings of the input-sparse kernel aiming at these warp units per SM (tuning aid).
    pub units_sweep: Vec<usize>,
    /// Which inputs are active.
    pub mask: MaskKind,
    /// Seed of the random weights and inputs.
    pub seed: u64,
}

impl BenchConfig {
    /// The shapes (Llama-3-8B and SmolLM2 projections) and sparsities.
    pub fn standard(l2_bytes: usize) -> BenchConfig {
        BenchConfig {
            shapes: vec![
                (4096, 14336),
                (14336, 4096),
                (4096, 4096),
                (4096, 1024),
                (576, 1536),
                (1536, 576),
                (576, 576),
                (576, 192),
            ],
            sparsities: vec![0.0, 0.25, 0.5, 0.75, 0.9],
            launches_per_graph: 16,
            replays: 20,
            rotate_bytes: (4 * l2_bytes).max(64 << 20),
            units_sweep: Vec::new(),
            mask: MaskKind::Random,
            seed: 7,
        }
    }
}

/// Which inputs the benchmark makes active at sparsity `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskKind {
    /// The largest `1 - s` of a random vector, as activations give.
    Random,
    /// Evenly spaced inputs (a diagnostic: every warp unit gets the same count, but the active
    /// rows are regularly strided).
    Even,
    /// A random `1 - s` of every warp unit's chunk (a diagnostic: what uneven units cost, the
    /// active rows still at random places).
    Balanced,
}

/// One correctness check.
#[derive(Debug, Clone)]
pub struct Check {
    /// Inputs.
    pub k: usize,
    /// Outputs.
    pub n: usize,
    /// Kernel and variant checked.
    pub kernel: String,
    /// Sparsity of the input (or of the rows).
    pub sparsity: f32,
    /// ||y - y_ref|| / ||y_ref|| against the f64 product with the f32 weights.
    pub rel_err: f64,
    /// The bound it must stay under.
    pub bound: f64,
}

impl Check {
    /// Whether the error is within the bound.
    pub fn passed(&self) -> bool {
        self.rel_err.is_finite() && self.rel_err < self.bound
    }
}

/// One timing.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Inputs.
    pub k: usize,
    /// Outputs.
    pub n: usize,
    /// Kernel and variant.
    pub kernel: String,
    /// Target sparsity.
    pub sparsity: f32,
    /// Mean microseconds per launch.
    pub us: f64,
    /// cuBLAS's dense fp16 GEMV of the same shape (for the fused SwiGLU: two of them).
    pub cublas_us: f64,
    /// Bytes of weights the launch reads.
    pub bytes: usize,
}

impl Timing {
    /// cuBLAS time over this kernel's time.
    pub fn speedup(&self) -> f64 {
        self.cublas_us / self.us
    }
    /// 1 / (1 - s): the speedup if time fell exactly with the bytes skipped.
    pub fn ideal(&self) -> f64 {
        1.0 / (1.0 - self.sparsity as f64)
    }
    /// Weight bytes read per second.
    pub fn bandwidth(&self) -> f64 {
        self.bytes as f64 / (self.us * 1e-6)
    }
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The GPU.
    pub gpu: GpuInfo,
    /// Device-to-device copy bandwidth, bytes/s counting reads and writes.
    pub copy_bandwidth: f64,
    /// Correctness checks.
    pub checks: Vec<Check>,
    /// Timings.
    pub timings: Vec<Timing>,
}

/// A small, fast generator for reproducible test data (splitmix64).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// Roughly normal (sum of four uniforms, scaled to unit variance).
    fn normal(&mut self) -> f32 {
        (self.uniform() + self.uniform() + self.uniform() + self.uniform()) * (3.0f32 / 4.0).sqrt()
    }
}

/// The threshold that drops the `round(s * k)` smallest |x| (negative: keep all).
pub fn threshold_for(x: &[f32], s: f32) -> f32 {
    let drop = ((s as f64) * x.len() as f64).round() as usize;
    if drop == 0 {
        return -1.0;
    }
    let mut a: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    a.sort_by(f32::total_cmp);
    a[drop.min(a.len()) - 1]
}

/// Which of `k` inputs are active under an even or balanced mask (None for a random one);
/// `chunk` is a warp unit's share of the inputs.
fn chosen_inputs(kind: MaskKind, k: usize, chunk: usize, s: f32, rng: &mut Rng) -> Option<Vec<bool>> {
    let kept_share = 1.0 - s as f64;
    match kind {
        MaskKind::Random => None,
        MaskKind::Even => {
            Some((0..k).map(|i| ((i + 1) as f64 * kept_share).floor() > (i as f64 * kept_share).floor()).collect())
        }
        MaskKind::Balanced => {
            let mut active = vec![false; k];
            for c0 in (0..k).step_by(chunk.max(1)) {
                let len = chunk.min(k - c0);
                let keep = (kept_share * len as f64).round() as usize;
                let mut idx: Vec<usize> = (c0..c0 + len).collect();
                for i in 0..keep {
                    idx.swap(i, i + (rng.next_u64() % (len - i) as u64) as usize);
                }
                idx[..keep].iter().for_each(|&i| active[i] = true);
            }
            Some(active)
        }
    }
}

/// Gives the chosen inputs magnitudes above 2 and clamps the others to [-1, 1], so that the
/// threshold for sparsity `s` keeps exactly the chosen ones.
fn activate(x: &mut [f32], active: &[bool]) {
    for (v, &on) in x.iter_mut().zip(active) {
        *v = if on { 2.0 + v.abs() } else { v.clamp(-1.0, 1.0) };
    }
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (g as f64 - w) * (g as f64 - w);
        den += w * w;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// One shape's host data: f32 weights (row-major) and their device layouts.
struct ShapeData {
    k: usize,
    w: Vec<f32>,
    row_f16: Vec<CudaSlice<u16>>,
    in_f16: Vec<CudaSlice<u16>>,
    in_bf16: Vec<CudaSlice<u16>>,
}

impl ShapeData {
    fn new(gpu: &Gpu, k: usize, n: usize, copies: usize, rng: &mut Rng) -> Result<ShapeData, GpuError> {
        let scale = 1.0 / (k as f32).sqrt();
        let w: Vec<f32> = (0..k * n).map(|_| rng.uniform() * scale).collect();
        let mut wt = vec![0f32; k * n];
        for (j, row) in w.chunks_exact(k).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                wt[i * n + j] = v;
            }
        }
        let replicate = |bits: Vec<u16>| -> Result<Vec<CudaSlice<u16>>, GpuError> {
            let first = gpu.upload(&bits)?;
            let mut all = Vec::with_capacity(copies);
            for _ in 1..copies {
                let mut c = gpu.zeros::<u16>(bits.len())?;
                gpu.copy(&first, &mut c)?;
                all.push(c);
            }
            all.insert(0, first);
            Ok(all)
        };
        Ok(ShapeData {
            k,
            row_f16: replicate(WeightType::F16.encode(&w))?,
            in_f16: replicate(WeightType::F16.encode(&wt))?,
            in_bf16: replicate(WeightType::Bf16.encode(&wt))?,
            w,
        })
    }

    /// f64 reference `y[j] = sum_i w[j][i] x[i]` over inputs with |x_i| > t.
    fn reference(&self, x: &[f32], t: f32) -> Vec<f64> {
        self.w
            .chunks_exact(self.k)
            .map(|row| row.iter().zip(x).filter(|(_, xi)| xi.abs() > t).map(|(&w, &xi)| w as f64 * xi as f64).sum())
            .collect()
    }
}

/// Times `launch(copy_index)` captured `per_graph` times into one graph, replayed.
fn time_graph(
    gpu: &Gpu,
    cfg: &BenchConfig,
    copies: usize,
    mut launch: impl FnMut(usize) -> Result<(), GpuError>,
) -> Result<f64, GpuError> {
    let per_graph = cfg.launches_per_graph.max(copies);
    let graph = gpu.capture(|| (0..per_graph).try_for_each(|i| launch(i % copies)))?;
    for _ in 0..3 {
        gpu.replay(&graph)?;
    }
    let t0 = gpu.event()?;
    for _ in 0..cfg.replays.max(1) {
        gpu.replay(&graph)?;
    }
    let t1 = gpu.event()?;
    let ms = gpu.elapsed_ms(&t0, &t1)?;
    Ok(ms * 1e3 / (cfg.replays.max(1) * per_graph) as f64)
}

/// Runs the checks and timings; `progress` hears which shape is under way.
pub fn run(gpu: &Gpu, cfg: &BenchConfig, mut progress: impl FnMut(&str)) -> Result<BenchReport, GpuError> {
    let blas = CublasGemv::new(gpu)?;
    let copy_bandwidth = gpu.copy_bandwidth(1 << 30)?;
    // Kernels alone launch one after the other, as cuBLAS does; the decode-form rows add
    // early launch (PDL), as the decode step runs them, where the GPU has it.
    let early = EarlyLaunchOff::new(gpu);
    let mut rng = Rng(cfg.seed);
    let (mut checks, mut timings) = (Vec::new(), Vec::new());
    for &(k, n) in &cfg.shapes {
        progress(&format!("{k}->{n}"));
        if !k.is_multiple_of(8) || !n.is_multiple_of(8) {
            return Err(GpuError::Unsupported(format!("benchmark shape {k}->{n}: both must be multiples of 8")));
        }
        let bytes = 2 * k * n;
        let copies = cfg.rotate_bytes.div_ceil(bytes).clamp(1, 64);
        let data = ShapeData::new(gpu, k, n, copies, &mut rng)?;
        let x_dev = gpu.zeros::<f32>(k)?;
        let mut x_dev = x_dev;
        let mut y = gpu.zeros::<f32>(n)?;
        let mut y16 = gpu.zeros::<u16>(n)?;
        let x16 = gpu.zeros::<u16>(k)?;
        let x_host: Vec<f32> = (0..k).map(|_| rng.normal()).collect();
        gpu.write(&x_host, &mut x_dev)?;
        gpu.to_f16(gpu.view(&x_dev), gpu.view(&x16))?;

        let cublas_us = time_graph(gpu, cfg, copies, |c| blas.gemv_f16(&data.row_f16[c], &x16, &mut y16))?;
        timings.push(Timing { k, n, kernel: "cublas fp16".into(), sparsity: 0.0, us: cublas_us, cublas_us, bytes });

        for &s in &cfg.sparsities {
            let mut fresh: Vec<f32> = (0..k).map(|_| rng.normal()).collect();
            let default = SparseGemv {
                weight_type: WeightType::F16,
                reduction: Reduction::Atomic,
                gather: Gather::Auto,
                units_per_sm: None,
            };
            let chunk = default.plan(gpu, k, &[n]).chunk;
            if let Some(active) = chosen_inputs(cfg.mask, k, chunk, s, &mut rng) {
                activate(&mut fresh, &active);
            }
            gpu.write(&fresh, &mut x_dev)?;
            let t = threshold_for(&fresh, s);
            let kept = fresh.iter().filter(|v| v.abs() > t).count();
            let want = data.reference(&fresh, t);
            let variants = [
                ("input-sparse fp16", WeightType::F16, Reduction::Atomic, Gather::Auto, 1e-2),
                ("input-sparse fp16 narrow", WeightType::F16, Reduction::Atomic, Gather::Narrow, 1e-2),
                ("input-sparse fp16 wide", WeightType::F16, Reduction::Atomic, Gather::Wide, 1e-2),
                ("input-sparse fp16 deterministic", WeightType::F16, Reduction::Deterministic, Gather::Auto, 1e-2),
                ("input-sparse bf16", WeightType::Bf16, Reduction::Atomic, Gather::Auto, 3e-2),
            ];
            for (name, wt, reduction, gather, bound) in variants {
                let gemv = SparseGemv { weight_type: wt, reduction, gather, units_per_sm: None };
                let scratch = gpu.zeros::<f32>(gemv.scratch_len(gpu, k, &[n]).max(1))?;
                let layout = if wt == WeightType::F16 { &data.in_f16 } else { &data.in_bf16 };
                let run_one = |c: usize| {
                    let out = GemvOut { weights: gpu.view(&layout[c]), out: gpu.view(&y), threshold: t };
                    gemv.launch(gpu, gpu.view(&x_dev), None, &[out], false, Some(&scratch))
                };
                run_one(0)?;
                let got = gpu.download(&y)?;
                checks.push(Check { k, n, kernel: name.into(), sparsity: s, rel_err: rel_err(&got, &want), bound });
                if reduction == Reduction::Deterministic {
                    run_one(0)?;
                    let again = gpu.download(&y)?;
                    let same = got.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits());
                    checks.push(Check {
                        k,
                        n,
                        kernel: "deterministic: bit-identical rerun".into(),
                        sparsity: s,
                        rel_err: if same { 0.0 } else { f64::INFINITY },
                        bound: 1e-12,
                    });
                }
                let us = time_graph(gpu, cfg, copies, run_one)?;
                timings.push(Timing { k, n, kernel: name.into(), sparsity: s, us, cublas_us, bytes: kept * n * 2 });
                if reduction == Reduction::Atomic && wt == WeightType::F16 {
                    // As the decode step runs it: the output's zeroing is folded into the kernel
                    // before (rms_norm clears it), so the product is this one launch.
                    let time_decode_form = || {
                        time_graph(gpu, cfg, copies, |c| {
                            let out = GemvOut { weights: gpu.view(&layout[c]), out: gpu.view(&y), threshold: t };
                            gemv.launch(gpu, gpu.view(&x_dev), None, &[out], true, None)
                        })
                    };
                    let us = time_decode_form()?;
                    let kernel = format!("{name}, output zeroed upstream");
                    timings.push(Timing { k, n, kernel, sparsity: s, us, cublas_us, bytes: kept * n * 2 });
                    if early.available {
                        let us = early.with(time_decode_form)?;
                        let kernel = format!("{name}, output zeroed upstream, early launch");
                        timings.push(Timing { k, n, kernel, sparsity: s, us, cublas_us, bytes: kept * n * 2 });
                    }
                }
            }
            for (&units, gather) in cfg.units_sweep.iter().flat_map(|u| [Gather::Narrow, Gather::Wide].map(|g| (u, g)))
            {
                let gemv = SparseGemv {
                    weight_type: WeightType::F16,
                    reduction: Reduction::Atomic,
                    gather,
                    units_per_sm: Some(units),
                };
                let us = time_graph(gpu, cfg, copies, |c| {
                    let out = GemvOut { weights: gpu.view(&data.in_f16[c]), out: gpu.view(&y), threshold: t };
                    gemv.launch(gpu, gpu.view(&x_dev), None, &[out], true, None)
                })?;
                let name = format!("input-sparse fp16 {gather:?} {units} units/SM, zeroed upstream");
                timings.push(Timing { k, n, kernel: name, sparsity: s, us, cublas_us, bytes: kept * n * 2 });
            }

            // Output-sparse: a random (1 - s) of the rows, in ascending order.
            let mut rows: Vec<i32> = (0..n as i32).collect();
            for i in (1..rows.len()).rev() {
                rows.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            rows.truncate(((1.0 - s as f64) * n as f64).round() as usize);
            rows.sort_unstable();
            if rows.is_empty() {
                continue;
            }
            let rows_dev = gpu.upload(&rows)?;
            let dense_want = data.reference(&fresh, -1.0);
            gpu.clear(&mut y)?;
            gpu.rows_gemv(
                WeightType::F16,
                gpu.view(&data.row_f16[0]),
                gpu.view(&x_dev),
                gpu.view(&y),
                Some(gpu.view(&rows_dev)),
                false,
                None,
            )?;
            let got = gpu.download(&y)?;
            let (g, w): (Vec<f32>, Vec<f64>) = rows.iter().map(|&r| (got[r as usize], dense_want[r as usize])).unzip();
            checks.push(Check {
                k,
                n,
                kernel: "output-sparse rows fp16".into(),
                sparsity: s,
                rel_err: rel_err(&g, &w),
                bound: 1e-2,
            });
            let time_rows = || {
                time_graph(gpu, cfg, copies, |c| {
                    gpu.rows_gemv(
                        WeightType::F16,
                        gpu.view(&data.row_f16[c]),
                        gpu.view(&x_dev),
                        gpu.view(&y),
                        Some(gpu.view(&rows_dev)),
                        false,
                        None,
                    )
                })
            };
            let us = time_rows()?;
            let row_bytes = rows.len() * k * 2;
            timings.push(Timing {
                k,
                n,
                kernel: "output-sparse rows fp16".into(),
                sparsity: s,
                us,
                cublas_us,
                bytes: row_bytes,
            });
            if early.available {
                let us = early.with(time_rows)?;
                let kernel = "output-sparse rows fp16, early launch".into();
                timings.push(Timing { k, n, kernel, sparsity: s, us, cublas_us, bytes: row_bytes });
            }

            if n > k && copies >= 2 {
                // Fused gate + up + silu*mul on the kept neurons (gate and up: two different copies).
                let mut keep = vec![0u8; n];
                rows.iter().for_each(|&r| keep[r as usize] = 1);
                let keep_dev = gpu.upload(&keep)?;
                gpu.swiglu_rows(
                    WeightType::F16,
                    gpu.view(&data.row_f16[0]),
                    gpu.view(&data.row_f16[1]),
                    gpu.view(&x_dev),
                    gpu.view(&y),
                    Some(gpu.view(&keep_dev)),
                    None,
                )?;
                let got = gpu.download(&y)?;
                let silu = |v: f64| v / (1.0 + (-v).exp());
                let (g, w): (Vec<f32>, Vec<f64>) = (0..n)
                    .map(|j| (got[j], if keep[j] == 1 { silu(dense_want[j]) * dense_want[j] } else { 0.0 }))
                    .unzip();
                checks.push(Check {
                    k,
                    n,
                    kernel: "fused swiglu rows fp16".into(),
                    sparsity: s,
                    rel_err: rel_err(&g, &w),
                    bound: 1e-2,
                });
                let us = time_graph(gpu, cfg, copies, |c| {
                    gpu.swiglu_rows(
                        WeightType::F16,
                        gpu.view(&data.row_f16[c]),
                        gpu.view(&data.row_f16[(c + 1) % copies]),
                        gpu.view(&x_dev),
                        gpu.view(&y),
                        Some(gpu.view(&keep_dev)),
                        None,
                    )
                })?;
                timings.push(Timing {
                    k,
                    n,
                    kernel: "fused swiglu rows fp16 (vs 2 cuBLAS)".into(),
                    sparsity: s,
                    us,
                    cublas_us: 2.0 * cublas_us,
                    bytes: 2 * rows.len() * k * 2,
                });
            }
        }
    }
    Ok(BenchReport { gpu: gpu.info().clone(), copy_bandwidth, checks, timings })
}

/// Turns early launch off for the benchmark's lifetime (restored on drop, errors included)
/// and back on around the decode-form timings.
struct EarlyLaunchOff<'a> {
    gpu: &'a Gpu,
    available: bool,
}

impl<'a> EarlyLaunchOff<'a> {
    fn new(gpu: &'a Gpu) -> EarlyLaunchOff<'a> {
        let available = gpu.early_launch();
        gpu.set_early_launch(false);
        EarlyLaunchOff { gpu, available }
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        self.gpu.set_early_launch(true);
        let out = f();
        self.gpu.set_early_launch(false);
        out
    }
}

impl Drop for EarlyLaunchOff<'_> {
    fn drop(&mut self) {
        self.gpu.set_early_launch(self.available);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_drops_the_requested_share() {
        let mut rng = Rng(3);
        let x: Vec<f32> = (0..1000).map(|_| rng.normal()).collect();
        for s in [0.0f32, 0.25, 0.5, 0.9] {
            let t = threshold_for(&x, s);
            let dropped = x.iter().filter(|v| v.abs() <= t).count();
            assert_eq!(dropped, (s * 1000.0).round() as usize);
        }
    }

    #[test]
    fn even_and_balanced_masks_keep_the_same_count_in_every_chunk() {
        let mut rng = Rng(5);
        let mut x: Vec<f32> = (0..1000).map(|_| rng.normal()).collect();
        let active = chosen_inputs(MaskKind::Balanced, 1000, 128, 0.75, &mut rng).unwrap();
        activate(&mut x, &active);
        let t = threshold_for(&x, 0.75);
        for (c, chunk) in x.chunks(128).enumerate() {
            let kept = chunk.iter().filter(|v| v.abs() > t).count();
            assert_eq!(kept, (chunk.len() as f64 * 0.25).round() as usize, "chunk {c}");
            assert!(chunk.iter().all(|v| v.abs() > 2.0 || v.abs() <= 1.0));
        }
        let even = chosen_inputs(MaskKind::Even, 1000, 128, 0.5, &mut rng).unwrap();
        assert!(even.chunks(2).all(|pair| pair.iter().filter(|&&on| on).count() == 1));
        assert!(chosen_inputs(MaskKind::Random, 1000, 128, 0.5, &mut rng).is_none());
    }

    #[test]
    fn the_benchmark_refuses_without_a_gpu_or_runs_with_one() {
        match Gpu::open(0) {
            Err(GpuError::NoDriver | GpuError::NoDevice { .. }) => eprintln!("skipped: no GPU"),
            Err(e) => panic!("{e}"),
            Ok(gpu) => {
                let mut cfg = BenchConfig::standard(gpu.info().l2_bytes);
                cfg.shapes = vec![(576, 1536), (1536, 576)];
                cfg.sparsities = vec![0.0, 0.5];
                cfg.replays = 2;
                let report = run(&gpu, &cfg, |_| {}).unwrap();
                for c in &report.checks {
                    assert!(c.passed(), "{c:?}");
                }
            }
        }
    }
}
