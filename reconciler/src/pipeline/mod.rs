//! The reconcile pipeline, in one place: a [`Session`] loads the definitions (source ->
//! validate, into [`Desired`]), plans them against the live maps (read -> compile -> diff ->
//! plan) and applies the plan, remembering what the incremental path reuses next time.
//! `reconciler plan`, `reconciler apply` and the daemon load, plan and apply only through it.
//!
//! - `session`: the session and its loading half (pure; the validate-only build has it);
//! - `live`: planning against the live maps and applying (the `dataplane` feature);
//! - `incremental`: the plan from the memo's record and the changed services' entries;
//! - `remember`: what the memo learns from a plan or an apply;
//! - `against`: the plan of a pull request (`plan --against`), with no data plane.
use std::{collections::BTreeMap, path::Path, sync::Arc};

use reconciler_core::{
    compile::CompileError,
    model::Service,
    source::{Snapshot, SourceError, SourceSpec},
    validate::Diagnostic,
};

mod against;
#[cfg(feature = "dataplane")]
mod incremental;
#[cfg(feature = "dataplane")]
mod live;
#[cfg(feature = "dataplane")]
mod remember;
mod session;

pub use against::{plan_between, Against};
#[cfg(feature = "dataplane")]
pub use live::{apply_saved, ApplyOptions, PlanOptions, Reading};
pub use session::Session;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{} invalid: {}", revision_label(.revision), summarize(.diagnostics))]
    Invalid { revision: Option<String>, diagnostics: Vec<Diagnostic> },
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[cfg(feature = "dataplane")]
    #[error(transparent)]
    Dataplane(#[from] crate::dataplane::DataplaneError),
    #[error(
        "the saved plan is stale: it was made against generation {planned} of {pin_path}, \
         which is now at generation {live}; run `reconciler plan` again"
    )]
    StalePlan { pin_path: String, planned: u64, live: u64 },
    #[error(
        "the saved plan is stale: it was made when {} data plane was installed at {pin_path}, \
         and now {}; run `reconciler plan` again",
        if *.planned { "no" } else { "a" },
        if *.planned { "one is" } else { "none is" }
    )]
    StaleInstall { pin_path: String, planned: bool },
    #[error("the saved plan is for {planned}, not {given}; pass --pin-path {planned}")]
    OtherPinPath { planned: String, given: String },
    #[error(
        "the maps at {pin_path} no longer hold what the plan was made against for the \
         services it changes (changed by hand?); run `reconciler plan` again"
    )]
    Unconfirmed { pin_path: String },
    #[error("--against compares revisions of a git repository, and {} is a directory", .dir.display())]
    NotARepository { dir: std::path::PathBuf },
    #[error(
        "refusing to destroy every service ({destroy}) for definitions that define none: an \
         empty or mistyped source path looks like this; if it is meant, apply with \
         --allow-destroy-all (the daemon: policy.allowDestroyAll: true)"
    )]
    DestroyAll { destroy: usize },
    #[error(
        "the data plane at {pin_path} was installed with capacity {installed}, and \
         {configured} is asked for: a capacity is set at install. Leave it unset to keep \
         the installed one; to change it, `reconciler uninstall --pin-path {pin_path}` and \
         apply again (connects to VIPs are not translated in between)"
    )]
    CapacityChanged {
        pin_path: String,
        installed: reconciler_core::capacity::Capacity,
        configured: reconciler_core::capacity::Capacity,
    },
}

fn revision_label(revision: &Option<String>) -> String {
    revision.as_deref().map_or("the definitions are".to_owned(), |r| format!("commit {r} is"))
}

fn summarize(diagnostics: &[Diagnostic]) -> String {
    match diagnostics {
        [only] => only.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
        [] => "no diagnostics".into(),
    }
}

/// Validated service definitions at one revision.
#[derive(Clone, Debug)]
pub struct Desired {
    pub revision: Option<String>,
    /// Where they came from, for people (`git://host/repo.git@main`, a directory).
    pub source: String,
    /// The services on this node (all of them without a node: see `Session::with_node`).
    pub services: Vec<Arc<Service>>,
    /// The names of the services whose `nodeSelector` leaves this node out.
    pub elsewhere: Vec<String>,
    /// This node's zone, for `spec.topology`.
    pub zone: Option<String>,
    /// For a git source: where the files are and which blob each is, for the incremental
    /// path.
    pub tree: Option<Tree>,
}

/// A git revision's definition files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// The repository and subdirectory they came from (the incremental path diffs trees of
    /// one source only).
    pub source: String,
    /// Path -> blob id.
    pub files: BTreeMap<String, String>,
}

impl Tree {
    fn of(spec: &SourceSpec, snapshot: &Snapshot) -> Option<Tree> {
        let files = snapshot
            .files
            .iter()
            .map(|file| Some((file.path.clone(), file.blob.clone()?)))
            .collect::<Option<_>>()?;
        Some(Tree { source: Tree::source_of(spec)?, files })
    }

    /// [`Tree::source`] for `spec`: `None` for a directory.
    pub fn source_of(spec: &SourceSpec) -> Option<String> {
        let SourceSpec::Git(git) = spec else { return None };
        let subdir = git.subdir.as_deref().unwrap_or(Path::new("")).display();
        Some(format!("{} path {subdir}", git.url))
    }
}

/// Where a source spec points, for people.
pub fn describe(spec: &SourceSpec) -> String {
    match spec {
        SourceSpec::Dir(dir) => format!("directory {}", dir.display()),
        SourceSpec::Git(git) => {
            let mut text = git.url.clone();
            if let Some(reference) = &git.reference {
                text.push_str(&format!(" ({reference})"));
            }
            if let Some(subdir) = &git.subdir {
                text.push_str(&format!(" path {}", subdir.display()));
            }
            text
        }
    }
}
