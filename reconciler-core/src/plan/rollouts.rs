//! What a plan says the daemon would roll out (`spec.rollout`): each service with a rollout
//! whose backends that take clients the plan changes, with its steps and how long they take.
use std::{borrow::Borrow, collections::BTreeSet, net::SocketAddr};

use crate::{
    model::Service,
    state::{BackendState, MapState},
};

/// A line per service (`name/port`) with a rollout whose backends taking clients differ
/// between `live` and `services`' definitions (a service new to `live` is applied at once).
pub fn rollout_notes<S: Borrow<Service>>(services: &[S], live: &MapState) -> Vec<String> {
    let mut notes = Vec::new();
    for service in services.iter().map(Borrow::borrow) {
        let Some(rollout) = &service.spec.rollout else { continue };
        for port in &service.spec.ports {
            let label = service.label(port);
            let Some((&id, _)) = live.names.iter().find(|(_, l)| **l == label) else { continue };
            let taking = |b: &&crate::state::BackendEntry| {
                b.service_id == id && b.state == BackendState::Active
            };
            let before: BTreeSet<SocketAddr> =
                live.backends.values().filter(taking).map(|b| b.addr).collect();
            let after: BTreeSet<SocketAddr> = service
                .spec
                .backends
                .iter()
                .filter(|b| b.takes_clients())
                .map(|b| b.address_for(port))
                .collect();
            if before.is_empty() || before == after {
                continue;
            }
            let mut steps = rollout.steps.clone();
            if steps.last() != Some(&100) {
                steps.push(100);
            }
            let seconds = u64::from(rollout.step_seconds) * (steps.len() as u64 - 1);
            let shares: Vec<String> = steps.iter().map(|s| format!("{s}%")).collect();
            notes.push(format!(
                "{label}: {} of new connections to the new backends, {} s a step ({} s in all), \
                 aborted above {}% failed connects",
                shares.join(" → "),
                rollout.step_seconds,
                seconds,
                rollout.max_failure_percent
            ));
        }
    }
    notes
}
