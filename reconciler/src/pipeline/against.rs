//! `plan --against REV`: what a pull request would change, with no data plane. REV's
//! definitions need not be valid: its services that load are planned against, and its errors
//! go with the plan. The head's (merged into REV) must be, but for errors REV has too, which
//! are not the change's (a file it did not touch): their errors that REV lacks fail the plan.
use std::collections::BTreeSet;

use reconciler_core::{
    compile::compile,
    plan::{make_plan, rollout_notes, Comparison, Plan, PlanContext},
    source,
    state::MapState,
    validate::validate_what_loads,
};

use super::{session::desired_of, Desired, Error, Session};

/// The two sides of a pull request's plan.
pub struct Against {
    pub base: Desired,
    pub head: Desired,
    pub comparison: Comparison,
}

impl Session {
    /// The head (the session's ref) merged into `rev`, and `rev`; or where they conflict,
    /// the head and their merge base. An invalid head is an error; an invalid base is not.
    pub fn load_against(&self, rev: &str) -> Result<Against, Error> {
        let git = self.git()?;
        let compared = source::compared(git, rev)?;
        let source = self.source();
        let (located, base_errors) = validate_what_loads(&compared.before, self.policy());
        let (head_located, head_errors) = validate_what_loads(&compared.after, self.policy());
        let own: Vec<_> = head_errors.into_iter().filter(|e| !base_errors.contains(e)).collect();
        if !own.is_empty() {
            return Err(Error::Invalid { revision: compared.after.revision, diagnostics: own });
        }
        let head = desired_of(head_located, compared.after.revision, source, self.node());
        let base_source = format!("{} ({rev})", git.url);
        let base = desired_of(located, compared.before.revision, base_source, self.node());
        let merge_base =
            (compared.mode == source::CompareMode::MergeBase).then_some(compared.merge_base);
        let comparison = Comparison {
            mode: compared.mode,
            base_ref: rev.to_owned(),
            base: compared.base,
            head: compared.head,
            merge_base,
            base_errors,
        };
        Ok(Against { base, head, comparison })
    }
}

/// The plan between the two sides: the base compiled from nothing is the "live" side.
pub fn plan_between(against: &Against) -> Result<Plan, Error> {
    let (base, head) = (&against.base, &against.head);
    let base_state = compile(&base.services, &MapState::default(), &BTreeSet::new())?;
    let head_state = compile(&head.services, &base_state, &base_state.health_excluded)?;
    let context = PlanContext {
        revision: head.revision.clone(),
        source: head.source.clone(),
        pin_path: String::new(),
        install: false,
        generation: 0,
        live_revision: base.revision.clone(),
        against: Some(against.comparison.clone()),
        health_changed: false,
        failover_held_back: Vec::new(),
        rollouts: rollout_notes(&head.services, &base_state),
        not_on_node: head.elsewhere.clone(),
    };
    Ok(make_plan(context, &base_state, head_state))
}
