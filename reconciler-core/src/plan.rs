//! Plans: the entry-level difference between the live and the desired map state, grouped by
//! service and shown the way Terraform shows a plan (`+` create, `~` update, `-` destroy).
//!
//! Both sides are read back from map states into the same [`ServiceView`], so what the plan
//! shows is what the maps hold, including entries someone wrote by hand (drift).
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use similar::{capture_diff_slices_deadline, Algorithm as DiffAlgorithm, DiffOp};

use crate::{
    diff::{predicted_writes, Change},
    state::{split_label, Algorithm, BackendEntry, BackendState, MapState},
};

/// Version of the plan JSON (`--output json` and saved plans).
pub const FORMAT_VERSION: u32 = 1;

/// A service as people see it, rebuilt from map entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub vip: Vec<IpAddr>,
    /// `http 80/TCP`, one per frontend.
    pub ports: Vec<String>,
    /// `10.1.0.11:8080 weight=1` (random: the backend's slots) or `... slots=101` (Maglev: its
    /// share of the table), then its state unless active (`draining`, `maintenance`); a
    /// backend that takes no new clients shows no slots. Prefixed with the port name when
    /// the service has several ports.
    pub backends: Vec<String>,
    pub load_balancing: Vec<String>,
    pub session_affinity: Vec<String>,
}

impl ServiceView {
    fn fields(&self) -> [(&'static str, &[String]); 4] {
        [
            ("ports", &self.ports),
            ("backends", &self.backends),
            ("loadBalancing", &self.load_balancing),
            ("sessionAffinity", &self.session_affinity),
        ]
    }
}

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
        self.touched.is_none()
            && !self.context.against
            && self.summary.destroy > 0
            && self.desired.services.is_empty()
    }

    /// The live maps differ from what their recorded revision put there.
    pub fn is_drift(&self) -> bool {
        let context = &self.context;
        self.entry_changes > 0
            && context.revision.is_some()
            && context.revision == context.live_revision
    }
}

/// Why a saved plan file is refused.
#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    #[error("not a saved plan: {0}")]
    NotJson(serde_json::Error),
    #[error("the saved plan has no checksum; save it again with `reconciler plan --out FILE`")]
    NoChecksum,
    #[error(
        "the saved plan's checksum does not match its contents: it was edited or damaged \
         after `reconciler plan --out` wrote it; make the plan again"
    )]
    Mismatch,
    #[error("the saved plan has format version {found}; this reconciler reads {FORMAT_VERSION}")]
    Format { found: u64 },
    #[error("not a saved plan: {0}")]
    Fields(serde_json::Error),
}

/// The file `plan --out` writes: the plan's JSON with a `checksum` (SHA-256) of everything
/// else, so a plan edited by hand or cut short is refused instead of applied as written.
pub fn to_saved(plan: &Plan) -> Result<String, serde_json::Error> {
    if plan.touched.is_some() {
        return Err(serde::ser::Error::custom(
            "an incremental plan is not saved (its desired state is partial); plan with --refresh",
        ));
    }
    let mut value = serde_json::to_value(plan)?;
    let checksum = checksum_of(&value)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("checksum".into(), checksum.into());
    }
    serde_json::to_string(&value)
}

/// Reads a file [`to_saved`] wrote, checking its checksum first.
pub fn from_saved(text: &str) -> Result<Plan, SavedPlanError> {
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(SavedPlanError::NotJson)?;
    let found = value
        .as_object_mut()
        .and_then(|object| object.remove("checksum"))
        .ok_or(SavedPlanError::NoChecksum)?;
    let expected = checksum_of(&value).map_err(SavedPlanError::NotJson)?;
    if found.as_str() != Some(expected.as_str()) {
        return Err(SavedPlanError::Mismatch);
    }
    let version = value.get("format_version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(FORMAT_VERSION)) {
        return Err(SavedPlanError::Format { found: version.unwrap_or(0) });
    }
    serde_json::from_value(value).map_err(SavedPlanError::Fields)
}

fn checksum_of(value: &serde_json::Value) -> Result<String, serde_json::Error> {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(serde_json::to_string(value)?.as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!("sha256:{hex}"))
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
    pub against: bool,
    /// The health exclusions change (the daemon's checks), whatever else does.
    #[serde(default)]
    pub health_changed: bool,
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
    let before = views(&live.restricted(&all));
    let after = views(&desired.restricted(&all));
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
    Plan {
        format_version: FORMAT_VERSION,
        map_writes: predicted_writes(&changes, revision_changed),
        entry_changes: changes.len(),
        context,
        services,
        summary,
        desired,
        touched: None,
    }
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
            // A health exclusion shows through its backend's state, a backend change.
            Change::Health(..) => {}
        }
    }
    ids
}

/// Every service of a map state, by name (`web` for frontends named `web/http`, ...).
pub fn views(state: &MapState) -> BTreeMap<String, ServiceView> {
    let mut weights: BTreeMap<u32, usize> = BTreeMap::new();
    for backend in state.slots.values() {
        *weights.entry(*backend).or_default() += 1;
    }
    let mut views: BTreeMap<String, ServiceView> = BTreeMap::new();
    let mut port_counts: BTreeMap<String, usize> = BTreeMap::new();
    let label = |id: u32| -> (String, String) {
        match state.names.get(&id).and_then(|n| split_label(n)) {
            Some((service, port)) => (service.to_owned(), port.to_owned()),
            None => (format!("(unnamed service {id})"), String::new()),
        }
    };
    for entry in state.services.values() {
        *port_counts.entry(label(entry.id).0).or_default() += 1;
    }
    let mut backends_of: BTreeMap<u32, Vec<(u32, &BackendEntry)>> = BTreeMap::new();
    for (id, backend) in &state.backends {
        backends_of.entry(backend.service_id).or_default().push((*id, backend));
    }
    for (frontend, entry) in &state.services {
        let (service, port) = label(entry.id);
        let multi_port = port_counts.get(&service).copied().unwrap_or(0) > 1;
        let view = views.entry(service).or_default();
        if !view.vip.contains(&frontend.vip) {
            view.vip.push(frontend.vip);
        }
        view.ports
            .push(format!("{port} {}/{}", frontend.port, frontend.protocol).trim().to_owned());
        for (id, backend) in backends_of.get(&entry.id).into_iter().flatten() {
            let prefix = if multi_port { format!("{port}: ") } else { String::new() };
            let mut line = format!("{prefix}{}", backend.addr);
            match (weights.get(id), entry.algorithm) {
                (Some(slots), Algorithm::Random) => line.push_str(&format!(" weight={slots}")),
                (Some(slots), Algorithm::Maglev) => line.push_str(&format!(" slots={slots}")),
                (None, _) if backend.state == BackendState::Active => line.push_str(" weight=0"),
                (None, _) => {}
            }
            if backend.state != BackendState::Active {
                line.push_str(&format!(" {}", backend.state));
            }
            view.backends.push(line);
        }
        let algorithm = match entry.algorithm {
            Algorithm::Random => "random".to_owned(),
            Algorithm::Maglev => {
                format!("maglev client={} tableSize={}", entry.maglev_client, entry.slot_count)
            }
        };
        push_unique(&mut view.load_balancing, algorithm);
        let affinity = match entry.affinity_timeout_secs {
            0 => "none".to_owned(),
            secs => format!("timeoutSeconds={secs} client={}", entry.affinity_client),
        };
        push_unique(&mut view.session_affinity, affinity);
    }
    for view in views.values_mut() {
        view.backends.sort();
    }
    views
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// The plan as text, Terraform style.
pub fn render_text(plan: &Plan) -> String {
    let mut out = String::new();
    let revision = plan
        .context
        .revision
        .as_deref()
        .map_or("no commit (a plain directory)".to_owned(), |r| format!("commit {r}"));
    let _ = writeln!(out, "Source: {} at {revision}", plan.context.source);
    if plan.context.against {
        let base = plan.context.live_revision.as_deref().unwrap_or("(base)");
        let _ = writeln!(out, "Against: commit {base} (no data plane involved)");
    } else if plan.context.install {
        let _ = writeln!(
            out,
            "No data plane is installed at {}: apply will install it.",
            plan.context.pin_path
        );
    } else {
        let applied = plan.context.live_revision.as_deref().unwrap_or("nothing yet");
        let _ = writeln!(
            out,
            "Live: {} (generation {}, applied revision {applied})",
            plan.context.pin_path, plan.context.generation
        );
        if let Some(touched) = &plan.touched {
            let _ = writeln!(
                out,
                "Read: the live entries of the changed services only ({}); the rest is as \
                 that apply recorded it (`--refresh` reads every entry)",
                touched.services.len() + touched.slots.len() + touched.backends.len()
            );
        }
    }
    if !plan.desired.health_excluded.is_empty() {
        let list: Vec<String> =
            plan.desired.health_excluded.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "Health exclusions (failing their health checks, taken out by the daemon; not \
             drift): {}",
            list.join(", ")
        );
    }
    if plan.is_drift() {
        let _ = writeln!(
            out,
            "\nDrift: the live maps differ from what this commit applied (edited outside \
             reconciler); apply restores them."
        );
    }
    if plan.services.is_empty() {
        let _ = writeln!(out, "\nNo changes. The live state matches the configuration.");
        if plan.map_writes > 0 {
            let _ = writeln!(out, "Apply will record the new revision only.");
        }
        return out;
    }
    for service in &plan.services {
        let (verb, sign) = match service.action {
            Action::Create => ("will be created", "+"),
            Action::Update => ("will be updated in place", "~"),
            Action::Destroy => ("will be destroyed", "-"),
        };
        let _ = writeln!(out, "\n  # service \"{}\" {verb}", service.name);
        let _ = writeln!(out, "  {sign} service \"{}\" {{", service.name);
        render_fields(&mut out, service.before.as_ref(), service.after.as_ref());
        let _ = writeln!(out, "    }}");
    }
    let s = plan.summary;
    let _ = writeln!(
        out,
        "\nPlan: {} to add, {} to change, {} to destroy.",
        s.add, s.change, s.destroy
    );
    if plan.destroys_everything() {
        let _ = writeln!(
            out,
            "Warning: this plan destroys every service and defines none; apply refuses it \
             without --allow-destroy-all."
        );
    }
    let _ = writeln!(
        out,
        "Apply will change {} map entries in {} map writes.",
        plan.entry_changes, plan.map_writes
    );
    out
}

fn render_fields(out: &mut String, before: Option<&ServiceView>, after: Option<&ServiceView>) {
    let empty = ServiceView::default();
    let (old, new) = (before.unwrap_or(&empty), after.unwrap_or(&empty));
    let vip = |v: &ServiceView| v.vip.iter().map(ToString::to_string).collect::<Vec<_>>();
    let (old_vip, new_vip) = (vip(old), vip(new));
    let mut fields: Vec<(&str, &[String], &[String])> = vec![("vip", &old_vip, &new_vip)];
    for ((name, a), (_, b)) in old.fields().into_iter().zip(new.fields()) {
        fields.push((name, a, b));
    }
    for (name, a, b) in fields {
        let sign = match (a.is_empty(), b.is_empty()) {
            (true, true) => continue,
            (true, false) => "+",
            (false, true) => "-",
            _ if a == b => " ",
            _ => "~",
        };
        let pad = " ".repeat(15usize.saturating_sub(name.len()));
        match (a, b) {
            // One value on each side: `name = old -> new`, or just the value.
            ([x], [y]) if x == y => {
                let _ = writeln!(out, "      {sign} {name}{pad} = {x}");
            }
            ([x], [y]) => {
                let _ = writeln!(out, "      {sign} {name}{pad} = {x} -> {y}");
            }
            ([], [x]) | ([x], []) => {
                let _ = writeln!(out, "      {sign} {name}{pad} = {x}");
            }
            _ => {
                let _ = writeln!(out, "      {sign} {name}{pad} = [");
                for (tag, line) in diff_lines(a, b) {
                    let _ = writeln!(out, "          {tag} {line}");
                }
                let _ = writeln!(out, "        ]");
            }
        }
    }
}

/// The lines of `a` and `b` tagged ` ` (in both), `-` (only in `a`) or `+` (only in `b`).
///
/// The long lists of a plan (backends) are sorted and their lines distinct: two such lists
/// diff exactly by one merge, in linear time. Other lists go to Myers, whose time grows with
/// the square of the lists' length when they share little, so it gets a deadline, after
/// which it settles for a coarser (still correct) diff.
fn diff_lines<'a>(a: &'a [String], b: &'a [String]) -> Vec<(&'static str, &'a String)> {
    let mut lines = Vec::with_capacity(a.len().max(b.len()));
    let strictly_sorted = |list: &[String]| list.windows(2).all(|pair| pair[0] < pair[1]);
    if strictly_sorted(a) && strictly_sorted(b) {
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x == y => {
                    lines.push((" ", x));
                    (i, j) = (i + 1, j + 1);
                }
                (Some(x), Some(y)) if x < y => {
                    lines.push(("-", x));
                    i += 1;
                }
                (Some(x), None) => {
                    lines.push(("-", x));
                    i += 1;
                }
                (_, Some(y)) => {
                    lines.push(("+", y));
                    j += 1;
                }
                (None, None) => break,
            }
        }
        return lines;
    }
    let deadline = Instant::now() + Duration::from_millis(500);
    for op in capture_diff_slices_deadline(DiffAlgorithm::Myers, a, b, Some(deadline)) {
        let (old, new) = (op.old_range(), op.new_range());
        match op {
            DiffOp::Equal { .. } => lines.extend(a[old].iter().map(|line| (" ", line))),
            _ => {
                lines.extend(a[old].iter().map(|line| ("-", line)));
                lines.extend(b[new].iter().map(|line| ("+", line)));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let context = PlanContext {
            health_changed: false,
            revision: Some("abc".into()),
            source: "test".into(),
            pin_path: "/sys/fs/bpf/x".into(),
            install: true,
            generation: 0,
            live_revision: None,
            against: false,
        };
        make_plan(context, &MapState::default(), MapState::default())
    }

    #[test]
    fn long_lists_diff_in_linear_time_and_short_ones_minimally() {
        let lines = |prefix: &str, n: usize| -> Vec<String> {
            (0..n).map(|i| format!("{prefix}{i:06}")).collect()
        };
        // Nothing shared: Myers would take seconds on 2 x 100 000 lines.
        let (a, b) = (lines("a", 100_000), lines("b", 100_000));
        let diff = diff_lines(&a, &b);
        assert_eq!(diff.len(), 200_000);
        assert!(diff[..100_000].iter().all(|(tag, _)| *tag == "-"));
        // One line added among many: everything else is kept.
        let mut c = a.clone();
        c.insert(500, "a000499x".into());
        let diff = diff_lines(&a, &c);
        assert_eq!(
            diff.into_iter().filter(|(tag, _)| *tag != " ").collect::<Vec<_>>(),
            [("+", &c[500])]
        );
        // Unsorted lists: Myers.
        let (x, y) = (vec!["b".to_owned(), "a".to_owned()], vec!["b".to_owned(), "c".to_owned()]);
        assert_eq!(diff_lines(&x, &y), [(" ", &x[0]), ("-", &x[1]), ("+", &y[1])]);
    }

    #[test]
    fn a_saved_plan_round_trips_and_any_edit_is_refused() {
        let saved = to_saved(&plan()).unwrap();
        assert_eq!(from_saved(&saved).unwrap(), plan());
        let edited = saved.replace("/sys/fs/bpf/x", "/sys/fs/bpf/y");
        assert!(matches!(from_saved(&edited), Err(SavedPlanError::Mismatch)));
        let unsigned = serde_json::to_string(&plan()).unwrap();
        assert!(matches!(from_saved(&unsigned), Err(SavedPlanError::NoChecksum)));
        assert!(matches!(from_saved(&saved[..saved.len() / 2]), Err(SavedPlanError::NotJson(_))));
        assert!(matches!(from_saved("[1]"), Err(SavedPlanError::NoChecksum)));
    }
}
