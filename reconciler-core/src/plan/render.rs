//! A plan as text, the way Terraform shows one: where it comes from, what a reviewer must
//! not miss, then each service with its fields (`+` create, `~` update, `-` destroy), then
//! the summary.
use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use similar::{capture_diff_slices_deadline, Algorithm as DiffAlgorithm, DiffOp};

use super::{
    make::{Action, Comparison, Plan, ServicePlan},
    paint::Paint,
    view::{Fields, ServiceView},
};
use crate::{source::CompareMode, state::Exclusion};

// Writing to a String cannot fail: the `fmt::Result`s of `writeln!` below are ignored.

/// The plan as text, Terraform style; coloured with `paint`.
pub fn render_text(plan: &Plan, paint: Paint) -> String {
    let mut out = String::new();
    render_source(&mut out, plan);
    if let Some(against) = &plan.context.against {
        render_base_errors(&mut out, against, paint);
    }
    for warning in &plan.warnings {
        let _ = writeln!(out, "{} {}", paint.error("Warning:"), warning.message);
    }
    render_notes(&mut out, plan);
    if plan.services.is_empty() {
        let _ = match &plan.context.against {
            Some(against) => writeln!(out, "\nNo changes: {}.", no_change(against)),
            None => writeln!(out, "\nNo changes. The live state matches the configuration."),
        };
        if plan.map_writes > 0 && plan.context.against.is_none() {
            let _ = writeln!(out, "Apply will record the new revision only.");
        }
        return out;
    }
    for service in &plan.services {
        render_service(&mut out, service, paint);
    }
    render_summary(&mut out, plan);
    out
}

/// What a comparison without a change means.
fn no_change(against: &Comparison) -> String {
    match against.mode {
        CompareMode::Merge => format!("merging it into {} changes no service", against.base_ref),
        CompareMode::MergeBase => "it changes no service of the merge base".to_owned(),
    }
}

/// Where the desired state comes from, and what it is compared with.
fn render_source(out: &mut String, plan: &Plan) {
    let context = &plan.context;
    let revision = context
        .revision
        .as_deref()
        .map_or("no commit (a plain directory)".to_owned(), |r| format!("commit {r}"));
    let _ = writeln!(out, "Source: {} at {revision}", context.source);
    if let Some(against) = &context.against {
        let _ = writeln!(out, "{}", comparison_line(against));
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

/// What `plan --against` compared, in one line.
pub(super) fn comparison_line(against: &Comparison) -> String {
    let base = match against.base.starts_with(&against.base_ref) {
        true => format!("commit {}", against.base),
        false => format!("{} (commit {})", against.base_ref, against.base),
    };
    match (against.mode, &against.merge_base) {
        (CompareMode::Merge, _) => format!(
            "Against: {base}; planned: what merging commit {} into it would change",
            against.head
        ),
        (CompareMode::MergeBase, merge_base) => format!(
            "Against: {base}; merging commit {} into it conflicts, so planned: what it changes \
             since the merge base (commit {}), as `git diff {}...{}` shows",
            against.head,
            merge_base.as_deref().unwrap_or("?"),
            against.base_ref,
            against.head
        ),
    }
}

/// The base revision's errors: a warning, not the change's.
fn render_base_errors(out: &mut String, against: &Comparison, paint: Paint) {
    if against.base_errors.is_empty() {
        return;
    }
    let _ = writeln!(out, "{} {}", paint.error("Warning:"), base_errors_heading(against));
    for error in &against.base_errors {
        let _ = writeln!(out, "  {error}");
    }
}

/// The heading of the base revision's errors.
pub(super) fn base_errors_heading(against: &Comparison) -> String {
    let base = match (against.mode, &against.merge_base) {
        (CompareMode::MergeBase, Some(merge_base)) => {
            format!("the merge base (commit {merge_base})")
        }
        _ => format!("the base revision {} (commit {})", against.base_ref, against.base),
    };
    format!(
        "{} error(s) in the definitions of {base}, not of this change; planned against its \
         services that load:",
        against.base_errors.len()
    )
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
fn render_service(out: &mut String, service: &ServicePlan, paint: Paint) {
    let (verb, sign) = header(service.action);
    let _ = writeln!(out, "\n  # service \"{}\" {verb}", service.name);
    let _ = writeln!(out, "  {} service \"{}\" {{", paint.sign(sign), service.name);
    let (old, new) = fields_of(service);
    render_fields(out, &field_lines(&old, &new), paint);
    let _ = writeln!(out, "    }}");
}

/// What happens to a service, in words and as a sign.
pub(super) fn header(action: Action) -> (&'static str, char) {
    match action {
        Action::Create => ("will be created", '+'),
        Action::Update => ("will be updated in place", '~'),
        Action::Destroy => ("will be destroyed", '-'),
    }
}

/// A service's fields before and after, as text lines (a side it lacks: none).
pub(super) fn fields_of(service: &ServicePlan) -> (Fields, Fields) {
    let empty = ServiceView::default();
    let old = service.before.as_ref().unwrap_or(&empty).fields();
    let new = service.after.as_ref().unwrap_or(&empty).fields();
    (old, new)
}

/// The counts, the warning about destroying everything, and the writes apply makes.
fn render_summary(out: &mut String, plan: &Plan) {
    let _ = writeln!(out, "\n{}", summary_line(plan));
    if plan.destroys_everything() {
        let _ = writeln!(
            out,
            "Apply refuses a plan that destroys every service without --allow-destroy-all."
        );
    }
    if plan.context.against.is_none() {
        let _ = writeln!(
            out,
            "Apply will change {} map entries in {} map writes.",
            plan.entry_changes, plan.map_writes
        );
    }
}

/// `Plan: X to add, Y to change, Z to destroy.`
pub(super) fn summary_line(plan: &Plan) -> String {
    let s = plan.summary;
    format!("Plan: {} to add, {} to change, {} to destroy.", s.add, s.change, s.destroy)
}

/// One line of a service's fields in a plan.
pub(super) enum FieldLine<'a> {
    /// `sign name = value` (` ` kept, `+` added, `-` removed).
    Value { sign: char, name: &'static str, value: &'a str },
    /// `~ name = old -> new`.
    Changed { name: &'static str, old: &'a str, new: &'a str },
    /// `sign name = [`, then its items and a `]`.
    List { sign: char, name: &'static str, items: Vec<(char, &'a str)> },
}

/// The fields of a service before and after, each marked as kept, added, removed or
/// changed; a list of several values as a diff of its lines.
pub(super) fn field_lines<'a>(old: &'a Fields, new: &'a Fields) -> Vec<FieldLine<'a>> {
    let mut lines = Vec::new();
    for ((name, a), (_, b)) in old.iter().zip(new) {
        let sign = match (a.is_empty(), b.is_empty()) {
            (true, true) => continue,
            (true, false) => '+',
            (false, true) => '-',
            _ if a == b => ' ',
            _ => '~',
        };
        lines.push(match (a.as_slice(), b.as_slice()) {
            ([x], [y]) if x == y => FieldLine::Value { sign, name, value: x },
            ([x], [y]) => FieldLine::Changed { name, old: x, new: y },
            ([], [x]) | ([x], []) => FieldLine::Value { sign, name, value: x },
            _ => FieldLine::List { sign, name, items: diff_lines(a, b) },
        });
    }
    lines
}

/// A service's field lines as text, `indent` before each sign.
fn render_fields(out: &mut String, lines: &[FieldLine], paint: Paint) {
    let pad = |name: &str| " ".repeat(15usize.saturating_sub(name.len()));
    for line in lines {
        let _ = match line {
            FieldLine::Value { sign, name, value } => {
                writeln!(out, "      {} {name}{} = {value}", paint.sign(*sign), pad(name))
            }
            FieldLine::Changed { name, old, new } => {
                writeln!(out, "      {} {name}{} = {old} -> {new}", paint.sign('~'), pad(name))
            }
            FieldLine::List { sign, name, items } => {
                let _ = writeln!(out, "      {} {name}{} = [", paint.sign(*sign), pad(name));
                for (tag, item) in items {
                    let _ =
                        writeln!(out, "          {}", paint.line(*tag, &format!("{tag} {item}")));
                }
                writeln!(out, "        ]")
            }
        };
    }
}

/// The lines of `a` and `b` tagged ` ` (in both), `-` (only in `a`) or `+` (only in `b`).
///
/// The long lists of a plan (backends) are sorted and their lines distinct: two such lists
/// diff exactly by one merge, in linear time. Other lists go to Myers, whose time grows with
/// the square of the lists' length when they share little, so it gets a deadline, after
/// which it settles for a coarser (still correct) diff.
fn diff_lines<'a>(a: &'a [String], b: &'a [String]) -> Vec<(char, &'a str)> {
    let mut lines: Vec<(char, &'a str)> = Vec::with_capacity(a.len().max(b.len()));
    let strictly_sorted = |list: &[String]| list.windows(2).all(|pair| pair[0] < pair[1]);
    if strictly_sorted(a) && strictly_sorted(b) {
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x == y => {
                    lines.push((' ', x.as_str()));
                    (i, j) = (i + 1, j + 1);
                }
                (Some(x), Some(y)) if x < y => {
                    lines.push(('-', x.as_str()));
                    i += 1;
                }
                (Some(x), None) => {
                    lines.push(('-', x.as_str()));
                    i += 1;
                }
                (_, Some(y)) => {
                    lines.push(('+', y.as_str()));
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
            DiffOp::Equal { .. } => lines.extend(a[old].iter().map(|line| (' ', line.as_str()))),
            _ => {
                lines.extend(a[old].iter().map(|line| ('-', line.as_str())));
                lines.extend(b[new].iter().map(|line| ('+', line.as_str())));
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
        assert!(diff[..100_000].iter().all(|(tag, _)| *tag == '-'));
        // One line added among many: everything else is kept.
        let mut c = a.clone();
        c.insert(500, "a000499x".into());
        let diff = diff_lines(&a, &c);
        assert_eq!(
            diff.into_iter().filter(|(tag, _)| *tag != ' ').collect::<Vec<_>>(),
            [('+', c[500].as_str())]
        );
        // Unsorted lists: Myers.
        let (x, y) = (vec!["b".to_owned(), "a".to_owned()], vec!["b".to_owned(), "c".to_owned()]);
        assert_eq!(diff_lines(&x, &y), [(' ', "b"), ('-', "a"), ('+', "c")]);
    }
}
