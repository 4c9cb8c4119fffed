//! sieve-server: the `sieve.v1` gRPC service.
//!
//! [`Server::start`] loads the model, profile and predictors, measures the dense reference and
//! starts the engine thread ([`scheduler`]) that owns the model; [`Server::run`] serves
//! `sieve.v1.Sieve`, `grpc.health.v1` and server reflection on a listener, and Prometheus
//! metrics on another, until the shutdown future resolves: then health turns NOT_SERVING,
//! new work is refused, running streams get the grace period to finish, and the rest are
//! cancelled.

pub mod assets;
pub mod compare;
pub mod config;
pub mod dense_ref;
pub mod error;
#[cfg(feature = "cuda")]
pub mod gpu;
#[cfg(not(feature = "cuda"))]
#[path = "gpu_stub.rs"]
pub mod gpu;
pub mod info;
pub mod metrics;
pub mod report;
pub mod request;
pub mod scheduler;
pub mod service;
pub mod state;
pub mod stats;

use std::future::Future;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Duration;

use sieve_proto::v1::sieve_server::SieveServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use config::{Device, ServerConfig};
pub use error::ServerError;

use crate::assets::Assets;
use crate::dense_ref::DenseReference;
use crate::scheduler::Job;
use crate::service::SieveService;
use crate::state::Shared;

/// A loaded server whose engine thread runs, ready to serve.
pub struct Server {
    shared: Arc<Shared>,
    jobs: Sender<Job>,
    engine: JoinHandle<()>,
    grace: Duration,
}

impl Server {
    /// Loads everything `cfg` names, measures the dense reference and starts the engine thread.
    pub fn start(cfg: &ServerConfig) -> Result<Self, ServerError> {
        if cfg.max_queue == 0 || cfg.max_tokens_limit == 0 || cfg.gpu_streams == 0 {
            return Err(ServerError::Engine(sieve_engine::EngineError::InvalidInput(
                "--max-queue, --max-tokens-limit and --gpu-streams must be at least 1".into(),
            )));
        }
        let (assets, model) = Assets::load(cfg)?;
        // The engine thread opens the GPU itself: CUDA graphs are tied to the thread that
        // uses them (cudarc's are not Send). It reports the dense reference (or why it could
        // not start), then waits for the shared state built from it.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(DenseReference, Option<String>), ServerError>>();
        let (shared_tx, shared_rx) = std::sync::mpsc::channel::<Arc<Shared>>();
        let (jobs, rx) = std::sync::mpsc::channel();
        let (device, refresh, streams) = (cfg.device, cfg.dense_refresh, cfg.gpu_streams);
        let engine = std::thread::Builder::new()
            .name("sieve-engine".into())
            .spawn(move || {
                let opened = match device {
                    config::Device::Cpu => Ok(None),
                    config::Device::Cuda(ordinal) => gpu::GpuBackend::open(&model, ordinal, streams).map(Some),
                };
                let started = opened.and_then(|mut gpu| {
                    let dense = match gpu.as_mut() {
                        Some(g) => g.dense_reference()?,
                        None => DenseReference::measure(&model)?,
                    };
                    Ok((gpu, dense))
                });
                let gpu = match started {
                    Ok((gpu, dense)) => {
                        let name = gpu.as_ref().map(|g| g.name().to_string());
                        if ready_tx.send(Ok((dense, name))).is_err() {
                            return;
                        }
                        gpu
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if let Ok(shared) = shared_rx.recv() {
                    scheduler::run(model, gpu, shared, rx, refresh);
                }
            })
            .map_err(|source| ServerError::Io { what: "starting the engine thread".into(), source })?;
        let (dense, gpu_name) =
            ready_rx.recv().map_err(|_| ServerError::EngineThread("it ended while starting".into()))??;
        tracing::info!(
            tok_s = dense.decode_tok_s,
            gpu = gpu_name.as_deref().unwrap_or("none"),
            "dense reference measured"
        );
        let shared = Arc::new(Shared::new(Arc::new(assets), dense, cfg.max_queue, cfg.max_tokens_limit, gpu_name));
        shared_tx.send(shared.clone()).map_err(|_| ServerError::EngineThread("it ended while starting".into()))?;
        Ok(Self { shared, jobs, engine, grace: cfg.grace })
    }

    /// Serves gRPC on `listener` (and metrics on `metrics` when given) until `shutdown`
    /// resolves and the running streams have ended.
    pub async fn run(
        self,
        listener: TcpListener,
        metrics: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server { shared, jobs, engine, grace } = self;
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<SieveServer<SieveService>>().await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sieve_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sieve_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let metrics_task = metrics.map(|l| tokio::spawn(metrics::serve(l, shared.clone())));
        let drain = jobs.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!(grace_s = grace.as_secs_f64(), "shutting down");
            reporter.set_not_serving::<SieveServer<SieveService>>().await;
            reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            let _ = drain.send(Job::Shutdown { grace });
        };
        let served = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(SieveServer::new(SieveService::new(shared.clone(), jobs)))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
            .await;
        if let Some(t) = metrics_task {
            t.abort();
        }
        // Every job sender is gone now, so the engine thread ends once its streams have.
        let joined = tokio::task::spawn_blocking(move || engine.join()).await;
        served?;
        match joined {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ServerError::EngineThread("it panicked".into())),
            Err(e) => Err(ServerError::EngineThread(e.to_string())),
        }
    }
}
