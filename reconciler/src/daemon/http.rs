//! The daemon's HTTP endpoint: `GET /metrics`, `/healthz`, `/readyz`, `/status`;
//! `POST /reconcile`. axum routes the requests; each connection is served by hyper's HTTP/1
//! with a header read timeout and an overall deadline, so slow and idle clients cannot hold
//! connections for ever, and the accept loop backs off on errors (EMFILE repeats until a
//! descriptor is freed: retrying at once would spin).
use std::{io, sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{header, HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post},
    Json, Router,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tracing::warn;

use super::{DaemonStatus, Shared};

/// Request bodies longer than this are refused (413); a webhook's fits.
pub const MAX_BODY: usize = 64 * 1024;
/// A client must send a request's headers within this long, also between requests on a
/// kept-alive connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer than this, however it behaves.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);
/// Waits after a failed accept: the first, and the most.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// The routes, over the state they read.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/status", get(status))
        .route("/reconcile", post(reconcile))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// OpenMetrics to a scraper that asks for it (Prometheus does), the Prometheus text format to
/// anything else.
async fn metrics_text(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    shared.metrics().backend_health(&shared.health.report());
    let (kind, body) = shared.metrics().render(accept.contains("application/openmetrics-text"));
    ([(header::CONTENT_TYPE, kind)], body)
}

async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.status().ready {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no successful reconcile yet\n")
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<DaemonStatus> {
    let mut status = shared.status().clone();
    status.health = shared.health.report();
    status.health_failing_open = shared.health.failing_open();
    Json(status)
}

/// A webhook's body is read (so the client sees an answer, not a reset) and not used.
async fn reconcile(State(shared): State<Arc<Shared>>, _body: Bytes) -> (StatusCode, &'static str) {
    shared.trigger.notify_one();
    (StatusCode::ACCEPTED, "reconcile triggered\n")
}

/// Serves `listener` until the daemon ends.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = router(shared);
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF.0;
                stream
            }
            Err(error) => {
                warn!(%error, "accepting an HTTP connection failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
        });
    }
}

/// A blocking client for the same endpoint: `(status code, body)` of `METHOD path` (GET or
/// POST), within 10 s.
pub fn request(addr: &str, method: &str, path: &str) -> io::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let response = match method {
        "GET" => agent.get(&url).call(),
        "POST" => agent.post(&url).send_empty(),
        other => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("method {other}")));
        }
    }
    .map_err(io::Error::other)?;
    let code = response.status().as_u16();
    let body = response.into_body().read_to_string().map_err(io::Error::other)?;
    Ok((code, body))
}
