//! A persistent pool of spinning worker threads for the many small parallel loops of a
//! decode step (~250 per token on SmolLM2).
//!
//! A fork-join pool that parks idle workers pays a wake-up (tens of microseconds) on every
//! product; a decode token has only ~10 ms in all. Here workers spin on a generation counter
//! for a while after each job, so the next job starts within a cache-line transfer, and park
//! only after a longer idle spell. The caller always works on its own job too.
//!
//! A worker whose core is taken away while it holds a task (another process on that core)
//! would make each job wait out the scheduler's time slice; after such a stall jobs run on
//! the submitter alone for a back-off period (see `Backoff`).
//!
//! One job runs at a time. A job submitted while another runs (another thread, or a task
//! that submits a job itself) runs inline on the submitting thread: correct, never a
//! deadlock, just not parallel.
//!
//! [`alongside`] lets a small independent piece of work (a lookahead predictor) ride along
//! with the next job a thread submits, as one more task: whichever thread takes it, the
//! other keeps working on the job's tasks, so the side work overlaps the job instead of
//! following it.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// A job whose submitter, done with its own tasks, waits this much longer for the workers'
/// than it spent on its own has lost a worker mid-task: the worker's core was taken away,
/// typically by another process on the same core (a busy neighbour on a VM's vCPU), and
/// the submitter spins for the rest of the scheduler's time slice.
const STALL: Duration = Duration::from_millis(1);

/// How long jobs run on the submitter alone after the first stall; doubled on each stall
/// that follows, up to [`MAX_BACKOFF`], and forgotten after [`CALM_JOBS`] jobs without one.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);

/// The longest stretch of jobs run on the submitter alone.
const MAX_BACKOFF: Duration = Duration::from_millis(640);

/// Parallel jobs without a stall after which the back-off starts again from
/// [`FIRST_BACKOFF`].
const CALM_JOBS: u32 = 4096;

/// When jobs run on the submitting thread alone. A worker preempted while it holds a task
/// makes every job wait for it, so that two threads decode slower than one (measured with a
/// busy loop pinned to the second of two cores: 97-133 tok/s against 139-205 on one
/// thread); after such a stall the pool runs jobs inline for a while, then tries again.
#[derive(Debug, Default)]
struct Backoff {
    /// Jobs run inline until then.
    until: Option<Instant>,
    /// The last inline stretch (zero: none since the last calm spell).
    period: Duration,
    /// Parallel jobs since the last stall.
    calm: u32,
}

impl Backoff {
    /// Whether a job submitted at `now` runs inline.
    fn inline(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// Records a parallel job: the submitter's own share took `own`, then it waited
    /// `waited` for the workers' tasks; `now` is when it stopped waiting.
    fn record(&mut self, own: Duration, waited: Duration, now: Instant) {
        if waited > own + STALL {
            self.period = if self.period.is_zero() { FIRST_BACKOFF } else { (self.period * 2).min(MAX_BACKOFF) };
            self.until = Some(now + self.period);
            self.calm = 0;
        } else {
            self.calm += 1;
            if self.calm >= CALM_JOBS {
                self.period = Duration::ZERO;
                self.calm = 0;
            }
        }
    }
}

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
    /// Held while a job is published; its back-off says when jobs run inline.
    submit: Mutex<Backoff>,
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
        Self { shared, submit: Mutex::new(Backoff::default()), threads }
    }

    /// Threads a job runs on (workers + caller).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(0..n)` across the pool and returns when every task has finished. A side task
    /// waiting in [`alongside`] on this thread runs as one more task of the job.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        let start = Instant::now();
        let mut guard = match self.submit.try_lock() {
            Ok(g) if self.threads > 1 && (n > 1 || side_waiting()) && !g.inline(start) => g,
            _ => {
                (0..n).for_each(f);
                return;
            }
        };
        let side = take_side();
        let with_side = |i: usize| match side {
            // The side task first: the submitter takes it at once while the workers are still
            // seeing the job, and the job's own tasks fill in around it.
            Some(side) if i == 0 => side(),
            Some(_) => f(i - 1),
            None => f(i),
        };
        let n = n + usize::from(side.is_some());
        let f: &(dyn Fn(usize) + Sync) = &with_side;
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
        let own_done = Instant::now();
        while job.done.load(SeqCst) < n {
            std::hint::spin_loop();
        }
        let all_done = Instant::now();
        guard.record(own_done - start, all_done - own_done, all_done);
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
        if !spins.is_multiple_of(1024) || idle_since.elapsed() < SPIN {
            std::hint::spin_loop();
            continue;
        }
        s.sleeping[w].store(true, SeqCst);
        let g2 = s.generation.load(SeqCst);
        let published = g2 % 2 == 1 && g2 != seen;
        if !published && !s.stop.load(SeqCst) {
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

/// A side task of [`alongside`]: the work, and whether a job has taken it.
struct Side<'a> {
    f: &'a (dyn Fn() + Sync),
    taken: Cell<bool>,
}

thread_local! {
    /// The side task waiting for this thread's next job, if any (set only inside
    /// [`alongside`], which keeps it alive).
    static SIDE: Cell<*const Side<'static>> = const { Cell::new(std::ptr::null()) };
}

/// Whether a side task waits on this thread.
fn side_waiting() -> bool {
    SIDE.with(|s| !s.get().is_null())
}

/// Takes the side task waiting on this thread, if any; later jobs of the same
/// [`alongside`] run without it.
fn take_side<'a>() -> Option<&'a (dyn Fn() + Sync)> {
    let ptr = SIDE.with(|s| s.replace(std::ptr::null()));
    // SAFETY: a non-null pointer was set by `alongside`, whose frame owns the `Side` and
    // clears the slot before returning; `run` is called from inside that frame (this thread,
    // under `body`), and the job that uses the task ends before `run` returns, so the task
    // outlives every use. Nothing here outlives `alongside`'s borrow of the closure.
    let side = unsafe { ptr.as_ref() }?;
    side.taken.set(true);
    Some(side.f)
}

/// Runs `body`; `side` runs once, as an extra task of the first pool job `body` submits on
/// this thread (so it overlaps that job on another thread), or after `body` if no job
/// took it (`body` ran no parallel job, or the pool has one thread).
pub fn alongside<R>(side: &(dyn Fn() + Sync), body: impl FnOnce() -> R) -> R {
    let task = Side { f: side, taken: Cell::new(false) };
    /// Clears the slot when `alongside` returns or unwinds: the task dies with the frame.
    struct Clear(*const Side<'static>);
    impl Drop for Clear {
        fn drop(&mut self) {
            SIDE.with(|s| s.set(self.0));
        }
    }
    let previous = SIDE.with(|s| s.get());
    // SAFETY: only the lifetime is erased; `Clear` takes the pointer out of the slot before
    // `task` goes out of scope, on return and on unwinding alike.
    let erased = unsafe { std::mem::transmute::<*const Side<'_>, *const Side<'static>>(&task as *const Side<'_>) };
    SIDE.with(|s| s.set(erased));
    let clear = Clear(previous);
    let out = body();
    drop(clear);
    if !task.taken.get() {
        side();
    }
    out
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
    fn a_side_task_runs_once_with_the_first_job() {
        let pool = Pool::new(2);
        let side_runs = AtomicUsize::new(0);
        let tasks = AtomicUsize::new(0);
        let side = || {
            side_runs.fetch_add(1, SeqCst);
        };
        let count = |_| {
            tasks.fetch_add(1, SeqCst);
        };
        // Two jobs in the body: the side task rides with the first only.
        alongside(&side, || {
            pool.run(5, &count);
            assert_eq!(side_runs.load(SeqCst), 1, "the side task ran with the first job");
            pool.run(3, &count);
        });
        assert_eq!((side_runs.load(SeqCst), tasks.load(SeqCst)), (1, 8));
        // No job in the body: the side task runs afterwards.
        let value = alongside(&side, || 7);
        assert_eq!((value, side_runs.load(SeqCst)), (7, 2));
        // A one-task job still takes the side task, and nothing is left waiting after.
        alongside(&side, || pool.run(1, &count));
        assert_eq!((side_runs.load(SeqCst), tasks.load(SeqCst)), (3, 9));
        assert!(!side_waiting());
    }

    #[test]
    fn side_tasks_overlap_the_job_on_two_threads() {
        let pool = Pool::new(2);
        // The side task waits until a job task has started on another thread: it can only
        // finish if the two really run at the same time.
        let job_started = AtomicBool::new(false);
        let side = || {
            let t0 = Instant::now();
            while !job_started.load(SeqCst) && t0.elapsed() < Duration::from_secs(10) {
                std::hint::spin_loop();
            }
        };
        let overlapped = alongside(&side, || {
            pool.run(1, &|_| {
                job_started.store(true, SeqCst);
            });
            job_started.load(SeqCst)
        });
        assert!(overlapped);
    }

    #[test]
    fn a_panicking_side_task_is_reported() {
        let pool = Pool::new(2);
        let r = std::panic::catch_unwind(|| {
            alongside(&|| panic!("side fails"), || pool.run(4, &|_| {}));
        });
        assert!(r.is_err());
        assert!(!side_waiting(), "the slot is cleared on unwinding");
        let count = AtomicUsize::new(0);
        pool.run(4, &|_| {
            count.fetch_add(1, SeqCst);
        });
        assert_eq!(count.load(SeqCst), 4);
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

    #[test]
    fn backoff_doubles_on_stalls_and_forgets_them_when_calm() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        let us = Duration::from_micros;
        b.record(us(20), us(30), t0);
        assert!(!b.inline(t0), "a short wait is no stall");
        // A prefill task may keep the submitter waiting long, but less than its own share.
        b.record(Duration::from_millis(40), Duration::from_millis(10), t0);
        assert!(!b.inline(t0));
        b.record(us(20), Duration::from_millis(3), t0);
        assert!(b.inline(t0) && b.inline(t0 + us(9_900)) && !b.inline(t0 + FIRST_BACKOFF));
        let t1 = t0 + FIRST_BACKOFF;
        b.record(us(20), Duration::from_millis(3), t1);
        assert!(b.inline(t1 + us(19_900)) && !b.inline(t1 + 2 * FIRST_BACKOFF), "the second stall doubles it");
        for _ in 0..20 {
            b.record(us(20), Duration::from_millis(3), t1);
        }
        assert_eq!(b.period, MAX_BACKOFF);
        for _ in 0..CALM_JOBS {
            b.record(us(20), us(30), t1);
        }
        b.record(us(20), Duration::from_millis(3), t1);
        assert_eq!(b.period, FIRST_BACKOFF, "a calm spell starts it over");
    }

    /// A worker that stops inside a task (as when its core is taken) sends the next jobs to
    /// the submitter alone, until the back-off has passed.
    #[test]
    fn a_stalled_worker_sends_jobs_inline_for_a_while() {
        let pool = Pool::new(2);
        let caller = thread::current().id();
        let stalled = (0..50).any(|_| {
            pool.run(64, &|_| {
                if thread::current().id() == caller {
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_micros(20) {
                        std::hint::spin_loop();
                    }
                } else {
                    thread::sleep(Duration::from_millis(5));
                }
            });
            pool.submit.lock().unwrap().inline(Instant::now())
        });
        assert!(stalled, "no worker took a task in 50 jobs");
        let until = pool.submit.lock().unwrap().until.unwrap();
        let ran_on = Mutex::new(Vec::new());
        let margin = Instant::now() + Duration::from_millis(2);
        pool.run(8, &|_| ran_on.lock().unwrap().push(thread::current().id()));
        let ran_on = ran_on.into_inner().unwrap();
        assert_eq!(ran_on.len(), 8);
        if margin < until {
            assert!(ran_on.iter().all(|&t| t == caller), "a job inside the back-off ran on a worker");
        }
        thread::sleep(until.saturating_duration_since(Instant::now()) + Duration::from_millis(1));
        assert!(!pool.submit.lock().unwrap().inline(Instant::now()));
    }
}
