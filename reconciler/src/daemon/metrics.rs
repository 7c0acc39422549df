//! The daemon's metrics: a `prometheus-client` registry, exposed in the OpenMetrics text
//! format, with the usual `process_*` metrics read from /proc at each scrape.
use std::{io, path::PathBuf, sync::atomic::AtomicU64};

use prometheus_client::{
    collector::Collector,
    encoding::{text, DescriptorEncoder, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};

use super::{
    exposition::{label_value, service_labels, PrometheusText, Sink},
    health::BackendHealth,
    metrics_dataplane::DataplaneCollector,
};
use reconciler_core::{
    capacity::Capacity,
    state::{Exclusion, MapState},
};

/// What a fleet's view reads of this node (`crate::fleet::view`), from its status.
pub struct NodeState<'a> {
    pub ready: bool,
    /// The revision the data plane holds, and since when (Unix seconds).
    pub revision_since: Option<(&'a str, u64)>,
    /// A revision it refused, and when.
    pub failed: Option<(&'a str, u64)>,
    /// A revision it holds back at its wave's gate, and since when.
    pub waiting: Option<(&'a str, u64)>,
    /// Services failing open, by reason (`health`, `ejections`, `capacity`).
    pub failing_open: [(&'static str, usize); 3],
    pub ejected_backends: usize,
}

/// OpenMetrics text, which Prometheus asks for first (`Accept`).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format (0.0.4), for everything else (`curl`, `promtool`).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the reconcile duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One label, as the families here use them.
type Label = Vec<(&'static str, String)>;

/// The daemon's metrics. Each is an atomic handle: updating one needs no lock, and a scrape
/// reads them all through the registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconcile runs by result (`applied`, `unchanged`, `drift_healed`, ...).
    reconciles: Family<Label, Counter>,
    duration: Histogram,
    last_apply_success: Gauge<f64, AtomicU64>,
    applied_revision: Family<Label, Gauge>,
    pub drift_entries: Gauge,
    pub services: Gauge,
    pub backends: Gauge,
    /// `source.interval`, for alerts that count intervals.
    pub reconcile_interval: Gauge<f64, AtomicU64>,
    map_entries: Family<Label, Gauge>,
    map_capacity: Family<Label, Gauge>,
    map_writes: Counter,
    sockets_destroyed: Counter,
    /// 1 when this kernel destroys sockets on request, 0 when it cannot (checked at start).
    pub socket_destroy_supported: Gauge,
    backend_up: Family<Label, Gauge>,
    health_transitions: Family<Label, Counter>,
    ejections: Family<Label, Counter>,
    ejected: Family<Label, Gauge>,
    rollouts: Family<Label, Counter>,
    /// `reconciler_node_info` and `reconciler_node_label`: who this node is, for a fleet's
    /// view from Prometheus.
    node: Family<Label, Gauge>,
    node_labels: Family<Label, Gauge>,
    /// What a fleet's view (`crate::fleet::view`) reads of this node besides.
    rollout_wave: Gauge,
    ready: Gauge,
    revision_since: Family<Label, Gauge<f64, AtomicU64>>,
    failed_revision: Family<Label, Gauge<f64, AtomicU64>>,
    waiting: Family<Label, Gauge<f64, AtomicU64>>,
    failing_open: Family<Label, Gauge>,
    backends_ejected: Gauge,
    webhook_requests: Family<Label, Counter>,
    /// `reconciler_notifications_total`, counted by the notifier's queues (`notify::deliver`).
    pub notifications: Family<Label, Counter>,
    /// Whether `reconciler_backend_up` has its series (`metrics.perBackend`).
    per_backend: bool,
}

impl Metrics {
    /// The daemon's metrics, with the counters of the data plane pinned at `pin_path`, read
    /// from its maps at each scrape; the series per backend only if `per_backend`.
    pub fn for_dataplane(pin_path: PathBuf, per_backend: bool) -> Self {
        let mut metrics = Metrics { per_backend, ..Metrics::default() };
        let collector = DataplaneCollector { pin_path, per_backend, totals: Default::default() };
        metrics.registry.register_collector(Box::new(collector));
        metrics
    }
}

impl Default for Metrics {
    /// Every metric at zero, registered in the order a scrape lists them.
    fn default() -> Self {
        let mut metrics = Metrics {
            registry: Registry::default(),
            reconciles: Family::default(),
            duration: Histogram::new(DURATION_BUCKETS),
            last_apply_success: Gauge::default(),
            applied_revision: Family::default(),
            drift_entries: Gauge::default(),
            services: Gauge::default(),
            backends: Gauge::default(),
            reconcile_interval: Gauge::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            map_writes: Counter::default(),
            sockets_destroyed: Counter::default(),
            socket_destroy_supported: Gauge::default(),
            backend_up: Family::default(),
            health_transitions: Family::default(),
            ejections: Family::default(),
            ejected: Family::default(),
            rollouts: Family::default(),
            node: Family::default(),
            node_labels: Family::default(),
            rollout_wave: Gauge::default(),
            ready: Gauge::default(),
            revision_since: Family::default(),
            failed_revision: Family::default(),
            waiting: Family::default(),
            failing_open: Family::default(),
            backends_ejected: Gauge::default(),
            webhook_requests: Family::default(),
            notifications: Family::default(),
            per_backend: true,
        };
        metrics.register_runs();
        metrics.register_fleet();
        metrics.register_dataplane();
        metrics.register_health_and_webhooks();
        metrics.registry.register_collector(Box::new(SignatureChecks));
        metrics.registry.register_collector(Box::new(ProcessCollector));
        metrics
    }
}

impl Metrics {
    /// What the runs did: how many, how long, what they applied.
    fn register_runs(&mut self) {
        let build: Family<Label, Gauge> = Family::default();
        // The daemon exists only in builds with the data plane.
        let version = vec![
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("commit", env!("RECONCILER_COMMIT").to_owned()),
            ("dataplane", "true".to_owned()),
            ("layout", reconciler_common::LAYOUT_VERSION.to_string()),
        ];
        build.get_or_create(&version).set(1);
        let registry = &mut self.registry;
        registry.register(
            "reconciler_build_info",
            "This build: its version, commit, whether it has the data plane, and the data plane \
             layout it installs (1)",
            build,
        );
        registry.register(
            "reconciler_node_info",
            "This node: its name and zone (1), as services' nodeSelector and topology see it",
            self.node.clone(),
        );
        registry.register(
            "reconciler_node_label",
            "Each label of this node (1): key and value",
            self.node_labels.clone(),
        );
        // Counters are registered without `_total`; the encoder appends it.
        registry.register(
            "reconciler_reconcile",
            "Reconcile runs, by result",
            self.reconciles.clone(),
        );
        registry.register(
            "reconciler_reconcile_duration_seconds",
            "Time a reconcile run took, fetch to apply",
            self.duration.clone(),
        );
        registry.register(
            "reconciler_last_apply_success_timestamp_seconds",
            "When the last successful apply (or check) ended; 0 before the first",
            self.last_apply_success.clone(),
        );
        registry.register(
            "reconciler_applied_revision_info",
            "The revision the data plane holds (1 for that revision)",
            self.applied_revision.clone(),
        );
    }

    /// Where this node stands, for a fleet's view and the waves' gates (`crate::fleet`).
    fn register_fleet(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "reconciler_rollout_wave",
            "This node's rollout.wave: it applies a revision once the earlier waves ran it",
            self.rollout_wave.clone(),
        );
        registry.register(
            "reconciler_ready",
            "1 once a reconcile succeeded since the daemon started, else 0",
            self.ready.clone(),
        );
        registry.register(
            "reconciler_applied_revision_timestamp_seconds",
            "Since when the data plane holds the revision it holds (that revision's series \
             alone): after a restart of Prometheus, the newest tells the revision",
            self.revision_since.clone(),
        );
        registry.register(
            "reconciler_failed_revision_timestamp_seconds",
            "When this node refused the revision it will not try again until a new commit \
             (invalid here, a failed apply, an aborted rollout)",
            self.failed_revision.clone(),
        );
        registry.register(
            "reconciler_rollout_waiting_timestamp_seconds",
            "Since when this node holds back the revision of the series until its wave's gate \
             opens",
            self.waiting.clone(),
        );
        registry.register(
            "reconciler_services_failing_open",
            "Services that keep backends that fail, by reason: health (every backend down, no \
             fallback), ejections (more than maxEjectionPercent failing), capacity (a \
             fallback would not fit)",
            self.failing_open.clone(),
        );
        registry.register(
            "reconciler_backends_ejected",
            "Backends outlier detection keeps out of a service now, all services together",
            self.backends_ejected.clone(),
        );
    }

    /// What the data plane holds and what applies wrote to it.
    fn register_dataplane(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "reconciler_drift_entries",
            "Live map entries that differ from the applied revision, at the last check",
            self.drift_entries.clone(),
        );
        registry.register(
            "reconciler_services",
            "Services (VIP, port, protocol) in the data plane",
            self.services.clone(),
        );
        registry.register(
            "reconciler_backends",
            "Backends (per service port) in the data plane",
            self.backends.clone(),
        );
        registry.register(
            "reconciler_reconcile_interval_seconds",
            "source.interval: how often a full run starts",
            self.reconcile_interval.clone(),
        );
        registry.register(
            "reconciler_map_entries",
            "Entries of a map a revision fills (services, backends, slots), as last applied",
            self.map_entries.clone(),
        );
        registry.register(
            "reconciler_map_capacity",
            "Entries that map takes (dataplane.capacity, set at install)",
            self.map_capacity.clone(),
        );
        registry.register(
            "reconciler_map_writes",
            "BPF map writes made by applies",
            self.map_writes.clone(),
        );
        registry.register(
            "reconciler_sockets_destroyed",
            "Connected UDP sockets destroyed because an apply removed their backend",
            self.sockets_destroyed.clone(),
        );
        registry.register(
            "reconciler_socket_destroy_supported",
            "1 if this kernel destroys sockets on request (CONFIG_INET_DIAG_DESTROY), 0 if the \
             sockets of removed backends stay connected to them",
            self.socket_destroy_supported.clone(),
        );
    }

    /// The health checks' verdicts, and who asked for runs.
    fn register_health_and_webhooks(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "reconciler_backend_up",
            "1 while a backend passes its health check, 0 while it is taken out",
            self.backend_up.clone(),
        );
        registry.register(
            "reconciler_backend_health_transitions",
            "Times a backend went down or came back up, by its health check",
            self.health_transitions.clone(),
        );
        registry.register(
            "reconciler_backend_ejections",
            "Times outlier detection ejected a backend from a service (its clients' connects \
             failed in a row)",
            self.ejections.clone(),
        );
        registry.register(
            "reconciler_backend_ejected",
            "1 while outlier detection keeps a backend out of a service, else 0",
            self.ejected.clone(),
        );
        registry.register(
            "reconciler_rollouts",
            "Rollouts (spec.rollout) by how they ended: completed, aborted",
            self.rollouts.clone(),
        );
        registry.register(
            "reconciler_webhook_requests",
            "POST /reconcile requests, by result (accepted, unauthorized, too_large, unreadable)",
            self.webhook_requests.clone(),
        );
        registry.register(
            "reconciler_notifications",
            "Notifications (notify:), by result: sent, retried (an attempt failed and is tried \
             again), failed (given up or refused), dropped (a full queue's oldest)",
            self.notifications.clone(),
        );
    }
}

impl Metrics {
    /// Counts one reconcile run that ended with `result` after `seconds`.
    pub fn observe_reconcile(&self, result: &'static str, seconds: f64) {
        self.count(result);
        self.duration.observe(seconds);
    }

    /// Counts an outcome that is part of a run already observed (drift after a bad commit).
    pub fn count(&self, result: &'static str) {
        self.reconciles.get_or_create(&vec![("result", result.to_owned())]).inc();
    }

    /// Counts one `POST /reconcile` that ended with `result`.
    pub fn webhook_request(&self, result: &'static str) {
        self.webhook_requests.get_or_create(&vec![("result", result.to_owned())]).inc();
    }

    /// Counts what an apply wrote and destroyed.
    pub fn applied_report(&self, report: &crate::dataplane::ApplyReport) {
        self.map_writes.inc_by(report.map_writes as u64);
        self.sockets_destroyed.inc_by(report.sockets_destroyed as u64);
    }

    /// A run that succeeded with nothing to apply (the maps already right, drift reported,
    /// a wave's gate shut): `reconciler_last_apply_success_timestamp_seconds` moves on.
    pub fn checked(&self, unix_seconds: f64) {
        self.last_apply_success.set(unix_seconds);
    }

    pub fn applied(&self, revision: Option<&str>, unix_seconds: f64) {
        self.last_apply_success.set(unix_seconds);
        self.applied_revision.clear();
        if let Some(revision) = revision {
            self.applied_revision.get_or_create(&vec![("revision", label_value(revision))]).set(1);
        }
    }

    /// Counts a health transition of `backend`.
    pub fn health_transition(&self, backend: std::net::SocketAddr, up: bool) {
        let to = if up { "up" } else { "down" };
        let labels = vec![("backend", backend.to_string()), ("to", to.to_owned())];
        self.health_transitions.get_or_create(&labels).inc();
    }

    /// Sets `reconciler_backend_up` to `health` (one series per service and backend).
    pub fn backend_health(&self, health: &[BackendHealth]) {
        self.backend_up.clear();
        if !self.per_backend {
            return;
        }
        for backend in health {
            for service in &backend.services {
                let mut labels = service_labels(service);
                labels.push(("backend", backend.backend.to_string()));
                self.backend_up.get_or_create(&labels).set(i64::from(backend.up));
            }
        }
    }

    /// Sets `reconciler_map_entries` and `reconciler_map_capacity` of the maps a revision
    /// fills: what `entries` holds of what `capacity` takes (an ID indexes the services' and
    /// backends' maps, and 0 is none: one fewer fits).
    pub fn map_fill(&self, capacity: &Capacity, entries: &MapState) {
        let (services, backends) = capacity.highest_ids();
        let fill = [
            ("services", entries.services.len(), services),
            ("backends", entries.backends.len(), backends),
            ("slots", entries.slots.len(), capacity.slots),
        ];
        for (map, held, takes) in fill {
            let label = vec![("map", map.to_owned())];
            self.map_entries.get_or_create(&label).set(held as i64);
            self.map_capacity.get_or_create(&label).set(i64::from(takes));
        }
    }

    /// Sets `reconciler_node_info` and `reconciler_node_label` to `node`, and
    /// `reconciler_rollout_wave` to `wave`.
    pub fn node_info(&self, node: &reconciler_core::selector::Node, wave: u32) {
        self.rollout_wave.set(i64::from(wave));
        self.node.clear();
        self.node_labels.clear();
        let zone = node.zone.clone().unwrap_or_default();
        let name = label_value(&node.name);
        self.node.get_or_create(&vec![("node", name.clone()), ("zone", label_value(&zone))]).set(1);
        for (key, value) in &node.labels {
            let labels = vec![
                ("node", name.clone()),
                ("key", label_value(key)),
                ("value", label_value(value)),
            ];
            self.node_labels.get_or_create(&labels).set(1);
        }
    }

    /// Sets what a fleet's view reads of this node to `state`.
    pub fn node_state(&self, state: &NodeState) {
        self.ready.set(i64::from(state.ready));
        // One series each, of the revision it is about: a Prometheus that restarts keeps the
        // series of the one before for a while, and the newest tells them apart.
        // With the wave: a gate counts by it on the server (`crate::fleet::questions`).
        let wave = self.rollout_wave.get().to_string();
        let one = |family: &Family<Label, Gauge<f64, AtomicU64>>, at: Option<(&str, u64)>| {
            family.clear();
            if let Some((revision, unix_seconds)) = at {
                let labels = vec![("revision", label_value(revision)), ("wave", wave.clone())];
                family.get_or_create(&labels).set(unix_seconds as f64);
            }
        };
        one(&self.revision_since, state.revision_since);
        one(&self.failed_revision, state.failed);
        one(&self.waiting, state.waiting);
        for (reason, count) in state.failing_open {
            self.failing_open.get_or_create(&vec![("reason", reason.to_owned())]).set(count as i64);
        }
        self.backends_ejected.set(state.ejected_backends as i64);
    }

    /// Counts a rollout that ended with `result`.
    pub fn rollout(&self, result: &'static str) {
        self.rollouts.get_or_create(&vec![("result", result.to_owned())]).inc();
    }

    /// Counts an ejection of `backend` from `service`.
    pub fn backend_ejected(&self, service: &str, backend: std::net::SocketAddr) {
        if self.per_backend {
            let mut labels = service_labels(service);
            labels.push(("backend", backend.to_string()));
            self.ejections.get_or_create(&labels).inc();
        }
    }

    /// Sets `reconciler_backend_ejected` for every backend outlier detection watches.
    pub fn backend_ejections(&self, watched: &[(Exclusion, bool)]) {
        self.ejected.clear();
        if !self.per_backend {
            return;
        }
        for ((service, backend), ejected) in watched {
            let mut labels = service_labels(service);
            labels.push(("backend", backend.to_string()));
            self.ejected.get_or_create(&labels).set(i64::from(*ejected));
        }
    }

    /// Every metric, in OpenMetrics text if `openmetrics`, else in the Prometheus text format,
    /// gzipped if `gzip`; with the content type to send. `size_hint`: the size of the last
    /// page, so that a page of tens of megabytes is allocated once, not grown by doubling.
    pub fn render(
        &self,
        openmetrics: bool,
        gzip: bool,
        size_hint: usize,
    ) -> io::Result<(&'static str, Vec<u8>)> {
        let failed = |_| io::Error::other("encoding the metrics");
        let mut sink = Sink::new(gzip, size_hint);
        if openmetrics {
            text::encode(&mut sink, &self.registry).map_err(failed)?;
            return Ok((OPENMETRICS, sink.finish()?));
        }
        let mut converted = PrometheusText::new(sink);
        text::encode(&mut converted, &self.registry).map_err(failed)?;
        Ok((PROMETHEUS_TEXT, converted.finish().map_err(failed)?.finish()?))
    }
}

/// `reconciler_signature_checks_total`, read from the source's own count at each scrape (the
/// checks happen inside a fetch, where no metrics handle reaches).
#[derive(Debug)]
struct SignatureChecks;

impl Collector for SignatureChecks {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(reconciler_core::source::signature_checks());
        let help = "Commits whose signatures were checked (a refusal remembered from an \
                    earlier fetch is not checked again)";
        let metric = "reconciler_signature_checks";
        counter.encode(encoder.encode_descriptor(metric, help, None, counter.metric_type())?)
    }
}

/// `process_*` metrics, as the Prometheus client libraries export them, read from /proc at
/// each scrape (prometheus-client has no process collector); left out where /proc does not
/// say.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the parenthesised command name, which may itself hold spaces.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        let mut gauge = |name: &str, help: &str, value: f64| {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        };
        if let Some(vsize) = field(23) {
            gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", vsize)?;
        }
        if let Some(rss) = field(24) {
            gauge("process_resident_memory_bytes", "Resident memory size in bytes.", rss * page)?;
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ").and_then(|t| t.trim().parse::<f64>().ok()))
        });
        if let (Some(boot), Some(start)) = (boot, field(22)) {
            let help = "Start time of the process since unix epoch in seconds.";
            gauge("process_start_time_seconds", help, boot + start / ticks)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge("process_open_fds", "Number of open file descriptors.", fds.count() as f64)?;
        }
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            let help = "Maximum number of open file descriptors.";
            gauge("process_max_fds", help, limit.rlim_cur as f64)?;
        }
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            let counter = ConstCounter::new((utime + stime) / ticks);
            let help = "Total user and system CPU time spent in seconds.";
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_help_and_type() {
        let metrics = Metrics::default();
        metrics.observe_reconcile("applied", 0.02);
        metrics.observe_reconcile("invalid", 3.0);
        metrics.applied(Some("abc\"def"), 1_700_000_000.0);
        metrics.applied_report(&crate::dataplane::ApplyReport {
            changes: 3,
            map_writes: 9,
            generation: 1,
            sockets_destroyed: 0,
            sockets_error: None,
        });
        let page = |openmetrics| {
            let (kind, page) = metrics.render(openmetrics, false, 0).unwrap();
            (kind, String::from_utf8(page).unwrap())
        };
        let (kind, openmetrics) = page(true);
        assert_eq!(kind, OPENMETRICS);
        assert!(openmetrics.contains("# TYPE reconciler_reconcile counter\n"), "{openmetrics}");
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
        let (kind, text) = page(false);
        assert_eq!(kind, PROMETHEUS_TEXT);
        assert!(text.contains("reconciler_reconcile_total{result=\"applied\"} 1\n"), "{text}");
        assert!(text.contains("# HELP reconciler_reconcile_total Reconcile runs"), "{text}");
        assert!(text.contains("# TYPE reconciler_reconcile_total counter\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(text.contains("reconciler_reconcile_duration_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("reconciler_reconcile_duration_seconds_bucket{le=\"5.0\"} 2\n"));
        assert!(text.contains("reconciler_reconcile_duration_seconds_count 2\n"));
        assert!(
            text.contains("reconciler_applied_revision_info{revision=\"abc\\\"def\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("reconciler_map_writes_total 9\n"));
        let version = env!("CARGO_PKG_VERSION");
        let build = format!("reconciler_build_info{{version=\"{version}\",commit=\"");
        assert!(text.contains(&build), "{text}");
        assert!(text.contains("\",dataplane=\"true\",layout=\""), "{text}");
        let labels = [("zone".to_owned(), "a".to_owned())].into();
        let node = reconciler_core::selector::Node {
            name: "edge-1".into(),
            labels,
            zone: Some("a".into()),
        };
        metrics.node_info(&node, 1);
        let (_, text) = page(false);
        assert!(text.contains("reconciler_node_info{node=\"edge-1\",zone=\"a\"} 1\n"), "{text}");
        assert!(
            text.contains("reconciler_node_label{node=\"edge-1\",key=\"zone\",value=\"a\"} 1\n")
        );
        assert!(text.contains("process_resident_memory_bytes "));
        assert!(text.contains("process_open_fds "));
        assert!(text.contains("process_cpu_seconds_total "));
        // A new revision replaces the old one.
        metrics.applied(Some("next"), 1_700_000_001.0);
        let (_, text) = page(false);
        assert!(!text.contains("abc"), "{text}");
    }
}
