//! What a gate asks Prometheus of a revision, in one PromQL query that counts on the server:
//! the answer holds a series per wave, or per node in trouble, never one per node of the
//! fleet. At 10 000 nodes a node waiting at its gate reads a few hundred bytes a check, not
//! the 150 000 series of the fleet's view (Prometheus still evaluates those).
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

/// The labels of a series that are not its scrape target's: every other label (`job`,
/// `instance`, and a federating Prometheus' external labels such as `cluster`) tells the
/// daemon apart.
pub const NOT_THE_TARGET: [&str; 7] =
    ["revision", "wave", "reason", "node", "zone", "key", "value"];

impl Answers {
    /// Asks `prometheus` about `revision` in one query: soaked for `soak_seconds`, and the
    /// nodes that ran it in trouble at any time within that window (failing open, or more
    /// than `max_ejected` backends ejected).
    pub fn ask(
        prometheus: &Prometheus,
        revision: &str,
        soak_seconds: u64,
        max_ejected: u64,
    ) -> Result<Answers, QueryError> {
        Ok(Answers::of(&prometheus.query(&question(revision, soak_seconds, max_ejected))?))
    }

    /// The answers in the one vector [`question`] asks for, each series tagged by `question`.
    fn of(vector: &Vector) -> Answers {
        let part = |name: &str| Vector {
            at: vector.at,
            samples: vector
                .samples
                .iter()
                .filter(|s| s.labels.get("question").is_some_and(|q| q == name))
                .cloned()
                .collect(),
        };
        Answers {
            running: by_wave(&part("running")),
            soaked: by_wave(&part("soaked")),
            failed: nodes(&part("failed")).map(|(node, wave, _)| (node, wave)).collect(),
            failing_open: nodes(&part("failing_open")).collect(),
            storms: nodes(&part("storms")).collect(),
        }
    }
}

/// The PromQL of [`Answers::ask`]: five questions, each tagged by a `question` label, joined
/// by `or`. A node is matched across metrics by every label but [`NOT_THE_TARGET`]; `topk`
/// keeps one series of a node where a Prometheus that restarted shows two for a while.
fn question(revision: &str, soak_seconds: u64, max_ejected: u64) -> String {
    let revision = escaped(revision);
    let ignoring = "ignoring(revision, wave, reason, node, zone)";
    let named = |metric: &str| {
        format!(
            "(topk without (revision, wave) (1, {metric}{{revision=\"{revision}\"}}) * 0 + \
             {ignoring} group_left(node) topk without (node, zone) (1, reconciler_node_info))"
        )
    };
    let held = named("reconciler_applied_revision_timestamp_seconds");
    let window = format!("[{}s]", soak_seconds.max(1));
    let on_held = format!("* {ignoring} group_left(node, wave) {held}");
    let tagged = |name: &str, query: String| {
        format!("label_replace({query}, \"question\", \"{name}\", \"\", \"\")")
    };
    let soaked = format!(
        "count by (wave) (time() - topk without (revision, wave) (1, \
         reconciler_applied_revision_timestamp_seconds{{revision=\"{revision}\"}}) >= \
         {soak_seconds})"
    );
    [
        tagged("running", format!("count by (wave) ({held})")),
        tagged("soaked", soaked),
        tagged("failed", named("reconciler_failed_revision_timestamp_seconds")),
        tagged(
            "failing_open",
            format!(
                "sum without (reason) (max_over_time(reconciler_services_failing_open{window})) \
                 {on_held} > 0"
            ),
        ),
        tagged(
            "storms",
            format!("max_over_time(reconciler_backends_ejected{window}) {on_held} > {max_ejected}"),
        ),
    ]
    .join(" or ")
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

    #[test]
    fn each_question_is_read_from_its_tagged_series() {
        let vector = Vector {
            at: 0.0,
            samples: vec![
                sample(&[("question", "running"), ("wave", "1")], 2.0),
                sample(&[("question", "soaked"), ("wave", "1")], 1.0),
                sample(&[("question", "failed"), ("node", "a"), ("wave", "1")], 1.0),
                sample(&[("question", "storms"), ("node", "b"), ("wave", "2")], 5.0),
            ],
        };
        let answers = Answers::of(&vector);
        assert_eq!((answers.running[&1], answers.soaked[&1]), (2, 1));
        assert_eq!(answers.failed, [("a".to_owned(), 1)]);
        assert_eq!((answers.storms[0].2, answers.failing_open.len()), (5, 0));
        let query = question("r\"1", 600, 2);
        assert!(query.contains("{revision=\"r\\\"1\"}"), "{query}");
        assert!(query.contains("max_over_time(reconciler_backends_ejected[600s])"), "{query}");
    }
}
