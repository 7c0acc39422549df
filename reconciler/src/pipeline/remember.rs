//! What the memo learns from a plan or an apply: the record of what both map sets hold, and
//! the parses the next diff needs.
use super::Tree;
use crate::{
    dataplane::ApplyReport,
    memo::{Memo, Record},
};
use reconciler_core::{plan::Plan, state::MapState};

/// What `memo` learns from `plan` (made from the definitions in `tree`) being applied with
/// `report`: the maps now hold its desired state (over the recorded one, for an incremental
/// plan).
pub(super) fn apply(memo: &mut Memo, tree: Option<&Tree>, plan: &Plan, report: &ApplyReport) {
    let record = memo.record.take();
    let (Some(tree), Some(revision)) = (tree, &plan.context.revision) else { return };
    let state = match (&plan.touched, record) {
        (None, _) => plan.desired.packed(),
        (Some(before), Some(record)) => record.state.replaced(before, &plan.desired),
        (Some(_), None) => return,
    };
    memo.remember(record_of(plan, tree, revision, report.generation, state), &tree.files);
}

/// What `memo` learns from a full `plan` (made from the definitions in `tree`) that is not
/// applied: when it found the maps holding its revision and nothing to change, they hold its
/// desired state.
pub(super) fn plan(memo: &mut Memo, tree: Option<&Tree>, plan: &Plan) {
    let (Some(tree), Some(revision)) = (tree, &plan.context.revision) else { return };
    if plan.touched.is_some()
        || plan.context.install
        || plan.entry_changes > 0
        || plan.context.live_revision.as_ref() != Some(revision)
    {
        memo.trim(&tree.files);
        return;
    }
    // Compared first: packing 220 000 entries only to find them recorded already is waste.
    let known = memo.record.as_ref().is_some_and(|r| {
        r.generation == plan.context.generation
            && &r.revision == revision
            && r.pin_path == plan.context.pin_path
            && r.source == tree.source
            && r.files == tree.files
            && r.state == plan.desired
    });
    if known {
        memo.trim(&tree.files);
    } else {
        let record =
            record_of(plan, tree, revision, plan.context.generation, plan.desired.packed());
        memo.remember(record, &tree.files);
    }
}

/// The record of the maps holding `state` at `generation`, from `plan` and `tree`.
fn record_of(plan: &Plan, tree: &Tree, revision: &str, generation: u64, state: MapState) -> Record {
    Record {
        pin_path: plan.context.pin_path.clone(),
        generation,
        revision: revision.to_owned(),
        source: tree.source.clone(),
        files: tree.files.clone(),
        state,
    }
}
