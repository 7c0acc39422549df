//! The backends the daemon takes out and brings back, as `trace` shows them beside the
//! translations: `HEALTH_EXCLUDED`, read once a second, each change with why (a failed health
//! check; an ejection, with the connects that failed in a row).
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use reconciler::dataplane::Dataplane;
use reconciler_common::exclusion;
use serde::Serialize;

/// How often `HEALTH_EXCLUDED` is read: the daemon changes it at most once a second.
const EVERY: Duration = Duration::from_secs(1);

/// A backend taken out of a service or brought back.
#[derive(Debug, Serialize)]
pub struct ExclusionChange {
    pub service: String,
    pub backend: SocketAddr,
    /// `ejected` (outlier detection), `excluded` (its health check fails), `ramping` (slow
    /// start: it joined) or `restored` (back in, or at its full weight).
    pub event: &'static str,
    /// For `ejected`: the service's connects to it that had failed in a row.
    pub failures: Option<u64>,
}

/// What `HEALTH_EXCLUDED` said at the last look.
pub struct Exclusions {
    last: BTreeMap<(u32, SocketAddr), u32>,
    looked: Instant,
}

impl Exclusions {
    /// Starts from what the data plane at `pin_path` excludes now (not shown).
    pub fn start(pin_path: &Path) -> anyhow::Result<Exclusions> {
        let last = Dataplane::open(pin_path)?.read_health()?;
        Ok(Exclusions { last, looked: Instant::now() })
    }

    /// What changed since the last look, if a second has passed; a data plane that cannot
    /// be read now is read next time.
    pub fn changes(&mut self, pin_path: &Path) -> Vec<ExclusionChange> {
        if self.looked.elapsed() < EVERY {
            return Vec::new();
        }
        self.looked = Instant::now();
        let Ok(dataplane) = Dataplane::open(pin_path) else { return Vec::new() };
        let Ok(now) = dataplane.read_health() else { return Vec::new() };
        if now == self.last {
            return Vec::new();
        }
        let Ok(live) = dataplane.read_live_members() else { return Vec::new() };
        let state = &live.state;
        let id_of = |service_id: u32, addr: SocketAddr| {
            let found =
                state.backends.iter().find(|(_, b)| b.service_id == service_id && b.addr == addr);
            found.map(|(id, _)| *id)
        };
        let mut changes = Vec::new();
        let mut change = |&(service_id, backend): &(u32, SocketAddr), event, failures| {
            let service = state.names.get(&service_id).cloned().unwrap_or_default();
            changes.push(ExclusionChange { service, backend, event, failures });
        };
        let kind = |value: Option<&u32>| value.map(|v| exclusion::kind(*v).0);
        for (pair, why) in &now {
            // A ramp's steps are not news; its start is.
            if self.last.get(pair) == Some(why)
                || kind(Some(why)) == Some(exclusion::RAMP)
                    && kind(self.last.get(pair)) == Some(exclusion::RAMP)
            {
                continue;
            }
            if exclusion::kind(*why).0 == exclusion::RAMP {
                change(pair, "ramping", None);
            } else if *why == exclusion::EJECTED {
                let flows = id_of(pair.0, pair.1).and_then(|id| dataplane.backend_flows([id]).ok());
                let failures =
                    flows.and_then(|f| f.into_values().next()).map(|f| f.consecutive_failures);
                change(pair, "ejected", failures);
            } else {
                change(pair, "excluded", None);
            }
        }
        for pair in self.last.keys().filter(|pair| !now.contains_key(pair)) {
            change(pair, "restored", None);
        }
        self.last = now;
        changes
    }
}
