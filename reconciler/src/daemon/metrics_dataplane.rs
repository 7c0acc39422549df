//! The data plane's counters as metrics: read from its maps at each scrape, by a
//! `prometheus-client` collector (the registry in `metrics` holds it).
use std::{collections::BTreeMap, path::PathBuf};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::MetricType,
    metrics::{counter::ConstCounter, exemplar::Exemplar},
};

use super::exposition::service_labels;

/// One label, as the families here use them.
type Label = Vec<(&'static str, String)>;

/// The data plane's per-backend and per-service counters (`crate::counters`), by name.
#[derive(Debug)]
pub(super) struct DataplaneCollector {
    pub pin_path: PathBuf,
    pub per_backend: bool,
    /// What keeps each service's total a counter, backends come and go.
    pub totals: std::sync::Mutex<ServiceTotals>,
}

/// A service's connections are its backends' counts summed; a backend removed (or its ID
/// given to another) takes its count away, which a counter must never do (Prometheus reads a
/// drop as a restart, and `rate()` jumps). So a backend's last count stays in its service's
/// total when it goes. Memory: an entry per backend.
#[derive(Debug, Default)]
pub(super) struct ServiceTotals {
    /// Each backend's count at the last scrape, by (service, protocol, backend).
    last: BTreeMap<(String, String, std::net::SocketAddr), u64>,
    /// The counts of backends gone since the daemon started, by (service, protocol).
    gone: BTreeMap<(String, String), u64>,
}

impl ServiceTotals {
    /// Each service's total now, by (service, protocol), from the backends' `counts`.
    fn update(
        &mut self,
        counts: &[crate::counters::BackendCount],
    ) -> BTreeMap<(String, String), u64> {
        let now: BTreeMap<_, u64> = counts
            .iter()
            .map(|b| ((b.service.clone(), b.protocol.to_string(), b.backend), b.connections))
            .collect();
        for ((service, protocol, backend), count) in &self.last {
            let key = (service.clone(), protocol.clone(), *backend);
            // Gone, or counting again from zero for another owner.
            if now.get(&key).is_none_or(|n| n < count) {
                *self.gone.entry((service.clone(), protocol.clone())).or_default() += count;
            }
        }
        let mut totals = self.gone.clone();
        for ((service, protocol, _), count) in &now {
            *totals.entry((service.clone(), protocol.clone())).or_default() += count;
        }
        self.last = now;
        totals
    }
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Every backend's counters are read (a map lookup each), for the per-service totals
        // too; `per_backend` decides only whether each backend gets series of its own.
        let read = crate::dataplane::Dataplane::open(&self.pin_path).and_then(|dataplane| {
            let live = dataplane.read_live_members()?;
            let counters = crate::counters::read(&dataplane, &live.state)?;
            Ok((counters, dataplane.events()?, dataplane.handshakes()?))
        });
        // Before the first install there is nothing to count; a scrape shows the rest.
        let Ok((counters, events, handshakes)) = read else { return Ok(()) };
        encode_refusals(&mut encoder, &events)?;
        encode_handshakes(&mut encoder, &handshakes)?;
        encode_service_refusals(&mut encoder, &counters)?;
        let totals = crate::daemon::lock(&self.totals).update(&counters.backends);
        encode_service_connections(&mut encoder, totals)?;
        if !self.per_backend {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "reconciler_backend_connections",
            "Connects and datagrams sent to a backend, since its ID was assigned",
            None,
            MetricType::Counter,
        )?;
        for b in &counters.backends {
            let mut labels = backend_labels(b);
            labels.push(("protocol", b.protocol.to_string()));
            ConstCounter::new(b.connections).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "reconciler_backend_reverse_translations",
            "Replies and getpeername() results a backend's sockets saw as the VIP",
            None,
            MetricType::Counter,
        )?;
        for b in &counters.backends {
            let labels = backend_labels(b);
            ConstCounter::new(b.reverse_translations).encode(family.encode_family(&labels)?)?;
        }
        encode_flows(&mut encoder, &counters)
    }
}

/// The labels of backend `b`'s series: its service, port and address.
fn backend_labels(b: &crate::counters::BackendCount) -> Label {
    let mut labels = service_labels(&b.service);
    labels.push(("backend", b.backend.to_string()));
    labels
}

/// `reconciler_backend_connect_failures_total{service,port,backend}` and
/// `reconciler_backend_bytes_total{service,port,backend,direction}`, of TCP backends.
fn encode_flows(
    encoder: &mut DescriptorEncoder,
    counters: &crate::counters::Counters,
) -> Result<(), std::fmt::Error> {
    let tcp = || counters.backends.iter().filter_map(|b| Some((b, b.flows.as_ref()?)));
    let labels = backend_labels;
    let mut family = encoder.encode_descriptor(
        "reconciler_backend_connect_failures",
        "TCP connects to a backend that failed before they were established (reset, timed out)",
        None,
        MetricType::Counter,
    )?;
    for (b, flows) in tcp() {
        ConstCounter::new(flows.failed).encode(family.encode_family(&labels(b))?)?;
    }
    let mut family = encoder.encode_descriptor(
        "reconciler_backend_bytes",
        "Bytes of closed TCP connections to a backend, by direction (sent, received)",
        None,
        MetricType::Counter,
    )?;
    for (b, flows) in tcp() {
        for (direction, bytes) in [("sent", flows.bytes_sent), ("received", flows.bytes_received)] {
            let mut labels = labels(b);
            labels.push(("direction", direction.to_owned()));
            ConstCounter::new(bytes).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// `reconciler_backend_connect_duration_seconds`: the handshake times (the SYN's round trip)
/// of every translated TCP connection (`HANDSHAKES`), a histogram.
fn encode_handshakes(
    encoder: &mut DescriptorEncoder,
    slots: &[u64],
) -> Result<(), std::fmt::Error> {
    use reconciler_common::flows::HANDSHAKE_BOUNDS_US;
    let Some((sum, counts)) = slots.split_last() else { return Ok(()) };
    // prometheus-client writes the last bound as `+Inf` when it is `f64::MAX`, as its own
    // histograms make it.
    let bounds = HANDSHAKE_BOUNDS_US.iter().map(|us| *us as f64 / 1e6).chain([f64::MAX]);
    let buckets: Vec<(f64, u64)> = bounds.zip(counts.iter().copied()).collect();
    let mut metric = encoder.encode_descriptor(
        "reconciler_backend_connect_duration_seconds",
        "Handshake times (the SYN's round trip, as the kernel measured it) of translated TCP connections",
        None,
        MetricType::Histogram,
    )?;
    let exemplars: Option<&std::collections::HashMap<usize, Exemplar<Label, f64>>> = None;
    metric.encode_histogram(*sum as f64 / 1e9, counts.iter().sum(), &buckets, exemplars)
}

/// `reconciler_service_connections_total{service,port,protocol}`: its backends' connects and
/// datagrams, summed, those of backends gone included (the series that stay with
/// `metrics.perBackend: false`).
fn encode_service_connections(
    encoder: &mut DescriptorEncoder,
    totals: BTreeMap<(String, String), u64>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "reconciler_service_connections",
        "Connects and datagrams sent to a service's backends, those gone included",
        None,
        MetricType::Counter,
    )?;
    for ((service, protocol), connections) in totals {
        let mut labels = service_labels(&service);
        labels.push(("protocol", protocol));
        ConstCounter::new(connections).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `reconciler_service_refusals_total{service,port,reason}`.
fn encode_service_refusals(
    encoder: &mut DescriptorEncoder,
    counters: &crate::counters::Counters,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "reconciler_service_refusals",
        "Connects and datagrams refused, or replies left untranslated, by reason",
        None,
        MetricType::Counter,
    )?;
    for s in &counters.services {
        for (reason, count) in [
            ("no_backend", s.no_backend),
            ("inconsistent_set", s.inconsistent_set),
            ("stale_reverse_entry", s.stale_reverse_entry),
        ] {
            let mut labels = service_labels(&s.service);
            labels.push(("reason", reason.to_owned()));
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// `reconciler_refusals_total{reason}`: every connect and datagram the programs refused, by
/// reason, including those no service can be charged with (`unknown_port`).
fn encode_refusals(
    encoder: &mut DescriptorEncoder,
    events: &crate::dataplane::Events,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "reconciler_refusals",
        "Connects and datagrams to a VIP refused (ECONNREFUSED), by reason",
        None,
        MetricType::Counter,
    )?;
    for (reason, count) in [
        ("no_backend", events.no_backend),
        ("slot_miss", events.slot_miss),
        ("backend_miss", events.backend_miss),
        ("reverse_full", events.reverse_full),
        ("unknown_port", events.unknown_port),
    ] {
        let labels: Label = vec![("reason", reason.to_owned())];
        ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::BackendCount;

    fn count(backend: &str, connections: u64) -> BackendCount {
        BackendCount {
            service: "web/http".into(),
            backend: backend.parse().unwrap(),
            protocol: reconciler_core::state::Protocol::Tcp,
            connections,
            reverse_translations: 0,
            flows: None,
        }
    }

    #[test]
    fn a_service_total_never_drops_as_backends_go() {
        let mut totals = ServiceTotals::default();
        let key = ("web/http".to_owned(), "TCP".to_owned());
        let both = [count("10.1.0.11:80", 5), count("10.1.0.12:80", 7)];
        assert_eq!(totals.update(&both)[&key], 12);
        // 10.1.0.12 removed: its 7 stay counted.
        assert_eq!(totals.update(&[count("10.1.0.11:80", 6)])[&key], 13);
        // 10.1.0.11's ID given anew (counting from 0): its 6 stay, the new 1 adds.
        assert_eq!(totals.update(&[count("10.1.0.11:80", 1)])[&key], 14);
    }
}
