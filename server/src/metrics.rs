//! Prometheus metrics in the text exposition format, served over plain HTTP (`GET /metrics`)
//! by a small listener: requests by RPC and status, tokens, queue depth, and decode tok/s and
//! mask recall per method.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::state::{Shared, lock};

/// Counters the handlers and the engine thread bump.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String), u64>>,
    tokens: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    /// Counts one finished request of `rpc` with gRPC status `code`.
    pub fn request(&self, rpc: &'static str, code: tonic::Code) {
        *lock(&self.requests).entry((rpc, format!("{code:?}"))).or_default() += 1;
    }

    /// Counts `n` generated tokens of `method`.
    pub fn tokens(&self, method: &str, n: usize) {
        *lock(&self.tokens).entry(method.to_string()).or_default() += n as u64;
    }

    /// Renders every metric.
    pub fn render(&self, shared: &Shared) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP sieve_requests_total Finished requests by RPC and gRPC status code.");
        let _ = writeln!(out, "# TYPE sieve_requests_total counter");
        for ((rpc, code), n) in lock(&self.requests).iter() {
            let _ = writeln!(out, "sieve_requests_total{{rpc=\"{rpc}\",code=\"{code}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP sieve_generated_tokens_total Tokens generated, by method and target.");
        let _ = writeln!(out, "# TYPE sieve_generated_tokens_total counter");
        for (m, n) in lock(&self.tokens).iter() {
            let _ = writeln!(out, "sieve_generated_tokens_total{{method=\"{m}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP sieve_queue_depth Requests admitted (running or waiting).");
        let _ = writeln!(out, "# TYPE sieve_queue_depth gauge");
        let _ = writeln!(out, "sieve_queue_depth {}", shared.admitted());
        let _ = writeln!(out, "# HELP sieve_queue_capacity Requests admitted at most.");
        let _ = writeln!(out, "# TYPE sieve_queue_capacity gauge");
        let _ = writeln!(out, "sieve_queue_capacity {}", shared.max_queue);
        if let Some(rss) = resident_bytes() {
            let _ = writeln!(out, "# HELP process_resident_memory_bytes Resident memory of the server process.");
            let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
            let _ = writeln!(out, "process_resident_memory_bytes {rss}");
        }
        let headline = shared.aggregates().headline();
        let _ = writeln!(out, "# HELP sieve_decode_tok_s Decode tokens per second over all timed steps, by method.");
        let _ = writeln!(out, "# TYPE sieve_decode_tok_s gauge");
        for (m, tok_s, _) in &headline {
            let _ = writeln!(out, "sieve_decode_tok_s{{method=\"{m}\"}} {tok_s:.3}");
        }
        let _ = writeln!(out, "sieve_decode_tok_s{{method=\"dense-reference\"}} {:.3}", shared.dense().decode_tok_s);
        let _ = writeln!(out, "# HELP sieve_mask_recall MLP mask recall of audited tokens against a reference mask.");
        let _ = writeln!(out, "# TYPE sieve_mask_recall gauge");
        for (m, _, recall) in &headline {
            if let Some(r) = recall {
                for (name, v) in ["teal", "cats", "cett"].iter().zip(r) {
                    let _ = writeln!(out, "sieve_mask_recall{{method=\"{m}\",reference=\"{name}\"}} {v:.4}");
                }
            }
        }
        out
    }
}

/// Resident memory of this process (Linux: /proc/self/statm, in pages of 4 KiB).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read the request head (a scrape's is small); anything larger is refused.
            while n < buf.len() {
                match sock.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = match head.split_whitespace().nth(1) {
                Some("/metrics") if head.starts_with("GET ") => ("200 OK", shared.metrics.render(&shared)),
                _ => ("404 Not Found", "try GET /metrics\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
