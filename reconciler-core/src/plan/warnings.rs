//! What a reviewer must not miss in a plan, shown before its services: clients cut off by
//! a VIP or port that moves, every service destroyed, a rename that is a destroy and a
//! create on the same address.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::view::ServiceView;
use crate::state::Frontend;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// A service updated in place stops answering on a VIP, port or protocol it had.
    CutsClientsOff,
    /// Every service goes and none comes.
    DestroysEverything,
    /// A service destroyed and another created on one of its addresses.
    Rename,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub kind: WarningKind,
    /// The service it is about (the new name, for a rename).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub message: String,
}

/// A service of a plan: its name, before and after (`None`: created, destroyed).
pub(super) type Sides<'a> = (&'a str, Option<&'a ServiceView>, Option<&'a ServiceView>);

/// The warnings of a plan's `services`; `destroys_everything` when nothing is left.
pub(super) fn warnings_of(services: &[Sides], destroys_everything: bool) -> Vec<Warning> {
    let mut warnings = Vec::new();
    if destroys_everything {
        warnings.push(Warning {
            kind: WarningKind::DestroysEverything,
            service: None,
            message: "this plan destroys every service and defines none: every client of \
                      every VIP loses its service"
                .to_owned(),
        });
    }
    for &(name, before, after) in services {
        if let (Some(before), Some(after)) = (before, after) {
            warnings.extend(cut_off(name, before, after));
        }
    }
    // Each destroyed service's addresses, indexed: a bulk rename stays linear.
    let mut destroyed: BTreeMap<Frontend, &str> = BTreeMap::new();
    for &(name, before, after) in services {
        if let (Some(before), None) = (before, after) {
            destroyed.extend(frontends(before).into_iter().map(|f| (f, name)));
        }
    }
    for &(new, before, after) in services {
        let (None, Some(after)) = (before, after) else { continue };
        let mut shared: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for frontend in frontends(after) {
            if let Some(old) = destroyed.get(&frontend) {
                shared.entry(old).or_default().push(frontend.to_string());
            }
        }
        for (old, addresses) in shared {
            warnings.push(Warning {
                kind: WarningKind::Rename,
                service: Some(new.to_owned()),
                message: format!(
                    "service \"{old}\" is destroyed and \"{new}\" created on {}: a rename is \
                     a new service, so session affinity starts anew and its counters from zero",
                    addresses.join(", ")
                ),
            });
        }
    }
    warnings
}

/// A service updated from `before` to `after` that stops answering where it did.
fn cut_off(name: &str, before: &ServiceView, after: &ServiceView) -> Option<Warning> {
    let (old, new) = (frontends(before), frontends(after));
    let lost: Vec<String> = old.difference(&new).map(ToString::to_string).collect();
    if lost.is_empty() {
        return None;
    }
    let gained: Vec<String> = new.difference(&old).map(ToString::to_string).collect();
    let whereto = match gained.is_empty() {
        true => String::new(),
        false => format!(" (it answers on {} instead)", gained.join(", ")),
    };
    Some(Warning {
        kind: WarningKind::CutsClientsOff,
        service: Some(name.to_owned()),
        message: format!(
            "service \"{name}\" stops answering on {}{whereto}: clients that still use it lose \
             the service",
            lost.join(", ")
        ),
    })
}

/// Every VIP, port and protocol a service answers on.
fn frontends(view: &ServiceView) -> BTreeSet<Frontend> {
    let mut all = BTreeSet::new();
    for &vip in &view.vip {
        for port in &view.ports {
            all.insert(Frontend { vip, port: port.port, protocol: port.protocol });
        }
    }
    all
}
