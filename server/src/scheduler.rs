//! The engine thread: it owns the model, takes jobs from the handlers over a channel, and
//! advances every running generation by one token in turn (round-robin per decode step), so
//! concurrent streams progress fairly. On a GPU ([`GpuBackend`]) as many generations as it
//! has stream slots (one KV cache each) take turns the same way, and the admitted others wait
//! in arrival order for a slot. A stream whose client went away stops at its next step; a deadline ends it with DEADLINE_EXCEEDED; a shutdown lets running streams finish
//! within the grace period and cancels the rest. When idle it re-measures a stale dense
//! reference.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use sieve_engine::Model;
use sieve_engine::generate::{Generation, Session, Step};
use sieve_engine::model::LayerTimes;
use sieve_engine::stop::StopStrings;
use sieve_engine::tokenizer::StreamDecoder;
use sieve_proto::v1;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tonic::{Code, Status};

use crate::dense_ref::DenseReference;
use crate::gpu::{GpuBackend, GpuStream};
use crate::request::{CompareSpec, GenerateSpec};
use crate::state::Shared;

/// What the handlers send the engine thread.
pub enum Job {
    Generate(Box<GenerateJob>),
    Compare(Box<CompareJob>),
    /// Stop admitting work; cancel what still runs after `grace`.
    Shutdown {
        grace: Duration,
    },
}

/// A validated generation and where its messages go.
pub struct GenerateJob {
    pub spec: GenerateSpec,
    pub deadline: Option<Instant>,
    pub tx: UnboundedSender<Result<v1::GenerateResponse, Status>>,
    pub permit: OwnedSemaphorePermit,
}

/// A validated comparison and where its answer goes.
pub struct CompareJob {
    pub spec: CompareSpec,
    pub deadline: Option<Instant>,
    pub reply: oneshot::Sender<Result<v1::CompareResponse, Status>>,
    pub permit: OwnedSemaphorePermit,
}

/// Where a running generation decodes (both boxed: a stream's state is hundreds of bytes,
/// moved as the scheduler's queue turns).
enum Runner<'m> {
    Cpu(Box<Session<'m>>),
    Gpu(Box<GpuStream>),
}

impl Runner<'_> {
    fn step(&mut self, gpu: Option<&mut GpuBackend>) -> sieve_engine::Result<Step> {
        match (self, gpu) {
            (Runner::Cpu(s), _) => s.step(),
            (Runner::Gpu(s), Some(g)) => g.step(s),
            (Runner::Gpu(_), None) => {
                Err(sieve_engine::EngineError::InvalidInput("a GPU stream without the GPU backend".into()))
            }
        }
    }
    fn cancel(&mut self) {
        match self {
            Runner::Cpu(s) => s.cancel(),
            Runner::Gpu(s) => s.cancel(),
        }
    }
    fn options(&self) -> &sieve_engine::generate::GenerateOptions {
        match self {
            Runner::Cpu(s) => s.options(),
            Runner::Gpu(s) => s.options(),
        }
    }
    fn layer_times(&self) -> Option<&LayerTimes> {
        match self {
            Runner::Cpu(s) => s.layer_times(),
            Runner::Gpu(_) => None,
        }
    }
    fn snapshot(&self) -> Generation {
        match self {
            Runner::Cpu(s) => s.snapshot(),
            Runner::Gpu(s) => s.snapshot(),
        }
    }
}

/// A running generation.
struct Active<'m> {
    session: Runner<'m>,
    decoder: StreamDecoder,
    stops: StopStrings,
    tx: UnboundedSender<Result<v1::GenerateResponse, Status>>,
    deadline: Option<Instant>,
    method: crate::request::MethodAt,
    /// The queue slot, given back before the last message goes out, so a client that sends
    /// its next request on seeing it finds the slot free.
    permit: Option<OwnedSemaphorePermit>,
}

/// How a step left a stream.
enum Outcome {
    Running,
    Ended(Code),
}

impl Active<'_> {
    fn send(&self, text: String, token_ids: Vec<u32>, summary: Option<v1::GenerationSummary>) -> bool {
        self.tx.send(Ok(v1::GenerateResponse { text, token_ids, summary })).is_ok()
    }

    /// Advances the stream by one token.
    fn advance(&mut self, shared: &Shared, gpu: Option<&mut GpuBackend>) -> Outcome {
        if self.tx.is_closed() {
            self.session.cancel();
            return Outcome::Ended(Code::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = self.tx.send(Err(Status::deadline_exceeded("the deadline passed during generation")));
            self.session.cancel();
            return Outcome::Ended(Code::DeadlineExceeded);
        }
        let tok = &shared.assets.tokenizer;
        let step = match self.session.step(gpu) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("generation failed: {e}");
                let _ = self.tx.send(Err(Status::internal(format!("generation failed: {e}"))));
                return Outcome::Ended(Code::Internal);
            }
        };
        let (ids, mut text, last) = match step {
            Step::Token(t) => (vec![t], self.stops.push(&self.decoder.push(tok, t)), false),
            Step::Last(t, _) => {
                let piece = self.decoder.push(tok, t) + &self.decoder.finish();
                (vec![t], self.stops.push(&piece), true)
            }
            Step::Done(_) => (Vec::new(), self.stops.push(&self.decoder.finish()), true),
        };
        let stop_string = self.stops.stopped();
        if !(last || stop_string) {
            let sent = self.send(text, ids, None);
            return if sent { Outcome::Running } else { Outcome::Ended(Code::Cancelled) };
        }
        text.push_str(&self.stops.finish());
        self.session.cancel();
        let summary = self.summary(shared, stop_string);
        self.permit.take();
        if self.send(text, ids, Some(summary)) { Outcome::Ended(Code::Ok) } else { Outcome::Ended(Code::Cancelled) }
    }

    fn summary(&self, shared: &Shared, stop_string: bool) -> v1::GenerationSummary {
        let g = self.session.snapshot();
        let params = shared.assets.config.proj_params();
        let achieved = match (&g.stats, &self.session.options().sparsity) {
            (Some(s), Some(p)) => s.achieved(p.method, &params),
            _ => 0.0,
        };
        crate::report::summary(
            &g,
            self.session.layer_times(),
            self.method,
            achieved,
            stop_string,
            &shared.dense(),
            shared.assets.config.n_layers,
        )
    }

    /// Records the ended stream in the aggregates and metrics, and frees its GPU slot.
    fn record(self, shared: &Shared, code: Code, gpu: Option<&mut GpuBackend>) {
        if let (Runner::Gpu(s), Some(g)) = (&self.session, gpu) {
            g.finish(s);
        }
        let times = self.session.layer_times().cloned();
        let g = self.session.snapshot();
        shared.metrics.request("Generate", code);
        shared.metrics.tokens(&self.method.label(), g.tokens.len());
        shared.aggregates().add(self.method, &g, times.as_ref(), shared.assets.config.n_layers);
    }
}

/// Runs the engine until every job sender is gone (and the running streams ended);
/// generations decode on `gpu` when there is one.
pub fn run(model: Model, mut gpu: Option<GpuBackend>, shared: Arc<Shared>, jobs: Receiver<Job>, refresh: Duration) {
    let mut active: Vec<Active<'_>> = Vec::new();
    let mut waiting: VecDeque<GenerateJob> = VecDeque::new();
    let mut drain_until: Option<Instant> = None;
    let mut senders_gone = false;
    loop {
        // Take new work: wait when idle, otherwise only what is already queued.
        loop {
            let job = if active.is_empty() && waiting.is_empty() {
                if senders_gone {
                    return;
                }
                if drain_until.is_none() && shared.dense().measured.elapsed() >= refresh {
                    let measured = match gpu.as_mut() {
                        Some(g) => g.dense_reference(),
                        None => DenseReference::measure(&model),
                    };
                    match measured {
                        Ok(d) => shared.set_dense(d),
                        Err(e) => tracing::warn!("dense reference not refreshed: {e}"),
                    }
                }
                match jobs.recv_timeout(refresh.min(Duration::from_secs(1))) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        senders_gone = true;
                        break;
                    }
                }
            };
            match job {
                Job::Shutdown { grace } => drain_until = Some(Instant::now() + grace),
                Job::Generate(j) if drain_until.is_some() => {
                    let _ = j.tx.send(Err(Status::unavailable("the server is shutting down")));
                    shared.metrics.request("Generate", Code::Unavailable);
                }
                Job::Compare(j) if drain_until.is_some() => {
                    let _ = j.reply.send(Err(Status::unavailable("the server is shutting down")));
                    shared.metrics.request("Compare", Code::Unavailable);
                }
                Job::Generate(j) if gpu.is_some() => waiting.push_back(*j),
                Job::Generate(j) => start(&model, &shared, *j, &mut active, None),
                Job::Compare(j) => {
                    let result = crate::compare::run(&model, &shared.assets, &j.spec, j.deadline);
                    shared.metrics.request("Compare", result.as_ref().map_or_else(Status::code, |_| Code::Ok));
                    drop(j.permit);
                    let _ = j.reply.send(result);
                }
            }
        }
        if drain_until.is_some_and(|t| Instant::now() >= t) {
            for a in active.drain(..) {
                let _ = a.tx.send(Err(Status::unavailable("the server shut down before the generation finished")));
                a.record(&shared, Code::Unavailable, gpu.as_mut());
            }
            for j in waiting.drain(..) {
                let _ = j.tx.send(Err(Status::unavailable("the server shut down before the generation started")));
                shared.metrics.request("Generate", Code::Unavailable);
            }
            continue;
        }
        // Waiting generations start as GPU stream slots free up.
        while gpu.as_ref().is_some_and(GpuBackend::has_free_slot) {
            let Some(j) = waiting.pop_front() else { break };
            start(&model, &shared, j, &mut active, gpu.as_mut());
        }
        let mut i = 0;
        while i < active.len() {
            match active[i].advance(&shared, gpu.as_mut()) {
                Outcome::Running => i += 1,
                Outcome::Ended(code) => active.swap_remove(i).record(&shared, code, gpu.as_mut()),
            }
        }
    }
}

/// Runs the prompt of a new generation (on `gpu` when given) and adds it to the running set.
fn start<'m>(
    model: &'m Model,
    shared: &Shared,
    j: GenerateJob,
    active: &mut Vec<Active<'m>>,
    gpu: Option<&mut GpuBackend>,
) {
    if j.tx.is_closed() {
        shared.metrics.request("Generate", Code::Cancelled);
        return;
    }
    if j.deadline.is_some_and(|d| Instant::now() >= d) {
        let _ = j.tx.send(Err(Status::deadline_exceeded("the deadline passed while the request waited")));
        shared.metrics.request("Generate", Code::DeadlineExceeded);
        return;
    }
    let GenerateSpec { prompt, options, stops, method } = j.spec;
    let started = match gpu {
        // The CPU model's checks first, so both devices refuse the same requests alike.
        Some(g) => sieve_engine::generate::validate(model, &prompt, &options)
            .and_then(|()| g.start(&prompt, options))
            .map(|s| Runner::Gpu(Box::new(s))),
        None => Session::start(model, &prompt, options).map(|s| Runner::Cpu(Box::new(s.with_layer_timing()))),
    };
    match started {
        Ok(session) => active.push(Active {
            session,
            decoder: StreamDecoder::default(),
            stops: StopStrings::new(stops),
            tx: j.tx,
            deadline: j.deadline,
            method,
            permit: Some(j.permit),
        }),
        Err(e) => {
            let status = match e {
                sieve_engine::EngineError::InvalidInput(_) | sieve_engine::EngineError::ContextOverflow { .. } => {
                    Status::invalid_argument(e.to_string())
                }
                _ => Status::internal(e.to_string()),
            };
            shared.metrics.request("Generate", status.code());
            let _ = j.tx.send(Err(status));
        }
    }
}
