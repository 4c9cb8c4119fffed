//! A persistent pool of spinning worker threads for the many small parallel loops of a
//! decode step (~250 per token on SmolLM2).
//!
//! A fork-join pool that parks idle workers pays a wake-up (tens of microseconds) on every
//! product; a decode token has only ~10 ms in all. Here workers spin on a generation counter
//! for a while after each job, so the next job starts within a cache-line transfer, and park
//! only after a longer idle spell. The caller always works on its own job too.
//!
//! One job runs at a time. A job submitted while another runs (another thread, or a task
//! that submits a job itself) runs inline on the submitting thread: correct, never a
//! deadlock, just not parallel.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// One job: `n` tasks of `f`, handed out by `next`, counted by `done`.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Runs tasks until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.n {
                return;
            }
            // A panicking task must still count as done, or the submitter would wait forever;
            // the panic is re-raised on the submitting thread.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.f)(i))).is_err() {
                self.panicked.store(true, SeqCst);
            }
            self.done.fetch_add(1, SeqCst);
        }
    }
}

struct Shared {
    /// Odd while a job is published, even when idle.
    generation: AtomicU64,
    job: AtomicPtr<Job<'static>>,
    /// Workers currently between "saw the job" and "done with it".
    in_job: AtomicUsize,
    sleeping: Vec<AtomicBool>,
    threads: OnceLock<Vec<Thread>>,
    stop: AtomicBool,
}

/// A fixed set of worker threads plus the caller.
pub struct Pool {
    shared: Arc<Shared>,
    submit: Mutex<()>,
    threads: usize,
}

impl Pool {
    /// A pool that runs jobs on `threads` threads in all (the caller and `threads - 1`
    /// workers).
    pub fn new(threads: usize) -> Self {
        let workers = threads.max(1) - 1;
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            in_job: AtomicUsize::new(0),
            sleeping: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            threads: OnceLock::new(),
            stop: AtomicBool::new(false),
        });
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let s = Arc::clone(&shared);
            let spawned = thread::Builder::new().name(format!("sieve-worker-{w}")).spawn(move || worker(&s, w));
            match spawned {
                Ok(h) => handles.push(h.thread().clone()),
                // Fewer workers than asked: the pool still works, with less parallelism.
                Err(_) => break,
            }
        }
        let threads = handles.len() + 1;
        let _ = shared.threads.set(handles);
        Self { shared, submit: Mutex::new(()), threads }
    }

    /// Threads a job runs on (workers + caller).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(0..n)` across the pool and returns when every task has finished.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        let guard = match self.submit.try_lock() {
            Ok(g) if n > 1 && self.threads > 1 => g,
            _ => {
                (0..n).for_each(f);
                return;
            }
        };
        let job = Job { f, n, next: AtomicUsize::new(0), done: AtomicUsize::new(0), panicked: AtomicBool::new(false) };
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only for publication; this function does not return
        // before the job is unpublished and no worker is inside it (`in_job == 0` below).
        let ptr = unsafe { std::mem::transmute::<*const Job<'_>, *mut Job<'static>>(&job as *const Job<'_>) };
        s.job.store(ptr, SeqCst);
        s.generation.fetch_add(1, SeqCst); // odd: published
        if let Some(threads) = s.threads.get() {
            for (t, sleeping) in threads.iter().zip(&s.sleeping) {
                if sleeping.load(SeqCst) {
                    t.unpark();
                }
            }
        }
        job.work();
        while job.done.load(SeqCst) < n {
            std::hint::spin_loop();
        }
        s.generation.fetch_add(1, SeqCst); // even: withdrawn
        while s.in_job.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
        s.job.store(std::ptr::null_mut(), SeqCst);
        drop(guard);
        if job.panicked.load(SeqCst) {
            panic!("a parallel task panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        if let Some(threads) = self.shared.threads.get() {
            threads.iter().for_each(Thread::unpark);
        }
    }
}

fn worker(s: &Shared, w: usize) {
    let mut seen = 0u64;
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    while !s.stop.load(SeqCst) {
        let g = s.generation.load(SeqCst);
        if g % 2 == 1 && g != seen {
            seen = g;
            s.in_job.fetch_add(1, SeqCst);
            // Re-check after announcing ourselves: if the job was withdrawn meanwhile, the
            // submitter may already have stopped waiting for us, so the job must not be touched.
            if s.generation.load(SeqCst) == g {
                let job = s.job.load(SeqCst);
                // SAFETY: the submitter keeps the job alive until `in_job` is back to zero,
                // and it was still published after we announced ourselves.
                if let Some(job) = unsafe { job.as_ref() } {
                    job.work();
                }
            }
            s.in_job.fetch_sub(1, SeqCst);
            idle_since = Instant::now();
            spins = 0;
            continue;
        }
        // Read the clock only now and then: the spin loop's latency is the pool's latency.
        spins = spins.wrapping_add(1);
        if spins % 1024 != 0 || idle_since.elapsed() < SPIN {
            std::hint::spin_loop();
            continue;
        }
        s.sleeping[w].store(true, SeqCst);
        let g2 = s.generation.load(SeqCst);
        if !(g2 % 2 == 1 && g2 != seen) && !s.stop.load(SeqCst) {
            thread::park_timeout(Duration::from_millis(100));
        }
        s.sleeping[w].store(false, SeqCst);
        idle_since = Instant::now();
        spins = 0;
    }
}

/// The process-wide pool: `SIEVE_THREADS` threads, else one per available core.
pub fn global() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::env::var("SIEVE_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        Pool::new(n)
    })
}

/// Runs `f(0..n)` on the global pool.
pub fn parallel_for(n: usize, f: impl Fn(usize) + Sync) {
    global().run(n, &f);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once() {
        let pool = Pool::new(3);
        for n in [0usize, 1, 2, 7, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "n = {n}");
        }
    }

    #[test]
    fn many_back_to_back_jobs_and_sleeping_workers() {
        let pool = Pool::new(2);
        let total = AtomicUsize::new(0);
        for round in 0..2000 {
            pool.run(4, &|i| {
                total.fetch_add(i + 1, SeqCst);
            });
            if round == 1000 {
                // Let the worker park, then check it wakes for the next job.
                thread::sleep(SPIN * 3);
            }
        }
        assert_eq!(total.load(SeqCst), 2000 * 10);
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_survives() {
        let pool = Pool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(8, &|i| assert!(i != 5, "task five fails"));
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(8, &|_| {
            count.fetch_add(1, SeqCst);
        });
        assert_eq!(count.load(SeqCst), 8);
    }

    #[test]
    fn nested_and_concurrent_jobs_run_inline() {
        let pool = Arc::new(Pool::new(2));
        let count = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(3, &|_| {
                count.fetch_add(1, SeqCst);
            });
        });
        assert_eq!(count.load(SeqCst), 12);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = Arc::clone(&pool);
                thread::spawn(move || {
                    let c = AtomicUsize::new(0);
                    for _ in 0..200 {
                        p.run(5, &|_| {
                            c.fetch_add(1, SeqCst);
                        });
                    }
                    c.load(SeqCst)
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 1000);
        }
    }
}
