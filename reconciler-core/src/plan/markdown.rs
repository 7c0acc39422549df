//! A plan as Markdown for a pull request's comment: what was compared, the warnings first,
//! the summary line, then one collapsible block per service with its diff. GitHub refuses a
//! comment over [`COMMENT_LIMIT`] characters, so a long plan is shortened per service (each
//! block keeps its first lines and says how many it left out), never cut mid-block.
use std::fmt::Write as _;

use crate::validate::Diagnostic;

use super::{
    make::{Plan, ServicePlan},
    render::{
        base_errors_heading, comparison_line, field_lines, fields_of, header, summary_line,
        FieldLine,
    },
};

/// GitHub's limit on a comment's body, in characters.
pub const COMMENT_LIMIT: usize = 65_536;

/// The first line of every plan comment: what a workflow looks for to update its comment
/// instead of adding one per push.
pub const MARKER: &str = "<!-- reconciler plan -->";

/// Of a revision's errors, the first this many are listed (each a line of at most a few
/// hundred characters: well within the limit).
const ERRORS_SHOWN: usize = 50;

/// The plan as Markdown of at most `limit` characters (as bytes: never fewer).
pub fn render_markdown(plan: &Plan, limit: usize) -> String {
    let head = head_of(plan);
    let blocks: Vec<Block> = plan.services.iter().map(Block::of).collect();
    let budget = limit.saturating_sub(head.len() + FOOTER_ROOM);
    let fits = |cap: usize| blocks.iter().map(|b| b.rendered(cap).len()).sum::<usize>() <= budget;
    let longest = blocks.iter().map(|b| b.lines.len()).max().unwrap_or(0);
    // The most lines each block may keep: the largest cap that fits (fewer lines, less text).
    let cap = match fits(longest) {
        true => longest,
        false => {
            let (mut low, mut high) = (0, longest);
            while low < high {
                let middle = (low + high).div_ceil(2);
                if fits(middle) {
                    low = middle
                } else {
                    high = middle - 1
                }
            }
            low
        }
    };
    let mut out = head;
    let mut left_out = 0;
    for block in &blocks {
        let text = block.rendered(cap);
        if out.len() + text.len() + FOOTER_ROOM > limit {
            left_out += 1;
            continue;
        }
        out.push_str(&text);
    }
    if left_out > 0 {
        let _ = writeln!(
            out,
            "\n_{left_out} more service(s) not shown (the comment's size limit); \
             `reconciler plan` prints the whole plan._"
        );
    }
    out
}

/// The comment for definitions that could not be planned: `whose` they are and their
/// first errors.
pub fn render_markdown_invalid(whose: &str, errors: &[Diagnostic]) -> String {
    let mut out = format!("{MARKER}\n### reconciler plan\n\n");
    let _ = writeln!(
        out,
        "> [!CAUTION]\n> No plan: {} error(s) in {}.\n\n```text",
        errors.len(),
        escaped(whose)
    );
    write_errors(&mut out, errors);
    let _ = writeln!(out, "```");
    out
}

/// The first [`ERRORS_SHOWN`] of `errors`, a line each, and how many more there are.
fn write_errors(out: &mut String, errors: &[Diagnostic]) {
    for error in errors.iter().take(ERRORS_SHOWN) {
        let _ = writeln!(out, "{error}");
    }
    let more = errors.len().saturating_sub(ERRORS_SHOWN);
    if more > 0 {
        let _ = writeln!(out, "… and {more} more");
    }
}

/// Room kept for the line that says how many services were left out.
const FOOTER_ROOM: usize = 160;

/// The marker, what was compared, the warnings, the base's errors and the summary line.
fn head_of(plan: &Plan) -> String {
    let mut out = format!("{MARKER}\n### reconciler plan\n\n");
    let context = &plan.context;
    let revision = context.revision.as_deref().unwrap_or("a plain directory");
    // In a code span nothing is markup: the text as it is.
    let _ = writeln!(out, "Source: `{}` at `{revision}`  ", context.source.replace('`', "'"));
    if let Some(against) = &context.against {
        let _ = writeln!(out, "{}", escaped(&comparison_line(against)));
    }
    // Bounded like the errors: thousands of renames must not push the services out.
    for warning in plan.warnings.iter().take(ERRORS_SHOWN) {
        let _ = writeln!(out, "\n> [!WARNING]\n> {}", escaped(&warning.message));
    }
    let more = plan.warnings.len().saturating_sub(ERRORS_SHOWN);
    if more > 0 {
        let _ = writeln!(
            out,
            "\n> [!WARNING]\n> … and {more} more warning(s): `reconciler plan` lists them all"
        );
    }
    if let Some(against) = context.against.as_ref().filter(|a| !a.base_errors.is_empty()) {
        let _ = writeln!(out, "\n> [!WARNING]\n> {}\n", escaped(&base_errors_heading(against)));
        let _ = writeln!(out, "<details><summary>The base revision's errors</summary>\n\n```text");
        write_errors(&mut out, &against.base_errors);
        let _ = writeln!(out, "```\n\n</details>");
    }
    match plan.services.is_empty() {
        true => {
            let _ = writeln!(out, "\n**No changes.** {}", summary_line(plan));
        }
        false => {
            let _ = writeln!(out, "\n**{}**\n", summary_line(plan));
        }
    }
    out
}

/// One service: its header and its diff lines.
struct Block {
    summary: String,
    lines: Vec<String>,
}

impl Block {
    fn of(service: &ServicePlan) -> Block {
        let (verb, sign) = header(service.action);
        let summary = format!("<code>{sign} {}</code> {verb}", escaped(&service.name));
        let (old, new) = fields_of(service);
        let mut lines = Vec::new();
        let pad = |name: &str| " ".repeat(15usize.saturating_sub(name.len()));
        for line in field_lines(&old, &new) {
            match line {
                FieldLine::Value { sign, name, value } => {
                    lines.push(format!("{sign} {name}{} = {value}", pad(name)))
                }
                FieldLine::Changed { name, old, new } => {
                    lines.push(format!("- {name}{} = {old}", pad(name)));
                    lines.push(format!("+ {name}{} = {new}", pad(name)));
                }
                FieldLine::List { sign, name, items } => {
                    let open = if sign == '~' { ' ' } else { sign };
                    lines.push(format!("{open} {name}{} = [", pad(name)));
                    lines.extend(items.into_iter().map(|(tag, item)| format!("{tag}     {item}")));
                    lines.push(format!("{open} ]"));
                }
            }
        }
        Block { summary, lines }
    }

    /// The block with at most `cap` of its lines, and how many it left out.
    fn rendered(&self, cap: usize) -> String {
        let mut out = format!("<details><summary>{}</summary>\n\n```diff\n", self.summary);
        for line in self.lines.iter().take(cap) {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("```\n");
        let left = self.lines.len().saturating_sub(cap);
        if left > 0 {
            let _ = writeln!(out, "\n_… {left} more line(s) of this service not shown_");
        }
        out.push_str("\n</details>\n");
        out
    }
}

/// Text with what Markdown or HTML would read as markup escaped.
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        plan::{make::PlanContext, make_plan},
        state::{BackendEntry, Frontend, MapState, Protocol, ServiceEntry},
    };

    /// A state of `services` services of `backends` backends each.
    fn state(services: u32, backends: u32, port: u16) -> MapState {
        named(services, backends, port, "service")
    }

    /// [`state`], the services named `{name}-N`.
    fn named(services: u32, backends: u32, port: u16, name: &str) -> MapState {
        let mut state = MapState::default();
        for s in 0..services {
            let vip = std::net::IpAddr::from([10, 96, (s / 250) as u8, (s % 250) as u8]);
            let frontend = Frontend { vip, port: 80, protocol: Protocol::Tcp };
            let entry = ServiceEntry {
                id: s + 1,
                slot_count: backends,
                algorithm: Default::default(),
                maglev_client: Default::default(),
                affinity_timeout_secs: 0,
                affinity_client: Default::default(),
            };
            state.services.insert(frontend, entry);
            state.names.insert(s + 1, format!("{name}-{s:05}/http"));
            for b in 0..backends {
                let id = s * backends + b + 1;
                let addr =
                    std::net::SocketAddr::from(([10, 1, (b / 250) as u8, (b % 250) as u8], port));
                state.backends.insert(
                    id,
                    BackendEntry { addr, service_id: s + 1, state: Default::default() },
                );
                state.slots.insert((s + 1, b), id);
            }
        }
        state
    }

    fn context() -> PlanContext {
        PlanContext {
            revision: Some("b".into()),
            source: "repo".into(),
            pin_path: String::new(),
            install: false,
            generation: 0,
            live_revision: Some("a".into()),
            against: None,
            health_changed: false,
            failover_held_back: Vec::new(),
            rollouts: Vec::new(),
            not_on_node: Vec::new(),
        }
    }

    #[test]
    fn a_long_plan_is_shortened_per_service_and_never_cut_mid_block() {
        // 300 services whose 200 backends all move: ~60 000 lines in full.
        let plan = make_plan(context(), &state(300, 200, 8080), state(300, 200, 8081));
        let full = render_markdown(&plan, usize::MAX);
        assert!(full.len() > 10 * COMMENT_LIMIT, "{}", full.len());
        let short = render_markdown(&plan, COMMENT_LIMIT);
        assert!(short.len() <= COMMENT_LIMIT, "{}", short.len());
        assert!(short.starts_with(MARKER));
        assert!(short.contains("**Plan: 0 to add, 300 to change, 0 to destroy.**"));
        // Every block is whole, and says what it left out.
        assert_eq!(short.matches("<details>").count(), short.matches("</details>").count());
        assert_eq!(short.matches("```diff").count(), 300, "every service keeps a block");
        assert!(short.contains(" more line(s) of this service not shown_"));
        // Too many services for a line each: whole blocks left out, counted.
        let plan = make_plan(context(), &state(3000, 2, 8080), state(3000, 2, 8081));
        let short = render_markdown(&plan, COMMENT_LIMIT);
        assert!(short.len() <= COMMENT_LIMIT, "{}", short.len());
        assert_eq!(short.matches("<details>").count(), short.matches("</details>").count());
        let shown = short.matches("```diff").count();
        assert!(short.contains(&format!("_{} more service(s) not shown", 3000 - shown)), "{shown}");
        // Thousands of warnings (renames): the first ones, counted, never past the limit.
        let plan = make_plan(context(), &state(3000, 2, 8080), named(3000, 2, 8080, "renamed"));
        assert_eq!(plan.warnings.len(), 3000);
        let short = render_markdown(&plan, COMMENT_LIMIT);
        assert!(short.len() <= COMMENT_LIMIT, "{}", short.len());
        assert!(short.contains("… and 2950 more warning(s)"), "{}", &short[..2000]);
    }
}
