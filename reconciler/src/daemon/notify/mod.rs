//! Notifications (`notify:` in the node configuration): what happened on this node, POSTed
//! to each receiver as JSON (`generic`, with `format_version`) or as a Slack message,
//! signed like GitHub's webhooks when the receiver has a secret.
//!
//! Sending never waits: an event goes into each receiver's bounded queue, and a task per
//! receiver delivers them in order, retrying with backoff (`deliver`). A dead or slow
//! receiver delays its own notifications only, never a reconcile or another receiver.
//! `event` says what an event holds, `settings` how a receiver is configured.
pub mod deliver;
pub mod event;
pub mod settings;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use tracing::warn;

use super::lock;
use deliver::{Queue, Results};
use event::{Event, What};
use settings::Receiver;

/// Every receiver, and what the events sent so far imply.
pub struct Notifier {
    node: std::sync::Mutex<String>,
    running: std::sync::Mutex<Vec<Running>>,
    results: Results,
    /// The services failing open that an event already told of, by reason.
    failing_open: std::sync::Mutex<BTreeSet<(&'static str, String)>>,
    /// Drift was told of, and the maps have not matched since.
    drift_told: std::sync::atomic::AtomicBool,
}

/// A receiver and the task delivering to it.
struct Running {
    queue: Arc<Queue>,
    task: tokio::task::JoinHandle<()>,
}

impl Notifier {
    /// No receiver yet; `results` counts deliveries (`reconciler_notifications_total`).
    pub fn new(results: Results) -> Notifier {
        for result in deliver::RESULTS {
            // Each result's series at 0 from the start, for rate() and alerts.
            drop(results.get_or_create(&vec![("result", result.to_owned())]));
        }
        Notifier {
            node: std::sync::Mutex::default(),
            running: std::sync::Mutex::default(),
            results,
            failing_open: std::sync::Mutex::default(),
            drift_told: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Takes the receivers of a configuration, at start or on reload: a receiver with the
    /// URL and format of a running one keeps its queue; one no longer configured is stopped,
    /// and what it still held is dropped (counted). Runs within the daemon's runtime.
    pub fn configure(&self, node: &str, receivers: &[Receiver]) {
        node.clone_into(&mut lock(&self.node));
        // Held throughout: an event sent meanwhile waits, and goes to the new receivers.
        let mut running = lock(&self.running);
        let mut before = std::mem::take(&mut *running);
        for settings in receivers {
            // The body is made at each attempt: a new format applies to what is queued.
            let same = |r: &Running| lock(&r.queue.settings).url == settings.url;
            match before.iter().position(same) {
                Some(at) => {
                    let kept = before.swap_remove(at);
                    kept.queue.reconfigure(settings.clone());
                    running.push(kept);
                }
                None => {
                    let queue = Arc::new(Queue::new(settings.clone(), self.results.clone()));
                    let task = tokio::spawn(deliver::run(Arc::clone(&queue)));
                    running.push(Running { queue, task });
                }
            }
        }
        for gone in before {
            gone.task.abort();
            let dropped = gone.queue.forget();
            if dropped > 0 {
                let url = lock(&gone.queue.settings).url.clone();
                warn!(url, dropped, "notification receiver removed; its waiting events dropped");
            }
        }
    }

    /// Queues `what` for every receiver that wants it.
    pub fn send(&self, what: What) {
        let running = lock(&self.running);
        if running.is_empty() {
            return;
        }
        let event = Arc::new(Event::new(&lock(&self.node), what));
        for receiver in running.iter() {
            receiver.queue.push(&event);
        }
    }

    /// The services failing open for `reason` now: an event names those that were not
    /// (`failing_open`); one that stops and starts again is told of again.
    pub fn failing_open(&self, reason: &'static str, services: &[String]) {
        let changes: Vec<(String, bool)> = {
            let told = lock(&self.failing_open);
            let stopped = told.iter().filter(|(r, s)| *r == reason && !services.contains(s));
            let started = services.iter().filter(|s| !told.contains(&(reason, (*s).clone())));
            let stopped = stopped.map(|(_, s)| (s.clone(), false));
            started.map(|s| (s.clone(), true)).chain(stopped).collect()
        };
        self.fail_open_changed(reason, &changes);
    }

    /// Services that started (`true`) or stopped failing open for `reason`: those that
    /// started and were not told of yet are. Nothing is noted while no receiver listens, so
    /// one added later hears of them at their next change.
    pub fn fail_open_changed(&self, reason: &'static str, changes: &[(String, bool)]) {
        if lock(&self.running).is_empty() {
            return;
        }
        let mut told = lock(&self.failing_open);
        let mut new = Vec::new();
        for (service, started) in changes {
            let key = (reason, service.clone());
            if !started {
                told.remove(&key);
            } else if told.insert(key) {
                new.push(service.clone());
            }
        }
        drop(told);
        if !new.is_empty() {
            self.send(What::FailingOpen { reason, services: new });
        }
    }

    /// Whether drift is to be told: once from when a run finds it (`found`) until one that
    /// read every entry finds the maps as the revision has them (`found` false), however
    /// many runs find it meanwhile.
    pub fn drift_news(&self, found: bool) -> bool {
        let was = self.drift_told.swap(found, std::sync::atomic::Ordering::Relaxed);
        found && !was
    }

    /// Waits, at most `within`, for every receiver's queue to be delivered (at stop). Whether
    /// they all were.
    pub async fn drain(&self, within: Duration) -> bool {
        let queues: Vec<Arc<Queue>> =
            lock(&self.running).iter().map(|r| Arc::clone(&r.queue)).collect();
        let all = async {
            for queue in &queues {
                queue.idle().await;
            }
        };
        tokio::time::timeout(within, all).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use settings::{Format, Receiver};

    fn receiver(url: &str, events: &[&'static str]) -> Receiver {
        Receiver {
            url: url.to_owned(),
            format: Format::Generic,
            secret: None,
            events: events.iter().copied().collect(),
            timeout: settings::DEFAULT_TIMEOUT,
        }
    }

    fn count(results: &Results, result: &str) -> u64 {
        results.get_or_create(&vec![("result", result.to_owned())]).get()
    }

    /// A notifier whose delivery tasks never run (a runtime nobody drives): what is queued
    /// stays queued.
    fn idle_notifier(receivers: &[Receiver]) -> (Notifier, tokio::runtime::Runtime) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let notifier = Notifier::new(Results::default());
        {
            let _entered = runtime.enter();
            notifier.configure("node-a", receivers);
        }
        (notifier, runtime)
    }

    fn queued(notifier: &Notifier) -> Vec<Vec<&'static str>> {
        let running = lock(&notifier.running);
        running.iter().map(|r| r.queue.queued().iter().map(|e| e.what.name()).collect()).collect()
    }

    #[test]
    fn each_receiver_queues_the_events_it_lists_and_a_full_queue_drops_its_oldest() {
        let all = event::NAMES;
        let (notifier, _runtime) = idle_notifier(&[
            receiver("http://127.0.0.1:9/all", &all),
            receiver("http://127.0.0.1:9/drift", &["drift_found"]),
        ]);
        for entries in 0..deliver::QUEUE_LENGTH + 2 {
            notifier.send(What::DriftFound { revision: None, entries });
        }
        notifier.send(What::Applied { revision: None, previous_revision: None, entry_changes: 1 });
        let queued = queued(&notifier);
        assert_eq!(queued[0].len(), deliver::QUEUE_LENGTH);
        assert_eq!(queued[0].last(), Some(&"applied"));
        assert!(queued[1].iter().all(|name| *name == "drift_found"));
        // Three dropped at the first (two drifts, then one for `applied`), two at the second.
        assert_eq!(count(&notifier.results, "dropped"), 5);
        let first = lock(&notifier.running)[0].queue.queued()[0].clone();
        assert_eq!(first.what, What::DriftFound { revision: None, entries: 3 }, "the oldest went");
    }

    #[test]
    fn a_service_failing_open_is_told_once_until_it_stops_and_starts_again() {
        let (notifier, _runtime) = idle_notifier(&[receiver("http://127.0.0.1:9/", &event::NAMES)]);
        let web = vec!["web/http".to_owned()];
        notifier.failing_open("health", &web);
        notifier.failing_open("health", &web);
        notifier.failing_open("capacity", &web);
        notifier.failing_open("health", &[]);
        notifier.failing_open("health", &web);
        assert_eq!(queued(&notifier), [vec!["failing_open"; 3]]);
    }

    #[test]
    fn fail_open_is_noted_only_while_a_receiver_listens() {
        let (notifier, runtime) = idle_notifier(&[]);
        notifier.failing_open("health", &["web/http".to_owned()]);
        let _entered = runtime.enter();
        notifier.configure("node-a", &[receiver("http://127.0.0.1:9/", &event::NAMES)]);
        notifier.failing_open("health", &["web/http".to_owned()]);
        assert_eq!(queued(&notifier), [vec!["failing_open"]]);
    }

    #[test]
    fn drift_is_news_once_until_the_maps_match_again() {
        let notifier = Notifier::new(Results::default());
        let found = [true, true, false, false, true, true];
        let news: Vec<bool> = found.iter().map(|found| notifier.drift_news(*found)).collect();
        assert_eq!(news, [true, false, false, false, true, false]);
    }

    #[test]
    fn a_reload_keeps_the_queue_of_a_receiver_still_configured_and_drops_the_others() {
        let (kept, gone) = (
            receiver("http://127.0.0.1:9/a", &["applied"]),
            receiver("http://127.0.0.1:9/b", &["applied"]),
        );
        let (notifier, runtime) = idle_notifier(&[kept.clone(), gone]);
        notifier.send(What::Applied { revision: None, previous_revision: None, entry_changes: 1 });
        let _entered = runtime.enter();
        notifier.configure("node-b", &[kept]);
        assert_eq!(queued(&notifier), [vec!["applied"]]);
        assert_eq!(count(&notifier.results, "dropped"), 1);
        notifier.send(What::DriftHealed { revision: None, entries: 1 });
        assert_eq!(queued(&notifier), [vec!["applied"]], "it lists `applied` only");
    }
}
