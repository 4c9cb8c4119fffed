//! The `sieve.v1.Sieve` service: validates each request, takes a queue slot, and hands the
//! work to the engine thread; `Info` and `LayerStats` are answered from shared state.

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use sieve_proto::v1;
use sieve_proto::v1::sieve_server::Sieve;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::request;
use crate::scheduler::{CompareJob, GenerateJob, Job};
use crate::state::Shared;

/// The service handed to tonic.
pub struct SieveService {
    shared: Arc<Shared>,
    jobs: Sender<Job>,
}

impl SieveService {
    /// A service feeding `jobs` to the engine thread.
    pub fn new(shared: Arc<Shared>, jobs: Sender<Job>) -> Self {
        Self { shared, jobs }
    }

    fn refuse(&self, rpc: &'static str, s: Status) -> Status {
        self.shared.metrics.request(rpc, s.code());
        s
    }

    fn submit(&self, rpc: &'static str, job: Job) -> Result<(), Status> {
        self.jobs.send(job).map_err(|_| self.refuse(rpc, Status::unavailable("the engine has stopped")))
    }
}

/// The deadline a client set with the `grpc-timeout` header, if any.
pub fn deadline(metadata: &MetadataMap) -> Result<Option<Instant>, Status> {
    let Some(v) = metadata.get("grpc-timeout") else { return Ok(None) };
    let bad = || Status::invalid_argument("grpc-timeout: malformed header");
    let s = v.to_str().map_err(|_| bad())?;
    if s.len() < 2 || s.len() > 9 {
        return Err(bad());
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    };
    Ok(Instant::now().checked_add(d))
}

#[tonic::async_trait]
impl Sieve for SieveService {
    type GenerateStream = UnboundedReceiverStream<Result<v1::GenerateResponse, Status>>;

    async fn generate(&self, req: Request<v1::GenerateRequest>) -> Result<Response<Self::GenerateStream>, Status> {
        let deadline = deadline(req.metadata()).map_err(|s| self.refuse("Generate", s))?;
        if let Some(gpu) = self.shared.gpu.as_deref().filter(|_| req.get_ref().audit_every > 0) {
            let why = format!(
                "audit_every: the mask audit runs on the CPU only (it needs the dense MLP); this server decodes on the GPU ({gpu})"
            );
            return Err(self.refuse("Generate", Status::invalid_argument(why)));
        }
        let spec = request::generate(req.get_ref(), &self.shared.assets, self.shared.max_tokens_limit)
            .map_err(|s| self.refuse("Generate", s))?;
        let permit = self.shared.admit().map_err(|s| self.refuse("Generate", s))?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.submit("Generate", Job::Generate(Box::new(GenerateJob { spec, deadline, tx, permit })))?;
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn compare(&self, req: Request<v1::CompareRequest>) -> Result<Response<v1::CompareResponse>, Status> {
        let deadline = deadline(req.metadata()).map_err(|s| self.refuse("Compare", s))?;
        let spec = request::compare(req.get_ref(), &self.shared.assets, self.shared.max_tokens_limit)
            .map_err(|s| self.refuse("Compare", s))?;
        let permit = self.shared.admit().map_err(|s| self.refuse("Compare", s))?;
        let (reply, answer) = oneshot::channel();
        self.submit("Compare", Job::Compare(Box::new(CompareJob { spec, deadline, reply, permit })))?;
        match answer.await {
            Ok(r) => r.map(Response::new),
            Err(_) => Err(self.refuse("Compare", Status::unavailable("the engine stopped before answering"))),
        }
    }

    async fn info(&self, _req: Request<v1::InfoRequest>) -> Result<Response<v1::InfoResponse>, Status> {
        self.shared.metrics.request("Info", tonic::Code::Ok);
        Ok(Response::new(crate::info::info(&self.shared)))
    }

    async fn layer_stats(
        &self,
        req: Request<v1::LayerStatsRequest>,
    ) -> Result<Response<v1::LayerStatsResponse>, Status> {
        let m = req.get_ref().method;
        let only = match v1::Method::try_from(m) {
            Ok(v1::Method::Unspecified) => None,
            Ok(_) => Some(request::method_from_wire("method", m).map_err(|s| self.refuse("LayerStats", s))?),
            Err(_) => {
                return Err(
                    self.refuse("LayerStats", Status::invalid_argument(format!("method: unknown method value {m}")))
                );
            }
        };
        self.shared.metrics.request("LayerStats", tonic::Code::Ok);
        let agg = self.shared.aggregates();
        Ok(Response::new(v1::LayerStatsResponse {
            methods: agg.to_wire(only),
            dense_reference: Some(self.shared.dense().to_wire()),
            uptime_ms: agg.uptime().as_millis() as u64,
        }))
    }
}
