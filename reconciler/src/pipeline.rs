//! The pure half of the reconcile pipeline: source -> validate, into [`Desired`], and the
//! plan between two revisions (`plan --against`). The half that reads and writes the data
//! plane is `apply`; this one builds without it (`--no-default-features`).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Arc,
};

use crate::{
    compile::{compile, CompileError},
    memo::Memo,
    model::Service,
    plan::{make_plan, Plan, PlanContext},
    source::{self, GitSpec, Snapshot, SourceError, SourceSpec},
    state::MapState,
    validate::{validate, validate_reusing, Diagnostic, Policy},
};

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
    #[error(
        "refusing to destroy every service ({destroy}) for definitions that define none: an \
         empty or mistyped source path looks like this; if it is meant, apply with \
         --allow-destroy-all (the daemon: policy.allowDestroyAll: true)"
    )]
    DestroyAll { destroy: usize },
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
    pub services: Vec<Arc<Service>>,
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

/// Fetches `spec` and validates every file of it.
pub fn load(spec: &SourceSpec, policy: &Policy) -> Result<Desired, Error> {
    let snapshot = source::fetch(spec)?;
    let tree = Tree::of(spec, &snapshot);
    Ok(Desired { tree, ..validated(snapshot, describe(spec), policy)? })
}

/// [`load`], reading and parsing only the files whose blobs `memo` has no parse of, and
/// adding the parses of those to it. The rules across files run over all of them.
pub fn load_reusing(spec: &SourceSpec, policy: &Policy, memo: &mut Memo) -> Result<Desired, Error> {
    let snapshot = source::fetch_reusing(spec, &|blob| memo.parsed.contains_key(blob))?;
    validated_reusing(spec, snapshot, policy, memo)
}

/// Validates a snapshot that [`source::fetch_reusing`] made of `spec` with the parses `memo`
/// holds, as [`load_reusing`] does.
pub fn validated_reusing(
    spec: &SourceSpec,
    snapshot: Snapshot,
    policy: &Policy,
    memo: &mut Memo,
) -> Result<Desired, Error> {
    let located = match validate_reusing(&snapshot, policy, &memo.parsed) {
        Ok(located) => located,
        Err(diagnostics) => {
            // A reused file's services have no positions: the report reads every file again.
            if let (SourceSpec::Git(git), Some(revision)) = (spec, &snapshot.revision) {
                if snapshot.files.iter().any(|file| file.text.is_none()) {
                    let whole = source::snapshot_at(git, revision)?;
                    return validated(whole, describe(spec), policy);
                }
            }
            return Err(Error::Invalid { revision: snapshot.revision, diagnostics });
        }
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
    memo.changed |= !by_path.is_empty();
    memo.parsed.extend(by_path.into_values().map(|(blob, services)| (blob.clone(), services)));
    Ok(Desired {
        tree: Tree::of(spec, &snapshot),
        revision: snapshot.revision,
        source: describe(spec),
        services: located.into_iter().map(|l| l.service).collect(),
    })
}

/// Another revision of the repository `load` fetched (for `plan --against REV`).
pub fn load_at(spec: &GitSpec, rev: &str, policy: &Policy) -> Result<Desired, Error> {
    validated(source::snapshot_at(spec, rev)?, format!("{} ({rev})", spec.url), policy)
}

/// Validates a fetched snapshot; `source` says where it came from, for people.
pub fn validated(snapshot: Snapshot, source: String, policy: &Policy) -> Result<Desired, Error> {
    match validate(&snapshot, policy) {
        Ok(located) => Ok(Desired {
            revision: snapshot.revision,
            source,
            services: located.into_iter().map(|l| l.service).collect(),
            tree: None,
        }),
        Err(diagnostics) => Err(Error::Invalid { revision: snapshot.revision, diagnostics }),
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

/// The plan between two revisions, with no data plane at all (for pull-request review):
/// `base` compiled from nothing is the "live" side.
pub fn plan_between(base: &Desired, head: &Desired) -> Result<Plan, Error> {
    let base_state = compile(&base.services, &MapState::default(), &BTreeSet::new())?;
    let head_state = compile(&head.services, &base_state, &base_state.health_excluded)?;
    let context = PlanContext {
        revision: head.revision.clone(),
        source: head.source.clone(),
        pin_path: String::new(),
        install: false,
        generation: 0,
        live_revision: base.revision.clone(),
        against: true,
        health_changed: false,
    };
    Ok(make_plan(context, &base_state, head_state))
}
