//! What a plan holds, and how one is made from the live and the desired map state: their
//! entry changes, grouped by service, and the map writes an apply will make.
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{
    view::{views, ServiceView},
    warnings::{warnings_of, Sides, Warning},
};
use crate::{
    diff::{predicted_writes, Change},
    source::CompareMode,
    state::{split_label, MapState},
    validate::Diagnostic,
};

/// Version of the plan JSON (`--output json` and saved plans). 2: typed services (backends,
/// ports as objects), warnings, the comparison of `plan --against`.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Destroy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub name: String,
    pub action: Action,
    pub before: Option<ServiceView>,
    pub after: Option<ServiceView>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
}

/// What `plan` shows and `apply PLANFILE` applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: u32,
    #[serde(flatten)]
    pub context: PlanContext,
    pub services: Vec<ServicePlan>,
    pub summary: Summary,
    /// What a reviewer must not miss, shown first.
    pub warnings: Vec<Warning>,
    /// Map entries that differ.
    pub entry_changes: usize,
    /// Map writes the apply will make (both sets, the flip and the metadata).
    pub map_writes: usize,
    /// The desired map state; kept in saved plans, so apply writes exactly what was shown.
    /// With `touched`: the desired entries of the touched services only.
    pub desired: MapState,
    /// An incremental plan's scope: what both sets hold of the services it touches (the
    /// apply confirms it); `None`: the plan covers every entry. Never saved: `plan --out`
    /// makes a full plan.
    #[serde(skip)]
    pub touched: Option<MapState>,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.context.install || self.map_writes > 0
    }

    /// Every live service goes and none comes: what an empty or mistyped source looks like.
    pub fn destroys_everything(&self) -> bool {
        // An incremental plan is made only for definitions with services.
        self.context.against.is_none() && self.leaves_nothing()
    }

    /// The plan as an incremental one, of the services whose entries `touched` holds.
    pub fn scoped_to(mut self, touched: MapState) -> Plan {
        self.touched = Some(touched);
        self.warnings = self.warnings_now();
        self
    }

    /// The warnings of the plan as it stands.
    fn warnings_now(&self) -> Vec<Warning> {
        let sides: Vec<Sides> = self
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.before.as_ref(), s.after.as_ref()))
            .collect();
        warnings_of(&sides, self.leaves_nothing())
    }

    /// Services go and none is left.
    fn leaves_nothing(&self) -> bool {
        self.touched.is_none() && self.summary.destroy > 0 && self.desired.services.is_empty()
    }

    /// The live maps differ from what their recorded revision put there.
    pub fn is_drift(&self) -> bool {
        let context = &self.context;
        self.entry_changes > 0
            && context.revision.is_some()
            && context.revision == context.live_revision
    }
}

/// What a plan was made from and against, apart from the two states.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanContext {
    /// The commit the desired state comes from (None for a plain directory).
    pub revision: Option<String>,
    /// Where the desired state comes from, for people.
    pub source: String,
    /// The data plane the plan was made against.
    pub pin_path: String,
    /// No data plane is installed yet: apply installs it.
    pub install: bool,
    /// The live generation the plan was made against; a saved plan is refused if it moved.
    pub generation: u64,
    /// The revision the live maps record as applied (with `against`: the base revision).
    pub live_revision: Option<String>,
    /// Compared with another revision (`plan --against`), not with a data plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against: Option<Comparison>,
    /// The daemon's overlay changes (exclusions, ramps, rollouts), whatever else does.
    #[serde(default)]
    pub health_changed: bool,
    /// Services (`name/port`) whose backends are all excluded and that fail open rather
    /// than take their fallback's, as the fallbacks would not fit the data plane's capacity
    /// (`failover::compile_within`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_held_back: Vec<String>,
    /// What the daemon would roll out step by step (`spec.rollout`), a line per service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<String>,
    /// The services whose `nodeSelector` leaves the node planned for out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_on_node: Vec<String>,
}

/// What `plan --against REV` compared, for a pull request's review.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    pub mode: CompareMode,
    /// REV, as given, and its commit.
    pub base_ref: String,
    pub base: String,
    /// The commit planned (HEAD, or `--ref`).
    pub head: String,
    /// The commit both descend from (the "before" side of a `merge_base` comparison).
    pub merge_base: Option<String>,
    /// What is wrong in the base revision's definitions: its services that load are planned
    /// against, the others left out (a pull request that repairs the base still gets a plan).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub base_errors: Vec<Diagnostic>,
}

/// The plan that turns `live` into `desired`.
pub fn make_plan(context: PlanContext, live: &MapState, desired: MapState) -> Plan {
    let changes = live.changes_to(&desired);
    // Only a service with a changed entry can look different: the others' views are not
    // built (for 10 000 services that would format every backend twice).
    let ids = changed_services(live, &desired, &changes);
    let names: BTreeSet<&str> = ids
        .iter()
        .flat_map(|id| [live.names.get(id), desired.names.get(id)])
        .flatten()
        .filter_map(|label| split_label(label).map(|(name, _)| name))
        .collect();
    let mut all = live.ids_named(&names);
    all.extend(desired.ids_named(&names));
    all.extend(ids);
    let mut before = views(&live.restricted(&all));
    let after = views(&desired.restricted(&all));
    for (name, view) in &mut before {
        if let Some(new) = after.get(name) {
            view.borrow_unknown_weights(new);
        }
    }
    let mut services = Vec::new();
    let mut summary = Summary::default();
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        let (old, new) = (before.get(name), after.get(name));
        let action = match (old, new) {
            (None, Some(_)) => Action::Create,
            (Some(_), None) => Action::Destroy,
            (Some(a), Some(b)) if a != b => Action::Update,
            _ => continue,
        };
        match action {
            Action::Create => summary.add += 1,
            Action::Update => summary.change += 1,
            Action::Destroy => summary.destroy += 1,
        }
        services.push(ServicePlan {
            name: name.clone(),
            action,
            before: old.cloned(),
            after: new.cloned(),
        });
    }
    let revision_changed = context.revision.is_some() && context.revision != context.live_revision;
    let mut plan = Plan {
        format_version: FORMAT_VERSION,
        map_writes: predicted_writes(&changes, revision_changed),
        entry_changes: changes.len(),
        context,
        services,
        summary,
        warnings: Vec::new(),
        desired,
        touched: None,
    };
    plan.warnings = plan.warnings_now();
    plan
}

/// The service IDs that `changes` (from `live` to `desired`) touch an entry of.
fn changed_services(live: &MapState, desired: &MapState, changes: &[Change]) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for change in changes {
        match change {
            Change::Service(frontend, _) => {
                ids.extend(live.services.get(frontend).map(|s| s.id));
                ids.extend(desired.services.get(frontend).map(|s| s.id));
            }
            Change::Slot((id, _), _) | Change::Name(id, _) => {
                ids.insert(*id);
            }
            Change::Backend(id, _) => {
                ids.extend(live.backends.get(id).map(|b| b.service_id));
                ids.extend(desired.backends.get(id).map(|b| b.service_id));
            }
            // A health exclusion shows through its backend's state, a backend change; a VIP
            // through its services'.
            Change::Health(..) | Change::Previous(..) | Change::Vip(..) => {}
        }
    }
    ids
}
