//! The fleet as Prometheus sees it: each daemon's node, wave, revision and troubles, from
//! the metrics every daemon exports (`daemon::metrics`), joined by scrape target.
use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    prometheus::{Prometheus, QueryError, Sample, Vector},
    questions::NOT_THE_TARGET,
};

/// Every series a node's view is read from, in one query.
const CURRENT: &str = "{__name__=~\"reconciler_(node_info|rollout_wave|ready|\
    applied_revision_timestamp_seconds|failed_revision_timestamp_seconds|\
    rollout_waiting_timestamp_seconds|\
    drift_entries|services_failing_open|backends_ejected)\"}";

/// One daemon, as its last scrape showed it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeView {
    /// `node.name` (the scrape target's `instance` until the daemon says).
    pub node: String,
    pub instance: String,
    pub zone: Option<String>,
    /// Its `rollout.wave` (1 unless configured).
    pub wave: u32,
    /// Prometheus' last scrape of it succeeded.
    pub reachable: bool,
    pub ready: bool,
    /// The revision its data plane holds, and since when (Unix seconds).
    pub revision: Option<String>,
    pub revision_since: Option<f64>,
    /// A revision it refused (invalid here, a failed apply, an aborted rollout), and when.
    pub failed_revision: Option<String>,
    pub failed_at: Option<f64>,
    /// A revision it holds back until its wave's gate opens, and since when.
    pub waiting_for: Option<String>,
    pub waiting_since: Option<f64>,
    pub drift_entries: u64,
    /// Services keeping every backend (or their own) although they fail: by health, by
    /// outlier detection or for want of capacity.
    pub failing_open: u64,
    pub ejected_backends: u64,
}

impl NodeView {
    /// Why the node needs someone to look at it (empty: it does not). Waiting for a wave
    /// (not ready, if it holds nothing yet), failing open and ejecting are reported, but are
    /// not the node's trouble.
    pub fn stuck(&self) -> Vec<&'static str> {
        let reasons = [
            (!self.reachable, "unreachable"),
            (self.reachable && !self.ready && self.waiting_for.is_none(), "not ready"),
            (self.failed_revision.is_some(), "failing"),
            (self.drift_entries > 0, "drifting"),
        ];
        reasons.into_iter().filter_map(|(is, reason)| is.then_some(reason)).collect()
    }
}

/// Every node Prometheus knows of, by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Fleet {
    /// When Prometheus evaluated the view (Unix seconds, its clock).
    pub at: f64,
    pub nodes: Vec<NodeView>,
}

impl Fleet {
    /// The fleet now, with the nodes that reported within `window` (a PromQL duration such
    /// as `1h`) and no longer do as unreachable.
    pub fn read(prometheus: &Prometheus, window: &str) -> Result<Fleet, QueryError> {
        let known = format!("last_over_time(reconciler_node_info[{window}])");
        let up = format!("up and ignoring(node, zone) {known}");
        let current = prometheus.query(CURRENT)?;
        Ok(Fleet::of(&current, &prometheus.query(&known)?, &prometheus.query(&up)?))
    }

    /// The view of `current` (the series of [`CURRENT`]), with the nodes `known` lists
    /// (`reconciler_node_info` over a window) and `up` says Prometheus reached or not.
    pub fn of(current: &Vector, known: &Vector, up: &Vector) -> Fleet {
        let mut nodes: BTreeMap<Target, NodeView> = BTreeMap::new();
        let view = |nodes: &mut BTreeMap<Target, NodeView>, sample: &Sample| {
            let target = Target::of(sample);
            let instance = target.instance();
            nodes.entry(target).or_insert_with(|| NodeView {
                node: instance.clone(),
                instance,
                wave: 1,
                reachable: true,
                ..NodeView::default()
            });
        };
        for sample in known.samples.iter().chain(&current.samples) {
            view(&mut nodes, sample);
        }
        for sample in &known.samples {
            if let Some(node) = nodes.get_mut(&Target::of(sample)) {
                node.reachable = false;
                read_node_info(node, sample);
            }
        }
        for sample in &current.samples {
            if let Some(node) = nodes.get_mut(&Target::of(sample)) {
                node.reachable = true;
                read(node, sample);
            }
        }
        for sample in &up.samples {
            if let Some(node) = nodes.get_mut(&Target::of(sample)) {
                node.reachable = sample.value == 1.0;
            }
        }
        let mut nodes: Vec<NodeView> = nodes.into_values().collect();
        for node in &mut nodes {
            forget_left_over(node);
        }
        nodes.sort_by(|a, b| (a.wave, &a.node).cmp(&(b.wave, &b.node)));
        Fleet { at: current.at.max(known.at), nodes }
    }

    /// The nodes by the revision they run (`None`: none yet), the newest revision (by when
    /// a node first applied it) first.
    pub fn by_revision(&self) -> Vec<(Option<&str>, Vec<&NodeView>)> {
        let mut revisions: BTreeMap<Option<&str>, Vec<&NodeView>> = BTreeMap::new();
        for node in &self.nodes {
            revisions.entry(node.revision.as_deref()).or_default().push(node);
        }
        let mut revisions: Vec<_> = revisions.into_iter().collect();
        let first_applied = |nodes: &[&NodeView]| {
            nodes.iter().filter_map(|n| n.revision_since).fold(f64::INFINITY, f64::min)
        };
        revisions.sort_by(|(a, a_nodes), (b, b_nodes)| {
            (b.is_some(), first_applied(b_nodes))
                .partial_cmp(&(a.is_some(), first_applied(a_nodes)))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        revisions
    }
}

/// A scrape target: the labels every series of one daemon shares (`job`, `instance`, and a
/// federating Prometheus' external labels such as `cluster`, where instances may repeat).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Target(Vec<(String, String)>);

impl Target {
    fn of(sample: &Sample) -> Target {
        let shared = sample.labels.iter().filter(|(name, _)| {
            name.as_str() != "__name__" && !NOT_THE_TARGET.contains(&name.as_str())
        });
        Target(shared.map(|(name, value)| (name.clone(), value.clone())).collect())
    }

    fn instance(&self) -> String {
        let instance = self.0.iter().find(|(name, _)| name == "instance");
        instance.map(|(_, value)| value.clone()).unwrap_or_default()
    }
}

fn read_node_info(node: &mut NodeView, sample: &Sample) {
    if let Some(name) = sample.labels.get("node").filter(|name| !name.is_empty()) {
        node.node.clone_from(name);
    }
    node.zone = sample.labels.get("zone").filter(|zone| !zone.is_empty()).cloned();
}

/// `revision` at `at`, if it is newer than the one `kept` since `since`.
fn newest(kept: &mut Option<String>, since: &mut Option<f64>, revision: Option<String>, at: f64) {
    if since.is_none_or(|since| since < at) {
        *kept = revision;
        *since = Some(at);
    }
}

/// What a Prometheus that restarted still shows of before (see `read`) and the daemon no
/// longer says: a wait that began before the revision it holds, a failure of that revision.
fn forget_left_over(node: &mut NodeView) {
    let since = node.revision_since.unwrap_or(0.0);
    if node.waiting_since.is_some_and(|waiting| waiting < since) {
        (node.waiting_for, node.waiting_since) = (None, None);
    }
    if node.failed_revision.is_some() && node.failed_revision == node.revision {
        (node.failed_revision, node.failed_at) = (None, None);
    }
}

/// What one series of [`CURRENT`] says of `node`.
fn read(node: &mut NodeView, sample: &Sample) {
    let label = |name: &str| sample.labels.get(name).cloned();
    let count = sample.value.max(0.0) as u64;
    match sample.labels.get("__name__").map(String::as_str).unwrap_or_default() {
        "reconciler_node_info" => read_node_info(node, sample),
        "reconciler_rollout_wave" => node.wave = sample.value.max(1.0) as u32,
        "reconciler_ready" => node.ready = sample.value == 1.0,
        // A Prometheus that restarted keeps a series the daemon no longer exports for up to
        // five minutes (it wrote no staleness marker): of each kind, the newest is the one.
        "reconciler_applied_revision_timestamp_seconds" => {
            newest(&mut node.revision, &mut node.revision_since, label("revision"), sample.value);
        }
        "reconciler_failed_revision_timestamp_seconds" => {
            newest(&mut node.failed_revision, &mut node.failed_at, label("revision"), sample.value);
        }
        "reconciler_rollout_waiting_timestamp_seconds" => {
            let revision = label("revision");
            newest(&mut node.waiting_for, &mut node.waiting_since, revision, sample.value);
        }
        "reconciler_drift_entries" => node.drift_entries = count,
        // One series per reason: their sum.
        "reconciler_services_failing_open" => node.failing_open += count,
        "reconciler_backends_ejected" => node.ejected_backends = count,
        _ => {}
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn sample(name: &str, instance: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        let mut all: BTreeMap<String, String> =
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        all.insert("instance".into(), instance.into());
        all.insert("job".into(), "reconciler".into());
        if !name.is_empty() {
            all.insert("__name__".into(), name.into());
        }
        Sample { labels: all, value }
    }

    fn vector(samples: Vec<Sample>) -> Vector {
        Vector { at: 1000.0, samples }
    }

    #[test]
    fn each_node_is_joined_from_its_series_by_scrape_target() {
        let current = vector(vec![
            sample("reconciler_node_info", "a:9469", &[("node", "edge-1"), ("zone", "a")], 1.0),
            sample("reconciler_rollout_wave", "a:9469", &[], 2.0),
            sample("reconciler_ready", "a:9469", &[], 1.0),
            sample(
                "reconciler_applied_revision_timestamp_seconds",
                "a:9469",
                &[("revision", "r2")],
                900.0,
            ),
            sample(
                "reconciler_applied_revision_timestamp_seconds",
                "a:9469",
                &[("revision", "r1")],
                800.0,
            ),
            sample(
                "reconciler_rollout_waiting_timestamp_seconds",
                "a:9469",
                &[("revision", "r3")],
                850.0,
            ),
            sample(
                "reconciler_rollout_waiting_timestamp_seconds",
                "a:9469",
                &[("revision", "r2")],
                700.0,
            ),
            sample("reconciler_services_failing_open", "a:9469", &[("reason", "health")], 1.0),
            sample("reconciler_services_failing_open", "a:9469", &[("reason", "ejections")], 2.0),
            sample("reconciler_backends_ejected", "a:9469", &[], 4.0),
            sample("reconciler_node_info", "b:9469", &[("node", "edge-2"), ("zone", "")], 1.0),
            sample(
                "reconciler_failed_revision_timestamp_seconds",
                "b:9469",
                &[("revision", "r3")],
                5.0,
            ),
            sample(
                "reconciler_failed_revision_timestamp_seconds",
                "b:9469",
                &[("revision", "r2")],
                4.0,
            ),
            sample("reconciler_drift_entries", "b:9469", &[], 3.0),
        ]);
        let fleet = Fleet::of(&current, &Vector::default(), &Vector::default());
        let [b, a] = &fleet.nodes[..] else { panic!("{fleet:?}") };
        assert_eq!((a.node.as_str(), a.zone.as_deref(), a.wave), ("edge-1", Some("a"), 2));
        assert_eq!((a.revision.as_deref(), a.revision_since), (Some("r2"), Some(900.0)));
        assert_eq!((a.failing_open, a.ejected_backends, &a.waiting_for), (3, 4, &None));
        assert!(a.stuck().is_empty(), "{a:?}");
        assert_eq!((b.node.as_str(), b.zone.as_deref(), b.wave), ("edge-2", None, 1));
        assert_eq!(b.stuck(), ["not ready", "failing", "drifting"]);
        assert_eq!((b.failed_revision.as_deref(), b.failed_at), (Some("r3"), Some(5.0)));
        let revisions = fleet.by_revision();
        assert_eq!((revisions[0].0, revisions[0].1.len()), (Some("r2"), 1));
        assert_eq!((revisions[1].0, revisions[1].1[0].node.as_str()), (None, "edge-2"));
    }

    #[test]
    fn a_node_known_before_and_silent_now_is_unreachable() {
        let info = |instance, node| sample("", instance, &[("node", node), ("zone", "a")], 1.0);
        let known = vector(vec![info("a:9469", "edge-1"), info("b:9469", "edge-2")]);
        let current = vector(vec![
            sample("reconciler_node_info", "a:9469", &[("node", "edge-1")], 1.0),
            sample("reconciler_ready", "a:9469", &[], 1.0),
        ]);
        let up = vector(vec![sample("up", "a:9469", &[], 1.0), sample("up", "b:9469", &[], 0.0)]);
        let fleet = Fleet::of(&current, &known, &up);
        let names: Vec<_> = fleet.nodes.iter().map(|n| (n.node.as_str(), n.stuck())).collect();
        assert_eq!(names, [("edge-1", vec![]), ("edge-2", vec!["unreachable"])]);
    }
}
