//! Causal grouped-query attention of a forward pass over the KV cache, on the worker pool:
//! one task per (token, KV head), the KV head's query heads together. A decode step has one
//! token and few KV heads (3 for SmolLM2, on 2 threads), so its positions are also split in
//! parts whose softmax states are merged afterwards.

use sieve_kernels::attention::{CacheValue, KEY_BLOCK, KvHead, SoftmaxPart, attend_group, finish, merge_parts};
use sieve_kernels::pool::{global, parallel_for};

use crate::config::Config;
use crate::kv_cache::LayerKv;

/// Fewest positions per part when a decode step's positions are split: below it the merge and
/// the hand-off cost about what a second thread saves.
const MIN_PART_POSITIONS: usize = 64;

/// Causal GQA attention of `n` query rows at positions `p0..p0+n` over one layer's cached keys
/// and values (which already include these positions).
pub(crate) fn attention(cfg: &Config, q: &[f32], kv: LayerKv<'_>, p0: usize, out: &mut [f32]) {
    match kv {
        LayerKv::F32 { keys, values } => attention_over(cfg, q, keys, values, p0, out),
        LayerKv::F16 { keys, values } => attention_over(cfg, q, keys, values, p0, out),
    }
}

fn attention_over<T: CacheValue>(cfg: &Config, q: &[f32], keys: &[T], values: &[T], p0: usize, out: &mut [f32]) {
    let (hd, nh, nkv) = (cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
    let group = nh / nkv;
    let width = group * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let n = out.len() / (nh * hd);
    let threads = global().threads();
    let kv = |kv_head| KvHead { keys, values, kv_heads: nkv, head_dim: hd, kv_head };
    // Shapes come from the validated config and the cache this call filled, so the kernel's
    // bounds checks cannot fail.
    let parts = if n == 1 { decode_parts(p0 + 1, nkv, threads) } else { 1 };
    if parts == 1 {
        let pairs = n * nkv;
        // A few pairs per task, so a long prefill is not thousands of tiny tasks.
        let per_task = pairs.div_ceil(8 * threads).max(1);
        let heads = Disjoint(out.as_mut_ptr());
        parallel_for(pairs.div_ceil(per_task), |task| {
            let mut scores = Vec::new();
            let mut states = vec![SoftmaxPart::EMPTY; group];
            for i in task * per_task..((task + 1) * per_task).min(pairs) {
                let (t, h) = (i / nkv, i % nkv);
                let at = (t * nh + h * group) * hd;
                // SAFETY: pair i owns out[at..at + width] (token t's query heads of KV head h);
                // pairs are disjoint across tasks, and `parallel_for` returns only after every
                // task finished.
                let o = unsafe { heads.slice(at, width) };
                let _ = attend_group(&kv(h), &q[at..][..width], scale, 0..p0 + t + 1, &mut scores, o, &mut states);
                finish(o, &states);
            }
        });
        return;
    }
    let len = p0 + 1;
    let part_len = len.div_ceil(parts).next_multiple_of(KEY_BLOCK);
    let tasks = nkv * parts;
    let mut partial = vec![0f32; tasks * width];
    let mut states = vec![SoftmaxPart::EMPTY; tasks * group];
    let (partial_out, states_out) = (Disjoint(partial.as_mut_ptr()), Disjoint(states.as_mut_ptr()));
    parallel_for(tasks, |task| {
        let (h, part) = (task / parts, task % parts);
        let (start, end) = (part * part_len, ((part + 1) * part_len).min(len));
        if start >= end {
            return; // an empty last part keeps its empty state
        }
        // SAFETY: task owns partial[task * width..][..width] and states[task * group..][..group];
        // tasks are disjoint, and `parallel_for` returns only after every task finished.
        let (o, st) = unsafe { (partial_out.slice(task * width, width), states_out.slice(task * group, group)) };
        let _ = attend_group(&kv(h), &q[h * width..][..width], scale, start..end, &mut Vec::new(), o, st);
    });
    for h in 0..nkv {
        let o = &mut out[h * width..][..width];
        let first = h * parts;
        o.copy_from_slice(&partial[first * width..][..width]);
        let mut merged = states[first * group..][..group].to_vec();
        for p in first + 1..first + parts {
            merge_parts(o, &mut merged, &partial[p * width..][..width], &states[p * group..][..group]);
        }
        finish(o, &merged);
    }
}

/// Parts to split a decode step's `len` positions into: enough that the tasks (KV heads x
/// parts) come in whole rounds of the pool's threads, none shorter than
/// [`MIN_PART_POSITIONS`].
fn decode_parts(len: usize, kv_heads: usize, threads: usize) -> usize {
    let rounds = threads / gcd(kv_heads, threads).max(1);
    rounds.min(len / MIN_PART_POSITIONS).max(1)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A buffer shared by tasks that each write their own slices.
#[derive(Clone, Copy)]
struct Disjoint<T>(*mut T);
// SAFETY: tasks write disjoint slices (see `attention`), and the buffer outlives the job.
unsafe impl<T> Send for Disjoint<T> {}
unsafe impl<T> Sync for Disjoint<T> {}

impl<T> Disjoint<T> {
    /// `len` elements from `start`.
    ///
    /// # Safety
    /// The range lies inside the buffer and no other live reference overlaps it.
    unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_parts_fill_whole_rounds_of_threads() {
        assert_eq!(decode_parts(1000, 3, 2), 2);
        assert_eq!(decode_parts(1000, 8, 2), 1);
        assert_eq!(decode_parts(1000, 3, 4), 4);
        assert_eq!(decode_parts(1000, 2, 4), 2);
        assert_eq!(decode_parts(100, 3, 2), 1, "short caches are not split");
        assert_eq!(decode_parts(1000, 3, 1), 1);
    }
}
