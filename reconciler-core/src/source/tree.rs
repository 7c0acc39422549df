//! Reading a snapshot from a commit's tree in the cache, never from a working copy.
use std::path::{Component, Path};

use git2::{FileMode, ObjectType, Oid, Tree};

use super::{
    cache::Cache,
    collect::{is_yaml, Collector, LINK_NOT_FOLLOWED},
    error::SourceError,
    snapshot::Snapshot,
};
use crate::limits::MAX_SOURCE_BYTES;

impl Cache {
    pub(super) fn snapshot(
        &self,
        commit: Oid,
        subdir: Option<&Path>,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<Snapshot, SourceError> {
        // The commit's size was checked when it was resolved (`Cache::peel`).
        let root = self.repo.find_commit(commit).map_err(self.cache_error())?.tree_id();
        self.snapshot_of_tree(root, &commit.to_string(), subdir, known)
    }

    /// The snapshot of tree `root`, the files of `revision` (a commit, or a merge's result,
    /// named by the commit merged).
    pub(super) fn snapshot_of_tree(
        &self,
        root: Oid,
        revision: &str,
        subdir: Option<&Path>,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<Snapshot, SourceError> {
        let revision = revision.to_owned();
        let root = self.tree(root, &revision)?;
        let Some(subdir) = subdir else {
            return self.files(root, "", &revision, known);
        };
        let not_found = || SourceError::SubdirNotFound {
            subdir: subdir.to_owned(),
            revision: revision.clone(),
        };
        // Spelled as git spells paths, whatever the spec's spelling ("./services/").
        let mut parts = Vec::new();
        for component in subdir.components() {
            match component {
                Component::Normal(name) => parts.push(name.to_string_lossy()),
                Component::CurDir => {}
                // `..` or `/` never names a directory of the tree.
                _ => return Err(not_found()),
            }
        }
        let prefix = parts.join("/");
        if prefix.is_empty() {
            return self.files(root, "", &revision, known);
        }
        let entry = root.get_path(Path::new(&prefix)).map_err(|_| not_found())?;
        if entry.kind() != Some(ObjectType::Tree) {
            return Err(not_found());
        }
        let tree = self.tree(entry.id(), &revision)?;
        self.files(tree, &prefix, &revision, known)
    }

    /// Tree `id` of `revision`, refused unread if its header says it is larger than all the
    /// definitions a revision may hold ([`MAX_SOURCE_BYTES`]).
    fn tree(&self, id: Oid, revision: &str) -> Result<Tree<'_>, SourceError> {
        let odb = self.repo.odb().map_err(self.cache_error())?;
        let (size, _) = odb.read_header(id).map_err(self.cache_error())?;
        if size as u64 > MAX_SOURCE_BYTES {
            let (revision, what) = (revision.to_owned(), "a tree object");
            return Err(SourceError::ObjectTooLarge {
                revision,
                what,
                size,
                max: MAX_SOURCE_BYTES as usize,
            });
        }
        self.repo.find_tree(id).map_err(self.cache_error())
    }

    /// Every definition file under `tree`, without recursion (a hostile tree can be deep).
    fn files(
        &self,
        tree: Tree,
        prefix: &str,
        revision: &str,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<Snapshot, SourceError> {
        let mut collector = Collector::default();
        let odb = self.repo.odb().map_err(self.cache_error())?;
        let mut pending = vec![(tree, prefix.to_owned())];
        while let Some((tree, prefix)) = pending.pop() {
            for entry in tree.iter() {
                let name = String::from_utf8_lossy(entry.name_bytes());
                let path =
                    if prefix.is_empty() { name.into_owned() } else { format!("{prefix}/{name}") };
                match entry.kind() {
                    Some(ObjectType::Tree) => {
                        pending.push((self.tree(entry.id(), revision)?, path));
                    }
                    Some(ObjectType::Blob) if is_yaml(&path) => {
                        // A link's blob is its target's name; skipping it would silently drop
                        // services.
                        if entry.filemode() == i32::from(FileMode::Link) {
                            collector.problem(&path, LINK_NOT_FOLLOWED);
                            continue;
                        }
                        // The header gives the size without loading the blob.
                        let (size, _) = odb.read_header(entry.id()).map_err(self.cache_error())?;
                        if collector.admit(&path, size as u64) {
                            let id = entry.id().to_string();
                            if known(&id) {
                                collector.push_reused(path, id);
                            } else {
                                let blob =
                                    self.repo.find_blob(entry.id()).map_err(self.cache_error())?;
                                collector.push(path, blob.content().to_vec(), Some(id));
                            }
                        }
                    }
                    // Other files, and submodules (commits of other repositories).
                    _ => {}
                }
            }
        }
        Ok(collector.finish(Some(revision.to_owned())))
    }
}
