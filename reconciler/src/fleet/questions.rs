//! What a gate asks Prometheus of a revision, in PromQL that counts on the server: every
//! answer holds a series per wave, or per node in trouble, never one per node of the fleet.
//! At 10 000 nodes, a node waiting at its gate reads a few hundred bytes every 10 s, not the
//! 150 000 series of the fleet's view.
use std::collections::BTreeMap;

use super::prometheus::{Prometheus, QueryError, Vector};

/// The answers about one revision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Answers {
    /// Nodes that hold it, by wave.
    pub running: BTreeMap<u32, usize>,
    /// Nodes that have held it for the soak time at least, by wave.
    pub soaked: BTreeMap<u32, usize>,
    /// Nodes that refused it: name and wave.
    pub failed: Vec<(String, u32)>,
    /// Nodes that hold it with services failing open: name, wave, how many services.
    pub failing_open: Vec<(String, u32, u64)>,
    /// Nodes that hold it with more than the gate's ejected backends: name, wave, how many.
    pub storms: Vec<(String, u32, u64)>,
}

impl Answers {
    /// Asks `prometheus` about `revision`, soaked for `soak_seconds`, a storm above
    /// `max_ejected` backends ejected on one node.
    pub fn ask(
        prometheus: &Prometheus,
        revision: &str,
        soak_seconds: u64,
        max_ejected: u64,
    ) -> Result<Answers, QueryError> {
        let held = format!(
            "topk by (job, instance) (1, reconciler_applied_revision_timestamp_seconds\
             {{revision=\"{}\"}})",
            escaped(revision)
        );
        // The node's name beside each node that holds it (one series a node: a Prometheus
        // that restarted may show two of a node for a while).
        let named = format!(
            "({held} * 0 + on(job, instance) group_left(node) \
             topk by (job, instance) (1, reconciler_node_info))"
        );
        let failed = format!(
            "topk by (job, instance) (1, reconciler_failed_revision_timestamp_seconds\
             {{revision=\"{}\"}}) * 0 + on(job, instance) group_left(node) \
             topk by (job, instance) (1, reconciler_node_info)",
            escaped(revision)
        );
        let on_named = "* on(job, instance) group_left(node, wave)";
        Ok(Answers {
            running: by_wave(&prometheus.query(&format!("count by (wave) ({held})"))?),
            soaked: by_wave(
                &prometheus
                    .query(&format!("count by (wave) (time() - {held} >= {soak_seconds})"))?,
            ),
            failed: nodes(&prometheus.query(&failed)?).map(|(n, w, _)| (n, w)).collect(),
            failing_open: nodes(&prometheus.query(&format!(
                "sum by (job, instance) (reconciler_services_failing_open) {on_named} {named} > 0"
            ))?)
            .collect(),
            storms: nodes(&prometheus.query(&format!(
                "max by (job, instance) (reconciler_backends_ejected) {on_named} {named} \
                 > {max_ejected}"
            ))?)
            .collect(),
        })
    }
}

/// A label value inside PromQL's double quotes.
fn escaped(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

fn wave_of(labels: &BTreeMap<String, String>) -> Option<u32> {
    labels.get("wave")?.parse().ok()
}

/// Counts by their `wave` label.
fn by_wave(vector: &Vector) -> BTreeMap<u32, usize> {
    let waves = vector.samples.iter().filter_map(|s| Some((wave_of(&s.labels)?, s.value)));
    waves.map(|(wave, count)| (wave, count.max(0.0) as usize)).collect()
}

/// Each node of an answer: its name, wave and value.
fn nodes(vector: &Vector) -> impl Iterator<Item = (String, u32, u64)> + '_ {
    vector.samples.iter().filter_map(|sample| {
        let name = sample.labels.get("node")?.clone();
        Some((name, wave_of(&sample.labels)?, sample.value.max(0.0) as u64))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::prometheus::Sample;

    fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Sample { labels, value }
    }

    #[test]
    fn counts_are_read_by_wave_and_nodes_by_name() {
        let vector = Vector {
            at: 0.0,
            samples: vec![sample(&[("wave", "1")], 3.0), sample(&[("wave", "2")], 1.0)],
        };
        assert_eq!(by_wave(&vector), BTreeMap::from([(1, 3), (2, 1)]));
        let vector = Vector {
            at: 0.0,
            samples: vec![sample(&[("node", "edge-1"), ("wave", "1"), ("job", "r")], 4.0)],
        };
        assert_eq!(nodes(&vector).collect::<Vec<_>>(), [("edge-1".to_owned(), 1, 4)]);
        assert_eq!(escaped(r#"a"b\c"#), r#"a\"b\\c"#);
    }
}
