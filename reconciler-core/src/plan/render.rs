//! A plan as text, the way Terraform shows one: where it comes from, then each service with
//! its fields (`+` create, `~` update, `-` destroy), then the summary.
use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use similar::{capture_diff_slices_deadline, Algorithm as DiffAlgorithm, DiffOp};

use super::{
    make::{Action, Plan, ServicePlan},
    view::ServiceView,
};
use crate::state::Exclusion;

// Writing to a String cannot fail: the `fmt::Result`s of `writeln!` below are ignored.

/// The plan as text, Terraform style.
pub fn render_text(plan: &Plan) -> String {
    let mut out = String::new();
    render_source(&mut out, plan);
    render_notes(&mut out, plan);
    if plan.services.is_empty() {
        let _ = writeln!(out, "\nNo changes. The live state matches the configuration.");
        if plan.map_writes > 0 {
            let _ = writeln!(out, "Apply will record the new revision only.");
        }
        return out;
    }
    for service in &plan.services {
        render_service(&mut out, service);
    }
    render_summary(&mut out, plan);
    out
}

/// Where the desired state comes from, and what it is compared with.
fn render_source(out: &mut String, plan: &Plan) {
    let context = &plan.context;
    let revision = context
        .revision
        .as_deref()
        .map_or("no commit (a plain directory)".to_owned(), |r| format!("commit {r}"));
    let _ = writeln!(out, "Source: {} at {revision}", context.source);
    if context.against {
        let base = context.live_revision.as_deref().unwrap_or("(base)");
        let _ = writeln!(out, "Against: commit {base} (no data plane involved)");
    } else if context.install {
        let _ = writeln!(
            out,
            "No data plane is installed at {}: apply will install it.",
            context.pin_path
        );
    } else {
        let applied = context.live_revision.as_deref().unwrap_or("nothing yet");
        let _ = writeln!(
            out,
            "Live: {} (generation {}, applied revision {applied})",
            context.pin_path, context.generation
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
}

/// The health exclusions, and whether the live maps drifted.
fn render_notes(out: &mut String, plan: &Plan) {
    let listed = |pairs: Vec<&Exclusion>| -> String {
        pairs.iter().map(|(s, addr)| format!("{addr} ({s})")).collect::<Vec<_>>().join(", ")
    };
    let failing: Vec<&Exclusion> = plan.desired.failing_checks().collect();
    if !failing.is_empty() {
        let _ = writeln!(
            out,
            "Health exclusions (failing their health checks, taken out by the daemon; not \
             drift): {}",
            listed(failing)
        );
    }
    if !plan.desired.ramps.is_empty() {
        let ramps: Vec<String> = plan
            .desired
            .ramps
            .iter()
            .map(|((s, addr), permille)| format!("{addr} ({s}) at {}%", permille / 10))
            .collect();
        let _ = writeln!(
            out,
            "Slow start (joined lately, ramping up to their weight; the daemon's; not drift): {}",
            ramps.join(", ")
        );
    }
    if !plan.desired.ejected.is_empty() {
        let _ = writeln!(
            out,
            "Ejections (outlier detection: their clients' connects failed in a row; taken out \
             by the daemon for a time; not drift): {}",
            listed(plan.desired.ejected.iter().collect())
        );
    }
    if !plan.desired.topology.is_empty() {
        let each: Vec<String> =
            plan.desired.topology.iter().map(|(label, set)| format!("{label}: {set}")).collect();
        let _ = writeln!(out, "Topology (PreferZone): {}", each.join("; "));
    }
    if !plan.context.not_on_node.is_empty() {
        let _ = writeln!(
            out,
            "Not on this node (nodeSelector): {}",
            plan.context.not_on_node.join(", ")
        );
    }
    if !plan.context.rollouts.is_empty() {
        let _ = writeln!(
            out,
            "Rollouts (the daemon moves new connections step by step; `apply` here applies at \
             once):"
        );
        for rollout in &plan.context.rollouts {
            let _ = writeln!(out, "  {rollout}");
        }
    }
    if !plan.context.failover_held_back.is_empty() {
        let _ = writeln!(
            out,
            "Failover held back (every backend down; the fallback's would not fit the data \
             plane's capacity, so they keep their own, failing open): {}",
            plan.context.failover_held_back.join(", ")
        );
    }
    if plan.is_drift() {
        let _ = writeln!(
            out,
            "\nDrift: the live maps differ from what this commit applied (edited outside \
             reconciler); apply restores them."
        );
    }
}

/// One service's header and fields.
fn render_service(out: &mut String, service: &ServicePlan) {
    let (verb, sign) = match service.action {
        Action::Create => ("will be created", "+"),
        Action::Update => ("will be updated in place", "~"),
        Action::Destroy => ("will be destroyed", "-"),
    };
    let _ = writeln!(out, "\n  # service \"{}\" {verb}", service.name);
    let _ = writeln!(out, "  {sign} service \"{}\" {{", service.name);
    render_fields(out, service.before.as_ref(), service.after.as_ref());
    let _ = writeln!(out, "    }}");
}

/// The counts, the warning about destroying everything, and the writes apply makes.
fn render_summary(out: &mut String, plan: &Plan) {
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
}

/// The fields of a service before and after, each marked as kept, added, removed or
/// changed; a list of several values as a diff of its lines.
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
}
