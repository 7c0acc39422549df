//! One receiver's queue and the task that empties it: events in order, one in flight, each
//! retried with exponential backoff and jitter until it is taken, refused for good, or
//! `MAX_ATTEMPTS` have failed. The queue is bounded: past `QUEUE_LENGTH`, the oldest
//! waiting event is dropped (a receiver that is down for a day costs a bounded memory).
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::metrics::{counter::Counter, family::Family};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{
    event::Event,
    settings::{Format, Receiver},
};
use crate::daemon::{backoff, lock};

/// Events waiting for one receiver, at most; a full queue drops its oldest.
pub const QUEUE_LENGTH: usize = 1000;
/// Attempts at one event before it is given up: 3 to 6 minutes of waits between them.
const MAX_ATTEMPTS: u32 = 12;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The header that carries the body's HMAC-SHA256, as GitHub's `X-Hub-Signature-256`.
pub const SIGNATURE: &str = "X-Reconciler-Signature-256";

/// `reconciler_notifications_total`'s results: `sent`, `retried` (an attempt that failed
/// and is tried again), `failed` (given up, or refused), `dropped` (the queue was full, or
/// the receiver left the configuration).
pub const RESULTS: [&str; 4] = ["sent", "retried", "failed", "dropped"];

/// `reconciler_notifications_total`, by `result` (`RESULTS`).
pub type Results = Family<Vec<(&'static str, String)>, Counter>;

/// One receiver: its settings (a reload changes them in place) and its queue.
pub struct Queue {
    pub settings: Mutex<Receiver>,
    agent: Mutex<ureq::Agent>,
    waiting: Mutex<Waiting>,
    /// Wakes the task for a new event, and `drain` when the queue is empty.
    changed: Notify,
    results: Results,
}

#[derive(Default)]
struct Waiting {
    events: VecDeque<Arc<Event>>,
    /// An event is being delivered.
    in_flight: bool,
}

impl Queue {
    pub fn new(settings: Receiver, results: Results) -> Queue {
        Queue {
            agent: Mutex::new(agent(settings.timeout)),
            settings: Mutex::new(settings),
            waiting: Mutex::default(),
            changed: Notify::new(),
            results,
        }
    }

    /// Takes new settings (a reload): the next attempt uses them.
    pub fn reconfigure(&self, settings: Receiver) {
        *lock(&self.agent) = agent(settings.timeout);
        *lock(&self.settings) = settings;
    }

    /// Queues `event` if this receiver wants it; never waits.
    pub fn push(&self, event: &Arc<Event>) {
        if !lock(&self.settings).events.contains(event.what.name()) {
            return;
        }
        let mut waiting = lock(&self.waiting);
        if waiting.events.len() >= QUEUE_LENGTH {
            waiting.events.pop_front();
            self.count("dropped");
        }
        waiting.events.push_back(Arc::clone(event));
        drop(waiting);
        self.changed.notify_waiters();
    }

    /// Drops every waiting event, and the one in flight (the receiver is gone, its task
    /// aborted); how many there were.
    pub fn forget(&self) -> usize {
        let mut waiting = lock(&self.waiting);
        let dropped = waiting.events.len() + usize::from(waiting.in_flight);
        waiting.events.clear();
        drop(waiting);
        for _ in 0..dropped {
            self.count("dropped");
        }
        dropped
    }

    /// The events waiting, oldest first.
    #[cfg(test)]
    pub fn queued(&self) -> Vec<Arc<Event>> {
        lock(&self.waiting).events.iter().cloned().collect()
    }

    /// Waits until nothing is waiting or in flight.
    pub async fn idle(&self) {
        loop {
            // Made before the look: a change between the two still wakes it.
            let notified = self.changed.notified();
            {
                let waiting = lock(&self.waiting);
                if waiting.events.is_empty() && !waiting.in_flight {
                    return;
                }
            }
            notified.await;
        }
    }

    fn count(&self, result: &'static str) {
        self.results.get_or_create(&vec![("result", result.to_owned())]).inc();
    }

    /// The next event, once there is one; it is in flight until [`Queue::done`].
    async fn next(&self) -> Arc<Event> {
        loop {
            // Made before the look: an event pushed between the two still wakes it.
            let notified = self.changed.notified();
            {
                let mut waiting = lock(&self.waiting);
                if let Some(event) = waiting.events.pop_front() {
                    waiting.in_flight = true;
                    return event;
                }
            }
            notified.await;
        }
    }

    fn done(&self) {
        lock(&self.waiting).in_flight = false;
        self.changed.notify_waiters();
    }
}

/// A client that gives up on an attempt after `timeout`, takes any status as an answer
/// (the caller judges it), follows no redirect (a POST redirected is not delivered), and
/// checks a server's certificate against the system's roots (OpenSSL's, as git's https).
fn agent(timeout: Duration) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::NativeTls)
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .user_agent(concat!("reconciler/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .build()
        .into()
}

/// Delivers `queue`'s events for ever (until the task is aborted: the receiver left the
/// configuration).
pub async fn run(queue: Arc<Queue>) {
    loop {
        let event = queue.next().await;
        deliver(&queue, &event).await;
        queue.done();
    }
}

/// One event, attempted until it is taken, refused for good, or given up.
async fn deliver(queue: &Queue, event: &Arc<Event>) {
    for attempt in 1..=MAX_ATTEMPTS {
        let (agent, settings) = (lock(&queue.agent).clone(), lock(&queue.settings).clone());
        let body = match settings.format {
            Format::Generic => event.generic_body(),
            Format::Slack => event.slack_body(),
        };
        // The URL this attempt went to (a reload may change the settings meanwhile).
        let url = settings.url.clone();
        let sent = {
            let event = Arc::clone(event);
            tokio::task::spawn_blocking(move || post(&agent, &settings, &event, &body)).await
        };
        let failure = match sent {
            Ok(Ok(())) => {
                queue.count("sent");
                if attempt > 1 {
                    info!(url, event = event.what.name(), attempt, "notification delivered");
                }
                return;
            }
            Ok(Err(failure)) => failure,
            Err(panicked) => Failure::Retry(panicked.to_string()),
        };
        let Failure::Retry(error) = failure else {
            warn!(url, event = event.what.name(), %failure, "notification refused; not retried");
            queue.count("failed");
            return;
        };
        if attempt == MAX_ATTEMPTS {
            break;
        }
        if attempt == 1 {
            warn!(url, event = event.what.name(), error, "notification not delivered; retrying");
        }
        queue.count("retried");
        tokio::time::sleep(backoff::retry(attempt, MAX_BACKOFF)).await;
    }
    warn!(url = lock(&queue.settings).url, event = event.what.name(), "notification given up");
    queue.count("failed");
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The receiver could not be reached, was slow, or answered 5xx, 408 or 429.
    #[error("{0}")]
    Retry(String),
    /// The receiver refused the request itself (another 4xx, a redirect), or the URL
    /// cannot be sent to: sending it again would fail again.
    #[error("{0}")]
    Refused(String),
}

/// POSTs `body` to `settings.url`, signed when a secret is set.
fn post(
    agent: &ureq::Agent,
    settings: &Receiver,
    event: &Event,
    body: &[u8],
) -> Result<(), Failure> {
    let mut request = agent
        .post(&settings.url)
        .header("Content-Type", "application/json")
        .header("X-Reconciler-Event", event.what.name())
        .header("X-Reconciler-Delivery", &event.id);
    if let Some(signature) = settings.secret.as_ref().and_then(|secret| secret.sign(body)) {
        request = request.header(SIGNATURE, signature);
    }
    let response = request.send(body).map_err(|e| match e {
        ureq::Error::BadUri(_) => Failure::Refused(e.to_string()),
        e => Failure::Retry(e.to_string()),
    })?;
    judged(response.status().as_u16())
}

/// What a receiver's answer `code` means: taken (2xx), try later (408, 429, 5xx: the
/// receiver is busy or broken for now), or refused for good (any other: sent again, the
/// request would be refused again).
fn judged(code: u16) -> Result<(), Failure> {
    match code {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(Failure::Retry(format!("the receiver answered {code}"))),
        code => Err(Failure::Refused(format!("the receiver answered {code}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_or_broken_receivers_are_tried_again_refusals_are_not() {
        for code in [200, 202, 204] {
            assert!(judged(code).is_ok(), "{code}");
        }
        for code in [408, 429, 500, 502, 503] {
            assert!(matches!(judged(code), Err(Failure::Retry(_))), "{code}");
        }
        for code in [301, 400, 401, 403, 404, 413] {
            assert!(matches!(judged(code), Err(Failure::Refused(_))), "{code}");
        }
    }
}
