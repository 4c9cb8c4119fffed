//! Causal grouped-query attention of a forward pass over the KV cache: (token, head) pairs
//! in parallel on the worker pool.

use sieve_kernels::attention::attend_head;

use crate::config::Config;

/// Causal GQA attention of `n` query rows at positions `p0..p0+n` over the cached keys and
/// values (which already include these positions). (token, head) pairs run in parallel.
pub(crate) fn attention(cfg: &Config, q: &[f32], keys: &[f32], values: &[f32], p0: usize, out: &mut [f32]) {
    let (hd, nh, kvd) = (cfg.head_dim, cfg.n_heads, cfg.kv_dim());
    let group = cfg.n_heads / cfg.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let pairs = out.len() / hd;
    // A few pairs per task, so a long prefill is not thousands of tiny tasks.
    let per_task = pairs.div_ceil(8 * sieve_kernels::pool::global().threads()).max(1);
    let tasks = pairs.div_ceil(per_task);
    let heads = HeadsOut(out.as_mut_ptr());
    sieve_kernels::pool::parallel_for(tasks, |task| {
        let mut scores = Vec::with_capacity(p0 + 1);
        for i in task * per_task..((task + 1) * per_task).min(pairs) {
            let (t, h) = (i / nh, i % nh);
            let qh = &q[t * nh * hd + h * hd..][..hd];
            // SAFETY: pair i owns out[i * hd..(i + 1) * hd]; pairs are disjoint across tasks,
            // and `parallel_for` returns only after every task finished.
            let o = unsafe { heads.slice(i * hd, hd) };
            // Shapes come from the validated config and the cache this call filled, so the
            // kernel's bounds checks cannot fail.
            let _ = attend_head(qh, keys, values, kvd, (h / group) * hd, p0 + t + 1, scale, &mut scores, o);
        }
    });
}

/// The attention output, shared by tasks that each write their own (token, head) slices.
#[derive(Clone, Copy)]
struct HeadsOut(*mut f32);
// SAFETY: tasks write disjoint slices (see `attention`), and the buffer outlives the job.
unsafe impl Send for HeadsOut {}
unsafe impl Sync for HeadsOut {}

impl HeadsOut {
    /// `len` values from `start`.
    ///
    /// # Safety
    /// The range lies inside the buffer and no other live reference overlaps it.
    unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [f32] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}
