//! The daemon's HTTP endpoint: `GET /metrics`, `/healthz`, `/readyz`, `/status`;
//! `POST /reconcile`. axum routes the requests; each connection is served by hyper's HTTP/1
//! with a header read timeout and an overall deadline, so slow and idle clients cannot hold
//! connections for ever; at most [`MAX_CONNECTIONS`] are open, the oldest closed to make room
//! for a new one (one carrying a signed webhook delivery only when all are), so idle clients
//! cannot keep out a probe of `/healthz` nor crowd out a delivery; and the accept loop
//! backs off on errors (EMFILE repeats until a descriptor is freed: retrying at once would
//! spin).
use std::{
    collections::VecDeque,
    io,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Extension, Json, Router,
};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tracing::warn;

use super::{
    exposition,
    metrics_cache::Kind,
    status::{DaemonStatus, Shared},
    webhook::Refused,
};

/// Webhook bodies longer than this are refused (413). GitHub caps its deliveries at 25 MB;
/// a body is signed as it arrives, never held whole.
pub const MAX_BODY: u64 = 32 * 1024 * 1024;
/// Open connections at most. Well under systemd's default soft limit of 1024 descriptors,
/// with room for the daemon's own (maps, git, health checks).
pub const MAX_CONNECTIONS: usize = 256;
/// A request's headers may take this much buffer at most.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A client must send a request's headers within this long, also between requests on a
/// kept-alive connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer than this, however it behaves.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);
/// Waits after a failed accept: the first, and the most.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// The routes, over the state they read.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/status", get(status))
        .route("/reconcile", post(reconcile))
        .with_state(shared)
}

/// OpenMetrics to a scraper that asks for it (Prometheus does), the Prometheus text format to
/// anything else; gzipped if it accepts that (Prometheus does). Rendered off the async
/// threads (it reads the maps), at most once per freshness period (`metrics_cache`) for
/// each format and encoding, whoever asks: a scraper that comes meanwhile waits for the
/// render under way, or takes the last one. Each answer shares the rendered page.
async fn metrics_text(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let header_text = |name| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let openmetrics = header_text(header::ACCEPT).contains("application/openmetrics-text");
    let gzip = exposition::accepts_gzip(header_text(header::ACCEPT_ENCODING));
    let mut cache = shared.metrics_cache.lock().await;
    let kind = Kind { openmetrics, gzip };
    if let Some(fresh) = cache.fresh(kind) {
        return fresh;
    }
    let size_hint = cache.make_room(kind);
    let started = Instant::now();
    let from = Arc::clone(&shared);
    let render = move || {
        from.metrics().backend_health(&from.health.report());
        from.metrics().backend_ejections(&from.outliers.watched());
        from.export_node_state();
        from.metrics().render(openmetrics, gzip, size_hint)
    };
    let Ok(Ok((content_type, page))) = tokio::task::spawn_blocking(render).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    cache.keep(kind, started.elapsed(), content_type, page)
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
    status.ejections = shared.outliers.report();
    status.ejections_failing_open = shared.outliers.failing_open();
    status.slow_start = shared.ramps.report();
    (status.rollout, status.last_rollout) = shared.rollouts.report();
    Json(status)
}

/// A webhook: authenticated when `webhook.secretFile` is set (see `webhook`), then one run
/// asked for. The body of a request not refused by its headers is read to the end (so the
/// client sees an answer, not a reset) and otherwise not used: the run fetches the branch
/// itself, so a webhook cannot choose what is applied.
async fn reconcile(
    State(shared): State<Arc<Shared>>,
    Extension(delivering): Extension<Delivering>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, &'static str) {
    let (code, result, message) = match read_webhook(&shared, &headers, body, &delivering).await {
        Ok(()) => {
            shared.request_run();
            (StatusCode::ACCEPTED, "accepted", "reconcile triggered\n")
        }
        Err(refusal) => {
            delivering.set(false);
            refusal
        }
    };
    shared.metrics().webhook_request(result);
    (code, message)
}

/// Why a webhook is refused: its status, the metric's label, the answer.
type Refusal = (StatusCode, &'static str, &'static str);

async fn read_webhook(
    shared: &Shared,
    headers: &HeaderMap,
    body: Body,
    delivering: &Delivering,
) -> Result<(), Refusal> {
    const TOO_LARGE: Refusal =
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large", "the body is over 32 MiB\n");
    let unauthorized =
        |refused: Refused| (StatusCode::UNAUTHORIZED, "unauthorized", refused.message());
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    if declared.is_some_and(|length: u64| length > MAX_BODY) {
        return Err(TOO_LARGE);
    }
    let mut check = match shared.webhook_secret() {
        Some(secret) => Some(secret.check(headers).map_err(unauthorized)?),
        None => None,
    };
    delivering.set(check.is_some());
    let mut body = Limited::new(body, MAX_BODY as usize);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let (Some(check), Some(data)) = (check.as_mut(), frame.data_ref()) {
                    check.update(data);
                }
            }
            Err(e) if e.is::<LengthLimitError>() => return Err(TOO_LARGE),
            Err(_) => {
                return Err((StatusCode::BAD_REQUEST, "unreadable", "the body could not be read\n"))
            }
        }
    }
    check.map_or(Ok(()), |check| check.finish().map_err(unauthorized))
}

/// Serves `listener` until the daemon ends.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = router(shared);
    let mut backoff = ACCEPT_BACKOFF.0;
    // Oldest first. A probe after a thousand idle connections is served: each new connection
    // past the bound closes the oldest that carries no signed webhook delivery.
    let mut open: VecDeque<Open> = VecDeque::new();
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
        open.retain(|connection| !connection.task.is_finished());
        if open.len() >= MAX_CONNECTIONS {
            // Unauthenticated connections go first: a crowd of them cannot close a delivery.
            let victim = open.iter().position(|c| !c.delivering.is_set()).unwrap_or(0);
            if let Some(victim) = open.remove(victim) {
                victim.task.abort();
            }
        }
        let delivering = Delivering::default();
        let service = TowerToHyperService::new(app.clone().layer(Extension(delivering.clone())));
        let connection = tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
        });
        open.push_back(Open { task: connection.abort_handle(), delivering });
    }
}

/// An open connection: its task, and whether it carries a signed webhook delivery.
struct Open {
    task: tokio::task::AbortHandle,
    delivering: Delivering,
}

/// Set while a connection's webhook delivery has passed the check of its headers (a
/// signature to verify against the body, or a GitLab token that matched), and after it
/// passed the whole check; cleared when a delivery fails it. Such a connection is closed to
/// make room only when every open connection is one.
#[derive(Clone, Default)]
struct Delivering(Arc<AtomicBool>);

impl Delivering {
    fn set(&self, delivering: bool) {
        self.0.store(delivering, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A blocking client for the same endpoint: `(status code, body)` of `METHOD path` (GET or
/// POST), within 10 s.
pub fn request(addr: &str, method: &str, path: &str) -> io::Result<(u16, String)> {
    request_with(addr, method, path, &[])
}

/// [`request`] with `headers` (a webhook's signature, say) and no body.
pub fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let response = match method {
        "GET" => headers.iter().fold(agent.get(&url), |r, (k, v)| r.header(*k, *v)).call(),
        "POST" => headers.iter().fold(agent.post(&url), |r, (k, v)| r.header(*k, *v)).send_empty(),
        other => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("method {other}")));
        }
    }
    .map_err(io::Error::other)?;
    let code = response.status().as_u16();
    let body = response.into_body().read_to_string().map_err(io::Error::other)?;
    Ok((code, body))
}
