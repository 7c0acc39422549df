//! The session: what one reconcile works with (where the definitions come from, the rules,
//! the data plane, the memo), and its loading half, which needs no data plane.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{describe, Desired, Error, Tree};
use crate::memo::Memo;
#[cfg(feature = "dataplane")]
use reconciler_core::capacity::Capacity;
use reconciler_core::{
    model::Service,
    selector::Node,
    source::{self, GitSpec, Snapshot, SourceSpec},
    validate::{validate, validate_reusing, Located, Policy},
};

/// One reconcile target: the definitions' source and rules, the data plane at `pin_path`,
/// and the memo the incremental path reuses (the CLI keeps it in a file between runs, the
/// daemon in memory).
pub struct Session {
    pub(super) spec: SourceSpec,
    pub(super) pin_path: PathBuf,
    policy: Policy,
    /// The node the definitions are for: only the services its labels select are planned
    /// (`None`: every service).
    node: Option<Node>,
    pub(super) memo: Memo,
    /// The capacity asked for (`dataplane.capacity`, `--capacity`): a first install's; an
    /// installed data plane must have it. `None`: the installed one, or the default.
    #[cfg(feature = "dataplane")]
    pub(super) capacity: Option<Capacity>,
}

impl Session {
    /// A session with an empty memo (every file is read and parsed).
    pub fn new(spec: SourceSpec, pin_path: impl Into<PathBuf>, policy: Policy) -> Session {
        Session {
            spec,
            pin_path: pin_path.into(),
            policy,
            node: None,
            memo: Memo::default(),
            #[cfg(feature = "dataplane")]
            capacity: None,
        }
    }

    /// The session, asking for `capacity` (see [`Session`]'s field).
    #[cfg(feature = "dataplane")]
    pub fn with_capacity(self, capacity: Option<Capacity>) -> Session {
        Session { capacity, ..self }
    }

    /// The session for `node` (see [`Session`]'s field).
    pub fn with_node(self, node: Option<Node>) -> Session {
        Session { node, ..self }
    }

    /// The node from now on (the daemon's labels after a reload); the memo's record is
    /// dropped, so the next plan reads every entry.
    pub fn set_node(&mut self, node: Option<Node>) {
        if node != self.node {
            self.node = node;
            self.memo.record = None;
        }
    }

    /// The session, reusing `memo` (parses by blob, the record of the maps).
    pub fn with_memo(self, memo: Memo) -> Session {
        Session { memo, ..self }
    }

    pub fn memo(&self) -> &Memo {
        &self.memo
    }

    /// The memo, for the next session; this one's is empty from now on.
    pub fn take_memo(&mut self) -> Memo {
        std::mem::take(&mut self.memo)
    }

    /// The rules from now on (the daemon adds the node's addresses at each run).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The data plane this session plans against and applies to.
    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// Where the definitions come from, for people.
    pub fn source(&self) -> String {
        describe(&self.spec)
    }

    /// Fetches the definitions, reading only the files whose blobs the memo has no parse of.
    pub fn fetch(&self) -> Result<Snapshot, source::SourceError> {
        self.fetcher()()
    }

    /// [`fetch`](Self::fetch), to run on another thread while this session goes on (the
    /// daemon applies health changes meanwhile). A blob the memo forgets before the snapshot
    /// is validated is read again then.
    pub fn fetcher(
        &self,
    ) -> impl FnOnce() -> Result<Snapshot, source::SourceError> + Send + 'static {
        let spec = self.spec.clone();
        let known: BTreeSet<String> = self.memo.parsed.keys().cloned().collect();
        move || source::fetch_reusing(&spec, &|blob| known.contains(blob))
    }

    /// Fetches and validates the definitions (see [`fetch`](Self::fetch) and
    /// [`validate`](Self::validate)).
    pub fn load(&mut self) -> Result<Desired, Error> {
        let snapshot = self.fetch()?;
        self.validate(snapshot)
    }

    /// Validates `snapshot`, which [`fetch`](Self::fetch) made, with the parses the memo
    /// holds, and adds the parses of the files read this time to it. The rules across files
    /// run over all of them.
    pub fn validate(&mut self, snapshot: Snapshot) -> Result<Desired, Error> {
        let located = match validate_reusing(&snapshot, &self.policy, &self.memo.parsed) {
            Ok(located) => located,
            Err(diagnostics) => return self.invalid(snapshot, diagnostics),
        };
        // What the files read this time parsed to, by blob, for the next run.
        let mut by_path: BTreeMap<&str, (&String, Vec<Arc<Service>>)> = snapshot
            .files
            .iter()
            .filter(|file| file.text.is_some())
            .filter_map(|file| Some((file.path.as_str(), (file.blob.as_ref()?, Vec::new()))))
            .collect();
        for l in &located {
            if let Some((_, services)) = by_path.get_mut(l.file.as_str()) {
                services.push(Arc::clone(&l.service));
            }
        }
        self.memo.changed |= !by_path.is_empty();
        let parsed = by_path.into_values().map(|(blob, services)| (blob.clone(), services));
        self.memo.parsed.extend(parsed);
        let services = located.into_iter().map(|l| l.service).collect();
        let (services, elsewhere) = on_node(services, self.node.as_ref());
        Ok(Desired {
            tree: Tree::of(&self.spec, &snapshot),
            revision: snapshot.revision,
            source: self.source(),
            services,
            elsewhere,
            zone: self.node.as_ref().and_then(|n| n.zone.clone()),
        })
    }

    /// A snapshot that failed validation: a reused file's services have no positions, so
    /// the report reads every file again.
    fn invalid(
        &self,
        snapshot: Snapshot,
        diagnostics: Vec<reconciler_core::validate::Diagnostic>,
    ) -> Result<Desired, Error> {
        if let (SourceSpec::Git(git), Some(revision)) = (&self.spec, &snapshot.revision) {
            if snapshot.files.iter().any(|file| file.text.is_none()) {
                let whole = source::snapshot_at(git, revision)?;
                return validated(whole, self.source(), &self.policy, self.node.as_ref());
            }
        }
        Err(Error::Invalid { revision: snapshot.revision, diagnostics })
    }

    /// Another revision of the repository, every file read, from the cache alone (the
    /// daemon's last good revision after a restart: what it plans health changes from, which
    /// must not wait on git).
    pub fn load_cached_at(&self, rev: &str) -> Result<Desired, Error> {
        let git = self.git()?;
        let source = format!("{} ({rev})", git.url);
        let snapshot = source::cached_snapshot_at(git, rev)?;
        validated(snapshot, source, &self.policy, self.node.as_ref())
    }

    /// The git source, or why a directory is none.
    pub(super) fn git(&self) -> Result<&GitSpec, Error> {
        match &self.spec {
            SourceSpec::Git(git) => Ok(git),
            SourceSpec::Dir(dir) => Err(Error::NotARepository { dir: dir.clone() }),
        }
    }

    pub(super) fn policy(&self) -> &Policy {
        &self.policy
    }

    pub(super) fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
}

/// Validates a fetched snapshot; `source` says where it came from, for people; the services
/// for `node`.
fn validated(
    snapshot: Snapshot,
    source: String,
    policy: &Policy,
    node: Option<&Node>,
) -> Result<Desired, Error> {
    match validate(&snapshot, policy) {
        Ok(located) => Ok(desired_of(located, snapshot.revision, source, node)),
        Err(diagnostics) => Err(Error::Invalid { revision: snapshot.revision, diagnostics }),
    }
}

/// The desired state of the valid services `located` of `revision`, for `node`.
pub(super) fn desired_of(
    located: Vec<Located>,
    revision: Option<String>,
    source: String,
    node: Option<&Node>,
) -> Desired {
    let services = located.into_iter().map(|l| l.service).collect();
    let (services, elsewhere) = on_node(services, node);
    let zone = node.and_then(|n| n.zone.clone());
    Desired { revision, source, services, elsewhere, zone, tree: None }
}

/// Of `services`, those on `node` (all without one), and the names of the others.
fn on_node(services: Vec<Arc<Service>>, node: Option<&Node>) -> (Vec<Arc<Service>>, Vec<String>) {
    let Some(node) = node else { return (services, Vec::new()) };
    let (on, off): (Vec<_>, Vec<_>) = services.into_iter().partition(|service| {
        service.spec.node_selector.as_ref().is_none_or(|s| s.selects(&node.labels))
    });
    (on, off.into_iter().map(|s| s.metadata.name.clone()).collect())
}
