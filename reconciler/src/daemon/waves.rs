//! Staged rollouts across nodes, the daemon's side: on a node of a later wave
//! (`rollout.wave` > 1), a valid new revision is applied only once its gate opens, by what
//! Prometheus shows of the earlier waves (`crate::fleet::gate`). Prometheus unreachable
//! means wait: a gate that cannot see is closed.
use std::time::Duration;

use super::{config::Config, outcome::Outcome};
use crate::fleet::{
    gate::{self, Verdict},
    prometheus::Prometheus,
    questions::Answers,
};

/// How soon a waiting node asks again (sooner than the interval, if that is longer): the
/// soak ends at a time the node knows nothing of.
pub(super) const RECHECK: Duration = Duration::from_secs(10);
/// How long one question to Prometheus may take: the run waits for it.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// `Waiting` while `revision` may not be applied here yet; `None` to apply it (wave 1, no
/// revision, or the one the data plane holds: `live`).
pub(super) fn hold(config: &Config, live: Option<&str>, revision: Option<&str>) -> Option<Outcome> {
    let gate = config.rollout.waits()?;
    let revision = revision.filter(|revision| Some(*revision) != live)?;
    let prometheus = Prometheus::new(&gate.prometheus, QUERY_TIMEOUT);
    let answers =
        Answers::ask(&prometheus, revision, gate.soak.as_secs(), gate.max_ejected_backends);
    let verdict = match answers {
        Ok(answers) => gate::verdict(&answers, revision, config.rollout.wave, gate),
        Err(e) => Verdict::Wait(format!("{e}: waiting, not applying")),
    };
    let (reason, stopped) = match verdict {
        Verdict::Open => return None,
        Verdict::Wait(reason) => (reason, false),
        Verdict::Stopped(reason) => (reason, true),
    };
    Some(Outcome::Waiting { revision: revision.to_owned(), reason, stopped })
}
