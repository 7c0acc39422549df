//! The daemon's metrics, rendered in the Prometheus text exposition format (version 0.0.4),
//! with the usual `process_*` metrics read from /proc.
use std::{collections::BTreeMap, fmt::Write as _};

/// Upper bounds of the reconcile duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Reconcile runs by result (`applied`, `unchanged`, `drift_healed`, ...).
    reconciles: BTreeMap<&'static str, u64>,
    duration_buckets: [u64; DURATION_BUCKETS.len()],
    duration_sum: f64,
    duration_count: u64,
    last_apply_success: Option<f64>,
    applied_revision: Option<String>,
    pub drift_entries: u64,
    pub services: u64,
    pub backends: u64,
    pub map_writes: u64,
    pub sockets_destroyed: u64,
}

impl Metrics {
    /// Counts one reconcile run that ended with `result` after `seconds`.
    pub fn observe_reconcile(&mut self, result: &'static str, seconds: f64) {
        self.count(result);
        for (bucket, bound) in self.duration_buckets.iter_mut().zip(DURATION_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.duration_sum += seconds;
        self.duration_count += 1;
    }

    /// Counts an outcome that is part of a run already observed (drift after a bad commit).
    pub fn count(&mut self, result: &'static str) {
        *self.reconciles.entry(result).or_default() += 1;
    }

    /// Counts what an apply wrote and destroyed.
    pub fn applied_report(&mut self, report: &crate::dataplane::ApplyReport) {
        self.map_writes += report.map_writes as u64;
        self.sockets_destroyed += report.sockets_destroyed as u64;
    }

    pub fn applied(&mut self, revision: Option<&str>, unix_seconds: f64) {
        self.last_apply_success = Some(unix_seconds);
        self.applied_revision = revision.map(str::to_owned);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        header(&mut out, "reconciler_reconcile_total", "counter", "Reconcile runs, by result.");
        for (result, n) in &self.reconciles {
            let _ =
                writeln!(out, "reconciler_reconcile_total{{result=\"{}\"}} {n}", escape(result));
        }
        let name = "reconciler_reconcile_duration_seconds";
        header(&mut out, name, "histogram", "Time a reconcile run took, fetch to apply.");
        for (bound, n) in DURATION_BUCKETS.iter().zip(self.duration_buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.duration_count);
        let _ = writeln!(out, "{name}_sum {}", self.duration_sum);
        let _ = writeln!(out, "{name}_count {}", self.duration_count);
        if let Some(at) = self.last_apply_success {
            let name = "reconciler_last_apply_success_timestamp_seconds";
            gauge(&mut out, name, "When the last successful apply (or check) ended.", at);
        }
        if let Some(revision) = &self.applied_revision {
            let name = "reconciler_applied_revision_info";
            header(&mut out, name, "gauge", "The revision the data plane holds.");
            let _ = writeln!(out, "{name}{{revision=\"{}\"}} 1", escape(revision));
        }
        let drift = "Live map entries that differ from the applied revision, at the last check.";
        gauge(&mut out, "reconciler_drift_entries", drift, self.drift_entries as f64);
        let services = "Services (VIP, port, protocol) in the data plane.";
        gauge(&mut out, "reconciler_services", services, self.services as f64);
        let backends = "Backends (per service port) in the data plane.";
        gauge(&mut out, "reconciler_backends", backends, self.backends as f64);
        header(
            &mut out,
            "reconciler_map_writes_total",
            "counter",
            "BPF map writes made by applies.",
        );
        let _ = writeln!(out, "reconciler_map_writes_total {}", self.map_writes);
        let name = "reconciler_sockets_destroyed_total";
        let help = "Connected UDP sockets destroyed because an apply removed their backend.";
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", self.sockets_destroyed);
        process_metrics(&mut out);
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `process_*` metrics, as the Prometheus client libraries export them; left out where /proc
/// does not say.
fn process_metrics(out: &mut String) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name, which may itself hold spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        let help = "Total user and system CPU time spent in seconds.";
        header(out, "process_cpu_seconds_total", "counter", help);
        let _ = writeln!(out, "process_cpu_seconds_total {}", (utime + stime) / ticks);
    }
    if let Some(vsize) = field(23) {
        gauge(out, "process_virtual_memory_bytes", "Virtual memory size in bytes.", vsize);
    }
    if let Some(rss) = field(24) {
        gauge(out, "process_resident_memory_bytes", "Resident memory size in bytes.", rss * page);
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|t| t.trim().parse::<f64>().ok()))
    });
    if let (Some(boot), Some(start)) = (boot, field(22)) {
        let help = "Start time of the process since unix epoch in seconds.";
        gauge(out, "process_start_time_seconds", help, boot + start / ticks);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge(out, "process_open_fds", "Number of open file descriptors.", fds.count() as f64);
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        let help = "Maximum number of open file descriptors.";
        gauge(out, "process_max_fds", help, limit.rlim_cur as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_help_and_type() {
        let mut metrics = Metrics::default();
        metrics.observe_reconcile("applied", 0.02);
        metrics.observe_reconcile("invalid", 3.0);
        metrics.applied(Some("abc\"def"), 1_700_000_000.0);
        metrics.map_writes = 9;
        let text = metrics.render();
        assert!(text.contains("reconciler_reconcile_total{result=\"applied\"} 1\n"), "{text}");
        assert!(text.contains("reconciler_reconcile_duration_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("reconciler_reconcile_duration_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("reconciler_reconcile_duration_seconds_count 2\n"));
        assert!(text.contains("reconciler_applied_revision_info{revision=\"abc\\\"def\"} 1\n"));
        assert!(text.contains("reconciler_map_writes_total 9\n"));
        assert!(text.contains("process_resident_memory_bytes "));
        assert!(text.contains("process_open_fds "));
    }
}
