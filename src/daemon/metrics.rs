//! The Prometheus endpoint: runs by outcome, last success, assets by type and state,
//! bytes stored, API calls by endpoint and errcode, budget left, rate limiter waits.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::catalog::{RunStatus, TypeSummary};
use crate::sync::{SyncReport, unix_now};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The daemon's metrics, shared with the HTTP endpoint.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    runs: Family<Labels, Counter>,
    last_success: Gauge,
    assets: Family<Labels, Gauge>,
    bytes: Family<Labels, Gauge>,
    api_calls: Family<Labels, Counter>,
    budget_left: Family<Labels, Gauge>,
    limiter_wait: Family<Labels, Counter<f64>>,
    stale: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mpmirror");
        let metrics = Self {
            registry: Arc::new(Mutex::new(Registry::default())),
            runs: Family::default(),
            last_success: Gauge::default(),
            assets: Family::default(),
            bytes: Family::default(),
            api_calls: Family::default(),
            budget_left: Family::default(),
            limiter_wait: Family::default(),
            stale: Counter::default(),
        };
        registry.register("runs", "Sync runs by outcome", metrics.runs.clone());
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time the last ok run finished",
            metrics.last_success.clone(),
        );
        registry.register(
            "assets",
            "Assets listed upstream by account, type and state",
            metrics.assets.clone(),
        );
        registry.register(
            "stored_bytes",
            "Bytes of the current versions by account and type",
            metrics.bytes.clone(),
        );
        registry.register(
            "api_calls",
            "API requests by account, endpoint and errcode",
            metrics.api_calls.clone(),
        );
        registry.register(
            "quota_budget_remaining",
            "Calls left under this run's quota budget, by account and endpoint",
            metrics.budget_left.clone(),
        );
        registry.register(
            "rate_limiter_wait_seconds",
            "Time spent waiting for the API rate limiter",
            metrics.limiter_wait.clone(),
        );
        registry.register(
            "stale_alerts",
            "Times the backup was found older than health.max_age",
            metrics.stale.clone(),
        );
        *metrics
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = registry;
        metrics
    }

    /// Counts a finished run.
    pub fn record_run(&self, report: &SyncReport) {
        self.runs
            .get_or_create(&labels(&[("outcome", report.status.as_str())]))
            .inc();
        if report.status == RunStatus::Ok {
            self.last_success.set(unix_now());
        }
        for account in &report.accounts {
            for (endpoint, errcode, calls) in &account.calls {
                let errcode = errcode.to_string();
                self.api_calls
                    .get_or_create(&labels(&[
                        ("account", &account.account),
                        ("endpoint", endpoint),
                        ("errcode", &errcode),
                    ]))
                    .inc_by(*calls);
            }
            for (endpoint, left) in &account.budget_left {
                self.budget_left
                    .get_or_create(&labels(&[
                        ("account", &account.account),
                        ("endpoint", endpoint),
                    ]))
                    .set(i64::try_from(*left).unwrap_or(i64::MAX));
            }
            self.limiter_wait
                .get_or_create(&labels(&[("account", &account.account)]))
                .inc_by(account.limiter_wait.as_secs_f64());
        }
    }

    /// Counts a run that could not start (lock held, data_dir unusable).
    pub fn record_failed_start(&self) {
        self.runs
            .get_or_create(&labels(&[("outcome", "not_started")]))
            .inc();
    }

    /// Counts a stale-backup alert.
    pub fn record_stale(&self) {
        self.stale.inc();
    }

    /// Sets the asset and byte gauges from the catalog's summary.
    pub fn record_catalog(&self, summary: &[TypeSummary]) {
        for row in summary {
            let pending = row
                .present
                .saturating_sub(row.stored + row.failed + row.unavailable);
            for (state, count) in [
                ("stored", row.stored),
                ("failed", row.failed),
                ("unavailable", row.unavailable),
                ("pending", pending),
                ("deleted", row.deleted),
            ] {
                self.assets
                    .get_or_create(&labels(&[
                        ("account", &row.account),
                        ("type", &row.kind),
                        ("state", state),
                    ]))
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            self.bytes
                .get_or_create(&labels(&[("account", &row.account), ("type", &row.kind)]))
                .set(i64::try_from(row.bytes).unwrap_or(i64::MAX));
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if encode(&mut text, &registry).is_err() {
            text.clear();
        }
        text
    }
}

/// Binds `addr` and serves `/metrics` until `cancel`.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    metrics: Metrics,
    addr: SocketAddr,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            let metrics = metrics.clone();
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let response = if request.uri().path() == "/metrics" {
                        Response::builder()
                            .header(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(metrics.render())))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                    };
                    response.map_err(std::io::Error::other)
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok(())
}
