//! State shared by the RPC handlers, the engine thread and the metrics listener.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::assets::Assets;
use crate::dense_ref::DenseReference;
use crate::metrics::Metrics;
use crate::stats::Aggregates;

/// Shared, mostly read-only state.
pub struct Shared {
    pub assets: Arc<Assets>,
    pub metrics: Metrics,
    pub max_queue: usize,
    pub max_tokens_limit: usize,
    /// The GPU generations decode on (`None`: the CPU).
    pub gpu: Option<String>,
    permits: Arc<Semaphore>,
    dense: Mutex<DenseReference>,
    aggregates: Mutex<Aggregates>,
}

impl Shared {
    /// State for a server admitting `max_queue` requests at once, decoding on `gpu` (its
    /// name) or the CPU.
    pub fn new(
        assets: Arc<Assets>,
        dense: DenseReference,
        max_queue: usize,
        max_tokens_limit: usize,
        gpu: Option<String>,
    ) -> Self {
        Self {
            assets,
            metrics: Metrics::default(),
            max_queue,
            max_tokens_limit,
            gpu,
            permits: Arc::new(Semaphore::new(max_queue)),
            dense: Mutex::new(dense),
            aggregates: Mutex::new(Aggregates::default()),
        }
    }

    /// A slot in the queue, held until the request ends; RESOURCE_EXHAUSTED when full.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!("the queue is full ({} requests admitted); retry later", self.max_queue))
        })
    }

    /// Requests admitted now.
    pub fn admitted(&self) -> usize {
        self.max_queue - self.permits.available_permits()
    }

    /// The current dense reference.
    pub fn dense(&self) -> DenseReference {
        lock(&self.dense).clone()
    }

    /// Replaces the dense reference.
    pub fn set_dense(&self, d: DenseReference) {
        *lock(&self.dense) = d;
    }

    /// The running aggregates.
    pub fn aggregates(&self) -> MutexGuard<'_, Aggregates> {
        lock(&self.aggregates)
    }
}

/// Locks `m`, recovering the data after a panic elsewhere.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update leaves the data whole, so a panic elsewhere does not make it unusable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
