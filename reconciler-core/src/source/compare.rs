//! The two sides of a pull request's review (`plan --against REV`): REV, and what merging
//! the head into it would make of it; or, where that merge conflicts, the merge base and the
//! head, as `git diff REV...HEAD` compares. Merged in memory by libgit2, as `git merge-tree`
//! does: no working copy, and nothing written but the merged tree's objects into the cache.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use git2::{MergeOptions, Oid, Repository};
use serde::{Deserialize, Serialize};

use super::{
    cache::{with_cache, Cache},
    error::SourceError,
    snapshot::Snapshot,
    spec::GitSpec,
};

/// What a comparison compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareMode {
    /// REV against the merge of the head into REV: what merging would change.
    Merge,
    /// The merge conflicts: the merge base against the head.
    MergeBase,
}

/// The two snapshots to plan between, and where they came from.
#[derive(Debug)]
pub struct Compared {
    pub mode: CompareMode,
    /// The "before" side: REV (`Merge`) or the merge base (`MergeBase`).
    pub before: Snapshot,
    /// The "after" side: the merge's result (named by the head's commit) or the head.
    pub after: Snapshot,
    /// REV's commit, the head's, and the commit both descend from.
    pub base: String,
    pub head: String,
    pub merge_base: String,
}

/// The snapshots `plan --against rev` plans between, for the head `spec` names (its
/// `reference`, or the remote's HEAD); fetched first, and the head's signature checked as
/// every load does.
pub fn compared(spec: &GitSpec, rev: &str) -> Result<Compared, SourceError> {
    with_cache(spec, |cache| {
        cache.fetch(spec)?;
        let head = cache.resolve(spec.reference.as_deref())?;
        if let Some(verify) = &spec.verify {
            cache.verify(head, verify)?;
        }
        let base = cache.resolve(Some(rev))?;
        let no_merge_base = |_| SourceError::NoMergeBase {
            url: spec.url.clone(),
            base: base.to_string(),
            head: head.to_string(),
        };
        let merge_base = cache.repo.merge_base(base, head).map_err(no_merge_base)?;
        let subdir = spec.subdir.as_deref();
        let snapshot = |commit: Oid| cache.snapshot(commit, subdir, &|_| false);
        let (mode, before, after) = match merge_base {
            // Nothing on the head that REV lacks: the merge is REV (read once).
            m if m == head => {
                let same = snapshot(base)?;
                (CompareMode::Merge, same.clone(), same)
            }
            // Nothing on REV since the head branched: the merge is the head.
            m if m == base => (CompareMode::Merge, snapshot(base)?, snapshot(head)?),
            _ => match merged_tree(cache, base, head)? {
                Some(tree) => {
                    let after =
                        cache.snapshot_of_tree(tree, &head.to_string(), subdir, &|_| false)?;
                    (CompareMode::Merge, snapshot(base)?, after)
                }
                None => (CompareMode::MergeBase, snapshot(merge_base)?, snapshot(head)?),
            },
        };
        Ok(Compared {
            mode,
            before,
            after,
            base: base.to_string(),
            head: head.to_string(),
            merge_base: merge_base.to_string(),
        })
    })
}

/// The tree of `head` merged into `base` (its objects written into the cache), or `None`
/// where the merge conflicts.
fn merged_tree(cache: &Cache, base: Oid, head: Oid) -> Result<Option<Oid>, SourceError> {
    let commit = |id| cache.repo.find_commit(id).map_err(cache.cache_error());
    let (ours, theirs) = (commit(base)?, commit(head)?);
    let merge = cache.repo.merge_commits(&ours, &theirs, Some(&MergeOptions::new()));
    let mut index = merge.map_err(cache.cache_error())?;
    if index.has_conflicts() {
        return Ok(None);
    }
    Ok(Some(index.write_tree_to(&cache.repo).map_err(cache.cache_error())?))
}

/// The files of the repository that holds `dir` that differ from the merge base of `rev` and
/// HEAD, in the working tree (committed, staged, changed or new): what a pull request of this
/// working tree into `rev` would change; absolute paths.
pub fn changed_since(dir: &Path, rev: &str) -> Result<BTreeSet<PathBuf>, SourceError> {
    let error = |error: git2::Error| SourceError::Repository { path: dir.to_owned(), error };
    let repo = Repository::discover(dir).map_err(error)?;
    let base = repo.revparse_single(rev).and_then(|o| o.peel_to_commit()).map_err(error)?;
    let head = repo.head().and_then(|h| h.peel_to_commit()).map_err(error)?;
    let merge_base = repo.merge_base(base.id(), head.id()).map_err(error)?;
    let tree = repo.find_commit(merge_base).and_then(|c| c.tree()).map_err(error)?;
    // New files not added yet count too: what `validate` reads is the working tree.
    let mut options = git2::DiffOptions::new();
    options.include_untracked(true).recurse_untracked_dirs(true);
    let diff = repo.diff_tree_to_workdir_with_index(Some(&tree), Some(&mut options));
    let diff = diff.map_err(error)?;
    // Canonical, as the caller compares the paths it reads with these.
    let root = repo.workdir().unwrap_or(dir);
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    let mut changed = BTreeSet::new();
    for delta in diff.deltas() {
        changed.extend(delta.new_file().path().map(|p| root.join(p)));
        changed.extend(delta.old_file().path().map(|p| root.join(p)));
    }
    Ok(changed)
}
