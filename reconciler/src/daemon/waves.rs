//! Staged rollouts across nodes, the daemon's side: on a node of a later wave
//! (`rollout.wave` > 1), a valid new revision is applied only once its gate opens, by what
//! Prometheus shows of the earlier waves (`crate::fleet::gate`). The gate is asked by a task
//! of its own ([`run`]), never by the loop: a Prometheus that is slow or down delays the
//! revision, never a health change, a webhook or a stop. Prometheus unreachable means wait.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;

use super::{backoff, config::Config, lock, outcome::Outcome};
use crate::fleet::{
    gate::{self, Gate, Verdict},
    prometheus::Prometheus,
    questions::Answers,
};

/// How long one question to Prometheus may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The revision a run holds back, and what the gate last said of it.
#[derive(Default)]
pub(super) struct Gatekeeper {
    asked: Mutex<Option<Asked>>,
    /// Wakes the task to ask at once (a revision it has not asked about).
    wake: Notify,
}

#[derive(Clone)]
struct Asked {
    revision: String,
    gate: Gate,
    wave: u32,
    verdict: Option<Verdict>,
}

impl Gatekeeper {
    /// The last verdict on `revision` at `gate` for `wave`; `None` before the first. Either
    /// way the task is told to ask (again) at once: a run that holds a revision back comes at
    /// the interval, or when the last verdict changed.
    fn verdict(&self, revision: &str, gate: &Gate, wave: u32) -> Option<Verdict> {
        let mut asked = lock(&self.asked);
        match asked.as_ref() {
            Some(a) if a.revision == revision && a.gate == *gate && a.wave == wave => {
                self.wake.notify_one();
                a.verdict.clone()
            }
            _ => {
                let revision = revision.to_owned();
                *asked = Some(Asked { revision, gate: gate.clone(), wave, verdict: None });
                self.wake.notify_one();
                None
            }
        }
    }

    fn forget(&self) {
        *lock(&self.asked) = None;
    }

    /// Keeps `verdict` on `revision` if that is still the question; whether it changed.
    fn answer(&self, revision: &str, verdict: Verdict) -> bool {
        let mut asked = lock(&self.asked);
        let Some(asked) = asked.as_mut().filter(|a| a.revision == revision) else { return false };
        let changed = asked.verdict.as_ref() != Some(&verdict);
        asked.verdict = Some(verdict);
        changed
    }
}

/// `Waiting` while `revision` may not be applied here yet; `None` to apply it (wave 1, no
/// revision, the one the data plane holds (`live`), or the gate is open).
pub(super) fn hold(
    config: &Config,
    keeper: &Gatekeeper,
    live: Option<&str>,
    revision: Option<&str>,
) -> Option<Outcome> {
    let gate = config.rollout.waits()?;
    let revision = revision?;
    if Some(revision) == live {
        keeper.forget();
        return None;
    }
    let (reason, stopped) = match keeper.verdict(revision, gate, config.rollout.wave) {
        Some(Verdict::Open) => return None,
        Some(Verdict::Wait(reason)) => (reason, false),
        Some(Verdict::Stopped(reason)) => (reason, true),
        None => (format!("asking Prometheus at {}", gate.prometheus), false),
    };
    Some(Outcome::Waiting { revision: revision.to_owned(), reason, stopped })
}

/// Asks the gate about the revision a run holds back: when a run asks, and every tenth of
/// the soak (10 s to 60 s, ±10%) between; `on_change` (a run, which applies an open gate's
/// revision) when the verdict changes.
pub(super) async fn run(keeper: Arc<Gatekeeper>, on_change: Arc<dyn Fn() + Send + Sync>) {
    loop {
        let asked = lock(&keeper.asked).clone();
        match asked {
            Some(asked) if asked.verdict.is_some() => {
                let recheck = (asked.gate.soak / 10).clamp(SECOND * 10, SECOND * 60);
                tokio::select! {
                    () = keeper.wake.notified() => {}
                    () = tokio::time::sleep(backoff::jittered(recheck)) => {}
                }
            }
            Some(_) => {}
            None => keeper.wake.notified().await,
        }
        let Some(Asked { revision, gate, wave, .. }) = lock(&keeper.asked).clone() else {
            continue;
        };
        let question = revision.clone();
        let verdict = tokio::task::spawn_blocking(move || ask(&question, &gate, wave)).await;
        match verdict {
            Ok(verdict) => {
                if keeper.answer(&revision, verdict) {
                    on_change();
                }
            }
            // Only a panic in `ask` fails the join: a bug; the daemon goes on waiting.
            Err(_) => tokio::time::sleep(SECOND * 10).await,
        }
    }
}

const SECOND: Duration = Duration::from_secs(1);

/// The gate's verdict on `revision` for a node of `wave`, from Prometheus.
fn ask(revision: &str, gate: &Gate, wave: u32) -> Verdict {
    let prometheus = Prometheus::new(&gate.prometheus, QUERY_TIMEOUT);
    match Answers::ask(&prometheus, revision, gate.soak.as_secs(), gate.max_ejected_backends) {
        Ok(answers) => gate::verdict(&answers, revision, wave, gate),
        Err(e) => Verdict::Wait(format!("{e}: waiting, not applying")),
    }
}
