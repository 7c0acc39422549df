//! Staged rollouts across nodes: whether a node of wave N may apply a revision, by what the
//! fleet's view shows of the nodes of every earlier wave. No coordinator: each node asks
//! Prometheus, and every node of a wave reaches the same verdict from the same view.
use std::time::Duration;

use serde::Serialize;

use super::view::{Fleet, NodeView};

/// `rollout.gate` of a node's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    /// Prometheus' URL.
    pub prometheus: String,
    /// How long a revision must have run on an earlier wave's nodes.
    pub soak: Duration,
    /// How many nodes of each earlier wave must have run it that long.
    pub min_nodes: u32,
    /// More ejected backends than this on a node of an earlier wave is an ejection storm.
    pub max_ejected_backends: u64,
}

/// Whether a revision may be applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    Open,
    /// Not yet: the earlier waves have not run it long enough, or are in trouble.
    Wait(String),
    /// Never: it failed on a node of an earlier wave. A new revision starts again.
    Stopped(String),
}

/// The verdict for `revision` on a node of `wave`, by `fleet`'s nodes of the waves before.
/// Wave 1 is always open. Waves are counted from 1 without gaps: an earlier wave with no node
/// (or none Prometheus shows) keeps the later ones waiting, never lets them through.
pub fn verdict(fleet: &Fleet, revision: &str, wave: u32, gate: &Gate) -> Verdict {
    let earlier: Vec<&NodeView> = fleet.nodes.iter().filter(|n| n.wave < wave).collect();
    let short = short(revision);
    if let Some(failed) = earlier.iter().find(|n| n.failed_revision.as_deref() == Some(revision)) {
        let (node, wave) = (&failed.node, failed.wave);
        return Verdict::Stopped(format!("{short} failed on {node} (wave {wave})"));
    }
    let soak = gate.soak.as_secs_f64();
    for wave in 1..wave {
        let running: Vec<_> = earlier
            .iter()
            .filter(|n| n.wave == wave && n.revision.as_deref() == Some(revision))
            .collect();
        let soaked = running
            .iter()
            .filter(|n| n.revision_since.is_some_and(|since| fleet.at - since >= soak))
            .count();
        if soaked < gate.min_nodes as usize {
            return Verdict::Wait(format!(
                "wave {wave}: {soaked} of the {} node(s) needed have run {short} for {}s ({} \
                 run it)",
                gate.min_nodes,
                gate.soak.as_secs(),
                running.len()
            ));
        }
    }
    let running = earlier.iter().filter(|n| n.revision.as_deref() == Some(revision));
    for node in running {
        let (name, wave) = (&node.node, node.wave);
        if node.failing_open > 0 {
            let count = node.failing_open;
            return Verdict::Wait(format!(
                "{name} (wave {wave}) has {count} service(s) failing open on {short}"
            ));
        }
        if node.ejected_backends > gate.max_ejected_backends {
            let count = node.ejected_backends;
            return Verdict::Wait(format!(
                "an ejection storm on {name} (wave {wave}): {count} backends ejected on {short}"
            ));
        }
    }
    Verdict::Open
}

/// A revision as people quote it: its first 12 characters.
fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        Gate {
            prometheus: String::new(),
            soak: Duration::from_secs(600),
            min_nodes: 1,
            max_ejected_backends: 2,
        }
    }

    fn node(name: &str, wave: u32, revision: &str, since: f64) -> NodeView {
        NodeView {
            node: name.into(),
            wave,
            reachable: true,
            ready: true,
            revision: Some(revision.into()),
            revision_since: Some(since),
            ..NodeView::default()
        }
    }

    fn fleet(nodes: Vec<NodeView>) -> Fleet {
        Fleet { at: 10_000.0, nodes }
    }

    #[test]
    fn a_later_wave_waits_for_every_earlier_one_to_have_soaked() {
        let soaked = node("a", 1, "r2", 9_000.0);
        let fresh = node("b", 2, "r2", 9_900.0);
        let fleet_of = |nodes| fleet(nodes);
        assert_eq!(verdict(&fleet_of(vec![]), "r2", 1, &gate()), Verdict::Open);
        assert_eq!(verdict(&fleet_of(vec![soaked.clone()]), "r2", 2, &gate()), Verdict::Open);
        let wait = verdict(&fleet_of(vec![soaked.clone(), fresh.clone()]), "r2", 3, &gate());
        assert_eq!(
            wait,
            Verdict::Wait(
                "wave 2: 0 of the 1 node(s) needed have run r2 for 600s (1 run it)".into()
            )
        );
        // A wave with no node at all keeps the later ones waiting.
        let wait = verdict(&fleet_of(vec![soaked.clone()]), "r2", 3, &gate());
        assert!(matches!(wait, Verdict::Wait(reason) if reason.starts_with("wave 2: 0 of")));
        let two = Gate { min_nodes: 2, ..gate() };
        let wait = verdict(&fleet_of(vec![soaked.clone(), node("c", 1, "r1", 0.0)]), "r2", 2, &two);
        assert!(matches!(wait, Verdict::Wait(reason) if reason.starts_with("wave 1: 1 of the 2")));
    }

    #[test]
    fn a_failure_on_an_earlier_wave_stops_and_trouble_there_waits() {
        let failed = NodeView { failed_revision: Some("r2".into()), ..node("a", 1, "r1", 0.0) };
        let soaked = node("b", 1, "r2", 0.0);
        let stopped = verdict(&fleet(vec![failed, soaked.clone()]), "r2", 3, &gate());
        assert_eq!(stopped, Verdict::Stopped("r2 failed on a (wave 1)".into()));
        let open = NodeView { failing_open: 1, ..soaked.clone() };
        let wait = verdict(&fleet(vec![open]), "r2", 2, &gate());
        assert_eq!(wait, Verdict::Wait("b (wave 1) has 1 service(s) failing open on r2".into()));
        let storm = NodeView { ejected_backends: 3, ..soaked.clone() };
        let wait = verdict(&fleet(vec![storm]), "r2", 2, &gate());
        assert!(matches!(wait, Verdict::Wait(reason) if reason.starts_with("an ejection storm")));
        let some = NodeView { ejected_backends: 2, ..soaked };
        assert_eq!(verdict(&fleet(vec![some]), "r2", 2, &gate()), Verdict::Open);
    }
}
