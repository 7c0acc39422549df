//! Staged rollouts across nodes: whether a node of wave N may apply a revision, by what
//! Prometheus shows of the nodes of every earlier wave (`questions`). No coordinator: each
//! node asks, and every node of a wave reaches the same verdict from the same answers.
use std::time::Duration;

use serde::Serialize;

use super::questions::Answers;

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

/// The verdict for `revision` on a node of `wave`, by what Prometheus `answers` of the nodes
/// of the waves before. Wave 1 is always open. Waves are counted from 1 without gaps: an
/// earlier wave with no node (or none Prometheus shows) keeps the later ones waiting, never
/// lets them through.
pub fn verdict(answers: &Answers, revision: &str, wave: u32, gate: &Gate) -> Verdict {
    let short = short(revision);
    if let Some((node, failed_wave)) = answers.failed.iter().find(|(_, w)| *w < wave) {
        return Verdict::Stopped(format!("{short} failed on {node} (wave {failed_wave})"));
    }
    for earlier in 1..wave {
        let soaked = answers.soaked.get(&earlier).copied().unwrap_or(0);
        if soaked < gate.min_nodes as usize {
            return Verdict::Wait(format!(
                "wave {earlier}: {soaked} of the {} node(s) needed have run {short} for {}s ({} \
                 run it)",
                gate.min_nodes,
                gate.soak.as_secs(),
                answers.running.get(&earlier).copied().unwrap_or(0)
            ));
        }
    }
    let earlier = |(_, w, _): &&(String, u32, u64)| *w < wave;
    if let Some((node, wave, count)) = answers.failing_open.iter().find(earlier) {
        return Verdict::Wait(format!(
            "{node} (wave {wave}) has {count} service(s) failing open on {short}"
        ));
    }
    if let Some((node, wave, count)) = answers.storms.iter().find(earlier) {
        return Verdict::Wait(format!(
            "an ejection storm on {node} (wave {wave}): {count} backends ejected on {short}"
        ));
    }
    Verdict::Open
}

/// A revision as people quote it: its first 12 characters.
fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn gate() -> Gate {
        Gate {
            prometheus: String::new(),
            soak: Duration::from_secs(600),
            min_nodes: 1,
            max_ejected_backends: 2,
        }
    }

    /// `soaked` and `running` nodes by wave.
    fn answers(soaked: &[(u32, usize)], running: &[(u32, usize)]) -> Answers {
        Answers {
            soaked: BTreeMap::from_iter(soaked.iter().copied()),
            running: BTreeMap::from_iter(running.iter().copied()),
            ..Answers::default()
        }
    }

    #[test]
    fn a_later_wave_waits_for_every_earlier_one_to_have_soaked() {
        assert_eq!(verdict(&Answers::default(), "r2", 1, &gate()), Verdict::Open);
        let first_soaked = answers(&[(1, 1)], &[(1, 1), (2, 1)]);
        assert_eq!(verdict(&first_soaked, "r2", 2, &gate()), Verdict::Open);
        assert_eq!(
            verdict(&first_soaked, "r2", 3, &gate()),
            Verdict::Wait(
                "wave 2: 0 of the 1 node(s) needed have run r2 for 600s (1 run it)".into()
            )
        );
        // A wave with no node at all keeps the later ones waiting.
        let wait = verdict(&answers(&[(1, 1)], &[(1, 1)]), "r2", 3, &gate());
        assert!(matches!(wait, Verdict::Wait(reason) if reason.starts_with("wave 2: 0 of")));
        let two = Gate { min_nodes: 2, ..gate() };
        let wait = verdict(&answers(&[(1, 1)], &[(1, 2)]), "r2", 2, &two);
        assert!(matches!(wait, Verdict::Wait(reason) if reason.starts_with("wave 1: 1 of the 2")));
    }

    #[test]
    fn a_failure_on_an_earlier_wave_stops_and_trouble_there_waits() {
        let soaked = answers(&[(1, 2)], &[(1, 2)]);
        let failed = Answers { failed: vec![("a".into(), 1)], ..soaked.clone() };
        let stopped = verdict(&failed, "r2", 3, &gate());
        assert_eq!(stopped, Verdict::Stopped("r2 failed on a (wave 1)".into()));
        // A failure on the same wave or a later one is theirs.
        let later = Answers { failed: vec![("c".into(), 2)], ..soaked.clone() };
        assert_eq!(verdict(&later, "r2", 2, &gate()), Verdict::Open);
        let open = Answers { failing_open: vec![("b".into(), 1, 1)], ..soaked.clone() };
        let wait = verdict(&open, "r2", 2, &gate());
        assert_eq!(wait, Verdict::Wait("b (wave 1) has 1 service(s) failing open on r2".into()));
        let storm = Answers { storms: vec![("b".into(), 1, 3)], ..soaked };
        let wait = verdict(&storm, "r2", 2, &gate());
        assert!(matches!(wait, Verdict::Wait(reason) if reason.starts_with("an ejection storm")));
    }
}
